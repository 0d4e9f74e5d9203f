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
    if let Some(home) = std::env::var_os("HOME") {
        let path = Path::new(&home).join(".netrc");
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
