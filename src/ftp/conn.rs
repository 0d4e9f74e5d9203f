//! One logged-in FTPS control connection, and the commands mastfs sends on it.
//!
//! suppaftp does the wire work; this module adds what a file system needs on top: timeouts on
//! every socket, errors sorted into `RemoteError`, bounded listings, and ranged reads that stop
//! early and then prove the control connection is back in step before it is reused.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode, RustlsFtpStream, Status};

use super::tls::{TimeoutConnector, per_connection};
use super::watchdog::{Armed, arm};
use crate::error::RemoteError;
use crate::listing::parse_mlsd_line;
use crate::remote::{EntryKind, RemoteEntry, Version};

/// Where and how to log in.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub implicit: bool,
    pub epsv: bool,
    pub user: String,
    pub password: crate::config::Secret,
    pub timeout: Duration,
}

/// A listing larger than this is refused rather than buffered without bound.
const MAX_LISTING_BYTES: u64 = 256 << 20;
/// How long to wait for the server's reply to an early-closed transfer before checking the
/// stream with NOOP; a server that says nothing (pure-ftpd over TLS 1.3) costs this much.
const ABORT_REPLY_WAIT: Duration = Duration::from_millis(1000);
/// Size of one read from the data connection.
const READ_CHUNK: usize = 256 << 10;

/// TRANSITIONAL: receives the bytes of `read_from` in order; returns `false` to stop early.
pub type Sink<'a> = dyn FnMut(&[u8]) -> bool + 'a;

/// How a ranged read ended.
pub struct Transfer {
    pub delivered: u64,
    /// The control connection is known to be in step and may go back to the pool.
    pub reusable: bool,
    /// The transfer was stopped with ABOR before the end of the file.
    pub aborted: bool,
}

pub struct Conn {
    ftp: RustlsFtpStream,
    timeout: Duration,
    /// The server states the file size in its RETR reply (vsftpd does), which makes a
    /// separate version check before each RETR unnecessary.
    announces_size: bool,
    pub mlsd: bool,
    /// Last time this connection did work for a reader (keep-alive NOOPs do not count).
    pub last_used: Instant,
    /// Last time anything was exchanged, NOOPs included.
    pub last_contact: Instant,
}

impl Conn {
    /// Connects, secures (explicit `AUTH TLS` or implicit), logs in and switches to binary.
    pub fn open(ep: &Endpoint, tls: &ClientConfig) -> Result<Conn, RemoteError> {
        let addr = resolve(&ep.host, ep.port)?;
        let config = per_connection(tls);
        let login_guard = Arc::new(parking_lot::Mutex::new(None));
        let connector = TimeoutConnector::new(config, ep.timeout).guard_first(Arc::clone(&login_guard), ep.timeout * 2);
        let mut ftp = if ep.implicit {
            // suppaftp's implicit connect has no connect timeout of its own; a timed probe
            // first turns an unreachable host into a prompt error instead of a minutes-long hang.
            drop(connect_tcp(addr, ep.timeout)?);
            RustlsFtpStream::connect_secure_implicit(addr, connector, &ep.host)
                .map_err(|e| classify_tls_setup(e, "implicit TLS"))?
        } else {
            let tcp = connect_tcp(addr, ep.timeout)?;
            // Greeting, AUTH TLS, login: bounded as a whole, not only per read.
            *login_guard.lock() = arm(&tcp, ep.timeout * 2);
            let plain = RustlsFtpStream::connect_with_stream(tcp).map_err(|e| classify(e, "greeting"))?;
            plain.into_secure(connector, &ep.host).map_err(|e| classify_tls_setup(e, "AUTH TLS / PROT P"))?
        };
        // The data connection's TCP handshake is only started here; suppaftp then sends REST
        // and RETR while it completes, and the TLS connector waits for it. That overlaps one
        // round trip of every ranged read.
        ftp = ftp.passive_stream_builder(|addr: SocketAddr| start_connect(addr).map_err(FtpError::ConnectionError));
        // The PASV address is often a private or wrong one behind NAT (MAST's own FAQ reports
        // PASV trouble for external hosts); the control connection's peer is always reachable.
        ftp.set_passive_nat_workaround(true);
        ftp.set_mode(if ep.epsv { Mode::ExtendedPassive } else { Mode::Passive });
        ftp.login(ep.user.as_str(), ep.password.expose()).map_err(|e| match e {
            FtpError::UnexpectedResponse(r) if r.status == Status::NotLoggedIn => RemoteError::Login(reply_text(&r)),
            other => classify(other, "login"),
        })?;
        // REST offsets are byte offsets only in binary mode.
        ftp.transfer_type(FileType::Binary).map_err(|e| classify(e, "TYPE I"))?;
        let mlsd = match ftp.feat() {
            // RFC 3659: the MLST feature line announces MLSD as well.
            Ok(features) => features.keys().any(|k| k.eq_ignore_ascii_case("MLST") || k.eq_ignore_ascii_case("MLSD")),
            Err(_) => false,
        };
        let now = Instant::now();
        drop(login_guard.lock().take());
        Ok(Conn { ftp, timeout: ep.timeout, announces_size: false, mlsd, last_used: now, last_contact: now })
    }

    /// Lists `dir` (an absolute path) as raw lines, MLSD when offered, LIST otherwise.
    pub fn list_lines(&mut self, dir: &str) -> Result<Vec<String>, RemoteError> {
        let exchange = self.deadline();
        let command = if self.mlsd {
            format!("MLSD {dir}")
        } else {
            // LIST arguments are parsed as options and globs by some servers (vsftpd treats a
            // name starting with '-' or containing '*' specially); from inside the directory
            // no argument is needed at all.
            self.ftp.cwd(dir).map_err(|e| classify(e, "CWD"))?;
            "LIST -a".to_string()
        };
        let (_, mut stream) = self
            .ftp
            .custom_data_command(&command, &[Status::AboutToSend, Status::AlreadyOpen])
            .map_err(|e| classify(e, &command))?;
        drop(exchange);
        let mut lines = Vec::new();
        let read = {
            let mut reader = Paced::new((&mut stream).take(MAX_LISTING_BYTES + 1), self.timeout);
            read_lines(&mut reader, &mut lines)
        };
        match read {
            Ok(total) if total > MAX_LISTING_BYTES => {
                self.finish_early(stream);
                return Err(RemoteError::Protocol(format!("listing of {dir} exceeds {MAX_LISTING_BYTES} bytes")));
            }
            Ok(_) => {}
            Err(e) => {
                drop(stream);
                return Err(io_error(e, "listing data"));
            }
        }
        let _closing = self.deadline();
        stream.finish().map_err(|e| classify(e, "end of listing"))?;
        self.last_used = Instant::now();
        Ok(lines)
    }

    /// `REST offset` + `RETR path`, feeding the sink until it declines or the file ends.
    ///
    /// Errors after some bytes arrived are `RemoteError::Partial`.
    pub fn read_from(
        &mut self,
        path: &str,
        offset: u64,
        version: Version,
        sink: &mut Sink<'_>,
    ) -> Result<Transfer, RemoteError> {
        let size = version.size;
        let exchange = self.deadline();
        let start = usize::try_from(offset).map_err(|_| RemoteError::Protocol(format!("offset {offset} too large")))?;
        // Servers that do not announce the size in their RETR reply get asked first: a file
        // replaced on the server must fail the read, never mix its bytes with the old ones.
        if !self.announces_size {
            self.check_version(path, version)?;
        }
        self.ftp.resume_transfer(start).map_err(|e| classify(e, "REST"))?;
        // The RETR reply is read here (not via retr_as_stream) because servers such as vsftpd
        // announce the file's size in it: a file replaced on the server since it was listed is
        // caught before a single byte of the new version is mixed into the old one.
        let (reply, stream) = self
            .ftp
            .custom_data_command(format!("RETR {path}"), &[Status::AboutToSend, Status::AlreadyOpen])
            .map_err(|e| classify(e, "RETR"))?;
        let announced = announced_size(&reply_text(&reply));
        self.announces_size |= announced.is_some();
        if let Some(announced) = announced
            && announced != size
        {
            self.finish_early(stream);
            return Err(RemoteError::Changed(format!(
                "{path}: server announces {announced} bytes, listing said {size}"
            )));
        }
        drop(exchange);
        let mut stream = Paced::new(stream, self.timeout);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut delivered = 0u64;
        let mut stopped_early = false;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The data connection broke or stalled: the control connection's state is
                    // unknown, so it is not reused.
                    let cause = io_error(e, "data connection");
                    drop(stream);
                    return Err(partial(delivered, cause));
                }
            };
            delivered += n as u64;
            if !sink(&buf[..n]) {
                stopped_early = true;
                break;
            }
        }
        self.last_used = Instant::now();
        let stream = stream.into_inner();
        let _closing = self.deadline();
        // A sink that stops exactly at the end of the file has seen the whole transfer: it is
        // finished normally, not aborted (ABOR after a completed transfer costs a reply and
        // leaves replies out of step on some servers).
        if !stopped_early || offset.saturating_add(delivered) >= size {
            // All bytes arrived; an odd closing reply only costs the connection.
            let reusable = stream.finish().is_ok();
            return Ok(Transfer { delivered, reusable, aborted: false });
        }
        // Ending a RETR early: close the data connection and let the server notice. Servers
        // then answer differently (vsftpd 426, pyftpdlib 426, pure-ftpd a late "150 <timing>"
        // or nothing at all), and ABOR adds a reply of its own whose count depends on timing
        // (vsftpd 225, pure-ftpd 226). suppaftp can only read a reply after sending a command,
        // so instead of ABOR: read at most one closing reply, briefly, then prove the stream
        // is in step with a NOOP, which only a 200 answers. Anything else drops the connection.
        let in_step = self.finish_early(stream);
        Ok(Transfer { delivered, reusable: in_step, aborted: true })
    }

    /// A wall-clock deadline for one command/reply exchange on the control connection.
    fn deadline(&self) -> Option<Armed> {
        let socket = self.ftp.get_ref();
        arm(&socket, self.timeout * 2)
    }

    /// Asks the server for the file's size and time (`MLST`, or `SIZE` where MLST is missing)
    /// and fails with `Changed` when they are not `version`'s.
    fn check_version(&mut self, path: &str, version: Version) -> Result<(), RemoteError> {
        let changed = |what: String| Err(RemoteError::Changed(format!("{path}: {what}")));
        if self.mlsd {
            let facts = self.ftp.mlst(Some(path)).map_err(|e| classify(e, "MLST"))?;
            // The MLST line names the file by its full path; only its facts matter here.
            let facts = facts.split_once("; ").map_or(facts.as_str(), |(f, _)| f);
            let entry = parse_mlsd_line(&format!("{facts}; x"))
                .map_err(|e| RemoteError::Protocol(format!("MLST {path}: {e}")))?
                .ok_or_else(|| RemoteError::Protocol(format!("MLST {path}: not a file")))?;
            let mtime = unix_secs(entry.mtime);
            if entry.size != version.size {
                return changed(format!("size is now {}, was {}", entry.size, version.size));
            }
            // An MLST without a modify fact reports the epoch; only a real time is compared.
            if mtime != 0 && mtime != version.mtime {
                return changed(format!("modified at {mtime}, was {}", version.mtime));
            }
            return Ok(());
        }
        let now = self.ftp.size(path).map_err(|e| classify(e, "SIZE"))? as u64;
        if now != version.size {
            return changed(format!("size is now {now}, was {}", version.size));
        }
        Ok(())
    }

    fn finish_early(
        &mut self,
        stream: suppaftp::TransferStream<<TimeoutConnector as suppaftp::TlsConnector>::Stream>,
    ) -> bool {
        let wait = ABORT_REPLY_WAIT.min(self.timeout);
        if self.ftp.get_ref().set_read_timeout(Some(wait)).is_err() {
            return false;
        }
        // Ok (226: the file ended anyway), 426/150 (an error here) or silence are all fine.
        let _ = stream.finish();
        if self.ftp.get_ref().set_read_timeout(Some(self.timeout)).is_err() {
            return false;
        }
        matches!(self.ftp.custom_command("NOOP", &[Status::CommandOk]), Ok(r) if r.status == Status::CommandOk)
    }

    #[allow(dead_code)] // TRANSITIONAL: used once lookups stop listing parents (issue 7.4)
    /// One path's entry without listing its parent: `MLST`, or `SIZE` + `MDTM` (a file) and
    /// `CWD` (a directory) on servers without it. `None` when the server knows no such path.
    pub fn stat(&mut self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        let _exchange = self.deadline();
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        let missing = |e: FtpError| match classify(e, "stat") {
            RemoteError::Unavailable(_) => Ok(None),
            other => Err(other),
        };
        if self.mlsd {
            let facts = match self.ftp.mlst(Some(path)) {
                Ok(f) => f,
                Err(e) => return missing(e),
            };
            // The MLST line names the path after the facts; only the facts matter here.
            let facts = facts.trim_start().split_once("; ").map_or(facts.as_str(), |(f, _)| f);
            let entry = parse_mlsd_line(&format!("{facts}; {name}"))
                .map_err(|e| RemoteError::Protocol(format!("MLST {path}: {e}")))?;
            return Ok(entry);
        }
        match self.ftp.size(path) {
            Ok(size) => {
                let reply = self
                    .ftp
                    .custom_command(format!("MDTM {path}"), &[Status::File])
                    .map_err(|e| classify(e, "MDTM"))?;
                let mtime = parse_mdtm(&reply_text(&reply))
                    .ok_or_else(|| RemoteError::Protocol(format!("MDTM {path}: {}", reply_text(&reply))))?;
                Ok(Some(RemoteEntry {
                    name,
                    kind: EntryKind::File,
                    size: size as u64,
                    mtime,
                    mtime_precision: 1,
                    perm: None,
                    link_target: None,
                }))
            }
            Err(e) => {
                missing(e)?;
                match self.ftp.cwd(path) {
                    Ok(()) => Ok(Some(RemoteEntry {
                        name,
                        kind: EntryKind::Dir,
                        size: 0,
                        mtime: std::time::UNIX_EPOCH,
                        mtime_precision: 1,
                        perm: None,
                        link_target: None,
                    })),
                    Err(e) => missing(e),
                }
            }
        }
    }

    /// Keep-alive probe for an idle pooled connection.
    pub fn noop(&mut self) -> bool {
        self.last_contact = Instant::now();
        self.ftp.noop().is_ok()
    }

    pub fn quit(mut self) {
        let _ = self.ftp.quit();
    }
}

/// Data connections must keep moving: per-read timeouts alone let a server that sends a
/// byte now and then hold a read forever. Less than `MIN_PROGRESS` bytes in a whole timeout
/// period fails the read as a timeout.
const MIN_PROGRESS: u64 = 16 * 1024;

struct Paced<R> {
    inner: R,
    period_start: Instant,
    period_bytes: u64,
    timeout: Duration,
}

impl<R: Read> Paced<R> {
    fn new(inner: R, timeout: Duration) -> Paced<R> {
        Paced { inner, period_start: Instant::now(), period_bytes: 0, timeout }
    }

    fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.period_bytes += n as u64;
        if self.period_start.elapsed() >= self.timeout {
            if self.period_bytes < MIN_PROGRESS && n > 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "data connection slower than a trickle"));
            }
            self.period_start = Instant::now();
            self.period_bytes = 0;
        }
        Ok(n)
    }
}

#[allow(dead_code)] // TRANSITIONAL, see Conn::stat
/// The time in an `MDTM` reply (`213 YYYYMMDDHHMMSS[.sss]`, UTC).
fn parse_mdtm(reply: &str) -> Option<std::time::SystemTime> {
    let stamp = reply.split_whitespace().nth(1)?;
    let digits = stamp.split('.').next()?;
    let line = format!("modify={digits}; x");
    parse_mlsd_line(&line).ok().flatten().map(|e| e.mtime)
}

/// The size in a `150 ... (N bytes)` reply, as vsftpd and ProFTPD send it.
fn announced_size(reply: &str) -> Option<u64> {
    let open = reply.rfind('(')?;
    let inner = &reply[open + 1..];
    let close = inner.find(')')?;
    let mut words = inner[..close].split_whitespace();
    let n = words.next()?.parse().ok()?;
    matches!(words.next(), Some("bytes")).then_some(n)
}

/// Reads a listing and splits it into lines. Servers end lines with CRLF but pass a bare LF
/// inside a file name through unchanged, so when the listing uses CRLF only CRLF ends a
/// line: a name holding "\n" must not forge an entry of its own (the parser then rejects the
/// line whose name holds the LF). Listings with bare-LF line ends are split on LF.
fn read_lines(reader: &mut impl Read, lines: &mut Vec<String>) -> io::Result<u64> {
    let mut raw = Vec::new();
    let total = reader.read_to_end(&mut raw)? as u64;
    let crlf = raw.windows(2).any(|w| w == b"\r\n");
    let mut push = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
    };
    if crlf {
        let mut rest = &raw[..];
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            push(&rest[..at]);
            rest = &rest[at + 2..];
        }
        push(rest);
    } else {
        raw.split(|&b| b == b'\n').for_each(push);
    }
    Ok(total)
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, RemoteError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| RemoteError::io(&e, &format!("cannot resolve {host}")))?
        .next()
        .ok_or_else(|| RemoteError::io(&io::ErrorKind::NotFound.into(), &format!("no address for {host}")))
}

fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, RemoteError> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RemoteError::Timeout(format!("connecting to {addr}")),
        _ => RemoteError::io(&e, &addr.to_string()),
    })?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| RemoteError::io(&e, "socket setup"))?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| RemoteError::io(&e, "socket setup"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Starts a non-blocking TCP connect and returns the socket at once.
fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let _ = socket.set_tcp_nodelay(true);
    Ok(socket.into())
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn partial(delivered: u64, cause: RemoteError) -> RemoteError {
    if delivered == 0 { cause } else { RemoteError::Partial { delivered, cause: Box::new(cause) } }
}

fn reply_text(r: &suppaftp::types::Response) -> String {
    let text = String::from_utf8_lossy(&r.body);
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    text.trim().to_string()
}

fn io_error(e: io::Error, what: &str) -> RemoteError {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return RemoteError::Tls(format!("{what}: {tls}"));
    }
    RemoteError::io(&e, what)
}

/// Sorts a suppaftp error into the kinds the rest of mastfs acts on.
fn classify(e: FtpError, what: &str) -> RemoteError {
    match e {
        FtpError::ConnectionError(io) => io_error(io, what),
        FtpError::SecureError(m) => RemoteError::Tls(format!("{what}: {m}")),
        FtpError::UnexpectedResponse(r) => {
            let text = reply_text(&r);
            let code = r.status.code();
            if code == 421 || (code == 530 && looks_like_too_many(&text)) {
                RemoteError::TooManyConnections(text)
            } else if code == 530 {
                RemoteError::Login(text)
            } else if matches!(code, 450 | 550 | 553) {
                RemoteError::Unavailable(format!("{what}: {text}"))
            } else {
                RemoteError::Protocol(format!("{what}: unexpected reply {text}"))
            }
        }
        other => RemoteError::Protocol(format!("{what}: {other}")),
    }
}

/// During TLS setup a refusal is a TLS problem: the server does not offer what we require.
fn classify_tls_setup(e: FtpError, what: &str) -> RemoteError {
    match e {
        FtpError::UnexpectedResponse(r) if r.status.code() != 421 => RemoteError::Tls(format!(
            "server refused {what} ({}); mastfs never falls back to plain FTP",
            reply_text(&r)
        )),
        other => classify(other, what),
    }
}

fn looks_like_too_many(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("too many") || t.contains("no more") || t.contains("maximum number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(raw: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(&mut &raw[..], &mut out).expect("read");
        out
    }

    #[test]
    fn a_line_feed_inside_a_name_does_not_forge_a_listing_entry() {
        let raw = b"-rw-r--r-- 1 0 0 5 Nov 25 13:49 a\n-rw-r--r-- 1 0 0 999 Nov 25 13:49 injected\r\n-rw-r--r-- 1 0 0 3 Nov 25 13:49 b\r\n";
        let got = lines(raw);
        assert_eq!(got.len(), 2, "two server lines, not three: {got:?}");
        assert!(got[0].contains("a\n-rw"));
        assert!(got[1].ends_with(" b"));
    }

    #[test]
    fn listings_with_bare_line_feeds_are_still_split() {
        assert_eq!(lines(b"one\ntwo\n\nthree"), ["one", "two", "three"]);
    }

    #[test]
    fn retr_reply_sizes_are_read_only_from_the_bytes_form() {
        assert_eq!(announced_size("150 Opening BINARY mode data connection for /a b.fits (2880 bytes)."), Some(2880));
        assert_eq!(announced_size("150 Accepted data connection"), None);
        assert_eq!(announced_size("150 File status okay. About to open data connection."), None);
        assert_eq!(announced_size("150 Opening (x) (12 kbytes)"), None);
    }
}
