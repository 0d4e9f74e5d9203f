//! The question `mastfs warm` asks a mount's daemon about an open file: how much of it the
//! disk cache holds. Asked with an ioctl on the open file, answered by `fuse.rs`.
//!
//! Why an ioctl and not a virtual extended attribute: the mount answers `getxattr` with
//! ENOSYS, which makes the kernel stop asking for the mount's life. Answering any name would
//! send every `getxattr` of every tool to the daemon: `ls -l` (coreutils 9.1) asks for
//! `security.selinux` and `system.posix_acl_access` of each entry, 20,000 more requests for
//! a 10,000-entry directory. Measured here (a warm `ls -l` of 10,000 entries on loopback, 2
//! busy cores): 0.02–0.05 s as it is, 0.10–0.29 s with `getxattr` answered `ENODATA`. An
//! ioctl reaches the daemon only when asked for, on a file the asker has open.
//!
//! Both commands are "restricted" FUSE ioctls (the kernel sizes the reply from the command
//! number): `_IOR('M', 1, [u64; 4])` asks; `_IOR('M', 2, [u64; 4])` asks and marks the
//! file's cached blocks as just used, so a warm that skips a cached file does not let it be
//! evicted by the files it fetches next. The reply is four native-endian u64: the size, the
//! bytes on disk, the cache's capacity (0: no disk cache) and 1 if the cache is writable.

use crate::read::CacheState;

/// Bytes of a reply.
pub const REPLY_LEN: usize = 32;

/// `_IOR(type, nr, size)` as the kernel encodes it: direction (read: 2) in bits 30–31, size
/// in bits 16–29, type in bits 8–15, number in bits 0–7.
const fn ior(kind: u8, nr: u8, size: usize) -> u32 {
    (2 << 30) | ((size as u32) << 16) | ((kind as u32) << 8) | nr as u32
}

/// How much of the file the disk cache holds.
pub const QUERY: u32 = ior(b'M', 1, REPLY_LEN);
/// The same, and its cached blocks count as just used.
pub const QUERY_AND_KEEP: u32 = ior(b'M', 2, REPLY_LEN);

/// The answer to [`QUERY`] as the asker reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub size: u64,
    pub on_disk: u64,
    pub capacity: u64,
    pub writable: bool,
}

pub fn encode(state: &CacheState) -> [u8; REPLY_LEN] {
    let mut out = [0u8; REPLY_LEN];
    let fields = [state.size, state.on_disk, state.capacity, u64::from(state.writable)];
    for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    out
}

pub fn decode(reply: &[u8; REPLY_LEN]) -> Answer {
    let mut fields = [0u64; 4];
    for (v, chunk) in fields.iter_mut().zip(reply.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *v = u64::from_ne_bytes(b);
    }
    Answer { size: fields[0], on_disk: fields[1], capacity: fields[2], writable: fields[3] != 0 }
}

/// Asks the daemon behind open file `fd`; `keep` marks its cached blocks as just used. An
/// error of ENOTTY (or EINVAL, ENOSYS) means the file is not on a mastfs mount.
pub fn ask(fd: std::os::fd::BorrowedFd<'_>, keep: bool) -> std::io::Result<Answer> {
    use std::os::fd::AsRawFd;
    let mut reply = [0u8; REPLY_LEN];
    let cmd = if keep { QUERY_AND_KEEP } else { QUERY };
    // SAFETY: both commands write at most REPLY_LEN bytes (the size encoded in them) into
    // `reply`, which lives across the call; the descriptor is borrowed, so it is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::Ioctl, reply.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(decode(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_are_what_the_kernel_calls_ior_m_with_32_bytes() {
        // _IOR('M', 1, 32 bytes) as <asm-generic/ioctl.h> computes it.
        assert_eq!(QUERY, 0x8020_4d01);
        assert_eq!(QUERY_AND_KEEP, 0x8020_4d02);
    }

    #[test]
    fn an_answer_reads_back_as_it_was_written() {
        let state = CacheState { size: 5 << 30, on_disk: 123_456_789, capacity: 10 << 30, writable: true };
        let a = decode(&encode(&state));
        assert_eq!((a.size, a.on_disk, a.capacity, a.writable), (5 << 30, 123_456_789, 10 << 30, true));
    }
}
