//! `mastfs warm PATH...`: fills a live mount's disk cache with files and whole directories.
//!
//! The fetching happens in the mount's daemon, through its cache, connection pool and
//! read-ahead: this command walks the PATHs through the mount, asks the daemon how much of
//! each file its disk cache holds (`cachectl`), and reads every file not held whole to its
//! end, throwing the bytes away. The reads use `O_DIRECT`, so that each one reaches the
//! daemon (pages the kernel kept from an earlier read would otherwise answer it, and the
//! daemon would never see the file) and a warm of many gigabytes does not push everything
//! else out of the page cache. A file counts as warmed only once the daemon says all of its
//! bytes are on disk: its cache writer stores blocks after the reads that fetched them.
//!
//! Threads: the main thread walks and then waits; `--jobs` workers warm one file at a time
//! each; one thread draws the progress. Ctrl-C and SIGTERM set a flag that all of them check
//! between reads.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cachectl::{self, Answer};
use crate::cli::WarmArgs;
use crate::fs::STATS_NAME;
use crate::read::footprint;
use crate::stats_view::{bytes, count};

/// Bytes asked for per read: two of the largest FUSE requests (1 MiB) at once, so the
/// daemon sees a sequential reader and fetches ahead on all its connections.
const CHUNK: usize = 2 << 20;
/// How long a read file may sit without more of it reaching the disk before the warm gives
/// up on it (the cache writer stores a block within moments of its last byte arriving).
const SETTLE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);
const BAR_EVERY: Duration = Duration::from_millis(200);
const LINE_EVERY: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 24;
/// The exit status of a command stopped by Ctrl-C, as shells report it.
const INTERRUPTED: u8 = 130;

/// One regular file found under the PATHs.
struct Found {
    path: PathBuf,
    size: u64,
    on_disk: u64,
    /// Index into `Scan::mounts`.
    mount: usize,
}

/// A mastfs mount the PATHs lie in.
struct MountSeen {
    root: PathBuf,
    dev: u64,
    capacity: u64,
    writable: bool,
    /// Its counters when the warm started.
    net_before: Option<u64>,
}

#[derive(Default)]
struct Scan {
    files: Vec<Found>,
    /// (device, inode) of the files found, so that PATHs that overlap (`d` and `d/sub`)
    /// neither count a file twice nor read it twice at once.
    seen: HashSet<(u64, u64)>,
    mounts: Vec<MountSeen>,
    failures: Vec<(PathBuf, String)>,
    /// Where to tell how the walk is going (a large tree takes a while to walk): on a
    /// terminal, a line redrawn in place; otherwise a line now and then.
    tty: bool,
    /// When the walk was last reported (None: not yet, and not before the first interval).
    noted: Option<Instant>,
}

/// Shared by the workers and the progress thread.
struct Progress {
    started: Instant,
    total_bytes: u64,
    total_files: usize,
    read_bytes: AtomicU64,
    files_done: AtomicUsize,
    tty: bool,
    /// Serialises what is written to stderr, so a failure never lands inside a bar.
    out: Mutex<()>,
}

enum Outcome {
    /// Wholly on disk now; the bytes it gained.
    Warmed(u64),
    Failed(String),
    Interrupted,
}

pub fn run(args: WarmArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("mastfs: cannot handle signal {sig} ({e}); Ctrl-C will not print a summary");
        }
    }
    match warm(&args, &stop) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mastfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn warm(args: &WarmArgs, stop: &AtomicBool) -> Result<ExitCode, String> {
    let mut scan = Scan { tty: stderr_is_terminal(), noted: Some(Instant::now()), ..Scan::default() };
    for path in &args.paths {
        let mount = mount_of(path, &mut scan.mounts)?;
        // A real warm marks skipped files as just used; a dry run changes nothing.
        walk_top(path, mount, !args.dry_run, &mut scan, stop);
    }
    if scan.tty {
        eprint!("\r\x1b[K");
    }
    if stop.load(Ordering::Relaxed) {
        println!("interrupted while looking at the files; nothing was fetched");
        return Ok(ExitCode::from(INTERRUPTED));
    }
    for (path, why) in &scan.failures {
        eprintln!("mastfs warm: {}: {why}", path.display());
    }
    let (todo, cached): (Vec<&Found>, Vec<&Found>) = scan.files.iter().partition(|f| f.on_disk < f.size);
    let missing: u64 = todo.iter().map(|f| f.size - f.on_disk).sum();
    if args.dry_run {
        for f in &todo {
            println!("would fetch {:>15} bytes  {}", count(f.size - f.on_disk), f.path.display());
        }
    }
    println!(
        "{} to fetch, {} bytes ({}); {} already cached ({} bytes)",
        files(todo.len()),
        count(missing),
        bytes(missing as f64),
        files(cached.len()),
        count(cached.iter().map(|f| f.size).sum())
    );
    let refusals = refusals(&scan);
    if !refusals.is_empty() {
        for r in &refusals {
            eprintln!("mastfs: {r}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.dry_run {
        return Ok(if scan.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }

    for m in &mut scan.mounts {
        m.net_before = net_bytes(&m.root);
    }
    let progress = Progress {
        started: Instant::now(),
        total_bytes: todo.iter().map(|f| f.size).sum(),
        total_files: todo.len(),
        read_bytes: AtomicU64::new(0),
        files_done: AtomicUsize::new(0),
        tty: stderr_is_terminal(),
        out: Mutex::new(()),
    };
    let outcomes = fetch(&todo, args.jobs, &progress, stop);
    let elapsed = progress.started.elapsed();

    let mut warmed = 0;
    let mut gained = 0;
    let mut failed = 0;
    for outcome in &outcomes {
        match outcome {
            Some(Outcome::Warmed(n)) => {
                warmed += 1;
                gained += n;
            }
            Some(Outcome::Failed(_)) => failed += 1,
            Some(Outcome::Interrupted) | None => {}
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let rate = gained as f64 / elapsed.as_secs_f64().max(0.001);
    let head = if interrupted { "interrupted: " } else { "" };
    println!(
        "{head}warmed {} of {}: {} bytes ({}) brought into the cache in {:.1} s ({}/s)",
        warmed,
        files(todo.len()),
        count(gained),
        bytes(gained as f64),
        elapsed.as_secs_f64(),
        bytes(rate)
    );
    let net: Option<u64> =
        scan.mounts.iter().map(|m| Some(net_bytes(&m.root)?.saturating_sub(m.net_before?))).sum::<Option<u64>>();
    if let Some(net) = net {
        println!(
            "the mount received {} bytes ({}) of file data from the network meanwhile (all its readers; see 'mastfs stats')",
            count(net),
            bytes(net as f64)
        );
    }
    if interrupted {
        println!("run the same command again to fetch the rest");
    }
    // Each failure was named as it happened; the count closes the run.
    let all_failures = scan.failures.len() + failed;
    if all_failures > 0 {
        eprintln!("mastfs warm: {} could not be warmed", files(all_failures));
    }
    Ok(if interrupted {
        ExitCode::from(INTERRUPTED)
    } else if all_failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// "1 file", "3 files".
fn files(n: usize) -> String {
    if n == 1 { "1 file".into() } else { format!("{} files", count(n as u64)) }
}

/// Why the request cannot be warmed, per mount: no disk cache, a failing one, or one too
/// small for all the files asked for (they would evict each other: warming in circles).
fn refusals(scan: &Scan) -> Vec<String> {
    let mut need: HashMap<usize, u64> = HashMap::new();
    for f in &scan.files {
        *need.entry(f.mount).or_default() += footprint(f.size);
    }
    let mut out = Vec::new();
    for (i, m) in scan.mounts.iter().enumerate() {
        let Some(&need) = need.get(&i) else { continue };
        let root = m.root.display();
        if m.capacity == 0 {
            out.push(format!("{root} is mounted without a disk cache (--cache-size 0): there is nowhere to warm into"));
        } else if need > m.capacity {
            out.push(format!(
                "the cache of {root} is too small for this request: the files need {} ({} bytes) in the cache, \
                 which holds at most {} ({} bytes); warm fewer files, or mount with a larger --cache-size",
                bytes(need as f64),
                count(need),
                bytes(m.capacity as f64),
                count(m.capacity)
            ));
        } else if !m.writable {
            out.push(format!(
                "the disk cache of {root} cannot be written just now (full or read-only disk: see the mount's log); \
                 try again later"
            ));
        }
    }
    out
}

// ------------------------------------------------------------------ finding the files

/// The mastfs mount `path` lies in, added to `mounts` if new.
fn mount_of(path: &Path, mounts: &mut Vec<MountSeen>) -> Result<usize, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
    if let Some(i) = mounts.iter().position(|m| m.dev == meta.dev()) {
        return Ok(i);
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
    let mut root = canonical.as_path();
    while let Some(parent) = root.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == meta.dev() => root = parent,
            _ => break,
        }
    }
    // Only a mastfs mount has this file at its root (hidden from listings).
    if !root.join(STATS_NAME).is_file() {
        return Err(format!("{} is not inside a mastfs mount", path.display()));
    }
    mounts.push(MountSeen { root: root.to_path_buf(), dev: meta.dev(), capacity: 0, writable: true, net_before: None });
    Ok(mounts.len() - 1)
}

/// A PATH as given: a file, or a directory walked whole (a link given by name is followed).
fn walk_top(path: &Path, mount: usize, keep: bool, scan: &mut Scan, stop: &AtomicBool) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => walk(path, mount, keep, scan, stop),
        Ok(m) if m.is_file() => add(path, mount, keep, scan),
        Ok(_) => scan.failures.push((path.to_path_buf(), "not a file or directory".into())),
        Err(e) => scan.failures.push((path.to_path_buf(), describe(&e))),
    }
}

fn walk(dir: &Path, mount: usize, keep: bool, scan: &mut Scan, stop: &AtomicBool) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    let mut entries = match entries {
        Ok(e) => e,
        Err(e) => return scan.failures.push((dir.to_path_buf(), describe(&e))),
    };
    // In name order, so that runs and their output are repeatable.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, mount, keep, scan, stop),
            Ok(t) if t.is_file() => add(&path, mount, keep, scan),
            // Links may lead out of the mount or in circles; what they point to inside the
            // mount is warmed when its own directory is.
            Ok(_) => {}
            Err(e) => scan.failures.push((path, describe(&e))),
        }
    }
}

fn add(path: &Path, mount: usize, keep: bool, scan: &mut Scan) {
    let answer = File::open(path).and_then(|f| Ok((f.metadata()?, cachectl::ask(f.as_fd(), keep)?)));
    match answer {
        Ok((meta, _)) if !scan.seen.insert((meta.dev(), meta.ino())) => {}
        Ok((_, a)) => {
            if let Some(m) = scan.mounts.get_mut(mount) {
                m.capacity = a.capacity;
                m.writable = a.writable;
            }
            scan.files.push(Found { path: path.to_path_buf(), size: a.size, on_disk: a.on_disk, mount });
            scan.note();
        }
        Err(e) => scan.failures.push((path.to_path_buf(), describe(&e))),
    }
}

impl Scan {
    /// Tells how many files the walk has found, at most every `BAR_EVERY` on a terminal
    /// (redrawn in place) or every `LINE_EVERY` otherwise.
    fn note(&mut self) {
        let every = if self.tty { BAR_EVERY } else { LINE_EVERY };
        if self.noted.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.noted = Some(Instant::now());
        let total: u64 = self.files.iter().map(|f| f.size).sum();
        let line = format!("warm: looking at the files: {} so far, {}", files(self.files.len()), bytes(total as f64));
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

// ------------------------------------------------------------------ fetching

/// Warms `todo` with `jobs` workers; an outcome per file, None for files never started.
fn fetch(todo: &[&Found], jobs: u16, progress: &Progress, stop: &AtomicBool) -> Vec<Option<Outcome>> {
    let outcomes: Vec<Mutex<Option<Outcome>>> = todo.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        let drawer = s.spawn(|| draw(progress, &finished, stop));
        let workers: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = todo.get(i) else { break };
                        let outcome = warm_file(f, progress, stop);
                        if let Outcome::Failed(why) = &outcome {
                            progress.say(&format!("mastfs warm: {}: {why}", f.path.display()));
                        }
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        *outcomes[i].lock() = Some(outcome);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::Relaxed);
        let _ = drawer.join();
    });
    outcomes.into_iter().map(Mutex::into_inner).collect()
}

/// Reads `f` to its end through the mount, then waits until the daemon has it all on disk.
fn warm_file(f: &Found, progress: &Progress, stop: &AtomicBool) -> Outcome {
    let mut file = match open_direct(&f.path) {
        Ok(file) => file,
        Err(e) => return Outcome::Failed(describe(&e)),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut direct = true;
    let mut at = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Outcome::Interrupted;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                at += n as u64;
                progress.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A kernel that refuses direct reads on this file: read through the page cache.
            Err(e) if direct && at == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                file = match File::open(&f.path) {
                    Ok(file) => file,
                    Err(e) => return Outcome::Failed(describe(&e)),
                };
            }
            Err(e) => return Outcome::Failed(describe(&e)),
        }
    }
    settle(&file, f, stop)
}

fn open_direct(path: &Path) -> io::Result<File> {
    match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => File::open(path),
        other => other,
    }
}

/// Waits until the daemon has every byte of the read file on disk, as long as more of it
/// keeps arriving there.
fn settle(file: &File, f: &Found, stop: &AtomicBool) -> Outcome {
    let mut best = 0u64;
    let mut since = Instant::now();
    loop {
        let a: Answer = match cachectl::ask(file.as_fd(), false) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(describe(&e)),
        };
        if a.on_disk >= a.size {
            return Outcome::Warmed(a.size.saturating_sub(f.on_disk));
        }
        if stop.load(Ordering::Relaxed) {
            return Outcome::Interrupted;
        }
        if a.on_disk > best {
            best = a.on_disk;
            since = Instant::now();
        }
        if since.elapsed() >= SETTLE {
            let why = if a.writable {
                "the disk cache evicted part of it (other files fill it) or could not store it"
            } else {
                "the disk cache cannot be written just now (full or read-only disk: see the mount's log)"
            };
            return Outcome::Failed(format!(
                "read whole, but only {} of its {} bytes are in the cache: {why}",
                count(a.on_disk),
                count(a.size)
            ));
        }
        std::thread::sleep(POLL);
    }
}

// ------------------------------------------------------------------ telling the user

impl Progress {
    /// Writes a message line on stderr, above the bar on a terminal.
    fn say(&self, line: &str) {
        let _guard = self.out.lock();
        let mut err = io::stderr().lock();
        let clear = if self.tty { "\r\x1b[K" } else { "" };
        let _ = writeln!(err, "{clear}{line}");
    }

    fn line(&self, bar: bool) -> String {
        let done = self.read_bytes.load(Ordering::Relaxed).min(self.total_bytes);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 && done < self.total_bytes {
            clock((self.total_bytes - done) as f64 / rate)
        } else {
            "-".into()
        };
        let share = if self.total_bytes == 0 { 1.0 } else { done as f64 / self.total_bytes as f64 };
        let files_done = self.files_done.load(Ordering::Relaxed);
        let (done, total, rate) = (bytes(done as f64), bytes(self.total_bytes as f64), bytes(rate));
        let files = format!("{files_done}/{} files", self.total_files);
        if bar {
            let filled = ((share * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
            format!("warm [{bar}] {:>3.0}%  {done} / {total}  {rate}/s  ETA {eta}  {files}", share * 100.0)
        } else {
            format!("warm: {done} of {total} read ({:.0}%), {rate}/s, ETA {eta}, {files}", share * 100.0)
        }
    }
}

/// Redraws the bar (terminal) or prints a line now and then, until the workers are done.
fn draw(progress: &Progress, finished: &AtomicBool, stop: &AtomicBool) {
    let every = if progress.tty { BAR_EVERY } else { LINE_EVERY };
    let mut last = Instant::now();
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        if last.elapsed() < every || stop.load(Ordering::Relaxed) {
            continue;
        }
        last = Instant::now();
        let _guard = progress.out.lock();
        let mut err = io::stderr().lock();
        let _ = if progress.tty {
            write!(err, "\r\x1b[K{}", progress.line(true)).and_then(|()| err.flush())
        } else {
            writeln!(err, "{}", progress.line(false))
        };
    }
    if progress.tty {
        let _guard = progress.out.lock();
        let _ = write!(io::stderr().lock(), "\r\x1b[K");
    }
}

/// `75.4` -> `1:15`, `3725` -> `1:02:05`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn stderr_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The mount's `net_bytes` counter.
fn net_bytes(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join(STATS_NAME)).ok()?;
    crate::stats_view::parse(&text).into_iter().find(|(n, _)| n == "net_bytes").map(|(_, v)| v)
}

/// An error as people read it: "Permission denied", without "(os error 13)". A file that
/// is not on a mastfs mount says so.
fn describe(e: &io::Error) -> String {
    if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::ENOSYS)) {
        return "not a file of a mastfs mount (it does not answer mastfs's cache query)".into();
    }
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(total_bytes: u64, read: u64) -> Progress {
        Progress {
            started: Instant::now() - Duration::from_secs(10),
            total_bytes,
            total_files: 4,
            read_bytes: AtomicU64::new(read),
            files_done: AtomicUsize::new(1),
            tty: false,
            out: Mutex::new(()),
        }
    }

    #[test]
    fn the_bar_shows_share_bytes_rate_eta_and_files() {
        let p = progress(100 << 20, 25 << 20);
        let bar = p.line(true);
        assert!(bar.starts_with("warm [######------------------]  25%  25.0 MiB / 100.0 MiB  2.5 MiB/s"), "{bar}");
        assert!(bar.ends_with("ETA 0:30  1/4 files"), "{bar}");
        assert_eq!(p.line(false), "warm: 25.0 MiB of 100.0 MiB read (25%), 2.5 MiB/s, ETA 0:30, 1/4 files");
    }

    #[test]
    fn nothing_to_read_is_complete_and_has_no_eta() {
        assert!(progress(0, 0).line(false).contains("(100%), 0 B/s, ETA -"));
    }

    #[test]
    fn clock_times_have_hours_only_when_needed() {
        assert_eq!(clock(75.4), "1:15");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(0.2), "0:00");
    }

    #[test]
    fn a_request_larger_than_the_cache_is_refused_naming_both_sizes() {
        let mount =
            |capacity| MountSeen { root: PathBuf::from("/m"), dev: 1, capacity, writable: true, net_before: None };
        let file = |size| Found { path: PathBuf::from("/m/f"), size, on_disk: 0, mount: 0 };
        let fits = Scan { files: vec![file(3 << 20)], mounts: vec![mount(4 << 20)], ..Scan::default() };
        assert!(refusals(&fits).is_empty());
        let big = Scan { files: vec![file(5 << 20)], mounts: vec![mount(4 << 20)], ..Scan::default() };
        let why = refusals(&big).join("\n");
        assert!(
            why.contains("too small") && why.contains("5,243,280 bytes") && why.contains("4,194,304 bytes"),
            "{why}"
        );
        let none = Scan { files: vec![file(1)], mounts: vec![mount(0)], ..Scan::default() };
        assert!(refusals(&none).join("").contains("without a disk cache"));
    }

    #[test]
    fn errors_read_without_their_number() {
        assert_eq!(describe(&io::Error::from_raw_os_error(libc::EACCES)), "Permission denied");
        assert!(describe(&io::Error::from_raw_os_error(libc::ENOTTY)).contains("not a file of a mastfs mount"));
    }
}
