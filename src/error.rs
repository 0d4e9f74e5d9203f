//! Typed errors, and the one place where they become errno values.

use std::fmt;
use std::io;

/// Failures talking to the server.
#[derive(Debug)]
pub enum RemoteError {
    /// TCP connect failed or the connection dropped.
    Connect(io::Error),
    /// No answer within the configured timeout.
    Timeout(String),
    /// Certificate verification or the TLS handshake failed, or the server refused TLS.
    Tls(String),
    /// The server refused the login (wrong user or password).
    Login(String),
    /// The server refused more connections (`421`, "too many connections").
    TooManyConnections(String),
    /// `550` and friends: the file or directory is missing or not accessible.
    Unavailable(String),
    /// The file on the server is not the version the caller knows (other size).
    Changed(String),
    /// Reply that makes no sense here (garbage, wrong code, out of step).
    Protocol(String),
    /// A transfer broke after `delivered` bytes reached the sink.
    Partial { delivered: u64, cause: Box<RemoteError> },
}

impl RemoteError {
    /// Whether trying again (on a fresh connection) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Connect(_)
            | RemoteError::Timeout(_)
            | RemoteError::TooManyConnections(_)
            | RemoteError::Protocol(_) => true,
            RemoteError::Partial { cause, .. } => cause.is_transient(),
            RemoteError::Tls(_) | RemoteError::Login(_) | RemoteError::Unavailable(_) | RemoteError::Changed(_) => {
                false
            }
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Connect(e) => write!(f, "connection failed: {e}"),
            RemoteError::Timeout(what) => write!(f, "timed out: {what}"),
            RemoteError::Tls(m) => write!(f, "TLS failed: {m}"),
            RemoteError::Login(m) => write!(f, "login refused: {m}"),
            RemoteError::TooManyConnections(m) => write!(f, "server refused the connection: {m}"),
            RemoteError::Unavailable(m) => write!(f, "not available on the server: {m}"),
            RemoteError::Changed(m) => write!(f, "file changed on the server: {m}"),
            RemoteError::Protocol(m) => write!(f, "protocol error: {m}"),
            RemoteError::Partial { delivered, cause } => {
                write!(f, "transfer broke after {delivered} bytes: {cause}")
            }
        }
    }
}

impl std::error::Error for RemoteError {}

/// Failures of a file-system operation, as the kernel will see them.
#[derive(Debug)]
pub enum FsError {
    NotFound,
    NotDir,
    IsDir,
    ReadOnly,
    BadHandle,
    /// The file changed on the server while it was open.
    Stale,
    /// The server refused access to the file.
    Denied(String),
    Remote(RemoteError),
}

impl FsError {
    /// The errno the kernel gets. This is the only place errno numbers are chosen.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Stale => libc::ESTALE,
            FsError::Denied(_) => libc::EACCES,
            FsError::Remote(RemoteError::Unavailable(_)) => libc::EACCES,
            FsError::Remote(RemoteError::Changed(_)) => libc::ESTALE,
            FsError::Remote(_) => libc::EIO,
        }
    }
}

impl From<RemoteError> for FsError {
    fn from(e: RemoteError) -> Self {
        FsError::Remote(e)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::NotFound => f.write_str("no such file or directory"),
            FsError::NotDir => f.write_str("not a directory"),
            FsError::IsDir => f.write_str("is a directory"),
            FsError::ReadOnly => f.write_str("read-only file system"),
            FsError::BadHandle => f.write_str("bad file handle"),
            FsError::Stale => f.write_str("file changed on the server"),
            FsError::Denied(m) => write!(f, "permission denied: {m}"),
            FsError::Remote(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FsError {}
