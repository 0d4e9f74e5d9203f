//! Block fetching: cache lookups, single-flight fetches and sequential read-ahead.
//!
//! Files are read in fixed blocks (`cache::BLOCK_SIZE`). A block comes from the memory cache,
//! then the disk cache, then the server. Concurrent readers of one block wait for a single
//! fetch. One fetch is one `REST`+`RETR` that may cover a run of blocks, so a sequential
//! reader pays the FTP round trips once per run, not once per block. Read-ahead runs on a
//! small worker pool, one run per pooled connection, like `lftp pget -n`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use crate::cache::{BLOCK_SIZE, BlockCache, FileId};
use crate::error::RemoteError;
use crate::remote::{Remote, Version};
use crate::stats::Stats;

type Block = Arc<Vec<u8>>;

/// Bytes of a read: a slice of a cached block, or a buffer assembled from several.
#[derive(Debug)]
pub enum Data {
    Shared(Block, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::Shared(b, r) => &b[r.clone()],
            Data::Owned(v) => v,
        }
    }
}
type BlockKey = ([u8; 32], u64);

/// One remote file version, as an open handle sees it.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub id: FileId,
    key: [u8; 32],
}

impl FileRef {
    pub fn new(id: FileId) -> FileRef {
        let key = id.key();
        FileRef { id, key }
    }
    pub fn size(&self) -> u64 {
        self.id.size
    }
    fn blocks(&self) -> u64 {
        self.id.size.div_ceil(BLOCK_SIZE)
    }
    fn block_len(&self, index: u64) -> usize {
        let start = index * BLOCK_SIZE;
        // Never more than BLOCK_SIZE, so the cast cannot truncate.
        self.id.size.saturating_sub(start).min(BLOCK_SIZE) as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    /// Blocks kept in memory: recent blocks, and read-ahead when the disk cache is unusable.
    pub memory_blocks: usize,
    /// Worker threads for read-ahead; also the most parallel RETRs one reader drives.
    pub workers: usize,
    /// Largest read-ahead window per file, in blocks.
    pub max_window: u64,
    /// Upper bound on blocks claimed by queued or running read-ahead, across all files.
    pub max_inflight: u64,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig { memory_blocks: 32, workers: 4, max_window: 512, max_inflight: 1024 }
    }
}

enum SlotState {
    Pending,
    Done(Block),
    Failed(RemoteError),
}

/// A block being fetched; waiters sleep on it.
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot { state: Mutex::new(SlotState::Pending), ready: Condvar::new() })
    }
    fn finish(&self, state: SlotState) {
        *self.state.lock() = state;
        self.ready.notify_all();
    }
    fn wait(&self) -> Result<Block, RemoteError> {
        let mut st = self.state.lock();
        loop {
            match &*st {
                SlotState::Pending => self.ready.wait(&mut st),
                SlotState::Done(b) => return Ok(Arc::clone(b)),
                // HOOK (offline): an offline mount's "not cached" keeps its kind to the errno;
                // other failures read as before. The read-path rewrite keeps every kind.
                SlotState::Failed(e @ (RemoteError::Changed(_) | RemoteError::Offline(_))) => return Err(e.clone()),
                SlotState::Failed(e) => return Err(RemoteError::Protocol(e.to_string())),
            }
        }
    }
}

enum Claim {
    /// New slots, in block order: the caller must fetch (or load) and finish them.
    Ours(Vec<Arc<Slot>>),
    /// Someone else is fetching the first block: wait on this.
    Theirs(Arc<Slot>),
    /// The first block is cached already.
    Cached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Network,
    Disk,
}

struct Job {
    file: FileRef,
    first: u64,
    count: u64,
    slots: Vec<Arc<Slot>>,
    source: Source,
}

pub struct BlockStore {
    remote: Arc<dyn Remote>,
    disk: Option<BlockCache>,
    disk_ok: AtomicBool,
    memory: Mutex<LruCache<BlockKey, Block>>,
    inflight: Mutex<HashMap<BlockKey, Arc<Slot>>>,
    queue: Mutex<VecDeque<Job>>,
    queued: Condvar,
    config: BlockConfig,
    stats: Arc<Stats>,
    shutdown: AtomicBool,
    disk_failed_at: Mutex<Option<Instant>>,
}

/// How long a failing disk cache is left alone before the next write is tried.
const DISK_RETRY: Duration = Duration::from_secs(30);

impl BlockStore {
    pub fn new(
        remote: Arc<dyn Remote>,
        disk: Option<BlockCache>,
        config: BlockConfig,
        stats: Arc<Stats>,
    ) -> Arc<BlockStore> {
        let cap = std::num::NonZeroUsize::new(config.memory_blocks.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        let store = Arc::new(BlockStore {
            remote,
            disk_ok: AtomicBool::new(disk.is_some()),
            disk,
            memory: Mutex::new(LruCache::new(cap)),
            inflight: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            config,
            stats,
            shutdown: AtomicBool::new(false),
            disk_failed_at: Mutex::new(None),
        });
        for i in 0..config.workers.max(1) {
            let weak = Arc::downgrade(&store);
            let spawned = std::thread::Builder::new().name(format!("mastfs-prefetch-{i}")).spawn(move || worker(weak));
            if let Err(e) = spawned {
                log::warn!("read-ahead worker not started: {e}");
            }
        }
        store
    }

    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.queued.notify_all();
    }

    /// The bytes `[offset, offset+len)` of the file, clamped to its size. A range inside one
    /// block (the common case: kernel requests are 128 KiB) is served without a copy.
    pub fn read(&self, file: &FileRef, offset: u64, len: u32) -> Result<Data, RemoteError> {
        let end = offset.saturating_add(u64::from(len)).min(file.size());
        if offset >= end {
            return Ok(Data::Owned(Vec::new()));
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let run_end = end.div_ceil(BLOCK_SIZE);
        if first == last {
            let block = self.block(file, first, run_end)?;
            let start = (offset - first * BLOCK_SIZE) as usize;
            let stop = (end - first * BLOCK_SIZE) as usize;
            if stop > block.len() {
                return Err(RemoteError::Protocol(format!("block {first} of {} is short", file.id.path)));
            }
            return Ok(Data::Shared(block, start..stop));
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK_SIZE;
            let block = self.block(file, index, run_end)?;
            let within = (pos - index * BLOCK_SIZE) as usize;
            let take = ((end - pos) as usize).min(block.len().saturating_sub(within));
            if take == 0 {
                return Err(RemoteError::Protocol(format!("block {index} of {} is short", file.id.path)));
            }
            out.extend_from_slice(&block[within..within + take]);
            pos += take as u64;
        }
        Ok(Data::Owned(out))
    }

    /// Whether a block is available without the network.
    pub fn is_cached(&self, file: &FileRef, index: u64) -> bool {
        self.memory.lock().contains(&(file.key, index))
            || self.disk.as_ref().is_some_and(|d| d.contains(&file.id, index))
    }

    fn in_memory(&self, file: &FileRef, index: u64) -> Option<Block> {
        self.memory.lock().get(&(file.key, index)).map(Arc::clone)
    }

    /// Reads a block from the disk cache into memory: the kernel reads a block in several
    /// requests, and the following ones are then spared a disk read and checksum.
    fn load_from_disk(&self, file: &FileRef, index: u64) -> Option<Block> {
        let data = self.disk.as_ref()?.get(&file.id, index)?;
        if data.len() != file.block_len(index) {
            return None;
        }
        let block = Arc::new(data);
        self.memory.lock().put((file.key, index), Arc::clone(&block));
        Some(block)
    }

    /// Gets one block; a miss fetches it, together with the following missing blocks up to
    /// `run_end` when the caller already knows it will read them. Concurrent readers of one
    /// block share one disk read or one fetch.
    fn block(&self, file: &FileRef, index: u64, run_end: u64) -> Result<Block, RemoteError> {
        // A block cached between our look and our claim is simply looked up again; a corrupt
        // one leaves the index on its first read, so this loop ends within a few turns.
        for _ in 0..4 {
            if let Some(b) = self.in_memory(file, index) {
                Stats::add(&self.stats.cache_hits, 1);
                return Ok(b);
            }
            let mut slots = match self.claim(file, index, index + 1) {
                Claim::Theirs(slot) => return slot.wait(),
                Claim::Cached => {
                    if let Some(b) = self.load_from_disk(file, index) {
                        Stats::add(&self.stats.cache_hits, 1);
                        return Ok(b);
                    }
                    continue;
                }
                Claim::Ours(slots) => slots,
            };
            let Some(first) = slots.first().cloned() else { continue };
            if let Some(b) = self.load_from_disk(file, index) {
                Stats::add(&self.stats.cache_hits, 1);
                self.release(file, index, &first, SlotState::Done(Arc::clone(&b)));
                return Ok(b);
            }
            Stats::add(&self.stats.cache_misses, 1);
            if run_end > index + 1
                && let Claim::Ours(more) = self.claim(file, index + 1, run_end)
            {
                slots.extend(more);
            }
            let count = slots.len() as u64;
            self.fetch_run(Job { file: file.clone(), first: index, count, slots, source: Source::Network });
            return first.wait();
        }
        Err(RemoteError::Protocol(format!("block {index} of {} keeps vanishing from the cache", file.id.path)))
    }

    /// Claims one disk-cached block for loading into memory ahead of the reader.
    fn claim_for_load(&self, file: &FileRef, index: u64) -> Claim {
        let mut inflight = self.inflight.lock();
        let key = (file.key, index);
        if inflight.contains_key(&key) || self.memory.lock().contains(&key) {
            return Claim::Cached;
        }
        let slot = Slot::new();
        inflight.insert(key, Arc::clone(&slot));
        Claim::Ours(vec![slot])
    }

    fn release(&self, file: &FileRef, index: u64, slot: &Slot, state: SlotState) {
        self.inflight.lock().remove(&(file.key, index));
        slot.finish(state);
    }

    /// Loads queued disk blocks into memory ahead of a sequential reader; a block that turns
    /// out missing or corrupt is fetched from the server instead.
    fn load_run(&self, job: Job) {
        for (i, slot) in (job.first..job.first + job.count).zip(job.slots) {
            match self.load_from_disk(&job.file, i) {
                Some(b) => self.release(&job.file, i, &slot, SlotState::Done(b)),
                None => self.fetch_run(Job {
                    file: job.file.clone(),
                    first: i,
                    count: 1,
                    slots: vec![slot],
                    source: Source::Network,
                }),
            }
        }
    }

    /// Claims a contiguous run of blocks starting at `index` that nobody is fetching and
    /// nobody has cached. Checked under the in-flight lock, which a completed fetch leaves
    /// only after its block is stored, so a block is never fetched twice.
    fn claim(&self, file: &FileRef, index: u64, end: u64) -> Claim {
        let mut inflight = self.inflight.lock();
        if let Some(existing) = inflight.get(&(file.key, index)) {
            return Claim::Theirs(Arc::clone(existing));
        }
        let mut slots = Vec::new();
        let end = end.min(file.blocks());
        let mut i = index;
        while i < end {
            let key = (file.key, i);
            if inflight.contains_key(&key) || self.is_cached(file, i) {
                break;
            }
            let slot = Slot::new();
            inflight.insert(key, Arc::clone(&slot));
            slots.push(slot);
            i += 1;
        }
        if slots.is_empty() { Claim::Cached } else { Claim::Ours(slots) }
    }

    /// Fetches `job.count` blocks with one ranged RETR, completing each slot as its block
    /// arrives. Every slot is finished (done or failed) before this returns. Slots are let go
    /// one by one as they complete: a finished slot holds its block, and a long run must not
    /// keep all of its blocks alive until its end.
    fn fetch_run(&self, job: Job) {
        let Job { file, first, count, slots, .. } = job;
        let file = &file;
        let mut slots: VecDeque<Arc<Slot>> = slots.into();
        let mut current = first;
        let end = first + count;
        let mut buf: Vec<u8> = Vec::with_capacity(file.block_len(current));
        let mut sink = |mut chunk: &[u8]| -> bool {
            while !chunk.is_empty() && current < end {
                let want = file.block_len(current) - buf.len();
                let take = want.min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if buf.len() == file.block_len(current) {
                    let block = Arc::new(std::mem::take(&mut buf));
                    if let Some(slot) = slots.pop_front() {
                        self.complete(file, current, &slot, block);
                    }
                    current += 1;
                    buf = Vec::with_capacity(if current < end { file.block_len(current) } else { 0 });
                }
            }
            current < end
        };
        log::debug!("fetching blocks {first}..{end} of {}", file.id.path);
        let version = Version { size: file.size(), mtime: file.id.mtime };
        let result = self.remote.read_from(&file.id.path, first * BLOCK_SIZE, version, &mut sink);
        log::debug!("fetched blocks {first}..{current} of {}", file.id.path);
        let failure = match result {
            Ok(_) if current >= end => None,
            Ok(_) => Some(RemoteError::Changed(format!(
                "{}: server sent fewer bytes than the listed size {}",
                file.id.path,
                file.size()
            ))),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            Stats::add(&self.stats.read_errors, 1);
            log::warn!("fetching {}: {e}", file.id.path);
            let mut inflight = self.inflight.lock();
            for (i, slot) in (current..end).zip(slots.drain(..)) {
                inflight.remove(&(file.key, i));
                slot.finish(SlotState::Failed(e.clone()));
            }
        }
    }

    fn complete(&self, file: &FileRef, index: u64, slot: &Slot, block: Block) {
        if let Some(disk) = &self.disk
            && self.disk_usable()
        {
            match disk.put(&file.id, index, &block) {
                Ok(()) => {
                    if !self.disk_ok.swap(true, Ordering::Relaxed) {
                        log::warn!("disk cache writable again");
                    }
                }
                Err(e) => {
                    Stats::add(&self.stats.cache_write_errors, 1);
                    *self.disk_failed_at.lock() = Some(Instant::now());
                    // Warn once per outage; reads go on from memory and the network.
                    if self.disk_ok.swap(false, Ordering::Relaxed) {
                        log::warn!(
                            "disk cache write failed ({e}); reading uncached, retrying the cache every {}s",
                            DISK_RETRY.as_secs()
                        );
                    }
                }
            }
        }
        self.memory.lock().put((file.key, index), Arc::clone(&block));
        self.inflight.lock().remove(&(file.key, index));
        slot.finish(SlotState::Done(block));
    }

    /// Queues read-ahead of blocks `[first, first+count)`; blocks already cached or in flight
    /// are skipped. Returns how many blocks were queued.
    pub fn prefetch(&self, file: &FileRef, first: u64, count: u64, run: u64) -> u64 {
        let end = (first + count).min(file.blocks());
        // Disk blocks are loaded into memory only a little ahead: memory is the scarce side.
        let load_end = first + (self.config.memory_blocks as u64 / 4).max(1);
        let mut queued = 0;
        let mut i = first;
        while i < end {
            if self.inflight_blocks() >= self.config.max_inflight {
                break;
            }
            let in_memory = self.memory.lock().contains(&(file.key, i));
            let on_disk = !in_memory && self.disk.as_ref().is_some_and(|d| d.contains(&file.id, i));
            if in_memory || (on_disk && i >= load_end) || self.inflight.lock().contains_key(&(file.key, i)) {
                i += 1;
                continue;
            }
            let claimed = if on_disk { self.claim_for_load(file, i) } else { self.claim(file, i, (i + run).min(end)) };
            let Claim::Ours(slots) = claimed else {
                i += 1;
                continue;
            };
            let n = slots.len() as u64;
            let source = if on_disk { Source::Disk } else { Source::Network };
            if source == Source::Network {
                Stats::add(&self.stats.prefetched_blocks, n);
            }
            self.queue.lock().push_back(Job { file: file.clone(), first: i, count: n, slots, source });
            self.queued.notify_one();
            queued += n;
            i += n;
        }
        queued
    }

    /// After a failed write the disk cache is skipped for a while (space may be freed later).
    fn disk_usable(&self) -> bool {
        if self.disk_ok.load(Ordering::Relaxed) {
            return true;
        }
        self.disk_failed_at.lock().is_none_or(|t| t.elapsed() >= DISK_RETRY)
    }

    fn inflight_blocks(&self) -> u64 {
        self.inflight.lock().len() as u64
    }

    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Whether read-ahead may land on disk; without the disk cache it must fit in memory.
    pub fn window_cap(&self) -> u64 {
        if self.disk_ok.load(Ordering::Relaxed) {
            self.config.max_window
        } else {
            (self.config.memory_blocks as u64 / 2).max(1)
        }
    }
}

fn worker(store: std::sync::Weak<BlockStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let job = {
            let mut q = s.queue.lock();
            loop {
                if s.shutdown.load(Ordering::SeqCst) {
                    // Wake every waiter: nobody will fetch what is still queued.
                    for job in q.drain(..) {
                        for slot in &job.slots {
                            slot.finish(SlotState::Failed(RemoteError::Protocol("unmounting".into())));
                        }
                    }
                    return;
                }
                if let Some(job) = q.pop_front() {
                    break job;
                }
                s.queued.wait_for(&mut q, Duration::from_secs(1));
            }
        };
        match job.source {
            Source::Network => s.fetch_run(job),
            Source::Disk => s.load_run(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeRemote, pattern};
    use crate::readahead::Readahead;

    const MIB: u64 = 1 << 20;

    fn file(path: &str, size: u64) -> FileRef {
        FileRef::new(FileId { server: "test:21".into(), user: "anonymous".into(), path: path.into(), size, mtime: 1 })
    }

    fn store(remote: &Arc<FakeRemote>, disk: Option<BlockCache>) -> Arc<BlockStore> {
        let remote: Arc<dyn Remote> = remote.clone();
        BlockStore::new(remote, disk, BlockConfig { workers: 4, ..BlockConfig::default() }, Arc::new(Stats::default()))
    }

    /// Reads the whole file the way the kernel does: 128 KiB requests, read-ahead planned per read.
    fn read_all(s: &BlockStore, f: &FileRef) -> Vec<u8> {
        let mut ra = Readahead::default();
        let mut out = Vec::new();
        let mut off = 0;
        while off < f.size() {
            if let Some(p) = ra.on_read(off, 128 * 1024, f.size(), s.window_cap(), 4) {
                s.prefetch(f, p.first, p.count, p.run);
            }
            let chunk = s.read(f, off, 128 * 1024).expect("read");
            off += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[test]
    fn a_random_read_fetches_only_its_block() {
        let data = pattern((64 * MIB) as usize, 7);
        let remote = Arc::new(FakeRemote::with_file("/big", data.clone()));
        let s = store(&remote, None);
        let f = file("/big", data.len() as u64);
        let off = 40 * MIB + 12345;
        let got = s.read(&f, off, 2880).expect("read");
        assert_eq!(&got[..], &data[off as usize..off as usize + 2880]);
        assert_eq!(remote.reads(), 1);
        assert_eq!(remote.bytes(), MIB, "one block moved, not the file");
    }

    #[test]
    fn a_re_read_never_goes_back_to_the_network() {
        let data = pattern((3 * MIB) as usize, 1);
        let remote = Arc::new(FakeRemote::with_file("/f", data.clone()));
        let s = store(&remote, None);
        let f = file("/f", data.len() as u64);
        s.read(&f, 100, 5000).expect("first read");
        let before = remote.bytes();
        assert_eq!(&s.read(&f, 100, 5000).expect("re-read")[..], &data[100..5100]);
        assert_eq!(remote.bytes(), before);
    }

    #[test]
    fn concurrent_readers_of_one_block_share_one_fetch() {
        let data = pattern((2 * MIB) as usize, 3);
        let remote = Arc::new(FakeRemote::with_file("/f", data.clone()));
        let s = store(&remote, None);
        let f = file("/f", data.len() as u64);
        std::thread::scope(|scope| {
            for i in 0..8u64 {
                let (s, f, data) = (&s, &f, &data);
                scope.spawn(move || {
                    let off = i * 1000;
                    assert_eq!(&s.read(f, off, 1000).expect("read")[..], &data[off as usize..off as usize + 1000]);
                });
            }
        });
        assert_eq!(remote.reads(), 1);
    }

    #[test]
    fn sequential_reading_is_byte_exact_and_fetches_each_byte_once() {
        let size = 40 * MIB + 777;
        let data = pattern(size as usize, 9);
        let remote = Arc::new(FakeRemote::with_file("/seq", data.clone()));
        let s = store(&remote, None);
        let f = file("/seq", size);
        assert!(read_all(&s, &f) == data, "bytes differ");
        assert_eq!(remote.bytes(), size, "no block fetched twice");
        let log: Vec<(u64, u64)> = remote.log.lock().iter().map(|(_, o, n)| (o / MIB, n / MIB)).collect();
        assert!(remote.reads() < 20, "read-ahead fetches runs, not single blocks: {log:?}");
    }

    #[test]
    fn blocks_persist_on_disk_across_a_remount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 5 * MIB + 3;
        let data = pattern(size as usize, 11);
        let remote = Arc::new(FakeRemote::with_file("/p", data.clone()));
        let f = file("/p", size);
        {
            let s = store(&remote, Some(BlockCache::open(dir.path(), 1 << 30).expect("cache")));
            read_all(&s, &f);
            s.stop();
        }
        let before = remote.bytes();
        let s = store(&remote, Some(BlockCache::open(dir.path(), 1 << 30).expect("cache")));
        assert!(read_all(&s, &f) == data);
        assert_eq!(remote.bytes(), before, "zero bytes on the wire after a remount");
    }

    #[test]
    fn a_broken_transfer_is_an_error_never_short_or_wrong_bytes() {
        let data = pattern((4 * MIB) as usize, 5);
        let remote = Arc::new(FakeRemote::with_file("/b", data.clone()));
        remote.break_after.store(MIB / 2, Ordering::SeqCst);
        let s = store(&remote, None);
        let f = file("/b", data.len() as u64);
        assert!(s.read(&f, 0, 4096).is_err());
        remote.break_after.store(0, Ordering::SeqCst);
        assert_eq!(&s.read(&f, 0, 4096).expect("works again")[..], &data[..4096]);
    }

    #[test]
    fn a_file_replaced_on_the_server_is_reported_stale() {
        let remote = Arc::new(FakeRemote::with_file("/r", pattern(3000, 1)));
        let s = store(&remote, None);
        let old = file("/r", 2000);
        assert!(matches!(s.read(&old, 0, 100), Err(RemoteError::Changed(_))));
    }

    #[test]
    fn reads_past_the_end_return_nothing_and_the_last_block_is_short() {
        let size = MIB + 10;
        let data = pattern(size as usize, 2);
        let remote = Arc::new(FakeRemote::with_file("/e", data.clone()));
        let s = store(&remote, None);
        let f = file("/e", size);
        assert_eq!(&s.read(&f, MIB, 4096).expect("tail")[..], &data[MIB as usize..]);
        assert!(s.read(&f, size, 10).expect("eof").is_empty());
        assert!(s.read(&f, size + 100, 10).expect("past eof").is_empty());
    }
}
