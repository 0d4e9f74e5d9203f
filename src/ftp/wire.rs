//! Sockets as the FTP layer uses them: counted round trips, connects that do not
//! block, receive-buffer sizing and window clamping, liveness probes.
//!
//! A round trip is counted each time the client has sent something (a command, a TLS flight,
//! a TCP SYN) and then reads from the network again: whatever it reads next was caused by
//! what it sent. Bytes already in a userspace buffer (a second reply of the same batch that
//! came in the same TLS record) need no read and count nothing. Both sockets of a connection
//! (control and data) share one `Flights`, so a batch of commands and a ClientHello sent
//! together and answered together count once, and a `226` that the server sends only after
//! the client closed its data connection counts as the round trip it is. Whether the answer
//! has already arrived is not asked: on loopback it always has. Waits on the request
//! path go to `round_trips`; waits of connections being re-armed in the background go to
//! `background_round_trips`.
//!
//! Threads: a `Wire` and its `Flights` are used by one thread at a time (whoever holds the
//! connection); `Flights` is atomics only, no locks.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::stats::Stats;

/// Round-trip bookkeeping shared by the sockets of one connection.
#[derive(Debug)]
pub(crate) struct Flights {
    /// Something was sent and no wait has been counted for it yet.
    pending: AtomicBool,
    /// The connection works for a request (not being re-armed in the background).
    on_request: AtomicBool,
    stats: Arc<Stats>,
}

impl Flights {
    pub(crate) fn new(stats: Arc<Stats>) -> Arc<Flights> {
        Arc::new(Flights { pending: AtomicBool::new(false), on_request: AtomicBool::new(true), stats })
    }

    pub(crate) fn set_on_request(&self, on_request: bool) {
        self.on_request.store(on_request, Ordering::Relaxed);
    }

    /// The client sent something the server will answer.
    pub(crate) fn sent(&self) {
        self.pending.store(true, Ordering::Relaxed);
    }

    /// The client is about to read from the network (or wait for a connect).
    pub(crate) fn waiting(&self) {
        if self.pending.swap(false, Ordering::Relaxed) {
            let counter = if self.on_request.load(Ordering::Relaxed) {
                &self.stats.round_trips
            } else {
                &self.stats.background_round_trips
            };
            Stats::add(counter, 1);
        }
    }

    /// Counts a round trip that happened outside a `Wire` (the plain-text greeting and
    /// `AUTH TLS` of an explicit-TLS login, which suppaftp reads itself).
    pub(crate) fn count(&self, n: u64) {
        let counter = if self.on_request.load(Ordering::Relaxed) {
            &self.stats.round_trips
        } else {
            &self.stats.background_round_trips
        };
        Stats::add(counter, n);
    }
}

/// A TCP socket whose reads and writes are counted in `Flights`: the control connection under
/// rustls's buffered stream. Data connections have their own receive buffer (`DataTls`).
#[derive(Debug)]
pub(crate) struct Wire {
    sock: TcpStream,
    flights: Arc<Flights>,
}

impl Wire {
    pub(crate) fn control(sock: TcpStream, flights: Arc<Flights>) -> Wire {
        Wire { sock, flights }
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Read for Wire {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.flights.waiting();
        self.sock.read(out)
    }
}

impl Write for Wire {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(data)?;
        self.flights.sent();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Polls one socket for `events`; `Ok(true)` when ready within `millis`.
fn poll_one(sock: &TcpStream, events: libc::c_short, millis: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events, revents: 0 };
    loop {
        // SAFETY: one valid pollfd for a socket we own, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
        if ready >= 0 {
            return Ok(ready > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Starts a TCP connect without waiting for it; `finish_connect` waits.
pub(crate) fn start_connect(addr: SocketAddr, flights: &Flights) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    flights.sent();
    let _ = socket.set_tcp_nodelay(true);
    Ok(socket.into())
}

/// Waits up to `limit` for a connect started by `start_connect`, then makes the socket
/// blocking with `io_timeout` on every read and write.
pub(crate) fn finish_connect(
    sock: &TcpStream,
    limit: Duration,
    io_timeout: Duration,
    flights: &Flights,
) -> io::Result<()> {
    flights.waiting();
    if !poll_one(sock, libc::POLLOUT, millis(limit))? {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "data connection not established in time"));
    }
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    sock.set_nonblocking(false)?;
    set_timeouts(sock, io_timeout)
}

/// Read and write timeouts on a blocking socket (zero would mean "forever": never used).
pub(crate) fn set_timeouts(sock: &TcpStream, timeout: Duration) -> io::Result<()> {
    let timeout = timeout.max(Duration::from_millis(1));
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))
}

/// Whether a connected socket that should be silent (an idle control connection, a data
/// connection opened ahead) still is: no data, no end of stream, no error.
pub(crate) fn is_silent(sock: &TcpStream) -> bool {
    let events = libc::POLLIN | libc::POLLRDHUP;
    !poll_one(sock, events, 0).unwrap_or(true)
}

/// Caps the socket's receive buffer (and so the TCP window it advertises from now on) at
/// about `bytes`. This turns off the kernel's buffer auto-tuning for the socket for good.
pub(crate) fn limit_receive_buffer(sock: &TcpStream, bytes: usize) -> io::Result<()> {
    socket2::SockRef::from(sock).set_recv_buffer_size(bytes)
}

/// Bounds the TCP window the socket advertises from now on to about `bytes` past what it has
/// received. Unlike a smaller receive buffer this drops nothing: Linux never moves the right
/// edge of an advertised window back, it only stops moving it forward. The kernel's buffer
/// auto-tuning raises the bound again as the buffer grows, so callers set it after each read.
pub(crate) fn clamp_window(sock: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: valid socket, and a c_int option value that lives for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_WINDOW_CLAMP,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Bytes the kernel has received in order on this socket that nobody has read yet.
pub(crate) fn received_unread(sock: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int for a valid socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { Ok(usize::try_from(n).unwrap_or(0)) } else { Err(io::Error::last_os_error()) }
}

/// The largest receive buffer the kernel's auto-tuning gives a socket (`tcp_rmem`'s maximum):
/// no advertised window reaches further than this past the bytes the reader has taken.
pub(crate) fn max_receive_buffer() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(64 << 20)
    })
}

/// Makes `close` reset the connection at once (RST) instead of a graceful FIN: the server's
/// next write fails straight away, so it stops sending and reports the end sooner.
pub(crate) fn reset_on_close(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// The kernel's view of a TCP connection (`TCP_INFO`).
pub(crate) fn tcp_info(sock: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid socket, buffer and length for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Bytes the kernel has received on this connection (TCP payload, TLS records included):
/// what crossed the link, as opposed to what the reader consumed.
pub(crate) fn bytes_received(sock: &TcpStream) -> Option<u64> {
    tcp_info(sock).map(|info| info.tcpi_bytes_received)
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn a_read_after_a_write_counts_one_round_trip_and_a_second_read_for_the_same_write_counts_none() {
        let stats = Arc::new(Stats::default());
        let flights = Flights::new(Arc::clone(&stats));
        let (client, mut server) = pair();
        let mut wire = Wire::control(client, Arc::clone(&flights));
        wire.write_all(b"NOOP\r\nNOOP\r\n").expect("write");
        let answer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            server.write_all(b"200 a\r\n").expect("reply");
            server
        });
        let mut buf = [0u8; 7];
        wire.read_exact(&mut buf).expect("first reply");
        let mut server = answer.join().expect("server");
        assert_eq!(stats.round_trips.load(Ordering::Relaxed), 1);
        server.write_all(b"200 b\r\n").expect("reply");
        std::thread::sleep(Duration::from_millis(50));
        wire.read_exact(&mut buf).expect("second reply");
        assert_eq!(stats.round_trips.load(Ordering::Relaxed), 1, "the second reply needed no new request");
    }

    #[test]
    fn background_waits_are_counted_apart_from_request_waits() {
        let stats = Arc::new(Stats::default());
        let flights = Flights::new(Arc::clone(&stats));
        flights.set_on_request(false);
        flights.sent();
        flights.waiting();
        assert_eq!(stats.round_trips.load(Ordering::Relaxed), 0);
        assert_eq!(stats.background_round_trips.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_socket_closed_by_its_peer_is_no_longer_silent() {
        let (client, server) = pair();
        assert!(is_silent(&client));
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!is_silent(&client));
    }
}
