//! `mastfs cache du|clear|verify`: what the cache directory holds, per host and remote
//! directory; removing some or all of it; checking every file in it.
//!
//! Safe while mounts use the directory: a mount treats a vanished file as a miss (and fetches
//! again) and validates everything it loads, so these commands only ever delete whole files
//! (never rewrite one), never touch a live writer's temp file, and leave a directory a put
//! may be writing into to `rmdir`, which refuses while anything is in it. After deleting
//! anything they touch the clear stamp (`CACHE_DIR/cleared`), which each mount's block and
//! listing stores watch through [`ClearWatch`] to rebuild their disk-usage index.
//!
//! Runs in the command's own process, single-threaded; [`ClearWatch`] holds one small mutex,
//! taken by a mount's writer threads only to read and update two values.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::json;

use crate::cli::{CacheClearArgs, CacheCommand, CacheDuArgs, CacheVerifyArgs};
use crate::dirstore::{self, StoredListing};
use crate::read::disk::{self, Identity, StoredFile};
use crate::stats_view::bytes;

/// The file the cache commands touch after deleting anything.
const STAMP: &str = "cleared";
/// How often a mount looks at the stamp: a stat per put would be cheap too, but a second's
/// delay costs nothing (until then a deleted block is only a miss).
#[cfg(not(test))]
const CHECK_EVERY: Duration = Duration::from_secs(1);
#[cfg(test)]
const CHECK_EVERY: Duration = Duration::ZERO;

/// What checking one cache file found.
pub(crate) enum Verdict {
    Good,
    /// It failed a check (the reason) and was deleted.
    Removed(String),
    /// Deleted by someone else (a mount's eviction) since it was listed.
    Gone,
    /// Could not be read (EACCES, EIO): left alone.
    Unreadable(io::Error),
}

/// Whether a cache command deleted files since the last look, as a mount's store asks it.
pub(crate) struct ClearWatch {
    stamp: PathBuf,
    state: Mutex<(Instant, Option<(u64, SystemTime)>)>,
}

impl ClearWatch {
    pub(crate) fn new(cache_dir: &Path) -> ClearWatch {
        let stamp = cache_dir.join(STAMP);
        let seen = stamp_of(&stamp);
        ClearWatch { stamp, state: Mutex::new((Instant::now() + CHECK_EVERY, seen)) }
    }

    /// True once after each change of the stamp (looked at no more than every `CHECK_EVERY`).
    pub(crate) fn changed(&self) -> bool {
        let mut state = self.state.lock();
        let now = Instant::now();
        if now < state.0 {
            return false;
        }
        state.0 = now + CHECK_EVERY;
        let seen = stamp_of(&self.stamp);
        if seen == state.1 {
            return false;
        }
        state.1 = seen;
        true
    }
}

/// The stamp's inode and mtime: each touch renames a new file over it, so the inode changes
/// even when the clock's granularity would hide a second touch.
fn stamp_of(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.ino(), meta.modified().ok()?))
}

/// Tells the mounts sharing `cache_dir` that files were deleted behind them.
fn touch_stamp(cache_dir: &Path) -> io::Result<()> {
    let tmp = cache_dir.join(format!("{STAMP}.tmp.{}", std::process::id()));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{}\n", now.as_nanos()).as_bytes())?;
    drop(f);
    fs::rename(&tmp, cache_dir.join(STAMP)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

pub fn run(command: CacheCommand) -> ExitCode {
    match command {
        CacheCommand::Du(a) => du(a),
        CacheCommand::Clear(a) => clear(a),
        CacheCommand::Verify(a) => verify(a),
    }
}

fn cache_dir_of(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(crate::mount::default_cache_dir)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("mastfs: {msg}");
    ExitCode::FAILURE
}

/// Everything in the cache directory, or why it cannot be read.
struct Contents {
    files: Vec<StoredFile>,
    listings: Vec<StoredListing>,
}

fn contents(dir: &Path) -> Result<Contents, String> {
    let files =
        disk::stored_files(dir).map_err(|e| format!("cannot read the block cache in {}: {e}", dir.display()))?;
    let listings = dirstore::stored_listings(dir)
        .map_err(|e| format!("cannot read the listing cache in {}: {e}", dir.display()))?;
    Ok(Contents { files, listings })
}

// ------------------------------------------------------------------ du

#[derive(Default, Clone, Copy)]
struct Usage {
    block_bytes: u64,
    blocks: u64,
    files: u64,
    listing_bytes: u64,
    listings: u64,
}

impl Usage {
    fn add_file(&mut self, f: &StoredFile) {
        self.block_bytes += f.bytes();
        self.blocks += f.blocks.len() as u64;
        self.files += 1;
    }

    fn add_listing(&mut self, l: &StoredListing) {
        self.listing_bytes += l.size;
        self.listings += 1;
    }

    fn bytes(&self) -> u64 {
        self.block_bytes + self.listing_bytes
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "bytes": self.bytes(),
            "block_bytes": self.block_bytes,
            "blocks": self.blocks,
            "files": self.files,
            "listing_bytes": self.listing_bytes,
            "listings": self.listings,
        })
    }

    fn row(&self, label: &str) -> String {
        format!(
            "{:>10}  {:>7}  {:>6}  {:>8}  {label}",
            bytes(self.bytes() as f64),
            self.blocks,
            self.files,
            self.listings
        )
    }
}

/// `/a/b/c` at depth 2 is `/a/b`; `/a` stays `/a`.
fn top_dir(dir: &str, depth: usize) -> String {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).take(depth).collect();
    format!("/{}", parts.join("/"))
}

/// The directory holding remote file `path`.
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(dir, _)| if dir.is_empty() { "/" } else { dir })
}

#[derive(Default)]
struct HostUsage {
    total: Usage,
    dirs: BTreeMap<String, Usage>,
}

fn du(args: CacheDuArgs) -> ExitCode {
    let dir = cache_dir_of(args.cache_dir);
    let c = match contents(&dir) {
        Ok(c) => c,
        Err(m) => return fail(&m),
    };
    let mut total = Usage::default();
    let mut unknown = Usage::default();
    let mut hosts: BTreeMap<(String, String), HostUsage> = BTreeMap::new();
    for f in c.files.iter().filter(|f| !f.blocks.is_empty()) {
        total.add_file(f);
        match &f.identity {
            Identity::Known(id) => {
                let h = hosts.entry((id.server.clone(), id.user.clone())).or_default();
                h.total.add_file(f);
                h.dirs.entry(top_dir(parent_of(&id.path), args.depth)).or_default().add_file(f);
            }
            Identity::Missing | Identity::Damaged(_) => unknown.add_file(f),
        }
    }
    for l in &c.listings {
        total.add_listing(l);
        match &l.identity {
            Ok(id) => {
                let h = hosts.entry((id.server.clone(), id.user.clone())).or_default();
                h.total.add_listing(l);
                h.dirs.entry(top_dir(&id.path, args.depth)).or_default().add_listing(l);
            }
            Err(_) => unknown.add_listing(l),
        }
    }
    if args.json {
        let hosts: Vec<serde_json::Value> = hosts
            .iter()
            .map(|((server, user), h)| {
                let dirs: Vec<serde_json::Value> = h
                    .dirs
                    .iter()
                    .map(|(path, u)| {
                        let mut v = u.json();
                        v["path"] = json!(path);
                        v
                    })
                    .collect();
                let mut v = h.total.json();
                v["server"] = json!(server);
                v["user"] = json!(user);
                v["dirs"] = json!(dirs);
                v
            })
            .collect();
        let mut v = total.json();
        v["cache_dir"] = json!(dir.display().to_string());
        v["hosts"] = json!(hosts);
        v["unknown"] = unknown.json();
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    println!(
        "{}: {} in {} of {} and {}",
        dir.display(),
        bytes(total.bytes() as f64),
        plural(total.blocks, "block"),
        plural(total.files, "file"),
        plural(total.listings, "listing")
    );
    if total.files == 0 && total.listings == 0 {
        return ExitCode::SUCCESS;
    }
    println!();
    println!("{:>10}  {:>7}  {:>6}  {:>8}  WHERE", "SIZE", "BLOCKS", "FILES", "LISTINGS");
    for ((server, user), h) in &hosts {
        println!("{}", h.total.row(&format!("{server} {user}")));
        for (path, u) in &h.dirs {
            println!("{}", u.row(&format!("  {path}")));
        }
    }
    if unknown.files > 0 || unknown.listings > 0 {
        println!("{}", unknown.row("unknown (written before mastfs recorded whose files they are)"));
    }
    ExitCode::SUCCESS
}

/// `1 block`, `2 blocks`.
fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// `1536` -> `1.5 KiB`.
/// The entries of a sharded layout directory (`ROOT/<2 hex>/<entry>`), as the block cache and
/// the listing store both lay theirs out: what is in each shard directory, in no order. A
/// missing layout holds nothing, and a shard a concurrent clear removed as empty is skipped;
/// any other error is the caller's, as a count from a half-read cache would be wrong.
pub(crate) fn layout_entries(root: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let shards = match fs::read_dir(root) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for shard in shards {
        let shard = shard?;
        if !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match fs::read_dir(shard.path()) {
            Ok(entries) => {
                for entry in entries {
                    out.push(entry?);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ clear

/// What `clear` removes: a host (`host` or `host:port`) and a remote path (a file or a
/// directory subtree); neither means everything, unknown files included.
struct Selection {
    host: Option<String>,
    path: Option<String>,
}

impl Selection {
    fn everything(&self) -> bool {
        self.host.is_none() && self.path.is_none()
    }

    fn host_matches(&self, server: &str) -> bool {
        let Some(want) = &self.host else { return true };
        let server = server.to_ascii_lowercase();
        let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
        *want == server || *want == host || *want == host.trim_start_matches('[').trim_end_matches(']')
    }

    fn path_matches(&self, path: &str) -> bool {
        match self.path.as_deref() {
            None | Some("/") => true,
            Some(want) => path == want || path.strip_prefix(want).is_some_and(|rest| rest.starts_with('/')),
        }
    }

    fn describe(&self) -> String {
        match (&self.host, &self.path) {
            (None, None) => String::new(),
            (Some(h), None) => format!(" of host {h}"),
            (None, Some(p)) => format!(" under {p}"),
            (Some(h), Some(p)) => format!(" of host {h} under {p}"),
        }
    }
}

/// `PATH` as the remote path it names: absolute, without trailing or doubled slashes.
fn normalize_remote_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "PATH must be a remote path starting with / (such as /stage/anonymous/x.fits, as 'mastfs cache du' \
             shows), not {p:?}"
        ));
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(format!("PATH may not contain ..: {p:?}"));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Why `path` is refused when it names a place inside a mastfs mount: the cache knows paths
/// on the server, and the mount's root on the server cannot be told for certain from here (the
/// mount table shows SOURCE as given). The message suggests the likely server path.
fn under_a_mount(path: &str, mountinfo: &str) -> Option<String> {
    let local = Path::new(path);
    let local = if local.is_absolute() { local.to_path_buf() } else { std::env::current_dir().ok()?.join(local) };
    let mount = crate::stats_view::mastfs_mounts(mountinfo)
        .into_iter()
        .filter(|m| local.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.components().count())?;
    let rest = local.strip_prefix(&mount.mountpoint).ok()?.to_string_lossy().into_owned();
    let source = crate::mount_opts::parse_source(&mount.source).ok()?;
    let root = source.dir.unwrap_or_else(|| "/".into());
    let remote = normalize_remote_path(&format!("{}/{rest}", root.trim_end_matches('/'))).ok()?;
    Some(format!(
        "{path} is inside the mastfs mount at {} (of {}); 'mastfs cache clear' takes the path on the server, \
         probably: mastfs cache clear --host {} {remote}",
        mount.mountpoint.display(),
        mount.source,
        source.host
    ))
}

#[derive(Default)]
struct Removed {
    blocks: u64,
    files: u64,
    block_bytes: u64,
    listings: u64,
    listing_bytes: u64,
    /// Files that could not be deleted: (path, error).
    failed: Vec<(PathBuf, io::Error)>,
}

impl Removed {
    fn anything(&self) -> bool {
        self.blocks > 0 || self.listings > 0
    }
}

fn clear(args: CacheClearArgs) -> ExitCode {
    let dir = cache_dir_of(args.cache_dir);
    if let Some(hint) = args.path.as_deref().and_then(|p| under_a_mount(p, &crate::stats_view::read_mountinfo())) {
        return fail(&hint);
    }
    let path = match args.path.as_deref().map(normalize_remote_path).transpose() {
        Ok(p) => p,
        Err(m) => return fail(&m),
    };
    let sel = Selection { host: args.host.map(|h| h.to_ascii_lowercase()), path };
    let c = match contents(&dir) {
        Ok(c) => c,
        Err(m) => return fail(&m),
    };
    let mut removed = Removed::default();
    for f in &c.files {
        let chosen = match &f.identity {
            Identity::Known(id) => sel.host_matches(&id.server) && sel.path_matches(&id.path),
            Identity::Missing | Identity::Damaged(_) => sel.everything(),
        };
        if chosen {
            remove_file_dir(f, args.dry_run, &mut removed);
        }
    }
    for l in &c.listings {
        let chosen = match &l.identity {
            Ok(id) => sel.host_matches(&id.server) && sel.path_matches(&id.path),
            Err(_) => sel.everything(),
        };
        if chosen {
            if args.dry_run {
                removed.listings += 1;
                removed.listing_bytes += l.size;
                continue;
            }
            match fs::remove_file(&l.file) {
                Ok(()) => {
                    removed.listings += 1;
                    removed.listing_bytes += l.size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => removed.failed.push((l.file.clone(), e)),
            }
        }
    }
    if removed.anything()
        && !args.dry_run
        && let Err(e) = touch_stamp(&dir)
    {
        eprintln!("mastfs: cannot tell running mounts about the clear ({e}); they notice each file as they miss it");
    }
    let verb = if args.dry_run { "Would remove" } else { "Removed" };
    if args.json {
        let v = json!({
            "cache_dir": dir.display().to_string(),
            "dry_run": args.dry_run,
            "files": removed.files,
            "blocks": removed.blocks,
            "block_bytes": removed.block_bytes,
            "listings": removed.listings,
            "listing_bytes": removed.listing_bytes,
            "bytes": removed.block_bytes + removed.listing_bytes,
            "failed": removed.failed.len(),
        });
        println!("{v}");
    } else {
        println!(
            "{verb} {} of {} ({}) and {} ({}){} from {}",
            plural(removed.blocks, "block"),
            plural(removed.files, "file"),
            bytes(removed.block_bytes as f64),
            plural(removed.listings, "listing"),
            bytes(removed.listing_bytes as f64),
            sel.describe(),
            dir.display()
        );
    }
    for (p, e) in &removed.failed {
        eprintln!("mastfs: cannot remove {}: {e}", p.display());
    }
    if removed.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Deletes one cached file's blocks, then its identity and directory once nothing else (a
/// live writer's temp file) is left in it.
fn remove_file_dir(f: &StoredFile, dry_run: bool, removed: &mut Removed) {
    let mut any = false;
    for b in &f.blocks {
        let outcome = if dry_run { Ok(()) } else { fs::remove_file(&b.path) };
        match outcome {
            Ok(()) => {
                any = true;
                removed.blocks += 1;
                removed.block_bytes += b.size;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => removed.failed.push((b.path.clone(), e)),
        }
    }
    if any {
        removed.files += 1;
    }
    if dry_run {
        return;
    }
    for t in &f.stale_temps {
        let _ = fs::remove_file(t);
    }
    if disk::holds_only_identity(&f.dir) {
        let _ = fs::remove_file(f.identity_path());
    }
    // rmdir refuses while a put writes into it; then the directory stays, harmlessly.
    let _ = fs::remove_dir(&f.dir);
    if let Some(shard) = f.dir.parent() {
        let _ = fs::remove_dir(shard);
    }
}

// ------------------------------------------------------------------ verify

/// What `verify` found of one kind of file (blocks, or listings).
#[derive(Default)]
struct Tally {
    /// Files still there when checked, and their bytes.
    files: u64,
    bytes: u64,
    good: u64,
    /// Files that failed a check and were removed, and their bytes.
    bad: u64,
    bad_bytes: u64,
}

impl Tally {
    fn count(&mut self, verdict: &Verdict, size: u64) {
        match verdict {
            Verdict::Gone => return,
            Verdict::Good => self.good += 1,
            Verdict::Removed(_) => {
                self.bad += 1;
                self.bad_bytes += size;
            }
            Verdict::Unreadable(_) => {}
        }
        self.files += 1;
        self.bytes += size;
    }
}

#[derive(Default)]
struct Checked {
    blocks: Tally,
    listings: Tally,
    bad_identities: u64,
    stale_temps: u64,
    /// Files that could not be read (left in place).
    unreadable: u64,
}

fn verify(args: CacheVerifyArgs) -> ExitCode {
    let dir = cache_dir_of(args.cache_dir);
    let c = match contents(&dir) {
        Ok(c) => c,
        Err(m) => {
            fail(&m);
            return ExitCode::from(2);
        }
    };
    let mut n = Checked::default();
    let mut report = Vec::new();
    for f in &c.files {
        let whose = match &f.identity {
            Identity::Known(id) => format!("{} {} {}", id.server, id.user, id.path),
            Identity::Missing => format!("unknown file {}", f.dir.display()),
            Identity::Damaged(why) => {
                match fs::remove_file(f.identity_path()) {
                    Ok(()) => {
                        n.bad_identities += 1;
                        report.push(format!("removed the identity record of {}: {why}", f.dir.display()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        n.unreadable += 1;
                        report.push(format!("cannot remove the bad identity record of {}: {e}", f.dir.display()));
                    }
                }
                format!("unknown file {}", f.dir.display())
            }
        };
        for b in &f.blocks {
            let verdict = disk::verify_block(f, b);
            n.blocks.count(&verdict, b.size);
            match verdict {
                Verdict::Removed(why) => report.push(format!("removed block {} of {whose}: {why}", b.index)),
                Verdict::Unreadable(e) => {
                    n.unreadable += 1;
                    report.push(format!("cannot read block {} of {whose} ({}): {e}", b.index, b.path.display()));
                }
                Verdict::Good | Verdict::Gone => {}
            }
        }
        for t in &f.stale_temps {
            if fs::remove_file(t).is_ok() {
                n.stale_temps += 1;
            }
        }
    }
    for l in &c.listings {
        let whose = match &l.identity {
            Ok(id) => format!("{} {} {}", id.server, id.user, id.path),
            Err(_) => format!("unknown directory {}", l.file.display()),
        };
        let verdict = dirstore::verify_listing(l);
        n.listings.count(&verdict, l.size);
        match verdict {
            Verdict::Removed(why) => report.push(format!("removed the listing of {whose}: {why}")),
            Verdict::Unreadable(e) => {
                n.unreadable += 1;
                report.push(format!("cannot read the listing of {whose} ({}): {e}", l.file.display()));
            }
            Verdict::Good | Verdict::Gone => {}
        }
    }
    let damaged = n.blocks.bad + n.listings.bad + n.bad_identities;
    if damaged > 0 && touch_stamp(&dir).is_err() {
        report.push("cannot tell running mounts about the removals; they notice each file as they miss it".into());
    }
    if args.json {
        let v = json!({
            "cache_dir": dir.display().to_string(),
            "blocks": n.blocks.files,
            "block_bytes": n.blocks.bytes,
            "good_blocks": n.blocks.good,
            "removed_blocks": n.blocks.bad,
            "removed_block_bytes": n.blocks.bad_bytes,
            "listings": n.listings.files,
            "listing_bytes": n.listings.bytes,
            "good_listings": n.listings.good,
            "removed_listings": n.listings.bad,
            "removed_listing_bytes": n.listings.bad_bytes,
            "removed_identities": n.bad_identities,
            "removed_temp_files": n.stale_temps,
            "unreadable": n.unreadable,
            "problems": report,
        });
        println!("{v}");
    } else {
        for line in &report {
            println!("{line}");
        }
        println!(
            "Checked {} ({}) and {} ({}) in {}",
            plural(n.blocks.files, "block"),
            bytes(n.blocks.bytes as f64),
            plural(n.listings.files, "listing"),
            bytes(n.listings.bytes as f64),
            dir.display()
        );
        println!("Good: {}, {}", plural(n.blocks.good, "block"), plural(n.listings.good, "listing"));
        println!(
            "Removed: {} ({}), {} ({}), {}, {}",
            plural(n.blocks.bad, "damaged block"),
            bytes(n.blocks.bad_bytes as f64),
            plural(n.listings.bad, "damaged listing"),
            bytes(n.listings.bad_bytes as f64),
            plural(n.bad_identities, "damaged identity record"),
            plural(n.stale_temps, "leftover temp file")
        );
        if n.unreadable > 0 {
            println!("Unreadable (left in place): {}", n.unreadable);
        }
    }
    if n.unreadable > 0 {
        ExitCode::from(2)
    } else if damaged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_dirs_group_by_the_first_components() {
        assert_eq!(top_dir("/stage/anonymous/anonymous12345", 2), "/stage/anonymous");
        assert_eq!(top_dir("/pub", 2), "/pub");
        assert_eq!(top_dir("/", 2), "/");
        assert_eq!(top_dir(parent_of("/top.bin"), 2), "/");
        assert_eq!(top_dir(parent_of("/deep/x/y/z.bin"), 1), "/deep");
    }

    #[test]
    fn a_path_selects_itself_and_its_subtree_only() {
        let sel = Selection { host: None, path: Some("/data/sub".into()) };
        assert!(sel.path_matches("/data/sub"));
        assert!(sel.path_matches("/data/sub/c.txt"));
        assert!(!sel.path_matches("/data/subway.txt"));
        assert!(!sel.path_matches("/data"));
        assert_eq!(normalize_remote_path("/data//sub/./").as_deref(), Ok("/data/sub"));
        assert!(normalize_remote_path("data").is_err());
        assert!(normalize_remote_path("/a/../b").is_err());
    }

    #[test]
    fn a_path_inside_a_mount_is_refused_with_the_server_path_it_likely_means() {
        let mountinfo = "36 25 0:32 / /home/me/mast rw,nosuid,nodev - fuse.mastfs archive.stsci.edu:/stage rw\n\
                         37 25 0:33 / /home/me/other rw - fuse.sshfs h:/x rw\n";
        let hint = under_a_mount("/home/me/mast/anonymous/x.fits", mountinfo).expect("refused");
        assert!(hint.contains("--host archive.stsci.edu /stage/anonymous/x.fits"), "{hint}");
        assert!(under_a_mount("/home/me/mast", mountinfo).is_some_and(|h| h.ends_with(" /stage")));
        assert_eq!(under_a_mount("/home/me/other/x", mountinfo), None);
        assert_eq!(under_a_mount("/stage/anonymous", mountinfo), None);
        assert_eq!(under_a_mount("/home/me/mastx", mountinfo), None);
    }

    #[test]
    fn a_host_selects_any_port_or_the_one_given() {
        let sel = Selection { host: Some("127.0.0.1".into()), path: None };
        assert!(sel.host_matches("127.0.0.1:2121"));
        assert!(!sel.host_matches("127.0.0.2:2121"));
        let sel = Selection { host: Some("archive.stsci.edu:21".into()), path: None };
        assert!(sel.host_matches("archive.stsci.edu:21"));
        assert!(!sel.host_matches("archive.stsci.edu:990"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(f64::from(3u32 << 20)), "3.0 MiB");
    }

    #[test]
    fn a_touched_stamp_is_seen_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = ClearWatch::new(dir.path());
        assert!(!watch.changed());
        touch_stamp(dir.path()).expect("touch");
        assert!(watch.changed());
        assert!(!watch.changed());
        touch_stamp(dir.path()).expect("touch again");
        assert!(watch.changed());
    }
}
