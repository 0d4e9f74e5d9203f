//! Wiring: from parsed options to a live mount, and the daemon's start-up handshake.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::cli::{MountArgs, TlsMax};
use crate::config::{Secret, parse_size};
use crate::dircache::Fallback;
use crate::dirstore::DirStore;
use crate::fs::{FsConfig, MastFs};
use crate::ftp::tls::{TlsOptions, base_config};
use crate::ftp::{Endpoint, FtpsRemote, Pool};
use crate::fuse::FuseAdapter;
use crate::mount_opts::{self, FuseOpt, MountOpt};
use crate::online::{self, Gated, Link};
use crate::read::{BlockCache, ReadConfig, ReadPath};
use crate::remote::Remote;
use crate::stats::Stats;

/// Everything decided before the process forks (no threads yet, terminal still attached).
pub struct Prepared {
    pub args: MountArgs,
    pub user: String,
    pub password: Secret,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub mount_options: Vec<MountOption>,
    pub acl: SessionACL,
}

pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("mastfs");
    }
    match crate::config::home_dir() {
        Some(home) => home.join(".cache").join("mastfs"),
        // No home at all: never a shared, guessable place such as /tmp.
        None => PathBuf::from("/var/cache/mastfs"),
    }
}

/// Validates options and gathers credentials; every error here is a one-line reason.
pub fn prepare(args: MountArgs) -> Result<Prepared, String> {
    if args.mountpoint.starts_with("/dev/fd") {
        // mount.fuse3's drop_privileges opens /dev/fuse itself and passes /dev/fd/N.
        return Err(format!(
            "mount point {}: mastfs mounts by itself and cannot take a /dev/fd/N mount point; \
             remove drop_privileges from the mount options",
            args.mountpoint.display()
        ));
    }
    let meta =
        std::fs::metadata(&args.mountpoint).map_err(|e| format!("mount point {}: {e}", args.mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(format!("mount point {} is not a directory", args.mountpoint.display()));
    }
    if is_mounted(&args.mountpoint) {
        return Err(format!("mount point {} is busy: something is already mounted there", args.mountpoint.display()));
    }
    if args.insecure && args.ca_file.is_some() {
        return Err("--insecure and --ca-file contradict each other".into());
    }
    let cache_size = parse_size(&args.cache_size)?;
    if args.offline && cache_size == 0 {
        return Err("--offline serves only the cache, and --cache-size 0 disables it".into());
    }
    let (mount_options, acl) = parse_mount_options(&args.options, &fsname(&args))?;
    let (user, password) = match &args.user {
        Some(u) if u != "anonymous" && u != "ftp" => {
            let p = match &args.password_file {
                Some(file) => crate::credentials::password_from_file(file)?,
                None => crate::credentials::password_for(&args.host, u)?,
            };
            (u.clone(), p)
        }
        _ if args.password_file.is_some() => {
            return Err("--password-file is for --user logins; anonymous logins send --email".into());
        }
        _ => ("anonymous".to_string(), Secret::new(args.email.clone())),
    };
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    Ok(Prepared { args, user, password, cache_dir, cache_size, mount_options, acl })
}

/// The mount's source in the mount table: SOURCE as given, like sshfs, so that mount(8) finds
/// an fstab entry's mount; else `HOST[:DIR]` in the same form. Never the login.
fn fsname(args: &MountArgs) -> String {
    match &args.source {
        Some(source) => source.clone(),
        None if normalize_root(&args.root) == "/" => args.host.clone(),
        None => format!("{}:{}", args.host, normalize_root(&args.root)),
    }
}

/// The FUSE side of the `-o` items; mastfs settings among them were already turned into
/// flags by `cli::parse`, and options for mount(8) and systemd are left to them.
fn parse_mount_options(opts: &[String], default_fsname: &str) -> Result<(Vec<MountOption>, SessionACL), String> {
    let mut out = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        // Subtype reaches fusermount3; the kernel option does the same for fuser's own
        // mount(2) (as root), which passes type "fuse": either way the mount table says
        // fuse.mastfs, as `mount -t fuse.mastfs` and `findmnt -t fuse.mastfs` expect.
        MountOption::Subtype("mastfs".into()),
        MountOption::CUSTOM("subtype=mastfs".into()),
    ];
    let mut fsname = default_fsname.to_string();
    let mut acl = SessionACL::Owner;
    for item in opts.iter().flat_map(|o| mount_opts::split(o)) {
        match mount_opts::classify(&item) {
            MountOpt::Fuse(FuseOpt::Mount(o)) => {
                // The last of two opposites wins, as in mount(8): `-o user` brings noexec,
                // and an `exec` after it undoes that.
                let opposite = match o {
                    MountOption::Exec => Some(MountOption::NoExec),
                    MountOption::NoExec => Some(MountOption::Exec),
                    MountOption::Atime => Some(MountOption::NoAtime),
                    MountOption::NoAtime => Some(MountOption::Atime),
                    _ => None,
                };
                out.retain(|x| Some(x) != opposite.as_ref() && *x != o);
                out.push(o);
            }
            MountOpt::Fuse(FuseOpt::Acl(a)) => acl = a,
            MountOpt::Fuse(FuseOpt::FsName(name)) => fsname = name,
            MountOpt::Fuse(FuseOpt::Implied) | MountOpt::Setting { .. } | MountOpt::System => {}
            MountOpt::Unknown => return Err(format!("unknown mount option -o {item} (see 'mastfs mount --help')")),
        }
    }
    if out.contains(&MountOption::AutoUnmount) && acl == SessionACL::Owner {
        // fusermount needs allow_root/allow_other to clean up after us.
        acl = SessionACL::RootAndOwner;
    }
    out.push(MountOption::FSName(fsname));
    Ok((out, acl))
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let target = canon.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| unescape_mountinfo(mp) == target)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// A ready file system plus what is needed to mount it.
pub struct Built {
    pub adapter: FuseAdapter,
    pub store: Arc<ReadPath>,
    pub config: Config,
    /// Set when the mount starts offline: what to tell the user, loudly.
    pub offline: Option<String>,
}

/// The share of `--cache-size` kept for directory listings: a sixteenth, at most 256 MiB.
/// Listings are small (about 60 bytes an entry) but let every cached block be found offline.
pub fn listing_budget(cache_size: u64) -> u64 {
    (cache_size / 16).min(256 << 20)
}

/// Logs in, checks the root listing and builds the file system; or, when the server cannot be
/// reached and the cache holds the root's listing (or with `--offline`), builds it offline.
/// Runs in the daemon (after fork), so threads are fine from here on.
pub fn build(p: &Prepared) -> Result<Built, String> {
    let a = &p.args;
    let port = a.port.unwrap_or(if a.implicit { 990 } else { 21 });
    let timeout = Duration::from_secs(a.timeout);
    let tls = base_config(&TlsOptions {
        ca_file: a.ca_file.clone(),
        insecure: a.insecure,
        tls12_only: a.tls_max == TlsMax::V12,
    })
    .map_err(|e| e.to_string())?;
    let stats = Arc::new(Stats::default());
    let endpoint = Endpoint {
        host: a.host.clone(),
        port,
        implicit: a.implicit,
        epsv: a.epsv,
        user: p.user.clone(),
        password: p.password.clone(),
        timeout,
    };
    let connections = usize::from(a.connections);
    let pool = Pool::new(endpoint, tls, connections, Arc::clone(&stats));
    let probe_pool = Arc::clone(&pool);
    let remote = FtpsRemote::new(pool, Arc::clone(&stats));
    let root = normalize_root(&a.root);
    let server = format!("{}:{port}", a.host.to_ascii_lowercase());

    let (disk, listings) = if p.cache_size == 0 {
        (None, None)
    } else {
        let for_listings = listing_budget(p.cache_size);
        let blocks = match BlockCache::open(&p.cache_dir, p.cache_size - for_listings) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("block cache at {} unusable ({e}); reading uncached", p.cache_dir.display());
                None
            }
        };
        let listings = match DirStore::open(&p.cache_dir, for_listings, &server, &p.user) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                log::warn!(
                    "listing cache at {} unusable ({e}); nothing will be available offline",
                    p.cache_dir.display()
                );
                None
            }
        };
        (blocks, listings)
    };

    let root_cached = || listings.as_ref().is_some_and(|l| l.load(&root).is_some());
    let (link, offline) = if a.offline {
        let link = Link::forced_offline(Arc::clone(&stats));
        let nothing = if root_cached() { "" } else { " Nothing of this server's root is cached yet." };
        let message = format!(
            "OFFLINE (--offline): no connection to {} will be made; serving only what the cache holds, \
             anything else fails with \"Network is unreachable\".{nothing}",
            a.host
        );
        (link, Some(message))
    } else {
        match remote.check(&root) {
            Ok(()) => (Link::online(Arc::clone(&stats)), None),
            Err(e) if online::unreachable(&e) => {
                let why = explain(&e, &a.host, port);
                if !root_cached() {
                    return Err(format!("{why} (and nothing of it is cached for offline use)"));
                }
                let link = Link::unreachable(&format!("{}:{port}", a.host), Arc::clone(&stats));
                link.start_prober(format!("{}:{port}", a.host), online::SCHEDULE, move || probe_pool.probe_login());
                let s = online::SCHEDULE;
                let message = format!(
                    "OFFLINE: {why}. Serving only what the cache holds; anything else fails with \
                     \"Network is unreachable\". The mount goes online by itself once the server answers \
                     (tried after {}s, then at most every {}s, and within {}s of a request that needs it).",
                    s.first.as_secs(),
                    s.max.as_secs(),
                    s.min_gap.as_secs()
                );
                (link, Some(message))
            }
            Err(e) => return Err(explain(&e, &a.host, port)),
        }
    };
    let remote: Arc<dyn Remote> = Arc::new(Gated::new(Arc::new(remote), Arc::clone(&link)));
    let store =
        ReadPath::new(Arc::clone(&remote), disk, ReadConfig { timeout, ..ReadConfig::default() }, Arc::clone(&stats));
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let fs = MastFs::new(
        remote,
        Arc::clone(&store),
        FsConfig { root, ttl: Duration::from_secs(a.dir_cache_time), server, user: p.user.clone(), uid, gid },
        Arc::clone(&stats),
        Fallback { listings, link, stats },
    );
    let mut config = Config::default();
    config.mount_options = p.mount_options.clone();
    config.acl = p.acl;
    // Each blocked read holds a FUSE thread; enough threads keep `ls` answering while
    // several readers wait on the network.
    config.n_threads = Some((connections * 2).clamp(8, 64));
    config.clone_fd = true;
    Ok(Built { adapter: FuseAdapter::new(fs), store, config, offline })
}

fn normalize_root(root: &str) -> String {
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}")
    }
}

/// Turns a start-up failure into a sentence a user can act on.
fn explain(e: &crate::error::RemoteError, host: &str, port: u16) -> String {
    use crate::error::RemoteError as R;
    match e {
        R::Login(m) => format!("login to {host} refused: {m} (check --user and the password)"),
        R::Tls(m) if m.contains("UnknownIssuer") || m.contains("certificate") => {
            format!("TLS certificate of {host} not trusted: {m} (use --ca-file for a private CA)")
        }
        R::Tls(m) => format!("TLS with {host}:{port} failed: {m}"),
        R::Connect { message, .. } => format!("cannot reach {host}:{port}: {message}"),
        R::Timeout(m) => format!("{host}:{port} did not answer in time ({m})"),
        R::Unavailable(m) => format!("remote root not accessible: {m} (check --root)"),
        other => format!("{host}:{port}: {other}"),
    }
}

/// Writes the start-up result to the parent, which is waiting to exit with it.
pub fn report(pipe: Option<impl Write>, result: &Result<(), String>) {
    let Some(mut pipe) = pipe else { return };
    let line = match result {
        Ok(()) => "OK\n".to_string(),
        Err(m) => format!("ERR {}\n", m.replace('\n', " ")),
    };
    let _ = pipe.write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(items: &[&str]) -> (Vec<MountOption>, SessionACL) {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        parse_mount_options(&items, "h.example").unwrap_or_else(|e| panic!("{items:?}: {e}"))
    }

    #[test]
    fn mounts_are_always_read_only_without_devices_or_setuid_whatever_mount_passes() {
        let (o, acl) = options(&["rw,dev,suid,_netdev,nofail,x-systemd.automount,port=21"]);
        for always in [MountOption::RO, MountOption::NoDev, MountOption::NoSuid] {
            assert!(o.contains(&always), "{always:?} missing from {o:?}");
        }
        for never in [MountOption::RW, MountOption::Dev, MountOption::Suid] {
            assert!(!o.contains(&never), "{never:?} in {o:?}");
        }
        assert!(o.contains(&MountOption::FSName("h.example".into())));
        assert_eq!(acl, SessionACL::Owner);
    }

    #[test]
    fn the_last_of_two_opposite_options_wins() {
        let (o, _) = options(&["noexec,nosuid,nodev", "exec"]);
        assert!(o.contains(&MountOption::Exec) && !o.contains(&MountOption::NoExec), "{o:?}");
        let (o, _) = options(&["atime,noatime,noatime"]);
        assert_eq!(o.iter().filter(|x| **x == MountOption::NoAtime).count(), 1, "{o:?}");
        assert!(!o.contains(&MountOption::Atime), "{o:?}");
    }

    #[test]
    fn fuse_options_set_access_and_the_source_name() {
        let (o, acl) = options(&["allow_other,fsname=mast"]);
        assert_eq!(acl, SessionACL::All);
        assert!(
            o.contains(&MountOption::FSName("mast".into())) && !o.contains(&MountOption::FSName("h.example".into()))
        );
        let (_, acl) = options(&["auto_unmount"]);
        assert_eq!(acl, SessionACL::RootAndOwner, "fusermount3 needs allow_root to unmount after us");
        let e = parse_mount_options(&["bogus".to_string()], "h").expect_err("an unknown option was accepted");
        assert!(e.contains("bogus"), "{e}");
    }
}
