//! Directory listings kept in the cache directory, so that a mount can show what it listed
//! before while the server cannot be reached.
//!
//! One file per directory: `<cache>/listings-v2/<hex(key)[0..2]>/<hex(key)>.dir`, where the key
//! is a SHA-256 of the server (`host:port`), the user and the absolute remote path, so two
//! servers or users never share a file. A file is a 64-byte header (magic, format version, key,
//! flags, payload length, CRC32 of the payload, CRC32 of the header) and the payload: the
//! identity (server, user, path: what `mastfs cache du|clear` go by, and whose key must be the
//! file's), then the entries. Format 1 had no identity; its directory `listings-v1` is removed
//! at open. A file is served only when it is exactly the one asked for and intact; a torn,
//! corrupt, truncated or foreign one is deleted and treated as absent. The password is not part
//! of the key or of anything written.
//!
//! A record is *complete* (a whole listing: a name it lacks does not exist) or *partial* (the
//! entries found one by one by `stat` in a directory nobody listed: a name it lacks is unknown).
//!
//! Disk use is bounded by an LRU over the files, as for blocks (`read/disk.rs`), and the in-memory
//! index is only a hint: another mount may share the directory, so a load validates what it
//! reads, treats a vanished file as absent and adopts a file the index did not know. After
//! `mastfs cache clear|verify` (seen through `cache_admin::ClearWatch` at the next write) the
//! index is rebuilt from the disk.
//!
//! Threads: any thread may call (FUSE workers and `mastfs-meta` refresh threads do). Locks:
//! `merge` is held across a whole write (and the load-modify-write of [`DirStore::update`]), so
//! the writes of one process never lose each other; `index` is held only to update the index,
//! never during file I/O, and may be taken while `merge` is held, never the other way round.
//! Between processes the last rename wins, and every file on disk is whole.

use std::fs::{self, DirBuilder, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::cache_admin::{ClearWatch, Verdict};
use crate::remote::{EntryKind, NAME_MAX, RemoteEntry, TARGET_MAX};

/// Version of the key encoding and of the file format; a change orphans old files, which then
/// age out of the LRU.
const FORMAT_VERSION: u32 = 2;
/// The layout directory under the cache directory; bump with `FORMAT_VERSION`.
pub const LAYOUT_DIR: &str = "listings-v2";
/// Layouts of earlier formats, removed at open: nothing reads them any more.
const OLD_LAYOUT_DIRS: [&str; 1] = ["listings-v1"];
const MAGIC: [u8; 8] = *b"MSTFSDIR";
/// magic 8 | version 4 | key 32 | flags 4 | payload length 8 | crc32(payload) 4 | crc32(bytes 0..60) 4
const HEADER_LEN: usize = 64;
const FLAG_COMPLETE: u32 = 1;
const EXT: &str = "dir";
const TMP_MARKER: &str = ".tmp.";
/// A temp file this old cannot belong to a write still in flight (a write takes milliseconds).
const STALE_TMP_AGE: Duration = Duration::from_secs(600);
/// A partial record stops growing here: a directory that refuses listings but is looked into
/// by name (every user's request directories) must not grow one file without bound.
pub const MAX_PARTIAL_ENTRIES: usize = 4096;
/// No single listing may take more than this share of the store, so that one huge directory
/// cannot evict every other.
const MAX_SHARE: u64 = 4;

/// What is kept about one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDir {
    /// A whole listing (true), or entries found one by one (false).
    pub complete: bool,
    pub entries: Vec<RemoteEntry>,
}

impl SavedDir {
    /// A partial record with nothing in it yet.
    pub fn partial() -> SavedDir {
        SavedDir { complete: false, entries: Vec::new() }
    }

    /// Adds or replaces the entry of `e.name`; false when nothing changed or a partial record
    /// is full.
    pub fn upsert(&mut self, e: RemoteEntry) -> bool {
        let full = !self.complete && self.entries.len() >= MAX_PARTIAL_ENTRIES;
        match self.entries.iter_mut().find(|old| old.name == e.name) {
            Some(old) if *old == e => false,
            Some(old) => {
                *old = e;
                true
            }
            None if full => false,
            None => {
                self.entries.push(e);
                true
            }
        }
    }

    /// Removes the entry of `name`; false when there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        self.entries.len() != before
    }
}

/// What [`DirStore::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// The file on disk already says exactly this.
    Unchanged,
    /// Larger than a quarter of the store: not kept.
    TooLarge,
}

/// One file known to the index: its size on disk, and, once this process wrote or read it, a
/// digest of what it says and its inode number (another mount may have replaced it since).
#[derive(Clone, Copy)]
struct Known {
    size: u64,
    seen: Option<([u8; 16], u64)>,
}

struct Index {
    lru: LruCache<[u8; 32], Known>,
    used: u64,
}

impl Index {
    fn insert(&mut self, key: [u8; 32], known: Known) {
        if let Some(old) = self.lru.put(key, known) {
            self.used = self.used.saturating_sub(old.size);
        }
        self.used = self.used.saturating_add(known.size);
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(old) = self.lru.pop(key) {
            self.used = self.used.saturating_sub(old.size);
        }
    }

    fn evict_over(&mut self, capacity: u64) -> Vec<[u8; 32]> {
        let mut victims = Vec::new();
        while self.used > capacity {
            match self.lru.pop_lru() {
                Some((k, known)) => {
                    self.used = self.used.saturating_sub(known.size);
                    victims.push(k);
                }
                None => break,
            }
        }
        victims
    }
}

/// The listings of one server and user in one cache directory.
pub struct DirStore {
    /// `<cache>/listings-v1`
    root: PathBuf,
    server: String,
    user: String,
    capacity: u64,
    index: Mutex<Index>,
    merge: Mutex<()>,
    cleared: ClearWatch,
}

impl DirStore {
    /// Opens (creating private, 0700) the listing store under `cache_dir` for `server` and
    /// `user`, rebuilds the LRU index from the files there (least recently used first), removes
    /// stale temp files and evicts down to `capacity` bytes.
    pub fn open(cache_dir: &Path, capacity: u64, server: &str, user: &str) -> io::Result<DirStore> {
        make_private_dir(cache_dir)?;
        let root = cache_dir.join(LAYOUT_DIR);
        make_private_dir(&root)?;
        for old in OLD_LAYOUT_DIRS {
            // At most a sixteenth of the cache (256 MiB): quick enough to remove in line.
            match fs::remove_dir_all(cache_dir.join(old)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    log::warn!("listing cache: cannot remove the old layout {old}: {e}")
                }
                _ => {}
            }
        }
        let cleared = ClearWatch::new(cache_dir);
        let index = Mutex::new(index_of(scan(&root)?));
        let store = DirStore {
            cleared,
            root,
            server: server.to_string(),
            user: user.to_string(),
            capacity,
            index,
            merge: Mutex::new(()),
        };
        let victims = store.index.lock().evict_over(capacity);
        store.remove_victims(victims);
        Ok(store)
    }

    /// The saved record of remote directory `path` (absolute), if there is an intact one.
    pub fn load(&self, path: &str) -> Option<SavedDir> {
        let key = self.key(path);
        let file = self.file_path(&key);
        match read_record(&file, &key) {
            Loaded::Valid(dir, digest, size, f, _) => {
                // Recency survives a remount through the access time; failing costs only LRU precision.
                let _ = f.set_times(FileTimes::new().set_accessed(SystemTime::now()));
                let seen = f.metadata().ok().map(|m| (digest, m.ino()));
                let victims = {
                    let mut ix = self.index.lock();
                    ix.insert(key, Known { size, seen });
                    ix.evict_over(self.capacity)
                };
                self.remove_victims(victims);
                Some(dir)
            }
            Loaded::Missing => {
                self.index.lock().remove(&key);
                None
            }
            Loaded::Unreadable(e) => {
                // Not provably bad (EACCES, EIO): leave it for a later attempt.
                log::debug!("listing cache: cannot read {}: {e}", file.display());
                None
            }
            Loaded::Corrupt(why, f) => {
                log::warn!("listing cache: discarding {} ({why})", file.display());
                remove_if_same_file(&file, &f);
                self.index.lock().remove(&key);
                None
            }
        }
    }

    /// Saves `dir` as the record of remote directory `path`, replacing what was there.
    pub fn save(&self, path: &str, dir: &SavedDir) -> io::Result<Saved> {
        let _merging = self.merge.lock();
        self.write(path, dir)
    }

    /// Changes the record of `path` with `change` (starting from an empty partial record when
    /// there is none) and saves it if `change` says it changed anything.
    pub fn update(&self, path: &str, change: impl FnOnce(&mut SavedDir) -> bool) -> io::Result<Saved> {
        let _merging = self.merge.lock();
        let mut dir = self.load(path).unwrap_or_else(SavedDir::partial);
        if !change(&mut dir) {
            return Ok(Saved::Unchanged);
        }
        self.write(path, &dir)
    }

    /// Bytes of the files in the index.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    fn write(&self, path: &str, dir: &SavedDir) -> io::Result<Saved> {
        if self.cleared.changed() {
            // Files were deleted behind the index: rebuild it (readdir and metadata only).
            match scan(&self.root) {
                Ok(found) => *self.index.lock() = index_of(found),
                Err(e) => log::warn!("listing cache: cannot rescan {} after a clear: {e}", self.root.display()),
            }
        }
        let key = self.key(path);
        let mut payload = encode_identity(&self.server, &self.user, path);
        payload.extend_from_slice(&encode_entries(&dir.entries));
        let flags = if dir.complete { FLAG_COMPLETE } else { 0 };
        let size = (HEADER_LEN + payload.len()) as u64;
        if size > self.capacity / MAX_SHARE {
            log::debug!("listing cache: the listing of {path:?} ({size} bytes) is too large to keep");
            return Ok(Saved::TooLarge);
        }
        let digest = digest_of(flags, &payload);
        let file = self.file_path(&key);
        let seen = self.index.lock().lru.peek(&key).and_then(|k| k.seen);
        if let Some((known, ino)) = seen
            && known == digest
            && fs::metadata(&file).is_ok_and(|m| m.ino() == ino)
        {
            return Ok(Saved::Unchanged);
        }
        let shard = file.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        make_private_dir(&shard)?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&encode_header(&key, flags, &payload));
        bytes.extend_from_slice(&payload);
        // tempfile picks a name no concurrent writer (of this process or another) has, creates
        // it 0600, and deletes it if anything below fails; the marker lets `scan` remove one
        // that a killed writer left behind.
        let prefix = format!("{}{TMP_MARKER}{}.", hex::encode(key), std::process::id());
        tempfile::Builder::new().prefix(&prefix).tempfile_in(&shard).and_then(|mut tmp| {
            // Through the plain file: its errors keep their OS error code (ENOSPC, EROFS).
            tmp.as_file_mut().write_all(&bytes)?;
            tmp.persist(&file).map(drop).map_err(|e| e.error)
        })?;
        let seen = fs::metadata(&file).ok().map(|m| (digest, m.ino()));
        let victims = {
            let mut ix = self.index.lock();
            ix.insert(key, Known { size, seen });
            ix.evict_over(self.capacity)
        };
        self.remove_victims(victims);
        Ok(Saved::Written)
    }

    /// SHA-256 over a length-prefixed encoding of server, user and path, so that no two
    /// different triples (user "ab" + path "c" against user "a" + path "bc") share a key.
    fn key(&self, path: &str) -> [u8; 32] {
        listing_key(&self.server, &self.user, path)
    }

    fn file_path(&self, key: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(key);
        self.root.join(&hex[..2]).join(format!("{hex}.{EXT}"))
    }

    fn remove_victims(&self, victims: Vec<[u8; 32]>) {
        for key in victims {
            let path = self.file_path(&key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("listing cache: cannot evict {}: {e}", path.display()),
            }
        }
    }
}

/// The LRU index of the files `scan` found, least recently used first.
fn index_of(mut found: Vec<([u8; 32], u64, SystemTime)>) -> Index {
    found.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    let mut index = Index { lru: LruCache::unbounded(), used: 0 };
    for (key, size, _) in found {
        index.insert(key, Known { size, seen: None });
    }
    index
}

fn listing_key(server: &str, user: &str, path: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"mastfs-dir-key");
    h.update(FORMAT_VERSION.to_le_bytes());
    for field in [server, user, path] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// Whose listing a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListingId {
    /// "host:port"
    pub(crate) server: String,
    pub(crate) user: String,
    /// The remote directory.
    pub(crate) path: String,
}

/// server, user, path: each as length u32 and UTF-8.
fn encode_identity(server: &str, user: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + server.len() + user.len() + path.len());
    for field in [server, user, path] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// One listing file, as `mastfs cache` sees it.
pub(crate) struct StoredListing {
    pub(crate) file: PathBuf,
    key: [u8; 32],
    pub(crate) size: u64,
    /// Whose listing it is, or why that cannot be told (the file is bad or unreadable).
    pub(crate) identity: Result<ListingId, String>,
}

/// Every listing file in `cache_dir`, each read and checked; nothing is changed.
pub(crate) fn stored_listings(cache_dir: &Path) -> io::Result<Vec<StoredListing>> {
    let mut out = Vec::new();
    for entry in crate::cache_admin::layout_entries(&cache_dir.join(LAYOUT_DIR))? {
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(&format!(".{EXT}"))).and_then(unhex) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let file = entry.path();
        let identity = match read_record(&file, &key) {
            Loaded::Valid(_, _, _, _, id) => Ok(id),
            Loaded::Missing => continue,
            Loaded::Unreadable(e) => Err(format!("cannot read it: {e}")),
            Loaded::Corrupt(why, _) => Err(why),
        };
        out.push(StoredListing { file, key, size: meta.len(), identity });
    }
    Ok(out)
}

/// Checks one listing file exactly as a mount's load does, and deletes it if it is bad.
pub(crate) fn verify_listing(listing: &StoredListing) -> Verdict {
    match read_record(&listing.file, &listing.key) {
        Loaded::Valid(..) => Verdict::Good,
        Loaded::Missing => Verdict::Gone,
        Loaded::Unreadable(e) => Verdict::Unreadable(e),
        Loaded::Corrupt(why, f) => {
            remove_if_same_file(&listing.file, &f);
            Verdict::Removed(why)
        }
    }
}

enum Loaded {
    /// The record, the digest of what it says, the file's size, the open file, and whose it is.
    Valid(SavedDir, [u8; 16], u64, File, ListingId),
    Missing,
    Unreadable(io::Error),
    /// Provably bad: the reason and the open file (so that only this file is removed).
    Corrupt(String, File),
}

fn read_record(path: &Path, key: &[u8; 32]) -> Loaded {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unreadable(e),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return Loaded::Unreadable(e),
    };
    let mut header = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 {
        return Loaded::Corrupt(format!("{len} bytes, shorter than a header"), file);
    }
    if let Err(e) = file.read_exact(&mut header) {
        return Loaded::Unreadable(e);
    }
    let (flags, payload_len, payload_crc) = match decode_header(&header, key) {
        Ok(h) => h,
        Err(why) => return Loaded::Corrupt(why, file),
    };
    if len != HEADER_LEN as u64 + payload_len {
        return Loaded::Corrupt(format!("{len} bytes, the header says {}", HEADER_LEN as u64 + payload_len), file);
    }
    // The length was checked against the file's own size, so this allocation is bounded by it.
    let mut payload = vec![0u8; payload_len as usize];
    if let Err(e) = file.read_exact(&mut payload) {
        return Loaded::Unreadable(e);
    }
    if crc32fast::hash(&payload) != payload_crc {
        return Loaded::Corrupt("payload checksum mismatch".into(), file);
    }
    let mut r = Reader { bytes: &payload, at: 0 };
    let mut text = || -> Result<String, String> {
        let n = r.u32()? as usize;
        r.text(n)
    };
    let identity = match (text(), text(), text()) {
        (Ok(server), Ok(user), Ok(path)) => ListingId { server, user, path },
        _ => return Loaded::Corrupt("truncated identity".into(), file),
    };
    if listing_key(&identity.server, &identity.user, &identity.path) != *key {
        return Loaded::Corrupt("the identity of another directory, server or user".into(), file);
    }
    match decode_entries(&payload[r.at..]) {
        Ok(entries) => {
            let digest = digest_of(flags, &payload);
            let dir = SavedDir { complete: flags & FLAG_COMPLETE != 0, entries };
            Loaded::Valid(dir, digest, len, file, identity)
        }
        Err(why) => Loaded::Corrupt(why, file),
    }
}

fn encode_header(key: &[u8; 32], flags: u32, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..44].copy_from_slice(key);
    h[44..48].copy_from_slice(&flags.to_le_bytes());
    h[48..56].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// (flags, payload length, payload CRC) of a header that is intact and names `key`.
fn decode_header(h: &[u8; HEADER_LEN], key: &[u8; 32]) -> Result<(u32, u64, u32), String> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if h[0..8] != MAGIC {
        return Err("not a listing file".into());
    }
    if crc32fast::hash(&h[0..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(format!("format version {}", u32_at(8)));
    }
    if h[12..44] != key[..] {
        return Err("the listing of another directory, server or user".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[48..56]);
    Ok((u32_at(44), u64::from_le_bytes(len), u32_at(56)))
}

fn digest_of(flags: u32, payload: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(flags.to_le_bytes());
    h.update(payload);
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

const NO_PERM: u32 = u32::MAX;
/// The fewest bytes one entry takes: a one-byte name, no symlink target.
const MIN_ENCODED_ENTRY: usize = 2 + 1 + 1 + 8 + 8 + 4 + 4 + 4 + 2;

/// count u32, then per entry: name length u16 and bytes, kind u8, size u64, mtime seconds i64
/// and nanoseconds u32 (since the epoch, negative before it), precision u32, permission bits
/// u32 (`NO_PERM`: none given), symlink target length u16 (0: none) and bytes.
fn encode_entries(entries: &[RemoteEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 64);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.push(match e.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
        });
        out.extend_from_slice(&e.size.to_le_bytes());
        let (secs, nanos) = match e.mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(before) => {
                // Times before the epoch are kept as (negative seconds, positive nanoseconds).
                let d = before.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                (secs, nanos)
            }
        };
        out.extend_from_slice(&secs.to_le_bytes());
        out.extend_from_slice(&nanos.to_le_bytes());
        out.extend_from_slice(&e.mtime_precision.to_le_bytes());
        out.extend_from_slice(&e.perm.unwrap_or(NO_PERM).to_le_bytes());
        let target = e.link_target.as_deref().unwrap_or("");
        out.extend_from_slice(&(target.len() as u16).to_le_bytes());
        out.extend_from_slice(target.as_bytes());
    }
    out
}

/// Reads what `encode_entries` wrote, holding every entry to the rules a listing's entries
/// follow (see [`RemoteEntry`]): a file that breaks them is corrupt, never served.
fn decode_entries(payload: &[u8]) -> Result<Vec<RemoteEntry>, String> {
    let mut r = Reader { bytes: payload, at: 0 };
    let count = r.u32()? as usize;
    // A count the payload cannot hold is a lie, not an allocation.
    if count > payload.len() / MIN_ENCODED_ENTRY {
        return Err(format!("{count} entries cannot fit in {} bytes", payload.len()));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = r.text(name_len)?;
        let valid_name = !name.is_empty()
            && name != "."
            && name != ".."
            && name.len() <= NAME_MAX
            && !name.contains(['/', '\0', '\r', '\n']);
        if !valid_name {
            return Err(format!("invalid name {name:?}"));
        }
        let kind = match r.u8()? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            k => return Err(format!("unknown kind {k}")),
        };
        let size = r.u64()?;
        let secs = r.i64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return Err("nanoseconds out of range".into());
        }
        let mtime = if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        }
        .ok_or("modification time out of range")?;
        let mtime_precision = r.u32()?;
        if mtime_precision == 0 {
            return Err("time precision of 0 seconds".into());
        }
        let perm = match r.u32()? {
            NO_PERM => None,
            p if p <= 0o7777 => Some(p),
            p => return Err(format!("permission bits {p:o}")),
        };
        let target_len = usize::from(r.u16()?);
        let link_target = match target_len {
            0 => None,
            n if n > TARGET_MAX => return Err(format!("symlink target of {n} bytes")),
            n => {
                let t = r.text(n)?;
                if t.contains('\0') {
                    return Err("symlink target with a NUL".into());
                }
                Some(t)
            }
        };
        entries.push(RemoteEntry { name, kind, size, mtime, mtime_precision, perm, link_target });
    }
    if r.at != payload.len() {
        return Err(format!("{} bytes after the last entry", payload.len() - r.at));
    }
    Ok(entries)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("truncated entry")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_le_bytes)
    }

    fn text(&mut self, n: usize) -> Result<String, String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
    }
}

/// (key, size, last use) of every record file under `root`; stale temp files are removed.
fn scan(root: &Path) -> io::Result<Vec<([u8; 32], u64, SystemTime)>> {
    let mut found = Vec::new();
    for shard in fs::read_dir(root)? {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        let Ok(files) = fs::read_dir(&shard) else { continue };
        for file in files.flatten() {
            let path = file.path();
            let Ok(meta) = file.metadata() else { continue };
            let name = file.file_name();
            let name = name.to_string_lossy();
            let last_use = meta
                .accessed()
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .max(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            if name.contains(TMP_MARKER) {
                if last_use.elapsed().is_ok_and(|age| age >= STALE_TMP_AGE) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(key) = name.strip_suffix(&format!(".{EXT}")).and_then(unhex) else { continue };
            found.push((key, meta.len(), last_use));
        }
    }
    Ok(found)
}

/// The key a record file's name spells: exactly the lowercase hex `file_path` writes, so a
/// file named otherwise (upper case, a sign, another length) is not taken for a record.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    (hex::encode(key) == text).then_some(key)
}

/// Creates `dir` (and its parents) with mode 0700, and tightens an existing one that is looser.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a directory", dir.display())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes `path` only if it is still the file `open` refers to: another writer may have
/// renamed a good file over it since.
fn remove_if_same_file(path: &Path, open: &File) {
    let (Ok(a), Ok(b)) = (open.metadata(), fs::metadata(path)) else { return };
    if a.dev() == b.dev() && a.ino() == b.ino() {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    fn entry(name: &str, kind: EntryKind, size: u64) -> RemoteEntry {
        RemoteEntry {
            name: name.into(),
            kind,
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            mtime_precision: 60,
            perm: Some(0o644),
            link_target: None,
        }
    }

    fn listing(n: usize) -> SavedDir {
        SavedDir {
            complete: true,
            entries: (0..n).map(|i| entry(&format!("f{i:05}.fits"), EntryKind::File, i as u64 * 1000)).collect(),
        }
    }

    fn store(dir: &Path) -> DirStore {
        DirStore::open(dir, 64 * MIB, "archive.example:21", "anonymous").expect("open")
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in fs::read_dir(dir.join(LAYOUT_DIR)).expect("layout dir").flatten() {
            out.extend(fs::read_dir(shard.path()).expect("shard").flatten().map(|f| f.path()));
        }
        out.sort();
        out
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn a_listing_records_whose_it_is_and_verify_removes_a_damaged_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.save("/stage/anonymous", &listing(3)).expect("save");
        s.save("/pub", &listing(1)).expect("save");
        let mut found = stored_listings(dir.path()).expect("listings");
        found.sort_by(|a, b| a.file.cmp(&b.file));
        let mut whose: Vec<ListingId> = found.iter().map(|l| l.identity.clone().expect("intact")).collect();
        whose.sort_by(|a, b| a.path.cmp(&b.path));
        let want =
            |path: &str| ListingId { server: "archive.example:21".into(), user: "anonymous".into(), path: path.into() };
        assert_eq!(whose, vec![want("/pub"), want("/stage/anonymous")]);

        let victim = &found[0];
        let mut bytes = fs::read(&victim.file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&victim.file, &bytes).expect("rewrite");
        assert!(matches!(verify_listing(victim), Verdict::Removed(_)));
        assert!(!victim.file.exists());
        assert!(matches!(verify_listing(&found[1]), Verdict::Good));
    }

    #[test]
    fn after_a_clear_the_next_save_counts_only_what_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        for path in ["/a", "/b", "/c"] {
            s.save(path, &listing(10)).expect("save");
        }
        let one = s.used() / 3;
        for path in ["/a", "/b"] {
            fs::remove_file(s.file_path(&s.key(path))).expect("cleared");
        }
        fs::write(dir.path().join("cleared"), b"1").expect("stamp");
        s.save("/d", &listing(10)).expect("save");
        assert_eq!(s.used(), 2 * one);
        assert_eq!(s.load("/c"), Some(listing(10)));
    }

    #[test]
    fn the_format_1_layout_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("listings-v1/ab");
        fs::create_dir_all(&old).expect("old layout");
        fs::write(old.join("x.dir"), b"old").expect("old file");
        let _s = store(dir.path());
        assert!(!dir.path().join("listings-v1").exists());
    }

    #[test]
    fn a_saved_listing_reads_back_exactly_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let odd = SavedDir {
            complete: true,
            entries: vec![
                entry(" lead space", EntryKind::File, 7),
                RemoteEntry { perm: None, mtime_precision: 1, ..entry("sub", EntryKind::Dir, 0) },
                RemoteEntry { link_target: Some("../a b/c".into()), ..entry("link", EntryKind::Symlink, 8) },
                RemoteEntry {
                    mtime: SystemTime::UNIX_EPOCH - Duration::new(3600, 250),
                    mtime_precision: 86_400,
                    ..entry("日本語 1969.fits", EntryKind::File, u64::MAX)
                },
                RemoteEntry {
                    mtime: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_123, 999_999_999),
                    mtime_precision: 1,
                    ..entry(&"x".repeat(NAME_MAX), EntryKind::File, 1)
                },
            ],
        };
        let partial = SavedDir { complete: false, entries: vec![entry("req1", EntryKind::Dir, 0)] };
        let empty = SavedDir { complete: true, entries: Vec::new() };
        {
            let s = store(dir.path());
            assert_eq!(s.save("/stage/x", &odd).expect("save"), Saved::Written);
            assert_eq!(s.save("/stage/anonymous", &partial).expect("save"), Saved::Written);
            assert_eq!(s.save("/empty", &empty).expect("save"), Saved::Written);
        }
        let s = store(dir.path());
        assert_eq!(s.load("/stage/x"), Some(odd));
        assert_eq!(s.load("/stage/anonymous"), Some(partial));
        assert_eq!(s.load("/empty"), Some(empty));
        assert_eq!(s.load("/stage"), None, "never saved");
    }

    #[test]
    fn a_listing_of_one_letter_names_without_permissions_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let short = SavedDir {
            complete: true,
            entries: ["a", "b", "c"]
                .iter()
                .map(|n| RemoteEntry { perm: None, mtime: SystemTime::UNIX_EPOCH, ..entry(n, EntryKind::File, 1) })
                .collect(),
        };
        s.save("/", &short).expect("save");
        assert_eq!(s.load("/"), Some(short));
    }

    #[test]
    fn saving_what_the_file_already_says_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        assert_eq!(s.save("/d", &listing(10)).expect("save"), Saved::Written);
        assert_eq!(s.save("/d", &listing(10)).expect("save"), Saved::Unchanged);
        assert_eq!(s.save("/d", &listing(11)).expect("save"), Saved::Written);
        let reopened = store(dir.path());
        assert_eq!(reopened.load("/d"), Some(listing(11)));
        assert_eq!(reopened.save("/d", &listing(11)).expect("save"), Saved::Unchanged, "known once read");
        fs::remove_file(&files(dir.path())[0]).expect("another mount evicts it");
        assert_eq!(reopened.save("/d", &listing(11)).expect("save"), Saved::Written, "gone from disk: written again");
    }

    #[test]
    fn a_corrupt_or_truncated_file_is_never_served_and_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.save("/d", &listing(50)).expect("save");
        let file = files(dir.path())[0].clone();
        let good = fs::read(&file).expect("read");
        // A flipped bit in a name, in the header's length field, and a file cut short.
        let mut bad_payload = good.clone();
        bad_payload[HEADER_LEN + 10] ^= 0x20;
        let mut bad_header = good.clone();
        bad_header[50] ^= 0x01;
        let short = good[..good.len() - 3].to_vec();
        for (what, bytes) in [("payload", bad_payload), ("header", bad_header), ("truncated", short), ("empty", vec![])]
        {
            fs::write(&file, &bytes).expect("damage");
            assert_eq!(s.load("/d"), None, "{what}");
            assert!(!file.exists(), "{what}: the bad file is deleted");
        }
        s.save("/d", &listing(50)).expect("save again");
        assert_eq!(s.load("/d"), Some(listing(50)));
    }

    #[test]
    fn a_file_with_a_valid_checksum_but_invalid_entries_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let key = s.key("/d");
        for bad in ["a/b", "..", "", "nul\0"] {
            let payload = encode_entries(&[entry(bad, EntryKind::File, 1)]);
            let file = s.file_path(&key);
            make_private_dir(file.parent().expect("shard")).expect("shard");
            let mut bytes = encode_header(&key, FLAG_COMPLETE, &payload).to_vec();
            bytes.extend_from_slice(&payload);
            fs::write(&file, &bytes).expect("write");
            assert_eq!(s.load("/d"), None, "{bad:?}");
            assert!(!file.exists(), "{bad:?}");
        }
    }

    #[test]
    fn a_foreign_listing_copied_over_another_is_ignored_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.save("/a", &listing(3)).expect("save");
        s.save("/b", &listing(4)).expect("save");
        let (a, b) = (s.file_path(&s.key("/a")), s.file_path(&s.key("/b")));
        fs::copy(&b, &a).expect("b over a");
        assert_eq!(s.load("/a"), None);
        assert!(!a.exists());
        assert_eq!(s.load("/b"), Some(listing(4)), "the original stays good");
    }

    #[test]
    fn two_servers_or_two_users_never_see_each_others_listings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let anon = store(dir.path());
        anon.save("/stage", &listing(5)).expect("save");
        let other_user = DirStore::open(dir.path(), 64 * MIB, "archive.example:21", "me@uni.edu").expect("open");
        let other_server = DirStore::open(dir.path(), 64 * MIB, "archive.example:990", "anonymous").expect("open");
        // The same fields split differently must not collide either.
        let shifted = DirStore::open(dir.path(), 64 * MIB, "archive.example:2", "1anonymous").expect("open");
        for s in [&other_user, &other_server, &shifted] {
            assert_eq!(s.load("/stage"), None);
        }
        other_user.save("/stage", &listing(1)).expect("save");
        assert_eq!(anon.load("/stage"), Some(listing(5)));
        assert_eq!(other_user.load("/stage"), Some(listing(1)));
    }

    #[test]
    fn concurrent_writers_of_one_directory_leave_one_whole_listing_and_readers_never_see_a_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two stores on one directory stand for two mounts sharing a cache.
        let stores = [Arc::new(store(dir.path())), Arc::new(store(dir.path()))];
        let versions: Vec<SavedDir> = (1..=8).map(|n| listing(n * 40)).collect();
        std::thread::scope(|scope| {
            for t in 0..8usize {
                let s = Arc::clone(&stores[t % 2]);
                let versions = &versions;
                scope.spawn(move || {
                    for round in 0..30 {
                        let mine = &versions[(t + round) % versions.len()];
                        s.save("/shared", mine).expect("save");
                        s.save(&format!("/own{t}"), mine).expect("save own");
                        if let Some(seen) = s.load("/shared") {
                            assert!(versions.contains(&seen), "a listing nobody wrote: {} entries", seen.entries.len());
                        }
                    }
                });
            }
        });
        let last = stores[0].load("/shared").expect("one listing survives");
        assert!(versions.contains(&last));
        assert!(files(dir.path()).iter().all(|p| !p.to_string_lossy().contains(TMP_MARKER)), "no temp file left");
    }

    #[test]
    fn concurrent_updates_of_a_partial_record_lose_no_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(store(dir.path()));
        std::thread::scope(|scope| {
            for t in 0..8 {
                let s = Arc::clone(&s);
                scope.spawn(move || {
                    for i in 0..10 {
                        let e = entry(&format!("req{t}_{i}"), EntryKind::Dir, 0);
                        s.update("/stage/anonymous", |d| d.upsert(e)).expect("update");
                    }
                });
            }
        });
        let saved = s.load("/stage/anonymous").expect("saved");
        assert!(!saved.complete);
        assert_eq!(saved.entries.len(), 80);
        s.update("/stage/anonymous", |d| d.remove("req3_3")).expect("remove");
        assert_eq!(s.load("/stage/anonymous").map(|d| d.entries.len()), Some(79));
    }

    #[test]
    fn a_partial_record_stops_growing_at_its_cap_but_a_complete_listing_does_not() {
        let mut d = SavedDir::partial();
        for i in 0..MAX_PARTIAL_ENTRIES + 5 {
            d.upsert(entry(&format!("n{i}"), EntryKind::Dir, 0));
        }
        assert_eq!(d.entries.len(), MAX_PARTIAL_ENTRIES);
        assert!(d.upsert(RemoteEntry { size: 9, ..entry("n0", EntryKind::Dir, 0) }), "known names still update");
        let mut full = listing(MAX_PARTIAL_ENTRIES);
        assert!(full.upsert(entry("one more", EntryKind::File, 1)));
    }

    #[test]
    fn disk_use_stays_within_capacity_and_the_least_recently_used_listing_goes_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = (HEADER_LEN + encode_entries(&listing(100).entries).len()) as u64;
        let s = DirStore::open(dir.path(), 5 * one, "h:21", "u").expect("open");
        for n in 0..4 {
            s.save(&format!("/d{n}"), &listing(100)).expect("save");
        }
        assert!(s.load("/d0").is_some(), "d0 used again: d1 is now the oldest");
        for n in 4..6 {
            s.save(&format!("/d{n}"), &listing(100)).expect("save");
        }
        assert!(s.used() <= 5 * one);
        let on_disk: u64 = files(dir.path()).iter().map(|p| fs::metadata(p).expect("meta").len()).sum();
        assert!(on_disk <= 5 * one, "{on_disk} bytes on disk");
        assert_eq!(s.load("/d1"), None, "least recently used");
        assert!(s.load("/d0").is_some() && s.load("/d5").is_some());
        drop(s);
        let smaller = DirStore::open(dir.path(), 2 * one, "h:21", "u").expect("reopen smaller");
        assert!(files(dir.path()).len() <= 2 && smaller.used() <= 2 * one);
    }

    #[test]
    fn a_listing_larger_than_a_quarter_of_the_store_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DirStore::open(dir.path(), 64 * 1024, "h:21", "u").expect("open");
        assert_eq!(s.save("/huge", &listing(2000)).expect("save"), Saved::TooLarge);
        assert_eq!(s.load("/huge"), None);
        assert_eq!(s.save("/small", &listing(10)).expect("save"), Saved::Written);
    }

    #[test]
    fn the_store_is_private_and_stale_temp_files_are_removed_at_open() {
        let parent = tempfile::tempdir().expect("tempdir");
        let cache = parent.path().join("cache");
        fs::create_dir(&cache).expect("mkdir");
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = store(&cache);
        s.save("/d", &listing(1)).expect("save");
        let file = files(&cache)[0].clone();
        assert_eq!(mode(&cache), 0o700, "a looser cache directory is tightened");
        assert_eq!(mode(&cache.join(LAYOUT_DIR)), 0o700);
        assert_eq!(mode(file.parent().expect("shard")), 0o700);
        assert_eq!(mode(&file), 0o600);
        let shard = file.parent().expect("shard").to_path_buf();
        let (old, fresh) = (shard.join("ab.tmp.1.1"), shard.join("ab.tmp.2.2"));
        fs::write(&old, b"half").expect("tmp");
        fs::write(&fresh, b"in flight").expect("tmp");
        let long_ago = SystemTime::now() - 2 * STALE_TMP_AGE;
        File::options()
            .write(true)
            .open(&old)
            .expect("open")
            .set_times(FileTimes::new().set_accessed(long_ago).set_modified(long_ago))
            .expect("age it");
        let _reopened = store(&cache);
        assert!(!old.exists(), "a stale temp file is removed");
        assert!(fresh.exists(), "a recent one may belong to a live writer");
    }

    #[test]
    fn only_the_lowercase_hex_of_a_key_names_a_record() {
        let key = [0xab; 32];
        assert_eq!(unhex(&hex::encode(key)), Some(key));
        assert_eq!(unhex(&hex::encode_upper(key)), None, "file_path never writes upper case");
        assert_eq!(unhex(&format!("+b{}", &hex::encode(key)[2..])), None, "nor a sign");
        assert_eq!(unhex(&hex::encode([0xab; 31])), None, "nor another length");
    }

    #[test]
    fn a_cache_directory_that_is_a_file_fails_to_open() {
        let parent = tempfile::tempdir().expect("tempdir");
        let file = parent.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(DirStore::open(&file, MIB, "h:21", "u").is_err());
    }
}
