//! The file system's behaviour, independent of FUSE: lookups, listings, open files, reads.
//!
//! `fuse.rs` only translates between the kernel and these methods, so everything here runs in
//! unit tests against an in-memory remote.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::error::FsError;
use crate::inode::{Inodes, Node, ROOT};
use crate::read::{Data, FileId, OpenFile, ReadPath};
use crate::remote::{EntryKind, Remote};
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
    pub name: String,
    pub attr: Attr,
}

pub struct Opened {
    pub fh: u64,
    /// The kernel may keep pages cached from an earlier open: the file is the same version.
    pub keep_cache: bool,
}

pub struct MastFs {
    remote: Arc<dyn Remote>,
    store: Arc<ReadPath>,
    config: FsConfig,
    stats: Arc<Stats>,
    inodes: Mutex<Inodes>,
    /// One lock per directory being listed, so a burst of lookups causes one LIST.
    listing_locks: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Versions (size, mtime) last opened per inode, to decide on keeping the page cache.
    opened_versions: Mutex<HashMap<u64, (u64, SystemTime)>>,
    next_fh: AtomicU64,
}

impl MastFs {
    pub fn new(remote: Arc<dyn Remote>, store: Arc<ReadPath>, config: FsConfig, stats: Arc<Stats>) -> MastFs {
        MastFs {
            remote,
            store,
            config,
            stats,
            inodes: Mutex::new(Inodes::new()),
            listing_locks: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
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
        let root = self.config.root.trim_end_matches('/');
        if rel.is_empty() {
            if root.is_empty() { "/".to_string() } else { root.to_string() }
        } else {
            format!("{root}/{rel}")
        }
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

    /// Makes sure `dir` has a fresh listing. When the server cannot be reached, a listing we
    /// already have keeps answering (stale but true a moment ago) instead of failing `ls`.
    fn ensure_listing(&self, dir: u64) -> Result<(), FsError> {
        let fresh = |inodes: &Inodes| inodes.listing(dir).is_some_and(|l| l.fetched.elapsed() < self.config.ttl);
        {
            let inodes = self.inodes.lock();
            match inodes.get(dir) {
                None => return Err(FsError::NotFound),
                Some(n) if n.kind != EntryKind::Dir => return Err(FsError::NotDir),
                Some(_) => {}
            }
            if fresh(&inodes) {
                return Ok(());
            }
        }
        let gate = Arc::clone(self.listing_locks.lock().entry(dir).or_default());
        let _listing = gate.lock();
        let path = {
            let inodes = self.inodes.lock();
            if fresh(&inodes) {
                return Ok(());
            }
            match inodes.get(dir) {
                Some(n) => self.remote_path(&n.path),
                None => return Err(FsError::NotFound),
            }
        };
        match self.remote.list(&path) {
            Ok(entries) => {
                self.inodes.lock().store_listing(dir, entries);
                Ok(())
            }
            Err(e) => {
                if self.inodes.lock().listing(dir).is_some() {
                    log::warn!("listing {path:?} failed ({e}); serving the cached listing");
                    Ok(())
                } else {
                    Err(match e {
                        crate::error::RemoteError::Unavailable(_) => FsError::NotFound,
                        other => FsError::Remote(other),
                    })
                }
            }
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| FsError::NotFound)?;
        if parent == ROOT && name == STATS_NAME {
            return Ok(self.stats_attr());
        }
        self.ensure_listing(parent)?;
        let inodes = self.inodes.lock();
        let ino = inodes.child(parent, name).ok_or(FsError::NotFound)?;
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

    /// All entries of a directory, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        self.ensure_listing(ino)?;
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        let parent = node.parent;
        let mut out = vec![DirEntry { name: ".".into(), attr: self.attr_of(ino, node) }];
        if let Some(p) = inodes.get(parent) {
            out.push(DirEntry { name: "..".into(), attr: self.attr_of(parent, p) });
        }
        if let Some(listing) = inodes.listing(ino) {
            for (name, child) in &listing.entries {
                if let Some(n) = inodes.get(*child) {
                    out.push(DirEntry { name: name.clone(), attr: self.attr_of(*child, n) });
                }
            }
        }
        Ok(out)
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

    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let file = if ino == STATS_INO {
            None
        } else {
            let inodes = self.inodes.lock();
            let node = inodes.get(ino).ok_or(FsError::NotFound)?;
            match node.kind {
                EntryKind::Dir => return Err(FsError::IsDir),
                EntryKind::Symlink => return Err(FsError::NotFound),
                EntryKind::File => {}
            }
            Some((self.remote_path(&node.path), node.size, node.mtime))
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let Some((path, size, mtime)) = file else {
            return Ok(Opened { fh, keep_cache: false });
        };
        let secs = match mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let id = FileId { server: self.config.server.clone(), user: self.config.user.clone(), path, size, mtime: secs };
        let keep_cache = self.opened_versions.lock().insert(ino, (size, mtime)) == Some((size, mtime));
        self.handles.lock().insert(fh, self.store.open(id));
        Ok(Opened { fh, keep_cache })
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Data, FsError> {
        if ino == STATS_INO {
            let text = self.stats.render().into_bytes();
            let start = (offset as usize).min(text.len());
            let end = start.saturating_add(size as usize).min(text.len());
            return Ok(Data::Owned(text[start..end].to_vec()));
        }
        let handle = self.handles.lock().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        self.store.read(&handle, offset, size).map_err(|e| {
            Stats::add(&self.stats.read_errors, 1);
            log::warn!("read of {} at {offset} failed: {e}", handle.path());
            FsError::from(e)
        })
    }

    pub fn release(&self, fh: u64) {
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
        MastFs::new(r, store, config, stats)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_burst_of_lookups_in_one_directory_costs_one_listing() {
        let remote = Arc::new(FakeRemote::default());
        for i in 0..50 {
            remote.put(&format!("/stage/f{i}"), vec![0; i]);
        }
        let fs = mount(&remote, Duration::from_secs(60));
        let stage = fs.lookup(ROOT, name("stage")).expect("stage").ino;
        for i in 0..50 {
            assert_eq!(fs.lookup(stage, name(&format!("f{i}"))).expect("file").size, i as u64);
        }
        assert_eq!(remote.lists(), 2, "root once, stage once");
    }

    #[test]
    fn readdir_lists_dot_entries_then_the_server_entries_with_attributes() {
        let remote = Arc::new(FakeRemote::default());
        remote.put("/d/a", vec![1; 10]);
        remote.put("/d/sub/b", vec![]);
        let fs = mount(&remote, Duration::from_secs(60));
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        let entries = fs.readdir(d).expect("readdir");
        let mut names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        names[2..].sort();
        assert_eq!(names, [".", "..", "a", "sub"]);
        let a = entries.iter().find(|e| e.name == "a").expect("a");
        assert_eq!((a.attr.kind, a.attr.size), (EntryKind::File, 10));
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
        assert_eq!(fs.readdir(f).err().map(|e| e.errno()), Some(libc::ENOTDIR));
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
        assert!(fs.readdir(ROOT).expect("ls").iter().all(|e| e.name != STATS_NAME));
    }

    #[test]
    fn an_expired_listing_is_still_served_when_the_server_is_unreachable() {
        let remote = Arc::new(FakeRemote::with_file("/d/f", vec![1, 2, 3]));
        let fs = mount(&remote, Duration::ZERO);
        let d = fs.lookup(ROOT, name("d")).expect("d").ino;
        assert_eq!(fs.readdir(d).expect("ls").len(), 3);
        remote.faults().fail_lists.store(true, Ordering::SeqCst);
        assert_eq!(fs.readdir(d).expect("still answers").len(), 3);
        assert_eq!(fs.lookup(d, name("f")).expect("still found").size, 3);
        let fresh = mount(&remote, Duration::ZERO);
        assert_eq!(
            fresh.lookup(ROOT, name("d")).err().map(|e| e.errno()),
            Some(libc::EIO),
            "nothing cached: an error, never an empty directory"
        );
    }
}
