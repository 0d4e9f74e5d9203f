//! `mastfs warm`, end to end: a real vsftpd over TLS, a real FUSE mount, the real command.
//! After a warm, reading the warmed files moves 0 bytes from the server (its transfer log
//! and the mount's counters say so), also after a remount, and an offline mount serves them;
//! a dry run and a repeated warm
//! fetch nothing; Ctrl-C stops a warm at once and the next run fetches only what is missing;
//! a file the server refuses fails alone, by name; a request larger than the cache, or a path
//! outside any mastfs mount, is refused before anything is fetched.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;

const MIB: u64 = 1 << 20;
/// Far beyond any legitimate run of one command here: reaching it is a hang.
const HANG: Duration = Duration::from_secs(120);

/// The files of `tree/` (path, pattern seed, size): a multi-MiB file, small ones, a 0-byte
/// one, nested directories. `other/` is never warmed.
const TREE: [(&str, u64, u64); 5] = [
    ("tree/big.bin", 1, 6 * MIB + 123),
    ("tree/small.txt", 2, 70_000),
    ("tree/empty", 3, 0),
    ("tree/sub/deeper/c.bin", 4, MIB + 1),
    ("tree/sub/d.txt", 5, 6),
];

fn fill(root: &Path) {
    for (rel, seed, size) in TREE {
        write_pattern_file(&root.join(rel), seed, size);
    }
    write_pattern_file(&root.join("other/outside.bin"), 9, 200_000);
}

fn tree_bytes() -> u64 {
    TREE.iter().map(|t| t.2).sum()
}

/// A vsftpd serving `fill`ed root, after `extra` has changed it.
fn serve(extra: impl FnOnce(&Path)) -> (tempfile::TempDir, Server) {
    let root = new_root();
    fill(root.path());
    extra(root.path());
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    (root, server)
}

/// `mastfs warm ARGS` under the deadline.
fn warm(args: &[&str], paths: &[&Path]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_mastfs")).arg("warm").args(args).args(paths), HANG)
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `1234567` -> `1,234,567`, as mastfs prints byte counts.
fn commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn files(n: u64) -> String {
    if n == 1 { "1 file".into() } else { format!("{n} files") }
}

/// Asserts the line a warm (or a dry run) starts with: files and bytes to fetch, files and
/// bytes already cached.
fn assert_plan(out: &str, to_fetch: u64, missing: u64, cached: u64, cached_bytes: u64) {
    let head = format!("{} to fetch, {} bytes (", files(to_fetch), commas(missing));
    let tail = format!("; {} already cached ({} bytes)", files(cached), commas(cached_bytes));
    let line = out.lines().find(|l| l.contains(" to fetch, ")).unwrap_or_else(|| panic!("no plan line in:\n{out}"));
    assert!(line.starts_with(&head) && line.ends_with(&tail), "want {head}...{tail}, got {line:?}");
}

/// What the server has sent so far, once its log has stopped growing (transfers a warm
/// closed early are logged when their abort completes).
fn settled_transfers(server: &Server) -> Vec<Transfer> {
    let mut last = server.transfers();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server.transfers();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Reads every file of the tree through the mount and checks its bytes.
fn read_tree_exactly(mount: &Mount) {
    for (rel, seed, size) in TREE {
        let got = mount.read(rel);
        assert_eq!(got.len() as u64, size, "{rel}: length");
        assert!(got == pattern_bytes(seed, 0, size as usize), "{rel}: bytes differ from the server's");
    }
}

#[test]
fn after_a_warm_the_tree_reads_byte_exact_with_0_bytes_from_the_server_also_after_a_remount_and_offline() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(|_| {});
    let cache = tempfile::tempdir().expect("cache dir");
    let mount = Mount::builder(&server).cache_dir(cache.path()).start();
    let tree = mount.path("tree");

    let out = warm(&[], &[&tree]);
    let text = stdout_of(&out);
    assert!(out.status.success(), "warm failed: {}\n{text}", stderr_of(&out));
    assert_plan(&text, 4, tree_bytes(), 1, 0);
    assert!(
        text.contains(&format!("warmed 4 of 4 files: {} bytes (", commas(tree_bytes()))),
        "every byte brought into the cache:\n{text}"
    );
    let received = stat_value(&mount, "net_bytes");
    assert!(received >= tree_bytes(), "the mount fetched the tree: {received}");
    assert!(
        text.contains(&format!("the mount received {} bytes (", commas(received))),
        "the summary shows the mount's own count:\n{text}"
    );
    let sent = settled_transfers(&server);
    assert!(sent.iter().all(|t| t.path.contains("/tree/")), "only the tree was fetched: {sent:?}");

    read_tree_exactly(&mount);
    assert_eq!(stat_value(&mount, "net_bytes"), received, "reading the warmed tree moved no file byte");
    assert_eq!(settled_transfers(&server), sent, "no transfer for reading the warmed tree");

    let again = warm(&[], &[&tree]);
    assert!(again.status.success(), "second warm: {}", stderr_of(&again));
    let text = stdout_of(&again);
    assert_plan(&text, 0, 0, 5, tree_bytes());
    assert!(text.contains("warmed 0 of 0 files: 0 bytes (0 B)"), "{text}");
    assert!(text.contains("the mount received 0 bytes (0 B)"), "{text}");
    assert_eq!(settled_transfers(&server), sent, "a second warm fetches nothing");

    mount.unmount();
    let mount = Mount::builder(&server).cache_dir(cache.path()).start();
    let after = warm(&[], &[&mount.path("tree")]);
    assert!(after.status.success(), "warm after a remount: {}", stderr_of(&after));
    assert_plan(&stdout_of(&after), 0, 0, 5, tree_bytes());
    read_tree_exactly(&mount);
    assert_eq!(stat_value(&mount, "net_bytes"), 0, "after a remount the tree comes from the disk cache");
    assert_eq!(stat_value(&mount, "retrs"), 0);
    assert_eq!(settled_transfers(&server), sent, "the server sent nothing after the remount");

    // The walk cached the listings too: an offline mount lists and reads the whole tree.
    mount.unmount();
    let offline = Mount::builder(&server).cache_dir(cache.path()).args(["--offline"]).start();
    let mut listed: Vec<String> = fs::read_dir(offline.path("tree/sub"))
        .expect("ls tree/sub offline")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["d.txt", "deeper"]);
    read_tree_exactly(&offline);
}

#[test]
fn a_dry_run_names_what_is_missing_and_fetches_nothing() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(|_| {});
    let mount = Mount::start(&server);
    // The header of the big file is cached already, as after astropy's getheader.
    assert_eq!(mount.read_range("tree/big.bin", 0, 2880), pattern_bytes(1, 0, 2880));
    // Overlapping PATHs count each file once.
    let paths = [mount.path("tree"), mount.path("other/outside.bin"), mount.path("tree/sub")];
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    // The daemon stores what it fetched a moment after the read returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (out, text) = loop {
        let out = warm(&["--dry-run"], &paths);
        let text = stdout_of(&out);
        if missing_of(&text, "tree/big.bin") < 6 * MIB + 123 || Instant::now() > deadline {
            break (out, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let before = (stat_value(&mount, "net_bytes"), settled_transfers(&server));
    assert!(out.status.success(), "dry run: {}\n{text}", stderr_of(&out));
    let cached_head = 6 * MIB + 123 - missing_of(&text, "tree/big.bin");
    assert!(cached_head >= 2880, "the header read is counted as cached: {cached_head} bytes");
    for (rel, size) in [("tree/small.txt", 70_000), ("tree/sub/deeper/c.bin", MIB + 1), ("other/outside.bin", 200_000)]
    {
        assert_eq!(missing_of(&text, rel), size, "{rel} in:\n{text}");
    }
    assert!(!text.contains("tree/empty"), "a 0-byte file is never missing:\n{text}");
    let missing = tree_bytes() - cached_head + 200_000;
    assert_plan(&text, 5, missing, 1, 0);
    let again = warm(&["--dry-run"], &paths);
    assert_eq!(stdout_of(&again), text, "a dry run changes nothing");
    assert_eq!((stat_value(&mount, "net_bytes"), settled_transfers(&server)), before, "a dry run fetches nothing");
}

/// The bytes a dry run says `rel` is missing.
fn missing_of(dry_run: &str, rel: &str) -> u64 {
    let line = dry_run
        .lines()
        .find(|l| l.starts_with("would fetch") && l.ends_with(&format!("/{rel}")))
        .unwrap_or_else(|| panic!("no line for {rel} in:\n{dry_run}"));
    let number = line.trim_start_matches("would fetch").trim_start().split(' ').next().unwrap_or("");
    number.replace(',', "").parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_file_the_server_refuses_fails_by_name_and_the_others_are_warmed() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(|r| make_unreadable_file(&r.join("tree/sub/secret.fits")));
    let mount = Mount::start(&server);
    let out = warm(&["--jobs", "2"], &[&mount.path("tree")]);
    let (text, err) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "a failed file fails the warm:\n{text}\n{err}");
    assert!(err.contains("tree/sub/secret.fits: Permission denied"), "the refused file is named:\n{err}");
    assert!(err.contains("1 file could not be warmed"), "{err}");
    assert!(text.contains(&format!("warmed 4 of 5 files: {} bytes (", commas(tree_bytes()))), "{text}");

    let received = stat_value(&mount, "net_bytes");
    read_tree_exactly(&mount);
    assert_eq!(stat_value(&mount, "net_bytes"), received, "the other files were warmed whole");
}

#[test]
fn ctrl_c_stops_a_warm_at_once_and_the_next_run_fetches_only_what_is_missing() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    const N: u64 = 6;
    const SIZE: u64 = 4 * MIB;
    let root = new_root();
    for i in 0..N {
        write_pattern_file(&root.path().join(format!("many/f{i}.bin")), 10 + i, SIZE);
    }
    let pasv = Relay::free_pasv_range(16);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = Relay::start(server.port, pasv);
    let mount =
        Mount::builder(&server).no_ca().args(["--insecure", "--connections", "2"]).start_via(&relay.host(), relay.port);
    // A slow link (2 MiB/s in all), so that the warm is surely in the middle of it.
    relay.throttle(Some(MIB));
    let many = mount.path("many");

    let child = Command::new(env!("CARGO_BIN_EXE_mastfs"))
        .args(["warm", "--jobs", "1"])
        .arg(&many)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mastfs warm");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + HANG;
    while relay.stats().bytes_to_client < SIZE + 2 * MIB {
        assert!(Instant::now() < deadline, "the warm did not get going");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling the child this test started, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let signalled = Instant::now();
    let out = finish(child, "mastfs warm (interrupted)", HANG);
    let stopped_in = signalled.elapsed();
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(130), "interrupted: {text}\n{}", stderr_of(&out));
    assert!(stopped_in < Duration::from_secs(5), "stopped promptly: {stopped_in:?}");
    let warmed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("interrupted: warmed "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interrupted summary in:\n{text}"));
    assert!((1..N).contains(&warmed), "some files but not all were warmed: {warmed}\n{text}");
    assert!(text.contains("run the same command again"), "{text}");
    assert!(mount.is_mounted(), "the mount lives on");

    relay.throttle(None);
    let dry = warm(&["--dry-run"], &[&many]);
    let dry_text = stdout_of(&dry);
    let left: Vec<String> = dry_text
        .lines()
        .filter(|l| l.starts_with("would fetch"))
        .filter_map(|l| l.rsplit('/').next().map(str::to_string))
        .collect();
    assert_eq!(left.len() as u64, N - warmed, "exactly the files not warmed are missing:\n{dry_text}");
    let before = settled_transfers(&server);

    let out = warm(&[], &[&many]);
    let text = stdout_of(&out);
    assert!(out.status.success(), "second run: {}\n{text}", stderr_of(&out));
    assert!(text.contains(&format!("warmed {} of {}: ", N - warmed, files(N - warmed))), "{text}");
    assert!(text.contains(&format!("; {} already cached (", files(warmed))), "{text}");
    let after = settled_transfers(&server);
    let new = &after[before.len()..];
    assert!(!new.is_empty(), "the rest was fetched");
    for t in new {
        assert!(
            left.iter().any(|name| t.path.ends_with(&format!("/{name}"))),
            "{} was cached already: {new:?}",
            t.path
        );
    }

    let received = stat_value(&mount, "net_bytes");
    for i in 0..N {
        let got = mount.read(&format!("many/f{i}.bin"));
        assert!(got == pattern_bytes(10 + i, 0, SIZE as usize), "f{i}.bin: bytes differ");
    }
    assert_eq!(stat_value(&mount, "net_bytes"), received, "all of it was warmed");
}

#[test]
fn a_request_larger_than_the_cache_is_refused_before_fetching_anything() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(|_| {});
    // 4 MiB of cache: a sixteenth for listings leaves 3,932,160 bytes for blocks.
    let mount = Mount::builder(&server).args(["--cache-size", "4M"]).start();
    let out = warm(&[], &[&mount.path("tree")]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(err.contains("too small for this request"), "{err}");
    // Each block of a file is stored with an 80-byte header: 7 + 1 + 2 + 1 blocks.
    let need = tree_bytes() + 11 * 80;
    assert!(err.contains(&format!("({} bytes)", commas(need))) && err.contains("(3,932,160 bytes)"), "{err}");
    assert_eq!(stat_value(&mount, "net_bytes"), 0, "nothing fetched");
    assert!(settled_transfers(&server).is_empty());

    // What fits is warmed.
    let small = warm(&[], &[&mount.path("tree/small.txt")]);
    assert!(small.status.success(), "{}", stderr_of(&small));
}

#[test]
fn a_path_outside_any_mastfs_mount_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    fs::write(dir.path().join("f"), b"local").expect("write");
    let out = warm(&[], &[dir.path()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("is not inside a mastfs mount"), "{}", stderr_of(&out));
    let missing = warm(&[], &[&dir.path().join("nope")]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr_of(&missing).contains("nope: No such file or directory"), "{}", stderr_of(&missing));
}
