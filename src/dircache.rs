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
//! Threads: FUSE workers call [`DirCache::ensure_listing`] and [`DirCache::ensure_stat`];
//! refreshes run on short-lived `mastfs-meta` threads, at most one per directory or path.
//! Locks: `fetches`, the inode table (owned by `fs.rs`) and each `Fetch::result` are only
//! ever held one at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{FsError, RemoteError};
use crate::inode::Inodes;
use crate::remote::{EntryKind, Remote};

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
    pub fn new(remote: Arc<dyn Remote>, inodes: Arc<Mutex<Inodes>>, root: &str, ttl: Duration) -> DirCache {
        DirCache {
            remote,
            inodes,
            root: root.trim_end_matches('/').to_string(),
            ttl,
            server_silent: AtomicBool::new(false),
            fetches: Mutex::new(HashMap::new()),
        }
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
        let (path, cached) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(dir).ok_or(FsError::NotFound)?;
            if node.kind != EntryKind::Dir {
                return Err(FsError::NotDir);
            }
            match inodes.listing(dir) {
                Some(l) if l.fetched.elapsed() < self.ttl => return Ok(()),
                listing => (self.remote_path(&node.path), listing.is_some()),
            }
        };
        self.fetch(Key::Listing(dir), path, cached)
    }

    /// Makes sure the inode table has an answer about `name` in directory `dir` (a node, or a
    /// remembered miss): a fresh one, or an expired one while its refresh runs.
    pub fn ensure_stat(self: &Arc<Self>, dir: u64, name: &str) -> Result<(), FsError> {
        let (path, cached) = {
            let inodes = self.inodes.lock();
            let parent = inodes.get(dir).ok_or(FsError::NotFound)?;
            let rel = if parent.path.is_empty() { name.to_string() } else { format!("{}/{name}", parent.path) };
            let checked = match inodes.missing_since(dir, name) {
                Some(at) => Some(at),
                None => inodes.by_name(dir, name).and_then(|ino| inodes.get(ino)).map(|n| n.checked),
            };
            match checked {
                Some(at) if at.elapsed() < self.ttl => return Ok(()),
                checked => (self.remote_path(&rel), checked.is_some()),
            }
        };
        self.fetch(Key::Stat(dir, name.to_string()), path, cached)
    }

    fn fetch(self: &Arc<Self>, key: Key, path: String, cached: bool) -> Result<(), FsError> {
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
            Key::Listing(dir) => self.remote.list(path).map(|entries| self.inodes.lock().store_listing(*dir, entries)),
            Key::Stat(dir, name) => self.remote.stat(path).map(|entry| {
                self.inodes.lock().store_stat(*dir, name, entry, self.ttl);
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
        (Arc::new(DirCache::new(r, Arc::clone(&inodes), "/", ttl)), inodes)
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
        let at = |root: &str| DirCache::new(Arc::clone(&r), Arc::new(Mutex::new(Inodes::new())), root, Duration::ZERO);
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
        remote.faults().stall_lists.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            dirs.ensure_listing(ROOT).expect("answered from the cached listing");
        }
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
        remote.faults().stall_lists.store(true, Ordering::SeqCst);
        for name in ["a", "gone", "a", "gone"] {
            dirs.ensure_stat(ROOT, name).expect("answered from the earlier stat");
        }
        assert_eq!(remote.stats(), 4, "two first stats, one refresh of each");
        let t = inodes.lock();
        assert!(t.by_name(ROOT, "a").is_some() && t.missing_since(ROOT, "gone").is_some());
        drop(t);
        remote.faults().stall_lists.store(false, Ordering::SeqCst);
    }
}
