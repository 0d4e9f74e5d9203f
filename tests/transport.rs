//! The FTPS transport end to end against real servers: vsftpd (strict, `require_ssl_reuse`),
//! pure-ftpd and pyftpdlib. Most tests drive the transport without a mount (`mastfs::probe`)
//! so that each count (round trips, logins, RETRs, early closes) belongs to exactly one
//! operation; the mount tests check the same on a warm mount, and implicit FTPS.
//!
//! Round trips are counted by the client, not timed: each time it waits for the server after
//! sending something. The counts below are what the protocol needs, so they are asserted
//! exactly.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Kind, Mount, Server, make_dirs, new_root, pattern_bytes, require_server, run, write_file, write_pattern_file,
};
use mastfs::probe::{Probe, ProbeIntent, ProbeOptions};

const MIB: u64 = 1 << 20;
const BIG: u64 = 24 * MIB + 12_345;
const HANG: Duration = Duration::from_secs(120);

/// A server of `kind` serving a big file, a small file and a deep tree.
fn serve(kind: Kind) -> (tempfile::TempDir, Server) {
    let root = new_root();
    write_pattern_file(&root.path().join("big.bin"), 1, BIG);
    write_file(&root.path().join("small.txt"), &pattern_bytes(2, 0, 1000));
    make_dirs(&root.path().join("stage/anonymous/anon12345"));
    write_pattern_file(&root.path().join("stage/anonymous/anon12345/x_flt.fits"), 3, 2880 * 3);
    let server = Server::builder(kind).root(root.path()).start();
    (root, server)
}

fn probe(server: &Server, connections: usize) -> Probe {
    // MASTFS_TEST_LOG=debug shows every command and reply of the transport.
    let _ = env_logger::Builder::new().parse_env("MASTFS_TEST_LOG").is_test(true).try_init();
    let opts = ProbeOptions {
        host: server.host.clone(),
        port: server.port,
        ca_file: server.ca_file.clone(),
        implicit: server.implicit,
        epsv: false,
        insecure: false,
        tls12_only: false,
        connections,
        timeout: Duration::from_secs(20),
    };
    let p = Probe::connect(&opts).unwrap_or_else(|e| panic!("{:?}: connect: {e}\n{}", server.kind, server.stderr()));
    settle(&p);
    p
}

/// Waits until every connection is idle and armed again (a wait, not a timing assertion).
fn settle(p: &Probe) {
    assert!(p.settle(Duration::from_secs(30)), "a connection was never made ready again");
}

fn version_of(root: &Path, rel: &str) -> (u64, i64) {
    let meta = std::fs::metadata(root.join(rel)).expect("metadata");
    (meta.len(), meta.mtime())
}

/// Offsets spread over the file, the same on every run.
fn offsets(n: u64, size: u64, span: u64) -> Vec<u64> {
    (0..n).map(|i| (i * 7_919_423 + i * i * 104_729) % (size - span)).collect()
}

fn cold_reads_cost_two_round_trips(kind: Kind) {
    if !require_server(kind) {
        return;
    }
    let (root, server) = serve(kind);
    let p = probe(&server, 2);
    let big = version_of(root.path(), "big.bin");
    for (i, offset) in offsets(4, BIG, 4096).into_iter().enumerate() {
        let before = p.counter("round_trips");
        let got = p.read("/big.bin", offset, 4096, big, ProbeIntent::Peek(4096)).expect("read");
        assert_eq!(got, pattern_bytes(1, offset, 4096), "{kind:?}: 4 KiB at {offset}");
        assert_eq!(
            p.counter("round_trips") - before,
            2,
            "{kind:?}: read {i}: the commands with the data ClientHello, then the TLS finish answered by the data"
        );
        settle(&p);
    }
    let small = version_of(root.path(), "small.txt");
    let before = p.counter("round_trips");
    let got = p.read("/small.txt", 0, 1000, small, ProbeIntent::Run(small.0)).expect("small file");
    assert_eq!(got, pattern_bytes(2, 0, 1000));
    assert_eq!(p.counter("round_trips") - before, 2, "{kind:?}: first KiB of a small file");
    settle(&p);
    // The first read took the only connection, so a spare logged in behind it, off the
    // request path; with two, one reader at a time never takes the last again.
    assert_eq!(p.counter("spares"), 1, "{kind:?}: one spare");
    assert_eq!(p.counter("logins"), 2, "{kind:?}: every read reused a pooled connection");
    assert_eq!(p.counter("stale_arms"), 0);
    assert_eq!(p.counter("reconnects"), 0);
    assert_eq!(p.counter("retrs"), 5);
    assert_eq!(p.counter("aborts"), 4, "{kind:?}: the peeks closed early, the small file ran to its end");
}

#[test]
fn a_cold_read_on_a_pooled_connection_costs_two_round_trips_on_vsftpd() {
    cold_reads_cost_two_round_trips(Kind::Vsftpd);
}

#[test]
fn a_cold_read_on_a_pooled_connection_costs_two_round_trips_on_pure_ftpd() {
    cold_reads_cost_two_round_trips(Kind::PureFtpd);
}

#[test]
fn a_cold_read_on_a_pooled_connection_costs_two_round_trips_on_pyftpdlib() {
    cold_reads_cost_two_round_trips(Kind::Pyftpdlib);
}

fn random_ranged_reads(kind: Kind) {
    if !require_server(kind) {
        return;
    }
    let (root, server) = serve(kind);
    let p = probe(&server, 1);
    let big = version_of(root.path(), "big.bin");
    let mut early = 0;
    let reads = offsets(24, BIG, 3 * MIB);
    for (i, &offset) in reads.iter().enumerate() {
        let (len, intent) = match i % 3 {
            0 => (100, ProbeIntent::Peek(100)),
            1 => (300_000, ProbeIntent::Run(offset + 300_000)),
            // A run to the end of the file, read to its end: no early close.
            _ => ((BIG - offset) as usize, ProbeIntent::Run(BIG)),
        };
        let offset = if i % 3 == 2 { BIG - 2 * MIB - 17 * i as u64 } else { offset };
        let len = if i % 3 == 2 { (BIG - offset) as usize } else { len };
        let got = p.read("/big.bin", offset, len, big, intent).unwrap_or_else(|e| panic!("{kind:?}: read {i}: {e}"));
        assert!(got == pattern_bytes(1, offset, len), "{kind:?}: wrong bytes for {len} at {offset}");
        if i % 3 != 2 {
            early += 1;
        }
        settle(&p);
    }
    assert_eq!(p.counter("retrs"), reads.len() as u64);
    assert_eq!(p.counter("aborts"), early, "{kind:?}: only the reads that stopped short closed early");
    assert_eq!(p.counter("reconnects"), 0, "{kind:?}: every early close left the connection in step");
    assert_eq!(p.counter("logins"), 1);
}

#[test]
fn random_ranged_reads_return_the_right_bytes_and_keep_one_connection_on_vsftpd() {
    random_ranged_reads(Kind::Vsftpd);
}

#[test]
fn random_ranged_reads_return_the_right_bytes_and_keep_one_connection_on_pure_ftpd() {
    random_ranged_reads(Kind::PureFtpd);
}

#[test]
fn random_ranged_reads_return_the_right_bytes_and_keep_one_connection_on_pyftpdlib() {
    random_ranged_reads(Kind::Pyftpdlib);
}

fn deep_stat(kind: Kind) {
    if !require_server(kind) {
        return;
    }
    let (root, server) = serve(kind);
    let p = probe(&server, 1);
    let levels = ["/stage", "/stage/anonymous", "/stage/anonymous/anon12345"];
    for dir in levels {
        let before = p.counter("round_trips");
        let entry = p.stat(dir).expect("stat").unwrap_or_else(|| panic!("{kind:?}: {dir} not found"));
        assert!(entry.is_dir, "{kind:?}: {dir} is a directory: {entry:?}");
        assert_eq!(p.counter("round_trips") - before, 1, "{kind:?}: stat {dir} is one exchange");
    }
    let path = "/stage/anonymous/anon12345/x_flt.fits";
    let before = p.counter("round_trips");
    let entry = p.stat(path).expect("stat").expect("the file exists");
    assert_eq!(p.counter("round_trips") - before, 1, "{kind:?}: stat of the file is one exchange");
    let (size, mtime) = version_of(root.path(), &path[1..]);
    assert!(!entry.is_dir);
    assert_eq!((entry.name.as_str(), entry.size, entry.mtime), ("x_flt.fits", size, mtime), "{kind:?}");
    let before = p.counter("round_trips");
    assert_eq!(p.stat("/stage/nope/x.fits").expect("stat"), None, "{kind:?}: a missing path");
    assert_eq!(p.counter("round_trips") - before, 1);
    assert_eq!(p.counter("listings"), 0, "{kind:?}: no ancestor was listed");
    assert_eq!(p.counter("logins"), 1);
}

#[test]
fn a_deep_path_stat_costs_one_exchange_per_level_and_lists_nothing_on_vsftpd() {
    deep_stat(Kind::Vsftpd);
}

#[test]
fn a_deep_path_stat_costs_one_exchange_per_level_and_lists_nothing_on_pure_ftpd() {
    deep_stat(Kind::PureFtpd);
}

#[test]
fn a_deep_path_stat_costs_one_exchange_per_level_and_lists_nothing_on_pyftpdlib() {
    deep_stat(Kind::Pyftpdlib);
}

fn listing(kind: Kind) {
    if !require_server(kind) {
        return;
    }
    let (_root, server) = serve(kind);
    let p = probe(&server, 1);
    let before = p.counter("round_trips");
    let entries = p.list("/stage/anonymous/anon12345").expect("list");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["x_flt.fits"], "{kind:?}");
    // Commands with ClientHello, TLS finish answered by the listing, and (vsftpd, pure-ftpd)
    // the final 226, which those servers send only once the client closed its side.
    assert!(p.counter("round_trips") - before <= 3, "{kind:?}: {} round trips", p.counter("round_trips") - before);
    settle(&p);
    let err = p.list("/stage/none").expect_err("a missing directory");
    assert!(err.starts_with("Unavailable"), "{kind:?}: {err}");
    settle(&p);
    let stage = p.list("/stage").expect("list");
    assert_eq!(stage.len(), 1, "{kind:?}: the connection is still in step: {stage:?}");
    assert_eq!(p.counter("logins"), 1);
    assert_eq!(p.counter("reconnects"), 0);
}

#[test]
fn a_listing_uses_the_data_connection_opened_ahead_and_a_missing_directory_keeps_the_connection_on_vsftpd() {
    listing(Kind::Vsftpd);
}

#[test]
fn a_listing_uses_the_data_connection_opened_ahead_and_a_missing_directory_keeps_the_connection_on_pure_ftpd() {
    listing(Kind::PureFtpd);
}

#[test]
fn a_listing_uses_the_data_connection_opened_ahead_and_a_missing_directory_keeps_the_connection_on_pyftpdlib() {
    listing(Kind::Pyftpdlib);
}

#[test]
fn a_file_replaced_on_the_server_fails_as_changed_before_any_byte_on_each_server() {
    for kind in Kind::ALL {
        if !require_server(kind) {
            return;
        }
        let (root, server) = serve(kind);
        let p = probe(&server, 1);
        let old = version_of(root.path(), "big.bin");
        write_pattern_file(&root.path().join("big.bin"), 9, BIG + 1);
        let err = p.read("/big.bin", 100, 10, old, ProbeIntent::Peek(10)).expect_err("changed");
        assert!(err.starts_with("Changed"), "{kind:?}: {err}");
        assert_eq!(p.counter("net_bytes"), 0, "{kind:?}: not one byte of the new version");
        settle(&p);
        let new = version_of(root.path(), "big.bin");
        let got = p.read("/big.bin", 100, 10, new, ProbeIntent::Peek(10)).expect("the new version");
        assert_eq!(got, pattern_bytes(9, 100, 10));
        assert_eq!(p.counter("reconnects"), 0, "{kind:?}");
    }
}

#[test]
fn epsv_and_tls_1_2_data_connections_read_the_right_bytes_in_two_round_trips_on_vsftpd() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let (root, server) = serve(Kind::Vsftpd);
    for (epsv, tls12_only) in [(true, false), (false, true), (true, true)] {
        let opts = ProbeOptions {
            host: server.host.clone(),
            port: server.port,
            ca_file: server.ca_file.clone(),
            implicit: false,
            epsv,
            insecure: false,
            tls12_only,
            connections: 1,
            timeout: Duration::from_secs(20),
        };
        let p = Probe::connect(&opts).expect("connect");
        settle(&p);
        let big = version_of(root.path(), "big.bin");
        for offset in offsets(3, BIG, 70_000) {
            let before = p.counter("round_trips");
            let got = p.read("/big.bin", offset, 70_000, big, ProbeIntent::Peek(70_000)).expect("read");
            assert!(got == pattern_bytes(1, offset, 70_000), "epsv {epsv}, TLS 1.2 only {tls12_only}");
            assert_eq!(p.counter("round_trips") - before, 2, "epsv {epsv}, TLS 1.2 only {tls12_only}");
            settle(&p);
        }
        assert_eq!((p.counter("logins"), p.counter("reconnects")), (1, 0));
    }
}

// ------------------------------------------------------------------ through a mount

/// Every counter of the mount's stats file. Read with O_DIRECT: the size the kernel cached
/// for the file may be older than the text, which grows as counters gain digits, and a
/// cached read would be cut at that size.
fn counters(mount: &Mount) -> HashMap<String, u64> {
    use std::os::unix::fs::OpenOptionsExt;
    #[repr(align(4096))]
    struct Page([u8; 65536]);
    let path = mount.path(".mastfs-stats");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut page = Box::new(Page([0; 65536]));
    let n = std::io::Read::read(&mut f, &mut page.0).expect("read the stats file");
    let text = String::from_utf8_lossy(&page.0[..n]).into_owned();
    assert!(text.ends_with('\n'), "cut short: {text:?}");
    text.lines().filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))).collect()
}

fn pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, offset).unwrap_or_else(|e| panic!("pread {}: {e}", path.display()));
    buf.truncate(n);
    buf
}

fn tail(text: &str) -> &str {
    let cut = text.len().saturating_sub(6000);
    let cut = (cut..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[cut..]
}

/// Waits until `counter` reaches `at_least` (the pool re-armed in the background).
fn wait_for(mount: &Mount, counter: &str, at_least: u64) {
    let waited = Instant::now();
    while counters(mount)[counter] < at_least {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "{counter} never reached {at_least}: {:?}\n{}",
            counters(mount),
            tail(&mount.stderr())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn warm_mount_reads(kind: Kind) {
    if !common::ready(kind) {
        return;
    }
    let (_root, server) = serve(kind);
    let mount = Mount::builder(&server).args(["--dir-cache-time", "600", "-vv"]).start();
    let listed = run(Command::new("ls").arg("-l").arg(&mount.mountpoint), HANG);
    assert!(listed.status.success());
    let armed = counters(&mount)["armed"];
    wait_for(&mount, "armed", armed.max(2));
    for (i, offset) in [5 * MIB + 4321, 17 * MIB + 99].into_iter().enumerate() {
        let before = counters(&mount);
        let got = pread(&mount.path("big.bin"), offset, 4096);
        assert!(got == pattern_bytes(1, offset, 4096), "{kind:?}: bytes at {offset}");
        let after = counters(&mount);
        assert_eq!(after["round_trips"] - before["round_trips"], 2, "{kind:?}: cold read {i} on a warm mount");
        assert_eq!(after["retrs"] - before["retrs"], 1);
        // The connection is re-armed once after each read (perhaps already by now).
        wait_for(&mount, "armed", before["armed"] + 1);
    }
    // A spare is counted when it starts and its login when it completes: on a loaded machine
    // one may still be logging in here.
    wait_for(&mount, "logins", counters(&mount)["spares"] + 1);
    let c = counters(&mount);
    // The listing took the only connection: a spare logged in behind it, off the request
    // path (the round trips above are the reads' own). How many more depends on how `ls -l`'s
    // requests overlapped; none of them is a login of a request's own.
    assert!(c["spares"] >= 1, "{kind:?}: a spare after the listing");
    assert_eq!(c["logins"], 1 + c["spares"], "{kind:?}: the reads reused pooled, re-armed connections");
    assert_eq!(c["reconnects"], 0);
}

#[test]
fn cold_reads_on_a_warm_mount_cost_two_round_trips_on_one_login_on_vsftpd() {
    warm_mount_reads(Kind::Vsftpd);
}

#[test]
fn cold_reads_on_a_warm_mount_cost_two_round_trips_on_one_login_on_pure_ftpd() {
    warm_mount_reads(Kind::PureFtpd);
}

#[test]
fn cold_reads_on_a_warm_mount_cost_two_round_trips_on_one_login_on_pyftpdlib() {
    warm_mount_reads(Kind::Pyftpdlib);
}

#[test]
fn implicit_ftps_against_vsftpd_with_forced_data_tls_mounts_lists_and_reads() {
    if !common::ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    write_pattern_file(&root.path().join("data/a.bin"), 4, 3 * MIB + 3);
    // vsftpd: implicit_ssl=YES, force_anon_data_ssl=YES, require_ssl_reuse=YES.
    let server = Server::builder(Kind::Vsftpd).implicit().root(root.path()).start();
    let mount = Mount::builder(&server).start();
    let ls = run(Command::new("ls").arg(mount.path("data")), HANG);
    assert!(ls.status.success(), "ls: {}\n{}", String::from_utf8_lossy(&ls.stderr), mount.stderr());
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), "a.bin");
    let bytes = std::fs::read(mount.path("data/a.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", mount.stderr()));
    assert!(bytes == pattern_bytes(4, 0, (3 * MIB + 3) as usize), "byte-exact over implicit FTPS");
}

// ------------------------------------------------------------------ an unresponsive server

/// `root` and every process descended from it (vsftpd runs each session in its own process).
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

fn signal_all(pids: &[u32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: signalling processes of the server this test started.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

#[test]
fn a_stopped_server_fails_reads_stats_and_listings_with_a_timeout_and_serves_them_once_resumed() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let (root, server) = serve(Kind::Vsftpd);
    let opts = ProbeOptions {
        host: server.host.clone(),
        port: server.port,
        ca_file: server.ca_file.clone(),
        implicit: false,
        epsv: false,
        insecure: false,
        tls12_only: false,
        connections: 2,
        timeout: Duration::from_secs(2),
    };
    let p = Probe::connect(&opts).expect("connect");
    settle(&p);
    let big = version_of(root.path(), "big.bin");
    let tree = process_tree(server.pid);
    signal_all(&tree, libc::SIGSTOP);
    let started = Instant::now();
    let read = p.read("/big.bin", 1000, 100, big, ProbeIntent::Peek(100));
    let read_took = started.elapsed();
    let stat = p.stat("/stage");
    let list = p.list("/stage");
    // Resume before asserting, so a failure leaves no stopped server behind.
    signal_all(&tree, libc::SIGCONT);
    eprintln!("a read on the stopped server failed after {read_took:?} (--timeout 2s)");
    let read = read.expect_err("the server is stopped");
    assert!(read.starts_with("Timeout"), "{read}");
    assert!(stat.expect_err("stopped").starts_with("Timeout"));
    assert!(list.expect_err("stopped").starts_with("Timeout"));
    assert_eq!(p.counter("retries"), 0, "a timeout is not retried: it would multiply the wait");
    let got = p.read("/big.bin", 1000, 100, big, ProbeIntent::Peek(100)).expect("read after SIGCONT");
    assert_eq!(got, pattern_bytes(1, 1000, 100));
}
