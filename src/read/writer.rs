//! The cache writer: threads that store filled blocks on disk, off the fetch path.
//!
//! Fetch threads hand over a block when they leave it (`offer`); a writer takes what is
//! filled at that moment, merges it with what the disk already holds of the block (another
//! read may have stored other parts) and writes it. The queue is bounded in bytes: when the
//! disk is slower than the network, fetch threads wait for room, which slows the transfers
//! instead of growing memory. A failing disk (full, read-only, gone) turns the cache off for a
//! while: offers are dropped, reads go on from memory and the network, and a write is tried
//! again after `DISK_RETRY`.
//!
//! Why `WRITERS` threads and not one: on a busy machine a single writer gets one thread's
//! share of the CPU, and a cold copy's fetch threads spent about half their time waiting for
//! room in its queue (on 2 cores at 20 ms, 800–930 of 1,024 offers of a 1 GiB copy waited,
//! 13–20 s in all, with a 16 or a 32 MiB queue). Two writers never write the same block at
//! once: a job whose block is being written waits for that write to end, so a block's later
//! snapshot always lands after its earlier one.
//!
//! Threads: fetch threads (`offer`), the writer threads, the unmounting thread (`stop`).
//! Locks: the queue lock, alone; a writer takes a block's lock (to snapshot it) and the
//! disk index lock only after releasing the queue lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::FileRef;
use super::block::Block;
use super::disk::{BlockCache, MAX_EXTENTS};
use crate::stats::Stats;

/// Bytes of blocks waiting for the disk at most; fetch threads wait beyond this.
const QUEUE_BYTES: usize = 32 << 20;
/// Writer threads.
const WRITERS: usize = 3;
/// After a failed write the disk cache is left alone this long (space may be freed later).
const DISK_RETRY: Duration = Duration::from_secs(30);
/// A fetch thread waits this long at most for room in the queue, then drops its offer (a
/// disk that hangs must not hang reads).
const OFFER_WAIT: Duration = Duration::from_secs(5);

struct Job {
    file: Arc<FileRef>,
    index: u64,
    block: Arc<Block>,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// The lengths of the queued blocks.
    bytes: usize,
    stopping: bool,
    /// Blocks a writer has taken and not finished writing.
    writing: Vec<Arc<Block>>,
}

impl Queue {
    /// The oldest job whose block no writer is writing now.
    fn take(&mut self) -> Option<Job> {
        let at = self.jobs.iter().position(|j| !self.writing.iter().any(|w| Arc::ptr_eq(w, &j.block)))?;
        let job = self.jobs.remove(at)?;
        self.bytes -= job.block.len();
        self.writing.push(Arc::clone(&job.block));
        Some(job)
    }

    fn idle(&self) -> bool {
        self.jobs.is_empty() && self.writing.is_empty()
    }
}

pub(crate) struct Writer {
    disk: Option<Arc<BlockCache>>,
    queue: Mutex<Queue>,
    /// Writer threads wait here for jobs.
    work: Condvar,
    /// Fetch threads wait here for room; one is woken per job taken, so a full queue does not
    /// wake every waiting fetch thread for one slot.
    room: Condvar,
    /// `stop` and `flush` wait here for the queue to drain.
    drained: Condvar,
    /// At least one writer thread runs.
    alive: AtomicBool,
    ok: AtomicBool,
    failed_at: Mutex<Option<Instant>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer threads (none without a disk cache).
    pub(crate) fn start(disk: Option<Arc<BlockCache>>, stats: Arc<Stats>) -> Arc<Writer> {
        let writer = Arc::new(Writer {
            alive: AtomicBool::new(disk.is_some()),
            ok: AtomicBool::new(true),
            disk,
            queue: Mutex::new(Queue { jobs: VecDeque::new(), bytes: 0, stopping: false, writing: Vec::new() }),
            work: Condvar::new(),
            room: Condvar::new(),
            drained: Condvar::new(),
            failed_at: Mutex::new(None),
            stats,
        });
        if writer.disk.is_some() {
            let mut started = 0;
            for i in 0..WRITERS {
                let w = Arc::clone(&writer);
                match std::thread::Builder::new().name(format!("mastfs-writer-{i}")).spawn(move || w.run()) {
                    Ok(_) => started += 1,
                    Err(e) => log::warn!("cache writer thread {i} not started: {e}"),
                }
            }
            if started == 0 {
                log::warn!("no cache writer thread; reading uncached");
                writer.alive.store(false, Ordering::Relaxed);
            }
        }
        writer
    }

    /// Whether blocks handed over now may reach the disk.
    pub(crate) fn usable(&self) -> bool {
        if self.disk.is_none() || !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        if self.ok.load(Ordering::Relaxed) {
            return true;
        }
        self.failed_at.lock().is_none_or(|t| t.elapsed() >= DISK_RETRY)
    }

    /// Hands a block over for storing, if it holds bytes the disk has not seen. Waits (a
    /// bounded time) while the queue is full.
    pub(crate) fn offer(&self, file: &Arc<FileRef>, index: u64, block: &Arc<Block>) {
        if !self.usable() || !block.take_for_writing() {
            return;
        }
        let until = Instant::now() + OFFER_WAIT;
        let len = block.len();
        let mut q = self.queue.lock();
        while !q.jobs.is_empty() && q.bytes + len > QUEUE_BYTES && !q.stopping {
            let now = Instant::now();
            if now >= until {
                drop(q);
                // Not stored this time; the block stays unwritten, to be offered again.
                block.untake();
                return;
            }
            self.room.wait_for(&mut q, until - now);
        }
        if q.stopping {
            drop(q);
            block.untake();
            return;
        }
        q.bytes += len;
        q.jobs.push_back(Job { file: Arc::clone(file), index, block: Arc::clone(block) });
        drop(q);
        self.work.notify_one();
    }

    /// Writes what is queued, then ends the thread (at unmount).
    pub(crate) fn stop(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        let mut q = self.queue.lock();
        while !q.idle() && Instant::now() < until {
            self.drained.wait_for(&mut q, Duration::from_millis(50));
        }
        q.stopping = true;
        q.jobs.clear();
        q.bytes = 0;
        self.work.notify_all();
        self.room.notify_all();
        self.drained.notify_all();
    }

    /// Waits until everything offered so far is on disk (tests).
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let mut q = self.queue.lock();
        while !q.idle() {
            self.drained.wait_for(&mut q, Duration::from_millis(20));
        }
    }

    fn run(&self) {
        let Some(disk) = self.disk.clone() else { return };
        // The writer's own block-sized buffer, for merging with what the disk holds.
        let mut scratch = Vec::new();
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if q.stopping {
                        self.alive.store(false, Ordering::Relaxed);
                        return;
                    }
                    if let Some(job) = q.take() {
                        // Room for one more block; every waiter may go once the queue is empty.
                        if q.jobs.is_empty() {
                            self.room.notify_all();
                        } else {
                            self.room.notify_one();
                        }
                        break job;
                    }
                    self.work.wait_for(&mut q, Duration::from_secs(1));
                }
            };
            if self.usable() {
                self.write(&disk, &job, &mut scratch);
            }
            let mut q = self.queue.lock();
            q.writing.retain(|b| !Arc::ptr_eq(b, &job.block));
            if q.idle() {
                self.drained.notify_all();
            } else if !q.jobs.is_empty() {
                // A job that waited for this block's write may be the only one left.
                self.work.notify_one();
            }
        }
    }

    fn write(&self, disk: &BlockCache, job: &Job, scratch: &mut Vec<u8>) {
        let block = &job.block;
        let (filled, sum) = block.snapshot_for_disk();
        if filled.is_empty() {
            return;
        }
        let len = block.len();
        // Part of a block whose other parts the disk may hold (another read's bytes): merge,
        // in the writer's own buffer, so the file keeps them.
        if !filled.covers(&(0..len)) && disk.probe(&job.file.id, job.index).is_some() {
            scratch.resize(len.max(scratch.len()), 0);
            let merge = &mut scratch[..len];
            if let Some(mut merged) = disk.load_into(&job.file.id, job.index, merge) {
                for r in filled.ranges() {
                    merge[r.clone()].copy_from_slice(block.filled_bytes(r.clone()));
                    merged.insert(r.clone());
                }
                let extents: Vec<(usize, &[u8])> =
                    merged.ranges().iter().map(|r| (r.start, &merge[r.clone()])).collect();
                if extents.len() <= MAX_EXTENTS {
                    self.finish(disk.put_summed(&job.file.id, job.index, &extents, sum));
                }
                return;
            }
        }
        let extents: Vec<(usize, &[u8])> =
            filled.ranges().iter().map(|r| (r.start, block.filled_bytes(r.clone()))).collect();
        if extents.len() <= MAX_EXTENTS {
            self.finish(disk.put_summed(&job.file.id, job.index, &extents, sum));
        }
    }

    fn finish(&self, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                if !self.ok.swap(true, Ordering::Relaxed) {
                    log::warn!("disk cache writable again");
                }
            }
            Err(e) => {
                Stats::add(&self.stats.cache_write_errors, 1);
                *self.failed_at.lock() = Some(Instant::now());
                // Warn once per outage; reads go on from memory and the network.
                if self.ok.swap(false, Ordering::Relaxed) {
                    log::warn!(
                        "disk cache write failed ({e}); reading uncached, retrying the cache every {}s",
                        DISK_RETRY.as_secs()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::BLOCK_SIZE;
    use crate::read::block::{Claim, Pool};
    use crate::read::disk::FileId;

    fn fill(block: &Block, from: usize, to: usize, byte: u8) {
        let Claim::Free(mut g) = block.claim(from, to) else { panic!("{from}..{to} is free") };
        g.slice().fill(byte);
        g.commit(to - from);
    }

    #[test]
    fn a_block_filled_again_while_it_is_being_written_reaches_the_disk_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = Arc::new(BlockCache::open(dir.path(), 1 << 30).expect("cache"));
        let writer = Writer::start(Some(Arc::clone(&disk)), Arc::new(Stats::default()));
        let pool = Pool::new(2, BLOCK_SIZE as usize);
        let len = BLOCK_SIZE as usize;
        for round in 0..50 {
            let id = FileId {
                server: "archive.example:21".into(),
                user: "anonymous".into(),
                path: format!("/f{round}"),
                size: BLOCK_SIZE,
                mtime: 1_700_000_000,
            };
            let file = Arc::new(FileRef::new(id));
            let block = Arc::new(Block::new(pool.take().expect("buffer"), len, false));
            fill(&block, 0, len / 2, 1);
            writer.offer(&file, 0, &block);
            // Once a writer holds the first half, the second half is a second job for the same
            // block, which another writer could otherwise store first.
            while writer.queue.lock().jobs.iter().any(|j| Arc::ptr_eq(&j.block, &block)) {
                std::thread::yield_now();
            }
            fill(&block, len / 2, len, 2);
            writer.offer(&file, 0, &block);
            writer.flush();
            let mut back = vec![0u8; len];
            let ranges = disk.load_into(&file.id, 0, &mut back).expect("on disk");
            assert!(ranges.covers(&(0..len)), "round {round}: the disk kept an older snapshot: {ranges:?}");
            assert!(back[..len / 2].iter().all(|&b| b == 1) && back[len / 2..].iter().all(|&b| b == 2));
        }
        writer.stop();
    }
}
