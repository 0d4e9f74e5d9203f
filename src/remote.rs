//! The seam between the file system and the FTPS server.
//!
//! Everything above this trait (inode table, block cache, read-ahead) is testable with an
//! in-memory fake; everything below it speaks FTP. No suppaftp type crosses it.

use std::time::SystemTime;

use crate::error::RemoteError;

/// What a directory entry is, as the server's listing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a remote directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// A single path component: never empty, `.`, `..`, and never contains `/`, NUL, CR or LF.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits (`0o7777` at most) when the listing gave them.
    pub perm: Option<u32>,
    /// Target of a symlink, when the listing gave it (`name -> target`).
    pub link_target: Option<String>,
}

/// The version of a file a reader expects: what its listing said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// Modification time in seconds since the epoch.
    pub mtime: i64,
}

/// Receives the bytes of a ranged read in order; returns `false` to stop the transfer early.
pub type Sink<'a> = dyn FnMut(&[u8]) -> bool + 'a;

/// A remote tree of files, addressed by absolute `/`-separated paths.
pub trait Remote: Send + Sync + 'static {
    /// Lists a directory. Entries that cannot be represented are already dropped.
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>, RemoteError>;

    /// Streams the bytes of `path` from `offset` into `sink` until `sink` returns `false` or
    /// the file ends. Returns the number of bytes delivered. A server whose file is not
    /// `version` (another size or time) fails with `RemoteError::Changed` before any byte
    /// reaches the sink. A transfer that breaks after delivering some bytes returns
    /// `RemoteError::Partial` with the count.
    fn read_from(&self, path: &str, offset: u64, version: Version, sink: &mut Sink<'_>) -> Result<u64, RemoteError>;
}
