//! An in-memory remote for unit tests: a tree of files with distinct modification times,
//! ranged readers over their bytes, request counters and injected faults (latency, a byte
//! rate, broken transfers, refusals, stalls), so the read path is tested without a server.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::error::RemoteError;
use crate::remote::{EntryKind, Intent, RangeReader, Remote, RemoteEntry, Version};

/// The modification time the first file gets; each later `put` is a minute younger, so no
/// two files share a time and a replaced file always has a new one.
const FIRST_MTIME: u64 = 1_700_000_000;
/// Bytes one `read` hands out at most, about one TLS record.
const CHUNK: usize = 16 * 1024;
/// A stalled transfer gives up after this long, like a transport's timeout, so a test that
/// forgets to lift a stall still ends.
const STALL_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct FakeFile {
    data: Arc<Vec<u8>>,
    mtime: SystemTime,
}

/// How one ranged transfer went, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub path: String,
    pub offset: u64,
    pub intent: Intent,
    /// Bytes handed to the reader.
    pub delivered: u64,
    /// `Some(position)` when the reader closed the transfer before the end of the file.
    pub closed_early_at: Option<u64>,
    /// The transfer broke (injected fault) and the reader saw an error.
    pub broke: bool,
    /// The last planned end the reader was told of after opening (`RangeReader::plan_end`).
    pub told_end: Option<u64>,
    /// How many times it was told of a new planned end.
    pub times_told: u32,
    /// It ran at `Faults::slow_rate`.
    pub slow: bool,
}

/// Faults and latency applied to every transfer; tests change them at any time.
#[derive(Default)]
pub struct Faults {
    /// Delay before `open` returns, in microseconds (a round trip or a few).
    pub open_delay_us: AtomicU64,
    /// Bytes per second each transfer delivers at most (0: unlimited).
    pub rate: AtomicU64,
    /// Break each transfer after it delivered this many bytes (0: never).
    pub break_after: AtomicU64,
    /// Break this many transfers, then stop breaking (0 with `break_after` set: break all).
    pub break_count: AtomicU64,
    /// `open` fails as a `550` refusal.
    pub refuse: AtomicBool,
    /// The next this many `open`s fail as a reset connection (a transient failure).
    pub fail_opens: AtomicU64,
    /// `open` and `read` block while set (a server that stopped answering).
    pub stall: AtomicBool,
    /// Every listing and stat fails as if the server were unreachable.
    pub fail_lists: AtomicBool,
    /// Listings and stats wait while this is set, as on a server that stopped answering.
    pub stall_lists: AtomicBool,
    /// Every listing takes this long, in milliseconds.
    pub list_delay_ms: AtomicU64,
    /// The transfer opened this many opens in (1 for the first, 0: none) delivers at most
    /// `slow_rate` bytes per second: one connection with a small share of a shared link.
    pub slow_open: AtomicU64,
    pub slow_rate: AtomicU64,
}

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, FakeFile>>,
    next_mtime: AtomicU64,
    faults: Faults,
    parallelism: AtomicUsize,
    lists: AtomicU64,
    stats: AtomicU64,
    /// Directories whose listing is refused (`550`) though their entries can be looked up.
    refused_lists: Mutex<Vec<String>>,
    opens: AtomicU64,
    /// The most connections `prepare` was asked for.
    prepared: AtomicUsize,
    bytes: AtomicU64,
    live: AtomicUsize,
    log: Mutex<Vec<Transfer>>,
}

#[derive(Clone)]
pub struct FakeRemote {
    shared: Arc<Shared>,
}

impl Default for FakeRemote {
    fn default() -> Self {
        let remote = FakeRemote { shared: Arc::new(Shared::default()) };
        remote.shared.parallelism.store(4, Ordering::SeqCst);
        remote
    }
}

impl FakeRemote {
    pub fn with_file(path: &str, data: Vec<u8>) -> FakeRemote {
        let r = FakeRemote::default();
        r.put(path, data);
        r
    }

    /// Adds or replaces a file; it gets a modification time no other file has.
    pub fn put(&self, path: &str, data: Vec<u8>) {
        let n = self.shared.next_mtime.fetch_add(1, Ordering::SeqCst);
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(FIRST_MTIME + 60 * n);
        self.shared.files.lock().insert(path.to_string(), FakeFile { data: Arc::new(data), mtime });
    }

    pub fn remove(&self, path: &str) {
        self.shared.files.lock().remove(path);
    }

    /// Listings of `dir` are refused with a `550`; its entries can still be looked up.
    pub fn refuse_list(&self, dir: &str) {
        self.shared.refused_lists.lock().push(dir.to_string());
    }

    /// The version a listing of `path` gives now.
    pub fn version(&self, path: &str) -> Option<Version> {
        let files = self.shared.files.lock();
        let f = files.get(path)?;
        Some(Version { size: f.data.len() as u64, mtime: unix_secs(f.mtime) })
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    pub fn set_parallelism(&self, n: usize) {
        self.shared.parallelism.store(n, Ordering::SeqCst);
    }

    /// Listings served.
    pub fn lists(&self) -> u64 {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// `stat`s answered.
    pub fn stats(&self) -> u64 {
        self.shared.stats.load(Ordering::SeqCst)
    }

    /// The most connections a reader asked to have logged in ahead (`Remote::prepare`).
    pub fn prepared(&self) -> usize {
        self.shared.prepared.load(Ordering::SeqCst)
    }

    /// Transfers opened (each one a `REST` + `RETR` on a real server).
    pub fn opens(&self) -> u64 {
        self.shared.opens.load(Ordering::SeqCst)
    }

    /// Bytes handed to readers, all transfers together.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// Transfers open right now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Every transfer that has ended, in the order they ended.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.shared.log.lock().clone()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Blocks while the stall fault is set; a stall longer than `STALL_LIMIT` is a timeout.
fn wait_out_stall(faults: &Faults, what: &str) -> Result<(), RemoteError> {
    let started = Instant::now();
    while faults.stall.load(Ordering::SeqCst) {
        if started.elapsed() > STALL_LIMIT {
            return Err(RemoteError::Timeout(what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

impl Remote for FakeRemote {
    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        self.shared.stats.fetch_add(1, Ordering::SeqCst);
        self.wait_out_list_stall();
        if self.shared.faults.fail_lists.load(Ordering::SeqCst) {
            return Err(RemoteError::Timeout(format!("stat {path}")));
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if dir.is_empty() { "/" } else { dir };
        match self.entries(dir) {
            Ok(entries) => Ok(entries.into_iter().find(|e| e.name == name)),
            Err(RemoteError::Unavailable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(
        &self,
        path: &str,
        offset: u64,
        version: Version,
        intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError> {
        let faults = &self.shared.faults;
        let delay = faults.open_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        wait_out_stall(faults, "RETR")?;
        if faults.refuse.load(Ordering::SeqCst) {
            return Err(RemoteError::Unavailable(format!("RETR {path}: 550 Permission denied")));
        }
        let failing = faults.fail_opens.load(Ordering::SeqCst);
        if failing > 0 {
            faults.fail_opens.store(failing - 1, Ordering::SeqCst);
            return Err(RemoteError::io(&std::io::ErrorKind::ConnectionReset.into(), "RETR"));
        }
        let file = self
            .shared
            .files
            .lock()
            .get(path)
            .cloned()
            .ok_or_else(|| RemoteError::Unavailable(format!("RETR {path}: 550 No such file")))?;
        let size = file.data.len() as u64;
        if size != version.size || unix_secs(file.mtime) != version.mtime {
            return Err(RemoteError::Changed(format!(
                "{path}: now {size} bytes at {}, expected {} bytes at {}",
                unix_secs(file.mtime),
                version.size,
                version.mtime
            )));
        }
        if offset > size {
            return Err(RemoteError::Protocol(format!("REST {offset} beyond the end of {path}")));
        }
        let nth = self.shared.opens.fetch_add(1, Ordering::SeqCst) + 1;
        let slow = (faults.slow_open.load(Ordering::SeqCst) == nth).then(|| faults.slow_rate.load(Ordering::SeqCst));
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        let break_after = faults.break_after.load(Ordering::SeqCst);
        let count = faults.break_count.load(Ordering::SeqCst);
        if break_after > 0 && count > 0 {
            // One of a limited number of breaks: after the last one, transfers run clean.
            if count == 1 {
                faults.break_after.store(0, Ordering::SeqCst);
            }
            faults.break_count.store(count - 1, Ordering::SeqCst);
        }
        Ok(Box::new(FakeReader {
            shared: Arc::clone(&self.shared),
            path: path.to_string(),
            data: file.data,
            offset,
            pos: offset,
            intent,
            break_after,
            opened: Instant::now(),
            slow,
            broke: false,
            ended: false,
            told_end: None,
            times_told: 0,
        }))
    }

    fn parallelism(&self) -> usize {
        self.shared.parallelism.load(Ordering::SeqCst)
    }

    /// One connection per transfer, all logged in: those no transfer holds.
    fn ready(&self) -> usize {
        self.parallelism().saturating_sub(self.shared.live.load(Ordering::SeqCst))
    }

    /// Every connection is logged in already here: only remembered for tests.
    fn prepare(&self, connections: usize) {
        self.shared.prepared.fetch_max(connections, Ordering::SeqCst);
    }

    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        self.shared.lists.fetch_add(1, Ordering::SeqCst);
        let faults = &self.shared.faults;
        std::thread::sleep(Duration::from_millis(faults.list_delay_ms.load(Ordering::SeqCst)));
        self.wait_out_list_stall();
        if faults.fail_lists.load(Ordering::SeqCst) {
            return Err(RemoteError::Timeout(format!("listing {dir}")));
        }
        if self.shared.refused_lists.lock().iter().any(|d| d == dir) {
            return Err(RemoteError::Unavailable(format!("LIST {dir}: 550 Permission denied")));
        }
        self.entries(dir)
    }
}

impl FakeRemote {
    /// What a listing of `dir` shows (directories are implied by the files under them).
    fn entries(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let files = self.shared.files.lock();
        let mut out: Vec<RemoteEntry> = Vec::new();
        for (path, file) in files.iter() {
            let Some(rest) = path.strip_prefix(&prefix) else { continue };
            let (name, kind, size, mtime) = match rest.split_once('/') {
                Some((d, _)) => (d, EntryKind::Dir, 0, SystemTime::UNIX_EPOCH + Duration::from_secs(FIRST_MTIME)),
                None => (rest, EntryKind::File, file.data.len() as u64, file.mtime),
            };
            if out.iter().any(|e| e.name == name) {
                continue;
            }
            out.push(RemoteEntry {
                name: name.to_string(),
                kind,
                size,
                mtime,
                mtime_precision: 1,
                perm: None,
                link_target: None,
            });
        }
        if out.is_empty() && dir != "/" {
            return Err(RemoteError::Unavailable(dir.to_string()));
        }
        Ok(out)
    }

    /// Blocks while listings and stats are stalled (no time limit: tests lift it).
    fn wait_out_list_stall(&self) {
        while self.shared.faults.stall_lists.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A transfer over a file's bytes, with the faults in force when it was opened.
struct FakeReader {
    shared: Arc<Shared>,
    path: String,
    data: Arc<Vec<u8>>,
    offset: u64,
    pos: u64,
    intent: Intent,
    break_after: u64,
    opened: Instant,
    /// This transfer's own rate limit (`Faults::slow_open`).
    slow: Option<u64>,
    broke: bool,
    ended: bool,
    told_end: Option<u64>,
    times_told: u32,
}

impl FakeReader {
    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        let size = self.data.len() as u64;
        let closed_early_at = (!self.broke && self.pos < size).then_some(self.pos);
        self.shared.log.lock().push(Transfer {
            path: self.path.clone(),
            offset: self.offset,
            intent: self.intent,
            delivered: self.pos - self.offset,
            closed_early_at,
            broke: self.broke,
            told_end: self.told_end,
            times_told: self.times_told,
            slow: self.slow.is_some(),
        });
    }
}

impl RangeReader for FakeReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError> {
        if self.broke {
            return Err(RemoteError::Protocol("read after a broken transfer".into()));
        }
        let faults = &self.shared.faults;
        wait_out_stall(faults, "data connection")?;
        let delivered = self.pos - self.offset;
        if self.break_after > 0 && delivered >= self.break_after {
            self.broke = true;
            return Err(RemoteError::io(&std::io::ErrorKind::ConnectionReset.into(), "data connection"));
        }
        let size = self.data.len() as u64;
        let mut n = buf.len().min(CHUNK).min((size - self.pos) as usize);
        if self.break_after > 0 {
            n = n.min((self.break_after - delivered) as usize);
        }
        let start = self.pos as usize;
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos += n as u64;
        self.shared.bytes.fetch_add(n as u64, Ordering::SeqCst);
        let rate = self.slow.unwrap_or_else(|| faults.rate.load(Ordering::SeqCst));
        if rate > 0 {
            let due = Duration::from_secs_f64((self.pos - self.offset) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.opened.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn plan_end(&mut self, end: u64) {
        self.told_end = Some(end);
        self.times_told += 1;
    }

    fn close(mut self: Box<Self>) {
        self.end();
    }
}

impl Drop for FakeReader {
    fn drop(&mut self) {
        self.end();
    }
}
