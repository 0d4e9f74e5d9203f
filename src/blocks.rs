//! Block fetching: cache lookups, single-flight fetches and sequential read-ahead.
//!
//! Files are read in fixed blocks (`cache::BLOCK_SIZE`). A block comes from the memory cache,
//! then the disk cache, then the server. Concurrent readers of one block wait for a single
//! fetch. One fetch is one `REST`+`RETR` that may cover a run of blocks, so a sequential
//! reader pays the FTP round trips once per run, not once per block. Read-ahead runs on a
//! small worker pool, one run per pooled connection, like `lftp pget -n`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::cache::{BLOCK_SIZE, BlockCache, FileId};
use crate::error::RemoteError;
use crate::remote::Remote;
use crate::stats::Stats;

type Block = Arc<Vec<u8>>;
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
        BlockConfig { memory_blocks: 64, workers: 4, max_window: 256, max_inflight: 512 }
    }
}

enum SlotState {
    Pending,
    Done(Block),
    Failed(String, bool),
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
        *lock(&self.state) = state;
        self.ready.notify_all();
    }
    fn wait(&self) -> Result<Block, RemoteError> {
        let mut st = lock(&self.state);
        loop {
            match &*st {
                SlotState::Pending => st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                SlotState::Done(b) => return Ok(Arc::clone(b)),
                SlotState::Failed(m, changed) => {
                    return Err(if *changed {
                        RemoteError::Changed(m.clone())
                    } else {
                        RemoteError::Protocol(m.clone())
                    });
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Job {
    file: FileRef,
    first: u64,
    count: u64,
    slots: Vec<Arc<Slot>>,
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

    /// Copies `[offset, offset+len)` of the file (clamped to its size) into a new buffer.
    pub fn read(&self, file: &FileRef, offset: u64, len: u32) -> Result<Vec<u8>, RemoteError> {
        let end = offset.saturating_add(u64::from(len)).min(file.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK_SIZE;
            let block = self.block(file, index, end.div_ceil(BLOCK_SIZE))?;
            let within = (pos - index * BLOCK_SIZE) as usize;
            let take = ((end - pos) as usize).min(block.len().saturating_sub(within));
            if take == 0 {
                return Err(RemoteError::Protocol(format!("block {index} of {} is short", file.id.path)));
            }
            out.extend_from_slice(&block[within..within + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    /// Whether a block is available without the network.
    pub fn is_cached(&self, file: &FileRef, index: u64) -> bool {
        lock(&self.memory).contains(&(file.key, index))
            || self.disk.as_ref().is_some_and(|d| d.contains(&file.id, index))
    }

    fn cached(&self, file: &FileRef, index: u64) -> Option<Block> {
        if let Some(b) = lock(&self.memory).get(&(file.key, index)) {
            return Some(Arc::clone(b));
        }
        let disk = self.disk.as_ref()?;
        let data = disk.get(&file.id, index)?;
        if data.len() != file.block_len(index) {
            return None;
        }
        Some(Arc::new(data))
    }

    /// Gets one block; a miss fetches it, together with the following missing blocks up to
    /// `run_end` when the caller already knows it will read them.
    fn block(&self, file: &FileRef, index: u64, run_end: u64) -> Result<Block, RemoteError> {
        if let Some(b) = self.cached(file, index) {
            Stats::add(&self.stats.cache_hits, 1);
            return Ok(b);
        }
        let (slots, first_is_ours) = self.claim(file, index, run_end.max(index + 1));
        if !first_is_ours {
            // Someone else is fetching it (a reader or read-ahead): wait for that one fetch.
            let slot = match slots.into_iter().next() {
                Some(s) => s,
                None => return Err(RemoteError::Protocol("no slot".into())),
            };
            return slot.wait();
        }
        Stats::add(&self.stats.cache_misses, 1);
        let first = slots.first().cloned();
        let count = slots.len() as u64;
        self.fetch_run(&Job { file: file.clone(), first: index, count, slots });
        match first {
            Some(s) => s.wait(),
            None => Err(RemoteError::Protocol("no slot".into())),
        }
    }

    /// Claims a contiguous run of blocks starting at `index` that nobody is fetching yet.
    /// Returns the slots and whether the first one was claimed by us (if not, the one slot
    /// returned is the existing fetch to wait on).
    fn claim(&self, file: &FileRef, index: u64, end: u64) -> (Vec<Arc<Slot>>, bool) {
        let mut inflight = lock(&self.inflight);
        if let Some(existing) = inflight.get(&(file.key, index)) {
            return (vec![Arc::clone(existing)], false);
        }
        let mut slots = Vec::new();
        let end = end.min(file.blocks());
        let mut i = index;
        while i < end {
            let key = (file.key, i);
            if inflight.contains_key(&key) || (i > index && self.is_cached(file, i)) {
                break;
            }
            let slot = Slot::new();
            inflight.insert(key, Arc::clone(&slot));
            slots.push(slot);
            i += 1;
        }
        (slots, true)
    }

    /// Fetches `job.count` blocks with one ranged RETR, completing each slot as its block
    /// arrives. Every slot is finished (done or failed) before this returns.
    fn fetch_run(&self, job: &Job) {
        let file = &job.file;
        let mut current = job.first;
        let end = job.first + job.count;
        let mut buf: Vec<u8> = Vec::with_capacity(file.block_len(current));
        let mut sink = |mut chunk: &[u8]| -> bool {
            while !chunk.is_empty() && current < end {
                let want = file.block_len(current) - buf.len();
                let take = want.min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if buf.len() == file.block_len(current) {
                    let block = Arc::new(std::mem::take(&mut buf));
                    self.complete(file, current, &job.slots[(current - job.first) as usize], block);
                    current += 1;
                    buf = Vec::with_capacity(if current < end { file.block_len(current) } else { 0 });
                }
            }
            current < end
        };
        let result = self.remote.read_from(&file.id.path, job.first * BLOCK_SIZE, file.size(), &mut sink);
        let failure = match result {
            Ok(_) if current >= end => None,
            Ok(_) => {
                Some((format!("{}: server sent fewer bytes than the listed size {}", file.id.path, file.size()), true))
            }
            Err(e) => {
                let changed = matches!(e, RemoteError::Changed(_));
                Some((e.to_string(), changed))
            }
        };
        if let Some((message, changed)) = failure {
            Stats::add(&self.stats.read_errors, 1);
            log::warn!("fetching {}: {message}", file.id.path);
            let mut inflight = lock(&self.inflight);
            for i in current..end {
                inflight.remove(&(file.key, i));
                job.slots[(i - job.first) as usize].finish(SlotState::Failed(message.clone(), changed));
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
                    *lock(&self.disk_failed_at) = Some(Instant::now());
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
        lock(&self.memory).put((file.key, index), Arc::clone(&block));
        lock(&self.inflight).remove(&(file.key, index));
        slot.finish(SlotState::Done(block));
    }

    /// Queues read-ahead of blocks `[first, first+count)`; blocks already cached or in flight
    /// are skipped. Returns how many blocks were queued.
    pub fn prefetch(&self, file: &FileRef, first: u64, count: u64, run: u64) -> u64 {
        let end = (first + count).min(file.blocks());
        let mut queued = 0;
        let mut i = first;
        while i < end {
            if self.inflight_blocks() >= self.config.max_inflight {
                break;
            }
            if self.is_cached(file, i) || lock(&self.inflight).contains_key(&(file.key, i)) {
                i += 1;
                continue;
            }
            let (slots, ours) = self.claim(file, i, (i + run).min(end));
            if !ours || slots.is_empty() {
                i += 1;
                continue;
            }
            let n = slots.len() as u64;
            Stats::add(&self.stats.prefetched_blocks, n);
            lock(&self.queue).push_back(Job { file: file.clone(), first: i, count: n, slots });
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
        lock(&self.disk_failed_at).is_none_or(|t| t.elapsed() >= DISK_RETRY)
    }

    fn inflight_blocks(&self) -> u64 {
        lock(&self.inflight).len() as u64
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
            let mut q = lock(&s.queue);
            loop {
                if s.shutdown.load(Ordering::SeqCst) {
                    // Wake every waiter: nobody will fetch what is still queued.
                    for job in q.drain(..) {
                        for slot in &job.slots {
                            slot.finish(SlotState::Failed("unmounting".into(), false));
                        }
                    }
                    return;
                }
                if let Some(job) = q.pop_front() {
                    break job;
                }
                let (guard, _) = s.queued.wait_timeout(q, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner());
                q = guard;
            }
        };
        s.fetch_run(&job);
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
            out.extend(chunk);
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
        assert_eq!(got, &data[off as usize..off as usize + 2880]);
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
        assert_eq!(s.read(&f, 100, 5000).expect("re-read"), &data[100..5100]);
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
                    assert_eq!(s.read(f, off, 1000).expect("read"), &data[off as usize..off as usize + 1000]);
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
        let log: Vec<(u64, u64)> = remote.log.lock().unwrap().iter().map(|(_, o, n)| (o / MIB, n / MIB)).collect();
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
        assert_eq!(s.read(&f, 0, 4096).expect("works again"), &data[..4096]);
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
        assert_eq!(s.read(&f, MIB, 4096).expect("tail"), &data[MIB as usize..]);
        assert!(s.read(&f, size, 10).expect("eof").is_empty());
        assert!(s.read(&f, size + 100, 10).expect("past eof").is_empty());
    }
}
