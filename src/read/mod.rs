//! The read path: from a FUSE `read` to the bytes of a remote file, and back.
//!
//! Follow one `read()`:
//!
//! 1. `fuse.rs` hands the kernel's request (file handle, offset, length) to `fs.rs`, which
//!    finds the handle's `OpenFile` and calls `ReadPath::read` (this file).
//! 2. `read` tells the handle's access `Pattern` (`pattern.rs`) about the read. A reader that
//!    has read `pattern::TRIGGER` bytes in order is sequential: `Fetcher::plan`
//!    (`fetch/mod.rs`) splits what remains ahead of it among the connections as stripes, like
//!    `lftp pget`, each one transfer that runs to its stripe's end.
//! 3. `read` gathers the blocks its range touches: from memory (`memory.rs`), else from the
//!    disk cache (`disk.rs`, possibly only parts of a block), else as empty blocks to fill.
//! 4. For the bytes still missing, `Fetcher::ensure` finds the transfers that will bring
//!    them: a stripe or peek already on its way (single-flight), a peek extended over them,
//!    or a new peek for just those bytes (`Intent::Peek`).
//! 5. A fetch thread runs each transfer (`fetch/stream.rs`): `Remote::open`, then
//!    `RangeReader::read` straight into the block's buffer (`block.rs`), a claimed range at
//!    a time. Every read that lands wakes the readers waiting on that block. A transfer from
//!    a file's first byte also reads its FITS primary header as it arrives (`fits.rs`) and
//!    starts fetching the next HDU's header before anyone asks (`Fetcher::prefetch`).
//! 6. `read` returns as soon as its own range is filled — not when the block or the transfer
//!    is done — as a slice of the block (no copy) or, across blocks, a copy.
//! 7. Meanwhile the fetch thread hands each block it leaves to the cache writer
//!    (`writer.rs`), which stores it on disk off the fetch path; for a sequential reader,
//!    blocks the disk cache holds are read into memory ahead of it (`loader.rs`).
//!
//! Errors keep their kind from the transfer to `fs.rs` (a refused `RETR` is
//! `RemoteError::Unavailable`, which `error.rs` turns into `EACCES`). A read waits for its
//! bytes at most `--timeout` plus `WAIT_MARGIN` without progress, then fails (`EIO`); for
//! `TIMEOUT_ECHO` after that, a read of the same bytes through the same handle (the kernel's
//! retry of its failed read-ahead) gets the same error at once.
//!
//! Threads and locks: FUSE threads run `read`, `open`, `release`; fetch threads, loader
//! threads and the cache writer are described in their modules. Lock order across the read path: an
//! `OpenFile`'s locks (pattern, then run), then the fetcher's state, then a stream's state,
//! then the memory map, then a block's state; the buffer pool, the disk index, the writer
//! queue and an `OpenFile`'s `timed_out` are leaves.

mod block;
pub(crate) mod disk;
mod fetch;
mod fits;
mod loader;
mod memory;
mod pattern;
mod writer;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::RemoteError;
use crate::remote::{Remote, Version};
use crate::stats::Stats;
use block::{Block, Buffer, Pool};
pub(crate) use disk::{BlockCache, FileId, footprint};
use fetch::{Fetcher, Outcome, Run, Stream};
use loader::Loader;
use memory::Memory;
use pattern::Pattern;
use writer::Writer;

/// Size of one block: the unit of memory, of the disk cache's files, and of stripe
/// boundaries; the last block of a file is shorter. Random reads fetch only what they ask
/// for, so the block size costs them nothing on the link.
pub(crate) const BLOCK_SIZE: u64 = 1 << 20;

/// The I/O size `stat` reports (`st_blksize`). Buffered readers read this much at a time, and
/// the kernel's first read-ahead of a file is four times a small first read. Measured with
/// astropy's `getheader(ext=1)` on a two-HDU 1 GiB file (6.18 kernel) on the packet-level
/// link at 20 ms: a 1 MiB hint made Python read 1 MiB per header and the kernel request
/// 2–5 MiB; 64 KiB made it request 256 KiB at the first header and 68 KiB at the second (8.0
/// and 8.3 RTT in two runs); 32 KiB, 128 KiB and 36 KiB (7.3–7.4 RTT in four): on a new data connection the
/// server's congestion window brings about 14 KB, 43 KB, 101 KB, 217 KB after 1 to 4 round
/// trips, so every halving of a cold request saves about one. 16 KiB was faster still (6.7
/// RTT) but astropy's second pass over the primary header then set off a 256 KiB read-ahead
/// nobody read. `cp` and `cat` read at least 128 KiB whatever this says.
pub(crate) const IO_SIZE_HINT: u32 = 32 * 1024;

/// The kernel's read-ahead for the mount, in KiB (set through sysfs once mounted; FUSE's
/// `init` can only lower it). With the default 128 KiB a sequential reader's requests are
/// 128 KiB; from 1 MiB they are 1 MiB (the largest FUSE request, 256 pages), so a copy
/// costs an eighth of the requests, replies and wake-ups.
const KERNEL_READ_AHEAD_KB: u32 = 4096;

/// Blocks a sequential reader's disk read-ahead keeps in memory ahead of it at most.
const LOAD_AHEAD: u64 = 8;

/// How much longer than `--timeout` a read waits for its bytes without progress.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

/// For this long after a read of a handle timed out, a read of that handle that overlaps the
/// bytes it asked for fails at once with the same error. The kernel asks again, synchronously,
/// for a page whose read-ahead failed; waiting out `--timeout` once more for that retry made a
/// read on a stopped server fail only after twice `--timeout` (issue 8 item 8). Other bytes
/// (perhaps cached) are read as usual, and after this window the server is asked again.
const TIMEOUT_ECHO: Duration = Duration::from_secs(1);

/// Default of `--connections`, the number of stripes a sequential reader gets; this is the
/// one place to change it. 8, from `scripts/bench` on the packet-level link (1 GiB cold copy,
/// medians of 2): against `lftp pget -n 8`, 4 connections reached 0.49x at 20 ms and 0.61x at
/// 80 ms, 8 connections 0.59x and 0.84x, with the same peak RSS (72-74 MiB) and link bytes per
/// byte (1.01-1.04); on a 200 Mbit/s link with a one-BDP queue both reached 0.79x the link
/// rate. A server that allows fewer answers `421`, and the pool shrinks to what it allows.
pub(crate) const DEFAULT_CONNECTIONS: u16 = 8;

/// What the disk cache holds of one open file's version (`mastfs warm` asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheState {
    /// The version's size.
    pub(crate) size: u64,
    /// Its bytes on disk.
    pub(crate) on_disk: u64,
    /// The most the block cache may hold; 0 without a disk cache.
    pub(crate) capacity: u64,
    /// Whether blocks read now may reach the disk (not while a failing disk is left alone).
    pub(crate) writable: bool,
}

/// One remote file version, as open handles see it.
pub(crate) struct FileRef {
    pub(crate) id: FileId,
    key: [u8; 32],
    version: Version,
}

impl FileRef {
    fn new(id: FileId) -> FileRef {
        let key = id.key();
        let version = Version { size: id.size, mtime: id.mtime };
        FileRef { id, key, version }
    }

    pub(crate) fn size(&self) -> u64 {
        self.id.size
    }

    fn block_len(&self, index: u64) -> usize {
        // Never more than BLOCK_SIZE, so the cast cannot truncate.
        self.id.size.saturating_sub(index * BLOCK_SIZE).min(BLOCK_SIZE) as usize
    }
}

/// An open file handle's state.
pub(crate) struct OpenFile {
    file: Arc<FileRef>,
    pattern: Mutex<Pattern>,
    run: Mutex<Option<Arc<Run>>>,
    /// When a read of this handle last timed out, the bytes it asked for, and the error (see
    /// [`TIMEOUT_ECHO`]). Taken alone.
    timed_out: Mutex<Option<TimedOut>>,
}

impl OpenFile {
    pub(crate) fn path(&self) -> &str {
        &self.file.id.path
    }
}

struct TimedOut {
    at: Instant,
    range: Range<u64>,
    error: RemoteError,
}

/// Bytes of a read: a slice of one block, or a copy assembled from several (in a spare
/// block buffer when there is one, so no reply allocates and faults in a fresh MiB).
pub(crate) enum Data {
    Shared(Arc<Block>, Range<usize>),
    Assembled(Buffer, usize),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data({} bytes)", self.len())
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::Shared(b, r) => b.filled_bytes(r.clone()),
            Data::Assembled(b, len) => &b.bytes()[..*len],
            Data::Owned(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadConfig {
    /// Block buffers in memory at most (each `BLOCK_SIZE`): blocks being filled, waited on,
    /// queued for the disk, and recently read ones.
    pub(crate) memory_blocks: usize,
    /// `--timeout`.
    pub(crate) timeout: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig { memory_blocks: 64, timeout: Duration::from_secs(30) }
    }
}

pub(crate) struct ReadPath {
    memory: Arc<Memory>,
    disk: Option<Arc<BlockCache>>,
    writer: Arc<Writer>,
    fetcher: Arc<Fetcher>,
    /// Disk read-ahead (with a disk cache only).
    loader: Option<Arc<Loader>>,
    config: ReadConfig,
    stats: Arc<Stats>,
}

/// A read's deadline: `--timeout` plus a margin, pushed back whenever its bytes progress.
struct Deadline {
    at: Instant,
    step: Duration,
}

impl Deadline {
    fn new(step: Duration) -> Deadline {
        Deadline { at: Instant::now() + step, step }
    }

    fn extend(&mut self) {
        self.at = Instant::now() + self.step;
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Streams a read waits on; it stops counting as their waiter when done.
struct Waiting(Vec<Arc<Stream>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        for s in &self.0 {
            s.stop_waiting();
        }
    }
}

enum WaitEnd {
    Filled,
    /// The streams ended without these bytes: ask again.
    Retry,
}

impl ReadPath {
    pub(crate) fn new(
        remote: Arc<dyn Remote>,
        disk: Option<BlockCache>,
        config: ReadConfig,
        stats: Arc<Stats>,
    ) -> Arc<ReadPath> {
        let disk = disk.map(Arc::new);
        let pool = Pool::new(config.memory_blocks, BLOCK_SIZE as usize);
        let memory = Arc::new(Memory::new(pool));
        let writer = Writer::start(disk.clone(), Arc::clone(&stats));
        // Without the disk, stripes stay within half the memory of their reader.
        let memory_horizon = (config.memory_blocks as u64 / 2).max(2) * BLOCK_SIZE;
        let fetcher = Fetcher::new(
            remote,
            Arc::clone(&memory),
            Arc::clone(&writer),
            disk.clone(),
            Arc::clone(&stats),
            config.timeout,
            memory_horizon,
        );
        let loader = disk.as_ref().map(|d| Loader::start(Arc::clone(&memory), Arc::clone(d)));
        Arc::new(ReadPath { memory, disk, writer, fetcher, loader, config, stats })
    }

    /// A handle on one file version.
    pub(crate) fn open(&self, id: FileId) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            file: Arc::new(FileRef::new(id)),
            pattern: Mutex::new(Pattern::default()),
            run: Mutex::new(None),
            timed_out: Mutex::new(None),
        })
    }

    /// The handle is closed: its stripes stop.
    pub(crate) fn release(&self, f: &OpenFile) {
        if let Some(run) = f.run.lock().take() {
            self.fetcher.stop_run(&run);
        }
    }

    /// What the disk cache holds of `f`'s version; `keep` marks those blocks as just used.
    pub(crate) fn cache_state(&self, f: &OpenFile, keep: bool) -> CacheState {
        let (on_disk, capacity) = match &self.disk {
            Some(d) => (d.stored_bytes(&f.file.id, keep), d.capacity()),
            None => (0, 0),
        };
        CacheState { size: f.file.size(), on_disk, capacity, writable: self.writer.usable() }
    }

    /// Unmounting: transfers stop, the disk gets what is queued for it.
    pub(crate) fn stop(&self) {
        self.fetcher.stop_all();
        if let Some(l) = &self.loader {
            l.stop();
        }
        self.writer.stop();
    }

    /// The bytes `[offset, offset+len)` of the file, clamped to its size.
    pub(crate) fn read(&self, f: &OpenFile, offset: u64, len: u32) -> Result<Data, RemoteError> {
        let range = offset..offset.saturating_add(u64::from(len));
        if let Some(t) = f.timed_out.lock().as_ref()
            && t.at.elapsed() < TIMEOUT_ECHO
            && t.range.start < range.end
            && range.start < t.range.end
        {
            return Err(t.error.clone());
        }
        let result = self.read_from_server_or_cache(f, offset, len);
        if let Err(e @ RemoteError::Timeout(_)) = &result {
            *f.timed_out.lock() = Some(TimedOut { at: Instant::now(), range, error: e.clone() });
        }
        result
    }

    fn read_from_server_or_cache(&self, f: &OpenFile, offset: u64, len: u32) -> Result<Data, RemoteError> {
        let file = &f.file;
        log::trace!("read of {} at {offset}, {len} bytes", file.id.path);
        let end = offset.saturating_add(u64::from(len)).min(file.size());
        if offset >= end {
            return Ok(Data::Owned(Vec::new()));
        }
        let mut plan = self.note_access(f, offset, end);
        // Held until this read returns: a reader waiting for its bytes is not idle.
        let _reading = f.run.lock().as_ref().map(|run| run.reading());
        let mut deadline = Deadline::new(self.config.timeout + WAIT_MARGIN);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mut blocks = Vec::with_capacity((last - first + 1) as usize);
        for index in first..=last {
            let block = self.resident(file, index, &deadline)?;
            let r = within(index, offset, end);
            if block.covers(&r) {
                Stats::add(&self.stats.cache_hits, 1);
            } else {
                Stats::add(&self.stats.cache_misses, 1);
            }
            blocks.push((index, block, r));
        }
        let mut tries = 0;
        while let Some((a, b)) = missing_span(&blocks) {
            tries += 1;
            if tries > 8 {
                return Err(RemoteError::Protocol(format!("{}: bytes {a}..{b} keep slipping away", file.id.path)));
            }
            let streams = Waiting(self.fetcher.ensure(file, a, b));
            // Planned after this read's own transfer exists, so that transfer joins the run
            // and the stripes begin where it ends.
            if let Some((run, from, to)) = plan.take() {
                self.fetcher.plan(&run, file, from, to);
            }
            match self.wait(&blocks, &streams.0, &mut deadline)? {
                WaitEnd::Filled => break,
                WaitEnd::Retry => continue,
            }
        }
        if let Some((run, from, to)) = plan {
            self.fetcher.plan(&run, file, from, to);
        }
        let data = match blocks.as_slice() {
            [(_, block, r)] => Data::Shared(Arc::clone(block), r.clone()),
            _ => {
                let len = (end - offset) as usize;
                let parts = blocks.iter().map(|(_, block, r)| block.filled_bytes(r.clone()));
                match self.memory.spare_buffer().filter(|b| b.bytes().len() >= len) {
                    Some(mut buf) => {
                        let mut at = 0;
                        for part in parts {
                            buf.bytes_mut()[at..at + part.len()].copy_from_slice(part);
                            at += part.len();
                        }
                        Data::Assembled(buf, len)
                    }
                    None => Data::Owned(parts.collect::<Vec<_>>().concat()),
                }
            }
        };
        Stats::add(&self.stats.served_bytes, data.len() as u64);
        Ok(data)
    }

    /// Records the read in the handle's pattern and stops the stripes of a reader that went
    /// elsewhere. For a sequential reader whose stripes do not reach far enough ahead, returns
    /// the range to plan stripes over.
    fn note_access(&self, f: &OpenFile, offset: u64, end: u64) -> Option<(Arc<Run>, u64, u64)> {
        let access = f.pattern.lock().on_read(offset, end);
        let mut slot = f.run.lock();
        if let Some(run) = slot.as_ref()
            && (run.is_over() || !run.contains(offset))
        {
            self.fetcher.stop_run(run);
            *slot = None;
        }
        if let Some(run) = slot.as_ref() {
            run.note_read(access.position.max(end));
        }
        if !access.sequential {
            return None;
        }
        if let Some(loader) = &self.loader {
            let blocks = (self.config.memory_blocks as u64 / 4).clamp(1, LOAD_AHEAD);
            loader.ahead(&f.file, offset / BLOCK_SIZE, blocks);
        }
        let run = slot.get_or_insert_with(|| Run::new(access.run_start));
        run.note_read(access.position);
        let size = f.file.size();
        let horizon = self.horizon();
        let reach = size.min(access.position.saturating_add(horizon));
        if run.planned_to() >= size.min(access.position.saturating_add(horizon / 2)) {
            return None;
        }
        // Claimed now, so concurrent reads of this handle do not plan the same range twice.
        let from = run.planned_to().max(access.position);
        run.claim_plan(reach);
        Some((Arc::clone(run), from, reach))
    }

    /// How far ahead of a sequential reader stripes are planned: a quarter of the disk cache
    /// (so a copy does not evict its own blocks before they are read), or half of memory
    /// without a usable disk cache.
    fn horizon(&self) -> u64 {
        match &self.disk {
            Some(d) if self.writer.usable() => (d.capacity() / 4).clamp(8 * BLOCK_SIZE, 4 << 30),
            _ => (self.config.memory_blocks as u64 / 2).max(2) * BLOCK_SIZE,
        }
    }

    /// Block `index` in memory: as it is, loaded from the disk cache, or new and empty.
    fn resident(&self, file: &Arc<FileRef>, index: u64, deadline: &Deadline) -> Result<Arc<Block>, RemoteError> {
        let key = (file.key, index);
        if let Some(b) = self.memory.get(&key) {
            return Ok(self.loaded(b, deadline));
        }
        if let Some(disk) = self.disk.as_ref().filter(|d| d.probe(&file.id, index).is_some()) {
            loader::load(&self.memory, disk, file, index, deadline.at);
        }
        match self.memory.get_or_create(&key, file.block_len(index), false, deadline.at) {
            Some((block, _)) => Ok(self.loaded(block, deadline)),
            None => Err(RemoteError::Timeout(format!("{}: no free block buffer", file.id.path))),
        }
    }

    /// Waits (briefly, bounded) while someone loads the block from disk.
    fn loaded(&self, block: Arc<Block>, deadline: &Deadline) -> Arc<Block> {
        let mut g = block.lock();
        while g.loading && !deadline.passed() {
            block.wait(&mut g, deadline.at);
        }
        drop(g);
        block
    }

    /// Waits until every block's range is filled, the streams end without it, a stream
    /// fails, or the deadline passes without progress.
    fn wait(
        &self,
        blocks: &[(u64, Arc<Block>, Range<usize>)],
        streams: &[Arc<Stream>],
        deadline: &mut Deadline,
    ) -> Result<WaitEnd, RemoteError> {
        for (index, block, r) in blocks {
            let base = index * BLOCK_SIZE;
            let (a, b) = (base + r.start as u64, base + r.end as u64);
            let mine: Vec<&Arc<Stream>> = streams.iter().filter(|s| s.overlaps(a, b)).collect();
            let mut g = block.lock();
            let mut have = g.filled.overlap(r);
            loop {
                if g.filled.covers(r) {
                    break;
                }
                let now = g.filled.overlap(r);
                if now > have {
                    have = now;
                    deadline.extend();
                }
                if mine.iter().all(|s| s.has_ended()) {
                    drop(g);
                    for s in &mine {
                        if let Some(Outcome::Failed(e)) = s.outcome() {
                            return Err(e);
                        }
                    }
                    if block.covers(r) {
                        break;
                    }
                    return Ok(WaitEnd::Retry);
                }
                if deadline.passed() {
                    return Err(RemoteError::Timeout(format!(
                        "no data for bytes {a}..{b} within {}s",
                        deadline.step.as_secs()
                    )));
                }
                block.wait(&mut g, deadline.at);
            }
        }
        Ok(WaitEnd::Filled)
    }
}

/// The part of `[offset, end)` inside block `index`, as offsets in the block.
fn within(index: u64, offset: u64, end: u64) -> Range<usize> {
    let base = index * BLOCK_SIZE;
    let start = offset.max(base) - base;
    let stop = end.min(base + BLOCK_SIZE) - base;
    start as usize..stop as usize
}

/// The first and last missing byte (file offsets, end exclusive) over the blocks' ranges.
fn missing_span(blocks: &[(u64, Arc<Block>, Range<usize>)]) -> Option<(u64, u64)> {
    let mut span: Option<(u64, u64)> = None;
    for (index, block, r) in blocks {
        let base = index * BLOCK_SIZE;
        let g = block.lock();
        if let (Some(a), Some(b)) = (g.filled.first_missing(r), g.filled.last_missing_end(r)) {
            let (a, b) = (base + a as u64, base + b as u64);
            span = Some(span.map_or((a, b), |(x, _)| (x, b)));
        }
    }
    span
}

/// Raises the kernel's read-ahead for the mount at `mountpoint` to `KERNEL_READ_AHEAD_KB`
/// (its backing device's `read_ahead_kb` in sysfs). Needs root; without it the kernel's
/// default stays and only the request size suffers.
pub(crate) fn raise_kernel_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            log::debug!("read-ahead left at the kernel's default: {e}");
            return;
        }
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, KERNEL_READ_AHEAD_KB.to_string()) {
        Ok(()) => log::debug!("kernel read-ahead of the mount set to {KERNEL_READ_AHEAD_KB} KiB"),
        Err(e) => log::info!("kernel read-ahead left at its default ({path}: {e})"),
    }
}
