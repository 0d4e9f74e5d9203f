//! Typed errors, and the one place where they become errno values.
//!
//! A `RemoteError` keeps its kind from the socket where it happened to the FUSE reply: the
//! single-flight machinery hands one failure to every waiter, so errors are `Clone` (an
//! `io::Error` is kept as its kind plus its message).

use std::io;

use thiserror::Error;

/// Failures talking to the server.
#[derive(Debug, Clone, Error)]
pub enum RemoteError {
    /// TCP connect failed, or the connection dropped.
    #[error("connection failed: {message}")]
    Connect { kind: io::ErrorKind, message: String },
    /// No answer within the configured timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Certificate verification or the TLS handshake failed, or the server refused TLS.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server refused the login (wrong user or password).
    #[error("login refused: {0}")]
    Login(String),
    /// The server refused more connections (`421`, "too many connections").
    #[error("server refused the connection: {0}")]
    TooManyConnections(String),
    /// `550` and friends: the file or directory is missing or not accessible.
    #[error("not available on the server: {0}")]
    Unavailable(String),
    /// The file on the server is not the version the caller knows (other size or time).
    #[error("file changed on the server: {0}")]
    Changed(String),
    /// A reply that makes no sense here (garbage, wrong code, out of step).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The mount is offline (the server was unreachable at mount time, or `--offline`) and
    /// what was asked for is not in the cache: nobody asked the server. The text says why.
    #[error("{0}")]
    Offline(String),
}

impl RemoteError {
    /// Wraps an I/O error of a socket, naming what was being done.
    pub fn io(e: &io::Error, what: &str) -> RemoteError {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RemoteError::Timeout(what.to_string()),
            kind => RemoteError::Connect { kind, message: format!("{what}: {e}") },
        }
    }

    /// Whether trying again (on a fresh connection) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Connect { .. }
            | RemoteError::Timeout(_)
            | RemoteError::TooManyConnections(_)
            | RemoteError::Protocol(_) => true,
            RemoteError::Tls(_)
            | RemoteError::Login(_)
            | RemoteError::Unavailable(_)
            | RemoteError::Changed(_)
            | RemoteError::Offline(_) => false,
        }
    }
}

/// Failures of a file-system operation, as the kernel will see them.
#[derive(Debug, Clone, Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("not a symbolic link")]
    NotSymlink,
    /// A name no listing can show (longer than `NAME_MAX`), so none is looked up either.
    #[error("file name too long")]
    NameTooLong,
    /// An ioctl this file does not answer (any but `cachectl`'s, or one on a file that is
    /// not a remote file's).
    #[error("inappropriate ioctl for this file")]
    NoSuchIoctl,
    #[error(transparent)]
    Remote(#[from] RemoteError),
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
            FsError::NotSymlink => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoSuchIoctl => libc::ENOTTY,
            FsError::Remote(RemoteError::Unavailable(_)) => libc::EACCES,
            FsError::Remote(RemoteError::Changed(_)) => libc::ESTALE,
            // "Network is unreachable" says what happened; EIO would read as a failing disk.
            FsError::Remote(RemoteError::Offline(_)) => libc::ENETUNREACH,
            FsError::Remote(_) => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_eacces() {
        let refused = RemoteError::Unavailable("RETR /f: 550 Permission denied".into());
        assert_eq!(FsError::from(refused).errno(), libc::EACCES);
    }

    #[test]
    fn network_failures_are_eio_and_changes_are_estale() {
        let reset = RemoteError::io(&io::ErrorKind::ConnectionReset.into(), "data connection");
        assert_eq!(FsError::from(reset).errno(), libc::EIO);
        assert_eq!(FsError::from(RemoteError::Timeout("RETR".into())).errno(), libc::EIO);
        assert_eq!(FsError::from(RemoteError::Changed("/f".into())).errno(), libc::ESTALE);
    }

    #[test]
    fn what_an_offline_mount_has_not_cached_is_enetunreach_and_never_retried() {
        let offline = RemoteError::Offline("offline (--offline): \"/f\" is not cached".into());
        assert!(!offline.is_transient());
        assert_eq!(FsError::from(offline).errno(), libc::ENETUNREACH);
    }
}
