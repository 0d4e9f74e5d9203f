//! What the server says about directories and paths: listings, and `stat`s of single paths
//! in directories nobody listed. Each is fetched once at a time, trusted for the TTL, then
//! refreshed while the old answer keeps answering.
//!
//! Something never asked before is fetched by the caller itself, and everyone asking for it
//! meanwhile waits for that one fetch. An answer past its TTL is refreshed on a background
//! thread; the caller waits for the refresh at most [`REFRESH_GRACE`] (a healthy server
//! answers in that time, so `ls` sees fresh entries) and otherwise answers from the old one.
//! While a refresh is running, or after the last one failed because the server did not
//! answer, callers do not wait at all: a hung server never holds up `ls` of a directory it
//! listed before, nor a lookup it answered before.
//!
//! Every listing and `stat` answer is also saved in the cache directory (`dirstore.rs`), and
//! a directory this mount has not asked about yet is first filled from there, as a stale
//! answer: it refreshes like an expired one, and while the mount is offline (`online.rs`) it
//! answers as it is. Offline, nothing is fetched: what was never saved fails at once with an
//! error that says so, and the log says which directory or path it was.
//!
//! Threads: FUSE workers call [`DirCache::ensure_listing`] and [`DirCache::ensure_stat`];
//! refreshes run on short-lived `mastfs-meta` threads, at most one per directory or path.
//! Locks: `fetches`, the inode table (owned by `fs.rs`) and each `Fetch::result` are only
//! ever held one at a time. `loading` is held while a saved record is read and adopted; `loaded`
//! and the inode table are taken inside it, one at a time, never the other way round.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::dirstore::{DirStore, Saved, SavedDir};
use crate::error::{FsError, RemoteError};
use crate::inode::Inodes;
use crate::online::Link;
use crate::remote::{EntryKind, Remote};
use crate::stats::Stats;

/// How long a caller waits for the refresh of an expired answer before using the old one.
pub const REFRESH_GRACE: Duration = Duration::from_secs(1);

/// What is being fetched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// The listing of a directory inode.
    Listing(u64),
    /// One name in a directory inode, by `stat`.
    Stat(u64, String),
}

/// What lets directories answer without the server: the listings saved on disk, and whether
/// the server may be asked now.
pub struct Fallback {
    /// `None` without a disk cache (`--cache-size 0`).
    pub listings: Option<Arc<DirStore>>,
    pub link: Arc<Link>,
    pub stats: Arc<Stats>,
}

impl Fallback {
    /// Always online, nothing saved.
    #[cfg(test)]
    pub fn none(stats: Arc<Stats>) -> Fallback {
        Fallback { listings: None, link: Link::online(Arc::clone(&stats)), stats }
    }
}

pub struct DirCache {
    remote: Arc<dyn Remote>,
    inodes: Arc<Mutex<Inodes>>,
    /// Remote directory shown at the mount point (`/` or `/a/b`, no trailing `/`).
    root: String,
    ttl: Duration,
    /// The last fetch failed without an answer from the server (not a `550`): refreshes
    /// are not waited for until one succeeds.
    server_silent: AtomicBool,
    fetches: Mutex<HashMap<Key, Arc<Fetch>>>,
    fallback: Fallback,
    /// Directories whose saved record was looked for already (one look per directory).
    loaded: Mutex<HashSet<u64>>,
    loading: Mutex<()>,
    /// The last save of a listing failed (the cache disk is full or read-only).
    save_failing: AtomicBool,
}

/// One fetch that several callers may wait for.
struct Fetch {
    started: Instant,
    result: Mutex<Option<Result<(), FsError>>>,
    finished: Condvar,
}

impl Fetch {
    /// The fetch's result, waiting at most `limit` (`None`: until it ends).
    fn wait(&self, limit: Option<Duration>) -> Option<Result<(), FsError>> {
        let mut result = self.result.lock();
        match limit {
            None => {
                while result.is_none() {
                    self.finished.wait(&mut result);
                }
            }
            Some(limit) => {
                let deadline = Instant::now() + limit;
                while result.is_none() {
                    if self.finished.wait_until(&mut result, deadline).timed_out() {
                        break;
                    }
                }
            }
        }
        result.clone()
    }
}

/// Ends a fetch even if the remote call panics, so that no waiter waits forever.
struct Completion<'a> {
    cache: &'a DirCache,
    key: Key,
    fetch: Arc<Fetch>,
    result: Option<Result<(), FsError>>,
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(FsError::Remote(RemoteError::Protocol("the request ended without a result".into())))
        });
        *self.fetch.result.lock() = Some(result);
        self.fetch.finished.notify_all();
        self.cache.fetches.lock().remove(&self.key);
    }
}

impl DirCache {
    pub fn new(
        remote: Arc<dyn Remote>,
        inodes: Arc<Mutex<Inodes>>,
        root: &str,
        ttl: Duration,
        fallback: Fallback,
    ) -> DirCache {
        DirCache {
            remote,
            inodes,
            root: root.trim_end_matches('/').to_string(),
            ttl,
            server_silent: AtomicBool::new(false),
            fetches: Mutex::new(HashMap::new()),
            fallback,
            loaded: Mutex::new(HashSet::new()),
            loading: Mutex::new(()),
            save_failing: AtomicBool::new(false),
        }
    }

    /// Fills directory `dir` from its saved record, the first time it is asked about in this
    /// mount and only if the server has not already answered about it.
    pub fn load_saved(&self, dir: u64) {
        let Some(store) = &self.fallback.listings else { return };
        if self.loaded.lock().contains(&dir) {
            return;
        }
        // One load at a time: a lookup in `dir` that comes meanwhile waits for this one rather
        // than seeing the directory still empty (and, offline, failing).
        let _one = self.loading.lock();
        if self.loaded.lock().contains(&dir) {
            return;
        }
        let path = {
            let inodes = self.inodes.lock();
            match inodes.get(dir) {
                Some(n) if n.kind == EntryKind::Dir && inodes.listing(dir).is_none() => Some(self.remote_path(&n.path)),
                _ => None,
            }
        };
        if let Some(saved) = path.as_deref().and_then(|p| store.load(p)) {
            log::debug!("{path:?}: {} entries from the listing cache", saved.entries.len());
            if saved.complete {
                Stats::add(&self.fallback.stats.disk_listings, 1);
            }
            self.inodes.lock().adopt(dir, saved);
        }
        self.loaded.lock().insert(dir);
    }

    /// The absolute remote path of a path relative to the mount's root.
    pub fn remote_path(&self, rel: &str) -> String {
        match (self.root.is_empty(), rel.is_empty()) {
            (true, true) => "/".to_string(),
            (false, true) => self.root.clone(),
            (_, false) => format!("{}/{rel}", self.root),
        }
    }

    /// Makes sure directory `dir` has a listing to answer from: a fresh one, or an expired one
    /// while its refresh runs.
    pub fn ensure_listing(self: &Arc<Self>, dir: u64) -> Result<(), FsError> {
        self.load_saved(dir);
        let (path, cached) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(dir).ok_or(FsError::NotFound)?;
            if node.kind != EntryKind::Dir {
                return Err(FsError::NotDir);
            }
            match inodes.listing(dir) {
                Some(l) if l.fetched.is_some_and(|at| at.elapsed() < self.ttl) => return Ok(()),
                listing => (self.remote_path(&node.path), listing.is_some()),
            }
        };
        self.fetch(Key::Listing(dir), path, cached)
    }

    /// Makes sure the inode table has an answer about `name` in directory `dir` (a node, or a
    /// remembered miss): a fresh one, or an expired one while its refresh runs.
    pub fn ensure_stat(self: &Arc<Self>, dir: u64, name: &str) -> Result<(), FsError> {
        self.load_saved(dir);
        let (path, cached) = {
            let inodes = self.inodes.lock();
            let parent = inodes.get(dir).ok_or(FsError::NotFound)?;
            let rel = if parent.path.is_empty() { name.to_string() } else { format!("{}/{name}", parent.path) };
            // Some(None): known, from disk only.
            let checked = match inodes.missing_since(dir, name) {
                Some(at) => Some(Some(at)),
                None => inodes.by_name(dir, name).and_then(|ino| inodes.get(ino)).map(|n| n.checked),
            };
            match checked {
                Some(Some(at)) if at.elapsed() < self.ttl => return Ok(()),
                checked => (self.remote_path(&rel), checked.is_some()),
            }
        };
        self.fetch(Key::Stat(dir, name.to_string()), path, cached)
    }

    fn fetch(self: &Arc<Self>, key: Key, path: String, cached: bool) -> Result<(), FsError> {
        let link = &self.fallback.link;
        if link.is_offline() {
            link.nudge();
            if cached {
                return Ok(());
            }
            let what = match key {
                Key::Listing(_) => format!("the listing of {path:?}"),
                Key::Stat(..) => format!("{path:?}"),
            };
            let e = link.not_cached(&what);
            log::warn!("{e}");
            return Err(FsError::Remote(e));
        }
        let (fetch, started_here) = {
            let mut fetches = self.fetches.lock();
            match fetches.get(&key) {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f =
                        Arc::new(Fetch { started: Instant::now(), result: Mutex::new(None), finished: Condvar::new() });
                    fetches.insert(key.clone(), Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if !cached {
            if started_here {
                self.run(key, &path, Arc::clone(&fetch));
            }
            return fetch.wait(None).unwrap_or(Err(FsError::NotFound));
        }
        let wait = if self.server_silent.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            REFRESH_GRACE.saturating_sub(fetch.started.elapsed())
        };
        if started_here {
            self.run_in_background(key, path.clone(), Arc::clone(&fetch));
        }
        if fetch.wait(Some(wait)).is_none() {
            log::info!("{path:?} is still being refreshed; answering with what the server said before");
        }
        // A failed refresh was logged where it failed; the old answer is the best there is.
        Ok(())
    }

    /// Changes the saved record of remote directory `dir` with `change`. A cache that cannot be
    /// written costs only offline use, so a failure is logged, not returned (as for listings).
    fn save(&self, dir: &str, change: impl FnOnce(&mut SavedDir) -> bool) {
        let Some(store) = &self.fallback.listings else { return };
        self.note_save(dir, store.update(dir, change));
    }

    /// Warns once per outage of the cache disk (full, read-only), not once per listing.
    fn note_save(&self, dir: &str, result: std::io::Result<Saved>) {
        match result {
            Ok(_) => {
                if self.save_failing.swap(false, Ordering::Relaxed) {
                    log::warn!("listings are saved in the cache again");
                }
            }
            Err(e) if !self.save_failing.swap(true, Ordering::Relaxed) => log::warn!(
                "cannot save the listing of {dir:?} in the cache ({e}); listings fetched until the cache \
                 can be written again will not be available offline"
            ),
            Err(e) => log::debug!("cannot save the listing of {dir:?} in the cache ({e})"),
        }
    }

    fn run_in_background(self: &Arc<Self>, key: Key, path: String, fetch: Arc<Fetch>) {
        let cache = Arc::clone(self);
        let job = Arc::clone(&fetch);
        let job_key = key.clone();
        let spawned = std::thread::Builder::new().name("mastfs-meta".into()).spawn(move || {
            cache.run(job_key, &path, job);
        });
        if let Err(e) = spawned {
            log::warn!("no thread for a background refresh ({e}); the old answer stands meanwhile");
            self.fetches.lock().remove(&key);
            *fetch.result.lock() = Some(Err(FsError::Remote(RemoteError::io(&e, "starting a refresh thread"))));
            fetch.finished.notify_all();
        }
    }

    /// Asks the server about `key` (at `path`), records the answer in the inode table and
    /// ends `fetch`.
    fn run(&self, key: Key, path: &str, fetch: Arc<Fetch>) {
        let mut done = Completion { cache: self, key: key.clone(), fetch, result: None };
        let outcome = match &key {
            Key::Listing(dir) => self.remote.list(path).map(|entries| {
                let saved = {
                    let mut inodes = self.inodes.lock();
                    inodes.store_listing(*dir, entries);
                    inodes.saved_listing(*dir)
                };
                if let (Some(store), Some(saved)) = (&self.fallback.listings, saved) {
                    self.note_save(path, store.save(path, &saved));
                }
            }),
            Key::Stat(dir, name) => self.remote.stat(path).map(|entry| {
                let (dir_path, saved, known_before) = {
                    let mut inodes = self.inodes.lock();
                    let known_before = inodes.by_name(*dir, name).is_some();
                    let ino = inodes.store_stat(*dir, name, entry, self.ttl);
                    let dir_path = inodes.get(*dir).map(|n| self.remote_path(&n.path));
                    (dir_path, ino.and_then(|i| inodes.saved_entry(i, name)), known_before)
                };
                match (dir_path, saved) {
                    (Some(dir_path), Some(e)) => self.save(&dir_path, |record| record.upsert(e)),
                    // Gone from the server: gone from the saved record too, if it was there.
                    (Some(dir_path), None) if known_before => self.save(&dir_path, |record| record.remove(name)),
                    _ => {}
                }
            }),
        };
        done.result = Some(match outcome {
            Ok(()) => {
                self.server_silent.store(false, Ordering::Relaxed);
                Ok(())
            }
            // The directory exists (it was looked up), so a refused listing is a refusal.
            Err(e @ RemoteError::Unavailable(_)) if matches!(key, Key::Listing(_)) => {
                log::info!("listing {path:?} refused: {e}");
                Err(FsError::Remote(e))
            }
            Err(RemoteError::Unavailable(m)) => {
                log::info!("{path:?} is not available: {m}");
                Err(FsError::NotFound)
            }
            Err(e) => {
                log::warn!(
                    "asking the server about {path:?} failed ({e}); answering with what it said before, if anything"
                );
                self.server_silent.store(true, Ordering::Relaxed);
                Err(FsError::Remote(e))
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRemote;
    use crate::inode::ROOT;
    use std::sync::atomic::Ordering;

    fn cache(remote: &Arc<FakeRemote>, ttl: Duration) -> (Arc<DirCache>, Arc<Mutex<Inodes>>) {
        let inodes = Arc::new(Mutex::new(Inodes::new()));
        let r: Arc<dyn Remote> = remote.clone();
        let fallback = Fallback::none(Arc::new(Stats::default()));
        (Arc::new(DirCache::new(r, Arc::clone(&inodes), "/", ttl, fallback)), inodes)
    }

    /// Far beyond [`REFRESH_GRACE`], the longest an expired answer waits for its refresh.
    const ANSWERED_WITHIN: Duration = Duration::from_secs(5);

    /// Runs `calls` on a thread of its own while listings on `remote` are stalled. If they are
    /// still waiting after [`ANSWERED_WITHIN`] the test fails instead of hanging: the stall is
    /// released first, so the stuck calls end too.
    fn while_listings_stall<T: Send + 'static>(
        remote: &Arc<FakeRemote>,
        calls: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        remote.faults().stall_lists.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(calls());
        });
        let result = rx.recv_timeout(ANSWERED_WITHIN);
        if result.is_err() {
            remote.faults().stall_lists.store(false, Ordering::SeqCst);
        }
        result.unwrap_or_else(|_| {
            panic!("still waiting for a stalled server after {ANSWERED_WITHIN:?}: the cached answer did not serve")
        })
    }

    fn names(inodes: &Mutex<Inodes>, dir: u64) -> Vec<String> {
        let t = inodes.lock();
        let mut v: Vec<String> =
            t.listing(dir).map(|l| l.entries.iter().map(|(n, _)| n.to_string()).collect()).unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn remote_paths_join_the_root_and_the_relative_path() {
        let remote = Arc::new(FakeRemote::default());
        let r: Arc<dyn Remote> = remote;
        let at = |root: &str| {
            let fallback = Fallback::none(Arc::new(Stats::default()));
            DirCache::new(Arc::clone(&r), Arc::new(Mutex::new(Inodes::new())), root, Duration::ZERO, fallback)
        };
        assert_eq!(at("/").remote_path(""), "/");
        assert_eq!(at("/").remote_path("a/b"), "/a/b");
        assert_eq!(at("/stage/").remote_path(""), "/stage");
        assert_eq!(at("/stage").remote_path("a"), "/stage/a");
    }

    #[test]
    fn concurrent_first_listings_of_one_directory_cost_one_fetch() {
        let remote = Arc::new(FakeRemote::with_file("/a", vec![1]));
        remote.faults().list_delay_ms.store(200, Ordering::SeqCst);
        let (dirs, inodes) = cache(&remote, Duration::from_secs(60));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| dirs.ensure_listing(ROOT).expect("listed"));
            }
        });
        assert_eq!(remote.lists(), 1);
        assert_eq!(names(&inodes, ROOT), ["a"]);
    }

    #[test]
    fn an_expired_listing_answers_at_once_while_a_stalled_refresh_runs_and_one_refresh_at_a_time() {
        let remote = Arc::new(FakeRemote::with_file("/a", vec![1]));
        let (dirs, inodes) = cache(&remote, Duration::ZERO);
        dirs.ensure_listing(ROOT).expect("first listing");
        remote.put("/b", vec![2]);
        // The server stops answering listings until released.
        let answered = Arc::clone(&dirs);
        while_listings_stall(&remote, move || {
            for _ in 0..5 {
                answered.ensure_listing(ROOT).expect("answered from the cached listing");
            }
        });
        assert_eq!(names(&inodes, ROOT), ["a"], "the old listing answers meanwhile");
        assert_eq!(remote.lists(), 2, "one refresh running, no second one");
        remote.faults().stall_lists.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while names(&inodes, ROOT) != ["a", "b"] {
            assert!(Instant::now() < deadline, "the background refresh never landed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_expired_listing_is_replaced_before_answering_when_the_server_answers_promptly() {
        let remote = Arc::new(FakeRemote::with_file("/a", vec![1]));
        let (dirs, inodes) = cache(&remote, Duration::ZERO);
        dirs.ensure_listing(ROOT).expect("first listing");
        remote.put("/b", vec![2]);
        dirs.ensure_listing(ROOT).expect("refreshed");
        assert_eq!(names(&inodes, ROOT), ["a", "b"]);
    }

    #[test]
    fn after_a_failed_refresh_the_cached_listing_answers_and_a_first_listing_fails() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1]));
        let (dirs, inodes) = cache(&remote, Duration::ZERO);
        dirs.ensure_listing(ROOT).expect("first listing");
        remote.faults().fail_lists.store(true, Ordering::SeqCst);
        dirs.ensure_listing(ROOT).expect("the cached listing answers");
        assert!(dirs.server_silent.load(Ordering::SeqCst));
        let d = inodes.lock().child(ROOT, "d").expect("d");
        assert_eq!(dirs.ensure_listing(d).err().map(|e| e.errno()), Some(libc::EIO), "nothing cached: an error");
        remote.faults().fail_lists.store(false, Ordering::SeqCst);
        dirs.ensure_listing(d).expect("the server answers again");
        assert!(!dirs.server_silent.load(Ordering::SeqCst));
    }

    #[test]
    fn an_expired_stat_answers_at_once_while_a_stalled_refresh_runs() {
        let remote = Arc::new(FakeRemote::with_file("/a", vec![1]));
        let (dirs, inodes) = cache(&remote, Duration::ZERO);
        dirs.ensure_stat(ROOT, "a").expect("first stat");
        dirs.ensure_stat(ROOT, "gone").expect("a miss is an answer too");
        let answered = Arc::clone(&dirs);
        while_listings_stall(&remote, move || {
            for name in ["a", "gone", "a", "gone"] {
                answered.ensure_stat(ROOT, name).expect("answered from the earlier stat");
            }
        });
        assert_eq!(remote.stats(), 4, "two first stats, one refresh of each");
        let t = inodes.lock();
        assert!(t.by_name(ROOT, "a").is_some() && t.missing_since(ROOT, "gone").is_some());
        drop(t);
        remote.faults().stall_lists.store(false, Ordering::SeqCst);
    }

    /// A cache over `remote` whose listings are saved in `dir` (another "mount" of the same
    /// cache directory each call), online or offline.
    fn mount_with_store(
        remote: &Arc<FakeRemote>,
        dir: &std::path::Path,
        offline: bool,
    ) -> (Arc<DirCache>, Arc<Mutex<Inodes>>, Arc<Stats>) {
        let inodes = Arc::new(Mutex::new(Inodes::new()));
        let stats = Arc::new(Stats::default());
        let store = DirStore::open(dir, 16 << 20, "test:21", "anonymous").expect("listing store");
        let link = if offline { Link::forced_offline(Arc::clone(&stats)) } else { Link::online(Arc::clone(&stats)) };
        let fallback = Fallback { listings: Some(Arc::new(store)), link, stats: Arc::clone(&stats) };
        let r: Arc<dyn Remote> = remote.clone();
        (Arc::new(DirCache::new(r, Arc::clone(&inodes), "/", Duration::from_secs(60), fallback)), inodes, stats)
    }

    fn asked(remote: &FakeRemote) -> u64 {
        remote.lists() + remote.stats()
    }

    #[test]
    fn a_saved_listing_answers_the_next_mount_at_once_and_is_refreshed_from_the_server() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let remote = Arc::new(FakeRemote::with_file("/a", vec![1]));
        let (first, _, _) = mount_with_store(&remote, cache_dir.path(), false);
        first.ensure_listing(ROOT).expect("listed");
        remote.put("/b", vec![2]);
        let (second, inodes, stats) = mount_with_store(&remote, cache_dir.path(), false);
        second.load_saved(ROOT);
        assert_eq!(names(&inodes, ROOT), ["a"], "the saved listing, before the server is asked");
        assert!(inodes.lock().listing(ROOT).is_some_and(|l| l.fetched.is_none()), "and it is stale");
        assert_eq!(stats.disk_listings.load(Ordering::Relaxed), 1);
        second.ensure_listing(ROOT).expect("refreshed");
        assert_eq!(names(&inodes, ROOT), ["a", "b"], "a prompt server's answer replaces it before ls sees it");
        assert_eq!(remote.lists(), 2);
    }

    #[test]
    fn offline_a_saved_listing_answers_without_the_server_and_an_unsaved_one_fails_with_enetunreach() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let remote = Arc::new(FakeRemote::default());
        remote.put("/d/f", vec![1]);
        remote.put("/e/g", vec![2]);
        let (online, inodes, _) = mount_with_store(&remote, cache_dir.path(), false);
        online.ensure_listing(ROOT).expect("listed");
        let d = inodes.lock().child(ROOT, "d").expect("d");
        online.ensure_listing(d).expect("listed");
        let before = asked(&remote);

        let (offline, inodes, stats) = mount_with_store(&remote, cache_dir.path(), true);
        offline.ensure_listing(ROOT).expect("the saved root listing");
        assert_eq!(names(&inodes, ROOT), ["d", "e"]);
        let (d, e) = {
            let t = inodes.lock();
            (t.child(ROOT, "d").expect("d"), t.child(ROOT, "e").expect("e"))
        };
        offline.ensure_listing(d).expect("the saved listing of d");
        assert_eq!(names(&inodes, d), ["f"]);
        let err = offline.ensure_listing(e).expect_err("e was never listed");
        assert_eq!(err.errno(), libc::ENETUNREACH);
        assert!(err.to_string().contains("the listing of \"/e\" is not cached"), "{err}");
        assert_eq!(asked(&remote), before, "an offline mount never asks the server");
        assert_eq!(stats.disk_listings.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn paths_found_by_stat_are_saved_and_found_offline_while_other_names_there_are_unknown() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let remote = Arc::new(FakeRemote::default());
        remote.put("/stage/req/x.fits", vec![1; 10]);
        remote.put("/stage/req/y.fits", vec![1; 20]);
        let (online, inodes, _) = mount_with_store(&remote, cache_dir.path(), false);
        online.ensure_stat(ROOT, "stage").expect("stat");
        let stage = inodes.lock().by_name(ROOT, "stage").expect("stage");
        online.ensure_stat(stage, "req").expect("stat");
        let req = inodes.lock().by_name(stage, "req").expect("req");
        online.ensure_stat(req, "x.fits").expect("stat");
        assert_eq!(remote.lists(), 0, "nothing was listed");

        let (offline, inodes, _) = mount_with_store(&remote, cache_dir.path(), true);
        offline.ensure_stat(ROOT, "stage").expect("saved");
        let stage = inodes.lock().by_name(ROOT, "stage").expect("stage");
        offline.ensure_stat(stage, "req").expect("saved");
        let req = inodes.lock().by_name(stage, "req").expect("req");
        offline.ensure_stat(req, "x.fits").expect("saved");
        let x = {
            let t = inodes.lock();
            t.by_name(req, "x.fits").and_then(|i| t.get(i).map(|n| n.size))
        };
        assert_eq!(x, Some(10));
        assert_eq!(offline.ensure_stat(req, "y.fits").err().map(|e| e.errno()), Some(libc::ENETUNREACH));
        assert_eq!(
            offline.ensure_listing(req).err().map(|e| e.errno()),
            Some(libc::ENETUNREACH),
            "names found one by one are not a listing"
        );
    }

    #[test]
    fn a_path_gone_from_the_server_is_dropped_from_its_saved_record() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let remote = Arc::new(FakeRemote::default());
        remote.put("/d/f", vec![1]);
        remote.put("/d/g", vec![1]);
        let (online, inodes, _) = mount_with_store(&remote, cache_dir.path(), false);
        online.ensure_stat(ROOT, "d").expect("stat");
        let d = inodes.lock().by_name(ROOT, "d").expect("d");
        online.ensure_stat(d, "f").expect("stat");
        online.ensure_stat(d, "g").expect("stat");
        remote.remove("/d/f");
        // Another mount, same cache: its stat of the saved (stale) f learns that f is gone.
        let (again, inodes, _) = mount_with_store(&remote, cache_dir.path(), false);
        again.ensure_stat(ROOT, "d").expect("stat");
        let d = inodes.lock().by_name(ROOT, "d").expect("d");
        again.ensure_stat(d, "f").expect("answered");
        let deadline = Instant::now() + Duration::from_secs(10);
        while inodes.lock().missing_since(d, "f").is_none() {
            assert!(Instant::now() < deadline, "the refresh never landed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let store = DirStore::open(cache_dir.path(), 16 << 20, "test:21", "anonymous").expect("store");
        let saved: Vec<String> = store.load("/d").expect("saved").entries.into_iter().map(|e| e.name).collect();
        assert_eq!(saved, ["g"]);
    }
}
