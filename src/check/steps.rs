//! The walk: one connection driven a step at a time, in the order a mount's login and first
//! listing take (`ftp/login.rs`, `ftp/lookup.rs`), each step timed, its findings recorded, and
//! the first failure turned into a `Problem` with the facts its explanation needs. The
//! pieces are the mount's own: its TLS settings and certificate check (`ftp::tls`), its
//! reply reader (`Control`), its rule for where a data connection goes (the control
//! connection's address and the passive reply's port). Where a mount pipelines commands,
//! the walk sends them one at a time, so a failure belongs to one command.
//!
//! After the walk, the mount's own start-up (`FtpsRemote::check`, a login through the pool,
//! the listing of the root and a data connection opened ahead) runs once more as the last
//! step, so that the check and a mount cannot disagree unnoticed.
//!
//! Threads: the caller's only, plus the watchdog thread (`ftp::watchdog`) that ends an
//! exchange at its deadline by shutting its socket down.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, StreamOwned};
use serde_json::json;

use super::args::Target;
use super::cert::Recorder;
use super::diagnose::{CertProblem, Problem, Refusal, explain};
use super::report::{Done, Report, clean};
use crate::error::RemoteError;
use crate::ftp::parts::{Control, Flights, Reply, Transport, Wire, passive_address, passive_command};
use crate::ftp::tls::{KxHint, TlsWire, base_config, per_connection, server_name, verifier};
use crate::ftp::{Endpoint, FtpsRemote, Pool, watchdog};
use crate::listing::{Dialect, parse_listing};
use crate::remote::{EntryKind, RemoteEntry};
use crate::stats::Stats;

/// The read step reads at most this much of a file.
const READ_BYTES: u64 = 4096;
/// A listing larger than this is refused (as a mount does).
const MAX_LISTING: usize = 256 << 20;
/// How long to wait for the server's word after a data connection failed, and for QUIT.
const AFTERWORD: Duration = Duration::from_secs(2);
/// The probe for an implicit-FTPS port waits at most this long for a TLS answer.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// A step's failure: what went wrong, and what the step had found before it did (boxed, so
/// that every step's result stays small).
struct Fail(Box<Failure>);

struct Failure {
    problem: Problem,
    found: Done,
}

impl Fail {
    fn new(problem: Problem, found: Done) -> Fail {
        Fail(Box::new(Failure { problem, found }))
    }
}

impl From<Problem> for Fail {
    fn from(problem: Problem) -> Fail {
        Fail::new(problem, Done::default())
    }
}

type Step<T> = Result<(T, Done), Fail>;

/// A data connection with TLS, as the walk reads it.
type DataTls = StreamOwned<ClientConnection, TcpStream>;

/// Checks `target` step by step into `report`.
pub(crate) fn walk(target: &Target, report: &mut Report) {
    let Some(mut walk) = Walk::prepare(target, report) else { return };
    let walked = walk.run();
    walk.quit();
    if walked.is_some() {
        mount_start_up(target, report);
    }
}

struct Walk<'a> {
    t: &'a Target,
    report: &'a mut Report,
    recorder: Arc<Recorder>,
    /// This connection's TLS settings and session store, shared with its data connections
    /// so that they resume its session (vsftpd's `require_ssl_reuse`).
    config: Arc<ClientConfig>,
    base: ClientConfig,
    kx: Arc<KxHint>,
    name: ServerName<'static>,
    flights: Arc<Flights>,
    addr: Option<SocketAddr>,
    control: Option<Control<TlsWire>>,
    dialect: Dialect,
}

impl<'a> Walk<'a> {
    /// The TLS settings a mount would use, with the certificate check wrapped so that the
    /// certificate can be described. A failure here (an unreadable `--ca-file`) is the
    /// check's first and only step.
    fn prepare(t: &'a Target, report: &'a mut Report) -> Option<Walk<'a>> {
        let started = Instant::now();
        let built = (|| -> Result<_, RemoteError> {
            let recorder = Recorder::new(verifier(&t.tls)?);
            let mut base = base_config(&t.tls)?;
            base.dangerous().set_certificate_verifier(Arc::clone(&recorder) as Arc<dyn ServerCertVerifier>);
            let name = server_name(&t.host)?;
            Ok((recorder, base, name))
        })();
        let (recorder, base, name) = match built {
            Ok(b) => b,
            Err(e) => {
                let message = match e {
                    RemoteError::Tls(m) => m,
                    other => other.to_string(),
                };
                report.failed("setup", started.elapsed(), explain(&Problem::Setup(message), t), Done::default());
                return None;
            }
        };
        let kx = Arc::new(KxHint::default());
        Some(Walk {
            t,
            report,
            recorder,
            config: per_connection(&base, &kx),
            base,
            kx,
            name,
            flights: Flights::new(Arc::new(Stats::default())),
            addr: None,
            control: None,
            dialect: Dialect::List,
        })
    }

    /// Runs `f` as the step `id`: timed, recorded, and on failure explained.
    fn step<T>(&mut self, id: &'static str, f: impl FnOnce(&mut Self) -> Step<T>) -> Option<T> {
        let started = Instant::now();
        let result = f(self);
        let elapsed = started.elapsed();
        match result {
            Ok((value, done)) => {
                self.report.ok(id, elapsed, done);
                Some(value)
            }
            Err(Fail(fail)) => {
                let diagnosis = explain(&fail.problem, self.t);
                self.report.failed(id, elapsed, diagnosis, fail.found);
                None
            }
        }
    }

    fn run(&mut self) -> Option<()> {
        let addr = self.step("resolve", Walk::resolve)?;
        self.addr = Some(addr);
        let sock = self.step("connect", |w| w.connect(addr))?;
        if self.t.implicit {
            self.step("TLS", |w| w.tls(sock))?;
            let timeout = self.t.timeout;
            self.step("greeting", |w| greeting(w.control()?, timeout))?;
            self.step("login", Walk::login)?;
            self.step("protection", Walk::protection)?;
        } else {
            let plain = sock.try_clone().map_err(|e| io_problem(&e, "the greeting"));
            let mut plain = match plain {
                Ok(s) => Control::new(Wire::control(s, Arc::clone(&self.flights))),
                Err(p) => {
                    self.step("greeting", |_| -> Step<()> { Err(p.into()) });
                    return None;
                }
            };
            self.step("greeting", |w| w.plain_greeting(&mut plain, addr))?;
            let timeout = self.t.timeout;
            self.step("AUTH TLS", |_| auth_tls(&mut plain, timeout))?;
            // The server says nothing more in plain text: the TLS stream takes the socket on.
            drop(plain);
            self.step("TLS", |w| w.tls(sock))?;
            self.step("protection", Walk::protection)?;
            self.step("login", Walk::login)?;
        }
        self.step("features", Walk::features)?;
        self.step("root", Walk::root)?;
        let entries = self.list()?;
        self.read(&entries)
    }

    fn control(&mut self) -> Result<&mut Control<TlsWire>, Fail> {
        self.control.as_mut().ok_or_else(|| Problem::Closed { during: "the login" }.into())
    }

    fn resolve(&mut self) -> Step<SocketAddr> {
        let (host, port) = (self.t.host.as_str(), self.t.port);
        let addrs: Vec<SocketAddr> =
            (host, port).to_socket_addrs().map_err(|e| Problem::Resolve(e.to_string()))?.collect();
        // The first address, as a mount takes it.
        let Some(&addr) = addrs.first() else {
            return Err(Problem::Resolve("no address".into()).into());
        };
        let all: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        let summary = if addrs.len() > 1 {
            format!("{host} is {} (first of {}: {})", addr.ip(), addrs.len(), all.join(", "))
        } else {
            format!("{host} is {}", addr.ip())
        };
        Ok((addr, Done::new(summary).detail("address", addr.ip().to_string()).detail("addresses", all)))
    }

    fn connect(&mut self, addr: SocketAddr) -> Step<TcpStream> {
        let sock = tcp_connect(addr, self.t.timeout).map_err(|how| Problem::Connect { addr, how })?;
        Ok((sock, Done::new(format!("TCP connection to {addr}")).detail("address", addr.to_string())))
    }

    /// Explicit FTPS: the greeting comes in plain text. None in time may mean the port
    /// speaks implicit FTPS, which waits for the client's TLS first: a second connection
    /// tries a handshake to tell.
    fn plain_greeting(&mut self, plain: &mut Control<Wire>, addr: SocketAddr) -> Step<()> {
        match greeting(plain, self.t.timeout) {
            Err(Fail(fail)) if matches!(fail.problem, Problem::Timeout { .. }) => {
                let tls_answered = self.answers_tls(addr);
                Err(Fail::new(Problem::NoGreeting { tls_answered }, fail.found))
            }
            other => other,
        }
    }

    /// Whether a TLS handshake on a fresh connection to `addr` gets a TLS answer (a
    /// certificate the check does not trust still is one).
    fn answers_tls(&self, addr: SocketAddr) -> bool {
        let limit = self.t.timeout.min(PROBE_LIMIT);
        let Ok(sock) = tcp_connect(addr, limit) else { return false };
        let _deadline = watchdog::arm(&sock, limit);
        let config = per_connection(&self.base, &self.kx);
        let Ok(mut conn) = ClientConnection::new(config, self.name.clone()) else { return false };
        let mut io = sock;
        let mut first = Vec::new();
        match handshake(&mut conn, &mut io, &mut first) {
            Ok(()) => true,
            Err(e) => matches!(rustls_error(&e), Some(rustls::Error::InvalidCertificate(_))),
        }
    }

    fn tls(&mut self, sock: TcpStream) -> Step<()> {
        let deadline = watchdog::arm(&sock, self.t.timeout);
        let mut conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(|e| Problem::Tls { error: e.to_string() })?;
        let mut wire = Wire::control(sock, Arc::clone(&self.flights));
        let mut first = Vec::new();
        let shaken = handshake(&mut conn, &mut wire, &mut first);
        let fired = deadline.as_ref().is_some_and(watchdog::Armed::fired);
        drop(deadline);
        if let Err(e) = shaken {
            let problem = self.tls_failure(&e, fired, &first);
            let mut found = Done::default();
            if let Some(c) = self.recorder.end_entity() {
                found = found.line(c.describe()).detail("certificate", c.to_json());
            }
            return Err(Fail::new(problem, found));
        }
        let cert = self.recorder.end_entity();
        let version = version_text(conn.protocol_version());
        let suite = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        let group = conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()));
        let retried = conn.handshake_kind() == Some(HandshakeKind::FullWithHelloRetryRequest);
        let mut summary = format!("{version}, {suite}");
        if let Some(g) = &group {
            summary.push_str(&format!(", key exchange {g}"));
        }
        let mut done = Done::new(summary)
            .detail("version", version)
            .detail("cipher", suite)
            .detail("key_exchange", group)
            .detail("hello_retry", retried)
            .detail("verified", !self.t.tls.insecure)
            .detail("certificate", cert.as_ref().map(super::cert::CertInfo::to_json));
        if let Some(c) = &cert {
            done = done.line(c.describe());
        }
        done = done.line(match (&self.t.tls.ca_file, self.t.tls.insecure) {
            (_, true) => format!("NOT verified (--insecure): anyone in between could pose as {}", self.t.host),
            (Some(f), false) => format!("verified for {} against {}", self.t.host, f.display()),
            (None, false) => format!("verified for {} against the system's CAs", self.t.host),
        });
        if retried {
            done = done.note(
                "the server asked for another key share (one more round trip); \
                 a mount's later handshakes offer the group it chose first",
            );
        }
        self.control = Some(Control::new(StreamOwned::new(conn, wire)));
        Ok(((), done))
    }

    fn tls_failure(&self, e: &io::Error, fired: bool, first: &[u8]) -> Problem {
        if let Some(said) = ftp_reply_text(first) {
            return Problem::PlainText { said };
        }
        if let Some(error) = rustls_error(e) {
            return match error {
                rustls::Error::InvalidCertificate(c) => Problem::Certificate {
                    problem: cert_problem(c),
                    error: error.to_string(),
                    cert: self.recorder.end_entity(),
                },
                rustls::Error::PeerIncompatible(_)
                | rustls::Error::AlertReceived(
                    rustls::AlertDescription::ProtocolVersion
                    | rustls::AlertDescription::HandshakeFailure
                    | rustls::AlertDescription::InsufficientSecurity,
                ) => Problem::TlsIncompatible { error: error.to_string() },
                other => Problem::Tls { error: other.to_string() },
            };
        }
        if fired || matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
            return Problem::Timeout { during: "the TLS handshake" };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                Problem::Closed { during: "the TLS handshake" }
            }
            _ => Problem::Tls { error: e.to_string() },
        }
    }

    fn protection(&mut self) -> Step<()> {
        let timeout = self.t.timeout;
        let control = self.control()?;
        let _deadline = control.deadline(timeout * 2);
        for command in ["PBSZ 0", "PROT P"] {
            let reply = exchange(control, command, "PBSZ/PROT")?;
            match reply.code {
                200 => {}
                421 => return Err(Problem::Busy { reply: said(&reply) }.into()),
                400..=599 => return Err(Problem::ProtectionRefused { reply: said(&reply) }.into()),
                _ => return Err(unexpected(command, &reply)),
            }
        }
        Ok(((), Done::new("PBSZ 0, PROT P: listings and file data will be encrypted too")))
    }

    fn login(&mut self) -> Step<()> {
        let (timeout, user) = (self.t.timeout, self.t.user.clone());
        let password = self.t.password.clone();
        let control = self.control()?;
        let _deadline = control.deadline(timeout * 2);
        let mut reply = exchange(control, &format!("USER {user}"), "the login")?;
        if reply.code == 331 {
            control.send_password(&password).map_err(|e| lost(e, "the login"))?;
            reply = control.reply().map_err(|e| lost(e, "the login"))?;
        }
        match reply.code {
            230 | 202 => {}
            421 => return Err(Problem::Busy { reply: said(&reply) }.into()),
            530 if too_many(&reply) => return Err(Problem::Busy { reply: said(&reply) }.into()),
            530 | 430 => return Err(Problem::LoginRefused { reply: said(&reply) }.into()),
            332 => {
                return Err(Problem::Unexpected {
                    during: "the login",
                    reply: format!("{} (an account, ACCT, is asked for)", said(&reply)),
                }
                .into());
            }
            _ => return Err(unexpected("the login", &reply)),
        }
        let summary = format!("{} (as {user}, password from {})", said(&reply), self.t.password_source);
        Ok(((), Done::new(summary).detail("user", user).detail("password_from", self.t.password_source.clone())))
    }

    fn features(&mut self) -> Step<()> {
        let (timeout, epsv) = (self.t.timeout, self.t.epsv);
        let control = self.control()?;
        let _deadline = control.deadline(timeout * 2);
        let reply = exchange(control, "TYPE I", "TYPE I")?;
        if reply.code != 200 {
            return Err(unexpected("TYPE I (binary mode)", &reply));
        }
        let reply = exchange(control, "FEAT", "FEAT")?;
        let features: Vec<String> = if reply.code == 211 && reply.lines.len() > 2 {
            reply.lines[1..reply.lines.len() - 1].iter().map(|l| clean(l, 120)).filter(|l| !l.is_empty()).collect()
        } else {
            Vec::new()
        };
        // Each feature's word once (`AUTH TLS` and `AUTH SSL` are both `AUTH`).
        let mut words: Vec<String> = Vec::new();
        for word in features.iter().filter_map(|f| f.split_whitespace().next()).map(str::to_ascii_uppercase) {
            if !words.contains(&word) {
                words.push(word);
            }
        }
        let has = |w: &str| words.iter().any(|x| x == w);
        let mlsd = has("MLST") || has("MLSD");
        self.dialect = if mlsd { Dialect::Mlsd } else { Dialect::List };
        let rest = features.iter().any(|f| f.to_ascii_uppercase().starts_with("REST STREAM"));
        let summary = if features.is_empty() {
            format!("{}; the server lists no features", said(&reply))
        } else {
            format!("{}; listings by {}", words.join(" "), if mlsd { "MLSD" } else { "LIST (no MLSD)" })
        };
        let mut done = Done::new(summary).detail("features", features.clone()).detail("mlsd", mlsd);
        if !features.is_empty() && !rest {
            done = done.note("REST STREAM is not announced; the read step tries REST all the same");
        }
        if !features.is_empty() && epsv && !has("EPSV") {
            done = done.note("EPSV is not announced, and --epsv asks for it");
        }
        Ok(((), done))
    }

    fn root(&mut self) -> Step<()> {
        let (timeout, root) = (self.t.timeout, self.t.root.clone());
        let control = self.control()?;
        let _deadline = control.deadline(timeout);
        let reply = exchange(control, &format!("CWD {root}"), "CWD")?;
        match reply.code {
            250 | 200 => Ok(((), Done::new(format!("{root} is a directory the server lets this login enter")))),
            421 => Err(Problem::Busy { reply: said(&reply) }.into()),
            400..=599 => Err(Problem::RootRefused { reply: said(&reply) }.into()),
            _ => Err(unexpected("CWD", &reply)),
        }
    }

    fn list(&mut self) -> Option<Vec<RemoteEntry>> {
        let command = passive_command(self.t.epsv);
        let addr = self.step("passive", |w| w.passive(command))?;
        let sock = self.step("data connection", |w| w.data_connect(addr, command))?;
        self.step("listing", |w| w.listing(sock))
    }

    /// Asks for a passive port; a refusal is followed by the other command, to tell whether
    /// `--epsv` (or leaving it out) would do.
    fn passive(&mut self, command: &'static str) -> Step<SocketAddr> {
        let (timeout, peer) = (self.t.timeout, self.addr.map(|a| a.ip()));
        let control = self.control()?;
        let _deadline = control.deadline(timeout);
        let reply = exchange(control, command, command)?;
        let expected = if command == "EPSV" { 229 } else { 227 };
        if reply.code == expected {
            let peer = peer.ok_or(Problem::Closed { during: command })?;
            let addr = passive_address(&reply, peer)
                .map_err(|_| Problem::PassiveUnreadable { command, reply: said(&reply) })?;
            let summary = format!("{} -> port {} (connecting to {addr})", said(&reply), addr.port());
            return Ok((addr, Done::new(summary).detail("command", command).detail("port", addr.port())));
        }
        if reply.code == 421 {
            return Err(Problem::Busy { reply: said(&reply) }.into());
        }
        if !(400..=599).contains(&reply.code) {
            return Err(unexpected(command, &reply));
        }
        let other = if command == "EPSV" { "PASV" } else { "EPSV" };
        let other_answered = exchange(control, other, other).ok().map(|r| matches!(r.code, 227 | 229));
        Err(Problem::PassiveRefused { command, reply: said(&reply), other_answered }.into())
    }

    fn data_connect(&mut self, addr: SocketAddr, command: &'static str) -> Step<TcpStream> {
        let sock = tcp_connect(addr, self.t.timeout).map_err(|how| Problem::DataConnect { addr, command, how })?;
        Ok((sock, Done::new(format!("TCP connection to {addr}")).detail("address", addr.to_string())))
    }

    fn listing(&mut self, sock: TcpStream) -> Step<Vec<RemoteEntry>> {
        let command = match self.dialect {
            Dialect::Mlsd => format!("MLSD {}", self.t.root),
            // From inside the directory, as a mount lists (vsftpd reads LIST arguments as
            // options and globs).
            Dialect::List => "LIST -a".to_string(),
        };
        let (raw, tls) = self.transfer(sock, std::slice::from_ref(&command), None, None)?;
        let text = raw.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let lines: Vec<String> =
            text.filter(|l| !l.is_empty()).map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let listing = parse_listing(&lines, self.dialect, SystemTime::now());
        let files = listing.entries.iter().filter(|e| e.kind == EntryKind::File).count();
        let dirs = listing.entries.iter().filter(|e| e.kind == EntryKind::Dir).count();
        let mut summary = format!(
            "{command}: {} ({}, {}), {} bytes; {}",
            count(listing.entries.len(), "entry", "entries"),
            count(files, "file", "files"),
            count(dirs, "directory", "directories"),
            raw.len(),
            tls.describe()
        );
        if !listing.warnings.is_empty() {
            summary.push_str(&format!("; {} lines not understood", listing.warnings.len()));
        }
        let mut done = Done::new(summary)
            .detail("command", command)
            .detail("entries", listing.entries.len())
            .detail("files", files)
            .detail("directories", dirs)
            .detail("bytes", raw.len())
            .detail("lines_not_understood", listing.warnings.len())
            .detail("data_tls", tls.to_json());
        for w in listing.warnings.iter().take(3) {
            done = done.note(clean(w, 160));
        }
        Ok((listing.entries, done))
    }

    /// Reads a few bytes from the middle of the smallest listed file, as a mount's ranged
    /// read does (`REST` + `RETR`).
    fn read(&mut self, entries: &[RemoteEntry]) -> Option<()> {
        let file = entries.iter().filter(|e| e.kind == EntryKind::File && e.size > 0).min_by_key(|e| e.size);
        let Some(file) = file else {
            let why =
                format!("{} lists no file to read from; the listing already crossed a data connection", self.t.root);
            self.report.skipped("read", &why);
            return Some(());
        };
        let path =
            if self.t.root == "/" { format!("/{}", file.name) } else { format!("{}/{}", self.t.root, file.name) };
        let (size, offset) = (file.size, file.size / 2);
        let command = passive_command(self.t.epsv);
        self.step("read", |w| {
            let (addr, _) = w.passive(command)?;
            let (sock, _) = w.data_connect(addr, command)?;
            let mut commands = Vec::new();
            if offset > 0 {
                commands.push(format!("REST {offset}"));
            }
            commands.push(format!("RETR {path}"));
            // Near its end the file is read to the end, as a transfer that completes.
            let want = (size - offset > READ_BYTES).then_some(READ_BYTES);
            let (bytes, tls) = w.transfer(sock, &commands, Some(&path), want)?;
            let summary = format!(
                "{} bytes at offset {offset} of {path} ({size} bytes) by {}REST + RETR; {}",
                bytes.len(),
                if offset > 0 { "" } else { "no " },
                tls.describe()
            );
            let done = Done::new(summary)
                .detail("path", path.clone())
                .detail("offset", offset)
                .detail("bytes", bytes.len())
                .detail("size", size)
                .detail("data_tls", tls.to_json());
            Ok(((), done))
        })
    }

    /// One transfer on a data connection: sends `commands` (the last one starts the
    /// transfer), secures the data connection, and reads to its end, or `want` bytes (of the
    /// file `path`). The server's replies are checked as they come.
    fn transfer(
        &mut self,
        sock: TcpStream,
        commands: &[String],
        path: Option<&str>,
        want: Option<u64>,
    ) -> Result<(Vec<u8>, DataTlsFacts), Fail> {
        let timeout = self.t.timeout;
        let name = self.name.clone();
        let config = Arc::clone(&self.config);
        let control = self.control()?;
        let exchange_deadline = control.deadline(timeout * 2);
        control.send(commands).map_err(|e| lost(e, "the transfer command"))?;
        // The ClientHello goes out with the command, as a mount sends it.
        let conn = ClientConnection::new(config, name).map_err(|e| Problem::Tls { error: e.to_string() })?;
        let mut data = StreamOwned::new(conn, sock);
        let data_deadline = watchdog::arm(&data.sock, timeout);
        if let Err(e) = flush_tls(&mut data) {
            return Err(data_failure(control, &e.to_string(), None));
        }
        for command in commands {
            let reply = control.reply().map_err(|e| lost(e, "the transfer command"))?;
            let verb = command.split(' ').next().unwrap_or("");
            let ok = match verb {
                "REST" => reply.code == 350,
                _ => matches!(reply.code, 125 | 150),
            };
            if !ok {
                return Err(transfer_refusal(verb, &reply, path));
            }
        }
        let mut first = Vec::new();
        if let Err(e) = handshake(&mut data.conn, &mut data.sock, &mut first) {
            let fired = data_deadline.as_ref().is_some_and(watchdog::Armed::fired);
            let error = if fired { "no TLS answer in time".to_string() } else { e.to_string() };
            return Err(data_failure(control, &error, None));
        }
        drop(data_deadline);
        // The data may take longer than one exchange's deadline; each read has its timeout.
        drop(exchange_deadline);
        let facts = DataTlsFacts::of(&data.conn);
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let ended = loop {
            if want.is_some_and(|w| bytes.len() as u64 >= w) {
                break false;
            }
            let room = want.map_or(chunk.len(), |w| chunk.len().min((w - bytes.len() as u64) as usize));
            match data.read(&mut chunk[..room]) {
                Ok(0) => break true,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    if bytes.len() > MAX_LISTING {
                        return Err(unexpected_text("the listing", &format!("more than {MAX_LISTING} bytes")));
                    }
                }
                // Some servers (pure-ftpd) close without TLS close_notify after the last byte.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break true,
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                    return Err(Problem::DataStalled.into());
                }
                Err(e) => return Err(data_failure(control, &e.to_string(), Some(facts.resumed))),
            }
        };
        data.conn.send_close_notify();
        let _ = data.conn.write_tls(&mut data.sock);
        drop(data);
        if ended {
            let _closing = control.deadline(timeout);
            let reply = control.reply().map_err(|e| lost(e, "the end of the transfer"))?;
            match reply.code {
                226 | 250 => {}
                _ if refers_to_tls(&reply) => {
                    return Err(Problem::DataTls {
                        error: "the server ended the transfer".into(),
                        reply: Some(said(&reply)),
                        resumed: Some(facts.resumed),
                    }
                    .into());
                }
                425 | 426 => return Err(Problem::DataRefused { reply: said(&reply) }.into()),
                _ => return Err(unexpected("the end of the transfer", &reply)),
            }
        }
        Ok((bytes, facts))
    }

    /// Says goodbye on the walk's connection, briefly (a transfer closed early may leave a
    /// reply or two before the `221`).
    fn quit(&mut self) {
        let Some(mut control) = self.control.take() else { return };
        let _deadline = control.deadline(AFTERWORD);
        if control.send(&["QUIT"]).is_ok() {
            for _ in 0..4 {
                match control.reply() {
                    Ok(r) if r.code != 221 => continue,
                    _ => break,
                }
            }
        }
    }
}

/// The last step: mastfs's own start-up, exactly as `mastfs mount` runs it.
fn mount_start_up(t: &Target, report: &mut Report) {
    let started = Instant::now();
    let result = (|| -> Result<(), RemoteError> {
        let tls = base_config(&t.tls)?;
        let stats = Arc::new(Stats::default());
        let endpoint = Endpoint {
            host: t.host.clone(),
            port: t.port,
            implicit: t.implicit,
            epsv: t.epsv,
            user: t.user.clone(),
            password: t.password.clone(),
            timeout: t.timeout,
        };
        let pool = Pool::new(endpoint, tls, 1, Arc::clone(&stats));
        FtpsRemote::new(pool, stats).check(&t.root)
    })();
    let elapsed = started.elapsed();
    match result {
        Ok(()) => report.ok(
            "mount",
            elapsed,
            Done::new(format!(
                "mastfs's own start-up: logged in, listed {} and opened a data connection ahead, as 'mastfs mount' does",
                t.root
            )),
        ),
        Err(e) => report.failed("mount", elapsed, explain(&Problem::Mount { error: e.to_string() }, t), Done::default()),
    }
}

/// What a data connection's TLS turned out to be.
struct DataTlsFacts {
    version: String,
    resumed: bool,
}

impl DataTlsFacts {
    fn of(conn: &ClientConnection) -> DataTlsFacts {
        DataTlsFacts {
            version: version_text(conn.protocol_version()),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        }
    }

    fn describe(&self) -> String {
        // Servers that insist on resumption (vsftpd) refuse the data connection otherwise;
        // one that let it through does not ask for it.
        let how = if self.resumed { "session resumed from the control connection" } else { "a new session" };
        format!("data {}, {how}", self.version)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({ "version": self.version, "resumed": self.resumed })
    }
}

/// `1 entry`, `2 entries`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Connects with a deadline; the error says how the attempt ended.
fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, Refusal> {
    let sock = TcpStream::connect_timeout(&addr, limit).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Refusal::TimedOut,
        io::ErrorKind::ConnectionRefused => Refusal::Refused,
        _ => Refusal::Other(e.to_string()),
    })?;
    let timeouts = sock.set_read_timeout(Some(limit)).and_then(|()| sock.set_write_timeout(Some(limit)));
    timeouts.map_err(|e| Refusal::Other(e.to_string()))?;
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// The greeting: `220`, possibly after a `120` ("ready in a while").
fn greeting<T: Transport>(control: &mut Control<T>, timeout: Duration) -> Step<()> {
    let during = "the greeting";
    let _deadline = control.deadline(timeout);
    let mut reply = control.reply().map_err(|e| greeting_problem(e, during))?;
    if reply.code == 120 {
        reply = control.reply().map_err(|e| greeting_problem(e, during))?;
    }
    match reply.code {
        220 => {
            let banner: Vec<String> = reply.lines.iter().map(|l| clean(l, 200)).collect();
            let mut done = Done::new(said(&reply)).detail("banner", banner.clone());
            for line in banner.iter().skip(1).take(5) {
                done = done.line(line.clone());
            }
            Ok(((), done))
        }
        400..=599 => Err(Problem::Busy { reply: said(&reply) }.into()),
        _ => Err(Problem::NotFtp { said: said(&reply) }.into()),
    }
}

fn greeting_problem(e: RemoteError, during: &'static str) -> Fail {
    match e {
        RemoteError::Protocol(m) => Problem::NotFtp { said: clean(&m, 120) }.into(),
        other => lost(other, during),
    }
}

fn auth_tls(plain: &mut Control<Wire>, timeout: Duration) -> Step<()> {
    let _deadline = plain.deadline(timeout);
    let reply = exchange(plain, "AUTH TLS", "AUTH TLS")?;
    match reply.code {
        234 => Ok(((), Done::new(said(&reply)))),
        421 => Err(Problem::Busy { reply: said(&reply) }.into()),
        _ => Err(Problem::AuthTlsRefused { reply: said(&reply) }.into()),
    }
}

/// Sends one command and reads its reply.
fn exchange<T: Transport>(control: &mut Control<T>, command: &str, during: &'static str) -> Result<Reply, Fail> {
    control.send(&[command]).map_err(|e| lost(e, during))?;
    control.reply().map_err(|e| lost(e, during))
}

/// A failure of the control connection itself.
fn lost(e: RemoteError, during: &'static str) -> Fail {
    match e {
        RemoteError::Timeout(_) => Problem::Timeout { during },
        RemoteError::Tls(m) => Problem::Tls { error: m },
        RemoteError::Protocol(m) => Problem::Unexpected { during, reply: clean(&m, 160) },
        RemoteError::Login(m) => Problem::LoginRefused { reply: m },
        _ => Problem::Closed { during },
    }
    .into()
}

fn unexpected(during: &'static str, reply: &Reply) -> Fail {
    unexpected_text(during, &said(reply))
}

fn unexpected_text(during: &'static str, what: &str) -> Fail {
    Problem::Unexpected { during, reply: what.to_string() }.into()
}

/// A refusal of a transfer's command, sorted by what it says about the data connection.
fn transfer_refusal(verb: &str, reply: &Reply, path: Option<&str>) -> Fail {
    let text = said(reply);
    if refers_to_tls(reply) {
        return Problem::DataTls { error: format!("{verb} refused"), reply: Some(text), resumed: None }.into();
    }
    match (verb, reply.code) {
        (_, 421) => Problem::Busy { reply: text }.into(),
        ("REST", 400..=599) => Problem::RestRefused { reply: text }.into(),
        (_, 425 | 426) => Problem::DataRefused { reply: text }.into(),
        ("RETR", 450 | 451 | 550 | 553 | 501) => {
            Problem::FileRefused { path: path.unwrap_or("the file").to_string(), reply: text }.into()
        }
        (_, 450 | 550 | 501) => Problem::RootRefused { reply: text }.into(),
        _ => unexpected("the transfer command", reply),
    }
}

/// A failed data connection, with the server's explanation if it gives one at once on the
/// control connection (vsftpd: `522 SSL connection failed: session reuse required`).
fn data_failure(control: &mut Control<TlsWire>, error: &str, resumed: Option<bool>) -> Fail {
    let _deadline = control.deadline(AFTERWORD);
    let reply = control.reply().ok().filter(|r| r.code >= 400).map(|r| said(&r));
    Problem::DataTls { error: clean(error, 160), reply, resumed }.into()
}

/// `522`/`534`, or a refusal that talks about TLS or SSL.
fn refers_to_tls(reply: &Reply) -> bool {
    let text = reply.text().to_ascii_lowercase();
    matches!(reply.code, 522 | 534) || (reply.code >= 400 && (text.contains("ssl") || text.contains("tls")))
}

fn too_many(reply: &Reply) -> bool {
    let t = reply.text().to_ascii_lowercase();
    t.contains("too many") || t.contains("no more") || t.contains("maximum number")
}

/// A reply as the report shows it: code and first line, cleaned.
fn said(reply: &Reply) -> String {
    format!("{} {}", reply.code, clean(&reply.text(), 160))
}

/// The first line of `bytes` if they look like an FTP reply (`220 ...`): what a server that
/// speaks plain FTP sends where TLS was expected.
fn ftp_reply_text(bytes: &[u8]) -> Option<String> {
    let digits = bytes.get(..3)?;
    let sep = bytes.get(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(sep, b' ' | b'-') {
        return None;
    }
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some(clean(&String::from_utf8_lossy(line), 160))
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn cert_problem(e: &CertificateError) -> CertProblem {
    match e {
        CertificateError::UnknownIssuer => CertProblem::UnknownIssuer,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => CertProblem::WrongName,
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => CertProblem::Expired,
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => CertProblem::NotYetValid,
        other => CertProblem::Other(format!("{other:?}")),
    }
}

fn version_text(v: Option<ProtocolVersion>) -> String {
    match v {
        Some(ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
        Some(ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS (version unknown)".into(),
    }
}

fn io_problem(e: &io::Error, during: &'static str) -> Problem {
    Problem::Tls { error: format!("{during}: {e}") }
}

/// Completes a TLS handshake over `io`, keeping the first bytes the server sent in `first`,
/// so that a server that answered in plain text can be recognised.
fn handshake<S: Read + Write>(conn: &mut ClientConnection, io: &mut S, first: &mut Vec<u8>) -> io::Result<()> {
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(io)?;
        }
        io.flush()?;
        if !conn.is_handshaking() {
            break;
        }
        let mut tee = Tee { io: &mut *io, first: &mut *first };
        if conn.read_tls(&mut tee)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection during TLS"));
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the server why (an alert), as rustls's own I/O would.
            let _ = conn.write_tls(io);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    while conn.wants_write() {
        conn.write_tls(io)?;
    }
    io.flush()
}

/// Sends what a TLS connection has queued (its ClientHello).
fn flush_tls(data: &mut DataTls) -> io::Result<()> {
    while data.conn.wants_write() {
        data.conn.write_tls(&mut data.sock)?;
    }
    Ok(())
}

/// Reads through to `io`, keeping a copy of the first bytes.
struct Tee<'a, S> {
    io: &'a mut S,
    first: &'a mut Vec<u8>,
}

impl<S: Read> Read for Tee<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        let keep = n.min(512usize.saturating_sub(self.first.len()));
        self.first.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Reply {
        Reply { code, lines: vec![format!("{code} {text}")] }
    }

    #[test]
    fn plain_ftp_where_tls_was_expected_is_recognised_by_its_first_line() {
        assert_eq!(ftp_reply_text(b"220 (vsFTPd 3.0.3)\r\n").as_deref(), Some("220 (vsFTPd 3.0.3)"));
        assert_eq!(ftp_reply_text(b"220-Welcome\r\n220 ok\r\n").as_deref(), Some("220-Welcome"));
        assert_eq!(ftp_reply_text(b"\x16\x03\x03\x00\x7a"), None, "a TLS record is not plain text");
        assert_eq!(ftp_reply_text(b"22"), None);
    }

    #[test]
    fn transfer_refusals_are_sorted_by_what_they_say_about_the_data_connection() {
        let p = |verb, r: Reply| transfer_refusal(verb, &r, Some("/f")).0.problem;
        assert!(matches!(
            p("RETR", reply(522, "SSL connection failed: session reuse required")),
            Problem::DataTls { .. }
        ));
        assert!(matches!(p("LIST", reply(425, "Security: Bad IP connecting.")), Problem::DataRefused { .. }));
        assert!(matches!(p("RETR", reply(550, "Failed to open file.")), Problem::FileRefused { .. }));
        assert!(matches!(p("REST", reply(502, "REST not implemented")), Problem::RestRefused { .. }));
        assert!(matches!(p("MLSD", reply(550, "No such directory")), Problem::RootRefused { .. }));
        assert!(matches!(p("RETR", reply(421, "Timeout")), Problem::Busy { .. }));
    }

    #[test]
    fn a_closed_port_and_a_silent_one_are_told_apart() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert_eq!(tcp_connect(addr, Duration::from_secs(5)).err(), Some(Refusal::Refused));
    }

    #[test]
    fn a_reply_shows_its_code_and_a_clean_first_line() {
        assert_eq!(said(&reply(530, "Login \x1b[31mincorrect.")), "530 Login [31mincorrect.");
    }
}
