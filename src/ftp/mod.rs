//! The FTPS implementation of `Remote`.
//!
//! Following one read down: `FtpsRemote::open` takes a connection from the pool
//! (`pool.rs`: idle and ready, or tended and nearly ready, or a new login in `login.rs`), then
//! `transfer::open` sends `REST` + `RETR` in one write on its control channel (`control.rs`),
//! sends the ClientHello on the data connection opened ahead (`data.rs`, TLS from `tls.rs`)
//! and reads the replies in order. The returned `FtpsReader` decrypts the data connection's
//! records straight into the caller's buffers (`wire.rs` brings them in with few system
//! calls). Closing the reader hands the connection back; an arming job brings it back in step
//! and opens the next data connection (`conn.rs`) while the caller moves on.
//!
//! Time is bounded everywhere: `open`, `list` and `stat` each get one deadline of `--timeout`
//! covering the wait for a connection, a login if one is needed, and the exchange (watchdog
//! deadlines on the sockets, `watchdog.rs`); each `read` fails when the data connection moves
//! less than 16 KiB in a `--timeout`. The only retry is one immediate retry on another
//! connection when a pooled connection turns out to have been closed by the server while
//! idle, before any byte arrived.

mod conn;
mod control;
mod data;
mod login;
mod lookup;
mod pool;
pub mod probe;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
pub mod tls;
mod transfer;
pub mod watchdog;
mod wire;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::RemoteError;
use crate::listing;
use crate::remote::{Intent, RangeReader, Remote, RemoteEntry, Sink, Version};
use crate::stats::Stats;

pub use login::Endpoint;
pub use pool::Pool;

pub struct FtpsRemote {
    pool: Arc<Pool>,
    stats: Arc<Stats>,
}

impl FtpsRemote {
    pub fn new(pool: Arc<Pool>, stats: Arc<Stats>) -> FtpsRemote {
        FtpsRemote { pool, stats }
    }

    /// Logs in once, lists `dir` and opens a data connection ahead, so the mount can refuse
    /// to start with a clear reason and its first read finds a connection ready.
    pub fn check(&self, dir: &str) -> Result<(), RemoteError> {
        let deadline = Instant::now() + self.pool.timeout() * 2;
        let mut lease = self.pool.get(deadline)?;
        lookup::list(&mut lease, dir, deadline)?;
        let (epsv, timeout) = (self.pool.epsv(), self.pool.timeout());
        lease.conn()?.settle_and_arm(epsv, timeout, &self.stats)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.pool.timeout()
    }

    /// Runs `op` on a pooled connection, once more on another connection if the first was a
    /// pooled one the server had closed while it sat idle (the failure shows as a reset or
    /// end of stream on the first exchange).
    fn with_connection<T>(
        &self,
        deadline: Instant,
        mut op: impl FnMut(&mut pool::Lease) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let mut retried = false;
        loop {
            let mut lease = self.pool.get(deadline)?;
            match op(&mut lease) {
                Err(e) if !retried && lease.pooled && closed_while_idle(&e) => {
                    log::info!("a pooled connection was gone ({e}); trying another once");
                    Stats::add(&self.stats.retries, 1);
                    retried = true;
                }
                other => return other,
            }
        }
    }
}

/// Errors that mean the server had closed the connection before this request used it.
fn closed_while_idle(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Connect {
            kind: io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted,
            ..
        }
    )
}

impl Remote for FtpsRemote {
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let deadline = self.deadline();
        let (lines, dialect) = self.with_connection(deadline, |lease| lookup::list(lease, dir, deadline))?;
        Stats::add(&self.stats.listings, 1);
        let parsed = listing::parse_listing(&lines, dialect, SystemTime::now());
        for w in parsed.warnings.iter().take(20) {
            log::warn!("listing of {dir:?}: {w}");
        }
        Ok(parsed.entries)
    }

    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        let deadline = self.deadline();
        self.with_connection(deadline, |lease| lookup::stat(lease, path, deadline))
    }

    fn open(
        &self,
        path: &str,
        offset: u64,
        version: Version,
        intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError> {
        if offset >= version.size {
            return Ok(Box::new(AtEnd(offset)));
        }
        let deadline = self.deadline();
        let mut retried = false;
        loop {
            let lease = self.pool.get(deadline)?;
            let pooled = lease.pooled;
            match transfer::open(lease, path, offset, version, intent, deadline) {
                Ok(reader) => return Ok(Box::new(reader)),
                Err(e) if !retried && pooled && closed_while_idle(&e) => {
                    log::info!("a pooled connection was gone ({e}); trying another once");
                    Stats::add(&self.stats.retries, 1);
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn parallelism(&self) -> usize {
        self.pool.limit()
    }

    /// TRANSITIONAL (removed with the push-style API when the new block layer is merged):
    /// reads with `open` from `offset` until `sink` declines or the file ends, resuming a
    /// broken transfer at the exact byte a few times.
    fn read_from(&self, path: &str, offset: u64, version: Version, sink: &mut Sink<'_>) -> Result<u64, RemoteError> {
        const ATTEMPTS: u32 = 4;
        let mut total = 0u64;
        let mut attempt = 0;
        let mut last_progress = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let at = offset + total;
            let failure = match self.open(path, at, version, Intent::Run { end: version.size }) {
                Err(e) => e,
                Ok(mut reader) => loop {
                    match reader.read(&mut buf) {
                        Ok(0) => {
                            reader.close();
                            return Ok(total);
                        }
                        Ok(n) => {
                            total += n as u64;
                            // Progress was made: the retry budget starts afresh.
                            attempt = 0;
                            last_progress = Instant::now();
                            if !sink(&buf[..n]) {
                                reader.close();
                                return Ok(total);
                            }
                        }
                        Err(e) => {
                            reader.close();
                            break e;
                        }
                    }
                },
            };
            attempt += 1;
            // A server that made no progress for a whole timeout gets no more chances: a
            // stalled server fails the read after about --timeout, not a multiple of it.
            let stalled = last_progress.elapsed() >= self.pool.timeout();
            if attempt >= ATTEMPTS || stalled || !failure.is_transient() {
                return Err(if total > 0 {
                    RemoteError::Partial { delivered: total, cause: Box::new(failure) }
                } else {
                    failure
                });
            }
            log::info!("transfer of {path:?} broke at {}: {failure}; resuming", offset + total);
            Stats::add(&self.stats.retries, 1);
            std::thread::sleep(Duration::from_millis(100) * attempt);
        }
    }
}

/// A read at or past the end of the file: nothing to fetch.
struct AtEnd(u64);

impl RangeReader for AtEnd {
    fn read(&mut self, _buf: &mut [u8]) -> Result<usize, RemoteError> {
        Ok(0)
    }

    fn position(&self) -> u64 {
        self.0
    }

    fn close(self: Box<Self>) {}
}
