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
//! less than 16 KiB in a `--timeout`. Within its deadline an operation is tried again after
//! quick failures (a refused connection, a pooled connection the server had closed while
//! idle), never after a timeout: retries never multiply the wait.

mod conn;
mod control;
mod data;
mod datatls;
mod login;
mod lookup;
mod pool;
pub mod probe;
mod records;
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
use crate::remote::{Intent, RangeReader, Remote, RemoteEntry, Version};
use crate::stats::Stats;

pub use login::Endpoint;
pub use pool::Pool;

/// The pieces `mastfs check` (`crate::check`) drives one step at a time, so that it speaks
/// to the server as a mount does: the same reply reader, sockets and passive-port rule.
pub(crate) mod parts {
    pub(crate) use super::control::{Control, Reply, Transport};
    pub(crate) use super::data::{passive_address, passive_command};
    pub(crate) use super::wire::{Flights, Wire};
}

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

    /// Runs `op` on a connection from the pool until it succeeds or `deadline` passes. A
    /// pooled connection the server had closed while it sat idle (a reset or end of stream on
    /// its first exchange) is replaced at once, once. Quick failures (a refused or reset
    /// connection, a server out of step, too many connections) are tried again after a
    /// growing pause, so a server restarting for a second is ridden out; a timeout is not,
    /// as it has used the whole deadline already. All tries share the one deadline: retries
    /// never multiply the time a caller waits.
    fn retrying<T>(
        &self,
        deadline: Instant,
        mut op: impl FnMut(pool::Lease) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let mut pause = Duration::from_millis(100);
        let mut replaced_idle = false;
        loop {
            let failure = match self.pool.get(deadline) {
                Err(e) => e,
                Ok(lease) => {
                    let pooled = lease.pooled;
                    match op(lease) {
                        Ok(v) => return Ok(v),
                        Err(e) if pooled && !replaced_idle && closed_while_idle(&e) => {
                            log::info!("a pooled connection was gone ({e}); trying another");
                            Stats::add(&self.stats.retries, 1);
                            replaced_idle = true;
                            continue;
                        }
                        Err(e) => e,
                    }
                }
            };
            let quick = matches!(
                failure,
                RemoteError::Connect { .. } | RemoteError::TooManyConnections(_) | RemoteError::Protocol(_)
            );
            if !quick || Instant::now() + pause >= deadline {
                return Err(failure);
            }
            log::info!("retrying in {pause:?} after: {failure}");
            Stats::add(&self.stats.retries, 1);
            std::thread::sleep(pause);
            pause *= 2;
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
        let (lines, dialect) = self.retrying(deadline, |mut lease| lookup::list(&mut lease, dir, deadline))?;
        Stats::add(&self.stats.listings, 1);
        let parsed = listing::parse_listing(&lines, dialect, SystemTime::now());
        for w in parsed.warnings.iter().take(20) {
            log::warn!("listing of {dir:?}: {w}");
        }
        Ok(parsed.entries)
    }

    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        let deadline = self.deadline();
        self.retrying(deadline, |mut lease| lookup::stat(&mut lease, path, deadline))
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
        let reader = self.retrying(deadline, |lease| transfer::open(lease, path, offset, version, intent, deadline))?;
        Ok(Box::new(reader))
    }

    fn parallelism(&self) -> usize {
        self.pool.limit()
    }

    fn ready(&self) -> usize {
        self.pool.ready()
    }

    fn prepare(&self, connections: usize) {
        self.pool.prepare(connections);
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
