//! A fault-injecting TCP relay between mastfs and a real FTPS server.
//!
//! The relay listens on [`RELAY_IP`] at the server's control port and at every port of the
//! server's passive range, and forwards each connection to the same port on 127.0.0.1.
//! mastfs connects its data connections to the control host's address plus the PASV port
//! (it ignores the address in the PASV reply), so with `--host 127.0.0.2` every byte of
//! control and data traffic passes through here, where it can be stalled, cut or refused.
//!
//! TLS stays end to end (the relay never sees plaintext). The servers' certificates name
//! `localhost` and 127.0.0.1 only, so a mount through the relay either skips verification
//! (`--insecure`, which touches only the certificate check, not the I/O paths under test) or
//! is refused for the name mismatch, which the security tests rely on.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Mount, MountBuilder, MountFailure};

/// Where the relay listens: a loopback address the servers do not use.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the servers listen.
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// How often blocked relay threads look at the fault switches.
const POLL: Duration = Duration::from_millis(10);
const CHUNK: usize = 64 * 1024;

/// What the relay has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Control connections accepted (refused ones included).
    pub control_connections: u64,
    /// Data connections accepted (refused ones included).
    pub data_connections: u64,
    /// Connections closed at once because `refuse` was on.
    pub refused: u64,
    /// Connections whose server side could not be reached (server down).
    pub backend_failures: u64,
    /// Bytes forwarded from the server to mastfs.
    pub bytes_to_client: u64,
    /// Bytes forwarded from mastfs to the server.
    pub bytes_to_server: u64,
    /// Connections cut by `cut_all` or `cut_data_after`.
    pub cuts: u64,
    /// Connections open right now.
    pub live: u64,
}

#[derive(Default)]
struct Counters {
    control_connections: AtomicU64,
    data_connections: AtomicU64,
    refused: AtomicU64,
    backend_failures: AtomicU64,
    bytes_to_client: AtomicU64,
    bytes_to_server: AtomicU64,
    cuts: AtomicU64,
}

struct Shared {
    stop: AtomicBool,
    stall: AtomicBool,
    refuse: AtomicBool,
    /// Cut each data connection once this many bytes went to the client (0: never).
    cut_data_after: AtomicU64,
    /// Per-connection limit on bytes per second to the client (0: unlimited).
    rate: AtomicU64,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    next_link: AtomicU64,
    counters: Counters,
}

/// One relayed connection: the socket from mastfs and the one to the server.
struct Link {
    client: TcpStream,
    server: TcpStream,
    data: bool,
    cut: AtomicBool,
    to_client: AtomicU64,
    /// Pumps still running; the last one out removes the link.
    pumps: AtomicU64,
}

impl Link {
    /// Resets both sides at once, as a crashed middlebox or a dropped route would.
    fn cut(&self) -> bool {
        if self.cut.swap(true, Ordering::SeqCst) {
            return false;
        }
        for s in [&self.client, &self.server] {
            reset_on_close(s);
            let _ = s.shutdown(Shutdown::Both);
        }
        true
    }
}

/// SO_LINGER 0: the last close sends RST instead of FIN.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A running relay; stops and cuts every connection on drop.
pub struct Relay {
    /// The control port (the server's own port, on [`RELAY_IP`]).
    pub port: u16,
    /// The passive range, relayed port for port.
    pub pasv: (u16, u16),
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// A passive port range of `len` ports, free on both loopback addresses now, and never
    /// handed out twice in this process. Ports below the ephemeral range (32768+) so that
    /// outgoing connections do not take them in the meantime.
    pub fn free_pasv_range(len: u16) -> (u16, u16) {
        static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
        let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
        let len = len.max(1);
        for _ in 0..200 {
            let slots = (32_000 - 20_000) / u64::from(len);
            let base = 20_000 + (random_u64() % slots) as u16 * len;
            let mut taken = taken.lock();
            if taken.contains(&base) {
                continue;
            }
            let free = (base..base + len)
                .all(|p| TcpListener::bind((RELAY_IP, p)).is_ok() && TcpListener::bind((BACKEND_IP, p)).is_ok());
            if free {
                taken.insert(base);
                return (base, base + len - 1);
            }
        }
        panic!("no free passive port range of {len} ports");
    }

    /// Relays [`RELAY_IP`]:`control_port` and every port of `pasv` to 127.0.0.1.
    pub fn start(control_port: u16, pasv: (u16, u16)) -> Relay {
        let mut listeners = Vec::new();
        for (port, data) in std::iter::once((control_port, false)).chain((pasv.0..=pasv.1).map(|p| (p, true))) {
            let l = TcpListener::bind((RELAY_IP, port))
                .unwrap_or_else(|e| panic!("relay cannot listen on {RELAY_IP}:{port}: {e}"));
            l.set_nonblocking(true).expect("non-blocking listener");
            listeners.push((l, port, data));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            cut_data_after: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            counters: Counters::default(),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept_loop(&for_thread, listeners))
            .expect("spawn the relay's accept thread");
        Relay { port: control_port, pasv, shared, acceptor: Some(acceptor) }
    }

    /// The address mastfs should use as `--host`.
    pub fn host(&self) -> String {
        RELAY_IP.to_string()
    }

    /// Cuts (resets) every live connection; returns how many.
    pub fn cut_all(&self) -> usize {
        let n = self.links().iter().filter(|l| l.cut()).count();
        self.shared.counters.cuts.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// A hung server: no byte moves in either direction while on, but every socket stays
    /// open and new connections are still accepted.
    pub fn stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }

    /// A server that closes every new connection right after accepting it.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Cuts every data connection after `bytes` bytes went to the client; `None` stops it.
    pub fn cut_data_after(&self, bytes: Option<u64>) {
        self.shared.cut_data_after.store(bytes.unwrap_or(0), Ordering::SeqCst);
    }

    /// Limits each connection to `bytes_per_sec` towards the client (a slow link), so that
    /// faults can land in the middle of a transfer; `None` lifts the limit.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.rate.store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            control_connections: get(&c.control_connections),
            data_connections: get(&c.data_connections),
            refused: get(&c.refused),
            backend_failures: get(&c.backend_failures),
            bytes_to_client: get(&c.bytes_to_client),
            bytes_to_server: get(&c.bytes_to_server),
            cuts: get(&c.cuts),
            live: self.links().len() as u64,
        }
    }

    fn links(&self) -> Vec<Arc<Link>> {
        self.shared.links.lock().values().cloned().collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for link in self.links() {
            link.cut();
        }
    }
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), Instant::now()))
}

fn accept_loop(shared: &Arc<Shared>, listeners: Vec<(TcpListener, u16, bool)>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let mut idle = true;
        for (listener, port, data) in &listeners {
            match listener.accept() {
                Ok((client, _)) => {
                    idle = false;
                    accept_one(shared, client, *port, *data);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn accept_one(shared: &Arc<Shared>, client: TcpStream, port: u16, data: bool) {
    let c = &shared.counters;
    let kind = if data { &c.data_connections } else { &c.control_connections };
    kind.fetch_add(1, Ordering::Relaxed);
    if shared.refuse.load(Ordering::SeqCst) {
        c.refused.fetch_add(1, Ordering::Relaxed);
        reset_on_close(&client);
        return;
    }
    let _ = client.set_nonblocking(false);
    let shared = Arc::clone(shared);
    // Connecting upstream off the accept thread: a slow server must not delay other accepts.
    let _ = std::thread::Builder::new().name(format!("relay-{port}")).spawn(move || {
        let upstream = SocketAddr::from((BACKEND_IP, port));
        let server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                shared.counters.backend_failures.fetch_add(1, Ordering::Relaxed);
                // The server is gone: mastfs sees the connection die, as it would without us.
                reset_on_close(&client);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        };
        let _ = server.set_nodelay(true);
        let _ = client.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
        let link = Arc::new(Link {
            client,
            server,
            data,
            cut: AtomicBool::new(false),
            to_client: AtomicU64::new(0),
            pumps: AtomicU64::new(2),
        });
        let id = shared.next_link.fetch_add(1, Ordering::Relaxed);
        shared.links.lock().insert(id, Arc::clone(&link));
        if shared.stop.load(Ordering::SeqCst) {
            link.cut();
        }
        let (up_shared, up_link) = (Arc::clone(&shared), Arc::clone(&link));
        let spawned = std::thread::Builder::new()
            .name(format!("relay-up-{port}"))
            .spawn(move || pump(&up_shared, &up_link, id, client2, &up_link.server, false));
        if spawned.is_err() {
            link.cut();
            finish_pump(&shared, &link, id);
        }
        let down_link = Arc::clone(&link);
        pump(&shared, &down_link, id, server2, &down_link.client, true);
    });
}

/// Copies one direction of a link until either side closes or the link is cut.
fn pump(shared: &Shared, link: &Link, id: u64, mut src: TcpStream, dst: &TcpStream, to_client: bool) {
    let _ = src.set_read_timeout(Some(POLL));
    let _ = dst.set_write_timeout(Some(POLL));
    let mut buf = vec![0u8; CHUNK];
    let c = &shared.counters;
    loop {
        if shared.stop.load(Ordering::SeqCst) || link.cut.load(Ordering::SeqCst) {
            break;
        }
        if shared.stall.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                // Pass the half-close on: FTP ends a data transfer by closing.
                let _ = dst.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue;
            }
            Err(_) => {
                link.cut();
                break;
            }
        };
        let mut chunk = &buf[..n];
        let mut cut_after = false;
        let limit = shared.cut_data_after.load(Ordering::SeqCst);
        if to_client && link.data && limit > 0 {
            let sent = link.to_client.load(Ordering::Relaxed);
            if sent + n as u64 >= limit {
                chunk = &chunk[..limit.saturating_sub(sent) as usize];
                cut_after = true;
            }
        }
        if !write_all(shared, link, dst, chunk) {
            link.cut();
            break;
        }
        let counter = if to_client { &c.bytes_to_client } else { &c.bytes_to_server };
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if to_client {
            link.to_client.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if cut_after {
            if link.cut() {
                c.cuts.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        let rate = shared.rate.load(Ordering::SeqCst);
        if to_client && rate > 0 {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
        }
    }
    finish_pump(shared, link, id);
}

fn write_all(shared: &Shared, link: &Link, mut dst: &TcpStream, mut chunk: &[u8]) -> bool {
    while !chunk.is_empty() {
        if shared.stop.load(Ordering::SeqCst) || link.cut.load(Ordering::SeqCst) {
            return false;
        }
        match dst.write(chunk) {
            Ok(0) => return false,
            Ok(n) => chunk = &chunk[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return false,
        }
    }
    true
}

fn finish_pump(shared: &Shared, link: &Link, id: u64) {
    if link.pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.links.lock().remove(&id);
    }
}

// ------------------------------------------------------------------ mounts through the relay

impl MountBuilder<'_> {
    /// Mounts through `host:port` (e.g. a relay) instead of the server's own address.
    pub fn start_via(self, host: &str, port: u16) -> Mount {
        match self.try_start_via(host, port) {
            Ok(m) => m,
            Err(e) => panic!("mastfs mount via {host}:{port} failed: {e}"),
        }
    }

    /// As [`MountBuilder::try_start`], connecting to `host:port`.
    pub fn try_start_via(self, host: &str, port: u16) -> Result<Mount, MountFailure> {
        self.try_start_at(host, port)
    }
}
