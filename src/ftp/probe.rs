//! The FTPS transport without a mount, for tests against real servers (`tests/transport.rs`)
//! and measurements: counts of round trips, logins and transfers per operation are exact
//! here, with nothing of the block cache or the kernel in between. Not a stable API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tls::{TlsOptions, base_config};
use super::{Endpoint, FtpsRemote, Pool};
use crate::config::Secret;
use crate::remote::{EntryKind, Intent, Remote, Version};
use crate::stats::Stats;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub host: String,
    pub port: u16,
    pub ca_file: PathBuf,
    pub implicit: bool,
    /// EPSV instead of PASV.
    pub epsv: bool,
    /// Do not verify the certificate (a relay in front of the server has another address).
    pub insecure: bool,
    pub tls12_only: bool,
    pub connections: usize,
    pub timeout: Duration,
}

/// What a path is, per `stat` or a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

/// How a ranged read means to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeIntent {
    /// About `len` bytes wanted; the reader closes early.
    Peek(u64),
    /// Read up to this offset (a stripe's end, or the file's size).
    Run(u64),
}

/// An FTPS remote and its counters.
pub struct Probe {
    remote: FtpsRemote,
    pool: Arc<Pool>,
    stats: Arc<Stats>,
}

impl Probe {
    /// Logs in anonymously, lists `/` and opens a data connection ahead, as a mount does.
    pub fn connect(opts: &ProbeOptions) -> Result<Probe, String> {
        let tls = base_config(&TlsOptions {
            ca_file: (!opts.insecure).then(|| opts.ca_file.clone()),
            insecure: opts.insecure,
            tls12_only: opts.tls12_only,
        })
        .map_err(|e| format!("{e:?}"))?;
        let stats = Arc::new(Stats::default());
        let endpoint = Endpoint {
            host: opts.host.clone(),
            port: opts.port,
            implicit: opts.implicit,
            epsv: opts.epsv,
            user: "anonymous".into(),
            password: Secret::new("probe@example.org".into()),
            timeout: opts.timeout,
        };
        let pool = Pool::new(endpoint, tls, opts.connections, Arc::clone(&stats));
        let remote = FtpsRemote::new(Arc::clone(&pool), Arc::clone(&stats));
        remote.check("/").map_err(|e| format!("{e:?}"))?;
        Ok(Probe { remote, pool, stats })
    }

    /// One counter of `mastfs stats` by name.
    pub fn counter(&self, name: &str) -> u64 {
        self.stats
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// Waits (up to `limit`) until no connection is being re-armed in the background, so
    /// that the next request finds an idle, armed connection. `false` if it did not happen.
    pub fn settle(&self, limit: Duration) -> bool {
        self.pool.wait_untended(Instant::now() + limit)
    }

    pub fn stat(&self, path: &str) -> Result<Option<ProbeEntry>, String> {
        let entry = self.remote.stat(path).map_err(|e| format!("{e:?}"))?;
        Ok(entry.map(to_probe))
    }

    pub fn list(&self, dir: &str) -> Result<Vec<ProbeEntry>, String> {
        let entries = self.remote.list(dir).map_err(|e| format!("{e:?}"))?;
        Ok(entries.into_iter().map(to_probe).collect())
    }

    /// Opens a ranged read at `offset` of a file of `size` bytes and time `mtime`, reads
    /// `len` bytes (fewer at the end of the file) and closes it.
    pub fn read(
        &self,
        path: &str,
        offset: u64,
        len: usize,
        version: (u64, i64),
        intent: ProbeIntent,
    ) -> Result<Vec<u8>, String> {
        let intent = match intent {
            ProbeIntent::Peek(len) => Intent::Peek { len },
            ProbeIntent::Run(end) => Intent::Run { end },
        };
        let version = Version { size: version.0, mtime: version.1 };
        let mut reader = self.remote.open(path, offset, version, intent).map_err(|e| format!("{e:?}"))?;
        let mut out = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match reader.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    reader.close();
                    return Err(format!("{e:?}"));
                }
            }
        }
        out.truncate(got);
        reader.close();
        Ok(out)
    }
}

impl Probe {
    /// Like `read`, but throws the bytes away through one reused 256 KiB buffer (for
    /// measuring the transport's own cost); returns how many bytes arrived.
    pub fn drain(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        version: (u64, i64),
        intent: ProbeIntent,
    ) -> Result<u64, String> {
        let intent = match intent {
            ProbeIntent::Peek(len) => Intent::Peek { len },
            ProbeIntent::Run(end) => Intent::Run { end },
        };
        let version = Version { size: version.0, mtime: version.1 };
        let mut reader = self.remote.open(path, offset, version, intent).map_err(|e| format!("{e:?}"))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < len {
            let want = buf.len().min(usize::try_from(len - got).unwrap_or(usize::MAX));
            match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => {
                    reader.close();
                    return Err(format!("{e:?}"));
                }
            }
        }
        reader.close();
        Ok(got)
    }
}

fn to_probe(e: crate::remote::RemoteEntry) -> ProbeEntry {
    let mtime = match e.mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    ProbeEntry { name: e.name, is_dir: e.kind == EntryKind::Dir, size: e.size, mtime }
}
