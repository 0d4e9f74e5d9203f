//! One transfer, from `open` to close: a stream reads its range of the file straight into
//! the blocks (`RangeReader::read` into a claimed part of a block's buffer), hands each block
//! it leaves to the cache writer, reopens at the exact byte after a break, lingers at a
//! peek's end for a read that extends it, and ends at its planned end, when told to stop, or
//! with the error every waiter then gets.
//!
//! Threads: the stream's fetch thread runs it; FUSE threads and the scheduler change its
//! planned end or ask it to stop, under its lock. Locks: a stream's lock is taken after the
//! scheduler's and before `Memory`'s map and a block's; the stream never holds it while
//! reading from the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Fetcher, Run};
use crate::error::RemoteError;
use crate::read::block::{Block, Claim};
use crate::read::{BLOCK_SIZE, FileRef};
use crate::remote::{Intent, RangeReader};
use crate::stats::Stats;

/// Bytes a sequential reader reads before all of its stripes fetch at full speed, and how
/// far ahead of it they may fetch until then.
const FULL_SPEED_AFTER: u64 = 8 << 20;
const RAMP_AHEAD: u64 = 8 << 20;
/// Bounds of a peek's linger.
const LINGER_MIN: Duration = Duration::from_millis(10);
const LINGER_MAX: Duration = Duration::from_millis(100);
/// Retries of a transfer that fails without delivering a byte.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Most bytes one skipping read (past bytes someone else has) takes.
const SKIP_CHUNK: usize = 256 << 10;
/// A stripe asks its transport how far the server may send (`RangeReader::reach`) once per
/// this many bytes; its reach moves at most about this much in between.
const REACH_EVERY: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Peek,
    Stripe,
}

/// Why a stream was told to stop before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Its reader closed the file, went elsewhere, or stopped reading.
    Unwanted,
    /// A reader waits for a connection this stream holds.
    Preempted,
    Unmount,
}

/// How a stream ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Reached its planned end (or the end of the file).
    Done,
    /// Stopped early; its bytes may be fetched again by others.
    Stopped,
    Failed(RemoteError),
}

#[derive(Debug, Clone)]
pub(super) enum Phase {
    Queued,
    Running,
    Ended(Outcome),
}

pub(super) struct StreamState {
    pub(super) pos: u64,
    pub(super) end: u64,
    pub(super) phase: Phase,
    pub(super) run: Option<Arc<Run>>,
    pub(super) stop: Option<Stop>,
    /// Latency from `open` to the first byte: a round trip or two, the linger's measure.
    pub(super) first_byte: Option<Duration>,
    /// When the first byte arrived and where: the stream's rate is measured from there.
    pub(super) flowing_since: Option<(Instant, u64)>,
    /// How far into the file the server may already be sending this stream's bytes, as the
    /// transport last said (0 when it cannot say).
    pub(super) reach: u64,
}

impl StreamState {
    pub(super) fn live(&self) -> bool {
        !matches!(self.phase, Phase::Ended(_)) && self.stop.is_none()
    }

    /// Bytes per second since the first byte arrived, once there is something to measure.
    pub(super) fn rate(&self, now: Instant) -> Option<f64> {
        let (since, from) = self.flowing_since?;
        let (done, secs) = (self.pos.saturating_sub(from), now.duration_since(since).as_secs_f64());
        (done > 0 && secs > 0.0).then(|| done as f64 / secs)
    }
}

pub(crate) struct Stream {
    pub(super) file: Arc<FileRef>,
    pub(super) kind: Kind,
    /// Where the stream began (it only moves forward from here).
    pub(super) start: u64,
    pub(super) st: Mutex<StreamState>,
    pub(super) changed: Condvar,
    /// Readers waiting on this stream's bytes now.
    pub(super) waiters: AtomicUsize,
    /// Set once the stream has ended; readable without the stream's lock.
    pub(super) ended: AtomicBool,
    /// The stream's planned end, readable without its lock.
    pub(super) end_hint: AtomicU64,
}

impl Stream {
    pub(super) fn new(file: &Arc<FileRef>, kind: Kind, start: u64, end: u64, run: Option<Arc<Run>>) -> Arc<Stream> {
        Arc::new(Stream {
            file: Arc::clone(file),
            kind,
            start,
            st: Mutex::new(StreamState {
                pos: start,
                end,
                phase: Phase::Queued,
                run,
                stop: None,
                first_byte: None,
                flowing_since: None,
                reach: 0,
            }),
            changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            end_hint: AtomicU64::new(end),
        })
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether the stream's range meets `[a, b)`.
    pub(crate) fn overlaps(&self, a: u64, b: u64) -> bool {
        self.start < b && self.end_hint.load(Ordering::Relaxed) > a
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match &self.st.lock().phase {
            Phase::Ended(o) => Some(o.clone()),
            _ => None,
        }
    }

    pub(crate) fn stop_waiting(&self) {
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn set_end(&self, st: &mut StreamState, end: u64) {
        st.end = end;
        self.end_hint.store(end, Ordering::Relaxed);
    }

    pub(super) fn request_stop(&self, st: &mut StreamState, why: Stop) {
        if st.stop.is_none() {
            st.stop = Some(why);
        }
        self.changed.notify_all();
    }
}

impl Fetcher {
    /// Runs one stream to its end. Returns the rest of its range when it was preempted and
    /// that rest is still wanted.
    pub(super) fn run_stream(self: &Arc<Self>, s: &Arc<Stream>) -> Option<Arc<Stream>> {
        let file = &s.file;
        // A transfer from the file's first byte shows whether it is FITS (`probe_fits`).
        let mut probing = s.start == 0;
        let size = file.size();
        let mut reader: Option<Box<dyn RangeReader>> = None;
        let mut opened_at = Instant::now();
        let mut delivered_since_open = 0u64;
        // The planned end the open reader was last told of.
        let mut told_end = 0u64;
        let mut reach_asked_at = 0u64;
        let mut failures = 0u32;
        let mut last_progress = Instant::now();
        let mut lingered = false;
        let mut current: Option<(u64, Arc<Block>)> = None;
        let mut scratch: Vec<u8> = Vec::new();
        let outcome = loop {
            let (pos, end, stop, run) = {
                let t = s.st.lock();
                (t.pos, t.end, t.stop, t.run.clone())
            };
            if stop.is_some() {
                break Outcome::Stopped;
            }
            if pos >= end {
                if s.kind == Kind::Peek && !lingered && pos < size && reader.is_some() {
                    // Extended: at its new end it may linger again.
                    if self.linger(s, pos) {
                        continue;
                    }
                    lingered = true;
                }
                // Ended under the lock, so `ensure` cannot extend a stream that is closing.
                let mut t = s.st.lock();
                if t.end > t.pos && t.stop.is_none() {
                    continue;
                }
                t.phase = Phase::Ended(Outcome::Done);
                break Outcome::Done;
            }
            if let Some(run) = &run
                && s.kind == Kind::Stripe
            {
                if run.stopped.load(Ordering::Relaxed) || run.idle() {
                    // The whole run is over: a reader that comes back gets a new one.
                    run.stopped.store(true, Ordering::Relaxed);
                    let mut t = s.st.lock();
                    s.request_stop(&mut t, Stop::Unwanted);
                    continue;
                }
                if pos >= run.reader_pos.load(Ordering::Relaxed).saturating_add(self.allowance(run)) {
                    run.wait_for_reader(Duration::from_millis(50));
                    continue;
                }
            }
            let Some(r) = reader.as_mut() else {
                let intent = match s.kind {
                    Kind::Peek => Intent::Peek { len: end - pos },
                    Kind::Stripe => Intent::Run { end },
                };
                opened_at = Instant::now();
                match self.remote.open(&file.id.path, pos, file.version, intent) {
                    Ok(r) if r.position() == pos => {
                        log::debug!("{:?} of {} opened at {pos} to {end}", s.kind, file.id.path);
                        Stats::add(&self.stats.fetches, 1);
                        delivered_since_open = 0;
                        told_end = end;
                        reader = Some(r);
                    }
                    Ok(r) => {
                        let e = RemoteError::Protocol(format!("transfer opened at {} for {pos}", r.position()));
                        r.close();
                        break Outcome::Failed(e);
                    }
                    Err(e) => match self.after_error(s, e, &mut failures, last_progress, false) {
                        Ok(()) => continue,
                        Err(o) => break o,
                    },
                }
                continue;
            };
            if end != told_end {
                // Another connection took over the far part of this stripe (`steal`).
                r.plan_end(end);
                told_end = end;
            }
            let index = pos / BLOCK_SIZE;
            let block = match &current {
                Some((i, b)) if *i == index => Arc::clone(b),
                _ => {
                    if let Some((i, b)) = current.take() {
                        self.writer.offer(file, i, &b);
                    }
                    let until = Instant::now() + self.timeout;
                    match self.memory.get_or_create(&(file.key, index), file.block_len(index), false, until) {
                        Some((b, _)) => {
                            current = Some((index, Arc::clone(&b)));
                            b
                        }
                        None => break Outcome::Failed(RemoteError::Timeout("no free block buffer".into())),
                    }
                }
            };
            let base = index * BLOCK_SIZE;
            let within = (pos - base) as usize;
            let limit = (end.min(base + BLOCK_SIZE) - base) as usize;
            let result = match block.claim(within, limit) {
                Claim::Loading => {
                    let mut g = block.lock();
                    block.wait(&mut g, Instant::now() + Duration::from_millis(20));
                    continue;
                }
                Claim::Free(mut g) => match r.read(g.slice()) {
                    Ok(n) => {
                        g.commit(n);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                },
                Claim::Taken { until } => {
                    // Someone else has these bytes: read past them.
                    scratch.resize((until - within).clamp(1, SKIP_CHUNK), 0);
                    r.read(&mut scratch)
                }
            };
            match result {
                Ok(0) => {
                    // `Ok(0)` only at the end of the file, and `pos` is before it.
                    break Outcome::Failed(RemoteError::Changed(format!(
                        "{}: the transfer ended at {pos}, the listing said {size} bytes",
                        file.id.path
                    )));
                }
                Ok(n) => {
                    // Where another connection could take over this stripe without bytes in
                    // flight to this one (`steal`); asked only every `REACH_EVERY` bytes.
                    let reach = (s.kind == Kind::Stripe && pos >= reach_asked_at + REACH_EVERY)
                        .then(|| {
                            reach_asked_at = pos;
                            r.reach()
                        })
                        .flatten();
                    let mut t = s.st.lock();
                    let at = t.pos;
                    t.flowing_since.get_or_insert((Instant::now(), at));
                    if let Some(reach) = reach {
                        t.reach = reach + REACH_EVERY;
                    }
                    t.pos += n as u64;
                    t.first_byte.get_or_insert_with(|| opened_at.elapsed());
                    drop(t);
                    delivered_since_open += n as u64;
                    Stats::add(&self.stats.fetched_bytes, n as u64);
                    failures = 0;
                    last_progress = Instant::now();
                    if probing {
                        probing = index == 0 && self.probe_fits(file, &block);
                    }
                }
                Err(e) => {
                    // The reader is dead; what it delivered is in the blocks.
                    reader = None;
                    if let Some((i, b)) = current.take() {
                        self.writer.offer(file, i, &b);
                    }
                    match self.after_error(s, e, &mut failures, last_progress, delivered_since_open > 0) {
                        Ok(()) => continue,
                        Err(o) => break o,
                    }
                }
            }
        };
        let (pos, end, stop) = {
            let t = s.st.lock();
            (t.pos, t.end, t.stop)
        };
        // Closed before the last block goes to the cache writer, which may keep this thread
        // waiting for room (up to `OFFER_WAIT`): an open transfer at its planned end keeps
        // taking what the server sends past it all that time.
        if let Some(r) = reader {
            if pos < size {
                if pos >= end {
                    Stats::add(&self.stats.planned_ends, 1);
                } else {
                    Stats::add(&self.stats.cancelled, 1);
                }
            }
            r.close();
        }
        if let Some((i, b)) = current.take() {
            self.writer.offer(file, i, &b);
        }
        log::debug!("{:?} of {} from {} ended at {pos} (planned {end}): {outcome:?}", s.kind, file.id.path, s.start);
        {
            let mut t = s.st.lock();
            t.phase = Phase::Ended(outcome.clone());
            if pos > s.start {
                // A peek that led into a sequential run served it: it counts as its first stripe.
                let counter =
                    if s.kind == Kind::Stripe || t.run.is_some() { &self.stats.stripes } else { &self.stats.peeks };
                Stats::add(counter, 1);
            }
        }
        self.finish(s, pos);
        // A preempted stripe's reader still wants the rest: it queues again.
        if stop == Some(Stop::Preempted) && pos < end && !self.stopping.load(Ordering::SeqCst) {
            let t = s.st.lock();
            let run = t.run.clone();
            if s.kind == Kind::Stripe && run.as_ref().is_some_and(|r| !r.stopped.load(Ordering::Relaxed)) {
                return Some(Stream::new(file, Kind::Stripe, pos, end, run));
            }
        }
        None
    }

    /// How far ahead of its reader a stripe may fetch. Until the reader has read
    /// `FULL_SPEED_AFTER` in order, only `RAMP_AHEAD`: a reader that stops after a few MiB
    /// (`head`, one table of a FITS file) does not leave every connection fetching the rest
    /// of the file; a copy waits that long for all its stripes. Without a usable disk cache,
    /// only memory holds what stripes fetch: never more than the memory horizon.
    pub(super) fn allowance(&self, run: &Run) -> u64 {
        let consumed = run.reader_pos.load(Ordering::Relaxed).saturating_sub(run.start);
        let ahead = if consumed < FULL_SPEED_AFTER { RAMP_AHEAD } else { u64::MAX };
        if self.writer.usable() { ahead } else { ahead.min(self.memory_horizon) }
    }

    /// Waits a moment at a peek's end for a read that extends it. True when extended.
    fn linger(&self, s: &Stream, pos: u64) -> bool {
        let mut t = s.st.lock();
        let wait = t.first_byte.unwrap_or(LINGER_MIN).saturating_mul(2).clamp(LINGER_MIN, LINGER_MAX);
        let until = Instant::now() + wait;
        while t.end <= pos && t.stop.is_none() {
            let now = Instant::now();
            if now >= until || self.queue_has_waiters() {
                break;
            }
            s.changed.wait_for(&mut t, until - now);
        }
        t.end > pos && t.stop.is_none()
    }

    /// Whether a queued stream wants this stream's connection more than a possible
    /// extension does: a reader waits on it, or a prefetch waits for a connection to free.
    fn queue_has_waiters(&self) -> bool {
        // Called with a stream's lock held: only try the scheduler's lock, never wait on it.
        self.state
            .try_lock()
            .is_some_and(|st| !st.deferred.is_empty() || st.queue.iter().any(|q| q.waiters.load(Ordering::Relaxed) > 0))
    }

    /// After a failed open or a broken transfer: `Ok` to try again (at the exact byte the
    /// stream reached), or the outcome to end with.
    fn after_error(
        &self,
        s: &Stream,
        e: RemoteError,
        failures: &mut u32,
        last_progress: Instant,
        progressed: bool,
    ) -> Result<(), Outcome> {
        if !e.is_transient() || self.stopping.load(Ordering::SeqCst) {
            return Err(Outcome::Failed(e));
        }
        let wanted = {
            let t = s.st.lock();
            t.stop.is_none()
                && match (s.kind, &t.run) {
                    (Kind::Stripe, Some(run)) => !run.stopped.load(Ordering::Relaxed),
                    _ => s.waiters.load(Ordering::Relaxed) > 0,
                }
        };
        if !wanted {
            return Err(Outcome::Stopped);
        }
        if progressed {
            *failures = 0;
            Stats::add(&self.stats.resumed, 1);
            log::info!("transfer of {} broke at {}: {e}; resuming", s.file.id.path, s.st.lock().pos);
            return Ok(());
        }
        *failures += 1;
        if *failures > ATTEMPTS || last_progress.elapsed() >= self.timeout {
            return Err(Outcome::Failed(e));
        }
        Stats::add(&self.stats.retries, 1);
        log::info!("retrying a transfer of {} after: {e}", s.file.id.path);
        let wait = FIRST_BACKOFF * 2u32.pow(*failures - 1);
        let mut t = s.st.lock();
        if t.stop.is_none() {
            s.changed.wait_for(&mut t, wait);
        }
        Ok(())
    }
}
