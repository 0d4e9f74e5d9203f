//! Ranged reads: one write of `REST n` + `RETR path` (with the version check and `PASV` in
//! the same write when they are needed), the data connection's ClientHello sent at the same
//! moment, and a reader that decrypts straight into the caller's buffer.
//!
//! On a connection with a data connection opened ahead, a cold read costs two round trips
//! before its first bytes: the replies to the commands together with the server's TLS
//! handshake, then the client's TLS finish answered by the data. Without one, `PASV` in the
//! same write adds the `227` and the TCP connect.
//!
//! A file replaced on the server must never mix its bytes with the old version's: vsftpd
//! states the size in its `150` reply; other servers get `MLST` (size and time) or `SIZE` in
//! the same write, and every check passes before a single byte is handed out. A `350` whose
//! text names another offset than the one asked for is a stale reply: the connection is out
//! of step and dropped, never trusted to place bytes.
//!
//! Threads: a reader is used by one thread at a time (the caller's); it owns its lease.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Owes;
use super::control::{Reply, io_error};
use super::data::{self, timed_out};
use super::datatls::DataTls;
use super::login::remaining;
use super::pool::Lease;
use super::watchdog;
use super::wire::{
    bytes_received, clamp_window, limit_receive_buffer, max_receive_buffer, received_unread, reset_on_close, tcp_info,
};
use crate::error::RemoteError;
use crate::listing::parse_mlsd_line;
use crate::remote::{Intent, RangeReader, Version};
use crate::stats::Stats;

/// Data connections must keep moving: per-read timeouts alone let a server that sends a
/// byte now and then hold a read forever. Less than this many bytes in a whole timeout
/// period fails the read as a timeout.
const MIN_PROGRESS: u64 = 16 * 1024;
/// TLS record payload size servers use for bulk data (OpenSSL, rustls, pyOpenSSL).
const RECORD: usize = 16 * 1024;
/// A `Run` this short gets a receive buffer sized for it, like a `Peek`; longer runs keep the
/// kernel's auto-tuning (see `size_window`).
const SHORT_RUN: u64 = 4 << 20;
/// Most bytes a TLS record adds to its payload with the suites rustls offers: header (5),
/// explicit nonce (8, TLS 1.2 GCM) and tag (16); TLS 1.3 adds 22.
const RECORD_OVERHEAD: u64 = 29;
/// Near a run's planned end, the window is narrowed again after at most this many bytes:
/// between two narrowings the window's edge moves forward with what arrives.
const NARROW_EVERY: u64 = 32 * 1024;

/// How a RETR's file version is checked on servers that do not state the size in `150`.
#[derive(Clone, Copy)]
enum Check {
    Mlst,
    Size,
}

/// Starts a ranged read of `path` at `offset` on the leased connection.
pub(crate) fn open(
    mut lease: Lease,
    path: &str,
    offset: u64,
    version: Version,
    intent: Intent,
    deadline: Instant,
) -> Result<FtpsReader, RemoteError> {
    let pool = Arc::clone(lease.pool());
    let stats = Arc::clone(pool.stats());
    let timeout = pool.timeout();
    let name = pool.server_name()?;
    let epsv = pool.epsv();
    let conn = lease.conn()?;
    let mut ahead = conn.take_ahead(&stats);
    let check = match pool.announces_size() {
        Some(true) => None,
        _ if conn.mlst => Some(Check::Mlst),
        _ => Some(Check::Size),
    };
    let passive = data::passive_command(epsv);
    let mut commands = Vec::new();
    match check {
        Some(Check::Mlst) => commands.push(format!("MLST {path}")),
        Some(Check::Size) => commands.push(format!("SIZE {path}")),
        None => {}
    }
    if ahead.is_none() {
        commands.push(passive.to_string());
    }
    if offset > 0 {
        commands.push(format!("REST {offset}"));
    }
    commands.push(format!("RETR {path}"));
    if let Some(a) = &ahead {
        size_window(&a.sock, offset, intent);
    }

    let _exchange = conn.control.deadline(remaining(deadline)?);
    conn.control.send(&commands)?;
    Stats::add(&stats.retrs, 1);
    let mut data_deadline = None;
    let mut stream = match ahead.take() {
        Some(a) => {
            data_deadline = watchdog::arm(&a.sock, remaining(deadline)?);
            Some(data::start_tls(a.sock, &conn.tls, &name, &conn.flights).inspect_err(|_| conn.control.set_broken())?)
        }
        None => None,
    };

    // Replies come back in the order of the commands. A refusal is remembered and the
    // remaining replies still read, so the connection stays in step.
    let mut failure: Option<RemoteError> = None;
    if let Some(check) = check {
        let (verb, code) = match check {
            Check::Mlst => ("MLST", 250),
            Check::Size => ("SIZE", 213),
        };
        match conn.control.answer_about_path(&format!("{verb} {path}"), &[code]) {
            Ok(reply) => {
                if let Err(e) = verify(check, &reply, path, version) {
                    failure = Some(e);
                }
            }
            Err(e) if conn.control.is_broken() => return Err(e),
            Err(e) => failure = Some(e),
        }
    }
    if stream.is_none() {
        match conn.control.answer(passive, &[if epsv { 229 } else { 227 }]) {
            Ok(reply) => {
                // The server now waits for this connection before it answers RETR: any
                // failure from here leaves it in a state we cannot follow.
                let addr = data::passive_address(&reply, conn.peer).inspect_err(|_| conn.control.set_broken())?;
                let sock = data::connect(addr, &conn.flights, remaining(deadline)?, timeout)
                    .inspect_err(|_| conn.control.set_broken())?;
                size_window(&sock, offset, intent);
                data_deadline = watchdog::arm(&sock, remaining(deadline)?);
                stream = Some(
                    data::start_tls(sock, &conn.tls, &name, &conn.flights)
                        .inspect_err(|_| conn.control.set_broken())?,
                );
            }
            Err(e) if conn.control.is_broken() => return Err(e),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if offset > 0 {
        match conn.control.answer("REST", &[350]) {
            Ok(reply) if rest_confirms(&reply, offset) => {}
            Ok(reply) => {
                conn.control.set_broken();
                return Err(RemoteError::Protocol(format!(
                    "REST {offset} answered by {:?}: replies out of step",
                    reply.text()
                )));
            }
            // A refused REST makes the RETR behind it start at byte 0: none of its bytes
            // may be used, and the connection is not worth untangling.
            Err(e) => {
                conn.control.set_broken();
                return Err(e);
            }
        }
    }
    let started = match conn.control.answer_about_path(&format!("RETR {path}"), &[125, 150]) {
        Ok(reply) => Some(reply),
        Err(e) if conn.control.is_broken() => return Err(e),
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    };
    let Some(started) = started else {
        // Nothing was sent; the unused data connection is closed and the next PASV replaces
        // it on the server's side.
        drop(data_deadline);
        drop(stream);
        return Err(failure.unwrap_or_else(|| RemoteError::Protocol(format!("RETR {path} was not answered"))));
    };
    let Some(mut stream) = stream else {
        conn.control.set_broken();
        return Err(RemoteError::Protocol(format!("RETR {path} started without a data connection")));
    };
    if failure.is_none() {
        failure = check_announced(&pool, &started, check.is_some(), path, version).err();
    }
    if let Some(e) = failure {
        // vsftpd ends the whole session ("500 OOPS" in clear text on the control
        // connection) when a data connection dies in its TLS handshake: finish the handshake
        // (its flight is already on the way) before closing.
        data::finish_tls(&mut stream)
            .map_err(|e| timed_out(e, &data_deadline))
            .inspect_err(|_| conn.control.set_broken())?;
        drop(data_deadline);
        count_link_bytes(&stream, &stats);
        conn.abort_transfer(stream, &stats, true, timeout);
        return Err(e);
    }
    data::finish_tls(&mut stream)
        .map_err(|e| timed_out(e, &data_deadline))
        .inspect_err(|_| conn.control.set_broken())?;
    drop(data_deadline);
    let planned_end = match intent {
        Intent::Run { end } if end < version.size => Some(end),
        _ => None,
    };
    Ok(FtpsReader {
        lease,
        stream: Some(stream),
        start: offset,
        position: offset,
        size: version.size,
        planned_end,
        narrowed_at: None,
        progress: Progress::new(timeout),
        failed: false,
        ended: false,
        stats,
    })
}

/// Sizes the data connection's receive buffer, before anything is in flight, for what the
/// reader intends. A `Peek` (or a short `Run`) wants a few records: a small buffer keeps the
/// server from sending much it will throw away. A long `Run` keeps the kernel's
/// auto-tuning, which a bulk transfer over a long link needs, and is narrowed near its planned
/// end by a window clamp instead (`FtpsReader::narrow_window`): shrinking the buffer under data
/// already in flight makes the kernel drop some of it, which costs a retransmission timeout
/// on the bytes the reader still wants.
fn size_window(sock: &TcpStream, offset: u64, intent: Intent) {
    let wanted = match intent {
        Intent::Peek { len } => len,
        Intent::Run { end } if end.saturating_sub(offset) <= SHORT_RUN => end.saturating_sub(offset),
        Intent::Run { .. } => return,
    };
    // Room for the TLS record holding the last wanted byte; the kernel doubles the value and
    // advertises a window of about 0.5 to 0.9 times that.
    let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
    let bytes = wanted.saturating_add(RECORD + 1024).clamp(3 * RECORD / 2, 4 << 20);
    if let Err(e) = limit_receive_buffer(sock, bytes) {
        log::debug!("cannot size the receive buffer: {e}");
    }
}

/// Checks an `MLST` or `SIZE` answer against the version the reader expects.
fn verify(check: Check, reply: &Reply, path: &str, version: Version) -> Result<(), RemoteError> {
    let changed = |what: String| Err(RemoteError::Changed(format!("{path}: {what}")));
    match check {
        Check::Mlst => {
            let entry = mlst_entry(reply, "x")
                .map_err(|e| RemoteError::Protocol(format!("MLST {path}: {e}")))?
                .ok_or_else(|| RemoteError::Protocol(format!("MLST {path}: not a file")))?;
            if entry.size != version.size {
                return changed(format!("size is now {}, was {}", entry.size, version.size));
            }
            let mtime = unix_secs(entry.mtime);
            // An MLST without a modify fact reports the epoch; only a real time is compared.
            if mtime != 0 && mtime != version.mtime {
                return changed(format!("modified at {mtime}, was {}", version.mtime));
            }
            Ok(())
        }
        Check::Size => {
            let size: u64 = reply
                .text()
                .trim()
                .parse()
                .map_err(|_| RemoteError::Protocol(format!("SIZE {path}: {:?}", reply.text())))?;
            if size != version.size {
                return changed(format!("size is now {size}, was {}", version.size));
            }
            Ok(())
        }
    }
}

/// The entry in an `MLST` reply (its facts line), named `name`.
pub(crate) fn mlst_entry(
    reply: &Reply,
    name: &str,
) -> Result<Option<crate::remote::RemoteEntry>, crate::listing::ParseError> {
    let line = reply.lines.get(1).map(|l| l.trim_start()).unwrap_or("");
    // The facts line names the path after the facts; only the facts matter here.
    let facts = line.split_once("; ").map_or(line, |(f, _)| f);
    // A listing skips the `cdir`/`pdir` entries; MLST of a directory may describe it so
    // (RFC 3659 7.5.1), and then it is simply a directory.
    let facts: String = facts
        .split(';')
        .map(|fact| match fact.split_once('=') {
            Some((k, v))
                if k.eq_ignore_ascii_case("type")
                    && (v.eq_ignore_ascii_case("cdir") || v.eq_ignore_ascii_case("pdir")) =>
            {
                "type=dir"
            }
            _ => fact,
        })
        .collect::<Vec<_>>()
        .join(";");
    parse_mlsd_line(&format!("{facts}; {name}"))
}

/// Compares the size a `150` reply announces (vsftpd, ProFTPD) with the version's, and learns
/// whether this server announces sizes at all.
fn check_announced(
    pool: &super::pool::Pool,
    reply: &Reply,
    checked: bool,
    path: &str,
    version: Version,
) -> Result<(), RemoteError> {
    match announced_size(&reply.text()) {
        Some(size) => {
            pool.set_announces_size(true);
            if size != version.size {
                return Err(RemoteError::Changed(format!(
                    "{path}: the server announces {size} bytes, the listing said {}",
                    version.size
                )));
            }
            Ok(())
        }
        None => {
            pool.set_announces_size(false);
            if checked {
                Ok(())
            } else {
                // The server stated sizes before and now does not: this read went unchecked.
                Err(RemoteError::Protocol(format!("RETR {path}: no size in the reply; the version is unchecked")))
            }
        }
    }
}

/// Whether a `350` answers `REST offset`: when its text holds a number, the last one must be
/// the offset (`350 Restart position accepted (100).`, `350 Restarting at 100`).
fn rest_confirms(reply: &Reply, offset: u64) -> bool {
    let text = reply.text();
    let last = text.split(|c: char| !c.is_ascii_digit()).rfind(|w| !w.is_empty());
    match last {
        None => true,
        Some(number) => number.parse::<u64>().is_ok_and(|n| n == offset),
    }
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

/// Adds what crossed the link on a data connection (TCP's count) to `link_bytes`.
fn count_link_bytes(stream: &DataTls, stats: &Stats) {
    if let Some(n) = bytes_received(stream.socket()) {
        Stats::add(&stats.link_bytes, n);
    }
}

/// The data connection must move at least `MIN_PROGRESS` bytes per timeout period.
struct Progress {
    period_start: Instant,
    period_bytes: u64,
    timeout: Duration,
}

impl Progress {
    fn new(timeout: Duration) -> Progress {
        Progress { period_start: Instant::now(), period_bytes: 0, timeout }
    }

    fn moved(&mut self, n: usize) -> Result<(), RemoteError> {
        self.period_bytes += n as u64;
        if self.period_start.elapsed() >= self.timeout {
            if self.period_bytes < MIN_PROGRESS {
                return Err(RemoteError::Timeout("data connection slower than a trickle".into()));
            }
            self.period_start = Instant::now();
            self.period_bytes = 0;
        }
        Ok(())
    }
}

/// One ranged transfer in progress.
pub(crate) struct FtpsReader {
    lease: Lease,
    stream: Option<DataTls>,
    /// Where the transfer began (`REST`).
    start: u64,
    position: u64,
    size: u64,
    /// A run's end before the end of the file, where the reader will close the transfer.
    planned_end: Option<u64>,
    /// Where the window was last narrowed towards `planned_end`.
    narrowed_at: Option<u64>,
    progress: Progress,
    failed: bool,
    /// The server ended the data stream itself.
    ended: bool,
    stats: Arc<Stats>,
}

impl FtpsReader {
    fn fail(&mut self, e: RemoteError) -> RemoteError {
        self.failed = true;
        if let Ok(conn) = self.lease.conn() {
            conn.control.set_broken();
            conn.stalled = matches!(e, RemoteError::Timeout(_));
        }
        e
    }

    /// Bytes that have arrived and that no read has taken yet: in the kernel's receive queue,
    /// and in the data connection's buffer (TLS records, or a record's plaintext that did not
    /// fit the last read).
    fn queued(stream: &DataTls) -> Option<u64> {
        let unread = received_unread(stream.socket()).ok()?;
        Some((unread + stream.buffered()) as u64)
    }

    /// Narrows the TCP window as a run nears its planned end, so that the server sends the
    /// TLS record holding the run's last byte and nothing past it: whatever it sends past
    /// the end crosses the link only to be thrown away when the transfer is closed there. At a
    /// high rate with a reader that lags, that was most of a receive buffer (several MiB) per
    /// stripe end. The window keeps room for every byte still wanted, so the sender is never
    /// held back by it; TLS framing is counted at its most (see `RECORD_OVERHEAD`), so the
    /// window errs on the large side.
    fn narrow_window(&mut self) {
        let (Some(end), Some(stream)) = (self.planned_end, self.stream.as_ref()) else { return };
        let left = end.saturating_sub(self.position);
        // Farther from the end than any window reaches, there is nothing to narrow.
        if left == 0 || left > max_receive_buffer() + (1 << 20) {
            return;
        }
        if self.narrowed_at.is_some_and(|at| self.position < at + NARROW_EVERY && left > NARROW_EVERY) {
            return;
        }
        let Some(queued) = Self::queued(stream) else { return };
        let plain_queued = queued.saturating_sub((queued / RECORD as u64 + 1) * RECORD_OVERHEAD);
        let needed = left.saturating_sub(plain_queued);
        // Whole records: the one holding the last wanted byte must arrive complete.
        let window = needed + (needed / RECORD as u64 + 2) * RECORD_OVERHEAD + RECORD as u64;
        if self.narrowed_at.is_none() {
            log::debug!("narrowing the window {left} bytes before a run's end at {end}: {window} bytes");
        }
        log::trace!("window {window} at {} ({left} left, {queued} queued)", self.position);
        if let Err(e) = clamp_window(stream.socket(), usize::try_from(window).unwrap_or(usize::MAX)) {
            log::debug!("cannot clamp the window: {e}");
            self.planned_end = None;
            return;
        }
        self.narrowed_at = Some(self.position);
    }

    /// Hands the connection back: after the whole file, to finish the transfer normally;
    /// before it, to abort; after a failure, to be dropped.
    fn finish(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        if let Some(end) = self.planned_end.filter(|&end| self.position == end && log::log_enabled!(log::Level::Debug))
        {
            // What the narrowing left to waste, for `-vv` logs.
            let queued = Self::queued(&stream).unwrap_or(0);
            // Packets out of order mean a loss on the way or a drop here: none are expected.
            let (window, disorder) = tcp_info(stream.socket()).map_or((0, 0), |i| (i.tcpi_rcv_wnd, i.tcpi_rcv_ooopack));
            log::debug!(
                "run closed at its planned end {end}: {queued} bytes queued, window {window}, \
                 {disorder} packets out of order"
            );
        }
        count_link_bytes(&stream, &self.stats);
        let Ok(conn) = self.lease.conn() else { return };
        if self.failed {
            reset_on_close(stream.socket());
            conn.control.set_broken();
        } else if self.ended || self.position >= self.size {
            conn.owes = Owes::Finish(Box::new(stream));
        } else {
            conn.abort_transfer(stream, &self.stats, self.position == self.start, self.progress.timeout);
        }
    }
}

impl RangeReader for FtpsReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError> {
        if self.failed {
            return Err(RemoteError::Protocol("read after the transfer failed".into()));
        }
        if self.position >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.size - self.position).unwrap_or(usize::MAX).min(buf.len());
        let Some(stream) = self.stream.as_mut() else {
            return Err(RemoteError::Protocol("read after close".into()));
        };
        let read = loop {
            match stream.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                self.ended = true;
                self.failed = true;
                let deadline = Instant::now() + self.progress.timeout;
                let (Some(stream), Ok(conn)) = (self.stream.take(), self.lease.conn()) else {
                    return Err(RemoteError::Protocol("read after close".into()));
                };
                match conn.end_of_short_transfer(stream, deadline) {
                    // The server says it sent the whole file, short of the size the listing
                    // gave: the file is not the version the reader knows.
                    Ok(true) => Err(RemoteError::Changed(format!(
                        "the transfer ended at byte {}, the listing said {}",
                        self.position, self.size
                    ))),
                    // It broke the transfer off (a 4xx or 5xx reply): a transient failure,
                    // which the read path resumes at this byte.
                    Ok(false) => Err(RemoteError::Protocol(format!(
                        "the server broke off the transfer at byte {}",
                        self.position
                    ))),
                    Err(e) => Err(self.fail(e)),
                }
            }
            Ok(n) => {
                self.position += n as u64;
                Stats::add(&self.stats.net_bytes, n as u64);
                self.progress.moved(n).map_err(|e| self.fail(e))?;
                self.narrow_window();
                Ok(n)
            }
            Err(e) => Err(self.fail(io_error(e, "data connection"))),
        }
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn plan_end(&mut self, end: u64) {
        self.planned_end = (end < self.size).then_some(end);
    }

    fn reach(&self) -> Option<u64> {
        let stream = self.stream.as_ref()?;
        let queued = Self::queued(stream)?;
        // 0 from a kernel too old to report the window, or a closed one that may reopen:
        // count the largest window there can be.
        let info = tcp_info(stream.socket())?;
        let window = match u64::from(info.tcpi_rcv_wnd) {
            0 => max_receive_buffer(),
            w => w,
        };
        // The window is what the server may send, not what it sends: near a planned end it
        // covers the whole rest of the run however slowly that arrives. A sender has about
        // one round trip's worth in flight, and the kernel's measure of that (the most the
        // reader took in one round trip, which never shrinks) is far below the window of a
        // slow stream: twice it, then, but never more than the window.
        let in_flight = window.min(2 * u64::from(info.tcpi_rcv_space).max(RECORD as u64));
        // TLS bytes count as file bytes (more than they hold), and the record rustls is
        // assembling may hold one more.
        Some(self.position + queued + in_flight + RECORD as u64)
    }

    fn close(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for FtpsReader {
    fn drop(&mut self) {
        self.finish();
    }
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, line: &str) -> Reply {
        Reply { code, lines: vec![line.to_string()] }
    }

    #[test]
    fn retr_reply_sizes_are_read_only_from_the_bytes_form() {
        assert_eq!(announced_size("Opening BINARY mode data connection for /a b.fits (2880 bytes)."), Some(2880));
        assert_eq!(announced_size("Accepted data connection"), None);
        assert_eq!(announced_size("File status okay. About to open data connection."), None);
        assert_eq!(announced_size("Opening (x) (12 kbytes)"), None);
    }

    #[test]
    fn a_350_must_name_the_offset_that_was_asked_for_when_it_names_one() {
        assert!(rest_confirms(&reply(350, "350 Restart position accepted (100)."), 100));
        assert!(rest_confirms(&reply(350, "350 Restarting at 100"), 100));
        assert!(rest_confirms(&reply(350, "350 Restarting at position 100."), 100));
        assert!(rest_confirms(&reply(350, "350 Ready to resume"), 100), "no number, nothing to compare");
        assert!(!rest_confirms(&reply(350, "350 Restart position accepted (4096)."), 100), "a stale 350");
        assert!(!rest_confirms(&reply(350, "350 Restarting at 1000"), 100));
    }

    #[test]
    fn an_mlst_reply_gives_the_entry_of_its_facts_line() {
        let r = Reply {
            code: 250,
            lines: vec![
                "250-Begin".into(),
                " type=file;size=4194304;modify=20261127184037;UNIX.mode=0644; /big.bin".into(),
                "250 End.".into(),
            ],
        };
        let entry = mlst_entry(&r, "big.bin").expect("parse").expect("entry");
        assert_eq!(entry.size, 4_194_304);
        assert_eq!(entry.name, "big.bin");
        let version = Version { size: 4_194_304, mtime: unix_secs(entry.mtime) };
        assert!(verify(Check::Mlst, &r, "/big.bin", version).is_ok());
        let older = Version { size: 4_194_304, mtime: version.mtime - 1 };
        assert!(matches!(verify(Check::Mlst, &r, "/big.bin", older), Err(RemoteError::Changed(_))));
        let shorter = Version { size: 10, mtime: version.mtime };
        assert!(matches!(verify(Check::Mlst, &r, "/big.bin", shorter), Err(RemoteError::Changed(_))));
    }

    #[test]
    fn an_mlst_of_a_directory_described_as_cdir_is_a_directory() {
        let r = Reply {
            code: 250,
            lines: vec!["250-Listing /d".into(), " type=cdir;modify=20261127184037; /d".into(), "250 End.".into()],
        };
        let entry = mlst_entry(&r, "d").expect("parse").expect("an entry");
        assert_eq!(entry.kind, crate::remote::EntryKind::Dir);
        assert_eq!(entry.name, "d");
    }

    #[test]
    fn a_size_reply_other_than_the_listed_size_is_a_changed_file() {
        let v = Version { size: 7, mtime: 0 };
        assert!(verify(Check::Size, &reply(213, "213 7"), "/f", v).is_ok());
        assert!(matches!(verify(Check::Size, &reply(213, "213 8"), "/f", v), Err(RemoteError::Changed(_))));
        assert!(matches!(verify(Check::Size, &reply(213, "213 x"), "/f", v), Err(RemoteError::Protocol(_))));
    }
}
