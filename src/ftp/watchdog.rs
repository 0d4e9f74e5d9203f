//! Wall-clock deadlines for FTP exchanges.
//!
//! Socket read timeouts bound each read, not a whole reply: a server that drips one line of a
//! multi-line reply every few seconds would hold a connection (and a mount attempt) forever.
//! An armed deadline shuts the socket down when it passes, which fails the pending read with
//! an error that the caller already treats as a dead connection.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

struct Entry {
    id: u64,
    deadline: Instant,
    socket: TcpStream,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        let for_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("mastfs-watchdog".into()).spawn(move || watch(&for_thread));
        if let Err(e) = spawned {
            log::warn!("no watchdog thread ({e}); a server that drips replies can stall a connection");
        }
        shared
    })
}

fn watch(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        let now = Instant::now();
        st.entries.retain(|e| {
            if e.deadline <= now {
                log::warn!("server exchange took longer than its deadline; dropping the connection");
                e.fired.store(true, Ordering::SeqCst);
                let _ = e.socket.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
        let wait = st.entries.iter().map(|e| e.deadline - now).min().unwrap_or(Duration::from_secs(3600));
        shared.changed.wait_for(&mut st, wait);
    }
}

/// A deadline on a socket; dropping it disarms the deadline.
pub struct Armed {
    id: u64,
    fired: Arc<AtomicBool>,
}

impl Armed {
    /// Whether the deadline passed and the socket was shut down: the error a blocked read
    /// then sees (end of stream, reset) is really a timeout.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// A handle on `fired` that outlives the guard.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.fired)
    }
}

/// Shuts `socket` down if the guard is still alive after `limit`. `None` if the socket
/// cannot be cloned (then only the per-read timeouts apply).
pub fn arm(socket: &TcpStream, limit: Duration) -> Option<Armed> {
    let socket = socket.try_clone().ok()?;
    let shared = shared();
    let mut st = shared.state.lock();
    st.next_id += 1;
    let id = st.next_id;
    let fired = Arc::new(AtomicBool::new(false));
    st.entries.push(Entry { id, deadline: Instant::now() + limit, socket, fired: Arc::clone(&fired) });
    shared.changed.notify_one();
    Some(Armed { id, fired })
}

impl Drop for Armed {
    fn drop(&mut self) {
        let shared = shared();
        let mut st = shared.state.lock();
        st.entries.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// Far beyond any deadline armed here: a read still blocked after this has no deadline.
    const HANG: Duration = Duration::from_secs(30);

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// One read on `socket` in a thread of its own, bounded from outside: a read that is still
    /// blocked after [`HANG`] fails the test instead of hanging it (the socket is then shut down
    /// here so that the thread ends too).
    fn read_bounded(socket: &TcpStream) -> std::io::Result<Vec<u8>> {
        let mut reader = socket.try_clone().expect("clone the socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let _ = tx.send(reader.read(&mut buf).map(|n| buf[..n].to_vec()));
        });
        match rx.recv_timeout(HANG) {
            Ok(result) => result,
            Err(_) => {
                let _ = socket.shutdown(Shutdown::Both);
                panic!("the read was still blocked after {HANG:?}: no deadline ended it");
            }
        }
    }

    #[test]
    fn a_read_still_blocked_at_the_deadline_fails() {
        let (client, _server) = pair();
        let _armed = arm(&client, Duration::from_millis(200));
        // The peer never writes: only the watchdog can end this read.
        let got = read_bounded(&client);
        assert!(matches!(&got, Ok(bytes) if bytes.is_empty()) || got.is_err(), "want end of stream, got {got:?}");
        // The socket was shut down, not merely read to an end: writing fails too.
        let mut c = &client;
        let err = c.write_all(b"x").and_then(|()| c.flush()).expect_err("a shut-down socket refuses writes");
        assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err:?}");
    }

    #[test]
    fn an_armed_deadline_that_has_not_passed_leaves_the_socket_alone() {
        let (client, mut server) = pair();
        let _armed = arm(&client, HANG * 2);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            server.write_all(b"reply").expect("write");
            server
        });
        assert_eq!(read_bounded(&client).expect("read"), b"reply");
        let _server = writer.join().expect("writer");
    }

    #[test]
    fn a_disarmed_deadline_leaves_the_socket_alone() {
        let (client, mut server) = pair();
        drop(arm(&client, Duration::from_millis(50)));
        // Well past the disarmed deadline: a watchdog that forgot the disarm has fired by now.
        std::thread::sleep(Duration::from_millis(300));
        let mut c = &client;
        c.write_all(b"x").expect("socket still open");
        let mut buf = [0u8; 1];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"x");
        server.write_all(b"y").expect("write back");
        assert_eq!(read_bounded(&client).expect("read"), b"y", "reads still work");
    }
}
