//! Wiring: from parsed options to a live mount, and the daemon's start-up handshake.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::cli::{MountArgs, TlsMax};
use crate::config::{Secret, parse_size};
use crate::fs::{FsConfig, MastFs};
use crate::ftp::tls::{TlsOptions, base_config};
use crate::ftp::{Endpoint, FtpsRemote, Pool};
use crate::fuse::FuseAdapter;
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
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("mastfs")
}

/// Validates options and gathers credentials; every error here is a one-line reason.
pub fn prepare(args: MountArgs) -> Result<Prepared, String> {
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
    let (mount_options, acl) = parse_mount_options(&args.options, &args.host)?;
    let (user, password) = match &args.user {
        Some(u) if u != "anonymous" && u != "ftp" => {
            let p = crate::credentials::password_for(&args.host, u)?;
            (u.clone(), p)
        }
        _ => ("anonymous".to_string(), Secret::new(args.email.clone())),
    };
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    Ok(Prepared { args, user, password, cache_dir, cache_size, mount_options, acl })
}

fn parse_mount_options(opts: &[String], host: &str) -> Result<(Vec<MountOption>, SessionACL), String> {
    let mut out = vec![MountOption::RO, MountOption::NoDev, MountOption::NoSuid, MountOption::Subtype("mastfs".into())];
    let mut fsname = format!("mastfs#{host}");
    let mut acl = SessionACL::Owner;
    for opt in opts.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "ro" => {}
            "rw" => return Err("mastfs is read-only: -o rw is not supported".into()),
            "allow_other" => acl = SessionACL::All,
            "allow_root" => acl = SessionACL::RootAndOwner,
            "auto_unmount" => out.push(MountOption::AutoUnmount),
            "default_permissions" => out.push(MountOption::DefaultPermissions),
            "noatime" => out.push(MountOption::NoAtime),
            "noexec" => out.push(MountOption::NoExec),
            "exec" => out.push(MountOption::Exec),
            "nodev" | "nosuid" => {}
            o if o.starts_with("fsname=") => fsname = o["fsname=".len()..].to_string(),
            o => return Err(format!("unknown mount option -o {o}")),
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
}

/// Logs in, checks the root listing and builds the file system. Runs in the daemon (after
/// fork), so threads are fine from here on.
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
    let remote = FtpsRemote::new(pool, Arc::clone(&stats));
    let root = normalize_root(&a.root);
    remote.check(&root).map_err(|e| explain(&e, &a.host, port))?;

    let disk = if p.cache_size == 0 {
        None
    } else {
        match BlockCache::open(&p.cache_dir, p.cache_size) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("block cache at {} unusable ({e}); reading uncached", p.cache_dir.display());
                None
            }
        }
    };
    let remote: Arc<dyn Remote> = Arc::new(remote);
    let store =
        ReadPath::new(Arc::clone(&remote), disk, ReadConfig { timeout, ..ReadConfig::default() }, Arc::clone(&stats));
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = MastFs::new(
        remote,
        Arc::clone(&store),
        FsConfig {
            root,
            ttl: Duration::from_secs(a.dir_cache_time),
            server: format!("{}:{port}", a.host.to_ascii_lowercase()),
            user: p.user.clone(),
            uid,
            gid,
        },
        stats,
    );
    let mut config = Config::default();
    config.mount_options = p.mount_options.clone();
    config.acl = p.acl;
    // Each blocked read holds a FUSE thread; enough threads keep `ls` answering while
    // several readers wait on the network.
    config.n_threads = Some((connections * 2).clamp(8, 64));
    config.clone_fd = true;
    Ok(Built { adapter: FuseAdapter::new(fs), store, config })
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
pub fn report(fd: Option<i32>, result: &Result<(), String>) {
    let Some(fd) = fd else { return };
    let line = match result {
        Ok(()) => "OK\n".to_string(),
        Err(m) => format!("ERR {}\n", m.replace('\n', " ")),
    };
    // SAFETY: fd is the write end of the start-up pipe, owned by this process.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = f.write_all(line.as_bytes());
}
