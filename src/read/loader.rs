//! Disk read-ahead: blocks a sequential reader will want next are read from the disk cache
//! into memory ahead of it, so its requests find them there instead of each waiting for a
//! file to be opened, read and checked (a re-read of a cached file was 5–10 times slower
//! than a local disk without this).
//!
//! Threads: FUSE threads queue blocks (`ahead`); `LOADERS` loader threads load them. Locks:
//! the queue lock, alone; a loader takes `Memory`'s map and then a block's lock through
//! `load`, after releasing the queue lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::disk::BlockCache;
use super::memory::Memory;
use super::{BLOCK_SIZE, FileRef};

/// Loader threads: two keep a reader ahead of a local disk on two cores.
const LOADERS: usize = 2;
/// Blocks queued at most; a reader far behind its loads does not need more.
const QUEUE: usize = 32;

struct Queue {
    jobs: VecDeque<(Arc<FileRef>, u64)>,
    stopping: bool,
}

pub(crate) struct Loader {
    memory: Arc<Memory>,
    disk: Arc<BlockCache>,
    queue: Mutex<Queue>,
    queued: Condvar,
}

impl Loader {
    pub(crate) fn start(memory: Arc<Memory>, disk: Arc<BlockCache>) -> Arc<Loader> {
        let loader = Arc::new(Loader {
            memory,
            disk,
            queue: Mutex::new(Queue { jobs: VecDeque::new(), stopping: false }),
            queued: Condvar::new(),
        });
        for i in 0..LOADERS {
            let l = Arc::clone(&loader);
            if let Err(e) = std::thread::Builder::new().name(format!("mastfs-loader-{i}")).spawn(move || l.run()) {
                log::warn!("no disk read-ahead thread ({e}); cached reads load on demand");
            }
        }
        loader
    }

    /// Queues the blocks `[first, first + count)` of `file` that the disk cache holds and
    /// memory does not.
    pub(crate) fn ahead(&self, file: &Arc<FileRef>, first: u64, count: u64) {
        let last = file.size().div_ceil(BLOCK_SIZE).min(first + count);
        let mut wanted = Vec::new();
        for index in first..last {
            if self.memory.peek(&(file.key, index)).is_none() && self.disk.probe(&file.id, index).is_some() {
                wanted.push(index);
            }
        }
        if wanted.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        for index in wanted {
            if q.jobs.len() >= QUEUE {
                break;
            }
            if !q.jobs.iter().any(|(f, i)| *i == index && f.key == file.key) {
                q.jobs.push_back((Arc::clone(file), index));
            }
        }
        drop(q);
        self.queued.notify_all();
    }

    pub(crate) fn stop(&self) {
        let mut q = self.queue.lock();
        q.stopping = true;
        q.jobs.clear();
        drop(q);
        self.queued.notify_all();
    }

    fn run(&self) {
        loop {
            let (file, index) = {
                let mut q = self.queue.lock();
                loop {
                    if q.stopping {
                        return;
                    }
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    self.queued.wait_for(&mut q, Duration::from_secs(1));
                }
            };
            // Only into a free buffer: read-ahead never waits for memory.
            load(&self.memory, &self.disk, &file, index, Instant::now());
        }
    }
}

/// Loads block `index` of `file` from the disk cache into memory unless it is there
/// already (or being loaded). Returns whether this call created the block.
pub(crate) fn load(memory: &Memory, disk: &BlockCache, file: &FileRef, index: u64, until: Instant) -> bool {
    match memory.get_or_create(&(file.key, index), file.block_len(index), true, until) {
        Some((block, true)) => {
            block.load(|buf| disk.load_into(&file.id, index, buf));
            true
        }
        _ => false,
    }
}
