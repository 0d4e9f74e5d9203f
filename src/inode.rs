//! Inode numbers for remote paths, what the server last said about each, and the directory
//! listings and failed lookups behind them.
//!
//! A path keeps its inode number for the life of the mount, so the kernel's caches and `find`
//! see a stable tree. Nodes are never freed: a mount holds one small record per path it has
//! seen, which is what lets a cached directory answer `ls` while the server is down.
//!
//! A directory may also be filled from the listing kept on disk by an earlier mount
//! ([`Inodes::adopt`]): its nodes and listing are then *stale*, never confirmed by the server in
//! this mount, and are refreshed (or served as they are, offline) like expired ones.
//!
//! Attributes arrive two ways: from a listing of the parent, or from a `stat` of the one path
//! (a lookup in a directory nobody listed). The same file must keep one identity (its size and
//! time are the cache key), but a `LIST` line gives the time to the minute or the day while
//! `MDTM` gives the second: a coarser time that agrees with the finer one never replaces it.
//!
//! The table has no lock of its own; `fs.rs` keeps it behind one mutex.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::dirstore::SavedDir;
use crate::remote::{EntryKind, RemoteEntry};

pub const ROOT: u64 = 1;

/// Failed lookups remembered at most, so a program probing many missing names (a shell's
/// PATH search, Python's imports) cannot grow the table without bound.
const NEGATIVE_CAP: usize = 16_384;

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: u64,
    /// Path relative to the mount's remote root, without a leading `/` (root is "").
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Seconds `mtime` is precise to; see [`RemoteEntry::mtime_precision`].
    pub mtime_precision: u32,
    pub perm: Option<u32>,
    pub link_target: Option<String>,
    /// When the server last confirmed these attributes (a listing of the parent or a stat);
    /// `None`: read from disk, not confirmed by the server in this mount.
    pub checked: Option<Instant>,
}

#[derive(Debug)]
pub struct DirListing {
    /// Entries in server order: (name, inode). Shared with open directory handles.
    pub entries: Arc<[(Arc<str>, u64)]>,
    /// When the server sent it; `None`: read from disk, not confirmed in this mount.
    pub fetched: Option<Instant>,
}

#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    dirs: HashMap<u64, DirListing>,
    /// (parent, name) the server said does not exist, and when it said so.
    missing: HashMap<(u64, String), Instant>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        let root = Node {
            parent: ROOT,
            path: String::new(),
            kind: EntryKind::Dir,
            size: 0,
            // The server does not say when its root changed; the mount time is the honest guess.
            mtime: SystemTime::now(),
            mtime_precision: 1,
            perm: Some(0o755),
            link_target: None,
            checked: Some(Instant::now()),
        };
        Inodes {
            nodes: HashMap::from([(ROOT, root)]),
            by_path: HashMap::from([(String::new(), ROOT)]),
            dirs: HashMap::new(),
            missing: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn listing(&self, dir: u64) -> Option<&DirListing> {
        self.dirs.get(&dir)
    }

    fn child_path(&self, dir: u64, name: &str) -> Option<String> {
        let parent = &self.nodes.get(&dir)?.path;
        Some(if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") })
    }

    /// Records what the server said about `name` in `dir`; returns its inode number.
    fn upsert(&mut self, dir: u64, name: &str, e: RemoteEntry, now: Instant) -> Option<u64> {
        let path = self.child_path(dir, name)?;
        let ino = match self.by_path.get(&path) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_path.insert(path.clone(), ino);
                ino
            }
        };
        let (mtime, mtime_precision) = match self.nodes.get(&ino) {
            Some(old) => kept_time(old, &e),
            None => (e.mtime, e.mtime_precision),
        };
        let node = Node {
            parent: dir,
            path,
            kind: e.kind,
            size: e.size,
            mtime,
            mtime_precision,
            perm: e.perm,
            link_target: e.link_target,
            checked: Some(now),
        };
        self.nodes.insert(ino, node);
        Some(ino)
    }

    /// Replaces a directory's listing with what the server just said.
    pub fn store_listing(&mut self, dir: u64, entries: Vec<RemoteEntry>) {
        let now = Instant::now();
        let mut listed = Vec::with_capacity(entries.len());
        for e in entries {
            let name: Arc<str> = Arc::from(e.name.as_str());
            if let Some(ino) = self.upsert(dir, &name, e, now) {
                listed.push((name, ino));
            }
        }
        // The listing now answers every lookup in this directory, misses included.
        self.missing.retain(|(parent, _), _| *parent != dir);
        self.dirs.insert(dir, DirListing { entries: listed.into(), fetched: Some(now) });
    }

    /// Fills directory `dir` from what an earlier mount saved: every entry this mount knows
    /// nothing about yet becomes a stale node (a node the server described in this mount is
    /// fresher and stays), and a complete record becomes the directory's stale listing unless
    /// it has one already.
    pub fn adopt(&mut self, dir: u64, saved: SavedDir) {
        let mut listed = Vec::with_capacity(saved.entries.len());
        for e in saved.entries {
            let Some(path) = self.child_path(dir, &e.name) else { return };
            let name: Arc<str> = Arc::from(e.name.as_str());
            let known = self.by_path.get(&path).copied().filter(|ino| self.nodes.contains_key(ino));
            let ino = match known {
                Some(ino) => ino,
                None => {
                    let ino = self.next;
                    self.next += 1;
                    self.by_path.insert(path.clone(), ino);
                    let node = Node {
                        parent: dir,
                        path,
                        kind: e.kind,
                        size: e.size,
                        mtime: e.mtime,
                        mtime_precision: e.mtime_precision,
                        perm: e.perm,
                        link_target: e.link_target,
                        checked: None,
                    };
                    self.nodes.insert(ino, node);
                    ino
                }
            };
            listed.push((name, ino));
        }
        if saved.complete && !self.dirs.contains_key(&dir) {
            self.dirs.insert(dir, DirListing { entries: listed.into(), fetched: None });
        }
    }

    /// The listing of `dir` as it is saved to disk: the nodes as this mount holds them, so a
    /// time kept at a finer precision than the listing gave (see [`kept_time`]) is saved too,
    /// and with it the identity the block cache knows the file by.
    pub fn saved_listing(&self, dir: u64) -> Option<SavedDir> {
        let listing = self.dirs.get(&dir)?;
        let entries = listing.entries.iter().filter_map(|(name, ino)| self.saved_entry(*ino, name)).collect();
        Some(SavedDir { complete: true, entries })
    }

    /// Node `ino` as a saved entry named `name`.
    pub fn saved_entry(&self, ino: u64, name: &str) -> Option<RemoteEntry> {
        let n = self.nodes.get(&ino)?;
        Some(RemoteEntry {
            name: name.to_string(),
            kind: n.kind,
            size: n.size,
            mtime: n.mtime,
            mtime_precision: n.mtime_precision,
            perm: n.perm,
            link_target: n.link_target.clone(),
        })
    }

    /// Records the answer to a `stat` of `name` in `dir`: its inode, or `None` for a path the
    /// server does not have (remembered as missing for `ttl`).
    pub fn store_stat(&mut self, dir: u64, name: &str, entry: Option<RemoteEntry>, ttl: Duration) -> Option<u64> {
        let now = Instant::now();
        match entry {
            Some(e) => {
                self.missing.remove(&(dir, name.to_string()));
                self.upsert(dir, name, e, now)
            }
            None => {
                if self.missing.len() >= NEGATIVE_CAP {
                    // Expired entries first; if all are recent, forgetting them costs only
                    // one more question to the server each.
                    self.missing.retain(|_, at| now.duration_since(*at) < ttl);
                    if self.missing.len() >= NEGATIVE_CAP {
                        self.missing.clear();
                    }
                }
                self.missing.insert((dir, name.to_string()), now);
                None
            }
        }
    }

    /// When the server last said that `name` is not in `dir` (and has not shown it since).
    pub fn missing_since(&self, dir: u64, name: &str) -> Option<Instant> {
        self.missing.get(&(dir, name.to_string())).copied()
    }

    /// The node for `name` in `dir`, however its attributes arrived (listing or stat).
    pub fn by_name(&self, dir: u64, name: &str) -> Option<u64> {
        self.by_path.get(&self.child_path(dir, name)?).copied()
    }

    /// Finds `name` in a stored listing of `dir`.
    pub fn child(&self, dir: u64, name: &str) -> Option<u64> {
        let ino = self.by_name(dir, name)?;
        // Only a child the latest listing still shows exists; an entry that vanished from the
        // server keeps its number but is not found.
        let listing = self.dirs.get(&dir)?;
        listing.entries.iter().any(|(_, i)| *i == ino).then_some(ino)
    }
}

/// The time to keep when `new` describes the file `old` describes: `old`'s when it is finer
/// and `new`'s coarser time agrees with it (same kind and size, and `old`'s time falls in the
/// interval `new`'s time stands for), so the cache key does not flip between a `stat` and a
/// listing of an unchanged file; otherwise `new`'s.
fn kept_time(old: &Node, new: &RemoteEntry) -> (SystemTime, u32) {
    let coarser = new.mtime_precision > old.mtime_precision;
    let same_file = old.kind == new.kind && old.size == new.size;
    let window_end = new.mtime.checked_add(Duration::from_secs(u64::from(new.mtime_precision)));
    let agrees = old.mtime >= new.mtime && window_end.is_some_and(|end| old.mtime < end);
    if coarser && same_file && agrees { (old.mtime, old.mtime_precision) } else { (new.mtime, new.mtime_precision) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn entry(name: &str, kind: EntryKind, size: u64) -> RemoteEntry {
        RemoteEntry {
            name: name.into(),
            kind,
            size,
            mtime: SystemTime::UNIX_EPOCH,
            mtime_precision: 1,
            perm: None,
            link_target: None,
        }
    }

    fn timed(name: &str, size: u64, secs: u64, precision: u32) -> RemoteEntry {
        RemoteEntry {
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            mtime_precision: precision,
            ..entry(name, EntryKind::File, size)
        }
    }

    fn time_of(t: &Inodes, ino: u64) -> (u64, u32) {
        let n = t.get(ino).expect("node");
        (n.mtime.duration_since(SystemTime::UNIX_EPOCH).expect("after epoch").as_secs(), n.mtime_precision)
    }

    #[test]
    fn a_path_keeps_its_inode_across_relistings() {
        let mut t = Inodes::new();
        t.store_listing(ROOT, vec![entry("stage", EntryKind::Dir, 0), entry("a.fits", EntryKind::File, 10)]);
        let a = t.child(ROOT, "a.fits").expect("listed");
        t.store_listing(ROOT, vec![entry("a.fits", EntryKind::File, 20)]);
        assert_eq!(t.child(ROOT, "a.fits"), Some(a));
        assert_eq!(t.get(a).map(|n| n.size), Some(20), "attributes follow the new listing");
        assert_eq!(t.child(ROOT, "stage"), None, "entries gone from the server are not found");
    }

    #[test]
    fn nested_paths_are_built_from_the_parent() {
        let mut t = Inodes::new();
        t.store_listing(ROOT, vec![entry("stage", EntryKind::Dir, 0)]);
        let stage = t.child(ROOT, "stage").expect("listed");
        t.store_listing(stage, vec![entry(" lead space", EntryKind::File, 1)]);
        let f = t.child(stage, " lead space").expect("listed");
        assert_eq!(t.get(f).map(|n| n.path.as_str()), Some("stage/ lead space"));
    }

    #[test]
    fn a_stat_and_a_later_listing_of_the_same_path_share_one_inode() {
        let mut t = Inodes::new();
        let d = t.store_stat(ROOT, "d", Some(entry("d", EntryKind::Dir, 0)), TTL).expect("stored");
        let f = t.store_stat(d, "f", Some(entry("f", EntryKind::File, 5)), TTL).expect("stored");
        assert_eq!(t.get(f).map(|n| (n.parent, n.path.as_str())), Some((d, "d/f")));
        assert_eq!(t.child(d, "f"), None, "no listing of d yet");
        t.store_listing(d, vec![entry("f", EntryKind::File, 5)]);
        assert_eq!(t.child(d, "f"), Some(f));
    }

    #[test]
    fn a_minute_precise_listing_time_that_agrees_never_replaces_the_second_precise_one() {
        let mut t = Inodes::new();
        // MDTM: 12:34:56; the LIST line shows 12:34.
        let f = t.store_stat(ROOT, "f", Some(timed("f", 7, 45_296, 1)), TTL).expect("stored");
        t.store_listing(ROOT, vec![timed("f", 7, 45_240, 60)]);
        assert_eq!(time_of(&t, f), (45_296, 1));
        // A year-only line (day precision) of the same day agrees too.
        t.store_listing(ROOT, vec![timed("f", 7, 0, 86_400)]);
        assert_eq!(time_of(&t, f), (45_296, 1));
    }

    #[test]
    fn a_coarser_time_that_disagrees_or_a_new_size_replaces_the_finer_one() {
        let mut t = Inodes::new();
        let f = t.store_stat(ROOT, "f", Some(timed("f", 7, 45_296, 1)), TTL).expect("stored");
        t.store_listing(ROOT, vec![timed("f", 7, 45_300, 60)]);
        assert_eq!(time_of(&t, f), (45_300, 60), "another minute: the file changed");
        let g = t.store_stat(ROOT, "g", Some(timed("g", 7, 45_296, 1)), TTL).expect("stored");
        t.store_listing(ROOT, vec![timed("f", 7, 45_300, 60), timed("g", 8, 45_240, 60)]);
        assert_eq!(time_of(&t, g), (45_240, 60), "another size: the file changed");
        let h = t.store_stat(ROOT, "h", Some(timed("h", 1, 100, 60)), TTL).expect("stored");
        t.store_stat(ROOT, "h", Some(timed("h", 1, 130, 1)), TTL);
        assert_eq!(time_of(&t, h), (130, 1), "a finer time always replaces a coarser one");
    }

    #[test]
    fn a_missing_path_is_remembered_until_it_appears() {
        let mut t = Inodes::new();
        assert_eq!(t.store_stat(ROOT, "gone", None, TTL), None);
        assert!(t.missing_since(ROOT, "gone").is_some());
        assert!(t.missing_since(ROOT, "other").is_none());
        t.store_stat(ROOT, "gone", Some(entry("gone", EntryKind::File, 1)), TTL);
        assert!(t.missing_since(ROOT, "gone").is_none(), "found since");
    }

    #[test]
    fn an_adopted_complete_listing_is_stale_and_answers_lookups() {
        let mut t = Inodes::new();
        let saved =
            SavedDir { complete: true, entries: vec![entry("sub", EntryKind::Dir, 0), timed("a.fits", 7, 45_296, 1)] };
        t.adopt(ROOT, saved);
        let listing = t.listing(ROOT).expect("a listing");
        assert!(listing.fetched.is_none(), "never confirmed by the server in this mount");
        let a = t.child(ROOT, "a.fits").expect("listed");
        assert_eq!(time_of(&t, a), (45_296, 1));
        assert!(t.get(a).is_some_and(|n| n.checked.is_none()));
        let sub = t.child(ROOT, "sub").expect("listed");
        assert_eq!(t.get(sub).map(|n| (n.kind, n.path.as_str())), Some((EntryKind::Dir, "sub")));
        assert_eq!(t.child(ROOT, "b.fits"), None, "a complete listing answers misses too");
    }

    #[test]
    fn an_adopted_partial_record_gives_nodes_but_no_listing_and_never_replaces_fresher_ones() {
        let mut t = Inodes::new();
        let fresh = t.store_stat(ROOT, "req1", Some(entry("req1", EntryKind::Dir, 0)), TTL).expect("stored");
        let saved = SavedDir {
            complete: false,
            entries: vec![entry("req1", EntryKind::File, 99), entry("req2", EntryKind::Dir, 0)],
        };
        t.adopt(ROOT, saved);
        assert!(t.listing(ROOT).is_none(), "names it lacks are unknown, not missing");
        assert_eq!(t.get(fresh).map(|n| (n.kind, n.checked.is_some())), Some((EntryKind::Dir, true)));
        let req2 = t.by_name(ROOT, "req2").expect("adopted");
        assert!(t.get(req2).is_some_and(|n| n.checked.is_none()));
    }

    #[test]
    fn the_saved_form_of_a_listing_keeps_the_finer_time_of_an_earlier_stat() {
        let mut t = Inodes::new();
        t.store_stat(ROOT, "f", Some(timed("f", 7, 45_296, 1)), TTL);
        t.store_listing(ROOT, vec![timed("f", 7, 45_240, 60), entry("d", EntryKind::Dir, 0)]);
        let saved = t.saved_listing(ROOT).expect("listed");
        assert!(saved.complete);
        let f = saved.entries.iter().find(|e| e.name == "f").expect("f");
        assert_eq!((f.mtime, f.mtime_precision), (SystemTime::UNIX_EPOCH + Duration::from_secs(45_296), 1));
        let mut again = Inodes::new();
        again.adopt(ROOT, saved);
        let f = again.child(ROOT, "f").expect("f");
        assert_eq!(time_of(&again, f), (45_296, 1), "the same identity in the next mount");
    }

    #[test]
    fn remembered_misses_stay_bounded() {
        let mut t = Inodes::new();
        for i in 0..(NEGATIVE_CAP + 10) {
            t.store_stat(ROOT, &format!("m{i}"), None, TTL);
        }
        assert!(t.missing.len() <= NEGATIVE_CAP);
        assert!(t.missing_since(ROOT, &format!("m{}", NEGATIVE_CAP + 9)).is_some());
    }
}
