//! How one open file is being read: at random, or in order.
//!
//! The kernel splits a sequential read into requests of up to its read-ahead window and, with
//! several FUSE threads and async reads, delivers them slightly out of order; a detector that
//! demanded exact contiguity would reset on every reordering (mountpoint-s3#488). Reads landing
//! a little behind or ahead of the expected offset therefore still count as in order.
//!
//! A reader becomes sequential only after `TRIGGER` bytes read in order: opening a FITS file
//! reads its first header and then the next one far away, and the kernel turns each of those
//! into a few hundred KiB of requests (measured for astropy's `getheader(ext=1)` on a 6.18
//! kernel with the 64 KiB I/O size hint and the mount's 4 MiB read-ahead: 256 KiB at the
//! first header, 68 KiB at the second); that must stay a random read. `cat` reaches it with
//! its fourth request (32 KiB, 128 KiB, 512 KiB, then 1 MiB requests), so a copy's stripes
//! start after about 1.7 MiB.
//!
//! Only the FUSE thread serving a read of this handle touches it, under the handle's lock.

/// Reads up to this far behind the expected offset still count as in order.
pub(crate) const BACK_TOLERANCE: u64 = 2 << 20;
/// Reads up to this far ahead of the expected offset still count as in order (the kernel's
/// async read-ahead has a few requests of up to 1 MiB in flight, answered in any order).
const FORWARD_TOLERANCE: u64 = 8 << 20;
/// Bytes read in order before the reader counts as sequential.
pub(crate) const TRIGGER: u64 = 1 << 20;

/// What a read tells about its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// The reader has read `TRIGGER` bytes in order, in more than one read, up to and
    /// including this one.
    pub sequential: bool,
    /// Where the current in-order run began.
    pub run_start: u64,
    /// The end of everything read in order so far (the reader's position).
    pub position: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Pattern {
    started: bool,
    run_start: u64,
    next: u64,
    /// Reads that moved the current run forward: one large read is not yet a sequential
    /// reader.
    reads: u32,
}

impl Pattern {
    /// Records a read of `[offset, end)`.
    pub(crate) fn on_read(&mut self, offset: u64, end: u64) -> Access {
        let near = self.started
            && offset.saturating_add(BACK_TOLERANCE) >= self.next
            && offset <= self.next.saturating_add(FORWARD_TOLERANCE);
        self.started = true;
        if near {
            // Only reads that widen the run count (a re-read does not); a read just before
            // the run's start is the kernel answering two requests in the other order.
            if end > self.next || offset < self.run_start {
                self.reads = self.reads.saturating_add(1);
            }
            self.next = self.next.max(end);
            self.run_start = self.run_start.min(offset);
        } else {
            self.run_start = offset;
            self.next = end;
            self.reads = 1;
        }
        Access {
            sequential: self.reads >= 2 && self.next - self.run_start >= TRIGGER,
            run_start: self.run_start,
            position: self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K128: u64 = 128 * 1024;
    const MIB: u64 = 1 << 20;

    fn read_in_order(p: &mut Pattern, from: u64, to: u64, step: u64) -> Access {
        let mut off = from;
        let mut last = None;
        while off < to {
            last = Some(p.on_read(off, off + step));
            off += step;
        }
        last.expect("at least one read")
    }

    #[test]
    fn a_single_read_is_random_however_large() {
        let mut p = Pattern::default();
        assert!(!p.on_read(0, 2880).sequential);
        assert!(!p.on_read(500 * MIB, 500 * MIB + 4096).sequential);
        assert!(!p.on_read(700 * MIB, 704 * MIB).sequential);
    }

    #[test]
    fn a_fits_header_read_as_the_kernel_sends_it_stays_random() {
        let mut p = Pattern::default();
        // Measured for astropy's getheader(ext=1): 256 KiB at 0 (as two requests when the
        // kernel's read-ahead is 128 KiB), then 68 KiB at the second header.
        assert!(!read_in_order(&mut p, 0, 2 * K128, K128).sequential);
        assert!(!p.on_read(512 * MIB, 512 * MIB + 68 * 1024).sequential);
    }

    #[test]
    fn reading_one_mib_in_order_turns_sequential() {
        let mut p = Pattern::default();
        let a = read_in_order(&mut p, 0, TRIGGER - K128, K128);
        assert!(!a.sequential);
        let a = p.on_read(TRIGGER - K128, TRIGGER);
        assert!(a.sequential);
        assert_eq!((a.run_start, a.position), (0, TRIGGER));
    }

    #[test]
    fn the_first_two_requests_answered_in_the_other_order_still_count() {
        let mut p = Pattern::default();
        assert!(!p.on_read(MIB, 2 * MIB).sequential);
        let a = p.on_read(0, MIB);
        assert!(a.sequential);
        assert_eq!((a.run_start, a.position), (0, 2 * MIB));
    }

    #[test]
    fn kernel_reordering_keeps_the_run() {
        let mut p = Pattern::default();
        read_in_order(&mut p, 0, 8 * MIB, MIB);
        // Two concurrent read-ahead requests answered in the other order.
        assert!(p.on_read(9 * MIB, 10 * MIB).sequential);
        let a = p.on_read(8 * MIB, 9 * MIB);
        assert!(a.sequential);
        assert_eq!((a.run_start, a.position), (0, 10 * MIB));
    }

    #[test]
    fn a_far_seek_starts_a_new_random_run() {
        let mut p = Pattern::default();
        assert!(read_in_order(&mut p, 0, 64 * MIB, MIB).sequential);
        let a = p.on_read(700 * MIB, 700 * MIB + 4096);
        assert!(!a.sequential);
        assert_eq!(a.run_start, 700 * MIB);
        // And a seek backwards past the tolerance too.
        let mut p = Pattern::default();
        read_in_order(&mut p, 100 * MIB, 110 * MIB, MIB);
        assert!(!p.on_read(90 * MIB, 91 * MIB).sequential);
    }
}
