//! A bounded pool of logged-in connections, each kept ready for its next request.
//!
//! Logging in costs TCP + TLS + USER/PASS + TYPE, several round trips; a pooled connection
//! with a data connection opened ahead makes a cold read cost only `REST`+`RETR` and a resumed
//! TLS handshake. After each use a connection is tended off the request path by an arming job
//! (a short-lived thread per returned connection: see `Conn::settle_and_arm`) and comes back
//! to the idle list ready. The limit drops when the server answers 421 (too many connections)
//! and creeps back up later, as lftp does, because MAST's per-user limit is not published.
//!
//! A request that takes the last ready connection starts one *spare* login in the
//! background, so the next request that comes while it runs (a FITS file's next header,
//! prefetched while the first still arrives) finds a connection ready instead of paying a
//! login on its critical path; a sequential reader asks for all its connections at once
//! (`prepare`), logged in as spares in parallel. Requests wait for a spare on its way rather
//! than log in themselves. Spares count against the limit, and start only while the server
//! answers: after a failed login or a timeout none starts until something succeeds.
//! When the server stops answering (an exchange or a transfer times out), every idle
//! connection is closed and those being tended are closed when they come back (`epoch`):
//! they sat through the stall, and a vsftpd session stopped and continued never serves a
//! data connection again.
//!
//! Threads: request threads (`get`, and dropping a `Lease`), arming jobs (one per connection
//! being tended, ending when it is idle again or dropped), spare logins (a thread each,
//! ending when its connection is idle or dropped) and the keep-alive thread all take
//! the one `state` lock, briefly, never while talking to the server and never with another
//! lock held. Connections are only ever dropped (their sockets closed) after the lock is
//! released.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::conn::Conn;
use super::login::{Endpoint, login};
use super::tls::{KxHint, server_name};
use super::wire::Flights;
use crate::error::RemoteError;
use crate::stats::Stats;

/// An idle connection is probed with NOOP after this long, so server idle timers never fire.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle connections are closed after this long: an idle mount holds no server slots.
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// After a 421, the limit stays lowered at least this long before growing by one.
const LIMIT_RECOVERY: Duration = Duration::from_secs(30);

const SIZE_UNKNOWN: u8 = 0;
const SIZE_ANNOUNCED: u8 = 1;
const SIZE_NOT_ANNOUNCED: u8 = 2;

struct State {
    idle: Vec<Conn>,
    /// Connections held by requests.
    leased: usize,
    /// Connections with an arming job or the keep-alive thread.
    tending: usize,
    /// Logins in progress.
    opening: usize,
    /// Logins started in the background (spares); also counted in `opening`.
    spares: usize,
    /// Requests waiting for a tended connection or a spare rather than logging in a new one.
    awaiting: usize,
    limit: usize,
    lowered_at: Option<Instant>,
    /// Whether the last word from the server was good (a login, a re-arm or a keep-alive
    /// that succeeded) rather than a failure: spares are only started against a server that
    /// answers, so a stopped or dead one sees no logins but the requests' own.
    answering: bool,
    /// Times the server was seen to stop answering (an exchange or a transfer timed out).
    /// A connection whose `epoch` is older sat through such a stall and is not trusted: a
    /// vsftpd session stopped and continued (SIGSTOP, SIGCONT) still answers `SIZE` but never
    /// `PASV` or `RETR` again (its privileged helper no longer serves it), so a request on
    /// it would wait out its whole timeout.
    epoch: u64,
}

impl State {
    fn live(&self) -> usize {
        self.idle.len() + self.leased + self.tending + self.opening
    }

    /// Connections that will be ready without a request logging in, not yet claimed.
    fn coming(&self) -> usize {
        (self.tending + self.spares).saturating_sub(self.awaiting)
    }
}

pub struct Pool {
    endpoint: Endpoint,
    tls: ClientConfig,
    kx: Arc<KxHint>,
    max: usize,
    /// Whether the server states the file size in its RETR reply (vsftpd does), which makes
    /// a separate version check before each RETR unnecessary.
    announces_size: AtomicU8,
    state: Mutex<State>,
    freed: Condvar,
    stats: Arc<Stats>,
}

/// A connection checked out for one request; goes back to the pool when dropped (to be
/// tended, or straight to the idle list, or closed if it is broken).
pub(crate) struct Lease {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    /// Taken from the idle list (not logged in for this request).
    pub(crate) pooled: bool,
}

impl Pool {
    pub fn new(endpoint: Endpoint, tls: ClientConfig, max: usize, stats: Arc<Stats>) -> Arc<Pool> {
        let max = max.max(1);
        let pool = Arc::new(Pool {
            endpoint,
            tls,
            kx: Arc::default(),
            max,
            announces_size: AtomicU8::new(SIZE_UNKNOWN),
            state: Mutex::new(State {
                idle: Vec::new(),
                leased: 0,
                tending: 0,
                opening: 0,
                spares: 0,
                awaiting: 0,
                limit: max,
                lowered_at: None,
                answering: true,
                epoch: 0,
            }),
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
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Connections a request would get without logging in: idle ones, and those being
    /// tended or logged in as spares that no waiting request has claimed.
    pub(crate) fn ready(&self) -> usize {
        let st = self.lock();
        st.idle.len() + st.coming()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.endpoint.timeout
    }

    pub(crate) fn epsv(&self) -> bool {
        self.endpoint.epsv
    }

    /// The name the server's certificate must carry (the host mastfs was given).
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, RemoteError> {
        server_name(&self.endpoint.host)
    }

    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// `Some(true)` once a RETR reply stated the file size, `Some(false)` once one did not.
    pub(crate) fn announces_size(&self) -> Option<bool> {
        match self.announces_size.load(Ordering::Relaxed) {
            SIZE_ANNOUNCED => Some(true),
            SIZE_NOT_ANNOUNCED => Some(false),
            _ => None,
        }
    }

    pub(crate) fn set_announces_size(&self, announces: bool) {
        let value = if announces { SIZE_ANNOUNCED } else { SIZE_NOT_ANNOUNCED };
        self.announces_size.store(value, Ordering::Relaxed);
    }

    /// A connection for one request, before `deadline`: an idle one (one with a data
    /// connection opened ahead first), else one being tended or a spare being logged in that
    /// no other request has claimed (ready sooner than a login of its own), else a new login
    /// while under the limit.
    pub(crate) fn get(self: &Arc<Self>, deadline: Instant) -> Result<Lease, RemoteError> {
        let mut st = self.lock();
        loop {
            self.maybe_raise_limit(&mut st);
            if !st.idle.is_empty() {
                let at = st.idle.iter().rposition(|c| c.ahead.is_some()).unwrap_or(st.idle.len() - 1);
                let mut conn = st.idle.swap_remove(at);
                st.leased += 1;
                let spare = Self::spare_due(&mut st);
                drop(st);
                if spare {
                    self.spawn_spare();
                }
                if conn.control.is_quiet() {
                    conn.flights.set_on_request(true);
                    return Ok(Lease { pool: Arc::clone(self), conn: Some(conn), pooled: true });
                }
                // Closed by the server while idle (or it said something unasked): replace it.
                log::info!("a pooled connection was closed by the server while idle; replacing it");
                Stats::add(&self.stats.reconnects, 1);
                drop(conn);
                st = self.lock();
                st.leased -= 1;
                continue;
            }
            if st.coming() > 0 {
                st.awaiting += 1;
                let timed_out = self.freed.wait_until(&mut st, deadline).timed_out();
                st.awaiting -= 1;
                if timed_out {
                    return Err(RemoteError::Timeout("waiting for a free server connection".into()));
                }
                continue;
            }
            if st.live() < st.limit {
                st.opening += 1;
                drop(st);
                let opened = self.open(deadline, true);
                st = self.lock();
                st.opening -= 1;
                match opened {
                    Ok(mut conn) => {
                        st.answering = true;
                        conn.epoch = st.epoch;
                        st.leased += 1;
                        return Ok(Lease { pool: Arc::clone(self), conn: Some(conn), pooled: false });
                    }
                    Err(e) => {
                        let untrusted = self.login_failed(&mut st, &e);
                        drop(st);
                        self.drop_all(untrusted);
                        return Err(e);
                    }
                }
            }
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                return Err(RemoteError::Timeout("waiting for a free server connection".into()));
            }
        }
    }

    /// Waits until no connection is being tended (re-armed or cleaned up) in the background;
    /// `false` if some still were at `deadline`.
    pub(crate) fn wait_untended(&self, deadline: Instant) -> bool {
        let mut st = self.lock();
        while st.tending > 0 || st.spares > 0 {
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                return st.tending == 0 && st.spares == 0;
            }
        }
        true
    }

    /// Logs in, in the background and in parallel, as many spares as it takes to have
    /// `connections` live (at most the limit); returns at once. A sequential reader asks for
    /// every connection when its stripes are planned: the stripes after the first then find
    /// their connections logged in and armed when the reader's ramp ends, instead of each
    /// logging in only then (at 80 ms RTT that was 1.1 s of a 1 GiB copy). Like any spare,
    /// none starts while the server is not answering.
    pub(crate) fn prepare(self: &Arc<Self>, connections: usize) {
        let missing = {
            let mut st = self.lock();
            self.maybe_raise_limit(&mut st);
            let missing = if st.answering { connections.min(st.limit).saturating_sub(st.live()) } else { 0 };
            st.spares += missing;
            st.opening += missing;
            missing
        };
        for _ in 0..missing {
            self.spawn_spare();
        }
    }

    /// Whether to log in a spare now that a request took a connection: when no other is
    /// ready or on its way, the next request that comes while this one runs (the next
    /// header of a FITS file, fetched while the first still arrives) would otherwise pay a
    /// whole login (TCP, TLS, USER/PASS, PBSZ/PROT, PASV: 6 to 8 round trips) on its
    /// critical path. One at a time, within the limit, and only while the server answers.
    /// Counts the spare in when it says yes.
    fn spare_due(st: &mut State) -> bool {
        let due = st.answering && st.spares == 0 && st.idle.is_empty() && st.coming() == 0 && st.live() < st.limit;
        if due {
            st.spares += 1;
            st.opening += 1;
        }
        due
    }

    fn spawn_spare(self: &Arc<Self>) {
        Stats::add(&self.stats.spares, 1);
        let pool = Arc::clone(self);
        let epoch = self.lock().epoch;
        let spawned = std::thread::Builder::new().name("mastfs-spare".into()).spawn(move || pool.open_spare(epoch));
        if let Err(e) = spawned {
            log::warn!("no thread to log in a spare connection ({e})");
            let mut st = self.lock();
            st.spares -= 1;
            st.opening -= 1;
            self.freed.notify_all();
        }
    }

    /// Logs in a spare connection and opens its data connection ahead, off the request path
    /// (runs on its own thread); it joins the idle list, where `KEEPALIVE` and `IDLE_CLOSE`
    /// apply to it as to any other.
    fn open_spare(&self, epoch: u64) {
        let timeout = self.timeout();
        let opened = self
            .open(Instant::now() + timeout, false)
            .and_then(|mut conn| conn.settle_and_arm(self.epsv(), timeout, &self.stats).map(|()| conn));
        let mut st = self.lock();
        st.spares -= 1;
        st.opening -= 1;
        let mut untrusted = Vec::new();
        match opened {
            // Logged in while another connection saw the server stall: not trusted either.
            Ok(conn) if st.epoch != epoch => untrusted.push(conn),
            Ok(mut conn) => {
                st.answering = true;
                conn.epoch = epoch;
                st.idle.push(conn);
            }
            Err(e) => {
                log::info!("a spare connection could not log in: {e}");
                untrusted = self.login_failed(&mut st, &e);
            }
        }
        drop(st);
        self.drop_all(untrusted);
    }

    /// A login failed: a 421 sets the limit to what we hold now (the server told us its
    /// real limit); anything else means the server does not answer as it should, and no
    /// spare is started until something succeeds again. Returns the connections a timeout
    /// makes untrusted (see `stalled`).
    #[must_use]
    fn login_failed(&self, st: &mut State, e: &RemoteError) -> Vec<Conn> {
        if matches!(e, RemoteError::TooManyConnections(_)) {
            Stats::add(&self.stats.too_many, 1);
            st.limit = st.live().max(1);
            st.lowered_at = Some(Instant::now());
            log::warn!("server refused a connection ({e}); using at most {} connections", st.limit);
            return Vec::new();
        }
        st.answering = false;
        if matches!(e, RemoteError::Timeout(_)) { Self::stalled(st) } else { Vec::new() }
    }

    /// The server stopped answering for a while: every idle connection sat through that
    /// and is taken out to be closed (by the caller, after the lock), and those being tended
    /// now are closed when they come back. Requests log in afresh instead; no spare starts
    /// until something succeeds again.
    #[must_use]
    fn stalled(st: &mut State) -> Vec<Conn> {
        st.epoch += 1;
        st.answering = false;
        let untrusted = std::mem::take(&mut st.idle);
        if !untrusted.is_empty() {
            log::info!("the server stalled: closing {} idle connection(s) that sat through it", untrusted.len());
        }
        untrusted
    }

    /// Closes connections already taken out of the pool's counts.
    fn drop_all(&self, conns: Vec<Conn>) {
        for conn in conns {
            Stats::add(&self.stats.reconnects, 1);
            drop(conn);
        }
        self.freed.notify_all();
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

    /// Logs in on a connection of its own and closes it again: how an offline mount learns
    /// that the server answers once more (the pool's connections died with it).
    pub fn probe_login(&self) -> Result<(), RemoteError> {
        let conn = self.open(Instant::now() + self.endpoint.timeout, true)?;
        conn.quit();
        Ok(())
    }

    /// `on_request`: whether a request waits for this login (its round trips count as the
    /// request's) or it runs in the background (a spare).
    fn open(&self, deadline: Instant, on_request: bool) -> Result<Conn, RemoteError> {
        let flights = Flights::new(Arc::clone(&self.stats));
        flights.set_on_request(on_request);
        let session = login(&self.endpoint, &self.tls, &self.kx, &flights, deadline)?;
        Stats::add(&self.stats.logins, 1);
        Ok(Conn::new(session, flights))
    }

    /// Takes a connection back from a request.
    fn give_back(self: &Arc<Self>, mut conn: Conn) {
        conn.last_used = Instant::now();
        conn.last_contact = conn.last_used;
        if conn.control.is_broken() {
            let untrusted = {
                let mut st = self.lock();
                st.leased -= 1;
                st.answering = false;
                if conn.control.timed_out() || conn.stalled { Self::stalled(&mut st) } else { Vec::new() }
            };
            self.discard(conn);
            self.drop_all(untrusted);
            return;
        }
        if !conn.needs_tending() {
            let mut st = self.lock();
            st.leased -= 1;
            conn.epoch = st.epoch;
            st.idle.push(conn);
            self.freed.notify_all();
            return;
        }
        {
            let mut st = self.lock();
            st.leased -= 1;
            st.tending += 1;
            conn.epoch = st.epoch;
        }
        conn.flights.set_on_request(false);
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("mastfs-arm".into()).spawn(move || {
            let tended = conn.settle_and_arm(pool.epsv(), pool.timeout(), &pool.stats);
            pool.end_tending(conn, tended);
        });
        if let Err(e) = spawned {
            // The connection went down with the closure; only the count is left to fix.
            log::warn!("no thread to re-arm a connection ({e}); dropping it");
            Stats::add(&self.stats.reconnects, 1);
            self.lock().tending -= 1;
            self.freed.notify_all();
        }
    }

    fn end_tending(&self, conn: Conn, tended: Result<(), RemoteError>) {
        match tended {
            Ok(()) => {
                let mut st = self.lock();
                st.tending -= 1;
                if conn.epoch != st.epoch {
                    // Tended while the server stalled: not trusted (see `epoch`).
                    drop(st);
                    self.discard(conn);
                    return;
                }
                st.answering = true;
                st.idle.push(conn);
                self.freed.notify_all();
            }
            Err(e) => {
                log::info!("dropping a connection that could not be made ready: {e}");
                let untrusted = {
                    let mut st = self.lock();
                    st.tending -= 1;
                    st.answering = false;
                    if matches!(e, RemoteError::Timeout(_)) { Self::stalled(&mut st) } else { Vec::new() }
                };
                self.discard(conn);
                self.drop_all(untrusted);
            }
        }
    }

    /// Closes a connection that is out of step or dead (its slot is already released).
    fn discard(&self, conn: Conn) {
        Stats::add(&self.stats.reconnects, 1);
        drop(conn);
        self.freed.notify_all();
    }

    /// Probes idle connections and closes the ones idle too long; runs on the keep-alive thread.
    fn tend_idle(&self) {
        let due: Vec<Conn> = {
            let mut st = self.lock();
            let (mut due, fresh): (Vec<Conn>, Vec<Conn>) =
                st.idle.drain(..).partition(|c| c.last_contact.elapsed() >= KEEPALIVE);
            st.idle = fresh;
            st.tending += due.len();
            for conn in &mut due {
                conn.epoch = st.epoch;
            }
            due
        };
        for mut conn in due {
            conn.flights.set_on_request(false);
            if conn.last_used.elapsed() >= IDLE_CLOSE {
                conn.quit();
                self.lock().tending -= 1;
                self.freed.notify_all();
                continue;
            }
            let result = if conn.control.is_quiet() {
                conn.keep_alive(self.epsv(), self.timeout(), &self.stats)
            } else {
                Err(RemoteError::Protocol("closed by the server while idle".into()))
            };
            self.end_tending(conn, result);
        }
    }
}

impl Lease {
    /// The leased connection.
    pub(crate) fn conn(&mut self) -> Result<&mut Conn, RemoteError> {
        // Only Drop takes the connection out, so a live lease always holds one.
        self.conn.as_mut().ok_or_else(|| RemoteError::Protocol("connection already returned to the pool".into()))
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
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
