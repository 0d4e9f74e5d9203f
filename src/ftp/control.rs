//! The control channel, driven directly once logged in: several commands in one write,
//! replies read back in order.
//!
//! FTP servers read commands one line at a time, so a client may send commands that do not
//! depend on each other's answers together (`REST n` + `RETR f`, `SIZE` + `MDTM` + `CWD`)
//! and save a round trip per command. The price is that a connection whose replies fall out
//! of step with its commands would pair the wrong reply with a command. So every reply is
//! checked against the codes its command may answer: a refusal (4xx/5xx) is an answer and
//! leaves the connection usable; anything else unexpected (a `226` where a `350` belongs, a
//! garbled line, an oversized reply, a timeout) marks the connection broken, and a broken
//! connection is dropped, never reused.
//!
//! Threads: a `Control` belongs to one connection and is used by one thread at a time.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zeroize::Zeroizing;

use super::tls::TlsWire;
use super::watchdog::{self, Armed};
use super::wire::Wire;
use crate::config::Secret;
use crate::error::RemoteError;

/// A reply larger than this (all its lines) is garbage, not a reply.
const MAX_REPLY: usize = 64 * 1024;

/// What the control channel runs over: TLS in production, plain TCP in tests.
pub(crate) trait Transport: Read + Write + Send {
    fn socket(&self) -> &TcpStream;
}

impl Transport for Wire {
    fn socket(&self) -> &TcpStream {
        Wire::socket(self)
    }
}

impl Transport for TlsWire {
    fn socket(&self) -> &TcpStream {
        self.get_ref().socket()
    }
}

/// One server reply: its code and its lines (CRLF removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// The first line without its code, printable characters only, for messages and parsing.
    pub(crate) fn text(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let rest = first.get(4..).unwrap_or("");
        rest.chars().filter(|c| !c.is_control()).take(200).collect::<String>().trim().to_string()
    }

    /// The whole reply on one line, for error messages.
    fn describe(&self) -> String {
        format!("{} {}", self.code, self.text())
    }
}

pub(crate) struct Control<T> {
    io: T,
    /// Bytes received and not yet consumed, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// Set by anything that leaves the reply stream in an unknown state.
    broken: bool,
    /// Whether the last deadline armed on the socket fired (then errors are timeouts).
    timer: Option<Arc<AtomicBool>>,
}

impl<T: Transport> Control<T> {
    pub(crate) fn new(io: T) -> Control<T> {
        Control { io, buf: Vec::new(), start: 0, broken: false, timer: None }
    }

    /// Whether the connection may still be used: no transport error, no reply out of step.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the last deadline armed for an exchange fired: the server did not answer in time.
    pub(crate) fn timed_out(&self) -> bool {
        self.timer.as_ref().is_some_and(|t| t.load(Ordering::SeqCst))
    }

    /// Marks the connection unusable (e.g. a transfer on it ended in an unknown state).
    pub(crate) fn set_broken(&mut self) {
        self.broken = true;
    }

    /// A wall-clock deadline on the socket for an exchange: a server that drips its replies
    /// one byte per read timeout cannot hold the connection longer than `limit`.
    pub(crate) fn deadline(&mut self, limit: Duration) -> Option<Armed> {
        let armed = watchdog::arm(self.io.socket(), limit);
        self.timer = armed.as_ref().map(Armed::flag);
        armed
    }

    /// An error of the socket, as a timeout when the deadline shut the socket down.
    fn timed(&self, e: RemoteError, what: &str) -> RemoteError {
        if self.timer.as_ref().is_some_and(|t| t.load(Ordering::SeqCst)) {
            return RemoteError::Timeout(format!("no answer from the server in time ({what})"));
        }
        e
    }

    /// Sends `commands` in one write. A command holding CR, LF or NUL would be read by the
    /// server as two commands (or cut), so it is refused before anything is sent.
    pub(crate) fn send<S: AsRef<str>>(&mut self, commands: &[S]) -> Result<(), RemoteError> {
        let mut out = Vec::new();
        for command in commands {
            let command = command.as_ref();
            if command.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return Err(RemoteError::Protocol(format!(
                    "{:?} cannot be sent: it holds a line break or NUL",
                    command.split(' ').next().unwrap_or("")
                )));
            }
            log::debug!("-> {command}");
            out.extend_from_slice(command.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.write_out(&out)
    }

    /// Sends `PASS` with the password. Unlike `send`, its log line never shows the password,
    /// and the bytes that held it are wiped.
    pub(crate) fn send_password(&mut self, password: &Secret) -> Result<(), RemoteError> {
        if password.expose().bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(RemoteError::Login("the password holds a line break or NUL; it cannot be sent".into()));
        }
        log::debug!("-> PASS (not shown)");
        let line = Zeroizing::new(format!("PASS {}\r\n", password.expose()));
        self.write_out(line.as_bytes())
    }

    fn write_out(&mut self, out: &[u8]) -> Result<(), RemoteError> {
        let written = self.io.write_all(out).and_then(|()| self.io.flush());
        written.map_err(|e| {
            let e = self.timed(io_error(e, "sending commands"), "sending commands");
            self.fail(e)
        })
    }

    /// Reads the next reply, single- or multi-line.
    pub(crate) fn reply(&mut self) -> Result<Reply, RemoteError> {
        let result = self.read_reply().map_err(|e| self.timed(e, "reading a reply"));
        if let Err(e) = &result {
            self.broken = true;
            log::debug!("<- failed: {e}");
        }
        result
    }

    /// Like `answer` for a command about a path (`RETR`, `MLST`, `CWD`, ...): a `501` is the
    /// server refusing the path itself (pyftpdlib: "501 No such directory"), like a `550`.
    pub(crate) fn answer_about_path(&mut self, what: &str, ok: &[u16]) -> Result<Reply, RemoteError> {
        let reply = self.reply()?;
        if ok.contains(&reply.code) {
            return Ok(reply);
        }
        if reply.code == 501 {
            return Err(RemoteError::Unavailable(format!("{what}: {}", reply.describe())));
        }
        Err(self.refusal(what, &reply))
    }

    /// Reads the next reply and checks it answers `what` with one of `ok`. A refusal (4xx or
    /// 5xx) is returned as an error that leaves the connection usable (except 421, after which
    /// the server closes); any other unexpected code means the replies are out of step.
    pub(crate) fn answer(&mut self, what: &str, ok: &[u16]) -> Result<Reply, RemoteError> {
        let reply = self.reply()?;
        if ok.contains(&reply.code) {
            return Ok(reply);
        }
        Err(self.refusal(what, &reply))
    }

    /// The error for a reply that is not one of the expected codes.
    pub(crate) fn refusal(&mut self, what: &str, reply: &Reply) -> RemoteError {
        let text = reply.text();
        match reply.code {
            421 => self.fail(RemoteError::TooManyConnections(text)),
            530 if looks_like_too_many(&text) => self.fail(RemoteError::TooManyConnections(text)),
            530 => RemoteError::Login(text),
            450 | 550 | 553 => RemoteError::Unavailable(format!("{what}: {}", reply.describe())),
            400..=599 => RemoteError::Protocol(format!("{what}: refused: {}", reply.describe())),
            _ => self.fail(RemoteError::Protocol(format!("{what}: reply out of step: {}", reply.describe()))),
        }
    }

    /// Whether an idle connection is still as it was left: nothing from the server since (a
    /// reply would mean it said something unasked, such as a timeout notice), not closed.
    /// TLS records that carry no text (late session tickets) are taken in passing.
    pub(crate) fn is_quiet(&mut self) -> bool {
        if self.broken || self.start < self.buf.len() {
            return false;
        }
        if super::wire::is_silent(self.io.socket()) {
            return true;
        }
        if self.io.socket().set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let quiet = matches!(self.io.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        let restored = self.io.socket().set_nonblocking(false).is_ok();
        quiet && restored
    }

    fn fail(&mut self, e: RemoteError) -> RemoteError {
        self.broken = true;
        e
    }

    fn read_reply(&mut self) -> Result<Reply, RemoteError> {
        let mut size = 0;
        let first = self.read_line(&mut size)?;
        let (code, multi) = parse_code(&first)
            .ok_or_else(|| RemoteError::Protocol(format!("garbage from the server: {}", printable(&first))))?;
        let mut lines = vec![String::from_utf8_lossy(&first).into_owned()];
        if multi {
            let end = format!("{code} ");
            loop {
                let line = self.read_line(&mut size)?;
                let done = line.starts_with(end.as_bytes()) || line == end.trim_end().as_bytes();
                lines.push(String::from_utf8_lossy(&line).into_owned());
                if done {
                    break;
                }
            }
        }
        let reply = Reply { code, lines };
        log::debug!("<- {}", reply.describe());
        Ok(reply)
    }

    /// One line without its line end (CRLF, or a bare LF from sloppy servers).
    fn read_line(&mut self, size: &mut usize) -> Result<Vec<u8>, RemoteError> {
        loop {
            if let Some(at) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let end = self.start + at;
                *size += at + 1;
                if *size > MAX_REPLY {
                    return Err(too_long());
                }
                let mut line = self.buf[self.start..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start = end + 1;
                return Ok(line);
            }
            if *size + self.buf.len() - self.start > MAX_REPLY {
                return Err(too_long());
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 4096];
            let n = loop {
                match self.io.read(&mut chunk) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error(e, "reading a reply")),
                }
            };
            if n == 0 {
                return Err(RemoteError::Connect {
                    kind: io::ErrorKind::UnexpectedEof,
                    message: "the server closed the control connection".into(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `ddd ` or `ddd-` (or a bare `ddd`): the code and whether more lines follow.
fn parse_code(line: &[u8]) -> Option<(u16, bool)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Some((code, false)),
        Some(b'-') => Some((code, true)),
        Some(_) => None,
    }
}

fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).chars().map(|c| if c.is_control() { '?' } else { c }).take(80).collect()
}

fn too_long() -> RemoteError {
    RemoteError::Protocol(format!("a reply longer than {MAX_REPLY} bytes"))
}

fn looks_like_too_many(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("too many") || t.contains("no more") || t.contains("maximum number")
}

/// A socket error as a `RemoteError`, keeping TLS failures apart from network ones.
pub(crate) fn io_error(e: io::Error, what: &str) -> RemoteError {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return RemoteError::Tls(format!("{what}: {tls}"));
    }
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<super::records::RecordError>()) {
        return RemoteError::Tls(format!("{what}: {tls}"));
    }
    RemoteError::io(&e, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::wire::Flights;
    use crate::stats::Stats;
    use std::net::TcpListener;

    /// A control channel to a server thread that reads commands and answers with `script`.
    fn scripted(script: &'static [u8]) -> (Control<Wire>, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut got = vec![0u8; 256];
            let n = s.read(&mut got).unwrap_or(0);
            got.truncate(n);
            let _ = s.write_all(script);
            std::thread::sleep(Duration::from_millis(200));
            got
        });
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let control = Control::new(Wire::control(sock, Flights::new(Arc::new(Stats::default()))));
        (control, server)
    }

    #[test]
    fn pipelined_commands_go_out_in_one_write_and_replies_come_back_in_order() {
        let (mut c, server) = scripted(b"350 Restart position accepted (100).\r\n150 Opening (5 bytes).\r\n");
        c.send(&["REST 100", "RETR /f"]).expect("send");
        assert_eq!(c.answer("REST", &[350]).expect("350").text(), "Restart position accepted (100).");
        assert_eq!(c.answer("RETR", &[125, 150]).expect("150").code, 150);
        assert_eq!(server.join().expect("server"), b"REST 100\r\nRETR /f\r\n");
        assert!(!c.is_broken());
    }

    #[test]
    fn a_refusal_of_one_pipelined_command_is_unavailable_and_keeps_the_connection() {
        let (mut c, _server) = scripted(b"350 Restarting at 7\r\n550 No such file\r\n");
        c.send(&["REST 7", "RETR /missing"]).expect("send");
        c.answer("REST", &[350]).expect("350");
        let err = c.answer("RETR /missing", &[125, 150]).expect_err("refused");
        assert!(matches!(err, RemoteError::Unavailable(_)), "{err:?}");
        assert!(!c.is_broken(), "the server answered the command: still in step");
    }

    #[test]
    fn an_unexpected_positive_reply_means_out_of_step_and_breaks_the_connection() {
        let (mut c, _server) = scripted(b"226 Transfer complete.\r\n");
        c.send(&["REST 7"]).expect("send");
        let err = c.answer("REST", &[350]).expect_err("out of step");
        assert!(matches!(err, RemoteError::Protocol(_)), "{err:?}");
        assert!(c.is_broken());
    }

    #[test]
    fn a_multi_line_reply_is_one_reply_up_to_its_closing_line() {
        let (mut c, _server) =
            scripted(b"250-Begin\r\n type=file;size=5; /f\r\n2500 is not the closing line\r\n250 End.\r\n200 next\r\n");
        c.send(&["MLST /f", "NOOP"]).expect("send");
        let mlst = c.answer("MLST", &[250]).expect("250");
        assert_eq!(mlst.lines.len(), 4, "{mlst:?}");
        assert_eq!(mlst.lines[1], " type=file;size=5; /f");
        assert_eq!(c.answer("NOOP", &[200]).expect("200").text(), "next");
    }

    #[test]
    fn garbage_instead_of_a_reply_is_a_protocol_error() {
        let (mut c, _server) = scripted(b"\x00\xff garbage\r\n");
        c.send(&["NOOP"]).expect("send");
        assert!(matches!(c.reply(), Err(RemoteError::Protocol(_))));
        assert!(c.is_broken());
    }

    #[test]
    fn an_endless_reply_is_cut_off_at_its_size_limit() {
        static ENDLESS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let body = ENDLESS.get_or_init(|| {
            let mut v = b"211-Features\r\n".to_vec();
            v.extend(b" X\r\n".repeat(MAX_REPLY / 4 + 10));
            v
        });
        let (mut c, _server) = scripted(body);
        c.send(&["FEAT"]).expect("send");
        let err = c.reply().expect_err("too long");
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn a_closed_connection_is_a_connection_error_not_a_hang() {
        let (mut c, _server) = scripted(b"");
        c.send(&["NOOP"]).expect("send");
        assert!(matches!(c.reply(), Err(RemoteError::Connect { .. })));
    }

    #[test]
    fn commands_with_line_breaks_are_never_sent() {
        let (mut c, server) = scripted(b"200 ok\r\n");
        let err = c.send(&["RETR /a\r\nDELE /b"]).expect_err("refused");
        assert!(matches!(err, RemoteError::Protocol(_)));
        c.send(&["NOOP"]).expect("send");
        assert_eq!(server.join().expect("server"), b"NOOP\r\n");
    }

    #[test]
    fn a_password_goes_out_as_pass_and_one_holding_a_line_break_never_does() {
        let (mut c, server) = scripted(b"230 ok\r\n");
        let err = c.send_password(&Secret::new("pw\r\nDELE /f".into())).expect_err("refused");
        assert!(!err.to_string().contains("pw"), "the error shows the password: {err}");
        c.send_password(&Secret::new("s3cret pass;word".into())).expect("send");
        assert_eq!(server.join().expect("server"), b"PASS s3cret pass;word\r\n");
    }

    #[test]
    fn too_many_connections_and_login_refusals_keep_their_kind() {
        let (mut c, _server) = scripted(b"421 Too many connections\r\n");
        c.send(&["NOOP"]).expect("send");
        assert!(matches!(c.answer("NOOP", &[200]), Err(RemoteError::TooManyConnections(_))));
        assert!(c.is_broken(), "the server closes after 421");
    }
}
