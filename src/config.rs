//! Settings shared by the layers, validated once at start-up.

use std::fmt;

/// A password: never printed, never logged, wiped from memory on drop (zeroize writes
/// with volatile stores the optimiser cannot remove).
#[derive(Clone, Default)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(zeroize::Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The user's home directory: `$HOME`, else the passwd entry of the effective user.
/// mount.fuse3 starts a file system with `HOME` unset when its `setuid=USER` option switches
/// to another user, and mount(8) clears the environment.
pub fn home_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(home.into());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwuid_r writes only into `pwd` and `buf` (whose
    // length it is given) and sets `result` to &pwd on success or NULL if there is no entry.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(libc::geteuid(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes();
        (!dir.is_empty()).then(|| std::ffi::OsStr::from_bytes(dir).into())
    }
}

/// Parses sizes such as `10G`, `512M`, `1.5GiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("not a size: {text:?} (try 10G, 512M)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("unknown size unit in {text:?}")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size out of range: {text:?}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5Q").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
