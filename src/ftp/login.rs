//! Logging in: suppaftp does the parts it does well (TCP connect, greeting, `AUTH TLS`,
//! `PBSZ`/`PROT`, `USER`/`PASS`); then the control connection is taken over by `Control`,
//! which pipelines the rest (`TYPE I` + `FEAT`, and for implicit TLS `PBSZ 0` + `PROT P`,
//! which suppaftp's implicit mode never sends).
//!
//! Threads: called by whichever thread needs a new connection; touches no shared state but
//! the pool's key-exchange hint (see `tls.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use suppaftp::{FtpError, ImplFtpStream, Status};

use super::control::{Control, Reply};
use super::tls::{Handoff, HandoffStream, KxHint, LoginGuard, TlsWire, per_connection};
use super::wire::{Flights, set_timeouts};
use crate::error::RemoteError;

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

/// A logged-in control connection, taken over from suppaftp.
pub(crate) struct Login {
    pub(crate) control: Control<TlsWire>,
    /// The connection's own TLS config (its session store), for its data connections.
    pub(crate) tls: Arc<ClientConfig>,
    /// The server offers `MLST`/`MLSD` (RFC 3659: the MLST feature covers both).
    pub(crate) mlst: bool,
    /// The control connection's peer: where data connections go, whatever PASV says.
    pub(crate) peer: IpAddr,
}

/// Connects, secures (explicit `AUTH TLS` or implicit), logs in and switches to binary, all
/// before `deadline`.
pub(crate) fn login(
    ep: &Endpoint,
    base: &ClientConfig,
    kx: &Arc<KxHint>,
    flights: &Arc<Flights>,
    deadline: Instant,
) -> Result<Login, RemoteError> {
    let guard: LoginGuard = Arc::new(parking_lot::Mutex::new(None));
    let result = login_before(ep, base, kx, flights, deadline, &guard);
    let fired = guard.lock().as_ref().is_some_and(super::watchdog::Armed::fired);
    drop(guard.lock().take());
    match result {
        // The deadline shut the socket down: whatever error that caused is a timeout.
        Err(e) if fired => Err(RemoteError::Timeout(format!("login to {} ({e})", ep.host))),
        other => other,
    }
}

fn login_before(
    ep: &Endpoint,
    base: &ClientConfig,
    kx: &Arc<KxHint>,
    flights: &Arc<Flights>,
    deadline: Instant,
    guard: &LoginGuard,
) -> Result<Login, RemoteError> {
    let limit = remaining(deadline)?;
    let addr = resolve(&ep.host, ep.port)?;
    let tls = per_connection(base, kx);
    let (connector, slot) = Handoff::new(Arc::clone(&tls), Arc::clone(flights), ep.timeout, Arc::clone(guard), limit);
    let mut ftp: ImplFtpStream<HandoffStream> = if ep.implicit {
        // suppaftp's implicit connect has no connect timeout of its own; a timed probe first
        // turns an unreachable host into a prompt error instead of a minutes-long hang.
        drop(connect_tcp(addr, limit)?);
        flights.count(2);
        ImplFtpStream::connect_secure_implicit(addr, connector, &ep.host)
            .map_err(|e| classify_setup(e, "implicit TLS"))?
    } else {
        let tcp = connect_tcp(addr, limit)?;
        // Greeting, AUTH TLS, login: bounded as a whole, not only per read.
        *guard.lock() = super::watchdog::arm(&tcp, limit);
        let plain = ImplFtpStream::connect_with_stream(tcp).map_err(|e| classify(e, "greeting"))?;
        // The TCP connect and AUTH TLS happen on the plain socket, before the counted one.
        flights.count(2);
        plain.into_secure(connector, &ep.host).map_err(|e| classify_setup(e, "AUTH TLS / PROT P"))?
    };
    ftp.login(ep.user.as_str(), ep.password.expose()).map_err(|e| match e {
        FtpError::UnexpectedResponse(r) if r.status == Status::NotLoggedIn => {
            RemoteError::Login(String::from_utf8_lossy(&r.body).trim().to_string())
        }
        other => classify(other, "login"),
    })?;
    let peer = ftp.get_ref().peer_addr().map_err(|e| RemoteError::io(&e, "control connection"))?.ip();
    // suppaftp's stream holds only a handle into the slot and sends nothing when dropped.
    drop(ftp);
    let stream = slot.lock().take().ok_or_else(|| RemoteError::Tls("the login connection was not secured".into()))?;
    let mut control = Control::new(stream);
    let mut commands = Vec::new();
    if ep.implicit {
        // vsftpd refuses data commands (522) until these arrive, implicit TLS or not.
        commands.extend(["PBSZ 0", "PROT P"]);
    }
    // REST offsets are byte offsets only in binary mode.
    commands.extend(["TYPE I", "FEAT"]);
    control.send(&commands)?;
    if ep.implicit {
        control.answer("PBSZ 0", &[200]).map_err(refused_tls)?;
        control.answer("PROT P", &[200]).map_err(refused_tls)?;
    }
    control.answer("TYPE I", &[200])?;
    let mlst = match control.answer("FEAT", &[211]) {
        Ok(features) => offers_mlst(&features),
        Err(_) if !control.is_broken() => false,
        Err(e) => return Err(e),
    };
    Ok(Login { control, tls, mlst, peer })
}

/// Time left before `deadline`, or a timeout error once it has passed.
pub(crate) fn remaining(deadline: Instant) -> Result<Duration, RemoteError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(RemoteError::Timeout("no time left for the server".into()));
    }
    Ok(left)
}

fn offers_mlst(features: &Reply) -> bool {
    features.lines.iter().skip(1).any(|line| {
        let word = line.split_whitespace().next().unwrap_or("");
        word.eq_ignore_ascii_case("MLST") || word.eq_ignore_ascii_case("MLSD")
    })
}

fn refused_tls(e: RemoteError) -> RemoteError {
    match e {
        RemoteError::Protocol(m) | RemoteError::Unavailable(m) => RemoteError::Tls(format!(
            "server refused a protected data channel ({m}); mastfs never falls back to plain FTP"
        )),
        other => other,
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, RemoteError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| RemoteError::io(&e, &format!("cannot resolve {host}")))?
        .next()
        .ok_or_else(|| RemoteError::io(&io::ErrorKind::NotFound.into(), &format!("no address for {host}")))
}

fn connect_tcp(addr: SocketAddr, limit: Duration) -> Result<TcpStream, RemoteError> {
    let tcp = TcpStream::connect_timeout(&addr, limit).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RemoteError::Timeout(format!("connecting to {addr}")),
        _ => RemoteError::io(&e, &addr.to_string()),
    })?;
    set_timeouts(&tcp, limit).map_err(|e| RemoteError::io(&e, "socket setup"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Sorts a suppaftp error into the kinds the rest of mastfs acts on.
fn classify(e: FtpError, what: &str) -> RemoteError {
    match e {
        FtpError::ConnectionError(io) => super::control::io_error(io, what),
        FtpError::SecureError(m) => RemoteError::Tls(format!("{what}: {m}")),
        FtpError::UnexpectedResponse(r) => {
            let text: String = String::from_utf8_lossy(&r.body).chars().filter(|c| !c.is_control()).take(200).collect();
            let text = text.trim().to_string();
            let code = r.status.code();
            let lower = text.to_ascii_lowercase();
            if code == 421 || (code == 530 && (lower.contains("too many") || lower.contains("no more"))) {
                RemoteError::TooManyConnections(text)
            } else if code == 530 {
                RemoteError::Login(text)
            } else {
                RemoteError::Protocol(format!("{what}: unexpected reply {text}"))
            }
        }
        other => RemoteError::Protocol(format!("{what}: {other}")),
    }
}

/// During TLS setup a refusal is a TLS problem: the server does not offer what we require.
fn classify_setup(e: FtpError, what: &str) -> RemoteError {
    match e {
        FtpError::UnexpectedResponse(r) if r.status.code() != 421 => RemoteError::Tls(format!(
            "server refused {what} ({}); mastfs never falls back to plain FTP",
            String::from_utf8_lossy(&r.body).trim()
        )),
        other => classify(other, what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        Reply { code: 211, lines: lines.iter().map(|l| l.to_string()).collect() }
    }

    #[test]
    fn mlst_is_offered_by_its_feature_line_with_or_without_facts() {
        assert!(offers_mlst(&reply(&["211-Features:", " MLST type*;size*;modify*;", "211 End"])));
        assert!(offers_mlst(&reply(&["211-Features:", " MLSD", "211 End"])));
        assert!(!offers_mlst(&reply(&["211-Features:", " MDTM", " SIZE", "211 End"])));
        assert!(!offers_mlst(&reply(&["211-Features: MLST", "211 End"])), "the opening line is not a feature");
    }
}
