//! A block of a file in memory, filled in place while readers wait for the bytes they need.
//!
//! A block is one `BLOCK_SIZE` buffer and the set of its byte ranges that hold file data
//! (`filled`). Transfers write into the buffer directly (`RangeReader::read` into the block),
//! so fetched bytes are copied once, from the socket into the block. A reader waits for its
//! own range, not for the whole block: every `read` of a transfer that lands in the block
//! wakes the waiters, and those whose range is now filled return.
//!
//! Soundness of the shared buffer: bytes in `filled` are never written again; a transfer
//! writes only into a range it `claim`ed, which is disjoint from `filled` and from every
//! other claim; readers (and the cache writer) read only filled bytes. So no byte is ever
//! read and written at once, and no two writers share a byte.
//!
//! Buffers come from a `Pool` that counts them: the number of live buffers is the memory
//! the read path holds for file data, and it never exceeds the pool's size.
//!
//! Threads: FUSE threads (wait, read filled bytes), fetch threads (claim, commit), the disk
//! loader (a FUSE thread), the cache writer (reads filled bytes). Locks: `Block::state` is
//! taken alone or after `Memory`'s map lock; the pool's lock is a leaf, taken alone (also
//! from `Drop` anywhere).

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// Disjoint, sorted, non-adjacent byte ranges within a block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet(Vec<Range<usize>>);

impl RangeSet {
    pub(crate) fn from_ranges(ranges: impl IntoIterator<Item = Range<usize>>) -> RangeSet {
        let mut set = RangeSet::default();
        for r in ranges {
            set.insert(r);
        }
        set
    }

    pub(crate) fn insert(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Every range touching or overlapping [start, end) merges into it.
        let first = self.0.partition_point(|x| x.end < start);
        let mut last = first;
        while last < self.0.len() && self.0[last].start <= end {
            start = start.min(self.0[last].start);
            end = end.max(self.0[last].end);
            last += 1;
        }
        self.0.splice(first..last, std::iter::once(start..end));
    }

    pub(crate) fn remove(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for x in self.0.drain(..) {
            if x.end <= r.start || x.start >= r.end {
                out.push(x);
                continue;
            }
            if x.start < r.start {
                out.push(x.start..r.start);
            }
            if x.end > r.end {
                out.push(r.end..x.end);
            }
        }
        self.0 = out;
    }

    pub(crate) fn covers(&self, r: &Range<usize>) -> bool {
        r.is_empty() || self.0.iter().any(|x| x.start <= r.start && r.end <= x.end)
    }

    /// The range containing `at`, if any.
    pub(crate) fn containing(&self, at: usize) -> Option<Range<usize>> {
        self.0.iter().find(|x| x.start <= at && at < x.end).cloned()
    }

    /// The first range starting after `at`, if any.
    pub(crate) fn next_start_after(&self, at: usize) -> Option<usize> {
        self.0.iter().map(|x| x.start).find(|&s| s > at)
    }

    /// The first byte of `r` that is not in the set.
    pub(crate) fn first_missing(&self, r: &Range<usize>) -> Option<usize> {
        let mut at = r.start;
        while at < r.end {
            match self.containing(at) {
                Some(x) => at = x.end,
                None => return Some(at),
            }
        }
        None
    }

    /// The last byte (exclusive end) of `r` that is not in the set.
    pub(crate) fn last_missing_end(&self, r: &Range<usize>) -> Option<usize> {
        let mut end = r.end;
        while end > r.start {
            match self.containing(end - 1) {
                Some(x) => end = x.start.max(r.start),
                None => return Some(end),
            }
        }
        None
    }

    /// Bytes of `r` in the set.
    pub(crate) fn overlap(&self, r: &Range<usize>) -> usize {
        self.0.iter().map(|x| x.end.min(r.end).saturating_sub(x.start.max(r.start))).sum()
    }

    pub(crate) fn ranges(&self) -> &[Range<usize>] {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Buffers for blocks, at most `max` of them alive at once (handed out or kept for reuse).
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
    size: usize,
}

struct PoolState {
    free: Vec<Box<[u8]>>,
    /// Buffers in existence: handed out plus `free`.
    allocated: usize,
    #[cfg(test)]
    peak_in_use: usize,
}

impl Pool {
    pub(crate) fn new(max: usize, size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                allocated: 0,
                #[cfg(test)]
                peak_in_use: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
            size,
        })
    }

    /// A buffer, reusing a freed one (its old bytes are never read: they are not `filled`),
    /// or `None` when `max` buffers are in use.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Buffer> {
        let mut st = self.state.lock();
        let bytes = match st.free.pop() {
            Some(b) => b,
            None if st.allocated < self.max => {
                st.allocated += 1;
                // Zeroed once per buffer's life, then reused without clearing.
                vec![0u8; self.size].into_boxed_slice()
            }
            None => return None,
        };
        #[cfg(test)]
        {
            let in_use = st.allocated - st.free.len();
            st.peak_in_use = st.peak_in_use.max(in_use);
        }
        Some(Buffer { bytes: UnsafeCell::new(bytes), pool: Arc::clone(self) })
    }

    /// Waits until a buffer is returned or `until` passes.
    pub(crate) fn wait_for_free(&self, until: Instant) {
        let mut st = self.state.lock();
        let now = Instant::now();
        if now < until && st.free.is_empty() {
            self.freed.wait_for(&mut st, (until - now).min(Duration::from_millis(50)));
        }
    }

    #[cfg(test)]
    pub(crate) fn peak_in_use(&self) -> usize {
        self.state.lock().peak_in_use
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        let st = self.state.lock();
        st.allocated - st.free.len()
    }

    fn give_back(&self, bytes: Box<[u8]>) {
        self.state.lock().free.push(bytes);
        self.freed.notify_one();
    }
}

/// One buffer of the pool; goes back to it when dropped.
pub(crate) struct Buffer {
    bytes: UnsafeCell<Box<[u8]>>,
    pool: Arc<Pool>,
}

impl Buffer {
    /// The buffer's bytes, for its sole owner (a buffer outside a block is not shared).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes.get_mut()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: a `Buffer` outside a `Block` has one owner, and `Buffer` is not `Sync`, so
        // no other reference to its bytes exists while this one does.
        unsafe { &*self.bytes.get() }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(self.bytes.get_mut());
        self.pool.give_back(bytes);
    }
}

/// What a transfer may do at a position of a block.
pub(crate) enum Claim<'a> {
    /// Write here: the bytes are the transfer's alone until `commit` or drop.
    Free(ClaimGuard<'a>),
    /// Someone else has (or is writing) the bytes up to this offset: read past them.
    Taken { until: usize },
    /// The block is being loaded from the disk cache; try again shortly.
    Loading,
}

/// An exclusive right to write `range` of a block.
pub(crate) struct ClaimGuard<'a> {
    block: &'a Block,
    range: Range<usize>,
}

impl ClaimGuard<'_> {
    pub(crate) fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `range` is claimed: disjoint from every filled range (which readers may be
        // reading) and from every other claim (which other transfers may be writing), and it
        // lies inside the buffer (claims are clamped to the block's length). Only this guard
        // hands out a reference to it, and `&mut self` keeps that reference unique.
        unsafe {
            let base = (*self.block.buf.bytes.get()).as_mut_ptr();
            std::slice::from_raw_parts_mut(base.add(self.range.start), self.range.len())
        }
    }

    /// The first `n` bytes were written: they become readable and the claim ends.
    pub(crate) fn commit(mut self, n: usize) {
        let n = n.min(self.range.len());
        // Checksummed here, while the bytes just written are in the CPU's cache: the cache
        // writer, which stores the block later, would read them back from memory for it.
        let mut sum = crc32fast::Hasher::new();
        sum.update(&self.slice()[..n]);
        let start = self.range.start;
        let mut st = self.block.state.lock();
        st.claimed.remove(self.range.clone());
        if n > 0 {
            st.filled.insert(start..start + n);
            st.dirty = true;
            match &mut st.sum {
                Some((r, run)) if r.end == start => {
                    run.combine(&sum);
                    r.end = start + n;
                }
                Some(_) => {}
                None => st.sum = Some((start..start + n, sum)),
            }
        }
        drop(st);
        self.block.changed.notify_all();
        std::mem::forget(self);
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.block.state.lock().claimed.remove(self.range.clone());
        self.block.changed.notify_all();
    }
}

/// The CRC32 of `len` bytes of a block from `start`, computed as they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sum {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) crc: u32,
}

pub(crate) struct BlockState {
    pub(crate) filled: RangeSet,
    claimed: RangeSet,
    /// The disk cache is being read into this block.
    pub(crate) loading: bool,
    /// Filled bytes the disk cache has not been given yet.
    dirty: bool,
    /// The CRC32 of one run of bytes committed back to back (the first run's; later runs
    /// elsewhere in the block are not summed): the disk cache's checksum of that extent when
    /// the run is a whole extent.
    sum: Option<(Range<usize>, crc32fast::Hasher)>,
    /// In the cache writer's queue.
    queued: bool,
}

pub(crate) struct Block {
    /// Bytes of the file in this block (the last block of a file is shorter).
    len: usize,
    buf: Buffer,
    state: Mutex<BlockState>,
    changed: Condvar,
}

// SAFETY: the buffer is shared between threads under the rules at the top of this module
// (claimed bytes are written by their claimant only; filled bytes are only read), and
// everything else is behind the mutex.
unsafe impl Sync for Block {}

impl Block {
    pub(crate) fn new(buf: Buffer, len: usize, loading: bool) -> Block {
        let len = len.min(buf.pool.size);
        Block {
            len,
            buf,
            state: Mutex::new(BlockState {
                filled: RangeSet::default(),
                claimed: RangeSet::default(),
                loading,
                dirty: false,
                queued: false,
                sum: None,
            }),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BlockState> {
        self.state.lock()
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_all();
    }

    /// Sleeps until the block changes or `until` passes (at most a short slice, so callers
    /// also notice changes elsewhere, such as a transfer that ended).
    pub(crate) fn wait(&self, st: &mut MutexGuard<'_, BlockState>, until: Instant) {
        let now = Instant::now();
        if now < until {
            self.changed.wait_for(st, (until - now).min(Duration::from_millis(100)));
        }
    }

    pub(crate) fn covers(&self, r: &Range<usize>) -> bool {
        self.state.lock().filled.covers(r)
    }

    /// The whole block holds file data.
    pub(crate) fn is_complete(&self) -> bool {
        self.covers(&(0..self.len))
    }

    /// Asks to write from `at` up to `limit` (exclusive, within the block).
    pub(crate) fn claim(&self, at: usize, limit: usize) -> Claim<'_> {
        let limit = limit.min(self.len);
        let mut st = self.state.lock();
        if st.loading {
            return Claim::Loading;
        }
        if let Some(r) = st.filled.containing(at).or_else(|| st.claimed.containing(at)) {
            return Claim::Taken { until: r.end.min(limit) };
        }
        let mut end = limit;
        for set in [&st.filled, &st.claimed] {
            if let Some(next) = set.next_start_after(at) {
                end = end.min(next);
            }
        }
        st.claimed.insert(at..end);
        Claim::Free(ClaimGuard { block: self, range: at..end })
    }

    /// Fills the block from the disk cache: `load` gets the buffer and returns the ranges
    /// it filled (or nothing). Only the caller that created the block with `loading` set
    /// calls this, before anyone else may claim a byte of it.
    pub(crate) fn load(&self, load: impl FnOnce(&mut [u8]) -> Option<RangeSet>) -> bool {
        // SAFETY: while `loading` is set nobody claims, fills or reads a byte of this block
        // (claims return `Loading`, readers see nothing filled), so this is the only
        // reference to the buffer.
        let buf = unsafe {
            let whole: &mut Box<[u8]> = &mut *self.buf.bytes.get();
            &mut whole[..self.len]
        };
        let loaded = load(buf);
        let mut st = self.state.lock();
        st.loading = false;
        let found = loaded.is_some();
        if let Some(ranges) = loaded {
            for r in ranges.ranges() {
                st.filled.insert(r.start.min(self.len)..r.end.min(self.len));
            }
        }
        drop(st);
        self.changed.notify_all();
        found
    }

    /// Bytes of `r`, which the caller has seen filled (filled bytes never change).
    pub(crate) fn filled_bytes(&self, r: Range<usize>) -> &[u8] {
        debug_assert!(self.covers(&r));
        let r = r.start.min(self.len)..r.end.min(self.len);
        // SAFETY: filled bytes are never written again (see the module comment), and `r` is
        // clamped to the buffer.
        unsafe { &(&(*self.buf.bytes.get()))[r] }
    }

    /// Takes the block for the cache writer if it has bytes the disk has not seen and is
    /// not queued already.
    pub(crate) fn take_for_writing(&self) -> bool {
        let mut st = self.state.lock();
        if !st.dirty || st.queued {
            return false;
        }
        st.queued = true;
        true
    }

    /// The writer will not take the block after all (its queue stayed full).
    pub(crate) fn untake(&self) {
        self.state.lock().queued = false;
    }

    /// The writer's view: what is filled now, and the checksum of a run of it summed as it
    /// was written (`Sum`). Bytes filled later make the block dirty again.
    pub(crate) fn snapshot_for_disk(&self) -> (RangeSet, Option<Sum>) {
        let mut st = self.state.lock();
        st.queued = false;
        st.dirty = false;
        let sum = st.sum.as_ref().map(|(r, h)| Sum { start: r.start, len: r.len(), crc: h.clone().finalize() });
        (st.filled.clone(), sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_split_and_answer_coverage() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25);
        assert_eq!(s.ranges(), &[10..25, 30..40]);
        s.insert(0..100);
        assert_eq!(s.ranges(), std::slice::from_ref(&(0..100)));
        s.remove(40..50);
        assert_eq!(s.ranges(), &[0..40, 50..100]);
        assert!(s.covers(&(5..40)) && !s.covers(&(5..41)));
        assert_eq!(s.first_missing(&(0..100)), Some(40));
        assert_eq!(s.last_missing_end(&(0..100)), Some(50));
        assert_eq!(s.first_missing(&(50..100)), None);
        assert_eq!(s.overlap(&(30..60)), 20);
    }

    #[test]
    fn a_claimed_range_stops_at_filled_and_claimed_bytes() {
        let pool = Pool::new(1, 100);
        let block = Block::new(pool.take().expect("buffer"), 100, false);
        let Claim::Free(mut first) = block.claim(0, 100) else { panic!("free at 0") };
        first.slice()[..10].copy_from_slice(&[7; 10]);
        first.commit(10);
        let Claim::Free(second) = block.claim(50, 100) else { panic!("free at 50") };
        // From 10 a writer may go up to where the other claim starts.
        let Claim::Free(third) = block.claim(10, 100) else { panic!("free at 10") };
        assert_eq!(third.range, 10..50);
        assert!(matches!(block.claim(0, 100), Claim::Taken { until: 10 }));
        assert!(matches!(block.claim(60, 100), Claim::Taken { until: 100 }));
        drop(second);
        drop(third);
        assert_eq!(block.filled_bytes(0..10), &[7; 10]);
        assert!(!block.covers(&(0..11)));
    }

    #[test]
    fn the_pool_never_hands_out_more_than_its_size_and_reuses_buffers() {
        let pool = Pool::new(2, 16);
        let a = pool.take().expect("first");
        let b = pool.take().expect("second");
        assert!(pool.take().is_none());
        drop(a);
        let c = pool.take().expect("reused");
        assert_eq!(pool.in_use(), 2);
        drop((b, c));
        assert_eq!(pool.peak_in_use(), 2);
    }

    #[test]
    fn bytes_committed_back_to_back_are_summed_as_written_and_a_run_elsewhere_is_not() {
        let pool = Pool::new(1, 100);
        let block = Block::new(pool.take().expect("buffer"), 100, false);
        let bytes: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for (at, n) in [(10, 5), (15, 30), (45, 20)] {
            let Claim::Free(mut c) = block.claim(at, 100) else { panic!("free at {at}") };
            c.slice()[..n].copy_from_slice(&bytes[at..at + n]);
            c.commit(n);
        }
        // Not adjacent to the run: filled, but the run's sum stays that of 10..65.
        let Claim::Free(mut c) = block.claim(80, 100) else { panic!("free at 80") };
        c.slice()[..10].copy_from_slice(&bytes[80..90]);
        c.commit(10);
        let (filled, sum) = block.snapshot_for_disk();
        assert_eq!(filled.ranges(), &[10..65, 80..90]);
        assert_eq!(sum, Some(Sum { start: 10, len: 55, crc: crc32fast::hash(&bytes[10..65]) }));
    }
}
