//! `mastfs cache du|clear|verify`, end to end: a real vsftpd over TLS, a real mount, and the
//! commands run beside it on the cache the mount is using. What `du` reports is what the mount
//! cached, per host and remote directory, to the byte; `clear` removes exactly what it was
//! asked to, and the mount then fetches those files again from the server (and only those)
//! with the same bytes; `verify` finds a block damaged on disk, removes it, and the mount
//! fetches the right bytes again. No read through the mount fails while this happens.

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Bytes a block file adds to the bytes it caches: the header and one extent entry.
const BLOCK_OVERHEAD: u64 = 68 + 12;
/// More than the mount keeps in memory (64 blocks of 1 MiB): reading it pushes every block
/// read before out of memory, so the next read of those goes to the disk cache (or the server).
const FILLER_SIZE: u64 = 80 * MIB;

/// `data/a.bin`, `data/b.bin` and `data/sub/c.txt` (cleared by path), `other/d.bin` (damaged
/// on disk, then verified), `other/e.bin` (never touched: always served by the disk cache),
/// `filler/big.bin` (pushes the others out of the mount's memory).
fn fill(root: &Path) {
    write_pattern_file(&root.join("data/a.bin"), 1, 2 * MIB + 5);
    write_pattern_file(&root.join("data/b.bin"), 2, MIB + 3);
    write_file(&root.join("data/sub/c.txt"), b"cleared with its directory\n");
    write_pattern_file(&root.join("other/d.bin"), 3, 70_000);
    write_pattern_file(&root.join("other/e.bin"), 4, MIB + 77);
    write_pattern_file(&root.join("filler/big.bin"), 5, FILLER_SIZE);
}

/// Bytes of the block files holding the whole of a file of `size` bytes.
fn cached_size(size: u64) -> u64 {
    size + size.div_ceil(MIB) * BLOCK_OVERHEAD
}

fn blocks_of(size: u64) -> u64 {
    size.div_ceil(MIB)
}

/// `mastfs cache ARGS --cache-dir DIR`.
fn cache_cmd(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mastfs"));
    cmd.arg("cache").args(args).arg("--cache-dir").arg(dir);
    run(&mut cmd, Duration::from_secs(60))
}

fn json_of(out: &Output, what: &str) -> Value {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}\n{}", stderr_of(out)))
}

fn du(dir: &Path) -> Value {
    let out = cache_cmd(dir, &["du", "--json"]);
    assert!(out.status.success(), "du: {}", stderr_of(&out));
    json_of(&out, "du")
}

fn clear(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["clear", "--json"];
    all.extend_from_slice(args);
    let out = cache_cmd(dir, &all);
    assert!(out.status.success(), "clear {args:?}: {}", stderr_of(&out));
    json_of(&out, "clear")
}

/// The du group of `path` under the only host, or None.
fn group<'a>(du: &'a Value, path: &str) -> Option<&'a Value> {
    du["hosts"][0]["dirs"].as_array()?.iter().find(|d| d["path"] == path)
}

fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// Waits until the mount's cache writer has stored what `done` looks for (it writes behind
/// the reads), then returns that `du`.
fn du_once(dir: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = du(dir);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "the cache never held {what}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `rel` through the mount as a fresh reader would: the kernel's page cache for it is
/// dropped first, so the bytes come from mastfs (its memory, its disk cache, or the server).
fn read_cold(m: &Mount, rel: &str) -> Vec<u8> {
    let path = m.path(rel);
    if let Ok(f) = fs::File::open(&path) {
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    m.read(rel)
}

/// RETRs the server logged for `rel` so far.
fn retrs_of(server: &Server, rel: &str) -> usize {
    server.transfers().iter().filter(|t| t.path.ends_with(rel)).count()
}

/// The block files of remote file `path`, found through the identity record each cached
/// file's directory holds.
fn block_files_of(cache: &Path, path: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(cache.join("v2")).expect("block layout").flatten() {
        for file_dir in fs::read_dir(shard.path()).expect("shard").flatten() {
            let id = fs::read(file_dir.path().join("id")).unwrap_or_default();
            let named = id
                .windows(path.len() + 4)
                .any(|w| w[4..] == *path.as_bytes() && w[..4] == (path.len() as u32).to_le_bytes());
            if named {
                out.extend(
                    fs::read_dir(file_dir.path())
                        .expect("file dir")
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "blk")),
                );
            }
        }
    }
    out.sort();
    out
}

/// `1536` -> `1.5 KiB`, as `mastfs cache du` prints sizes.
fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[u]) }
}

#[test]
fn du_clear_and_verify_work_on_the_cache_of_a_live_mount() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    fill(root.path());
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = scratch.path().join("cache");
    let m = Mount::builder(&server).cache_dir(&cache).start();
    let host = format!("127.0.0.1:{}", server.port);

    // Everything read once, every directory listed.
    for dir in ["", "data", "data/sub", "other"] {
        fs::read_dir(m.path(dir)).expect("ls").for_each(drop);
    }
    assert!(m.read("data/a.bin") == pattern_bytes(1, 0, (2 * MIB + 5) as usize));
    assert!(m.read("data/b.bin") == pattern_bytes(2, 0, (MIB + 3) as usize));
    assert_eq!(m.read("data/sub/c.txt"), b"cleared with its directory\n");
    assert!(m.read("other/d.bin") == pattern_bytes(3, 0, 70_000));
    assert!(m.read("other/e.bin") == pattern_bytes(4, 0, (MIB + 77) as usize));

    // du: per host and top directory, to the byte.
    let data_bytes = cached_size(2 * MIB + 5) + cached_size(MIB + 3);
    let other_bytes = cached_size(70_000) + cached_size(MIB + 77);
    let v = du_once(&cache, "the five files", |v| {
        group(v, "/data").is_some_and(|g| g["block_bytes"] == data_bytes)
            && group(v, "/data/sub").is_some_and(|g| g["blocks"] == 1)
            && group(v, "/other").is_some_and(|g| g["block_bytes"] == other_bytes)
    });
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{v:#}");
    assert_eq!(hosts[0]["server"], host.as_str());
    assert_eq!(hosts[0]["user"], "anonymous");
    let data = group(&v, "/data").expect("/data");
    assert_eq!((n(data, "files"), n(data, "blocks"), n(data, "listings")), (2, 5, 1), "{data}");
    let sub = group(&v, "/data/sub").expect("/data/sub");
    assert_eq!((n(sub, "files"), n(sub, "block_bytes"), n(sub, "listings")), (1, cached_size(27), 1));
    let other = group(&v, "/other").expect("/other");
    assert_eq!((n(other, "files"), n(other, "blocks"), n(other, "listings")), (2, 3, 1), "{other}");
    let top = group(&v, "/").expect("the root's listing");
    assert_eq!((n(top, "files"), n(top, "listings")), (0, 1), "{top}");
    assert_eq!(n(&v, "block_bytes"), data_bytes + cached_size(27) + other_bytes);
    assert_eq!(n(&v["unknown"], "blocks") + n(&v["unknown"], "listings"), 0);
    let listing_bytes = n(&v, "listing_bytes");
    assert_eq!(n(&v, "listings"), 4);
    assert_eq!(n(&v, "bytes"), n(&v, "block_bytes") + listing_bytes);

    // The human form says the same.
    let out = cache_cmd(&cache, &["du"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "du: {}", stderr_of(&out));
    assert!(
        text.lines().any(|l| l.ends_with(&format!("{host} anonymous")) && l.contains(&human(n(&v, "bytes")))),
        "{text}"
    );
    assert!(text.lines().any(|l| l.ends_with("  /data") && l.contains(&human(n(data, "bytes")))), "{text}");
    assert!(text.contains(&format!("{} in 9 blocks of 5 files and 4 listings", human(n(&v, "bytes")))), "{text}");
    let v1 = json_of(&cache_cmd(&cache, &["du", "--json", "--depth", "1"]), "du --depth 1");
    assert_eq!(n(group(&v1, "/data").expect("/data at depth 1"), "files"), 3, "{v1:#}");

    // Out of the mount's memory, so that later reads of the others show where bytes come from.
    assert!(m.read("filler/big.bin").len() as u64 == FILLER_SIZE);
    let v = du_once(&cache, "the filler", |v| {
        v["hosts"][0]["dirs"]
            .as_array()
            .is_some_and(|d| d.iter().any(|g| g["path"] == "/filler" && g["block_bytes"] == cached_size(FILLER_SIZE)))
    });

    // Another host's clear removes nothing of this one.
    for other_host in ["127.0.0.2", "127.0.0.1:1"] {
        let r = clear(&cache, &["--host", other_host]);
        assert_eq!((n(&r, "blocks"), n(&r, "listings"), n(&r, "bytes")), (0, 0, 0), "--host {other_host}: {r}");
    }
    // Nor does a path nothing is cached under, or one that only shares a prefix.
    let r = clear(&cache, &["/dat"]);
    assert_eq!((n(&r, "blocks"), n(&r, "listings")), (0, 0), "{r}");

    // A path under the mount point is not a server path: refused, with the one it likely means.
    let local = m.path("data").to_string_lossy().into_owned();
    let out = cache_cmd(&cache, &["clear", &local]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr_of(&out).contains("mastfs cache clear --host 127.0.0.1 /data"), "{}", stderr_of(&out));

    // A dry run says what a clear would do and does nothing.
    let r = clear(&cache, &["--dry-run", "--host", "127.0.0.1", "/data"]);
    assert_eq!((n(&r, "files"), n(&r, "blocks"), n(&r, "listings")), (3, 6, 2), "{r}");
    assert_eq!(du(&cache), v);

    // Clear /data while mounted: exactly its three files and two listings go.
    let r = clear(&cache, &["--host", "127.0.0.1", "/data/"]);
    assert_eq!((n(&r, "files"), n(&r, "blocks"), n(&r, "block_bytes")), (3, 6, data_bytes + cached_size(27)), "{r}");
    assert_eq!(n(&r, "listings"), 2, "{r}");
    let after = du(&cache);
    assert!(group(&after, "/data").is_none() && group(&after, "/data/sub").is_none(), "{after:#}");
    assert_eq!(n(group(&after, "/other").expect("/other stays"), "block_bytes"), other_bytes);
    assert_eq!(n(&after, "block_bytes"), n(&v, "block_bytes") - n(&r, "block_bytes"));
    assert_eq!(n(&after, "listings"), n(&v, "listings") - 2);
    let listings_left = n(&after, "listings");

    // Damage one block of other/d.bin on disk; verify finds it, removes it, and exits 1.
    let d_blocks = block_files_of(&cache, "/other/d.bin");
    assert_eq!(d_blocks.len(), 1, "{d_blocks:?}");
    let mut bytes = fs::read(&d_blocks[0]).expect("block file");
    bytes[(BLOCK_OVERHEAD + 1000) as usize] ^= 0x01;
    fs::write(&d_blocks[0], &bytes).expect("damage it");
    let out = cache_cmd(&cache, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "damage found: {}", stderr_of(&out));
    let checked = json_of(&out, "verify");
    let total_blocks = 3 + blocks_of(FILLER_SIZE);
    assert_eq!(
        (n(&checked, "blocks"), n(&checked, "good_blocks"), n(&checked, "removed_blocks")),
        (total_blocks, total_blocks - 1, 1),
        "{checked:#}"
    );
    assert_eq!(n(&checked, "removed_block_bytes"), cached_size(70_000));
    assert_eq!((n(&checked, "listings"), n(&checked, "removed_listings")), (listings_left, 0), "{checked:#}");
    let problem = checked["problems"][0].as_str().unwrap_or_default().to_string();
    assert!(problem.contains("/other/d.bin") && problem.contains("checksum"), "{problem}");
    assert!(!d_blocks[0].exists());
    // Nothing is left to find, and the human form says so.
    let out = cache_cmd(&cache, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("Good: {} blocks, {listings_left} listings", total_blocks - 1)), "{text}");
    assert!(text.contains("Removed: 0 damaged blocks"), "{text}");

    // Through the mount, the same bytes: the cleared and the damaged file from the server
    // again, the untouched one from the disk cache.
    // The mount's own count of bytes off the network says where each read came from at once;
    // the server's log (written as its sessions end) confirms it at the end.
    let net = || stat_value(&m, "net_bytes");
    let at_start = net();
    assert!(read_cold(&m, "data/a.bin") == pattern_bytes(1, 0, (2 * MIB + 5) as usize));
    let after_a = net();
    assert!(after_a - at_start >= 2 * MIB + 5, "a.bin came from the server again: {}", after_a - at_start);
    assert!(read_cold(&m, "other/d.bin") == pattern_bytes(3, 0, 70_000));
    let after_d = net();
    assert!(after_d - after_a >= 70_000, "d.bin came from the server again: {}", after_d - after_a);
    assert!(read_cold(&m, "other/e.bin") == pattern_bytes(4, 0, (MIB + 77) as usize));
    assert_eq!(net(), after_d, "e.bin came from the disk cache");
    assert_eq!(fs::read_dir(m.path("data")).expect("ls data").count(), 3);
    // And the cache holds the refetched files again.
    du_once(&cache, "a.bin again", |v| group(v, "/data").is_some_and(|g| g["block_bytes"] == cached_size(2 * MIB + 5)));

    // A whole clear empties it, even while mounted, to the byte du counted; the mount goes on
    // reading right (b.bin, out of its memory since the filler, from the server).
    let full = du_once(&cache, "d.bin again", |v| group(v, "/other").is_some_and(|g| g["block_bytes"] == other_bytes));
    let r = clear(&cache, &[]);
    assert_eq!(
        (n(&r, "blocks"), n(&r, "listings"), n(&r, "bytes")),
        (n(&full, "blocks"), n(&full, "listings"), n(&full, "bytes")),
        "{r}"
    );
    let empty = du(&cache);
    assert_eq!((n(&empty, "blocks"), n(&empty, "listings"), n(&empty, "bytes")), (0, 0, 0), "{empty:#}");
    let before_b = net();
    assert!(read_cold(&m, "data/b.bin") == pattern_bytes(2, 0, (MIB + 3) as usize));
    assert!(net() - before_b >= MIB + 3, "b.bin came from the server");
    drop(m);
    server.wait_for_sessions_to_end(Duration::from_secs(30));
    let sent = |rel: &str| server.transfers().iter().filter(|t| t.path.ends_with(rel)).map(|t| t.bytes).sum::<u64>();
    assert!(sent("data/a.bin") >= 2 * (2 * MIB + 5), "a.bin was sent twice: {}", sent("data/a.bin"));
    assert!(sent("other/d.bin") >= 2 * 70_000, "d.bin was sent twice: {}", sent("other/d.bin"));
    assert!(sent("other/e.bin") < 2 * (MIB + 77), "e.bin was sent once, before the clears: {}", sent("other/e.bin"));
    assert_eq!(
        fs::metadata(&cache).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).ok(),
        Some(0o700)
    );
}

#[test]
fn blocks_cached_before_identities_were_recorded_are_unknown_and_go_with_a_whole_clear() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    write_pattern_file(&root.path().join("x/old.bin"), 9, 3000);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = scratch.path().join("cache");
    let m = Mount::builder(&server).cache_dir(&cache).start();
    assert!(m.read("x/old.bin") == pattern_bytes(9, 0, 3000));
    du_once(&cache, "old.bin", |v| group(v, "/x").is_some_and(|g| g["blocks"] == 1));
    drop(m);
    // As an earlier mastfs left it: the block, and no identity record.
    let blocks = block_files_of(&cache, "/x/old.bin");
    assert_eq!(blocks.len(), 1);
    fs::remove_file(blocks[0].with_file_name("id")).expect("remove the identity");

    let v = du(&cache);
    assert_eq!((n(&v["unknown"], "blocks"), n(&v["unknown"], "block_bytes")), (1, cached_size(3000)), "{v:#}");
    let text = String::from_utf8_lossy(&cache_cmd(&cache, &["du"]).stdout).into_owned();
    assert!(text.contains("unknown"), "{text}");
    // Only a whole clear can tell it is selected.
    let r = clear(&cache, &["--host", "127.0.0.1"]);
    assert_eq!(n(&r, "blocks"), 0, "{r}");
    let r = clear(&cache, &[]);
    assert_eq!((n(&r, "blocks"), n(&r, "block_bytes")), (1, cached_size(3000)), "{r}");
    assert!(!blocks[0].exists());
}

#[test]
fn reads_racing_clears_and_verifies_always_get_the_right_bytes() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    const FILES: u64 = 6;
    const SIZE: u64 = 16 * MIB + 11;
    let root = new_root();
    for i in 0..FILES {
        write_pattern_file(&root.path().join(format!("race/f{i}.bin")), 20 + i, SIZE);
    }
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = scratch.path().join("cache");
    let m = Mount::builder(&server).cache_dir(&cache).start();

    // 96 MiB per pass is more than the mount's memory: each pass reads from the disk cache what
    // the clears left and from the server the rest, while files vanish under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clearer = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let args: &[&str] = match rounds % 3 {
                    0 => &["clear", "/race/f1.bin"],
                    1 => &["verify"],
                    _ => &["clear"],
                };
                let out = cache_cmd(&cache, args);
                assert!(out.status.code() == Some(0), "{args:?} while reading: {}", stderr_of(&out));
                rounds += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            rounds
        })
    };
    for pass in 0..3 {
        for i in 0..FILES {
            let rel = format!("race/f{i}.bin");
            let got = read_cold(&m, &rel);
            assert!(got == pattern_bytes(20 + i, 0, SIZE as usize), "pass {pass}: wrong bytes in {rel}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = clearer.join().expect("the clearing thread");
    assert!(rounds >= 3, "the commands ran alongside the reads ({rounds} rounds)");
    // A cache write that lost a race with a clear is retried, not taken for a failing disk
    // (which would turn the cache off for a while).
    assert_eq!(stat_value(&m, "cache_write_errors"), 0);
    assert_eq!(stat_value(&m, "read_errors"), 0);
    let stderr = m.unmount();
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn two_servers_share_one_cache_and_clear_host_port_removes_only_one() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (root1, root2) = (new_root(), new_root());
    write_pattern_file(&root1.path().join("pub/one.bin"), 31, MIB + 1);
    write_pattern_file(&root2.path().join("pub/two.bin"), 32, 2 * MIB + 2);
    let one = Server::builder(Kind::Vsftpd).root(root1.path()).start();
    let two = Server::builder(Kind::Vsftpd).root(root2.path()).start();
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = scratch.path().join("cache");
    let m1 = Mount::builder(&one).cache_dir(&cache).start();
    let m2 = Mount::builder(&two).cache_dir(&cache).start();
    assert!(m1.read("pub/one.bin") == pattern_bytes(31, 0, (MIB + 1) as usize));
    assert!(m2.read("pub/two.bin") == pattern_bytes(32, 0, (2 * MIB + 2) as usize));
    let (host1, host2) = (format!("127.0.0.1:{}", one.port), format!("127.0.0.1:{}", two.port));
    let block_bytes_of = |v: &Value, host: &str| {
        v["hosts"].as_array().and_then(|h| h.iter().find(|h| h["server"] == host)).map(|h| n(h, "block_bytes"))
    };
    let v = du_once(&cache, "both files", |v| {
        block_bytes_of(v, &host1) == Some(cached_size(MIB + 1))
            && block_bytes_of(v, &host2) == Some(cached_size(2 * MIB + 2))
    });
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(2), "{v:#}");

    // host:port picks one of two servers on the same address.
    let r = clear(&cache, &["--host", &host2]);
    assert_eq!((n(&r, "files"), n(&r, "blocks"), n(&r, "block_bytes")), (1, 3, cached_size(2 * MIB + 2)), "{r}");
    let after = du(&cache);
    assert_eq!(block_bytes_of(&after, &host1), Some(cached_size(MIB + 1)), "{after:#}");
    assert_eq!(block_bytes_of(&after, &host2), None, "{after:#}");
    // Remounted, both read right; only the cleared one's server sends its file again. (A
    // forking server logs a transfer when its session ends: counted once the mounts are gone.)
    let settled = |m1: Mount, m2: Mount| {
        drop((m1, m2));
        one.wait_for_sessions_to_end(Duration::from_secs(30));
        two.wait_for_sessions_to_end(Duration::from_secs(30));
        (retrs_of(&one, "pub/one.bin"), retrs_of(&two, "pub/two.bin"))
    };
    let before = settled(m1, m2);
    let m1 = Mount::builder(&one).cache_dir(&cache).start();
    let m2 = Mount::builder(&two).cache_dir(&cache).start();
    assert!(m1.read("pub/one.bin") == pattern_bytes(31, 0, (MIB + 1) as usize));
    assert!(m2.read("pub/two.bin") == pattern_bytes(32, 0, (2 * MIB + 2) as usize));
    let after = settled(m1, m2);
    assert_eq!(after.0, before.0, "one.bin still came from the cache");
    assert!(after.1 > before.1, "two.bin came from its server again");
}
