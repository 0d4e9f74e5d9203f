//! Data connections: opened ahead of use (`PASV` answered, TCP connected), secured with TLS
//! that resumes the control connection's session, and read through a buffer of their own or,
//! under TLS 1.3, straight into the block being filled (`datatls.rs`, `records.rs`).
//!
//! Threads: a data connection belongs to its control connection and is used by whichever
//! thread holds that (a request, or the pool's arming job).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::control::{Reply, io_error};
use super::datatls::DataTls;
use super::wire::{Flights, finish_connect, is_silent, start_connect};
use crate::error::RemoteError;

/// Receive buffer of a data connection: one system call brings in many TLS records.
const READ_BUFFER: usize = 256 * 1024;

/// A data connection opened ahead: the server answered `PASV`/`EPSV` and the TCP connection
/// to it is established (or on its way). No command has used it yet.
#[derive(Debug)]
pub(crate) struct Ahead {
    pub(crate) sock: TcpStream,
    pub(crate) since: Instant,
}

impl Ahead {
    /// Whether the server still holds its end open. A data connection that no command has
    /// used must be silent: anything readable is the server closing it.
    pub(crate) fn is_alive(&self) -> bool {
        is_silent(&self.sock)
    }
}

/// The command that asks the server for a passive data port.
pub(crate) fn passive_command(epsv: bool) -> &'static str {
    if epsv { "EPSV" } else { "PASV" }
}

/// Where to connect for a `227`/`229` reply: the port the server gives, on the control
/// connection's peer. The address inside a PASV reply is often private or wrong behind NAT
/// (MAST's own FAQ reports PASV trouble for external hosts); the control peer is reachable.
pub(crate) fn passive_address(reply: &Reply, peer: IpAddr) -> Result<SocketAddr, RemoteError> {
    let text = reply.lines.first().map(String::as_str).unwrap_or("");
    let port = match reply.code {
        227 => pasv_port(text),
        229 => epsv_port(text),
        _ => None,
    };
    port.map(|p| SocketAddr::new(peer, p))
        .ok_or_else(|| RemoteError::Protocol(format!("cannot read a data port from {text:?}")))
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`: the port is p1 * 256 + p2.
fn pasv_port(text: &str) -> Option<u16> {
    let inner = text.get(4..)?;
    let start = inner.find(|c: char| c.is_ascii_digit())?;
    let numbers: Vec<u16> = inner[start..]
        .split(|c: char| !c.is_ascii_digit())
        .take(6)
        .map(|n| n.parse::<u16>().ok().filter(|&v| v <= 255))
        .collect::<Option<_>>()?;
    if numbers.len() != 6 {
        return None;
    }
    let port = numbers[4] * 256 + numbers[5];
    (port != 0).then_some(port)
}

/// `229 Entering Extended Passive Mode (|||port|)`, with any delimiter character.
fn epsv_port(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let inner = &text[open + 1..];
    let delim = inner.chars().next()?;
    let parts: Vec<&str> = inner.split(delim).collect();
    let port: u16 = parts.get(3)?.parse().ok()?;
    (port != 0).then_some(port)
}

/// Opens the TCP connection for a passive reply, waiting at most `limit` for it.
pub(crate) fn connect(
    addr: SocketAddr,
    flights: &Flights,
    limit: Duration,
    io_timeout: Duration,
) -> Result<TcpStream, RemoteError> {
    let sock = start_connect(addr, flights).map_err(|e| RemoteError::io(&e, &format!("data connection to {addr}")))?;
    finish_connect(&sock, limit, io_timeout, flights)
        .map_err(|e| RemoteError::io(&e, &format!("data connection to {addr}")))?;
    Ok(sock)
}

/// Starts TLS on a data connection and sends the ClientHello at once, so the handshake
/// overlaps the server's replies on the control connection. The session resumes the control
/// connection's (same config, same session store), as vsftpd's `require_ssl_reuse` demands,
/// and the key share offered first is the group the control handshake settled on.
pub(crate) fn start_tls(
    sock: TcpStream,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    flights: &Arc<Flights>,
) -> Result<DataTls, RemoteError> {
    DataTls::start(sock, Arc::clone(config), name.clone(), Arc::clone(flights), READ_BUFFER)
        .map_err(|e| io_error(e, "data connection TLS"))
}

/// Completes a data connection's handshake (the server answers the ClientHello once its
/// transfer command arrived).
pub(crate) fn finish_tls(stream: &mut DataTls) -> Result<(), RemoteError> {
    stream.finish_handshake().map_err(|e| io_error(e, "data connection TLS"))
}

/// A data connection error as a timeout when its deadline shut the socket down.
pub(crate) fn timed_out(e: RemoteError, deadline: &Option<super::watchdog::Armed>) -> RemoteError {
    if deadline.as_ref().is_some_and(super::watchdog::Armed::fired) {
        return RemoteError::Timeout(format!("data connection: no answer in time ({e})"));
    }
    e
}

/// Ends TLS politely (close_notify) and closes the socket.
pub(crate) fn close_tls(stream: DataTls) {
    stream.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, line: &str) -> Reply {
        Reply { code, lines: vec![line.to_string()] }
    }

    #[test]
    fn the_pasv_port_is_used_with_the_control_connections_peer_address() {
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let addr = passive_address(&reply(227, "227 Entering Passive Mode (10,0,0,1,122,115)."), peer).expect("addr");
        assert_eq!(addr, SocketAddr::new(peer, 122 * 256 + 115));
        let addr = passive_address(&reply(227, "227 Entering Passive Mode 10,0,0,1,4,1"), peer).expect("no brackets");
        assert_eq!(addr.port(), 1025);
    }

    #[test]
    fn an_epsv_reply_gives_the_port_whatever_its_delimiter() {
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(passive_address(&reply(229, "229 Extended (|||40123|)"), peer).expect("port").port(), 40123);
        assert_eq!(passive_address(&reply(229, "229 Extended (!!!6000!)"), peer).expect("port").port(), 6000);
    }

    #[test]
    fn unreadable_or_zero_ports_are_protocol_errors() {
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        for line in ["227 Entering Passive Mode (1,2,3,4,0,0)", "227 nope", "227 (1,2,3,4,300,1)"] {
            assert!(passive_address(&reply(227, line), peer).is_err(), "{line}");
        }
        assert!(passive_address(&reply(229, "229 (|||0|)"), peer).is_err());
    }
}
