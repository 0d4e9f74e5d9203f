//! Per-handle sequential-read detection and the read-ahead window.
//!
//! The kernel splits a sequential read into 128 KiB requests and, with several FUSE threads
//! and async reads, delivers them slightly out of order; a detector that demanded exact
//! contiguity would reset on every reordering (mountpoint-s3#488). Reads landing a little
//! behind or ahead of the expected offset therefore still count as sequential. The window
//! starts small, so a header read of a huge file fetches almost nothing extra, and doubles
//! each time the reader eats into the second half of it, as mountpoint-s3 and rclone do.

use crate::cache::BLOCK_SIZE;

/// Reads up to this far behind the expected offset still count as sequential.
const BACK_TOLERANCE: u64 = 2 * BLOCK_SIZE;
/// Reads up to this far ahead of the expected offset still count as sequential.
const FORWARD_TOLERANCE: u64 = 4 * BLOCK_SIZE;
/// Bytes read in order before read-ahead starts.
const TRIGGER: u64 = 2 * BLOCK_SIZE;
/// First window, in blocks. A reader that got through two whole blocks in order is copying,
/// not peeking, so the window starts wide enough to give every connection a long run at
/// once: each ranged RETR costs about six round trips before its first byte (measured at
/// 20/80 ms RTT: 1 GiB in 6.1/8.5 s with 128, 7.3/8.8 s with 32).
const INITIAL_WINDOW: u64 = 128;
/// Smallest and largest run of blocks one RETR fetches.
/// Each run ends with an abort, which discards what is in flight on that connection, so
/// runs are long once the window is: 64 MiB keeps a 1 GiB copy at about 16 aborts.
const MIN_RUN: u64 = 8;
const MAX_RUN: u64 = 64;

/// What to fetch ahead: blocks `[first, first+count)`, in RETRs of `run` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub first: u64,
    pub count: u64,
    pub run: u64,
}

#[derive(Debug, Default)]
pub struct Readahead {
    started: bool,
    /// Where the current sequential run began.
    run_start: u64,
    next: u64,
    streak: u32,
    window: u64,
    ahead_until: u64,
}

impl Readahead {
    /// Records a read and says what to fetch ahead, if anything.
    pub fn on_read(&mut self, offset: u64, len: u64, file_size: u64, max_window: u64, workers: u64) -> Option<Plan> {
        let end = offset.saturating_add(len).min(file_size);
        let near = self.started
            && offset + BACK_TOLERANCE >= self.next
            && offset <= self.next.saturating_add(FORWARD_TOLERANCE);
        self.started = true;
        if !near {
            self.streak = 0;
            self.window = INITIAL_WINDOW.min(max_window.max(1));
            self.ahead_until = 0;
            self.run_start = offset;
            self.next = end;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        self.next = self.next.max(end);
        // Opening a FITS header reads a few 2880-byte records, but the kernel turns the first
        // read of a file into about 1.1 MiB of requests (measured on 6.18 with a 128 KiB bdi
        // readahead): read-ahead waits for two whole blocks read in order, so a header read
        // fetches at most two blocks.
        if self.next - self.run_start < TRIGGER {
            return None;
        }
        if end == 0 || end >= file_size {
            return None;
        }
        let current = (end - 1) / BLOCK_SIZE;
        let blocks = file_size.div_ceil(BLOCK_SIZE);
        if self.window == 0 {
            self.window = INITIAL_WINDOW.min(max_window.max(1));
        }
        // Refill as soon as there is room for one more run, so every connection stays busy
        // instead of a wave of runs finishing together and idling until the next wave.
        let run = (self.window / workers.max(1)).clamp(MIN_RUN, MAX_RUN);
        if self.ahead_until + run > current + 1 + self.window {
            return None;
        }
        if self.ahead_until > 0 {
            self.window = (self.window * 2).min(max_window.max(1));
        }
        let from = self.ahead_until.max(current + 1);
        let target = (current + 1 + self.window).min(blocks);
        if from >= target {
            return None;
        }
        self.ahead_until = target;
        let run = (self.window / workers.max(1)).clamp(MIN_RUN, MAX_RUN);
        Some(Plan { first: from, count: target - from, run })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = BLOCK_SIZE;
    const K128: u64 = 128 * 1024;
    const GIB: u64 = 1 << 30;

    fn read_sequentially(ra: &mut Readahead, upto: u64) -> Vec<Plan> {
        let mut plans = Vec::new();
        let mut off = 0;
        while off < upto {
            plans.extend(ra.on_read(off, K128, GIB, 256, 8));
            off += K128;
        }
        plans
    }

    #[test]
    fn a_single_read_fetches_nothing_ahead() {
        let mut ra = Readahead::default();
        assert_eq!(ra.on_read(0, 2880, GIB, 256, 8), None);
        let mut ra = Readahead::default();
        assert_eq!(ra.on_read(500 << 20, 4096, GIB, 256, 8), None);
    }

    #[test]
    fn read_ahead_starts_once_two_whole_blocks_were_read_in_order() {
        let mut ra = Readahead::default();
        let mut off = 0;
        while off + K128 < TRIGGER {
            assert_eq!(ra.on_read(off, K128, GIB, 256, 8), None, "nothing ahead at {off}");
            off += K128;
        }
        let plan = ra.on_read(off, K128, GIB, 256, 8).expect("read-ahead starts");
        assert_eq!(plan.first, 2);
        assert_eq!(plan.count, INITIAL_WINDOW);
    }

    #[test]
    fn a_fits_header_read_with_the_kernels_first_readahead_fetches_nothing_ahead() {
        let mut ra = Readahead::default();
        // What the kernel sends for a 4 KiB read at offset 0: nine 128 KiB requests.
        for i in 0..9 {
            assert_eq!(ra.on_read(i * K128, K128, GIB, 256, 8), None);
        }
    }

    #[test]
    fn the_window_grows_geometrically_up_to_the_cap_and_never_refetches() {
        let mut ra = Readahead::default();
        let plans = read_sequentially(&mut ra, 300 * B);
        let mut next = plans.first().map_or(0, |p| p.first);
        for p in &plans {
            assert_eq!(p.first, next, "plans are contiguous and never overlap");
            next = p.first + p.count;
        }
        assert_eq!(ra.window, 256, "window reached the cap");
        assert!(plans.len() < 40, "few, growing plans: {}", plans.len());
        assert!(plans.iter().all(|p| p.run >= MIN_RUN && p.run <= MAX_RUN));
    }

    #[test]
    fn kernel_reordering_does_not_reset_the_stream() {
        let mut ra = Readahead::default();
        read_sequentially(&mut ra, 8 * B);
        let window = ra.window;
        // The kernel delivers 8M+128K before 8M.
        ra.on_read(8 * B + K128, K128, GIB, 256, 8);
        ra.on_read(8 * B, K128, GIB, 256, 8);
        assert!(ra.streak > 0);
        assert!(ra.window >= window);
    }

    #[test]
    fn a_far_seek_resets_to_a_small_window() {
        let mut ra = Readahead::default();
        read_sequentially(&mut ra, 64 * B);
        assert_eq!(ra.on_read(700 << 20, 4096, GIB, 256, 8), None);
        assert_eq!(ra.window, INITIAL_WINDOW);
        assert_eq!(ra.streak, 0);
    }

    #[test]
    fn nothing_is_planned_past_the_end_of_the_file() {
        let mut ra = Readahead::default();
        let size = 3 * B + 10;
        let mut plans = Vec::new();
        let mut off = 0;
        while off < size {
            plans.extend(ra.on_read(off, K128, size, 256, 8));
            off += K128;
        }
        assert!(plans.iter().all(|p| p.first + p.count <= 4));
    }
}
