//! Persistent on-disk block cache.
//!
//! Every block of every remote file version lives in its own file:
//! `<dir>/v1/<hex(key)[0..2]>/<hex(key)>/<index:010>.blk`. A block file is a fixed 64-byte binary header
//! followed by the data. The header names the block (file key and index) and carries checksums, so a block is
//! served only if it is exactly the one asked for: a torn write, a bit flip, a truncated file or a file copied
//! over another is detected on read, deleted and reported as a miss.
//!
//! The in-memory LRU index is a hint, not the truth: the disk is. Another mount may share the directory and
//! delete or add blocks behind our back, so `get` always validates what it reads, treats a vanished file as a
//! miss and adopts a valid file the index did not know.
//!
//! Locking: one mutex guards the index. It is held only to update the index; file I/O (reads, writes, renames,
//! unlinks) happens outside it. A reader racing an eviction either opened the file before the unlink (and reads
//! the complete old file through its descriptor) or after it (and sees a miss).

use parking_lot::{Mutex, MutexGuard};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use sha2::{Digest, Sha256};

/// Size of one cached block; the last block of a file is shorter.
///
/// Why 1 MiB:
/// - A FITS header is a few 2880-byte records (rarely more than some tens of KiB), so reading the header of a
///   multi-GB file fetches block 0, or blocks 0 and 1 when the header straddles the boundary: at most 2 MiB.
///   2880 does not divide 2^20 and need not; a record across a boundary is served from two blocks.
/// - The kernel hands FUSE reads of at most 128 KiB (its readahead window), so one block answers 8 consecutive
///   reads. Every remote fetch pays REST + RETR round trips and a new TLS data connection; bigger blocks
///   amortise that, smaller ones would multiply it.
/// - Every block costs a file (inode, directory entry, a 64-byte header) and an entry in the index that `open`
///   rebuilds with readdir + stat; at 1 MiB a 100 GiB cache is about 100 000 files, at 64 KiB it would be 1.6 M.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Version of the `FileId::key` encoding. Changing it orphans all existing blocks (they age out by LRU).
const KEY_FORMAT_VERSION: u32 = 1;
/// Name of the layout directory under the cache dir; bump together with `BLOCK_FORMAT_VERSION`.
const LAYOUT_DIR: &str = "v1";
const BLOCK_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MSTFSBLK";
/// magic 8 | version 4 | key 32 | index 8 | data length 4 | crc32(data) 4 | crc32(header bytes 0..60) 4
const HEADER_LEN: usize = 64;
const BLOCK_EXT: &str = "blk";
const TMP_MARKER: &str = ".tmp.";
/// A temp file older than this cannot belong to a put still in flight, even if its pid now names a live
/// (reused) process.
const STALE_TMP_AGE: Duration = Duration::from_secs(600);

/// Distinguishes temp files of concurrent puts in one process, across all `BlockCache` instances.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Identity of one version of one remote file. A re-staged file (other size or mtime) is a different FileId,
/// so old and new blocks can never mix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// "host:port"
    pub server: String,
    pub user: String,
    pub path: String,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
}

impl FileId {
    /// SHA-256 over a length-prefixed encoding of every field, so that no two distinct ids (for instance user
    /// "ab" + path "c" versus user "a" + path "bc") can encode to the same bytes.
    pub fn key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"mastfs-file-id");
        h.update(KEY_FORMAT_VERSION.to_le_bytes());
        for field in [&self.server, &self.user, &self.path] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.update(self.size.to_le_bytes());
        h.update(self.mtime.to_le_bytes());
        h.finalize().into()
    }
}

/// Counters since `open` (hits … write_errors) and the current index size (bytes_used, blocks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg(test)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Block files found invalid and deleted (each also counts as a miss when found by `get`).
    pub corrupt: u64,
    pub evictions: u64,
    pub write_errors: u64,
    /// Header + data bytes of the blocks in the index.
    pub bytes_used: u64,
    pub blocks: u64,
}

type BlockKey = ([u8; 32], u64);

struct Index {
    lru: LruCache<BlockKey, u64>,
    /// Sum of the sizes in `lru`.
    used: u64,
    /// Bytes promised to puts that are writing right now; counted against capacity so that concurrent puts
    /// cannot together overshoot it.
    reserved: u64,
}

impl Index {
    fn insert(&mut self, k: BlockKey, size: u64) {
        if let Some(old) = self.lru.put(k, size) {
            self.used = self.used.saturating_sub(old);
        }
        self.used = self.used.saturating_add(size);
    }

    fn remove(&mut self, k: &BlockKey) {
        if let Some(old) = self.lru.pop(k) {
            self.used = self.used.saturating_sub(old);
        }
    }

    /// Pops least-recently-used entries until committed plus reserved bytes fit in `capacity`.
    fn evict_over(&mut self, capacity: u64) -> Vec<BlockKey> {
        let mut victims = Vec::new();
        while self.used.saturating_add(self.reserved) > capacity {
            match self.lru.pop_lru() {
                Some((k, size)) => {
                    self.used = self.used.saturating_sub(size);
                    victims.push(k);
                }
                None => break,
            }
        }
        victims
    }
}

pub struct BlockCache {
    /// `<dir>/v1`
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    write_errors: AtomicU64,
}

impl BlockCache {
    /// Opens (creating with mode 0700 if missing; fixing to 0700 if looser) `dir`, rebuilds the LRU index from the
    /// block files on disk (oldest mtime/atime first), deletes stray temp files, and evicts down to `capacity` bytes.
    pub fn open(dir: &Path, capacity: u64) -> io::Result<BlockCache> {
        make_private_dir(dir)?;
        let root = dir.join(LAYOUT_DIR);
        make_private_dir(&root)?;

        let mut found = scan(&root)?;
        // Oldest first, so that pushing in order leaves the most recently used at the front of the LRU.
        found.sort_by(|a, b| a.last_use.cmp(&b.last_use).then_with(|| a.key.cmp(&b.key)));
        let mut lru = LruCache::unbounded();
        let mut used = 0u64;
        for f in found {
            used = used.saturating_add(f.size);
            lru.put(f.key, f.size);
        }
        let cache = BlockCache {
            root,
            capacity,
            index: Mutex::new(Index { lru, used, reserved: 0 }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        };
        let victims = cache.lock().evict_over(capacity);
        cache.remove_victims(victims);
        Ok(cache)
    }

    /// Returns the block's bytes if present and valid. Verifies the header (magic, format version, file key, index,
    /// length, crc32 of the data, crc of the header); a bad, truncated or mismatched file is deleted and counted as
    /// corrupt + miss — never returned. The expected length is derived from FileId.size and the index (last block is short).
    pub fn get(&self, id: &FileId, index: u64) -> Option<Vec<u8>> {
        let Some(expected) = block_len(id.size, index) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let key = id.key();
        let bk = (key, index);
        let path = self.block_path(&key, index);
        match read_block(&path, &key, index, expected) {
            ReadOutcome::Valid(data, file) => {
                // Recency survives a remount through atime (relatime would update it only daily). The
                // descriptor is read-only, which futimens allows for the owner; failure only costs LRU precision.
                let _ = file.set_times(FileTimes::new().set_accessed(SystemTime::now()));
                let size = (HEADER_LEN as u64).saturating_add(expected);
                let victims = {
                    let mut ix = self.lock();
                    if ix.lru.get(&bk).is_some() {
                        Vec::new()
                    } else {
                        // Written by another mount or before a concurrent eviction raced us: adopt it.
                        ix.insert(bk, size);
                        ix.evict_over(self.capacity)
                    }
                };
                self.remove_victims(victims);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            ReadOutcome::Missing => {
                self.lock().remove(&bk);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            ReadOutcome::Unreadable(e) => {
                // Not provably corrupt (EIO, EACCES…): leave the file for a later attempt.
                log::debug!("cache: cannot read {}: {e}", path.display());
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            ReadOutcome::Corrupt(why, file) => {
                log::warn!("cache: discarding bad block {}: {why}", path.display());
                remove_if_same_file(&path, &file);
                self.lock().remove(&bk);
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a block atomically: write to a temp file (0600) in the same directory, fsync is NOT needed (a torn write is
    /// caught by the checksum), then rename. Evicts least-recently-used blocks first so usage stays ≤ capacity.
    /// Errors (disk full, read-only dir) are returned so the caller can warn and carry on uncached; they must leave
    /// no partial files behind.
    ///
    /// `data` must be exactly the block's length as implied by `id.size` (a short read from a file that changed
    /// on the server is refused with `InvalidInput`, so it can never be cached as if complete). A block larger
    /// than the whole capacity is silently not stored.
    pub fn put(&self, id: &FileId, index: u64, data: &[u8]) -> Result<(), io::Error> {
        let expected = block_len(id.size, index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block {index} is beyond the end of a {}-byte file", id.size),
            )
        })?;
        if data.len() as u64 != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block {index} must be {expected} bytes, got {}", data.len()),
            ));
        }
        let size = (HEADER_LEN as u64).saturating_add(expected);
        if size > self.capacity {
            return Ok(());
        }
        let key = id.key();
        let bk = (key, index);

        let victims = {
            let mut ix = self.lock();
            ix.reserved = ix.reserved.saturating_add(size);
            ix.evict_over(self.capacity)
        };
        self.remove_victims(victims);

        let result = self.write_block(&key, index, data);

        let victims = {
            let mut ix = self.lock();
            ix.reserved = ix.reserved.saturating_sub(size);
            if result.is_ok() {
                ix.insert(bk, size);
            }
            ix.evict_over(self.capacity)
        };
        self.remove_victims(victims);
        if result.is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Whether the index knows this block (no disk I/O, no LRU promotion). A true answer can still turn
    /// into a miss if another mount deleted the file.
    pub fn contains(&self, id: &FileId, index: u64) -> bool {
        self.lock().lru.contains(&(id.key(), index))
    }

    #[cfg(test)]
    pub fn stats(&self) -> CacheStats {
        let (bytes_used, blocks) = {
            let ix = self.lock();
            (ix.used, ix.lru.len() as u64)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            bytes_used,
            blocks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Nothing panics while holding the lock, and the index stays consistent if something did.
        self.index.lock()
    }

    fn file_dir(&self, key: &[u8; 32]) -> PathBuf {
        let hex = hex(key);
        self.root.join(&hex[..2]).join(&hex)
    }

    fn block_path(&self, key: &[u8; 32], index: u64) -> PathBuf {
        self.file_dir(key).join(format!("{index:010}.{BLOCK_EXT}"))
    }

    fn remove_victims(&self, victims: Vec<BlockKey>) {
        for (key, index) in victims {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            let path = self.block_path(&key, index);
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Another mount sharing the directory evicted it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cache: cannot evict {}: {e}", path.display()),
            }
        }
    }

    fn write_block(&self, key: &[u8; 32], index: u64, data: &[u8]) -> io::Result<()> {
        let dir = self.file_dir(key);
        let path = self.block_path(key, index);
        let tmp = dir.join(format!(
            "{index:010}{TMP_MARKER}{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut buf = Vec::with_capacity(HEADER_LEN + data.len());
        buf.extend_from_slice(&encode_header(key, index, data));
        buf.extend_from_slice(data);

        let written = create_tmp(&dir, &tmp).and_then(|mut f| f.write_all(&buf));
        let result = written.and_then(|()| fs::rename(&tmp, &path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            // Leave no empty directories behind either; rmdir refuses (harmlessly) if anything is in them.
            let _ = fs::remove_dir(&dir);
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        result
    }
}

/// Length of block `index` of a file of `size` bytes, or None past the end.
fn block_len(size: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(BLOCK_SIZE)?;
    (start < size).then(|| (size - start).min(BLOCK_SIZE))
}

fn create_tmp(dir: &Path, tmp: &Path) -> io::Result<File> {
    let open = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // First block of this file, or the directory was just removed as empty by a failed put or by
            // another mount's open; create it and try once more.
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            open()
        }
        other => other,
    }
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", dir.display())));
    }
    // Cached data is as private as the archive account it came from.
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn encode_header(key: &[u8; 32], index: u64, data: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&BLOCK_FORMAT_VERSION.to_le_bytes());
    h[12..44].copy_from_slice(key);
    h[44..52].copy_from_slice(&index.to_le_bytes());
    // Blocks are at most BLOCK_SIZE (1 MiB), which fits u32.
    h[52..56].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[56..60].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    let hcrc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&hcrc.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// Checks everything in the header except the data crc; returns that crc.
fn check_header(h: &[u8; HEADER_LEN], key: &[u8; 32], index: u64, expected: u64) -> Result<u32, String> {
    if le_u32(&h[60..64]) != crc32fast::hash(&h[0..60]) {
        return Err("header checksum mismatch".into());
    }
    if h[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = le_u32(&h[8..12]);
    if version != BLOCK_FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    if &h[12..44] != key {
        return Err("block belongs to another file".into());
    }
    let found = le_u64(&h[44..52]);
    if found != index {
        return Err(format!("header says block {found}"));
    }
    let len = u64::from(le_u32(&h[52..56]));
    if len != expected {
        return Err(format!("header says {len} bytes, expected {expected}"));
    }
    Ok(le_u32(&h[56..60]))
}

enum ReadOutcome {
    Valid(Vec<u8>, File),
    Missing,
    Unreadable(io::Error),
    Corrupt(String, File),
}

fn read_block(path: &Path, key: &[u8; 32], index: u64, expected: u64) -> ReadOutcome {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ReadOutcome::Missing,
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    let want = (HEADER_LEN as u64).saturating_add(expected);
    if len != want {
        return ReadOutcome::Corrupt(format!("file is {len} bytes, expected {want}"), file);
    }
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = file.read_exact(&mut header) {
        return ReadOutcome::Corrupt(format!("reading header: {e}"), file);
    }
    let data_crc = match check_header(&header, key, index, expected) {
        Ok(c) => c,
        Err(why) => return ReadOutcome::Corrupt(why, file),
    };
    let Ok(n) = usize::try_from(expected) else {
        return ReadOutcome::Corrupt("length does not fit memory".into(), file);
    };
    let mut data = vec![0u8; n];
    if let Err(e) = file.read_exact(&mut data) {
        return ReadOutcome::Corrupt(format!("reading data: {e}"), file);
    }
    if crc32fast::hash(&data) != data_crc {
        return ReadOutcome::Corrupt("data checksum mismatch".into(), file);
    }
    ReadOutcome::Valid(data, file)
}

/// Deletes `path` only if it is still the file we judged bad: a concurrent put may have renamed a fresh,
/// valid block over it since we opened it.
fn remove_if_same_file(path: &Path, file: &File) {
    let (Ok(ours), Ok(now)) = (file.metadata(), fs::symlink_metadata(path)) else {
        return;
    };
    if ours.dev() == now.dev() && ours.ino() == now.ino() {
        let _ = fs::remove_file(path);
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex_key(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut key = [0u8; 32];
    for (i, out) in key.iter_mut().enumerate() {
        *out = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(key)
}

struct Found {
    key: BlockKey,
    size: u64,
    last_use: SystemTime,
}

/// Lists the block files under `root` using readdir + metadata only, deleting stray temp files, block files
/// whose size no block can have, and empty per-file directories. Entries that are not ours are left alone.
fn scan(root: &Path) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for shard in fs::read_dir(root)? {
        let Ok(shard) = shard else { continue };
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str() else {
            continue;
        };
        if shard_name.len() != 2 || !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for file_dir in files {
            let Ok(file_dir) = file_dir else { continue };
            let name = file_dir.file_name();
            let Some(key) = name.to_str().and_then(unhex_key) else {
                continue;
            };
            if !name.to_str().is_some_and(|n| n.starts_with(shard_name))
                || !file_dir.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            scan_file_dir(&file_dir.path(), key, &mut found);
            // Succeeds only when nothing is left, which is exactly when the directory is useless.
            let _ = fs::remove_dir(file_dir.path());
        }
    }
    Ok(found)
}

fn scan_file_dir(dir: &Path, key: [u8; 32], found: &mut Vec<Found>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if let Some((_, owner)) = name.split_once(TMP_MARKER) {
            if tmp_is_stale(owner, &meta) {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        let Some(index) = name
            .strip_suffix(BLOCK_EXT)
            .and_then(|n| n.strip_suffix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let size = meta.len();
        if size <= HEADER_LEN as u64 || size > HEADER_LEN as u64 + BLOCK_SIZE {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let atime = meta.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push(Found { key: (key, index), size, last_use: atime.max(mtime) });
    }
}

/// `owner` is the `<pid>.<counter>` suffix of a temp file name. A temp file is stale when its writer is gone;
/// a live writer may be another mount sharing this directory, whose put we must not break.
fn tmp_is_stale(owner: &str, meta: &fs::Metadata) -> bool {
    let old = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > STALE_TMP_AGE);
    if old {
        return true;
    }
    let pid = owner.split('.').next().and_then(|p| p.parse::<i32>().ok()).filter(|&p| p > 0);
    match pid {
        None => true,
        Some(pid) => !process_alive(pid),
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only asks whether `pid` exists. `pid` is positive, so this can
    // never address a process group or every process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const H: u64 = HEADER_LEN as u64;

    fn id(path: &str, size: u64) -> FileId {
        FileId {
            server: "archive.example:21".into(),
            user: "anonymous".into(),
            path: path.into(),
            size,
            mtime: 1_700_000_000,
        }
    }

    /// Deterministic content of a block, different for every (file, index).
    fn content(id: &FileId, index: u64) -> Vec<u8> {
        let len = block_len(id.size, index).expect("block exists") as usize;
        let seed = id.key();
        (0..len).map(|i| seed[i % 32] ^ (i as u8).wrapping_mul(31) ^ (index as u8)).collect()
    }

    fn put(cache: &BlockCache, id: &FileId, index: u64) {
        cache.put(id, index, &content(id, index)).expect("put succeeds");
    }

    fn block_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("readable dir") {
                let p = e.expect("dir entry").path();
                if fs::symlink_metadata(&p).expect("metadata").is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn disk_bytes(dir: &Path) -> u64 {
        block_files(dir).iter().map(|p| fs::metadata(p).expect("metadata").len()).sum()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn key_separates_fields_and_is_stable() {
        let a = FileId { server: "h:21".into(), user: "ab".into(), path: "c".into(), size: 1, mtime: 2 };
        let b = FileId { user: "a".into(), path: "bc".into(), ..a.clone() };
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), a.clone().key());
    }

    #[test]
    fn block_len_makes_the_last_block_short() {
        assert_eq!(block_len(0, 0), None);
        assert_eq!(block_len(10, 0), Some(10));
        assert_eq!(block_len(BLOCK_SIZE, 0), Some(BLOCK_SIZE));
        assert_eq!(block_len(BLOCK_SIZE, 1), None);
        assert_eq!(block_len(2 * BLOCK_SIZE + 7, 2), Some(7));
        assert_eq!(block_len(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn put_then_get_returns_the_same_bytes_including_a_short_last_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a.fits", BLOCK_SIZE + 2880);
        put(&cache, &f, 0);
        put(&cache, &f, 1);
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
        let last = cache.get(&f, 1).expect("last block cached");
        assert_eq!(last.len(), 2880);
        assert_eq!(last, content(&f, 1));
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.blocks), (2, 0, 2));
        assert_eq!(s.bytes_used, 2 * H + BLOCK_SIZE + 2880);
    }

    #[test]
    fn putting_the_same_block_again_counts_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a", 4000);
        put(&cache, &f, 0);
        put(&cache, &f, 0);
        let s = cache.stats();
        assert_eq!((s.blocks, s.bytes_used), (1, H + 4000));
        assert_eq!(disk_bytes(dir.path()), s.bytes_used);
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
    }

    #[test]
    fn put_refuses_data_of_the_wrong_length_or_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a.fits", 5000);
        let short = cache.put(&f, 0, &[0u8; 4000]).expect_err("short block");
        assert_eq!(short.kind(), io::ErrorKind::InvalidInput);
        let beyond = cache.put(&f, 1, &[0u8; 10]).expect_err("past end");
        assert_eq!(beyond.kind(), io::ErrorKind::InvalidInput);
        assert!(block_files(dir.path()).is_empty());
        assert_eq!(cache.get(&f, 0), None);
    }

    #[test]
    fn eviction_order_is_lru_and_get_promotes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c, d) = (id("/a", 1000), id("/b", 1000), id("/c", 1000), id("/d", 1000));
        let cache = BlockCache::open(dir.path(), 3 * (H + 1000)).expect("open");
        put(&cache, &a, 0);
        put(&cache, &b, 0);
        put(&cache, &c, 0);
        assert!(cache.get(&a, 0).is_some()); // a is now the most recent; b the least
        put(&cache, &d, 0);
        assert!(!cache.contains(&b, 0));
        assert!(cache.contains(&a, 0) && cache.contains(&c, 0) && cache.contains(&d, 0));
        assert_eq!(cache.get(&b, 0), None, "evicted file is gone from disk too");
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(block_files(dir.path()).len(), 3);
    }

    #[test]
    fn contains_does_not_promote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (id("/a", 1000), id("/b", 1000), id("/c", 1000));
        let cache = BlockCache::open(dir.path(), 2 * (H + 1000)).expect("open");
        put(&cache, &a, 0);
        put(&cache, &b, 0);
        assert!(cache.contains(&a, 0));
        put(&cache, &c, 0);
        assert!(!cache.contains(&a, 0));
        assert!(cache.contains(&b, 0));
    }

    #[test]
    fn size_bound_holds_after_many_puts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = 3 * BLOCK_SIZE + 12_345;
        let cache = BlockCache::open(dir.path(), capacity).expect("open");
        for n in 0..40u64 {
            // Mix of full blocks and short single-block files of varying sizes.
            let f = id(&format!("/f{n}"), 1 + (n * 97_531) % (2 * BLOCK_SIZE));
            for index in 0..2 {
                if block_len(f.size, index).is_some() {
                    put(&cache, &f, index);
                }
                let s = cache.stats();
                assert!(s.bytes_used <= capacity, "{s:?}");
                assert!(disk_bytes(dir.path()) <= capacity);
                assert_eq!(disk_bytes(dir.path()), s.bytes_used);
            }
        }
        assert!(cache.stats().evictions > 0);
    }

    #[test]
    fn a_block_larger_than_the_capacity_is_not_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 500).expect("open");
        let f = id("/a", 1000);
        put(&cache, &f, 0);
        assert!(!cache.contains(&f, 0));
        assert!(block_files(dir.path()).is_empty());
    }

    #[test]
    fn corrupted_byte_in_data_is_a_miss_and_the_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a", 3000);
        put(&cache, &f, 0);
        let path = cache.block_path(&f.key(), 0);
        let mut bytes = fs::read(&path).expect("block file");
        bytes[HEADER_LEN + 1234] ^= 0x01;
        fs::write(&path, &bytes).expect("rewrite");

        assert_eq!(cache.get(&f, 0), None);
        assert!(!path.exists());
        assert!(!cache.contains(&f, 0));
        let s = cache.stats();
        assert_eq!((s.corrupt, s.misses, s.hits, s.blocks), (1, 1, 0, 0));
    }

    #[test]
    fn corrupted_byte_in_header_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a", 3000);
        put(&cache, &f, 0);
        let path = cache.block_path(&f.key(), 0);
        let mut bytes = fs::read(&path).expect("block file");
        bytes[53] ^= 0x80; // inside the length field
        fs::write(&path, &bytes).expect("rewrite");
        assert_eq!(cache.get(&f, 0), None);
        assert!(!path.exists());
        assert_eq!(cache.stats().corrupt, 1);
    }

    #[test]
    fn truncated_file_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a", 2 * BLOCK_SIZE);
        put(&cache, &f, 1);
        let path = cache.block_path(&f.key(), 1);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(H + BLOCK_SIZE / 2).expect("truncate");
        drop(file);
        assert_eq!(cache.get(&f, 1), None);
        assert!(!path.exists());
        assert_eq!(cache.stats().corrupt, 1);
    }

    #[test]
    fn a_header_for_another_key_or_index_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        // Same lengths everywhere, so only the header's key or index can tell the blocks apart.
        let a = id("/a", 3 * BLOCK_SIZE);
        let b = id("/b", 3 * BLOCK_SIZE);
        for index in 0..3 {
            put(&cache, &a, index);
        }
        put(&cache, &b, 0);

        // Another file's block 0 copied over our block 0: only the key differs.
        fs::copy(cache.block_path(&b.key(), 0), cache.block_path(&a.key(), 0)).expect("copy");
        // Our own block 2 copied over our block 1: only the index differs.
        fs::copy(cache.block_path(&a.key(), 2), cache.block_path(&a.key(), 1)).expect("copy");

        assert_eq!(cache.get(&a, 0), None);
        assert_eq!(cache.get(&a, 1), None);
        assert_eq!(cache.stats().corrupt, 2);
        assert!(!cache.block_path(&a.key(), 0).exists());
        assert!(!cache.block_path(&a.key(), 1).exists());
        assert_eq!(cache.get(&a, 2), Some(content(&a, 2)));
        assert_eq!(cache.get(&b, 0), Some(content(&b, 0)));
    }

    #[test]
    fn identity_change_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a.fits", 3 * BLOCK_SIZE);
        put(&cache, &f, 0);
        let variants = [
            FileId { size: f.size + 1, ..f.clone() },
            FileId { mtime: f.mtime + 1, ..f.clone() },
            FileId { user: "someone-else".into(), ..f.clone() },
            FileId { server: "other.example:21".into(), ..f.clone() },
            FileId { path: "/b.fits".into(), ..f.clone() },
        ];
        for v in &variants {
            assert_eq!(cache.get(v, 0), None, "{v:?}");
            assert!(!cache.contains(v, 0));
        }
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
        assert_eq!(cache.stats().corrupt, 0);
    }

    #[test]
    fn put_is_atomic_and_reopen_cleans_up_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = id("/a", 3 * BLOCK_SIZE);
        let (tmp, half) = {
            let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
            put(&cache, &f, 0);
            put(&cache, &f, 1);
            // A put that died before its rename: pid 2^31-1 is above any possible pid_max.
            let tmp = cache.file_dir(&f.key()).join("0000000002.tmp.2147483647.0");
            fs::write(&tmp, b"partial").expect("tmp");
            // A block file cut short, as a crash without fsync can leave it.
            let half = cache.block_path(&f.key(), 1);
            let file = OpenOptions::new().write(true).open(&half).expect("open");
            file.set_len(H + 1000).expect("truncate");
            (tmp, half)
        };
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("reopen");
        assert!(!tmp.exists(), "stray temp file removed");
        assert_eq!(cache.get(&f, 1), None, "half-written block is a miss");
        assert!(!half.exists());
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
    }

    #[test]
    fn reopen_keeps_a_temp_file_of_a_live_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = id("/a", 1000);
        let tmp = {
            let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
            put(&cache, &f, 0);
            let tmp = cache.file_dir(&f.key()).join(format!("0000000001.tmp.{}.99", std::process::id()));
            fs::write(&tmp, b"in flight").expect("tmp");
            tmp
        };
        let _cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("reopen");
        assert!(tmp.exists());
    }

    #[test]
    fn rebuild_after_reopen_serves_blocks_and_respects_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<FileId> = (0..4).map(|n| id(&format!("/f{n}"), 5000)).collect();
        {
            let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
            for f in &files {
                put(&cache, f, 0);
            }
        }
        // Pin the last-use times: f2 oldest, then f0, f3, f1.
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        for (n, age) in [(2usize, 0u64), (0, 10), (3, 20), (1, 30)] {
            let t = base + Duration::from_secs(age);
            let file = File::options().write(true).open(cache.block_path(&files[n].key(), 0)).expect("block file");
            file.set_times(FileTimes::new().set_accessed(t).set_modified(t)).expect("set times");
        }
        drop(cache);

        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("reopen");
        let s = cache.stats();
        assert_eq!((s.blocks, s.bytes_used), (4, 4 * (H + 5000)));
        assert!(files.iter().all(|f| cache.contains(f, 0)));
        drop(cache);

        let cache = BlockCache::open(dir.path(), 2 * (H + 5000)).expect("reopen smaller");
        let s = cache.stats();
        assert_eq!((s.blocks, s.evictions), (2, 2));
        assert!(s.bytes_used <= 2 * (H + 5000));
        assert_eq!(disk_bytes(dir.path()), s.bytes_used);
        assert!(!cache.contains(&files[2], 0) && !cache.contains(&files[0], 0));
        assert_eq!(cache.get(&files[3], 0), Some(content(&files[3], 0)));
        assert_eq!(cache.get(&files[1], 0), Some(content(&files[1], 0)));
    }

    #[test]
    fn a_second_mount_on_the_same_dir_finds_blocks_and_a_vanished_block_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open one");
        let two = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open two");
        let f = id("/shared", 4000);
        put(&one, &f, 0);
        assert!(!two.contains(&f, 0));
        assert_eq!(two.get(&f, 0), Some(content(&f, 0)));
        assert!(two.contains(&f, 0), "adopted into the index");

        fs::remove_file(one.block_path(&f.key(), 0)).expect("other mount evicts");
        assert_eq!(one.get(&f, 0), None);
        assert!(!one.contains(&f, 0));
        let s = one.stats();
        assert_eq!((s.misses, s.corrupt, s.bytes_used), (1, 0, 0));
    }

    #[test]
    fn directory_mode_is_0700_and_file_mode_is_0600() {
        let parent = tempfile::tempdir().expect("tempdir");
        let loose = parent.path().join("loose");
        fs::create_dir(&loose).expect("mkdir");
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).expect("chmod");
        let cache = BlockCache::open(&loose, 10 * BLOCK_SIZE).expect("open");
        assert_eq!(mode(&loose), 0o700, "looser existing dir is tightened");

        let fresh = parent.path().join("new/nested");
        let _other = BlockCache::open(&fresh, BLOCK_SIZE).expect("open new");
        assert_eq!(mode(&fresh), 0o700);

        let f = id("/a", 100);
        put(&cache, &f, 0);
        let block = cache.block_path(&f.key(), 0);
        assert_eq!(mode(&block), 0o600);
        let file_dir = block.parent().expect("file dir");
        let shard = file_dir.parent().expect("shard dir");
        for d in [file_dir, shard, &cache.root] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
    }

    #[test]
    fn open_fails_when_dir_is_a_regular_file() {
        let parent = tempfile::tempdir().expect("tempdir");
        let file = parent.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(BlockCache::open(&file, BLOCK_SIZE).is_err());
    }

    #[test]
    fn put_into_an_unwritable_layout_returns_err_and_leaves_nothing() {
        // chmod does not stop root, so make the layout directory a regular file instead.
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        fs::remove_dir(&cache.root).expect("rmdir v1");
        fs::write(&cache.root, b"not a directory").expect("file");
        let f = id("/a", 1000);
        assert!(cache.put(&f, 0, &content(&f, 0)).is_err());
        let s = cache.stats();
        assert_eq!((s.write_errors, s.blocks, s.bytes_used), (1, 0, 0));
        assert_eq!(block_files(dir.path()), vec![cache.root.clone()]);
        assert_eq!(cache.get(&f, 0), None);
    }

    /// A tmpfs mounted over a temp dir for the duration of a test, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        /// None when not root or mounting is not allowed (e.g. inside an unprivileged container).
        fn mount(size: &str) -> Option<Tmpfs> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return None;
            }
            let dir = tempfile::tempdir().ok()?;
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(dir.path())
                .status()
                .ok()?;
            status.success().then_some(Tmpfs(dir))
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn remount(&self, opts: &str) -> bool {
            std::process::Command::new("mount").args(["-o", opts]).arg(self.path()).status().is_ok_and(|s| s.success())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.path()).status();
        }
    }

    #[test]
    fn put_on_a_full_disk_returns_err_and_leaves_nothing() {
        let Some(fs_) = Tmpfs::mount("256k") else {
            eprintln!("skipped: needs root and tmpfs mounts");
            return;
        };
        let cache = BlockCache::open(fs_.path(), 100 * BLOCK_SIZE).expect("open");
        let small = id("/small", 1000);
        put(&cache, &small, 0);
        let big = id("/big", 3 * BLOCK_SIZE);
        let err = cache.put(&big, 0, &content(&big, 0)).expect_err("1 MiB block cannot fit in 256 KiB");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        let s = cache.stats();
        assert_eq!((s.write_errors, s.blocks), (1, 1));
        assert_eq!(block_files(fs_.path()), vec![cache.block_path(&small.key(), 0)], "no temp file left behind");
        assert!(!cache.file_dir(&big.key()).exists(), "nor an empty directory");
        assert_eq!(cache.get(&small, 0), Some(content(&small, 0)));
    }

    #[test]
    fn put_on_a_read_only_mount_returns_err_and_reads_still_work() {
        let Some(fs_) = Tmpfs::mount("4m") else {
            eprintln!("skipped: needs root and tmpfs mounts");
            return;
        };
        let cache = BlockCache::open(fs_.path(), 100 * BLOCK_SIZE).expect("open");
        let f = id("/a", 5000);
        let g = id("/b", 5000);
        put(&cache, &f, 0);
        assert!(fs_.remount("remount,ro"), "remount read-only");
        let err = cache.put(&g, 0, &content(&g, 0)).expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
        assert_eq!(cache.stats().write_errors, 1);
        assert_eq!(block_files(fs_.path()), vec![cache.block_path(&f.key(), 0)]);
    }

    #[test]
    fn concurrent_put_and_get_from_8_threads_never_return_wrong_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for a few blocks only, so evictions race with reads and writes all the time.
        let capacity = 2 * (H + BLOCK_SIZE) + 6 * (H + 7000);
        let cache = Arc::new(BlockCache::open(dir.path(), capacity).expect("open"));
        let mut blocks: Vec<(FileId, u64)> = (0..6).map(|n| (id(&format!("/s{n}"), 7000), 0)).collect();
        let big = id("/big", 2 * BLOCK_SIZE + 100);
        blocks.extend((0..3).map(|i| (big.clone(), i)));
        let blocks = Arc::new(blocks);

        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let cache = Arc::clone(&cache);
                let blocks = Arc::clone(&blocks);
                std::thread::spawn(move || {
                    let mut hits = 0u64;
                    for step in 0..150u64 {
                        let (f, index) = &blocks[((t * 7 + step * 5) % blocks.len() as u64) as usize];
                        if (t + step) % 3 == 0 {
                            cache.put(f, *index, &content(f, *index)).expect("put");
                        } else if let Some(data) = cache.get(f, *index) {
                            assert!(data == content(f, *index), "wrong bytes for {f:?} #{index}");
                            hits += 1;
                        }
                    }
                    hits
                })
            })
            .collect();
        let hits: u64 = threads.into_iter().map(|h| h.join().expect("thread")).sum();

        let s = cache.stats();
        assert_eq!(s.corrupt, 0, "readers never see a half-written block");
        assert_eq!(s.hits, hits);
        assert!(s.bytes_used <= capacity);
        assert!(disk_bytes(dir.path()) <= capacity);
        assert!(!block_files(dir.path()).iter().any(|p| p.to_string_lossy().contains(TMP_MARKER)));
    }
}
