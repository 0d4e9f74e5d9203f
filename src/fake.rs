//! An in-memory remote for unit tests: a tree of files, request counters, injected faults.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::error::RemoteError;
use crate::remote::{EntryKind, Intent, RangeReader, Remote, RemoteEntry, Sink, Version};

#[derive(Default)]
pub struct FakeRemote {
    files: Mutex<HashMap<String, Vec<u8>>>,
    pub lists: AtomicU64,
    pub reads: AtomicU64,
    pub bytes: AtomicU64,
    /// Every listing and stat fails as if the server were unreachable.
    pub fail_lists: std::sync::atomic::AtomicBool,
    /// Listings and stats wait while this is set, as on a server that stopped answering.
    pub stall_lists: std::sync::atomic::AtomicBool,
    /// Every listing takes this long.
    pub list_delay_ms: AtomicU64,
    /// `stat` calls seen.
    pub stats: AtomicU64,
    /// Directories whose listing is refused (`550`) though their entries can be looked up.
    refused_lists: Mutex<Vec<String>>,
    /// Break every transfer after this many bytes (0 = never).
    pub break_after: AtomicU64,
    /// Ranged reads seen: (path, offset, bytes delivered).
    pub log: Mutex<Vec<(String, u64, u64)>>,
}

impl FakeRemote {
    pub fn with_file(path: &str, data: Vec<u8>) -> FakeRemote {
        let r = FakeRemote::default();
        r.put(path, data);
        r
    }

    pub fn put(&self, path: &str, data: Vec<u8>) {
        self.files.lock().insert(path.to_string(), data);
    }

    pub fn refuse_list(&self, dir: &str) {
        self.refused_lists.lock().push(dir.to_string());
    }

    pub fn remove(&self, path: &str) {
        self.files.lock().remove(path);
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl FakeRemote {
    /// What a listing of `dir` shows (directories are implied by the files under them).
    fn entries(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let files = self.files.lock();
        let mut out: Vec<RemoteEntry> = Vec::new();
        for (path, data) in files.iter() {
            let Some(rest) = path.strip_prefix(&prefix) else { continue };
            let (name, kind, size) = match rest.split_once('/') {
                Some((d, _)) => (d, EntryKind::Dir, 0),
                None => (rest, EntryKind::File, data.len() as u64),
            };
            if out.iter().any(|e| e.name == name) {
                continue;
            }
            out.push(RemoteEntry {
                name: name.to_string(),
                kind,
                size,
                mtime: SystemTime::UNIX_EPOCH,
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

impl Remote for FakeRemote {
    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        self.stats.fetch_add(1, Ordering::SeqCst);
        while self.stall_lists.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.fail_lists.load(Ordering::SeqCst) {
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
        _intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError> {
        let mut data = Vec::new();
        self.read_from(path, offset, version, &mut |chunk: &[u8]| {
            data.extend_from_slice(chunk);
            true
        })?;
        Ok(Box::new(FakeReader { data, at: 0, offset }))
    }

    fn parallelism(&self) -> usize {
        4
    }

    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(self.list_delay_ms.load(Ordering::SeqCst)));
        while self.stall_lists.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.fail_lists.load(Ordering::SeqCst) {
            return Err(RemoteError::Timeout(format!("listing {dir}")));
        }
        if self.refused_lists.lock().iter().any(|d| d == dir) {
            return Err(RemoteError::Unavailable(format!("LIST {dir}: 550 Permission denied")));
        }
        self.entries(dir)
    }

    fn read_from(&self, path: &str, offset: u64, version: Version, sink: &mut Sink<'_>) -> Result<u64, RemoteError> {
        let size = version.size;
        self.reads.fetch_add(1, Ordering::SeqCst);
        let data = self.files.lock().get(path).cloned().ok_or_else(|| RemoteError::Unavailable(path.to_string()))?;
        if data.len() as u64 != size {
            return Err(RemoteError::Changed(path.to_string()));
        }
        let limit = self.break_after.load(Ordering::SeqCst);
        let mut pos = offset as usize;
        let mut delivered = 0u64;
        while pos < data.len() {
            let end = (pos + 64 * 1024).min(data.len());
            if limit > 0 && delivered >= limit {
                self.log.lock().push((path.into(), offset, delivered));
                return Err(RemoteError::Partial {
                    delivered,
                    cause: Box::new(RemoteError::io(&std::io::ErrorKind::ConnectionReset.into(), "data connection")),
                });
            }
            let chunk = &data[pos..end];
            self.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            delivered += chunk.len() as u64;
            pos = end;
            if !sink(chunk) {
                break;
            }
        }
        self.log.lock().push((path.into(), offset, delivered));
        Ok(delivered)
    }
}

/// TRANSITIONAL: the whole rest of the file, fetched at `open`.
struct FakeReader {
    data: Vec<u8>,
    at: usize,
    offset: u64,
}

impl RangeReader for FakeReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError> {
        let n = buf.len().min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.offset + self.at as u64
    }

    fn close(self: Box<Self>) {}
}
