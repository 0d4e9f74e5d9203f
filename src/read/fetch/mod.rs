//! Fetch scheduling: which ranged transfers run, on which threads, and when they end. How
//! one transfer runs, from open to close, is in `stream.rs`.
//!
//! A *stream* is one ranged transfer (`Remote::open` + `RangeReader::read` into blocks) over
//! `[pos, end)` of one file version. There are two kinds:
//!
//! - a **peek** fetches what a random read asked for (`Intent::Peek`) and no more. A read that
//!   starts just past a peek's end extends it instead of opening another transfer (the kernel
//!   sends a file's first read-ahead as several requests). At its end a peek lingers a moment
//!   (twice its first-byte latency) for such an extension, then closes.
//! - a **stripe** serves a sequential reader. When a reader turns sequential, what remains
//!   ahead of it (up to a horizon set by the cache's size) is split among the connections
//!   (`Remote::parallelism()`), like `lftp pget`: each stripe is one `Intent::Run { end }`
//!   that runs to its stripe's end, and the last one ends at the end of the file, so a
//!   whole-file copy ends without an abort. The peek that was serving the reader when it
//!   turned sequential becomes the run's first stripe. Until the reader has read 8 MiB in
//!   order, stripes fetch at most 8 MiB ahead of it (so only the one it reads from runs): a
//!   reader that stops after a few MiB does not leave every connection fetching the rest of
//!   the file (`head -c 10M` of 1 GiB: 35 MiB fetched instead of 110 MiB on loopback).
//!   The connections the stripes will need are logged in when the stripes are planned
//!   (`Remote::prepare`), in parallel, so the ramp's end finds them ready: on the
//!   packet-level link at 80 ms every stripe had its first byte 2.2 s after `cp` began instead
//!   of 3.5 s, when each logged in as it started.
//!
//! The tail: stripes of equal size do not end together (their connections do not get equal
//! shares of the link), and a connection whose stripe ended would idle while the last ones
//! finish. When a fetch thread's stream ends and nothing is queued, it takes over the end of
//! the running stripe that will end last (`steal`), if that stripe still needs several
//! reopens' worth of time at its own rate. The split is placed so that both end together at
//! their rates (a slow stripe keeps little), on a block boundary and not before what the
//! server may already have sent it (`RangeReader::reach`): the stripe's planned end moves
//! there, so every transfer still ends at its planned end (one more planned end, whose
//! transport is told of it: `plan_end`) and the last one at the end of the file.
//!
//! How a stripe's end is counted: a stream that stops exactly at its planned `end` before the
//! end of the file is a *planned end* (`planned_ends`); one that reaches the end of the file
//! is simply finished; one stopped before its planned end (file closed, reader idle for
//! `IDLE_STOP`, reader gone elsewhere, preempted by a waiting reader, unmount) is *cancelled*
//! (`cancelled`). A stream never reads past its planned end, so what the server sent past it
//! is only what the transport had in flight when it closed (the FTPS transport narrows its
//! TCP window near a run's end to keep that to about a TLS record).
//!
//! Single-flight: every live stream of a file is registered here; a read first looks for a
//! stream that will bring its bytes soon (`ensure`), and waits on the blocks instead of
//! fetching again. Two streams over the same bytes cannot both write them: each claims what
//! it writes in the block, and reads past bytes that are claimed or filled already.
//!
//! At most `parallelism()` streams run at once; the rest queue. Streams a reader waits on go
//! first; when none can start because stripes hold every connection, the stripe furthest
//! ahead of its reader (or a lingering peek) is stopped and the rest of its range queued again.
//!
//! A broken transfer is reopened at the exact byte it stopped at (`resumed`); failures without
//! progress are retried a few times with a short backoff while someone still wants the bytes
//! and within `--timeout` of the last progress, then the stream fails and every waiter gets
//! the error with its kind (a `550` stays `Unavailable`).
//!
//! A **prefetch** is a peek nobody has asked for yet: as the first bytes of a FITS file
//! arrive, its primary header says where the next HDU's header begins (`fits.rs`), and that
//! header is fetched at once, so the reader's seek there (astropy's `getheader(ext=1)`) finds
//! it in flight or in memory instead of waiting for a transfer of its own. Nobody waits on a
//! prefetch, so it is the first stream preempted for a waiting reader and is not retried.
//!
//! Threads: FUSE threads call `ensure`, `plan` and `stop_run`; a fetch thread calls
//! `prefetch` (never holding a lock); each running stream has a fetch thread (`mastfs-fetch`), which takes the next queued stream when its own ends
//! (or, with none queued, the end of another: `steal`, under `Fetcher::state`) and exits
//! when there is none. Lock order: `Fetcher::state`, then a `Stream::st`, then `Memory`'s map,
//! then a block's lock; `Run::progress` is taken alone.
//! `Remote::ready` and `Remote::prepare` (the connection pool's lock, a leaf; `prepare` only
//! starts logins) are called under `Fetcher::state`. Waiters on blocks read a stream's `ended`
//! flag, never its lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

mod stream;

use super::block::Block;
use super::disk::BlockCache;
use super::fits::{self, Primary};
use super::memory::Memory;
use super::writer::Writer;
use super::{BLOCK_SIZE, FileRef, IO_SIZE_HINT};
use crate::error::RemoteError;
use crate::remote::Remote;
use crate::stats::Stats;
use stream::{Kind, Phase, Stop};
pub(crate) use stream::{Outcome, Stream};

/// A read waits on a stream that will reach its bytes within this distance; farther ahead it
/// fetches them itself (the stream reads past them later).
const NEAR: u64 = 8 << 20;
/// A stripe's own reader waits on it within this distance of where it reads: the kernel's
/// read-ahead runs a few MiB ahead of the reader, and those requests belong to the stripe.
const NEAR_OWN_READER: u64 = 64 << 20;
/// A read starting at most this far past a peek's end extends the peek rather than opening
/// another transfer: a few round trips of a new transfer cost more than these bytes.
const EXTEND_GAP: u64 = 1 << 20;
/// Remaining ranges are not split into stripes smaller than this.
const MIN_STRIPE: u64 = 2 << 20;
/// A connection whose stripe ended takes over the end of a running stripe only if that
/// stripe, at its own rate, still needs this many times its first-byte latency (a reopen costs
/// a few round trips, then the new data connection starts slowly) and at least `STEAL_FLOOR`.
/// A new stream's slow start is not in that wait: at 80 ms, with 2 instead of 8, two more
/// takeovers per 1 GiB copy made it take 6.7 s instead of 5.9 s.
const STEAL_AFTER_FIRST_BYTES: u32 = 8;
const STEAL_FLOOR: Duration = Duration::from_millis(50);
/// Neither half of a stripe split at its tail is smaller than this.
const STEAL_MIN_PIECE: u64 = 1 << 20;
/// How much of a FITS file's next header is fetched ahead: what Python's buffered reader
/// (`st_blksize` bytes) makes the kernel ask for at an offset that is not page-aligned, so the
/// reader's request finds all of its bytes in one prefetch and opens no transfer of its own.
const FITS_AHEAD: u64 = IO_SIZE_HINT as u64 + PAGE;
const PAGE: u64 = 4096;
/// Only this much of a file's beginning is parsed for a FITS primary header: a header that
/// has not ended by then gets no prefetch (real primary headers are a few records).
const FITS_PROBE_LIMIT: usize = 256 << 10;
/// A sequential reader that has not read for this long has stopped: its stripes stop. A read
/// still waiting for its bytes is not a pause: a reader blocked on a stripe slowed to a trickle
/// (on a shallow-queued link one ran at 0.3 MB/s for seconds) once had every other stripe of
/// its run stopped 3 s into that one read.
pub(crate) const IDLE_STOP: Duration = Duration::from_secs(3);
/// A sequential reader's run: where it is, and whether it still reads.
pub(crate) struct Run {
    start: u64,
    reader_pos: AtomicU64,
    /// When a read of this run last began or returned.
    last_read: Mutex<Instant>,
    /// Reads of this run that have begun and not returned (`Reading`).
    reading: AtomicUsize,
    planned_to: AtomicU64,
    stopped: AtomicBool,
    progress: Condvar,
    progress_lock: Mutex<()>,
}

impl Run {
    pub(crate) fn new(start: u64) -> Arc<Run> {
        Arc::new(Run {
            start,
            reader_pos: AtomicU64::new(start),
            last_read: Mutex::new(Instant::now()),
            reading: AtomicUsize::new(0),
            planned_to: AtomicU64::new(start),
            stopped: AtomicBool::new(false),
            progress: Condvar::new(),
            progress_lock: Mutex::new(()),
        })
    }

    /// The reader read up to `position`.
    pub(crate) fn note_read(&self, position: u64) {
        self.reader_pos.fetch_max(position, Ordering::Relaxed);
        *self.last_read.lock() = Instant::now();
        self.progress.notify_all();
    }

    /// Whether `offset` lies in what this run planned (or a little before it: the kernel
    /// reorders requests), so a read there belongs to it.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        offset.saturating_add(super::pattern::BACK_TOLERANCE) >= self.start
            && offset <= self.planned_to.load(Ordering::Relaxed)
    }

    /// Its stripes were stopped (reader idle, file closed): it plans nothing more.
    pub(crate) fn is_over(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn planned_to(&self) -> u64 {
        self.planned_to.load(Ordering::Relaxed)
    }

    /// Records that stripes up to `to` are (about to be) planned.
    pub(crate) fn claim_plan(&self, to: u64) {
        self.planned_to.fetch_max(to, Ordering::Relaxed);
    }

    /// A read of this run began; it counts as reading until the guard is dropped.
    pub(crate) fn reading(self: &Arc<Self>) -> Reading {
        self.reading.fetch_add(1, Ordering::Relaxed);
        Reading(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        self.reading.load(Ordering::Relaxed) == 0 && self.last_read.lock().elapsed() >= IDLE_STOP
    }

    fn wait_for_reader(&self, limit: Duration) {
        let mut g = self.progress_lock.lock();
        self.progress.wait_for(&mut g, limit);
    }
}

/// A read of a run in progress (`Run::reading`): while one is, the run is not idle, and the
/// idle time counts from when the last one returned.
pub(crate) struct Reading(Arc<Run>);

impl Drop for Reading {
    fn drop(&mut self) {
        *self.0.last_read.lock() = Instant::now();
        self.0.reading.fetch_sub(1, Ordering::Relaxed);
    }
}

struct SchedState {
    queue: Vec<Arc<Stream>>,
    /// Prefetches waiting for a connection to come back rather than logging in a new one:
    /// the next fetch thread whose stream ends runs them. A reader that comes for their
    /// bytes moves them to `queue`.
    deferred: Vec<Arc<Stream>>,
    running: usize,
    /// Streams told to stop for a waiting reader that have not ended yet.
    preempting: usize,
    /// Every stream not yet ended, per file key.
    files: HashMap<[u8; 32], Vec<Arc<Stream>>>,
}

pub(crate) struct Fetcher {
    remote: Arc<dyn Remote>,
    memory: Arc<Memory>,
    writer: Arc<Writer>,
    disk: Option<Arc<BlockCache>>,
    stats: Arc<Stats>,
    timeout: Duration,
    /// How far ahead of a reader stripes may fetch when nothing but memory holds their bytes.
    memory_horizon: u64,
    state: Mutex<SchedState>,
    stopping: AtomicBool,
}

impl Fetcher {
    pub(crate) fn new(
        remote: Arc<dyn Remote>,
        memory: Arc<Memory>,
        writer: Arc<Writer>,
        disk: Option<Arc<BlockCache>>,
        stats: Arc<Stats>,
        timeout: Duration,
        memory_horizon: u64,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            remote,
            memory,
            writer,
            disk,
            stats,
            timeout,
            memory_horizon,
            state: Mutex::new(SchedState {
                queue: Vec::new(),
                deferred: Vec::new(),
                running: 0,
                preempting: 0,
                files: HashMap::new(),
            }),
            stopping: AtomicBool::new(false),
        })
    }

    /// Streams that will bring the bytes `[a, b)` of `file`: streams already on their way,
    /// a peek extended over them, or new peeks for what nothing covers. The caller waits on
    /// them (they count it as a waiter until it calls `stop_waiting`).
    pub(crate) fn ensure(self: &Arc<Self>, file: &Arc<FileRef>, a: u64, b: u64) -> Vec<Arc<Stream>> {
        let size = file.size();
        let b = b.min(size);
        let mut st = self.state.lock();
        let streams = st.files.entry(file.key).or_default().clone();
        let mut covering: Vec<Arc<Stream>> = Vec::new();
        let mut new = Vec::new();
        let mut at = a;
        while at < b {
            // Filled since the caller looked (a transfer moved on): nothing to fetch there.
            if let Some(filled_to) = self.filled_from(file, at, b) {
                at = filled_to;
                continue;
            }
            // Where the next stream after `at` begins: nothing extends or opens past it.
            let next_start = streams
                .iter()
                .filter_map(|s| {
                    let t = s.st.lock();
                    (t.live() && t.pos > at).then_some(t.pos)
                })
                .min()
                .unwrap_or(size);
            let mut found = None;
            for s in &streams {
                let t = s.st.lock();
                let near = at - t.pos.min(at) <= NEAR
                    || t.run.as_ref().is_some_and(|r| at <= r.reader_pos.load(Ordering::Relaxed) + NEAR_OWN_READER);
                if t.live() && t.pos <= at && at < t.end && near {
                    found = Some((Arc::clone(s), t.end));
                    break;
                }
            }
            if found.is_none() {
                // The peek ending closest before `at`, if no other stream starts in between.
                let closest = streams
                    .iter()
                    .filter_map(|s| {
                        let t = s.st.lock();
                        (s.kind == Kind::Peek && t.live() && t.end <= at && at - t.end <= EXTEND_GAP)
                            .then(|| (t.end, Arc::clone(s)))
                    })
                    .max_by_key(|(end, _)| *end);
                if let Some((from, s)) = closest {
                    let in_between = streams.iter().any(|o| {
                        let t = o.st.lock();
                        !Arc::ptr_eq(o, &s) && t.live() && t.pos >= from && t.pos <= at
                    });
                    let mut t = s.st.lock();
                    if !in_between && t.live() && t.end == from {
                        let end = b.min(next_start);
                        s.set_end(&mut t, end);
                        s.changed.notify_all();
                        found = Some((Arc::clone(&s), end));
                    }
                }
            }
            match found {
                Some((s, end)) => {
                    covering.push(s);
                    at = end;
                }
                None => {
                    // A stream that was bringing these bytes when memory was looked at above
                    // may have filled them and ended since: it is no longer live, so nothing
                    // above found it. Look at memory again before fetching them a second time.
                    if let Some(filled_to) = self.filled_from(file, at, b) {
                        at = filled_to;
                        continue;
                    }
                    let end = b.min(next_start).max(at + 1);
                    let s = Stream::new(file, Kind::Peek, at, end, None);
                    covering.push(Arc::clone(&s));
                    new.push(s);
                    at = end;
                }
            }
        }
        for s in &covering {
            s.waiters.fetch_add(1, Ordering::Relaxed);
        }
        // A reader waits on a deferred prefetch: it runs as soon as any stream would.
        let SchedState { queue, deferred, .. } = &mut *st;
        deferred.retain(|d| {
            let wanted = covering.iter().any(|c| Arc::ptr_eq(c, d));
            if wanted {
                queue.push(Arc::clone(d));
            }
            !wanted
        });
        for s in new {
            st.files.entry(file.key).or_default().push(Arc::clone(&s));
            st.queue.push(s);
        }
        self.dispatch(&mut st);
        covering
    }

    /// Plans stripes over `[from, to)` of `file` for a sequential reader's `run`: the parts
    /// no stream covers and no cache holds whole are split among the connections.
    pub(crate) fn plan(self: &Arc<Self>, run: &Arc<Run>, file: &Arc<FileRef>, from: u64, to: u64) {
        let to = to.min(file.size());
        let mut st = self.state.lock();
        let streams = st.files.entry(file.key).or_default().clone();
        // The peek serving the reader right now joins the run as its first stripe. It ends
        // soon (where the stripes begin), so the rest is split among all the connections;
        // the last stripe starts when the peek is done.
        for s in &streams {
            let mut t = s.st.lock();
            if s.kind == Kind::Peek && t.live() && t.run.is_none() && t.end >= run.start && t.pos <= from {
                t.run = Some(Arc::clone(run));
            }
        }
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut at = from;
        while at < to {
            // A live stream covers everything from where it began to its end: what lies behind
            // its position it has fetched already. (Asking for `pos <= at` instead let a peek
            // that had just passed `at` leave its last bytes to a stripe too, fetched twice.)
            let covered_to = streams
                .iter()
                .filter_map(|s| {
                    let t = s.st.lock();
                    (t.live() && s.start <= at && at < t.end).then_some(t.end)
                })
                .max();
            if let Some(end) = covered_to {
                at = end;
                continue;
            }
            let index = at / BLOCK_SIZE;
            if self.is_whole(file, index) {
                at = (index + 1) * BLOCK_SIZE;
                continue;
            }
            match gaps.last_mut() {
                Some(g) if g.1 == at => g.1 = ((index + 1) * BLOCK_SIZE).min(to),
                _ => gaps.push((at, ((index + 1) * BLOCK_SIZE).min(to))),
            }
            at = ((index + 1) * BLOCK_SIZE).min(to);
        }
        run.claim_plan(to);
        let connections = self.remote.parallelism().max(1) as u64;
        let count = |(start, end): &(u64, u64)| ((end - start) / MIN_STRIPE).clamp(1, connections);
        let planned: u64 = gaps.iter().map(count).sum();
        if planned > 0 {
            // The stripes beyond the first would each log in when they start (after the ramp,
            // `FULL_SPEED_AFTER`): log them in now, in parallel. One more for the connection
            // the reader's peek holds.
            self.remote.prepare((planned + 1).min(connections) as usize);
        }
        for (start, end) in gaps {
            let stripes = count(&(start, end));
            // Stripe boundaries on block boundaries, so no block is shared by two stripes.
            let blocks = (end - start).div_ceil(BLOCK_SIZE);
            let mut at = start;
            for i in 0..stripes {
                let stop = if i + 1 == stripes {
                    end
                } else {
                    let n = blocks * (i + 1) / stripes;
                    ((start / BLOCK_SIZE + n) * BLOCK_SIZE).clamp(at, end)
                };
                if stop > at {
                    let s = Stream::new(file, Kind::Stripe, at, stop, Some(Arc::clone(run)));
                    st.files.entry(file.key).or_default().push(Arc::clone(&s));
                    st.queue.push(s);
                }
                at = stop;
            }
        }
        self.dispatch(&mut st);
    }

    /// Looks at the first bytes of `file` in `block` (block 0) as a transfer from the start
    /// of the file fills them: once they hold a whole FITS primary header, the next HDU's
    /// header is prefetched. Returns whether to look again when more bytes arrive (the
    /// header has not ended yet).
    pub(super) fn probe_fits(self: &Arc<Self>, file: &Arc<FileRef>, block: &Block) -> bool {
        let Some(filled) = block.lock().filled.containing(0) else { return true };
        let n = filled.end.min(FITS_PROBE_LIMIT);
        match fits::primary(block.filled_bytes(0..n)) {
            Primary::Unknown => false,
            Primary::NeedMore => n < FITS_PROBE_LIMIT && n < block.len(),
            Primary::Header { next, .. } => {
                // Only when a header fits after it; a file that ends there has no next HDU.
                if next.saturating_add(fits::RECORD) <= file.size() {
                    let from = next - next % PAGE;
                    if self.prefetch(file, from, from + FITS_AHEAD) {
                        log::debug!("{}: FITS, next header at {next}: fetching it ahead", file.id.path);
                    }
                }
                false
            }
        }
    }

    /// Starts fetching `[a, b)` of `file` before anyone asks, unless memory or a live stream
    /// has those bytes already. True when a transfer was queued.
    pub(crate) fn prefetch(self: &Arc<Self>, file: &Arc<FileRef>, a: u64, b: u64) -> bool {
        let b = b.min(file.size());
        if a >= b {
            return false;
        }
        let mut st = self.state.lock();
        if (a / BLOCK_SIZE..=(b - 1) / BLOCK_SIZE).all(|i| self.is_whole(file, i)) {
            return false;
        }
        // The first byte neither memory nor a live stream will have.
        let from = self.filled_from(file, a, b).unwrap_or(a);
        if from >= b {
            return false;
        }
        let streams = st.files.entry(file.key).or_default();
        let covered = streams.iter().any(|s| {
            let t = s.st.lock();
            t.live() && t.pos <= from && from < t.end
        });
        if covered {
            return false;
        }
        let s = Stream::new(file, Kind::Peek, from, b, None);
        streams.push(Arc::clone(&s));
        Stats::add(&self.stats.prefetches, 1);
        // The caller's own transfer holds a connection; when no other is free, this one
        // waits for it (its reader is done within a few round trips) instead of a login.
        if self.remote.ready() > 0 || st.running == 0 {
            st.queue.push(s);
            self.dispatch(&mut st);
        } else {
            st.deferred.push(s);
        }
        true
    }

    /// Stops every stream of `run` (its reader closed the file or went elsewhere).
    pub(crate) fn stop_run(&self, run: &Arc<Run>) {
        run.stopped.store(true, Ordering::Relaxed);
        run.progress.notify_all();
        let mut ended = Vec::new();
        {
            let mut st = self.state.lock();
            let SchedState { queue, files, .. } = &mut *st;
            for streams in files.values() {
                for s in streams {
                    let mut t = s.st.lock();
                    if !t.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, run)) {
                        continue;
                    }
                    if matches!(t.phase, Phase::Queued) {
                        t.phase = Phase::Ended(Outcome::Stopped);
                        ended.push(Arc::clone(s));
                    } else {
                        s.request_stop(&mut t, Stop::Unwanted);
                    }
                }
            }
            queue.retain(|s| !ended.iter().any(|e| Arc::ptr_eq(e, s)));
            for s in &ended {
                if let Some(v) = files.get_mut(&s.file.key) {
                    v.retain(|x| !Arc::ptr_eq(x, s));
                }
            }
        }
        for s in ended {
            self.finish(&s, s.start);
        }
        // A fetch thread offers the block it was filling to the cache writer as it ends; the
        // writer stops right after this, so wait for them (a transfer stuck in a read gives up
        // within the timeout; unmounting does not wait longer than that).
        let until = Instant::now() + self.timeout.min(Duration::from_secs(10));
        while self.state.lock().running > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops everything (unmount): queued streams end, running ones close.
    pub(crate) fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut ended = Vec::new();
        {
            let mut st = self.state.lock();
            let mut queued: Vec<_> = st.queue.drain(..).collect();
            queued.append(&mut st.deferred);
            for streams in st.files.values() {
                for s in streams {
                    let mut t = s.st.lock();
                    s.request_stop(&mut t, Stop::Unmount);
                }
            }
            for s in queued {
                s.st.lock().phase = Phase::Ended(Outcome::Failed(RemoteError::Protocol("unmounting".into())));
                ended.push(s);
            }
            for v in st.files.values_mut() {
                v.retain(|x| !ended.iter().any(|e| Arc::ptr_eq(e, x)));
            }
        }
        for s in ended {
            self.finish(&s, s.start);
        }
    }

    /// When the byte at `at` is in memory already: the end of the filled bytes from there
    /// (at most `limit`).
    fn filled_from(&self, file: &FileRef, at: u64, limit: u64) -> Option<u64> {
        let mut pos = at;
        while pos < limit {
            let index = pos / BLOCK_SIZE;
            let base = index * BLOCK_SIZE;
            // What is filled so far counts even when the next block is not in memory yet:
            // returning nothing there made a read whose first block a stripe had just filled
            // open a second transfer over those bytes (its own peek, fetching them twice).
            let Some(block) = self.memory.peek(&(file.key, index)) else { break };
            let g = block.lock();
            let Some(r) = g.filled.containing((pos - base) as usize) else { break };
            pos = base + r.end as u64;
            if r.end < block.len() {
                break;
            }
        }
        (pos > at).then_some(pos.min(limit))
    }

    /// Whether the cache holds block `index` of `file` whole (memory or disk).
    fn is_whole(&self, file: &FileRef, index: u64) -> bool {
        if self.memory.peek(&(file.key, index)).is_some_and(|b| b.is_complete()) {
            return true;
        }
        self.disk.as_ref().is_some_and(|d| d.probe(&file.id, index) == Some(true))
    }

    /// Starts queued streams while connections are free; asks a stripe to make room when a
    /// reader waits and none is.
    fn dispatch(self: &Arc<Self>, st: &mut SchedState) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        if st.running == 0 && !st.deferred.is_empty() {
            // No transfer will end to hand them a connection: every connection is back.
            let deferred = std::mem::take(&mut st.deferred);
            st.queue.extend(deferred);
        }
        let limit = self.remote.parallelism().max(1);
        while st.running < limit {
            let Some(s) = pick(&mut st.queue) else { break };
            st.running += 1;
            s.st.lock().phase = Phase::Running;
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new().name("mastfs-fetch".into()).spawn({
                let s = Arc::clone(&s);
                move || me.work(s)
            });
            if let Err(e) = spawned {
                st.running -= 1;
                log::warn!("cannot start a fetch thread: {e}");
                let err = RemoteError::io(&e, "starting a fetch thread");
                s.st.lock().phase = Phase::Ended(Outcome::Failed(err));
                if let Some(v) = st.files.get_mut(&s.file.key) {
                    v.retain(|x| !Arc::ptr_eq(x, &s));
                }
                s.ended.store(true, Ordering::Release);
                s.changed.notify_all();
            }
        }
        let urgent = st.queue.iter().filter(|s| s.waiters.load(Ordering::Relaxed) > 0).count();
        if urgent > st.preempting && st.running >= limit {
            let victims = urgent - st.preempting;
            for _ in 0..victims {
                if !self.preempt_one(st) {
                    break;
                }
                st.preempting += 1;
            }
        }
    }

    /// Asks the least needed running stream to stop: a peek nobody waits on, else the stripe
    /// furthest ahead of its reader that nobody waits on.
    fn preempt_one(&self, st: &SchedState) -> bool {
        let mut best: Option<(u64, Arc<Stream>)> = None;
        for s in st.files.values().flatten() {
            if s.waiters.load(Ordering::Relaxed) > 0 {
                continue;
            }
            let t = s.st.lock();
            if !matches!(t.phase, Phase::Running) || t.stop.is_some() {
                continue;
            }
            let score = match (&t.run, s.kind) {
                (_, Kind::Peek) => u64::MAX,
                (Some(run), Kind::Stripe) => t.pos.saturating_sub(run.reader_pos.load(Ordering::Relaxed)),
                (None, Kind::Stripe) => 0,
            };
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, Arc::clone(s)));
            }
        }
        match best {
            Some((_, s)) => {
                let mut t = s.st.lock();
                s.request_stop(&mut t, Stop::Preempted);
                true
            }
            None => false,
        }
    }

    /// A fetch thread: runs a stream, then the next queued one while connections allow.
    fn work(self: Arc<Self>, first: Arc<Stream>) {
        let mut current = first;
        loop {
            let requeue = self.run_stream(&current);
            // What this connection just managed, the measure of what it takes over next.
            let thief_rate = (current.kind == Kind::Stripe).then(|| current.st.lock().rate(Instant::now())).flatten();
            let mut st = self.state.lock();
            if let Some(v) = st.files.get_mut(&current.file.key) {
                v.retain(|x| !Arc::ptr_eq(x, &current));
                if v.is_empty() {
                    st.files.remove(&current.file.key);
                }
            }
            if current.st.lock().stop == Some(Stop::Preempted) {
                st.preempting = st.preempting.saturating_sub(1);
            }
            if let Some(rest) = requeue {
                st.files.entry(rest.file.key).or_default().push(Arc::clone(&rest));
                st.queue.push(rest);
            }
            let limit = self.remote.parallelism().max(1);
            let next = if st.running <= limit && !self.stopping.load(Ordering::SeqCst) {
                // This thread's connection is coming back to the pool: a deferred prefetch
                // gets it before the thread exits.
                pick(&mut st.queue)
                    .or_else(|| (!st.deferred.is_empty()).then(|| st.deferred.remove(0)))
                    .or_else(|| self.steal(&mut st, thief_rate))
            } else {
                None
            };
            match next {
                Some(s) => {
                    s.st.lock().phase = Phase::Running;
                    current = s;
                }
                None => {
                    st.running -= 1;
                    // Another thread may have queued work it could not start.
                    self.dispatch(&mut st);
                    return;
                }
            }
        }
    }

    /// The tail of a run: a connection with nothing queued takes over the end of the running
    /// stripe that will end last, if that is worth a reopen. The stripe's end moves to where
    /// the new one begins (on a block boundary past the block it is filling), so it still ends
    /// at its planned end and no byte is fetched twice; the one early close this adds costs
    /// what the server had in flight. Returns the new stripe, already registered.
    ///
    /// Where to split: so that both end together. The stripe keeps what it fetches at its own
    /// rate while the new one opens (twice its first-byte wait: the reopen, then a slow start)
    /// and fetches the rest at `thief_rate`, the rate this connection's last stripe had.
    /// Streams sharing a queue are often far from equal (on a rate-limited link one had less
    /// than half the rate of others), so halving would leave a slow stripe most of a slow tail.
    fn steal(&self, st: &mut SchedState, thief_rate: Option<f64>) -> Option<Arc<Stream>> {
        let now = Instant::now();
        let mut best: Option<(Duration, Arc<Stream>)> = None;
        for s in st.files.values().flatten() {
            if s.kind != Kind::Stripe {
                continue;
            }
            let t = s.st.lock();
            if !matches!(t.phase, Phase::Running) || t.stop.is_some() || t.run.as_ref().is_none_or(|r| r.is_over()) {
                continue;
            }
            let (Some(first_byte), Some(rate)) = (t.first_byte, t.rate(now)) else { continue };
            let left = t.end.saturating_sub(t.pos);
            if left < 2 * STEAL_MIN_PIECE {
                continue;
            }
            let needs = Duration::from_secs_f64(left as f64 / rate);
            if needs < (first_byte * STEAL_AFTER_FIRST_BYTES).max(STEAL_FLOOR) {
                log::trace!(
                    "{}: no takeover of the stripe at {}: needs {needs:?}, first byte {first_byte:?}",
                    s.file.id.path,
                    t.pos
                );
                continue;
            }
            if best.as_ref().is_none_or(|(b, _)| needs > *b) {
                best = Some((needs, Arc::clone(s)));
            }
        }
        let (_, victim) = best?;
        let mut t = victim.st.lock();
        let left = t.end - t.pos;
        let keep = match (t.rate(now), t.first_byte, thief_rate) {
            (Some(own), Some(first_byte), Some(thief)) if thief > 0.0 => {
                let ratio = own / thief;
                let head_start = own * 2.0 * first_byte.as_secs_f64();
                ((head_start + left as f64 * ratio) / (1.0 + ratio)) as u64
            }
            _ => left / 2,
        };
        // Past the block the stripe is filling: it never reads beyond a block's end at once.
        let next_block = (t.pos / BLOCK_SIZE + 1) * BLOCK_SIZE;
        let at = (t.pos + keep.min(left)).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        // Not before what the server may already be sending it: those bytes would cross the
        // link twice.
        let split = at.max(next_block).max(t.reach.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
        // Past where its reader lets stripes fetch (no disk cache), the new one would only wait.
        let allowed =
            t.run.as_ref().map_or(0, |r| r.reader_pos.load(Ordering::Relaxed).saturating_add(self.allowance(r)));
        if split + STEAL_MIN_PIECE > t.end || split >= allowed {
            log::trace!(
                "{}: no takeover of the stripe at {}: split {split}, end {}, reach {}",
                victim.file.id.path,
                t.pos,
                t.end,
                t.reach
            );
            return None;
        }
        let end = t.end;
        victim.set_end(&mut t, split);
        victim.changed.notify_all();
        let s = Stream::new(&victim.file, Kind::Stripe, split, end, t.run.clone());
        log::debug!(
            "{}: the stripe at {} now ends at {split}; another connection takes {split}..{end}",
            victim.file.id.path,
            t.pos
        );
        drop(t);
        st.files.entry(s.file.key).or_default().push(Arc::clone(&s));
        Some(s)
    }

    /// Marks a stream ended and wakes every reader waiting on a block it was to fill.
    fn finish(&self, s: &Stream, pos: u64) {
        s.ended.store(true, Ordering::Release);
        s.changed.notify_all();
        let end = s.end_hint.load(Ordering::Relaxed).max(pos);
        let first = pos.min(end) / BLOCK_SIZE;
        let last = end.saturating_sub(1) / BLOCK_SIZE;
        for index in first..=last.max(first) {
            if let Some(b) = self.memory.peek(&(s.file.key, index)) {
                b.notify();
            }
        }
    }
}

/// Takes the next stream to start: those a reader waits on first (oldest first), then the
/// stripe closest to its reader.
fn pick(queue: &mut Vec<Arc<Stream>>) -> Option<Arc<Stream>> {
    if queue.is_empty() {
        return None;
    }
    let urgent = queue.iter().position(|s| s.waiters.load(Ordering::Relaxed) > 0);
    let at = urgent.unwrap_or_else(|| {
        queue
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| {
                let t = s.st.lock();
                let reader = t.run.as_ref().map_or(t.pos, |r| r.reader_pos.load(Ordering::Relaxed));
                t.pos.saturating_sub(reader)
            })
            .map_or(0, |(i, _)| i)
    });
    Some(queue.remove(at))
}
