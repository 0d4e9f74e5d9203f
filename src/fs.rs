//! The file system's behaviour, independent of FUSE: lookups, listings, open files, reads.
//!
//! `fuse.rs` only translates between the kernel and these methods, so everything here runs in
//! unit tests against an in-memory remote.
//!
//! Threads: the FUSE workers call every method here, concurrently; `dircache.rs` adds its
//! background listing threads, which only touch the inode table. Locks: the inode table, the
//! per-directory `stat` counts, and the tables of open files, open directories and stats
//! texts are each taken alone, never while holding another (a directory handle's entries
//! lock is taken with nothing else held too).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::dircache::{DirCache, Fallback};
use crate::error::FsError;
use crate::inode::{Inodes, Node, ROOT};
use crate::read::{CacheState, Data, FileId, OpenFile, ReadPath};
use crate::remote::{EntryKind, NAME_MAX, Remote};
use crate::stats::Stats;

/// A read-only view of a file that lives only in the mount: the live counters.
pub const STATS_NAME: &str = ".mastfs-stats";
pub const STATS_INO: u64 = u64::MAX - 1;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Remote directory shown at the mount point, absolute (`/` for the server's root).
    pub root: String,
    /// How long listings and attributes are trusted before the server is asked again.
    pub ttl: Duration,
    /// Cache identity: `host:port` and user, so two servers or users never share blocks.
    pub server: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// Attributes as the kernel needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Arc<str>,
    pub attr: Attr,
}

/// Lookups by `stat` in one directory without a listing, within one TTL, after which the
/// directory is listed instead: a deep path costs one exchange per level, while a program
/// opening many files of one directory by name pays for one listing, not one stat each.
pub const LIST_AFTER_STATS: u32 = 8;

/// What `statfs` (and so `df`) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// FTP cannot tell how large an archive is or how much it may still hold. A volume of 0
/// blocks is hidden by `df` and makes tools that compute a fill level divide by zero, and
/// one reported full trips disk-full monitoring; so, like rclone mount for backends without
/// usage figures (and sshfs without the statvfs extension), report a large volume that is
/// all free: 1 PiB in 4 KiB blocks, 10^9 inodes. Nothing can be written anyway: the mount
/// is `ro`, which statvfs's `f_flag` reports as `ST_RDONLY`, and writes fail with `EROFS`.
/// Names are at most `NAME_MAX` bytes (longer ones are never listed).
pub const STATFS: Statfs = Statfs {
    blocks: (1 << 50) / 4096,
    bfree: (1 << 50) / 4096,
    bavail: (1 << 50) / 4096,
    files: 1_000_000_000,
    ffree: 1_000_000_000,
    bsize: 4096,
    namelen: NAME_MAX as u32,
    frsize: 4096,
};

pub struct Opened {
    pub fh: u64,
    /// The kernel may keep pages cached from an earlier open: the file is the same version.
    pub keep_cache: bool,
    /// Reads bypass the page cache and the file's size: for the stats file, whose text
    /// changes length between a `stat` and a `read`.
    pub direct_io: bool,
}

/// One open directory: the entries it shows, fixed at `opendir` (and at a rewind), so that
/// paging through it neither repeats nor skips an entry while its listing is refreshed.
struct DirHandle {
    ino: u64,
    entries: Mutex<Arc<[DirEntry]>>,
    /// A read past the first page happened: a later read at offset 0 is a `rewinddir`,
    /// which POSIX says shows the directory as it is now.
    past_start: AtomicBool,
}

pub struct MastFs {
    store: Arc<ReadPath>,
    config: FsConfig,
    stats: Arc<Stats>,
    inodes: Arc<Mutex<Inodes>>,
    dirs: Arc<DirCache>,
    /// Lookups answered by `stat` per directory without a listing: (since, count).
    stat_lookups: Mutex<HashMap<u64, (Instant, u32)>>,
    dir_handles: Mutex<HashMap<u64, Arc<DirHandle>>>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// The stats file's text per open handle, rendered once at `open`: every read of one
    /// handle sees one consistent text, whole, whatever size an earlier `stat` saw.
    stats_texts: Mutex<HashMap<u64, Arc<[u8]>>>,
    /// Versions (size, mtime) last opened per inode, to decide on keeping the page cache.
    opened_versions: Mutex<HashMap<u64, (u64, SystemTime)>>,
    next_fh: AtomicU64,
}

impl MastFs {
    /// `fallback`: the listings saved on disk and whether the server may be asked (offline).
    pub fn new(
        remote: Arc<dyn Remote>,
        store: Arc<ReadPath>,
        config: FsConfig,
        stats: Arc<Stats>,
        fallback: Fallback,
    ) -> MastFs {
        let inodes = Arc::new(Mutex::new(Inodes::new()));
        let dirs =
            Arc::new(DirCache::new(Arc::clone(&remote), Arc::clone(&inodes), &config.root, config.ttl, fallback));
        MastFs {
            store,
            config,
            stats,
            inodes,
            dirs,
            stat_lookups: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            stats_texts: Mutex::new(HashMap::new()),
            opened_versions: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    pub fn uid(&self) -> u32 {
        self.config.uid
    }

    pub fn gid(&self) -> u32 {
        self.config.gid
    }

    pub fn store(&self) -> &Arc<ReadPath> {
        &self.store
    }

    fn remote_path(&self, rel: &str) -> String {
        self.dirs.remote_path(rel)
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        let default_perm = match node.kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink => 0o777,
            EntryKind::File => 0o644,
        };
        // Read-only mount: whatever the server says, nobody may write.
        let perm = (node.perm.unwrap_or(default_perm) & 0o7555) as u16;
        Attr { ino, kind: node.kind, size: node.size, mtime: node.mtime, perm }
    }

    fn stats_attr(&self) -> Attr {
        Attr {
            ino: STATS_INO,
            kind: EntryKind::File,
            size: self.stats.render().len() as u64,
            mtime: SystemTime::now(),
            perm: 0o444,
        }
    }

    /// Finds `name` in directory `parent`. A directory with a listing answers from it; in one
    /// without, only the one path is asked about (`Remote::stat`), so resolving a deep path
    /// lists none of its ancestors, until lookups there are many enough that one listing is
    /// cheaper ([`LIST_AFTER_STATS`]).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        // Some kernels pass names up to 1024 or 4095 bytes; listings never show one that long.
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| FsError::NotFound)?;
        if parent == ROOT && name == STATS_NAME {
            return Ok(self.stats_attr());
        }
        // What an earlier mount saved about `parent` decides between its listing and a stat.
        self.dirs.load_saved(parent);
        let listed = {
            let inodes = self.inodes.lock();
            match inodes.get(parent) {
                None => return Err(FsError::NotFound),
                Some(n) if n.kind != EntryKind::Dir => return Err(FsError::NotDir),
                Some(_) => inodes.listing(parent).is_some(),
            }
        };
        if !listed && self.many_stats_in(parent) {
            // A directory may refuse a listing and still serve lookups (e.g. one holding
            // every user's request directories): then stat on, and try listing again later.
            if let Err(e) = self.dirs.ensure_listing(parent) {
                log::info!("listing directory {parent} instead of looking up in it failed ({e}); using stat");
                self.stat_lookups.lock().remove(&parent);
            }
        }
        let listed = listed || self.inodes.lock().listing(parent).is_some();
        if listed {
            self.dirs.ensure_listing(parent)?;
            let inodes = self.inodes.lock();
            let ino = inodes.child(parent, name).ok_or(FsError::NotFound)?;
            let node = inodes.get(ino).ok_or(FsError::NotFound)?;
            return Ok(self.attr_of(ino, node));
        }
        self.lookup_by_stat(parent, name)
    }

    /// Counts a lookup by `stat` in `parent`; true once there were [`LIST_AFTER_STATS`]
    /// within one TTL.
    fn many_stats_in(&self, parent: u64) -> bool {
        let mut counts = self.stat_lookups.lock();
        let (since, count) = counts.entry(parent).or_insert((Instant::now(), 0));
        if since.elapsed() >= self.config.ttl {
            (*since, *count) = (Instant::now(), 0);
        }
        *count += 1;
        *count > LIST_AFTER_STATS
    }

    fn lookup_by_stat(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.dirs.ensure_stat(parent, name)?;
        let inodes = self.inodes.lock();
        if inodes.missing_since(parent, name).is_some() {
            return Err(FsError::NotFound);
        }
        let ino = inodes.by_name(parent, name).ok_or(FsError::NotFound)?;
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, node))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == STATS_INO {
            return Ok(self.stats_attr());
        }
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, node))
    }

    /// The entries of directory `ino` as they are now, `.` and `..` first.
    fn dir_entries(&self, ino: u64) -> Result<Arc<[DirEntry]>, FsError> {
        self.dirs.ensure_listing(ino)?;
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        let listing = inodes.listing(ino).map(|l| Arc::clone(&l.entries)).unwrap_or_else(|| Arc::new([]));
        let mut out = Vec::with_capacity(listing.len() + 2);
        out.push(DirEntry { name: Arc::from("."), attr: self.attr_of(ino, node) });
        if let Some(p) = inodes.get(node.parent) {
            out.push(DirEntry { name: Arc::from(".."), attr: self.attr_of(node.parent, p) });
        }
        for (name, child) in listing.iter() {
            if let Some(n) = inodes.get(*child) {
                out.push(DirEntry { name: Arc::clone(name), attr: self.attr_of(*child, n) });
            }
        }
        Ok(out.into())
    }

    /// Opens directory `ino` for reading: its entries as they are now, kept until `releasedir`.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let entries = self.dir_entries(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = DirHandle { ino, entries: Mutex::new(entries), past_start: AtomicBool::new(false) };
        self.dir_handles.lock().insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// Hands `add` the entries of open directory `fh` from position `offset` on, each with the
    /// offset of the entry after it, until `add` says the reply is full.
    pub fn readdir(&self, fh: u64, offset: u64, mut add: impl FnMut(&DirEntry, u64) -> bool) -> Result<(), FsError> {
        let handle = self.dir_handles.lock().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        if offset == 0 && handle.past_start.swap(false, Ordering::Relaxed) {
            let now = self.dir_entries(handle.ino)?;
            *handle.entries.lock() = now;
        } else if offset > 0 {
            handle.past_start.store(true, Ordering::Relaxed);
        }
        let entries = Arc::clone(&handle.entries.lock());
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().remove(&fh);
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        match (&node.kind, &node.link_target) {
            (EntryKind::Symlink, Some(t)) => Ok(t.as_bytes().to_vec()),
            // The listing did not say where it points (MLSD does not); nothing to show.
            (EntryKind::Symlink, None) => Err(FsError::NotFound),
            _ => Err(FsError::NotSymlink),
        }
    }

    fn open_stats(&self) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.stats_texts.lock().insert(fh, self.stats.render().into_bytes().into());
        Opened { fh, keep_cache: false, direct_io: true }
    }

    fn read_stats(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let text = self.stats_texts.lock().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        Ok(text[start..end].to_vec())
    }

    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        if ino == STATS_INO {
            return Ok(self.open_stats());
        }
        let file = {
            let inodes = self.inodes.lock();
            let node = inodes.get(ino).ok_or(FsError::NotFound)?;
            match node.kind {
                EntryKind::Dir => return Err(FsError::IsDir),
                EntryKind::Symlink => return Err(FsError::NotFound),
                EntryKind::File => {}
            }
            (self.remote_path(&node.path), node.size, node.mtime)
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let (path, size, mtime) = file;
        let secs = match mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let id = FileId { server: self.config.server.clone(), user: self.config.user.clone(), path, size, mtime: secs };
        let keep_cache = self.opened_versions.lock().insert(ino, (size, mtime)) == Some((size, mtime));
        self.handles.lock().insert(fh, self.store.open(id));
        Ok(Opened { fh, keep_cache, direct_io: false })
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Data, FsError> {
        if ino == STATS_INO {
            return self.read_stats(fh, offset, size).map(Data::Owned);
        }
        let handle = self.handles.lock().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        self.store.read(&handle, offset, size).map_err(|e| {
            Stats::add(&self.stats.read_errors, 1);
            log::warn!("read of {} at {offset} failed: {e}", handle.path());
            FsError::from(e)
        })
    }

    /// What the disk cache holds of the file open as `fh`; `keep` marks it as just used.
    pub fn cache_state(&self, fh: u64, keep: bool) -> Result<CacheState, FsError> {
        let handle = self.handles.lock().get(&fh).cloned().ok_or(FsError::NoSuchIoctl)?;
        Ok(self.store.cache_state(&handle, keep))
    }

    pub fn release(&self, fh: u64) {
        self.stats_texts.lock().remove(&fh);
        if let Some(handle) = self.handles.lock().remove(&fh) {
            self.store.release(&handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeRemote, pattern};
    use crate::read::ReadConfig;

    fn mount(remote: &Arc<FakeRemote>, ttl: Duration) -> MastFs {
        let stats = Arc::new(Stats::default());
        let r: Arc<dyn Remote> = remote.clone();
        let store = ReadPath::new(Arc::clone(&r), None, ReadConfig::default(), Arc::clone(&stats));
        let config =
            FsConfig { root: "/".into(), ttl, server: "test:21".into(), user: "anonymous".into(), uid: 0, gid: 0 };
        let fallback = Fallback::none(Arc::clone(&stats));
        MastFs::new(r, store, config, stats, fallback)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// `count` entries of open directory `fh` from `offset`, with the offset after each.
    fn page(fs: &MastFs, fh: u64, offset: u64, count: usize) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        fs.readdir(fh, offset, |e, next| {
            out.push((e.name.to_string(), next));
            out.len() == count
        })
        .expect("readdir");
        out
    }

    /// Every entry of directory `ino`, as `ls` would read them.
    fn ls(fs: &MastFs, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let fh = fs.opendir(ino)?;
        let mut out = Vec::new();
        fs.readdir(fh, 0, |e, _| {
            out.push(e.clone());
            false
        })?;
        fs.releasedir(fh);
        Ok(out)
    }

    fn lists(remote: &FakeRemote) -> u64 {
        remote.lists()
    }

    fn stats(remote: &FakeRemote) -> u64 {
        remote.stats()
    }

    #[test]
    fn a_burst_of_lookups_in_a_listed_directory_costs_one_listing() {
        let remote = Arc::new(FakeRemote::default());
        for i in 0..50 {
            remote.put(&format!("/stage/f{i}"), vec![0; i]);
        }
        let fs = mount(&remote, Duration::from_secs(60));
        let stage = fs.lookup(ROOT, name("stage")).expect("stage").ino;
        ls(&fs, stage).expect("ls");
        for i in 0..50 {
            assert_eq!(fs.lookup(stage, name(&format!("f{i}"))).expect("file").size, i as u64);
        }
        assert_eq!(lists(&remote), 1, "stage once; the root is not listed");
        assert_eq!(stats(&remote), 1, "stage itself");
    }

    #[test]
    fn a_deep_path_is_resolved_by_one_stat_per_level_without_listing_any_ancestor() {
        let remote = Arc::new(FakeRemote::with_file("/stage/anonymous/req/deep/x.fits", vec![7; 9]));
        let fs = mount(&remote, Duration::from_secs(60));
        let mut ino = ROOT;
        for part in ["stage", "anonymous", "req", "deep"] {
            ino = fs.lookup(ino, name(part)).expect(part).ino;
        }
        let x = fs.lookup(ino, name("x.fits")).expect("x.fits");
        assert_eq!((x.kind, x.size), (EntryKind::File, 9));
        assert_eq!((lists(&remote), stats(&remote)), (0, 5));
        fs.lookup(ino, name("x.fits")).expect("again");
        assert_eq!(stats(&remote), 5, "answered from what the stat said, within the TTL");
    }

    #[test]
    fn a_missing_name_in_an_unlisted_directory_is_remembered_for_the_ttl() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(fs.lookup(ROOT, name("nope")).err().map(|e| e.errno()), Some(libc::ENOENT));
        }
        assert_eq!(stats(&remote), 1, "asked once");
        let expiring = mount(&remote, Duration::ZERO);
        for _ in 0..2 {
            assert!(expiring.lookup(ROOT, name("nope")).is_err());
        }
        assert_eq!(stats(&remote), 3, "asked again once the TTL passed");
    }

    #[test]
    fn many_lookups_in_one_unlisted_directory_turn_into_one_listing() {
        let remote = Arc::new(FakeRemote::default());
        for i in 0..100 {
            remote.put(&format!("/d/f{i}"), vec![0; i]);
        }
        let fs = mount(&remote, Duration::from_secs(60));
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        for i in 0..100 {
            assert_eq!(fs.lookup(d, name(&format!("f{i}"))).expect("file").size, i as u64);
        }
        assert_eq!(stats(&remote), 1 + u64::from(LIST_AFTER_STATS));
        assert_eq!(lists(&remote), 1);
    }

    #[test]
    fn lookups_go_on_by_stat_in_a_directory_that_refuses_to_be_listed() {
        let remote = Arc::new(FakeRemote::default());
        for i in 0..20 {
            remote.put(&format!("/stage/anonymous/req{i}/f"), vec![0; i]);
        }
        remote.refuse_list("/stage/anonymous");
        let fs = mount(&remote, Duration::from_secs(60));
        let stage = fs.lookup(ROOT, name("stage")).expect("stage").ino;
        let anon = fs.lookup(stage, name("anonymous")).expect("anonymous").ino;
        for i in 0..20 {
            let req = fs.lookup(anon, name(&format!("req{i}"))).expect("request directory").ino;
            assert_eq!(fs.lookup(req, name("f")).expect("file").size, i as u64);
        }
        assert_eq!(ls(&fs, anon).err().map(|e| e.errno()), Some(libc::EACCES), "a refused listing");
    }

    #[test]
    fn a_file_found_by_stat_keeps_its_inode_when_its_directory_is_listed() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2]));
        let fs = mount(&remote, Duration::from_secs(60));
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        let by_stat = fs.lookup(d, name("f")).expect("f");
        let listed = ls(&fs, d).expect("ls");
        let f = listed.iter().find(|e| &*e.name == "f").expect("listed");
        assert_eq!(f.attr, by_stat);
    }

    #[test]
    fn when_the_server_does_not_answer_a_stat_an_earlier_answer_is_served() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2]));
        let fs = mount(&remote, Duration::ZERO);
        let d = fs.lookup(ROOT, name("d")).expect("d");
        remote.faults().fail_lists.store(true, Ordering::SeqCst);
        assert_eq!(fs.lookup(ROOT, name("d")).expect("still answers"), d);
        assert_eq!(fs.lookup(d.ino, name("f")).err().map(|e| e.errno()), Some(libc::EIO), "never seen: an error");
    }

    #[test]
    fn readdir_lists_dot_entries_then_the_server_entries_with_attributes() {
        let remote = Arc::new(FakeRemote::default());
        remote.put("/d/a", vec![1; 10]);
        remote.put("/d/sub/b", vec![]);
        let fs = mount(&remote, Duration::from_secs(60));
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        let entries = ls(&fs, d).expect("readdir");
        let mut names: Vec<_> = entries.iter().map(|e| &*e.name).collect();
        names[2..].sort();
        assert_eq!(names, [".", "..", "a", "sub"]);
        let a = entries.iter().find(|e| &*e.name == "a").expect("a");
        assert_eq!((a.attr.kind, a.attr.size), (EntryKind::File, 10));
    }

    #[test]
    fn paging_through_an_open_directory_neither_repeats_nor_skips_while_its_listing_changes() {
        let remote = Arc::new(FakeRemote::default());
        for i in 0..100 {
            remote.put(&format!("/d/f{i:03}"), vec![]);
        }
        let fs = mount(&remote, Duration::ZERO);
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        let fh = fs.opendir(d).expect("opendir");
        let mut seen = page(&fs, fh, 0, 30);
        // The server drops half the files and adds others; a lookup refreshes the listing.
        for i in (0..100).step_by(2) {
            remote.remove(&format!("/d/f{i:03}"));
            remote.put(&format!("/d/g{i:03}"), vec![]);
        }
        fs.lookup(d, name("g000")).expect("the refreshed listing has the new file");
        let lists_before = lists(&remote);
        loop {
            let next = seen.last().map_or(0, |(_, n)| *n);
            let more = page(&fs, fh, next, 30);
            if more.is_empty() {
                break;
            }
            seen.extend(more);
        }
        assert_eq!(lists(&remote), lists_before, "paging reads the handle's entries, not the server");
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let mut want = vec![".", ".."];
        let files: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
        want.extend(files.iter().map(String::as_str));
        let mut sorted = names.clone();
        sorted[2..].sort();
        assert_eq!(sorted, want, "exactly the entries of the directory when it was opened");
        fs.releasedir(fh);
        assert_eq!(fs.readdir(fh, 0, |_, _| false).err().map(|e| e.errno()), Some(libc::EBADF));
    }

    #[test]
    fn a_rewind_shows_the_directory_as_it_is_now() {
        let remote = Arc::new(FakeRemote::with_file("/d/a", vec![]));
        let fs = mount(&remote, Duration::ZERO);
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        let fh = fs.opendir(d).expect("opendir");
        let first = page(&fs, fh, 0, 100);
        assert!(page(&fs, fh, first.len() as u64, 100).is_empty(), "end of the directory");
        remote.put("/d/b", vec![]);
        let names: Vec<String> = page(&fs, fh, 0, 100).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"b".to_string()), "{names:?}");
    }

    #[test]
    fn a_lookup_of_a_name_longer_than_name_max_is_enametoolong_without_asking_the_server() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        let err = fs.lookup(ROOT, name(&"n".repeat(256))).err().map(|e| e.errno());
        assert_eq!(err, Some(libc::ENAMETOOLONG));
        assert_eq!(remote.lists(), 0);
    }

    #[test]
    fn writes_are_refused_as_read_only() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        let f = fs.lookup(ROOT, name("f")).expect("f").ino;
        assert_eq!(fs.open(f, true).err().map(|e| e.errno()), Some(libc::EROFS));
    }

    #[test]
    fn permissions_never_include_write_bits() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        let a = fs.lookup(ROOT, name("f")).expect("f");
        assert_eq!(a.perm & 0o222, 0);
    }

    #[test]
    fn missing_names_are_enoent_and_files_are_not_directories() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        assert_eq!(fs.lookup(ROOT, name("nope")).err().map(|e| e.errno()), Some(libc::ENOENT));
        let f = fs.lookup(ROOT, name("f")).expect("f").ino;
        assert_eq!(fs.opendir(f).err().map(|e| e.errno()), Some(libc::ENOTDIR));
    }

    #[test]
    fn reads_through_a_handle_return_the_files_bytes() {
        let data = pattern(3 << 20, 4);
        let remote = Arc::new(FakeRemote::with_file("/f", data.clone()));
        let fs = mount(&remote, Duration::from_secs(60));
        let f = fs.lookup(ROOT, name("f")).expect("f").ino;
        let h = fs.open(f, false).expect("open");
        assert_eq!(&fs.read(f, h.fh, 1_000_000, 70_000).expect("read")[..], &data[1_000_000..1_070_000]);
        fs.release(h.fh);
        assert_eq!(fs.read(f, h.fh, 0, 1).err().map(|e| e.errno()), Some(libc::EBADF));
    }

    #[test]
    fn the_stats_file_is_readable_but_not_listed() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        let a = fs.lookup(ROOT, name(STATS_NAME)).expect("stats");
        let h = fs.open(a.ino, false).expect("open");
        let text = String::from_utf8(fs.read(a.ino, h.fh, 0, 4096).expect("read").to_vec()).expect("utf8");
        assert!(text.contains("net_bytes "));
        assert!(ls(&fs, ROOT).expect("ls").iter().all(|e| &*e.name != STATS_NAME));
    }

    #[test]
    fn a_stats_handle_serves_the_whole_text_of_its_open_in_pieces_while_counters_grow() {
        let remote = Arc::new(FakeRemote::with_file("/f", vec![1]));
        let fs = mount(&remote, Duration::from_secs(60));
        let a = fs.lookup(ROOT, name(STATS_NAME)).expect("stats");
        let h = fs.open(a.ino, false).expect("open");
        assert!(h.direct_io, "reads must not stop at a size the kernel saw earlier");
        let at_open = fs.stats.render();
        Stats::add(&fs.stats.net_bytes, 123_456_789_000);
        let mut text = Vec::new();
        while let Ok(piece) = fs.read(a.ino, h.fh, text.len() as u64, 7) {
            if piece.is_empty() {
                break;
            }
            text.extend_from_slice(&piece);
        }
        assert_eq!(String::from_utf8(text).expect("utf-8"), at_open, "one consistent text, whole");
        let again = fs.open(a.ino, false).expect("open again");
        let fresh = fs.read(a.ino, again.fh, 0, 1 << 16).expect("read").to_vec();
        assert!(String::from_utf8(fresh).expect("utf-8").contains("net_bytes 123456789000\n"));
        fs.release(h.fh);
        assert_eq!(fs.read(a.ino, h.fh, 0, 1).err().map(|e| e.errno()), Some(libc::EBADF));
    }

    #[test]
    fn an_expired_listing_is_still_served_when_the_server_is_unreachable() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2, 3]));
        let fs = mount(&remote, Duration::ZERO);
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        assert_eq!(ls(&fs, d).expect("ls").len(), 3);
        remote.faults().fail_lists.store(true, Ordering::SeqCst);
        assert_eq!(ls(&fs, d).expect("still answers").len(), 3);
        assert_eq!(fs.lookup(d, name("f")).expect("still found").size, 3);
        let fresh = mount(&remote, Duration::ZERO);
        assert_eq!(
            fresh.lookup(ROOT, name("d")).err().map(|e| e.errno()),
            Some(libc::EIO),
            "nothing cached: an error, never an empty directory"
        );
    }

    /// A mount of `remote` whose blocks and listings are cached in `dir`, online or offline.
    fn mount_cached(remote: &Arc<FakeRemote>, dir: &std::path::Path, offline: bool) -> MastFs {
        let stats = Arc::new(Stats::default());
        let r: Arc<dyn Remote> = remote.clone();
        let link = if offline {
            crate::online::Link::forced_offline(Arc::clone(&stats))
        } else {
            crate::online::Link::online(Arc::clone(&stats))
        };
        let r: Arc<dyn Remote> = Arc::new(crate::online::Gated::new(r, Arc::clone(&link)));
        let disk = crate::read::BlockCache::open(dir, 64 << 20).expect("block cache");
        let store = ReadPath::new(Arc::clone(&r), Some(disk), ReadConfig::default(), Arc::clone(&stats));
        let listings = crate::dirstore::DirStore::open(dir, 4 << 20, "test:21", "anonymous").expect("listings");
        let config = FsConfig {
            root: "/".into(),
            ttl: Duration::from_secs(60),
            server: "test:21".into(),
            user: "anonymous".into(),
            uid: 0,
            gid: 0,
        };
        let fallback = Fallback { listings: Some(Arc::new(listings)), link, stats: Arc::clone(&stats) };
        MastFs::new(r, store, config, stats, fallback)
    }

    fn read_all(fs: &MastFs, ino: u64, size: u64) -> Result<Vec<u8>, FsError> {
        let h = fs.open(ino, false)?;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let piece = fs.read(ino, h.fh, out.len() as u64, 128 << 10)?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        fs.release(h.fh);
        Ok(out)
    }

    #[test]
    fn an_offline_mount_lists_and_reads_what_an_earlier_mount_cached_and_fails_the_rest_with_enetunreach() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(3 * (1 << 20) + 17, 9);
        let remote = Arc::new(FakeRemote::default());
        remote.put("/d/cached.bin", data.clone());
        remote.put("/d/cold.bin", pattern(5000, 3));
        remote.put("/d/sub/x", vec![1]);
        {
            let fs = mount_cached(&remote, cache_dir.path(), false);
            let d = fs.lookup(ROOT, name("d")).expect("d").ino;
            ls(&fs, d).expect("ls d");
            let f = fs.lookup(d, name("cached.bin")).expect("cached.bin");
            assert_eq!(read_all(&fs, f.ino, f.size).expect("read"), data);
            fs.store().stop();
        }
        let before = (lists(&remote), stats(&remote), remote.opens());

        let fs = mount_cached(&remote, cache_dir.path(), true);
        let d = fs.lookup(ROOT, name("d")).expect("d, found by stat before").ino;
        let mut names: Vec<String> = ls(&fs, d).expect("ls d").iter().map(|e| e.name.to_string()).collect();
        names.sort();
        assert_eq!(names, [".", "..", "cached.bin", "cold.bin", "sub"]);
        let f = fs.lookup(d, name("cached.bin")).expect("cached.bin");
        assert_eq!(read_all(&fs, f.ino, f.size).expect("cached blocks"), data, "the right bytes, from the cache");
        let cold = fs.lookup(d, name("cold.bin")).expect("listed, so known");
        assert_eq!(read_all(&fs, cold.ino, cold.size).err().map(|e| e.errno()), Some(libc::ENETUNREACH));
        assert_eq!(fs.lookup(d, name("nope")).err().map(|e| e.errno()), Some(libc::ENOENT), "the listing says so");
        let sub = fs.lookup(d, name("sub")).expect("sub").ino;
        assert_eq!(ls(&fs, sub).err().map(|e| e.errno()), Some(libc::ENETUNREACH), "never listed");
        assert_eq!(fs.lookup(ROOT, name("other")).err().map(|e| e.errno()), Some(libc::ENETUNREACH), "never asked");
        assert_eq!((lists(&remote), stats(&remote), remote.opens()), before, "no server");
        fs.store().stop();
    }
}
