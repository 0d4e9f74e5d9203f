//! The `-o` vocabulary of `mastfs mount` and the SOURCE argument, as mount(8), fuse3's
//! `mount.fuse3` and systemd hand them over.
//!
//! An `-o` item is one of: a mastfs setting (the `-o` spelling of a `mastfs mount` flag,
//! derived from the flag itself so that every flag has one), a FUSE option, or an option
//! meant for mount(8), systemd or the kernel defaults that mastfs accepts and leaves alone.
//! What mount(8) passes was observed with util-linux 2.38 and fuse3 3.14: it adds `rw`
//! unless `ro` is given, turns `user`/`users` into `noexec,nosuid,nodev`, keeps `_netdev`,
//! `nofail` and `user` for `mount.fuse3` (which drops them and adds `dev,suid`), and drops
//! `noauto`, `comment=` and `x-*` itself; a mastfs run by other means may still see them.

use std::sync::OnceLock;

use clap::CommandFactory;
use fuser::{MountOption, SessionACL};

/// What one `-o` item means.
#[derive(Debug, PartialEq, Eq)]
pub enum MountOpt {
    /// The flag of `mastfs mount` this stands for (its long name), and the value given.
    Setting {
        flag: String,
        value: Option<String>,
    },
    Fuse(FuseOpt),
    /// For mount(8), systemd or the kernel defaults: accepted, no effect on mastfs.
    System,
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FuseOpt {
    Mount(MountOption),
    Acl(SessionACL),
    FsName(String),
    /// `ro`, `nodev`, `nosuid` are always on; `rw`, `dev`, `suid` cannot be honoured by a
    /// read-only mount of a remote archive, and mount(8) passes them by default.
    Implied,
}

/// Options that belong to mount(8), systemd or kernel defaults that make no difference to a
/// read-only FUSE mount.
const SYSTEM_OPTIONS: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "sync",
    "async",
    "dirsync",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "silent",
    "loud",
];

/// The `-o` name of a `mastfs mount` flag: `--cache-dir` is `cache_dir`. `--user` is
/// `username`, because mount(8) owns `user` (who may mount an fstab entry).
pub fn o_name_of_flag(long: &str) -> Option<String> {
    match long {
        "help" | "version" => None,
        "user" => Some("username".into()),
        _ => Some(long.replace('-', "_")),
    }
}

/// (`-o` name, long flag) of every `mastfs mount` flag.
fn settings() -> &'static [(String, String)] {
    static SETTINGS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let cli = crate::cli::Cli::command();
        let Some(mount) = cli.find_subcommand("mount") else { return Vec::new() };
        mount
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?;
                Some((o_name_of_flag(long)?, long.to_string()))
            })
            .collect()
    })
}

pub fn classify(item: &str) -> MountOpt {
    let (name, value) = match item.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (item, None),
    };
    if name.starts_with("x-") || name == "comment" || (name == "user" && value.is_some()) {
        // x-systemd.*, x-gvfs-*, comment=...; libmount may add user=NAME for user mounts.
        return MountOpt::System;
    }
    let key = name.replace('-', "_");
    let fuse = |o| MountOpt::Fuse(FuseOpt::Mount(o));
    match (key.as_str(), value) {
        ("ro" | "rw" | "dev" | "nodev" | "suid" | "nosuid", None) => MountOpt::Fuse(FuseOpt::Implied),
        ("allow_other", None) => MountOpt::Fuse(FuseOpt::Acl(SessionACL::All)),
        ("allow_root", None) => MountOpt::Fuse(FuseOpt::Acl(SessionACL::RootAndOwner)),
        ("auto_unmount", None) => fuse(MountOption::AutoUnmount),
        ("default_permissions", None) => fuse(MountOption::DefaultPermissions),
        ("atime", None) => fuse(MountOption::Atime),
        ("noatime", None) => fuse(MountOption::NoAtime),
        ("exec", None) => fuse(MountOption::Exec),
        ("noexec", None) => fuse(MountOption::NoExec),
        ("fsname", Some(v)) if !v.is_empty() => MountOpt::Fuse(FuseOpt::FsName(v.to_string())),
        (k, None) if SYSTEM_OPTIONS.contains(&k) => MountOpt::System,
        (k, v) => match settings().iter().find(|(o, _)| o == k) {
            Some((_, long)) => MountOpt::Setting { flag: long.clone(), value: v.map(str::to_string) },
            None => MountOpt::Unknown,
        },
    }
}

/// The items of one `-o` argument: comma-separated, `\,` for a comma inside a value (as
/// sshfs and libfuse write it), empty items skipped.
pub fn split(options: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => current.push(next),
                None => current.push('\\'),
            },
            ',' => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    items.into_iter().map(|i| i.trim().to_string()).filter(|i| !i.is_empty()).collect()
}

/// SOURCE as mount(8) passes it: `[USER@]HOST[:DIR]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Source {
    pub user: Option<String>,
    pub host: String,
    pub dir: Option<String>,
}

/// Parses `[USER@]HOST[:DIR]`. The login may itself contain `@` (MAST logins are e-mail
/// addresses), so the host is what follows the last `@` before the `:`; an IPv6 address goes
/// in brackets. A legacy `mastfs#` prefix (fuse2's `type#source`) is dropped.
pub fn parse_source(text: &str) -> Result<Source, String> {
    let s = text.strip_prefix("mastfs#").unwrap_or(text);
    let mut in_brackets = false;
    let colon = s.char_indices().find_map(|(i, c)| {
        match c {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            ':' if !in_brackets => return Some(i),
            _ => {}
        }
        None
    });
    let (login_host, dir) = match colon {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (user, host) = match login_host.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, login_host),
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let bad = |why: &str| Err(format!("SOURCE {text:?} {why}; it is [USER@]HOST[:DIR], e.g. archive.stsci.edu:/stage"));
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return bad("has no valid host");
    }
    if user == Some("") {
        return bad("has an empty user before @");
    }
    if let Some(d) = dir
        && !d.is_empty()
        && d.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!("SOURCE {text:?}: after ':' comes a directory; give a port as -o port={d}"));
    }
    Ok(Source {
        user: user.map(str::to_string),
        host: host.to_string(),
        dir: dir.filter(|d| !d.is_empty()).map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        parse_source(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_source_is_an_optional_login_a_host_and_an_optional_directory() {
        assert_eq!(source("archive.stsci.edu"), Source { user: None, host: "archive.stsci.edu".into(), dir: None });
        assert_eq!(
            source("me@uni.edu@archive.stsci.edu:/stage/me"),
            Source { user: Some("me@uni.edu".into()), host: "archive.stsci.edu".into(), dir: Some("/stage/me".into()) }
        );
        assert_eq!(source("h:").dir, None);
        assert_eq!(source("h:/a@b:c").dir.as_deref(), Some("/a@b:c"), "the directory is everything after the colon");
        assert_eq!(source("[::1]:/pub").host, "::1");
        assert_eq!(source("me@[fe80::1]").host, "fe80::1");
        assert_eq!(source("mastfs#h.example").host, "h.example");
    }

    #[test]
    fn a_source_without_a_host_or_with_a_port_after_the_colon_is_refused() {
        for bad in ["", "@h", "me@", ":/x", "h x", "h/x"] {
            assert!(parse_source(bad).is_err(), "{bad:?} was accepted");
        }
        let e = parse_source("127.0.0.1:2121").expect_err("a port after the colon");
        assert!(e.contains("-o port=2121"), "{e}");
    }

    #[test]
    fn items_split_on_commas_except_escaped_ones() {
        assert_eq!(split("a,b=1,,c "), ["a", "b=1", "c"]);
        assert_eq!(split(r"cache_dir=/x\,y,ro"), ["cache_dir=/x,y", "ro"]);
        assert_eq!(split(r"a\\b"), [r"a\b"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn items_are_settings_fuse_options_or_left_to_the_system() {
        assert_eq!(classify("port=990"), MountOpt::Setting { flag: "port".into(), value: Some("990".into()) });
        assert_eq!(classify("cache-dir=/c"), MountOpt::Setting { flag: "cache-dir".into(), value: Some("/c".into()) });
        assert_eq!(classify("username=me"), MountOpt::Setting { flag: "user".into(), value: Some("me".into()) });
        assert_eq!(classify("implicit"), MountOpt::Setting { flag: "implicit".into(), value: None });
        assert_eq!(classify("allow_other"), MountOpt::Fuse(FuseOpt::Acl(SessionACL::All)));
        assert_eq!(classify("noatime"), MountOpt::Fuse(FuseOpt::Mount(MountOption::NoAtime)));
        assert_eq!(classify("fsname=mast"), MountOpt::Fuse(FuseOpt::FsName("mast".into())));
        for implied in ["ro", "rw", "dev", "suid", "nodev", "nosuid"] {
            assert_eq!(classify(implied), MountOpt::Fuse(FuseOpt::Implied), "{implied}");
        }
        for system in ["_netdev", "nofail", "noauto", "user", "users", "user=alice", "x-systemd.automount", "comment=x"]
        {
            assert_eq!(classify(system), MountOpt::System, "{system}");
        }
        for unknown in ["frobnicate", "allow_other=1", "fsname=", "help", "options=x"] {
            assert_eq!(classify(unknown), MountOpt::Unknown, "{unknown}");
        }
    }
}
