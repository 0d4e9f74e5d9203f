//! The cache writer: one thread that stores filled blocks on disk, off the fetch path.
//!
//! Fetch threads hand over a block when they leave it (`offer`); the writer takes what is
//! filled at that moment, merges it with what the disk already holds of the block (another
//! read may have stored other parts) and writes it. The queue is bounded: when the disk is
//! slower than the network, fetch threads wait for room, which slows the transfers instead of
//! growing memory. A failing disk (full, read-only, gone) turns the cache off for a while:
//! offers are dropped, reads go on from memory and the network, and a write is tried again
//! after `DISK_RETRY`.
//!
//! Threads: fetch threads (`offer`), the writer thread, the unmounting thread (`stop`).
//! Locks: the queue lock, alone; the writer takes a block's lock (to snapshot it) and the
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

/// Blocks waiting for the disk at most; fetch threads wait beyond this.
const QUEUE_BLOCKS: usize = 16;
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
    stopping: bool,
    /// The writer is between taking a job and finishing it.
    busy: bool,
}

pub(crate) struct Writer {
    disk: Option<Arc<BlockCache>>,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// The writer thread runs.
    alive: AtomicBool,
    ok: AtomicBool,
    failed_at: Mutex<Option<Instant>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer thread (none without a disk cache).
    pub(crate) fn start(disk: Option<Arc<BlockCache>>, stats: Arc<Stats>) -> Arc<Writer> {
        let writer = Arc::new(Writer {
            alive: AtomicBool::new(disk.is_some()),
            ok: AtomicBool::new(true),
            disk,
            queue: Mutex::new(Queue { jobs: VecDeque::new(), stopping: false, busy: false }),
            changed: Condvar::new(),
            failed_at: Mutex::new(None),
            stats,
        });
        if writer.disk.is_some() {
            let w = Arc::clone(&writer);
            let spawned = std::thread::Builder::new().name("mastfs-cache-writer".into()).spawn(move || w.run());
            if let Err(e) = spawned {
                log::warn!("no cache writer thread ({e}); reading uncached");
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
        let mut q = self.queue.lock();
        while q.jobs.len() >= QUEUE_BLOCKS && !q.stopping {
            let now = Instant::now();
            if now >= until {
                drop(q);
                // Not stored this time; the block stays unwritten, to be offered again.
                block.untake();
                return;
            }
            self.changed.wait_for(&mut q, until - now);
        }
        if q.stopping {
            drop(q);
            block.untake();
            return;
        }
        q.jobs.push_back(Job { file: Arc::clone(file), index, block: Arc::clone(block) });
        self.changed.notify_all();
    }

    /// Writes what is queued, then ends the thread (at unmount).
    pub(crate) fn stop(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        let mut q = self.queue.lock();
        while (!q.jobs.is_empty() || q.busy) && Instant::now() < until {
            self.changed.wait_for(&mut q, Duration::from_millis(50));
        }
        q.stopping = true;
        q.jobs.clear();
        self.changed.notify_all();
    }

    /// Waits until everything offered so far is on disk (tests).
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let mut q = self.queue.lock();
        while !q.jobs.is_empty() || q.busy {
            self.changed.wait_for(&mut q, Duration::from_millis(20));
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
                    if let Some(job) = q.jobs.pop_front() {
                        q.busy = true;
                        break job;
                    }
                    self.changed.wait_for(&mut q, Duration::from_secs(1));
                }
            };
            self.changed.notify_all();
            if self.usable() {
                self.write(&disk, &job, &mut scratch);
            }
            self.queue.lock().busy = false;
            self.changed.notify_all();
        }
    }

    fn write(&self, disk: &BlockCache, job: &Job, scratch: &mut Vec<u8>) {
        let block = &job.block;
        let filled = block.snapshot_for_disk();
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
                    self.finish(disk.put(&job.file.id, job.index, &extents));
                }
                return;
            }
        }
        let extents: Vec<(usize, &[u8])> =
            filled.ranges().iter().map(|r| (r.start, block.filled_bytes(r.clone()))).collect();
        if extents.len() <= MAX_EXTENTS {
            self.finish(disk.put(&job.file.id, job.index, &extents));
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
