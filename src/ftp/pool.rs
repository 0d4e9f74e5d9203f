//! A bounded pool of logged-in control connections.
//!
//! Logging in costs TCP + TLS + USER/PASS + TYPE, several round trips; a pooled connection
//! makes a cold read cost only PASV + data connect + resumed TLS + REST/RETR. The limit drops
//! when the server answers 421 (too many connections) and creeps back up later, as lftp does,
//! because MAST's per-user limit is not published.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rustls::ClientConfig;

use super::conn::{Conn, Endpoint};
use crate::error::RemoteError;
use crate::stats::Stats;

/// An idle connection is probed with NOOP after this long, so server idle timers never fire.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle connections are closed after this long: an idle mount holds no server slots.
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// After a 421, the limit stays lowered at least this long before growing by one.
const LIMIT_RECOVERY: Duration = Duration::from_secs(30);

struct State {
    idle: Vec<Conn>,
    /// Connections checked out or being opened.
    busy: usize,
    limit: usize,
    lowered_at: Option<Instant>,
}

pub struct Pool {
    endpoint: Endpoint,
    tls: ClientConfig,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
    stats: Arc<Stats>,
}

/// A checked-out connection; goes back to the pool on drop unless marked broken.
pub struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    keep: bool,
}

impl Pool {
    pub fn new(endpoint: Endpoint, tls: ClientConfig, max: usize, stats: Arc<Stats>) -> Arc<Pool> {
        let max = max.max(1);
        let pool = Arc::new(Pool {
            endpoint,
            tls,
            max,
            state: Mutex::new(State { idle: Vec::new(), busy: 0, limit: max, lowered_at: None }),
            freed: Condvar::new(),
            stats,
        });
        spawn_keepalive(Arc::downgrade(&pool));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The current connection limit (lowered after a 421).
    #[allow(dead_code)] // TRANSITIONAL: read by the issue 7 fetch scheduler
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn timeout(&self) -> Duration {
        self.endpoint.timeout
    }

    /// Takes an idle connection or opens one, waiting while the pool is at its limit.
    pub fn get(&self) -> Result<Lease<'_>, RemoteError> {
        // Holders free their connections within their own timeouts, so waiting a few of those
        // only fails when the server keeps every connection busy and stalled.
        let deadline = Instant::now() + self.endpoint.timeout * 4;
        let mut st = self.lock();
        loop {
            self.maybe_raise_limit(&mut st);
            if let Some(conn) = st.idle.pop() {
                st.busy += 1;
                return Ok(Lease { pool: self, conn: Some(conn), keep: true });
            }
            if st.busy < st.limit {
                st.busy += 1;
                drop(st);
                return match self.open() {
                    Ok(conn) => Ok(Lease { pool: self, conn: Some(conn), keep: true }),
                    Err(e) => {
                        let mut st = self.lock();
                        st.busy -= 1;
                        if matches!(e, RemoteError::TooManyConnections(_)) {
                            Stats::add(&self.stats.too_many, 1);
                            // The server told us its real limit: what we hold now.
                            st.limit = st.busy.max(1);
                            st.lowered_at = Some(Instant::now());
                            log::warn!("server refused a connection ({e}); using at most {} connections", st.limit);
                        }
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RemoteError::Timeout("waiting for a free server connection".into()));
            }
            self.freed.wait_for(&mut st, deadline - now);
        }
    }

    fn maybe_raise_limit(&self, st: &mut State) {
        if let Some(at) = st.lowered_at
            && st.limit < self.max
            && at.elapsed() >= LIMIT_RECOVERY
        {
            st.limit += 1;
            st.lowered_at = if st.limit < self.max { Some(Instant::now()) } else { None };
        }
    }

    fn open(&self) -> Result<Conn, RemoteError> {
        let conn = Conn::open(&self.endpoint, &self.tls)?;
        Stats::add(&self.stats.logins, 1);
        Ok(conn)
    }

    fn put_back(&self, conn: Option<Conn>, keep: bool) {
        let mut st = self.lock();
        st.busy = st.busy.saturating_sub(1);
        match conn {
            Some(mut c) if keep => {
                c.last_used = Instant::now();
                c.last_contact = c.last_used;
                st.idle.push(c);
            }
            Some(c) => {
                Stats::add(&self.stats.reconnects, 1);
                drop(st);
                // The connection may be out of step; QUIT is only a courtesy, bounded by timeouts.
                drop(c);
                self.freed.notify_one();
                return;
            }
            None => {}
        }
        self.freed.notify_one();
    }

    /// Closes idle connections and probes the rest; runs on the keep-alive thread.
    fn tend_idle(&self) {
        let stale: Vec<Conn> = {
            let mut st = self.lock();
            let (old, fresh): (Vec<Conn>, Vec<Conn>) =
                st.idle.drain(..).partition(|c| c.last_contact.elapsed() >= KEEPALIVE);
            st.idle = fresh;
            st.busy += old.len();
            old
        };
        for mut conn in stale {
            let idle_for = conn.last_used.elapsed();
            if idle_for >= IDLE_CLOSE {
                conn.quit();
                self.put_back(None, false);
            } else if conn.noop() {
                // NOOP answers do not count as use: the connection still ages towards IDLE_CLOSE.
                self.put_back_aged(conn);
            } else {
                self.put_back(None, false);
            }
        }
    }

    fn put_back_aged(&self, conn: Conn) {
        let mut st = self.lock();
        st.busy = st.busy.saturating_sub(1);
        st.idle.push(conn);
        self.freed.notify_one();
    }
}

impl Lease<'_> {
    /// Runs `f` on the leased connection.
    pub fn with<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, RemoteError>) -> Result<T, RemoteError> {
        match self.conn.as_mut() {
            Some(c) => f(c),
            // Only Drop takes the connection out, so a live lease always holds one.
            None => Err(RemoteError::Protocol("connection already returned to the pool".into())),
        }
    }

    /// The connection's state is unknown (error mid-command): do not reuse it.
    pub fn discard(&mut self) {
        self.keep = false;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.put_back(self.conn.take(), self.keep);
    }
}

fn spawn_keepalive(pool: Weak<Pool>) {
    let spawned = std::thread::Builder::new().name("mastfs-keepalive".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(10));
            match pool.upgrade() {
                Some(p) => p.tend_idle(),
                None => return,
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no keep-alive thread ({e}); idle connections may time out on the server");
    }
}
