//! The persistent block cache on local disk.
//!
//! Each block of each remote file version lives in its own file:
//! `<dir>/v2/<hex(key)[0..2]>/<hex(key)>/<index:010>.blk`. A block file may hold the whole
//! block or only parts of it (a random read fetches a few KiB, not the block): a fixed
//! header, a table of extents (start, length, checksum), then the extents' bytes.
//!
//! Why partial blocks and not a finer granule: the header of a FITS extension or 4 KiB at a
//! random offset is a few KiB of a 1 MiB block; caching only what was fetched keeps random
//! reads small on the link, while whole-file copies still write one file per MiB (a 64 KiB
//! granule would mean 16 times more files, inodes and index entries for the same bytes).
//!
//! Format 2 (format 1 held whole blocks only; its directory `v1` is removed at open):
//! header `magic 8 | version 4 | key 32 | index 8 | block length 4 | extent count 2 | 0 2 |
//! crc32(extent table) 4 | crc32(header bytes 0..64) 4`, then per extent `start 4 | length 4 |
//! crc32(bytes) 4`, then the bytes of each extent in order. A block is served only if every
//! check holds (magic, version, the file key and index it was asked for, the block length
//! the file's size implies, extents sorted, disjoint and inside the block, the file's exact
//! size, every checksum): a torn write, a bit flip, a truncated file or a file copied over
//! another is detected, deleted and reported as a miss, never returned.
//!
//! Each per-file directory also holds `id`, the file's identity (server, user, path, size,
//! mtime; never a password), written at the file's first put, so that `mastfs cache` can say
//! which host and path a block belongs to: `magic 8 | version 4 | size 8 | mtime 8 | then
//! server, user, path each as length u32 + UTF-8 | crc32(all before) 4`. It needs no key of its
//! own: the SHA-256 of what it says must be the directory's name. Blocks written before it
//! existed have none (they are "unknown" to `mastfs cache du`); the next put to that file adds it.
//!
//! The in-memory LRU index is a hint, not the truth: the disk is. Another mount may share the
//! directory and delete or add blocks behind our back, so a load always validates what it
//! reads, treats a vanished file as a miss and adopts a valid file the index did not know.
//!
//! `mastfs cache clear|verify` delete files behind a mount's back, then touch the cache
//! directory's clear stamp (`cache_admin::ClearWatch`); a put that sees the stamp change (checked
//! at most once a second) rescans the disk and drops from the index what is gone, so the mount's
//! disk usage stays true and it does not evict live blocks to make room taken by nothing.
//!
//! Threads: FUSE threads load blocks, the cache writer threads store them (never two at once
//! for the same block), fetch threads ask `probe`. Locking: one mutex guards the index, held
//! only to update it; file I/O (reads, writes, renames, unlinks) happens outside it. A reader
//! racing an eviction either opened the file before the unlink (and reads the complete old
//! file through its descriptor) or after it (and sees a miss).

use parking_lot::{Mutex, MutexGuard};
use std::fs::{self, DirBuilder, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::BLOCK_SIZE;
use super::block::{RangeSet, Sum};
use crate::cache_admin::{ClearWatch, Verdict};

/// Version of the `FileId::key` encoding. Changing it orphans all existing blocks (they age out by LRU).
const KEY_FORMAT_VERSION: u32 = 1;
/// Name of the layout directory under the cache dir; bump together with `BLOCK_FORMAT_VERSION`.
const LAYOUT_DIR: &str = "v2";
/// Layouts of earlier formats, removed at open: nothing can read them any more.
const OLD_LAYOUT_DIRS: [&str; 1] = ["v1"];
const BLOCK_FORMAT_VERSION: u32 = 2;
const MAGIC: [u8; 8] = *b"MSTFSBLK";
const HEADER_LEN: usize = 68;
const EXTENT_LEN: usize = 12;
/// A block fragmented into more pieces than this is not worth a table; it is not stored.
pub(crate) const MAX_EXTENTS: usize = 64;
const BLOCK_EXT: &str = "blk";
/// The identity record in each per-file directory.
const ID_FILE: &str = "id";
const ID_MAGIC: [u8; 8] = *b"MSTFSFID";
const ID_FORMAT_VERSION: u32 = 1;
const TMP_MARKER: &str = ".tmp.";
/// A temp file older than this cannot belong to a put still in flight, even if its pid now
/// names a live (reused) process.
const STALE_TMP_AGE: Duration = Duration::from_secs(600);

/// Identity of one version of one remote file. A re-staged file (other size or mtime) is a
/// different FileId, so old and new blocks can never mix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    /// "host:port"
    pub(crate) server: String,
    pub(crate) user: String,
    pub(crate) path: String,
    pub(crate) size: u64,
    /// Unix seconds.
    pub(crate) mtime: i64,
}

impl FileId {
    /// SHA-256 over a length-prefixed encoding of every field, so that no two distinct ids
    /// (for instance user "ab" + path "c" versus user "a" + path "bc") encode to the same bytes.
    pub(crate) fn key(&self) -> [u8; 32] {
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
pub(crate) struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// Block files found invalid and deleted (each also counts as a miss when found by a load).
    pub(crate) corrupt: u64,
    pub(crate) evictions: u64,
    pub(crate) write_errors: u64,
    /// Bytes of the block files in the index.
    pub(crate) bytes_used: u64,
    pub(crate) blocks: u64,
}

type BlockKey = ([u8; 32], u64);

struct Index {
    /// Each block file's size.
    lru: LruCache<BlockKey, u64>,
    /// Sum of the sizes in `lru`.
    used: u64,
    /// Bytes promised to puts that are writing right now; counted against capacity so that
    /// concurrent puts cannot together overshoot it.
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

pub(crate) struct BlockCache {
    /// `<dir>/v2`
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    write_errors: AtomicU64,
    cleared: ClearWatch,
}

/// Length of block `index` of a file of `size` bytes, or None past the end.
pub(crate) fn block_len(size: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(BLOCK_SIZE)?;
    (start < size).then(|| (size - start).min(BLOCK_SIZE))
}

/// Size of the file that holds a whole block of `len` bytes.
fn whole_block_file_size(len: u64) -> u64 {
    (HEADER_LEN + EXTENT_LEN) as u64 + len
}

/// Disk space a whole file of `size` bytes takes in the cache, every block whole.
pub(crate) fn footprint(size: u64) -> u64 {
    let blocks = size.div_ceil(BLOCK_SIZE);
    size + blocks * (HEADER_LEN + EXTENT_LEN) as u64
}

impl BlockCache {
    /// Opens (creating with mode 0700 if missing; fixing to 0700 if looser) `dir`, rebuilds
    /// the LRU index from the block files on disk (oldest mtime/atime first), deletes stray
    /// temp files and earlier layouts, and evicts down to `capacity` bytes.
    pub(crate) fn open(dir: &Path, capacity: u64) -> io::Result<BlockCache> {
        make_private_dir(dir)?;
        let root = dir.join(LAYOUT_DIR);
        make_private_dir(&root)?;
        for old in OLD_LAYOUT_DIRS {
            let old = dir.join(old);
            if old.is_dir() {
                // Possibly gigabytes of files: not worth delaying the mount for.
                let spawned = std::thread::Builder::new().name("mastfs-cache-cleanup".into()).spawn(move || {
                    if let Err(e) = fs::remove_dir_all(&old) {
                        log::warn!("cache: cannot remove the old layout {}: {e}", old.display());
                    }
                });
                if let Err(e) = spawned {
                    log::warn!("cache: old layout left in place: {e}");
                }
            }
        }

        // Before the scan: a clear during it is then seen by the first put.
        let cleared = ClearWatch::new(dir);
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
            cleared,
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

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the index knows this block, and whether it is whole (judged from the file's
    /// size: no disk I/O, no LRU promotion). A true answer can still turn into a miss if
    /// another mount deleted the file.
    pub(crate) fn probe(&self, id: &FileId, index: u64) -> Option<bool> {
        let len = block_len(id.size, index)?;
        let size = *self.lock().lru.peek(&(id.key(), index))?;
        Some(size == whole_block_file_size(len))
    }

    /// Bytes of file version `id` the cache holds, judged from the index (whole blocks by
    /// their file's size; a partial block's header says how many extents its size includes).
    /// With `keep`, its blocks count as just used, in the index and in their access times
    /// (which the index is rebuilt from at the next mount), so that a warm which skips a
    /// cached file does not let it be evicted before files it fetches after.
    pub(crate) fn stored_bytes(&self, id: &FileId, keep: bool) -> u64 {
        let key = id.key();
        let mut whole = 0u64;
        let mut present = Vec::new();
        let mut partial = Vec::new();
        {
            let mut ix = self.lock();
            let mut index = 0;
            while let Some(len) = block_len(id.size, index) {
                let size = if keep { ix.lru.get(&(key, index)).copied() } else { ix.lru.peek(&(key, index)).copied() };
                match size {
                    Some(s) if s == whole_block_file_size(len) => whole += len,
                    Some(s) => partial.push((index, len, s)),
                    None => {}
                }
                if size.is_some() && keep {
                    present.push(index);
                }
                index += 1;
            }
        }
        let parts: u64 = partial.iter().map(|&(index, len, size)| self.partial_bytes(&key, index, len, size)).sum();
        for index in present {
            // Only recency across a remount is lost if this fails.
            if let Ok(f) = File::open(self.block_path(&key, index)) {
                let _ = f.set_times(FileTimes::new().set_accessed(SystemTime::now()));
            }
        }
        whole + parts
    }

    /// Data bytes of a partial block file of `size` bytes: its size less the header and the
    /// extent table, whose length the header gives. 0 if the header cannot be read or is not
    /// this block's (a later load deletes such a file).
    fn partial_bytes(&self, key: &[u8; 32], index: u64, len: u64, size: u64) -> u64 {
        let mut header = [0u8; HEADER_LEN];
        let read = File::open(self.block_path(key, index)).and_then(|mut f| f.read_exact(&mut header));
        match read.ok().and_then(|()| check_header(&header, key, index, len).ok()) {
            Some((count, _)) => size.saturating_sub((HEADER_LEN + EXTENT_LEN * count) as u64),
            None => 0,
        }
    }

    /// Reads the block's stored extents into `buf` (the block's bytes, `block_len` long) and
    /// returns which ranges it filled. A bad, truncated or mismatched file is deleted and
    /// counted as corrupt + miss; a missing one is a miss. On a miss `buf` may hold garbage,
    /// which the caller never reads (nothing is reported filled).
    pub(crate) fn load_into(&self, id: &FileId, index: u64, buf: &mut [u8]) -> Option<RangeSet> {
        let Some(expected) = block_len(id.size, index).filter(|&l| l == buf.len() as u64) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let key = id.key();
        let bk = (key, index);
        let path = self.block_path(&key, index);
        match read_block(&path, &key, index, expected, buf) {
            ReadOutcome::Valid(ranges, size, file) => {
                // Recency survives a remount through atime (relatime would update it only daily). The
                // descriptor is read-only, which futimens allows for the owner; failure only costs LRU precision.
                let _ = file.set_times(FileTimes::new().set_accessed(SystemTime::now()));
                let victims = {
                    let mut ix = self.lock();
                    if ix.lru.get(&bk) == Some(&size) {
                        Vec::new()
                    } else {
                        // Written by another mount or before a concurrent eviction raced us: adopt it.
                        ix.insert(bk, size);
                        ix.evict_over(self.capacity)
                    }
                };
                self.remove_victims(victims);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(ranges)
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

    /// `put_summed` without a known checksum: how tests store blocks.
    #[cfg(test)]
    pub(crate) fn put(&self, id: &FileId, index: u64, extents: &[(usize, &[u8])]) -> io::Result<()> {
        self.put_summed(id, index, extents, None)
    }

    /// Stores a block, whole or in parts: `extents` are (offset in the block, bytes), sorted,
    /// disjoint, non-empty and inside the block's length as `id.size` implies. Atomic: a temp
    /// file (0600) in the same directory, renamed over the old one (no fsync: a torn write is
    /// caught by the checksums). Evicts least-recently-used blocks first so usage stays ≤
    /// capacity. Errors (disk full, read-only dir) are returned so the caller can warn and
    /// carry on uncached; they leave no partial files behind. A block larger than the whole
    /// capacity is silently not stored.
    ///
    /// `known` is the CRC32 of one extent, computed as its bytes were written (`Sum`): used for
    /// the extent it names exactly, ignored otherwise. A wrong one would only make the block
    /// fail its check when read, never serve wrong bytes.
    pub(crate) fn put_summed(
        &self,
        id: &FileId,
        index: u64,
        extents: &[(usize, &[u8])],
        known: Option<Sum>,
    ) -> io::Result<()> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        let len = block_len(id.size, index)
            .ok_or_else(|| invalid(format!("block {index} is beyond the end of a {}-byte file", id.size)))?;
        if extents.is_empty() || extents.len() > MAX_EXTENTS {
            return Err(invalid(format!("{} extents; 1 to {MAX_EXTENTS} can be stored", extents.len())));
        }
        let mut at = 0u64;
        for (start, bytes) in extents {
            let (start, end) = (*start as u64, *start as u64 + bytes.len() as u64);
            if bytes.is_empty() || start < at || end > len {
                return Err(invalid(format!("extent {start}..{end} of block {index} ({len} bytes) is out of order")));
            }
            at = end;
        }
        let data_len: u64 = extents.iter().map(|(_, b)| b.len() as u64).sum();
        let size = (HEADER_LEN + EXTENT_LEN * extents.len()) as u64 + data_len;
        if size > self.capacity {
            return Ok(());
        }
        let key = id.key();
        let bk = (key, index);
        if self.cleared.changed() {
            self.resync();
        }

        let victims = {
            let mut ix = self.lock();
            ix.reserved = ix.reserved.saturating_add(size);
            ix.evict_over(self.capacity)
        };
        self.remove_victims(victims);

        let result = self.write_block(id, &key, index, len, extents, known);

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

    #[cfg(test)]
    pub(crate) fn stats(&self) -> CacheStats {
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
        self.index.lock()
    }

    fn file_dir(&self, key: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(key);
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

    /// Makes the index agree with the disk after files were deleted behind its back: drops the
    /// blocks that are gone, keeping the order of the rest, and adopts (as least recently used)
    /// those it did not know. Only readdir and metadata; the index lock is held only to swap.
    fn resync(&self) {
        let found = match scan(&self.root) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("cache: cannot rescan {} after a clear: {e}", self.root.display());
                return;
            }
        };
        let mut on_disk: std::collections::HashMap<BlockKey, Found> = found.into_iter().map(|f| (f.key, f)).collect();
        let mut ix = self.lock();
        let kept: Vec<(BlockKey, u64)> =
            ix.lru.iter().rev().filter(|(k, _)| on_disk.contains_key(*k)).map(|(k, s)| (*k, *s)).collect();
        for (k, _) in &kept {
            on_disk.remove(k);
        }
        let mut adopted: Vec<Found> = on_disk.into_values().collect();
        adopted.sort_by(|a, b| a.last_use.cmp(&b.last_use).then_with(|| a.key.cmp(&b.key)));
        let before = (ix.lru.len(), ix.used);
        ix.lru.clear();
        ix.used = 0;
        for f in adopted {
            ix.insert(f.key, f.size);
        }
        for (k, size) in kept {
            ix.insert(k, size);
        }
        log::info!(
            "cache: cleared behind this mount: index {} blocks ({} bytes) -> {} blocks ({} bytes)",
            before.0,
            before.1,
            ix.lru.len(),
            ix.used
        );
    }

    fn write_block(
        &self,
        id: &FileId,
        key: &[u8; 32],
        index: u64,
        len: u64,
        extents: &[(usize, &[u8])],
        known: Option<Sum>,
    ) -> io::Result<()> {
        let dir = self.file_dir(key);
        let path = self.block_path(key, index);
        // Each extent's checksum once: it is a pass over the bytes, as long as writing them,
        // unless it was computed as they were written.
        let table: Vec<u8> = extents
            .iter()
            .flat_map(|&(start, bytes)| {
                let crc = match known {
                    Some(k) if k.start == start && k.len == bytes.len() => k.crc,
                    _ => crc32fast::hash(bytes),
                };
                encode_extent(start, bytes.len(), crc)
            })
            .collect();
        let mut head = Vec::with_capacity(HEADER_LEN + table.len());
        head.extend_from_slice(&encode_header(key, index, len, extents.len(), &table));
        head.extend_from_slice(&table);
        // The pid in the name tells a later open whether the writer may still be alive; the
        // temp file is deleted by its own drop if anything below fails.
        let prefix = format!("{index:010}{TMP_MARKER}{}.", std::process::id());
        let create = || tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir);
        let mut created = create();
        for _ in 0..3 {
            match &created {
                // First block of this file, or the directory was just removed as empty by a failed
                // put, another mount's open or `mastfs cache clear` (which can do so again between
                // the mkdir and the create: a lost race must not count as a failing disk). Once
                // the temp file is in it, nothing removes the directory.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    created = DirBuilder::new().recursive(true).mode(0o700).create(&dir).and_then(|()| create());
                }
                _ => break,
            }
        }
        let result = created.and_then(|mut tmp| {
            // Checked on every put, not only the first: a clear may have removed it since.
            write_identity_if_missing(&dir, id);
            // Through the plain file: its errors keep their OS error code (ENOSPC, EROFS).
            let file = tmp.as_file_mut();
            file.write_all(&head)?;
            for (_, bytes) in extents {
                file.write_all(bytes)?;
            }
            tmp.persist(&path).map(drop).map_err(|e| e.error)
        });
        if result.is_err() {
            // Leave no empty directories behind either; rmdir refuses (harmlessly) if anything is in them.
            if holds_only_identity(&dir) {
                let _ = fs::remove_file(dir.join(ID_FILE));
            }
            let _ = fs::remove_dir(&dir);
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        result
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

/// Whether the identity record is all that `dir` holds: it then names nothing.
pub(crate) fn holds_only_identity(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.all(|e| e.is_ok_and(|e| e.file_name() == ID_FILE)))
}

/// Writes `dir/id` unless it is there. A failure costs only the name in `mastfs cache du`.
fn write_identity_if_missing(dir: &Path, id: &FileId) {
    let path = dir.join(ID_FILE);
    if fs::symlink_metadata(&path).is_ok() {
        return;
    }
    let prefix = format!("{ID_FILE}{TMP_MARKER}{}.", std::process::id());
    let written = tempfile::Builder::new().prefix(&prefix).tempfile_in(dir).and_then(|mut tmp| {
        tmp.as_file_mut().write_all(&encode_identity(id))?;
        tmp.persist(&path).map(drop).map_err(|e| e.error)
    });
    if let Err(e) = written {
        log::debug!("cache: cannot record the identity of {}: {e}", dir.display());
    }
}

fn encode_identity(id: &FileId) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + id.server.len() + id.user.len() + id.path.len());
    out.extend_from_slice(&ID_MAGIC);
    out.extend_from_slice(&ID_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&id.size.to_le_bytes());
    out.extend_from_slice(&id.mtime.to_le_bytes());
    for field in [&id.server, &id.user, &id.path] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The identity `bytes` record, if they are intact and name the file of `key`.
fn decode_identity(bytes: &[u8], key: &[u8; 32]) -> Result<FileId, String> {
    let (body, crc) = bytes.split_at_checked(bytes.len().saturating_sub(4)).ok_or("empty")?;
    if bytes.len() < 32 + 12 || crc32fast::hash(body) != le_u32(crc) {
        return Err("identity record checksum mismatch".into());
    }
    check_kind(body, &ID_MAGIC, ID_FORMAT_VERSION, "identity record")?;
    let size = le_u64(&body[12..20]);
    let mtime = le_u64(&body[20..28]) as i64;
    let mut at = 28;
    let mut text = || -> Result<String, String> {
        let len = body.get(at..at + 4).map(le_u32).ok_or("truncated identity record")? as usize;
        let end = (at + 4).checked_add(len).filter(|&e| e <= body.len()).ok_or("truncated identity record")?;
        let s = String::from_utf8(body[at + 4..end].to_vec()).map_err(|_| "identity record is not UTF-8")?;
        at = end;
        Ok(s)
    };
    let (server, user, path) = (text()?, text()?, text()?);
    if at != body.len() {
        return Err("bytes after the identity record".into());
    }
    let id = FileId { server, user, path, size, mtime };
    if &id.key() != key {
        return Err("identity record of another file".into());
    }
    Ok(id)
}

/// The header of a block of `len` bytes whose extent table (`count` entries) is `table`.
fn encode_header(key: &[u8; 32], index: u64, len: u64, count: usize, table: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&BLOCK_FORMAT_VERSION.to_le_bytes());
    h[12..44].copy_from_slice(key);
    h[44..52].copy_from_slice(&index.to_le_bytes());
    // Blocks are at most BLOCK_SIZE (1 MiB) and extents at most MAX_EXTENTS: both fit.
    h[52..56].copy_from_slice(&(len as u32).to_le_bytes());
    h[56..58].copy_from_slice(&(count as u16).to_le_bytes());
    h[60..64].copy_from_slice(&crc32fast::hash(table).to_le_bytes());
    let hcrc = crc32fast::hash(&h[0..64]);
    h[64..68].copy_from_slice(&hcrc.to_le_bytes());
    h
}

fn encode_extent(start: usize, len: usize, crc: u32) -> [u8; EXTENT_LEN] {
    let mut e = [0u8; EXTENT_LEN];
    e[0..4].copy_from_slice(&(start as u32).to_le_bytes());
    e[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    e
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

/// Checks that `record` (at least 12 bytes) opens with `magic` and the format `version` this
/// build writes: every record of ours begins `magic 8 | version 4`.
fn check_kind(record: &[u8], magic: &[u8; 8], version: u32, what: &str) -> Result<(), String> {
    if record[0..8] != *magic {
        return Err(format!("not a {what} (bad magic)"));
    }
    let found = le_u32(&record[8..12]);
    if found != version {
        return Err(format!("{what} of unknown format version {found}"));
    }
    Ok(())
}

/// Checks the header against the block asked for; returns the extent count and table crc.
fn check_header(h: &[u8; HEADER_LEN], key: &[u8; 32], index: u64, expected: u64) -> Result<(usize, u32), String> {
    if le_u32(&h[64..68]) != crc32fast::hash(&h[0..64]) {
        return Err("header checksum mismatch".into());
    }
    check_kind(h, &MAGIC, BLOCK_FORMAT_VERSION, "block header")?;
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
    let count = usize::from(u16::from_le_bytes([h[56], h[57]]));
    if count == 0 || count > MAX_EXTENTS {
        return Err(format!("{count} extents"));
    }
    Ok((count, le_u32(&h[60..64])))
}

/// Parses and checks the extent table: (start, length, crc) per extent.
fn check_table(table: &[u8], crc: u32, block_len: u64) -> Result<Vec<(usize, usize, u32)>, String> {
    if crc32fast::hash(table) != crc {
        return Err("extent table checksum mismatch".into());
    }
    let mut extents = Vec::with_capacity(table.len() / EXTENT_LEN);
    let mut at = 0u64;
    for e in table.chunks_exact(EXTENT_LEN) {
        let (start, len) = (u64::from(le_u32(&e[0..4])), u64::from(le_u32(&e[4..8])));
        if len == 0 || start < at || start + len > block_len {
            return Err(format!("extent {start}+{len} out of order or outside the block"));
        }
        at = start + len;
        extents.push((start as usize, len as usize, le_u32(&e[8..12])));
    }
    Ok(extents)
}

enum ReadOutcome {
    /// The ranges filled, the file's size, the open file.
    Valid(RangeSet, u64, File),
    Missing,
    Unreadable(io::Error),
    Corrupt(String, File),
}

fn read_block(path: &Path, key: &[u8; 32], index: u64, expected: u64, buf: &mut [u8]) -> ReadOutcome {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ReadOutcome::Missing,
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = file.read_exact(&mut header) {
        return ReadOutcome::Corrupt(format!("reading header: {e}"), file);
    }
    let (count, table_crc) = match check_header(&header, key, index, expected) {
        Ok(c) => c,
        Err(why) => return ReadOutcome::Corrupt(why, file),
    };
    let mut table = vec![0u8; count * EXTENT_LEN];
    if let Err(e) = file.read_exact(&mut table) {
        return ReadOutcome::Corrupt(format!("reading the extent table: {e}"), file);
    }
    let extents = match check_table(&table, table_crc, expected) {
        Ok(x) => x,
        Err(why) => return ReadOutcome::Corrupt(why, file),
    };
    let want = (HEADER_LEN + table.len() + extents.iter().map(|e| e.1).sum::<usize>()) as u64;
    if size != want {
        return ReadOutcome::Corrupt(format!("file is {size} bytes, expected {want}"), file);
    }
    for &(start, len, crc) in &extents {
        let bytes = &mut buf[start..start + len];
        if let Err(e) = file.read_exact(bytes) {
            return ReadOutcome::Corrupt(format!("reading data: {e}"), file);
        }
        if crc32fast::hash(bytes) != crc {
            return ReadOutcome::Corrupt(format!("data checksum mismatch in {start}+{len}"), file);
        }
    }
    ReadOutcome::Valid(RangeSet::from_ranges(extents.iter().map(|&(s, l, _)| s..s + l)), size, file)
}

/// Deletes `path` only if it is still the file we judged bad: a concurrent put may have
/// renamed a fresh, valid block over it since we opened it.
fn remove_if_same_file(path: &Path, file: &File) {
    let (Ok(ours), Ok(now)) = (file.metadata(), fs::symlink_metadata(path)) else {
        return;
    };
    if ours.dev() == now.dev() && ours.ino() == now.ino() {
        let _ = fs::remove_file(path);
    }
}

/// A directory name that is the lowercase hex of a key.
fn unhex_key(s: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(s, &mut key).ok()?;
    (hex::encode(key) == s).then_some(key)
}

struct Found {
    key: BlockKey,
    size: u64,
    last_use: SystemTime,
}

/// Lists the block files under `root` using readdir + metadata only, deleting stray temp
/// files, block files whose size no block can have, and empty per-file directories. Entries
/// that are not ours are left alone.
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
            if !scan_file_dir(&file_dir.path(), key, &mut found) {
                // An identity without blocks (all evicted) names nothing any more.
                let _ = fs::remove_file(file_dir.path().join(ID_FILE));
            }
            // Succeeds only when nothing is left, which is exactly when the directory is useless.
            let _ = fs::remove_dir(file_dir.path());
        }
    }
    Ok(found)
}

/// Whether `dir` still holds a block or a live writer's temp file.
fn scan_file_dir(dir: &Path, key: [u8; 32], found: &mut Vec<Found>) -> bool {
    let Some(entries) = file_dir_entries(dir) else {
        return true;
    };
    let mut busy = false;
    let largest = (HEADER_LEN + EXTENT_LEN * MAX_EXTENTS) as u64 + BLOCK_SIZE;
    for entry in entries {
        match entry {
            DirEntry::Temp { path, stale: true } => {
                let _ = fs::remove_file(path);
            }
            DirEntry::Temp { stale: false, .. } => busy = true,
            DirEntry::Block { index, path, meta } => {
                let size = meta.len();
                if size <= (HEADER_LEN + EXTENT_LEN) as u64 || size > largest {
                    let _ = fs::remove_file(path);
                    continue;
                }
                let atime = meta.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push(Found { key: (key, index), size, last_use: atime.max(mtime) });
                busy = true;
            }
        }
    }
    busy
}

/// A file in a per-file directory that is ours: a block, or a temp file of a put.
enum DirEntry {
    Block {
        index: u64,
        path: PathBuf,
        meta: fs::Metadata,
    },
    /// `stale`: its writer is gone (see `tmp_is_stale`).
    Temp {
        path: PathBuf,
        stale: bool,
    },
}

/// The blocks and temp files in the per-file directory `dir`, as a mount's scan and
/// `mastfs cache` both read it (anything else there is skipped); `None` if it cannot be read
/// (it may have vanished since its parent was listed).
fn file_dir_entries(dir: &Path) -> Option<impl Iterator<Item = DirEntry>> {
    let entries = fs::read_dir(dir).ok()?;
    Some(entries.flatten().filter_map(|entry| {
        let name = entry.file_name();
        let name = name.to_str()?;
        let meta = entry.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        if let Some((_, owner)) = name.split_once(TMP_MARKER) {
            return Some(DirEntry::Temp { stale: tmp_is_stale(owner, &meta), path: entry.path() });
        }
        let index = name
            .strip_suffix(BLOCK_EXT)
            .and_then(|n| n.strip_suffix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())?;
        Some(DirEntry::Block { index, path: entry.path(), meta })
    }))
}

/// What one per-file directory holds, as `mastfs cache` sees it.
pub(crate) struct StoredFile {
    pub(crate) dir: PathBuf,
    key: [u8; 32],
    pub(crate) identity: Identity,
    pub(crate) blocks: Vec<StoredBlock>,
    /// Temp files whose writer is gone.
    pub(crate) stale_temps: Vec<PathBuf>,
}

pub(crate) enum Identity {
    Known(FileId),
    /// Written before identities were recorded, or removed by a clear racing a put.
    Missing,
    /// A record that fails its checks: the reason.
    Damaged(String),
}

pub(crate) struct StoredBlock {
    pub(crate) index: u64,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
}

impl StoredFile {
    pub(crate) fn identity_path(&self) -> PathBuf {
        self.dir.join(ID_FILE)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.size).sum()
    }
}

/// Every per-file directory of the block cache in `cache_dir`, with its identity read and
/// checked (readdir, metadata and the small `id` files only; blocks are not opened). Nothing is
/// changed. A cache directory without a block layout holds nothing.
pub(crate) fn stored_files(cache_dir: &Path) -> io::Result<Vec<StoredFile>> {
    let mut out = Vec::new();
    for file_dir in crate::cache_admin::layout_entries(&cache_dir.join(LAYOUT_DIR))? {
        let Some(key) = file_dir.file_name().to_str().and_then(unhex_key) else { continue };
        if !file_dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        out.push(stored_file(file_dir.path(), key));
    }
    Ok(out)
}

fn stored_file(dir: PathBuf, key: [u8; 32]) -> StoredFile {
    let identity = match fs::read(dir.join(ID_FILE)) {
        Ok(bytes) => match decode_identity(&bytes, &key) {
            Ok(id) => Identity::Known(id),
            Err(why) => Identity::Damaged(why),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Identity::Missing,
        Err(e) => Identity::Damaged(format!("cannot read it: {e}")),
    };
    let mut file = StoredFile { dir, key, identity, blocks: Vec::new(), stale_temps: Vec::new() };
    // Vanished since the parent was listed (a mount evicted it): it holds nothing.
    for entry in file_dir_entries(&file.dir).into_iter().flatten() {
        match entry {
            DirEntry::Block { index, path, meta } => file.blocks.push(StoredBlock { index, path, size: meta.len() }),
            DirEntry::Temp { path, stale: true } => file.stale_temps.push(path),
            DirEntry::Temp { stale: false, .. } => {}
        }
    }
    file.blocks.sort_by_key(|b| b.index);
    file
}

/// Checks one block file exactly as a mount's load does (for a file of unknown identity,
/// everything but the block length its size implies) and deletes it if it is bad.
pub(crate) fn verify_block(file: &StoredFile, block: &StoredBlock) -> Verdict {
    let expected = match &file.identity {
        Identity::Known(id) => match block_len(id.size, block.index) {
            Some(len) => len,
            None => {
                let why = format!("block {} is past the end of a {}-byte file", block.index, id.size);
                return match File::open(&block.path) {
                    Ok(f) => {
                        remove_if_same_file(&block.path, &f);
                        Verdict::Removed(why)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::Gone,
                    Err(e) => Verdict::Unreadable(e),
                };
            }
        },
        Identity::Missing | Identity::Damaged(_) => {
            let mut header = [0u8; HEADER_LEN];
            match File::open(&block.path).and_then(|mut f| f.read_exact(&mut header)) {
                Ok(()) => u64::from(le_u32(&header[52..56])).clamp(1, BLOCK_SIZE),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Gone,
                // Too short for a header: the full check below says so and removes it.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 1,
                Err(e) => return Verdict::Unreadable(e),
            }
        }
    };
    let mut buf = vec![0u8; expected as usize];
    match read_block(&block.path, &file.key, block.index, expected, &mut buf) {
        ReadOutcome::Valid(..) => Verdict::Good,
        ReadOutcome::Missing => Verdict::Gone,
        ReadOutcome::Unreadable(e) => Verdict::Unreadable(e),
        ReadOutcome::Corrupt(why, f) => {
            remove_if_same_file(&block.path, &f);
            Verdict::Removed(why)
        }
    }
}

/// `owner` is what follows the temp marker in a temp file name: `<pid>.<random>`. A temp
/// file is stale when its writer is gone; a live writer may be another mount sharing this
/// directory, whose put we must not break.
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
    use std::fs::OpenOptions;
    use std::sync::Arc;

    /// Overhead of a block file holding a whole block.
    const H: u64 = (HEADER_LEN + EXTENT_LEN) as u64;

    impl BlockCache {
        /// The whole block, if the cache holds all of it.
        fn get(&self, id: &FileId, index: u64) -> Option<Vec<u8>> {
            let len = block_len(id.size, index)? as usize;
            let mut buf = vec![0u8; len];
            let ranges = self.load_into(id, index, &mut buf)?;
            ranges.covers(&(0..len)).then_some(buf)
        }

        fn contains(&self, id: &FileId, index: u64) -> bool {
            self.probe(id, index).is_some()
        }
    }

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
        cache.put(id, index, &[(0, &content(id, index))]).expect("put succeeds");
    }

    fn block_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("readable dir") {
                let p = e.expect("dir entry").path();
                if fs::symlink_metadata(&p).expect("metadata").is_dir() {
                    stack.push(p);
                } else if p.file_name().is_none_or(|n| n != ID_FILE) {
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
    fn a_checksum_computed_as_the_bytes_were_written_is_stored_for_its_extent_and_a_wrong_one_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a.fits", 3 * BLOCK_SIZE);
        let bytes = content(&f, 0);
        let right = Sum { start: 0, len: bytes.len(), crc: crc32fast::hash(&bytes) };
        cache.put_summed(&f, 0, &[(0, &bytes)], Some(right)).expect("put");
        assert_eq!(cache.get(&f, 0), Some(bytes.clone()));
        // A sum of another range is not used for this extent.
        let elsewhere = Sum { start: 1, len: 10, crc: 0 };
        cache.put_summed(&f, 1, &[(0, &content(&f, 1))], Some(elsewhere)).expect("put");
        assert_eq!(cache.get(&f, 1), Some(content(&f, 1)));
        // A wrong sum for the extent makes the block fail its check: it is not served.
        let wrong = Sum { crc: right.crc ^ 1, ..right };
        cache.put_summed(&f, 2, &[(0, &content(&f, 2))], Some(wrong)).expect("put");
        assert_eq!(cache.get(&f, 2), None);
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
    fn put_refuses_extents_out_of_order_outside_the_block_or_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a.fits", 5000);
        let bad: [&[(usize, &[u8])]; 5] = [
            &[],
            &[(4000, &[0u8; 1001])],
            &[(100, &[0u8; 10]), (50, &[0u8; 10])],
            &[(100, &[0u8; 10]), (105, &[0u8; 10])],
            &[(10, &[])],
        ];
        for extents in bad {
            let err = cache.put(&f, 0, extents).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{extents:?}");
        }
        let beyond = cache.put(&f, 1, &[(0, &[0u8; 10])]).expect_err("past end");
        assert_eq!(beyond.kind(), io::ErrorKind::InvalidInput);
        assert!(block_files(dir.path()).is_empty());
        assert_eq!(cache.get(&f, 0), None);
    }

    #[test]
    fn a_partial_block_keeps_its_extents_and_is_not_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = id("/p.fits", 3 * BLOCK_SIZE);
        let whole = content(&f, 1);
        let (a, b) = (&whole[100..4196], &whole[700_000..702_880]);
        {
            let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
            cache.put(&f, 1, &[(100, a), (700_000, b)]).expect("partial put");
            assert_eq!(cache.probe(&f, 1), Some(false), "known, not whole");
            assert_eq!(cache.get(&f, 1), None, "not served as a whole block");
        }
        // Across a reopen, as another mount would find it.
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("reopen");
        assert_eq!(cache.probe(&f, 1), Some(false));
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let ranges = cache.load_into(&f, 1, &mut buf).expect("partial block");
        assert_eq!(ranges.ranges(), &[100..4196, 700_000..702_880]);
        assert_eq!(&buf[100..4196], a);
        assert_eq!(&buf[700_000..702_880], b);
        // Completed later: now whole.
        put(&cache, &f, 1);
        assert_eq!(cache.probe(&f, 1), Some(true));
        assert_eq!(cache.get(&f, 1), Some(whole));
    }

    #[test]
    fn a_corrupt_extent_of_a_partial_block_is_a_miss_and_the_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/p.fits", 3 * BLOCK_SIZE);
        let whole = content(&f, 0);
        cache.put(&f, 0, &[(0, &whole[..4096]), (8192, &whole[8192..12288])]).expect("partial put");
        let path = cache.block_path(&f.key(), 0);
        for (what, at) in
            [("table", HEADER_LEN + EXTENT_LEN + 2), ("second extent", HEADER_LEN + 2 * EXTENT_LEN + 4096 + 7)]
        {
            let mut bytes = fs::read(&path).expect("block file");
            bytes[at] ^= 0x20;
            fs::write(&path, &bytes).expect("rewrite");
            let mut buf = vec![0u8; BLOCK_SIZE as usize];
            assert_eq!(cache.load_into(&f, 0, &mut buf), None, "{what}");
            assert!(!path.exists(), "{what}: deleted");
            cache.put(&f, 0, &[(0, &whole[..4096]), (8192, &whole[8192..12288])]).expect("again");
        }
        assert_eq!(cache.stats().corrupt, 2);
    }

    #[test]
    fn the_format_1_layout_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("v1/ab/abcd");
        fs::create_dir_all(&old).expect("old layout");
        fs::write(old.join("0000000000.blk"), b"format 1 block").expect("old block");
        let _cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while dir.path().join("v1").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dir.path().join("v1").exists());
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
    fn stored_bytes_counts_whole_blocks_and_the_extents_of_partial_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 64 * BLOCK_SIZE).expect("open");
        let f = id("/f", 3 * BLOCK_SIZE + 17);
        assert_eq!(cache.stored_bytes(&f, false), 0);
        put(&cache, &f, 0);
        put(&cache, &f, 3);
        let middle = content(&f, 1);
        cache.put(&f, 1, &[(10, &middle[10..4106]), (9000, &middle[9000..9100])]).expect("partial put");
        assert_eq!(cache.stored_bytes(&f, false), BLOCK_SIZE + 17 + 4096 + 100);
        put(&cache, &f, 2);
        cache.put(&f, 1, &[(0, &middle)]).expect("whole put");
        assert_eq!(cache.stored_bytes(&f, false), f.size, "every byte");
        assert_eq!(cache.stored_bytes(&id("/f", f.size + 1), false), 0, "another version holds nothing");
        assert_eq!(footprint(f.size), f.size + 4 * H);
        assert_eq!(footprint(0), 0);
    }

    #[test]
    fn stored_bytes_with_keep_saves_a_file_from_the_next_eviction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (id("/a", 1000), id("/b", 1000), id("/c", 1000));
        let cache = BlockCache::open(dir.path(), 2 * (H + 1000)).expect("open");
        put(&cache, &a, 0);
        put(&cache, &b, 0);
        assert_eq!(cache.stored_bytes(&a, false), 1000);
        assert_eq!(cache.stored_bytes(&a, true), 1000);
        put(&cache, &c, 0);
        assert!(cache.contains(&a, 0), "a was marked used after b");
        assert!(!cache.contains(&b, 0));
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
        bytes[H as usize + 1234] ^= 0x01;
        fs::write(&path, &bytes).expect("rewrite");

        assert_eq!(cache.get(&f, 0), None);
        assert!(!path.exists());
        assert!(!cache.contains(&f, 0));
        let s = cache.stats();
        assert_eq!((s.corrupt, s.misses, s.hits, s.blocks), (1, 1, 0, 0));
    }

    #[test]
    fn each_cached_file_records_whose_it_is_and_the_password_is_nowhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/stage/anonymous/x.fits", 2 * BLOCK_SIZE);
        put(&cache, &f, 0);
        put(&cache, &f, 1);
        let stored = stored_files(dir.path()).expect("stored files");
        assert_eq!(stored.len(), 1);
        match &stored[0].identity {
            Identity::Known(found) => assert_eq!(found, &f),
            _ => panic!("identity not recorded"),
        }
        assert_eq!(stored[0].blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(stored[0].bytes(), 2 * (H + BLOCK_SIZE));
        assert_eq!(mode(&stored[0].identity_path()), 0o600);

        // A record copied into another file's directory names the wrong file: not believed.
        let g = id("/other", 100);
        put(&cache, &g, 0);
        fs::copy(cache.file_dir(&f.key()).join(ID_FILE), cache.file_dir(&g.key()).join(ID_FILE)).expect("copy");
        let stored = stored_files(dir.path()).expect("stored files");
        let other = stored.iter().find(|s| s.key == g.key()).expect("g");
        assert!(matches!(&other.identity, Identity::Damaged(why) if why.contains("another file")));

        for garbage in [&b"xx"[..], &[0u8; 60][..]] {
            fs::write(cache.file_dir(&g.key()).join(ID_FILE), garbage).expect("garbage");
            let stored = stored_files(dir.path()).expect("stored files");
            let other = stored.iter().find(|s| s.key == g.key()).expect("g");
            assert!(matches!(&other.identity, Identity::Damaged(_)), "{garbage:?}");
        }

        // Removed behind the cache's back (a clear racing a put): the next put writes it again.
        fs::remove_file(cache.file_dir(&f.key()).join(ID_FILE)).expect("rm id");
        put(&cache, &f, 1);
        assert!(cache.file_dir(&f.key()).join(ID_FILE).exists());
    }

    #[test]
    fn verify_removes_a_flipped_byte_and_keeps_good_blocks_known_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
        let f = id("/a", 2 * BLOCK_SIZE + 10);
        for i in 0..3 {
            put(&cache, &f, i);
        }
        let bad = cache.block_path(&f.key(), 1);
        let mut bytes = fs::read(&bad).expect("block");
        bytes[H as usize + 77] ^= 0x20;
        fs::write(&bad, &bytes).expect("rewrite");
        let stored = stored_files(dir.path()).expect("stored");
        let verdicts: Vec<_> = stored[0].blocks.iter().map(|b| verify_block(&stored[0], b)).collect();
        assert!(matches!(verdicts[0], Verdict::Good));
        assert!(matches!(&verdicts[1], Verdict::Removed(why) if why.contains("checksum")));
        assert!(matches!(verdicts[2], Verdict::Good));
        assert!(!bad.exists());

        // Without its identity a block is still checked in full.
        fs::remove_file(cache.file_dir(&f.key()).join(ID_FILE)).expect("rm id");
        let last = cache.block_path(&f.key(), 2);
        let mut bytes = fs::read(&last).expect("block");
        *bytes.last_mut().expect("not empty") ^= 1;
        fs::write(&last, &bytes).expect("rewrite");
        let stored = stored_files(dir.path()).expect("stored");
        assert!(matches!(stored[0].identity, Identity::Missing));
        let verdicts: Vec<_> = stored[0].blocks.iter().map(|b| verify_block(&stored[0], b)).collect();
        assert!(matches!(verdicts[0], Verdict::Good));
        assert!(matches!(verdicts[1], Verdict::Removed(_)));
        assert_eq!(cache.get(&f, 0), Some(content(&f, 0)));
        assert_eq!(cache.get(&f, 2), None);
    }

    #[test]
    fn after_a_clear_the_next_put_drops_vanished_blocks_from_the_accounting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = 3 * (H + 5000);
        let cache = BlockCache::open(dir.path(), capacity).expect("open");
        let files: Vec<FileId> = (0..3).map(|n| id(&format!("/f{n}"), 5000)).collect();
        for f in &files {
            put(&cache, f, 0);
        }
        assert_eq!(cache.stats().bytes_used, capacity);
        // What `mastfs cache clear /f1` and `/f2` do: delete the files, then touch the stamp.
        fs::remove_dir_all(cache.file_dir(&files[1].key())).expect("clear f1");
        fs::remove_dir_all(cache.file_dir(&files[2].key())).expect("clear f2");
        fs::write(dir.path().join("cleared"), b"1").expect("stamp");
        let g = id("/g", 5000);
        put(&cache, &g, 0);
        let s = cache.stats();
        assert_eq!((s.blocks, s.bytes_used, s.evictions), (2, 2 * (H + 5000), 0), "f0 was not evicted for nothing");
        assert_eq!(cache.get(&files[0], 0), Some(content(&files[0], 0)));
        assert_eq!(disk_bytes(&cache.root), s.bytes_used);
    }

    #[test]
    fn an_evicted_files_identity_goes_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = id("/a", 1000);
        let file_dir = {
            let cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("open");
            put(&cache, &f, 0);
            fs::remove_file(cache.block_path(&f.key(), 0)).expect("evicted");
            cache.file_dir(&f.key())
        };
        assert!(file_dir.join(ID_FILE).exists());
        let _cache = BlockCache::open(dir.path(), 10 * BLOCK_SIZE).expect("reopen");
        assert!(!file_dir.exists());
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
        assert!(cache.put(&f, 0, &[(0, &content(&f, 0))]).is_err());
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
        let err = cache.put(&big, 0, &[(0, &content(&big, 0))]).expect_err("1 MiB block cannot fit in 256 KiB");
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
        let err = cache.put(&g, 0, &[(0, &content(&g, 0))]).expect_err("read-only");
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
                            cache.put(f, *index, &[(0, &content(f, *index))]).expect("put");
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
