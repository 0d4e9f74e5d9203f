//! Whether the server may be asked: online, or offline, and how an offline mount comes back.
//!
//! A mount is offline from the start when the server could not be reached at mount time (and
//! the cache holds something to serve), or for good with `--offline`. Offline, nothing talks to
//! the server: [`Gated`] answers every request at once with [`RemoteError::Offline`], which
//! says why, so what is not cached fails with a clear error instead of waiting on timeouts.
//!
//! An offline mount that was not forced tries to log in on a background thread: first
//! [`Schedule::first`] after the mount, then at doubling intervals up to [`Schedule::max`], and
//! within [`Schedule::min_gap`] of the last try whenever a request wanted the server. The first
//! login that succeeds turns the mount online, once and for all; from then on it behaves like a
//! mount that started online (a server lost later is retried request by request, as before).
//! A server that answers but refuses the login is not tried again: it would only collect
//! failed logins against the account.
//!
//! Threads: FUSE workers, `mastfs-meta` and read-ahead threads call [`Link::is_offline`] (an
//! atomic) and [`Link::nudge`]; one `mastfs-probe` thread probes. Lock: `wake` alone, never held
//! while probing or logging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::RemoteError;
use crate::remote::{Intent, RangeReader, Remote, RemoteEntry, Version};
use crate::stats::Stats;

/// When an offline mount tries the server.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The first try after the mount.
    pub first: Duration,
    /// The longest wait between tries of an idle mount.
    pub max: Duration,
    /// The shortest wait after a try when a request wants the server.
    pub min_gap: Duration,
}

pub const SCHEDULE: Schedule =
    Schedule { first: Duration::from_secs(2), max: Duration::from_secs(30), min_gap: Duration::from_secs(2) };

/// Whether `e`, met while connecting, means the server could not be reached at all (no
/// answer), as opposed to a server that answered and refused (certificate, `AUTH TLS`, login,
/// `421`, a missing root). DNS failures, refused or unroutable TCP connects, and silence past
/// the timeout are `Connect` or `Timeout`.
pub fn unreachable(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Connect { .. } | RemoteError::Timeout(_))
}

/// The mount's view of the server: online or offline, shared by everything that asks it.
pub struct Link {
    offline: AtomicBool,
    /// Why the mount is offline, as requests that fail show it: `offline (--offline)`.
    reason: String,
    /// A request wanted the server since the last try.
    nudged: Mutex<bool>,
    wake: Condvar,
    stats: Arc<Stats>,
}

impl Link {
    pub fn online(stats: Arc<Stats>) -> Arc<Link> {
        Link::new(false, String::new(), stats)
    }

    /// Offline for good: `--offline`.
    pub fn forced_offline(stats: Arc<Stats>) -> Arc<Link> {
        Link::new(true, "offline (--offline)".into(), stats)
    }

    /// Offline because `server` could not be reached; online again once a [`Link::start_prober`]
    /// probe succeeds.
    pub fn unreachable(server: &str, stats: Arc<Stats>) -> Arc<Link> {
        Link::new(true, format!("offline ({server} unreachable)"), stats)
    }

    fn new(offline: bool, reason: String, stats: Arc<Stats>) -> Arc<Link> {
        stats.offline.store(u64::from(offline), Ordering::Relaxed);
        Arc::new(Link {
            offline: AtomicBool::new(offline),
            reason,
            nudged: Mutex::new(false),
            wake: Condvar::new(),
            stats,
        })
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    /// The error for `what` (`"/a/b" from byte 0`, `the listing of "/a"`), which is not cached.
    pub fn not_cached(&self, what: &str) -> RemoteError {
        RemoteError::Offline(format!("{}: {what} is not cached", self.reason))
    }

    /// A request wanted the server: try it soon (no sooner than `min_gap` after the last try).
    pub fn nudge(&self) {
        if self.is_offline() {
            *self.nudged.lock() = true;
            self.wake.notify_all();
        }
    }

    fn go_online(&self) {
        self.offline.store(false, Ordering::Relaxed);
        self.stats.offline.store(0, Ordering::Relaxed);
    }

    /// Starts the thread that tries the server by `probe` (a fresh login) on `schedule` until
    /// one succeeds, then turns the mount online. `server` names it in the log.
    pub fn start_prober(
        self: &Arc<Self>,
        server: String,
        schedule: Schedule,
        probe: impl Fn() -> Result<(), RemoteError> + Send + 'static,
    ) {
        let link = Arc::downgrade(self);
        let name = server.clone();
        let spawned = std::thread::Builder::new()
            .name("mastfs-probe".into())
            .spawn(move || probe_until_online(&link, &name, schedule, probe));
        if let Err(e) = spawned {
            log::error!("no thread to watch for {server} ({e}): this mount stays offline until it is remounted");
        }
    }
}

fn probe_until_online(link: &Weak<Link>, server: &str, s: Schedule, probe: impl Fn() -> Result<(), RemoteError>) {
    let mut interval = s.first;
    let mut last_try = Instant::now();
    let mut last_refusal = String::new();
    loop {
        // Wait, a second at a time, so that the thread ends soon after the mount does.
        loop {
            let Some(l) = link.upgrade() else { return };
            let mut nudged = l.nudged.lock();
            let due = last_try + if *nudged { s.min_gap.min(interval) } else { interval };
            let now = Instant::now();
            if now >= due {
                *nudged = false;
                break;
            }
            l.wake.wait_for(&mut nudged, (due - now).min(Duration::from_secs(1)));
        }
        let result = probe();
        last_try = Instant::now();
        let Some(l) = link.upgrade() else { return };
        match result {
            Ok(()) => {
                l.go_online();
                log::warn!("{server} answers again: the mount is ONLINE; listings refresh as they are used");
                return;
            }
            Err(e) if unreachable(&e) => {
                log::info!("{server} still unreachable ({e}); next try in at most {}s", interval.as_secs());
                interval = (interval * 2).min(s.max);
            }
            Err(RemoteError::Login(m)) => {
                log::error!(
                    "{server} answers again but refused the login ({m}); the mount stays offline \
                     (check --user and the password, and mount again)"
                );
                return;
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_refusal {
                    log::warn!(
                        "{server} answers but cannot be used ({text}); staying offline, trying every {}s",
                        s.max.as_secs()
                    );
                    last_refusal = text;
                }
                interval = s.max;
            }
        }
    }
}

/// A [`Remote`] that answers at once, without the server, while the mount is offline.
pub struct Gated {
    inner: Arc<dyn Remote>,
    link: Arc<Link>,
}

impl Gated {
    pub fn new(inner: Arc<dyn Remote>, link: Arc<Link>) -> Gated {
        Gated { inner, link }
    }

    fn pass(&self, what: impl FnOnce() -> String) -> Result<(), RemoteError> {
        if self.link.is_offline() {
            self.link.nudge();
            return Err(self.link.not_cached(&what()));
        }
        Ok(())
    }
}

impl Remote for Gated {
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        self.pass(|| format!("the listing of {dir:?}"))?;
        self.inner.list(dir)
    }

    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        self.pass(|| format!("{path:?}"))?;
        self.inner.stat(path)
    }

    fn open(
        &self,
        path: &str,
        offset: u64,
        version: Version,
        intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError> {
        self.pass(|| format!("{path:?} from byte {offset}"))?;
        self.inner.open(path, offset, version, intent)
    }

    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }

    fn ready(&self) -> usize {
        self.inner.ready()
    }

    fn prepare(&self, connections: usize) {
        if !self.link.is_offline() {
            self.inner.prepare(connections);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRemote;
    use std::sync::atomic::AtomicU32;

    const FAST: Schedule = Schedule {
        first: Duration::from_millis(20),
        max: Duration::from_millis(80),
        min_gap: Duration::from_millis(10),
    };

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn refused() -> RemoteError {
        RemoteError::io(&std::io::ErrorKind::ConnectionRefused.into(), "127.0.0.1:21")
    }

    #[test]
    fn only_failures_to_get_any_answer_count_as_unreachable() {
        assert!(unreachable(&refused()));
        assert!(unreachable(&RemoteError::Timeout("connecting to 192.0.2.1:21".into())));
        assert!(unreachable(&RemoteError::io(&std::io::Error::other("failed to lookup address"), "cannot resolve h")));
        for answered in [
            RemoteError::Login("530 Login incorrect".into()),
            RemoteError::Tls("invalid peer certificate: UnknownIssuer".into()),
            RemoteError::TooManyConnections("421 too many".into()),
            RemoteError::Unavailable("550 /stage".into()),
            RemoteError::Protocol("garbage".into()),
        ] {
            assert!(!unreachable(&answered), "{answered}");
        }
    }

    #[test]
    fn an_offline_gate_answers_without_the_server_and_says_why() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2, 3]));
        let stats = Arc::new(Stats::default());
        let gate = Gated::new(remote.clone(), Link::forced_offline(Arc::clone(&stats)));
        let e = gate.list("/d").expect_err("offline");
        assert!(
            matches!(&e, RemoteError::Offline(m) if m == "offline (--offline): the listing of \"/d\" is not cached"),
            "{e}"
        );
        assert!(gate.stat("/d/f").is_err());
        let version = Version { size: 3, mtime: 0 };
        let e = gate.open("/d/f", 1, version, Intent::Peek { len: 1 }).err().expect("offline");
        assert!(e.to_string().contains("\"/d/f\" from byte 1 is not cached"), "{e}");
        let asked = remote.lists() + remote.stats() + remote.opens();
        assert_eq!(asked, 0, "nothing reached the server");
        assert_eq!(stats.offline.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_online_gate_passes_everything_through() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2, 3]));
        let gate = Gated::new(remote.clone(), Link::online(Arc::new(Stats::default())));
        assert_eq!(gate.list("/d").expect("listed").len(), 1);
        assert_eq!(remote.lists(), 1);
    }

    #[test]
    fn an_unreachable_mount_goes_online_by_itself_once_a_probe_logs_in() {
        let stats = Arc::new(Stats::default());
        let link = Link::unreachable("h:21", Arc::clone(&stats));
        let tries = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&tries);
        link.start_prober("h:21".into(), FAST, move || {
            if counted.fetch_add(1, Ordering::SeqCst) < 2 { Err(refused()) } else { Ok(()) }
        });
        assert!(link.is_offline());
        wait_for("going online", || !link.is_offline());
        assert_eq!(tries.load(Ordering::SeqCst), 3, "two refused tries, then one that logged in, then no more");
        assert_eq!(stats.offline.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_request_that_wants_the_server_brings_the_next_try_forward() {
        let link = Link::unreachable("h:21", Arc::new(Stats::default()));
        let tries = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&tries);
        // Left alone, the first try would come in an hour.
        let hour =
            Schedule { first: Duration::from_secs(3600), max: Duration::from_secs(3600), min_gap: Duration::ZERO };
        link.start_prober("h:21".into(), hour, move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 { Err(refused()) } else { Ok(()) }
        });
        let gate = Gated::new(Arc::new(FakeRemote::default()), Arc::clone(&link));
        assert!(matches!(gate.list("/"), Err(RemoteError::Offline(_))), "offline, and the server is wanted");
        wait_for("a try brought forward", || tries.load(Ordering::SeqCst) == 1);
        assert!(link.is_offline(), "that try was refused");
        assert!(gate.list("/").is_err());
        wait_for("going online after the second request", || !link.is_offline());
        assert!(gate.list("/").is_ok());
    }

    #[test]
    fn a_refused_login_ends_the_tries_and_the_mount_stays_offline() {
        let link = Link::unreachable("h:21", Arc::new(Stats::default()));
        let tries = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&tries);
        link.start_prober("h:21".into(), FAST, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Login("530 Login incorrect".into()))
        });
        wait_for("the first try", || tries.load(Ordering::SeqCst) == 1);
        for _ in 0..20 {
            link.nudge();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tries.load(Ordering::SeqCst), 1, "no second failed login");
        assert!(link.is_offline());
    }

    #[test]
    fn a_forced_offline_mount_never_tries_and_nudges_do_nothing() {
        let link = Link::forced_offline(Arc::new(Stats::default()));
        link.nudge();
        assert!(link.is_offline());
        assert!(link.not_cached("x").to_string().starts_with("offline (--offline)"));
    }
}
