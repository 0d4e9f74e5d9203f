//! The FTPS implementation of `Remote`: pooled connections, retries, resumption at the exact
//! offset after a broken transfer.

pub mod conn;
pub mod pool;
pub mod tls;
pub mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::RemoteError;
use crate::listing::{self, Dialect};
use crate::remote::{Intent, RangeReader, Remote, RemoteEntry, Version};
use crate::stats::Stats;
use conn::Sink;

pub use conn::Endpoint;
pub use pool::Pool;

/// Attempts per operation; with the backoff below a dead server fails a read in well under
/// a minute on top of the per-command timeout.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

pub struct FtpsRemote {
    pool: Arc<Pool>,
    stats: Arc<Stats>,
}

impl FtpsRemote {
    pub fn new(pool: Arc<Pool>, stats: Arc<Stats>) -> FtpsRemote {
        FtpsRemote { pool, stats }
    }

    /// Logs in once and lists `dir`, so the mount can refuse to start with a clear reason.
    pub fn check(&self, dir: &str) -> Result<(), RemoteError> {
        let mut lease = self.pool.get()?;
        let result = lease.with(|c| c.list_lines(dir));
        if result.is_err() {
            lease.discard();
        }
        result.map(|_| ())
    }

    fn backoff(&self, attempt: u32, err: &RemoteError, deadline: Instant) -> bool {
        if attempt + 1 >= ATTEMPTS || !err.is_transient() {
            return false;
        }
        let wait = FIRST_BACKOFF * 2u32.pow(attempt);
        if Instant::now() + wait > deadline {
            return false;
        }
        Stats::add(&self.stats.retries, 1);
        log::info!("retrying after: {err}");
        std::thread::sleep(wait);
        true
    }
}

impl Remote for FtpsRemote {
    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        let mut lease = self.pool.get()?;
        let result = lease.with(|c| c.stat(path));
        if let Err(e) = &result
            && !matches!(e, RemoteError::Unavailable(_))
        {
            lease.discard();
        }
        result
    }

    fn parallelism(&self) -> usize {
        self.pool.limit()
    }

    /// TRANSITIONAL (base branch): runs the push-style `read_from` on a thread and hands its
    /// chunks over a small channel; the issue 7 rewrite replaces this with a reader on the
    /// data connection itself.
    fn open(
        &self,
        path: &str,
        offset: u64,
        version: Version,
        _intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, RemoteError>>(4);
        let remote = FtpsRemote { pool: Arc::clone(&self.pool), stats: Arc::clone(&self.stats) };
        let path = path.to_string();
        std::thread::Builder::new()
            .name("mastfs-transfer".into())
            .spawn(move || {
                let mut sink = |chunk: &[u8]| tx.send(Ok(chunk.to_vec())).is_ok();
                let result = remote.read_from(&path, offset, version, &mut sink);
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                } else {
                    let _ = tx.send(Ok(Vec::new()));
                }
            })
            .map_err(|e| RemoteError::io(&e, "starting a transfer thread"))?;
        let first = rx.recv().map_err(|_| RemoteError::Protocol("transfer thread ended".into()))??;
        Ok(Box::new(ChannelReader { rx: Some(rx), pending: first, at: 0, position: offset, done: false }))
    }

    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let deadline = Instant::now() + self.pool.timeout() * 2;
        let mut attempt = 0;
        loop {
            let result = self.pool.get().and_then(|mut lease| {
                let dialect = lease.with(|c| Ok(if c.mlsd { Dialect::Mlsd } else { Dialect::List }))?;
                let lines = lease.with(|c| c.list_lines(dir));
                if let Err(e) = &lines
                    && !matches!(e, RemoteError::Unavailable(_))
                {
                    lease.discard();
                }
                lines.map(|l| (l, dialect))
            });
            match result {
                Ok((lines, dialect)) => {
                    Stats::add(&self.stats.listings, 1);
                    let parsed = listing::parse_listing(&lines, dialect, SystemTime::now());
                    for w in parsed.warnings.iter().take(20) {
                        log::warn!("listing of {dir:?}: {w}");
                    }
                    return Ok(parsed.entries);
                }
                Err(e) => {
                    if !self.backoff(attempt, &e, deadline) {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }
}

impl FtpsRemote {
    /// TRANSITIONAL (read branch): the push-style read the transitional `open` runs on a
    /// thread: streams the bytes of `path` from `offset` into `sink` until it returns `false`
    /// or the file ends, resuming a broken transfer at the exact byte. The "ftp" branch
    /// replaces this file with a reader on the data connection itself.
    fn read_from(&self, path: &str, offset: u64, version: Version, sink: &mut Sink<'_>) -> Result<u64, RemoteError> {
        let mut deadline = Instant::now() + self.pool.timeout() * 2;
        let mut total = 0u64;
        let mut attempt = 0;
        loop {
            let result = self.pool.get().and_then(|mut lease| {
                Stats::add(&self.stats.retrs, 1);
                let stats = &self.stats;
                let mut counting = |chunk: &[u8]| {
                    Stats::add(&stats.net_bytes, chunk.len() as u64);
                    sink(chunk)
                };
                match lease.with(|c| c.read_from(path, offset + total, version, &mut counting)) {
                    Ok(t) => {
                        if t.aborted {
                            Stats::add(&stats.aborts, 1);
                        }
                        if !t.reusable {
                            lease.discard();
                        }
                        Ok(t.delivered)
                    }
                    Err(e) => {
                        if !matches!(e, RemoteError::Unavailable(_)) {
                            lease.discard();
                        }
                        Err(e)
                    }
                }
            });
            match result {
                Ok(n) => return Ok(total + n),
                Err(RemoteError::Partial { delivered, cause }) => {
                    // Bytes that reached the sink are final; carry on exactly after them.
                    total += delivered;
                    // Progress was made: the retry budget starts afresh from here.
                    attempt = 0;
                    deadline = Instant::now() + self.pool.timeout() * 2;
                    log::info!("transfer of {path:?} broke at {}: {cause}; resuming", offset + total);
                    if !self.backoff(attempt, &cause, deadline) {
                        return Err(RemoteError::Partial { delivered: total, cause });
                    }
                }
                Err(e) => {
                    if !self.backoff(attempt, &e, deadline) {
                        return Err(if total > 0 {
                            RemoteError::Partial { delivered: total, cause: Box::new(e) }
                        } else {
                            e
                        });
                    }
                    attempt += 1;
                }
            }
        }
    }
}

/// TRANSITIONAL: the reading end of `FtpsRemote::open`'s channel.
#[allow(dead_code)]
struct ChannelReader {
    rx: Option<std::sync::mpsc::Receiver<Result<Vec<u8>, RemoteError>>>,
    pending: Vec<u8>,
    at: usize,
    position: u64,
    done: bool,
}

impl RangeReader for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError> {
        while self.at >= self.pending.len() {
            if self.done {
                return Ok(0);
            }
            let rx = self.rx.as_ref().ok_or_else(|| RemoteError::Protocol("reader closed".into()))?;
            let next = rx.recv().map_err(|_| RemoteError::Protocol("transfer thread ended".into()))??;
            self.done = next.is_empty();
            self.pending = next;
            self.at = 0;
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        self.position += n as u64;
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn close(mut self: Box<Self>) {
        self.rx.take();
    }
}
