//! One logged-in connection: its control channel, the data connection opened ahead for its
//! next command, and what it still owes the server after its last transfer.
//!
//! Between requests a connection is brought back into step and re-armed off the request path
//! (`settle_and_arm`, run by the pool's arming jobs): after a transfer that ran to the end of
//! the file, read the data connection's TLS close and the final `226`; after one closed early,
//! send `ABOR` and skip the replies it provokes until a fresh `PASV` is answered. Servers
//! answer an early close differently (vsftpd `426`, pyftpdlib `426` or `226`, pure-ftpd
//! nothing at all unless asked with `ABOR`, and a `500` to any other command it reads while
//! still sending), so the only fixed point is a reply that nothing else produces: the `227`
//! to a `PASV` sent after the first answer to `ABOR`. Replies other than the expected ones,
//! or too many of them, drop the connection.
//!
//! Threads: a `Conn` is owned by one thread at a time (a request through its lease, an
//! arming job, or the keep-alive thread); it has no locks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::control::Control;
use super::data::{self, Ahead};
use super::datatls::DataTls;
use super::login::{Login, remaining};
use super::tls::TlsWire;
use super::wire::Flights;
use crate::error::RemoteError;
use crate::stats::Stats;

/// A data connection opened ahead longer ago than this is replaced at the next keep-alive:
/// pyftpdlib drops a connected data channel that moved nothing for five minutes, and takes the
/// whole session with it.
const AHEAD_MAX_AGE: Duration = Duration::from_secs(120);
/// Replies that an aborted transfer and its `ABOR` may produce before the server is back in
/// step (vsftpd `426`/`226` then `225`; pyftpdlib `426`/`226`/`225`; pure-ftpd a late
/// `150`, `226`, or `500` for a command it read while sending).
const ABORT_NOISE: &[u16] = &[125, 150, 225, 226, 250, 426, 451, 500, 501, 502];
/// At most this many such replies are skipped; more means the stream is not what we think.
const MAX_NOISE: usize = 5;
/// Bytes read past the end of a finished transfer while waiting for the server's TLS close.
const MAX_TRAILING: usize = 1 << 20;

/// What a connection owes the server before its next command.
pub(crate) enum Owes {
    Nothing,
    /// A transfer whose bytes all arrived: its data connection's close and final reply.
    Finish(Box<DataTls>),
    /// A transfer closed before its end.
    Abort,
}

pub(crate) struct Conn {
    pub(crate) control: Control<TlsWire>,
    /// This connection's TLS config (its private session store) for its data connections.
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) mlst: bool,
    /// Where data connections go (the control connection's peer).
    pub(crate) peer: IpAddr,
    pub(crate) ahead: Option<Ahead>,
    pub(crate) owes: Owes,
    /// Last time this connection did work for a request (keep-alives do not count).
    pub(crate) last_used: Instant,
    /// Last time anything was exchanged, keep-alives included.
    pub(crate) last_contact: Instant,
    /// A transfer on it failed because the server stopped sending (a data timeout).
    pub(crate) stalled: bool,
    /// The pool's stall count when this connection last proved itself (see `pool.rs`).
    pub(crate) epoch: u64,
}

impl Conn {
    pub(crate) fn new(login: Login, flights: Arc<Flights>) -> Conn {
        let now = Instant::now();
        Conn {
            control: login.control,
            tls: login.tls,
            flights,
            mlst: login.mlst,
            peer: login.peer,
            ahead: None,
            owes: Owes::Nothing,
            last_used: now,
            last_contact: now,
            stalled: false,
            epoch: 0,
        }
    }

    /// Whether the connection needs the arming job before a request may have it.
    pub(crate) fn needs_tending(&self) -> bool {
        !matches!(self.owes, Owes::Nothing) || self.ahead.is_none()
    }

    /// The data connection opened ahead, if the server has not closed it meanwhile.
    pub(crate) fn take_ahead(&mut self, stats: &Stats) -> Option<Ahead> {
        let ahead = self.ahead.take()?;
        if ahead.is_alive() {
            return Some(ahead);
        }
        Stats::add(&stats.stale_arms, 1);
        log::debug!("the server closed a data connection opened ahead; opening another");
        None
    }

    /// Brings the connection back in step after its last transfer and opens a data
    /// connection ahead for the next one. Off the request path; bounded by `timeout` twice.
    pub(crate) fn settle_and_arm(&mut self, epsv: bool, timeout: Duration, stats: &Stats) -> Result<(), RemoteError> {
        let deadline = Instant::now() + timeout * 2;
        let _exchange = self.control.deadline(timeout * 2);
        let noise = match std::mem::replace(&mut self.owes, Owes::Nothing) {
            Owes::Nothing => &[][..],
            Owes::Finish(stream) => {
                self.finish_transfer(*stream, deadline)?;
                &[][..]
            }
            Owes::Abort => {
                self.control.send(&["ABOR"])?;
                // Whatever comes first (the transfer's end, or the answer to ABOR), the
                // server has left its sending loop once it speaks: commands sent from now on
                // are read as commands.
                let first = self.control.reply()?;
                if !ABORT_NOISE.contains(&first.code) {
                    return Err(self.control.refusal("ABOR", &first));
                }
                ABORT_NOISE
            }
        };
        self.arm(epsv, noise, timeout, deadline, stats)
    }

    /// Opens a data connection ahead (`PASV`, TCP connect), skipping up to `MAX_NOISE`
    /// replies in `noise` before the `227`.
    fn arm(
        &mut self,
        epsv: bool,
        noise: &[u16],
        timeout: Duration,
        deadline: Instant,
        stats: &Stats,
    ) -> Result<(), RemoteError> {
        if let Some(ahead) = &self.ahead
            && ahead.is_alive()
        {
            return Ok(());
        }
        self.ahead = None;
        let command = data::passive_command(epsv);
        self.control.send(&[command])?;
        let expected = if epsv { 229 } else { 227 };
        let mut skipped = 0;
        let reply = loop {
            let reply = self.control.reply()?;
            if reply.code == expected {
                break reply;
            }
            if !noise.contains(&reply.code) || skipped >= MAX_NOISE {
                return Err(self.control.refusal(command, &reply));
            }
            skipped += 1;
        };
        let addr = data::passive_address(&reply, self.peer)?;
        let sock = match data::connect(addr, &self.flights, remaining(deadline)?, timeout) {
            Ok(sock) => sock,
            // The control connection is in step (its PASV was answered); only the data
            // connection failed, so the connection stays, and the next request opens a data
            // connection of its own (its PASV replaces this one on the server).
            Err(e) => {
                log::info!("could not open a data connection ahead: {e}");
                self.last_contact = Instant::now();
                return Ok(());
            }
        };
        self.ahead = Some(Ahead { sock, since: Instant::now() });
        self.last_contact = Instant::now();
        Stats::add(&stats.armed, 1);
        Ok(())
    }

    /// Reads what is left of a transfer whose bytes all arrived (the server's TLS close), then
    /// its final reply.
    /// Ends a started transfer early: the data connection is reset, and the connection owes
    /// the server an `ABOR` before its next command. `no_data_yet`: nothing has been read from
    /// the data connection, so the server may not have read our last TLS handshake flight
    /// yet. vsftpd then fails its handshake on the reset, answers `522 SSL connection failed`
    /// and ends the whole session (seen with 8 concurrent random readers: a reconnect in
    /// about 1 run of 3). So the first bytes are awaited, at most `first_byte_wait`: they
    /// prove the handshake is over on the server's side, and they are on their way anyway.
    pub(crate) fn abort_transfer(
        &mut self,
        mut stream: DataTls,
        stats: &Stats,
        no_data_yet: bool,
        first_byte_wait: Duration,
    ) {
        if no_data_yet {
            use std::io::Read;
            let deadline = super::watchdog::arm(stream.socket(), first_byte_wait);
            let mut one = [0u8; 1];
            if let Err(e) = stream.read(&mut one) {
                log::debug!("no first byte before an early close: {e}");
            }
            drop(deadline);
        }
        super::wire::reset_on_close(stream.socket());
        drop(stream);
        self.owes = Owes::Abort;
        Stats::add(&stats.aborts, 1);
    }

    /// Reads the reply that ends a transfer whose data connection the server closed before
    /// the file's end: `Ok(true)` if the server says it sent the whole file (`226`/`250`, so
    /// the file is shorter than the version we know), `Ok(false)` if it says it broke off
    /// (a `4xx`/`5xx` reply; the connection stays in step).
    pub(crate) fn end_of_short_transfer(&mut self, stream: DataTls, deadline: Instant) -> Result<bool, RemoteError> {
        data::close_tls(stream);
        let _exchange = self.control.deadline(remaining(deadline)?);
        match self.control.answer("end of transfer", &[226, 250]) {
            Ok(_) => Ok(true),
            Err(e) if !self.control.is_broken() => {
                log::info!("the server broke off a transfer: {e}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn finish_transfer(&mut self, mut stream: DataTls, deadline: Instant) -> Result<(), RemoteError> {
        use std::io::Read;
        // The deadline holds a second descriptor of the socket: it is dropped before the
        // socket is closed, or the server would never see the close (and some send their
        // 226 only then).
        let data_deadline = super::watchdog::arm(stream.socket(), remaining(deadline)?);
        let mut sink = [0u8; 16 * 1024];
        let mut trailing = 0;
        loop {
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => {
                    trailing += n;
                    if trailing > MAX_TRAILING {
                        self.control.set_broken();
                        return Err(RemoteError::Protocol("the server sent more than the file's size".into()));
                    }
                }
                // A server that closes without TLS close_notify after the last byte (seen
                // from pure-ftpd) ends the transfer all the same: every byte had arrived.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    log::debug!("end of a finished transfer: {e}");
                    break;
                }
            }
        }
        drop(data_deadline);
        data::close_tls(stream);
        match self.control.answer("end of transfer", &[226, 250]) {
            Ok(_) => Ok(()),
            // A refusal (426, 451) still ends the transfer: the connection is in step.
            Err(e) if !self.control.is_broken() => {
                log::debug!("a finished transfer ended with {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Keep-alive for an idle connection: a `NOOP` so server idle timers never fire, and a
    /// fresh data connection when the one opened ahead is old or gone.
    pub(crate) fn keep_alive(&mut self, epsv: bool, timeout: Duration, stats: &Stats) -> Result<(), RemoteError> {
        let deadline = Instant::now() + timeout * 2;
        let _exchange = self.control.deadline(timeout * 2);
        if self.ahead.as_ref().is_some_and(|a| a.since.elapsed() >= AHEAD_MAX_AGE || !a.is_alive()) {
            // Closing an unused data connection draws no reply from vsftpd, pure-ftpd or
            // pyftpdlib; the next PASV replaces it on the server's side.
            self.ahead = None;
        }
        self.control.send(&["NOOP"])?;
        self.control.answer("NOOP", &[200])?;
        self.last_contact = Instant::now();
        self.arm(epsv, &[], timeout, deadline, stats)
    }

    /// Says goodbye, briefly; the server may already be gone.
    pub(crate) fn quit(mut self) {
        let _deadline = self.control.deadline(Duration::from_secs(2));
        if self.control.send(&["QUIT"]).is_ok() {
            let _ = self.control.reply();
        }
    }
}
