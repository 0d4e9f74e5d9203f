//! Where the password comes from: never argv.

use std::path::Path;

use crate::config::Secret;

pub const PASSWORD_ENV: &str = "MASTFS_PASSWORD";

/// Finds the password for `user` at `host`: `MASTFS_PASSWORD`, then `~/.netrc`, then a prompt
/// on the terminal with echo off.
pub fn password_for(host: &str, user: &str) -> Result<Secret, String> {
    if let Some(p) = std::env::var_os(PASSWORD_ENV) {
        scrub_environment(PASSWORD_ENV);
        // SAFETY: called once at start-up, before any thread exists; removing the variable
        // keeps it out of the environment of anything we might start later.
        unsafe { std::env::remove_var(PASSWORD_ENV) };
        return p.into_string().map(Secret::new).map_err(|_| format!("{PASSWORD_ENV} is not valid UTF-8"));
    }
    if let Some(home) = crate::config::home_dir() {
        let path = home.join(".netrc");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(p) = netrc_password(&text, host, user)
        {
            return Ok(p);
        }
    }
    let prompt = format!("Password for {user}@{host}: ");
    rpassword::prompt_password(prompt)
        .map(Secret::new)
        .map_err(|e| format!("no password: set {PASSWORD_ENV}, add {host} to ~/.netrc, or run on a terminal ({e})"))
}

/// The password on the first line of `path`, a file only its owner can read: like ssh with
/// its keys, a file others can read is refused rather than trusted.
pub fn password_from_file(path: &Path) -> Result<Secret, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("password file {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("password file {shown}: {e}"))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(format!("password file {shown} is not a regular file"));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!("password file {shown} belongs to uid {}, not to you", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "password file {shown} is readable by others (mode {:o}): chmod 600 {shown}",
            meta.mode() & 0o777
        ));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(64 * 1024).read_to_string(&mut text).map_err(|e| format!("password file {shown}: {e}"))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("password file {shown}: the first line is empty"));
    }
    Ok(Secret::new(line.to_string()))
}

unsafe extern "C" {
    static environ: *const *mut libc::c_char;
}

/// Overwrites the value of `name` in the process's original environment block, which is what
/// `/proc/PID/environ` shows for the whole life of the process; removing the variable alone
/// leaves the bytes there.
fn scrub_environment(name: &str) {
    let prefix = format!("{name}=");
    // SAFETY: runs single-threaded at start-up; `environ` is a NULL-terminated array of
    // NUL-terminated strings owned by the C runtime, and each string is only overwritten
    // within its own length.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let var = *entry;
            let bytes = std::ffi::CStr::from_ptr(var).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                for i in prefix.len()..bytes.len() {
                    *var.add(i) = b'*' as libc::c_char;
                }
            }
            entry = entry.add(1);
        }
    }
}

/// The password of the first `machine HOST` (or `default`) entry whose login is `user`.
pub fn netrc_password(text: &str, host: &str, user: &str) -> Option<Secret> {
    let mut tokens = text.split_whitespace();
    let mut in_entry = false;
    let mut login: Option<&str> = None;
    let mut password: Option<&str> = None;
    let matches = |login: Option<&str>, password: Option<&str>| match (login, password) {
        (Some(l), Some(p)) if l == user => Some(Secret::new(p.to_string())),
        _ => None,
    };
    while let Some(tok) = tokens.next() {
        match tok {
            "machine" | "default" => {
                if in_entry && let Some(s) = matches(login, password) {
                    return Some(s);
                }
                in_entry = if tok == "machine" { tokens.next() == Some(host) } else { true };
                login = None;
                password = None;
            }
            "login" if in_entry => login = tokens.next(),
            "password" if in_entry => password = tokens.next(),
            "macdef" => {
                // A macro body runs to the next blank line; it never holds credentials.
                in_entry = false;
            }
            _ => {}
        }
    }
    if in_entry { matches(login, password) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret pass;word\r\nignored\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let p = password_from_file(&path).map(|s| s.expose().to_string());
        assert_eq!(p.as_deref(), Ok("s3cret pass;word"));
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = password_from_file(&path).map(|_| ()).expect_err("a group-readable file was accepted");
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cret"), "the error shows the password: {e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(password_from_file(&link).is_err(), "a symlink was followed");
        std::fs::write(&path, "\n").expect("write");
        assert!(password_from_file(&path).is_err(), "an empty password was accepted");
    }

    #[test]
    fn netrc_entries_match_on_host_and_login() {
        let text = "machine other.org login me password nope\n\
                    machine archive.stsci.edu\n  login me@uni.edu\n  password s3cret\n\
                    default login anonymous password guest\n";
        let p = netrc_password(text, "archive.stsci.edu", "me@uni.edu").map(|s| s.expose().to_string());
        assert_eq!(p.as_deref(), Some("s3cret"));
        assert!(netrc_password(text, "archive.stsci.edu", "someone-else").is_none());
        let d = netrc_password(text, "elsewhere", "anonymous").map(|s| s.expose().to_string());
        assert_eq!(d.as_deref(), Some("guest"), "default entry applies to any host");
    }
}
