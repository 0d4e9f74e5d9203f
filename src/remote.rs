//! The seam between the file system and the FTPS server.
//!
//! Everything above this trait (inode table, block cache, fetch scheduling) is testable with
//! an in-memory fake; everything below it speaks FTP. No suppaftp or rustls type crosses it.
//!
//! A read is pulled, not pushed: `open` starts a ranged transfer (`REST offset` + `RETR`) and
//! hands back a `RangeReader` that fills the caller's own buffers, so fetched bytes land in the
//! block they belong to without another copy, and the caller decides when a transfer has
//! delivered enough. FTP has no end offset: a reader closed before the end of the file is an
//! early close, which the transport turns back into a usable connection (or drops it).

use std::time::SystemTime;

use crate::error::RemoteError;

/// What a directory entry is, as the server's listing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// The longest name, in bytes, an entry may have: Linux's `NAME_MAX`. Some kernels take up
/// to 1024 or 4095 bytes in a FUSE directory entry and fail the whole `readdir` with `EIO`
/// beyond that; no local file system can hold more than 255, so nothing longer could be
/// copied out of the mount either.
pub const NAME_MAX: usize = 255;

/// The longest symlink target, in bytes, `readlink` can return: `PATH_MAX` less its NUL.
pub const TARGET_MAX: usize = 4095;

/// One entry of a remote directory listing, or the answer to a `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// A single path component: never empty, `.`, `..`, never longer than [`NAME_MAX`]
    /// bytes, and never contains `/`, NUL, CR or LF.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// How precise `mtime` is, in seconds: 1 for MLSD, MLST and MDTM; 60 for a LIST line
    /// with a time of day; 86,400 for a LIST line with a year. The same file seen through
    /// `stat` (MDTM) and through a listing (LIST) must keep one identity, so a coarser time
    /// that agrees with a finer one never replaces it.
    pub mtime_precision: u32,
    /// Permission bits (`0o7777` at most) when the listing gave them.
    pub perm: Option<u32>,
    /// Target of a symlink, when the listing gave it (`name -> target`): never empty, never
    /// longer than [`TARGET_MAX`] bytes, never contains NUL.
    pub link_target: Option<String>,
}

/// The version of a file a reader expects: what its listing said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// Modification time in seconds since the epoch.
    pub mtime: i64,
}

/// What a ranged read is for. The transport sizes its socket buffers from it, so that bytes
/// the reader will not use do not cross the link before an early close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A random read: about `len` bytes from the offset are wanted now. The caller may keep
    /// reading if its reads turn sequential, but expects to close early.
    Peek { len: u64 },
    /// A sequential run up to byte `end` (exclusive): a stripe's end, or the file's size.
    Run { end: u64 },
}

/// One ranged transfer in progress. Dropping it ends the transfer like `close`.
///
/// What the FTPS transport promises beyond the signatures: a `Peek` reader that keeps reading
/// is held to about `len` plus one TLS record per round trip (its socket buffer is small), so
/// sequential access should open a `Run`; `open` at or past the file's size gives a reader
/// that returns `Ok(0)`; a transfer that ends before the version's size fails with `Changed`.
pub trait RangeReader: Send {
    /// Reads the next bytes of the file into `buf`. `Ok(0)` only at the end of the file (a
    /// transfer that ends before the version's size is an error, never a short file). After
    /// an error the reader is dead; `position` says how far it got.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError>;

    /// Offset in the file of the next byte `read` returns.
    fn position(&self) -> u64;

    /// A run's planned end moved to `end` (another connection took over what lies past it):
    /// the transport may stop asking the server for bytes past it.
    fn plan_end(&mut self, _end: u64) {}

    /// How far into the file the server has likely sent (what is queued here and about what
    /// it has in flight), when the transport knows: bytes past it are not yet on the way, so
    /// a run cut there wastes little.
    fn reach(&self) -> Option<u64> {
        None
    }

    /// Ends the transfer. Before the end of the file this is an early close: the connection
    /// returns to the pool only once it is proven to be in step with the server.
    fn close(self: Box<Self>);
}

/// A remote tree of files, addressed by absolute `/`-separated paths.
pub trait Remote: Send + Sync + 'static {
    /// Lists a directory. Entries that cannot be represented are already dropped.
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError>;

    /// One path's entry without listing its parent (`MLST` where the server has it,
    /// otherwise `SIZE`, `MDTM` and `CWD`). `Ok(None)`: the path does not exist (or the
    /// server will not say). The entry's `name` is the last component of `path`.
    fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, RemoteError>;

    /// Starts a ranged read of `path` at `offset`. A server whose file is not `version`
    /// (another size, or another time where the server tells it) fails with
    /// `RemoteError::Changed` before any byte is returned.
    fn open(
        &self,
        path: &str,
        offset: u64,
        version: Version,
        intent: Intent,
    ) -> Result<Box<dyn RangeReader>, RemoteError>;

    /// How many transfers may run at once now: the connection limit, lowered after the
    /// server refused a connection.
    fn parallelism(&self) -> usize;

    /// How many logged-in connections are free or about to be (being re-armed), so a
    /// transfer opened now would not log in a new one. A transfer nobody waits for yet (a
    /// prefetch) is worth starting at once only then: a login costs more round trips than
    /// waiting for the connection in use to come back.
    fn ready(&self) -> usize {
        self.parallelism()
    }

    /// Gets up to `connections` logged-in connections ready in the background, without
    /// waiting: a reader that has just turned sequential will want them all, and logging
    /// them in now, in parallel, takes the logins off the path of its stripes' first bytes.
    fn prepare(&self, _connections: usize) {}
}
