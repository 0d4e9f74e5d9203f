//! Never hang, never lie: mastfs under injected failures, through a real FUSE mount, with
//! ordinary tools. Every tool runs under a deadline; the only timing claim is "it finished".
//!
//! Network faults go through `common::relay` (mastfs → 127.0.0.2 → the real server on
//! 127.0.0.1). Those mounts use `--insecure` because the test servers' certificates do not
//! name 127.0.0.2; verification itself is covered in tests/security.rs.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;

const MIB: u64 = 1 << 20;
/// `--timeout` of the mounts here: short, so a stalled server fails reads quickly.
const TIMEOUT: &str = "3";
/// Far beyond any legitimate duration of one tool run here: reaching it is a hang.
const HANG: Duration = Duration::from_secs(90);

/// A server over a fresh root prepared by `fill`.
fn serve(kind: Kind, fill: impl FnOnce(&Path)) -> (tempfile::TempDir, Server) {
    let root = new_root();
    fill(root.path());
    let server = Server::builder(kind).root(root.path()).start();
    (root, server)
}

/// A server with a passive range, and a relay in front of its control and passive ports.
fn serve_relayed(kind: Kind, fill: impl FnOnce(&Path)) -> (tempfile::TempDir, Server, Relay) {
    let root = new_root();
    fill(root.path());
    let pasv = Relay::free_pasv_range(16);
    let server = Server::builder(kind).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = Relay::start(server.port, pasv);
    (root, server, relay)
}

/// Mounts `server` through `relay`.
fn mount_relayed(server: &Server, relay: &Relay, extra: &[&str]) -> Mount {
    let mount = Mount::builder(server)
        .no_ca()
        .args(["--insecure", "--timeout", TIMEOUT])
        .args(extra.iter().copied())
        .start_via(&relay.host(), relay.port);
    assert!(relay.stats().control_connections > 0, "the mount really goes through the relay");
    mount
}

/// Starts a command with its output captured.
fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
}

/// `cat` of a file on the mount: its bytes, or the failed run.
fn cat(path: &Path) -> Result<Vec<u8>, Output> {
    let out = run(Command::new("cat").arg(path), HANG);
    if out.status.success() { Ok(out.stdout) } else { Err(out) }
}

/// `cp` of a mounted file to a fresh local file; returns the copy's bytes.
fn cp(mount: &Mount, rel: &str, dst_dir: &Path) -> Vec<u8> {
    let dst = dst_dir.join(rel.replace('/', "_"));
    let out = run(Command::new("cp").arg(mount.path(rel)).arg(&dst), HANG);
    assert!(out.status.success(), "cp {rel} failed: {}\nmastfs:\n{}", stderr_of(&out), mount.stderr());
    fs::read(&dst).expect("read the copy")
}

fn assert_same(got: &[u8], seed: u64, size: u64, what: &str) {
    assert_eq!(got.len() as u64, size, "{what}: length");
    let first_bad = got.iter().zip(pattern_bytes(seed, 0, size as usize)).position(|(a, b)| *a != b);
    assert_eq!(first_bad, None, "{what}: first differing byte");
}

fn assert_io_error(result: Result<Vec<u8>, Output>, what: &str) -> Output {
    match result {
        Ok(bytes) => panic!("{what}: succeeded with {} bytes, want an I/O error", bytes.len()),
        Err(out) => {
            let err = stderr_of(&out);
            assert!(err.contains("Input/output error"), "{what}: want EIO, got: {err}");
            out
        }
    }
}

// ------------------------------------------------------------------ hung, dead and paused servers

#[test]
fn a_stalled_server_fails_uncached_reads_with_eio_keeps_listings_and_recovers_without_remount() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server, relay) = serve_relayed(Kind::Vsftpd, |r| {
        write_pattern_file(&r.join("data/cached.bin"), 1, 2 * MIB + 5);
        write_pattern_file(&r.join("data/cold.bin"), 2, 3 * MIB + 7);
    });
    let mount = mount_relayed(&server, &relay, &[]);
    let listed = run(Command::new("ls").arg(mount.path("data")), HANG);
    assert!(listed.status.success());
    assert_same(&cat(&mount.path("data/cached.bin")).expect("warm read"), 1, 2 * MIB + 5, "cached.bin");

    relay.stall(true);
    let failed = assert_io_error(cat(&mount.path("data/cold.bin")), "cat of an uncached file from a hung server");
    assert!(failed.stdout.is_empty(), "no byte of a file nobody could fetch");
    let ls = run(Command::new("ls").arg("-l").arg(mount.path("data")), HANG);
    assert!(ls.status.success(), "ls of a listed directory answers while the server hangs: {}", stderr_of(&ls));
    let names = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(names.contains("cached.bin") && names.contains("cold.bin"), "{names}");
    assert_same(&cat(&mount.path("data/cached.bin")).expect("cached read"), 1, 2 * MIB + 5, "cached while hung");

    relay.stall(false);
    assert_same(&cat(&mount.path("data/cold.bin")).expect("read after the server recovered"), 2, 3 * MIB + 7, "cold");
    assert!(stat_value(&mount, "read_errors") > 0);
}

#[test]
fn a_server_killed_and_restarted_on_its_port_fails_reads_with_eio_then_serves_them_again() {
    if !ready(Kind::Pyftpdlib) {
        return;
    }
    let root = new_root();
    write_pattern_file(&root.path().join("a.bin"), 3, MIB + 1);
    write_pattern_file(&root.path().join("b.bin"), 4, 2 * MIB + 3);
    let server = Server::builder(Kind::Pyftpdlib).root(root.path()).start();
    let port = server.port;
    // The restarted server has a new certificate from a new CA: only --insecure can follow it.
    let mount = Mount::builder(&server).no_ca().args(["--insecure", "--timeout", TIMEOUT]).start();
    assert_same(&cat(&mount.path("a.bin")).expect("before the crash"), 3, MIB + 1, "a.bin");
    assert!(run(Command::new("ls").arg(&mount.mountpoint), HANG).status.success(), "listed once");

    // SAFETY: signalling the server daemon this test started.
    unsafe { libc::kill(server.pid as libc::pid_t, libc::SIGKILL) };
    assert_io_error(cat(&mount.path("b.bin")), "cat while the server is dead");
    let ls = run(Command::new("ls").arg(&mount.mountpoint), HANG);
    assert!(ls.status.success(), "ls of a listed directory still answers: {}", stderr_of(&ls));
    drop(server);

    let _restarted = Server::builder(Kind::Pyftpdlib).root(root.path()).port(port).start();
    assert_same(&cat(&mount.path("b.bin")).expect("after the restart"), 4, 2 * MIB + 3, "b.bin");
    assert!(stat_value(&mount, "reconnects") + stat_value(&mount, "retries") > 0);
}

#[test]
fn a_paused_server_fails_reads_with_eio_and_serves_them_after_it_resumes() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| {
        write_pattern_file(&r.join("a.bin"), 5, MIB);
        write_pattern_file(&r.join("b.bin"), 6, 2 * MIB + 9);
    });
    let mount = Mount::builder(&server).args(["--timeout", TIMEOUT]).start();
    assert_same(&cat(&mount.path("a.bin")).expect("before the pause"), 5, MIB, "a.bin");
    assert!(run(Command::new("ls").arg(&mount.mountpoint), HANG).status.success(), "listed once");

    // vsftpd runs each session in a process (and session) of its own: stop the whole tree.
    let tree = process_tree(server.pid);
    signal_all(&tree, libc::SIGSTOP);
    let paused = cat(&mount.path("b.bin"));
    let ls = run(Command::new("ls").arg(&mount.mountpoint), HANG);
    // Resume before asserting, so a failure leaves no stopped server behind.
    signal_all(&tree, libc::SIGCONT);
    assert_io_error(paused, "cat while the server is stopped");
    assert!(ls.status.success(), "ls of a listed directory answers while the server is stopped");

    assert_same(&cat(&mount.path("b.bin")).expect("after SIGCONT"), 6, 2 * MIB + 9, "b.bin");
}

/// `root` and every process descended from it.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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

// ------------------------------------------------------------------ broken transfers

fn copy_survives_data_cuts(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let size = 16 * MIB;
    let (_root, server, relay) = serve_relayed(kind, |r| write_pattern_file(&r.join("big.bin"), 7, size));
    // Two connections: stripes of about 7 MiB, each cut at least twice.
    let mount = mount_relayed(&server, &relay, &["--connections", "2"]);
    relay.cut_data_after(Some(3 * MIB));
    let out = tempfile::tempdir().expect("out dir");
    assert_same(&cp(&mount, "big.bin", out.path()), 7, size, "copy through cut data connections");
    let cuts = relay.stats().cuts;
    assert!(cuts >= 4, "the relay cut {cuts} data connections");
    // Resumed at the exact byte, by the transport or by the read path.
    assert!(stat_value(&mount, "retries") + stat_value(&mount, "resumed") > 0, "{}", mount.stderr());
    assert!(stat_value(&mount, "reconnects") > 0);
    assert_eq!(stat_value(&mount, "read_errors"), 0, "every cut was resumed");
}

#[test]
fn a_copy_whose_data_connections_are_cut_every_3_mib_is_byte_exact_on_vsftpd() {
    copy_survives_data_cuts(Kind::Vsftpd);
}

#[test]
fn a_copy_whose_data_connections_are_cut_every_3_mib_is_byte_exact_on_pure_ftpd() {
    copy_survives_data_cuts(Kind::PureFtpd);
}

#[test]
fn a_copy_whose_data_connections_are_cut_every_3_mib_is_byte_exact_on_pyftpdlib() {
    copy_survives_data_cuts(Kind::Pyftpdlib);
}

#[test]
fn a_copy_survives_every_connection_being_reset_twice_while_it_runs() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 16 * MIB;
    let (_root, server, relay) = serve_relayed(Kind::Vsftpd, |r| write_pattern_file(&r.join("big.bin"), 8, size));
    let mount = mount_relayed(&server, &relay, &[]);
    // Slow enough that the copy is surely in flight when the connections drop.
    relay.throttle(Some(2 * MIB));
    let out = tempfile::tempdir().expect("out dir");
    let dst = out.path().join("big.bin");
    let copy = spawn(Command::new("cp").arg(mount.path("big.bin")).arg(&dst));
    let mut cut = 0;
    for threshold in [3 * MIB, 9 * MIB] {
        let deadline = Instant::now() + HANG;
        while relay.stats().bytes_to_client < threshold && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        cut += relay.cut_all();
    }
    let done = finish(copy, "cp during connection resets", HANG);
    assert!(done.status.success(), "cp failed: {}\n{}", stderr_of(&done), mount.stderr());
    assert!(cut >= 2, "connections were live and cut ({cut})");
    assert_same(&fs::read(&dst).expect("copy"), 8, size, "copy through two resets");
    assert!(stat_value(&mount, "reconnects") > 0);
}

#[test]
fn eight_parallel_copies_complete_against_a_server_that_allows_two_connections() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 4 * MIB + 1;
    let root = new_root();
    for i in 0..8u64 {
        write_pattern_file(&root.path().join(format!("f{i}.bin")), 20 + i, size);
    }
    let server = Server::builder(Kind::Vsftpd).root(root.path()).max_clients(2).start();
    let mount = Mount::builder(&server).args(["--connections", "8", "--timeout", TIMEOUT]).start();
    let out = tempfile::tempdir().expect("out dir");
    let copies: Vec<(u64, Child)> = (0..8u64)
        .map(|i| {
            let dst = out.path().join(format!("f{i}.bin"));
            (i, spawn(Command::new("cp").arg(mount.path(&format!("f{i}.bin"))).arg(dst)))
        })
        .collect();
    for (i, child) in copies {
        let done = finish(child, &format!("cp f{i}.bin"), HANG);
        assert!(done.status.success(), "cp f{i}.bin failed: {}\n{}", stderr_of(&done), mount.stderr());
    }
    for i in 0..8u64 {
        let got = fs::read(out.path().join(format!("f{i}.bin"))).expect("copy");
        assert_same(&got, 20 + i, size, &format!("f{i}.bin"));
    }
    assert!(stat_value(&mount, "too_many") > 0, "the server's 421 was seen and handled");
}

// ------------------------------------------------------------------ a damaged cache

/// Block files of the cache, in path order.
fn block_files(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "blk") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(cache, &mut out);
    out.sort();
    out
}

#[test]
fn corrupted_truncated_and_deleted_cache_blocks_are_fetched_again_never_served() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 6 * MIB + 12345;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("f.bin"), 9, size));
    let cache = tempfile::tempdir().expect("cache");
    {
        let first = Mount::builder(&server).cache_dir(cache.path()).start();
        assert_same(&cat(&first.path("f.bin")).expect("first read"), 9, size, "first read");
        first.unmount();
    }
    let blocks = block_files(cache.path());
    assert_eq!(blocks.len(), 7, "one file per 1 MiB block: {blocks:?}");
    // A flipped data byte after the header, a truncated block, a missing block.
    let mut bytes = fs::read(&blocks[1]).expect("block");
    bytes[64 + 1000] ^= 0x40;
    fs::write(&blocks[1], &bytes).expect("corrupt a block");
    fs::OpenOptions::new().write(true).open(&blocks[3]).and_then(|f| f.set_len(64 + 100)).expect("truncate");
    fs::remove_file(&blocks[5]).expect("delete a block");

    let second = Mount::builder(&server).cache_dir(cache.path()).start();
    assert_same(&cat(&second.path("f.bin")).expect("read over a damaged cache"), 9, size, "after damage");
    // What the read path took from transfers (the transport may have had more in flight
    // when each ended).
    let fetched = stat_value(&second, "fetched_bytes");
    assert!(fetched > 0 && fetched <= 3 * MIB, "only the three damaged blocks come again ({fetched} bytes)");
}

#[test]
fn a_cache_layout_dir_replaced_by_a_file_leaves_reads_correct() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 3 * MIB + 1;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("f.bin"), 10, size));
    let cache = tempfile::tempdir().expect("cache");
    fs::write(cache.path().join("v1"), b"not a directory").expect("plant a file");
    let mount = Mount::builder(&server).cache_dir(cache.path()).start();
    assert_same(&cat(&mount.path("f.bin")).expect("read without a usable cache"), 10, size, "uncached");
    // A re-read still works, from memory or the server.
    assert_same(&cat(&mount.path("f.bin")).expect("re-read"), 10, size, "re-read");
}

/// A tmpfs over a temp dir, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tmpfs mount point");
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(dir.path()),
            HANG,
        );
        assert!(out.status.success(), "mount tmpfs: {}", stderr_of(&out));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_cache_disk_leaves_reads_correct() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 10 * MIB + 3;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("f.bin"), 11, size));
    let small = Tmpfs::mount("3m");
    let mount = Mount::builder(&server).cache_dir(small.0.path().join("cache")).start();
    let out = tempfile::tempdir().expect("out dir");
    assert_same(&cp(&mount, "f.bin", out.path()), 11, size, "copy onto a full cache disk");
    assert!(stat_value(&mount, "cache_write_errors") > 0, "the cache disk did fill up");
    assert_same(&cp(&mount, "f.bin", out.path()), 11, size, "second copy");
    drop(mount);
}

#[test]
fn two_mounts_sharing_one_cache_dir_both_read_the_right_bytes() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 12 * MIB + 77;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("f.bin"), 12, size));
    let cache = tempfile::tempdir().expect("cache");
    let a = Mount::builder(&server).cache_dir(cache.path()).start();
    let b = Mount::builder(&server).cache_dir(cache.path()).start();
    let out = tempfile::tempdir().expect("out dir");
    let (da, db) = (out.path().join("a"), out.path().join("b"));
    let ca = spawn(Command::new("cp").arg(a.path("f.bin")).arg(&da));
    let cb = spawn(Command::new("cp").arg(b.path("f.bin")).arg(&db));
    for (child, what) in [(ca, "cp via mount a"), (cb, "cp via mount b")] {
        let done = finish(child, what, HANG);
        assert!(done.status.success(), "{what}: {}", stderr_of(&done));
    }
    assert_same(&fs::read(&da).expect("a"), 12, size, "mount a");
    assert_same(&fs::read(&db).expect("b"), 12, size, "mount b");
    // A third mount finds every block the two left behind.
    drop((a, b));
    let c = Mount::builder(&server).cache_dir(cache.path()).start();
    assert_same(&cat(&c.path("f.bin")).expect("third mount"), 12, size, "mount c");
    assert_eq!(stat_value(&c, "net_bytes"), 0, "served from the shared cache");
}

// ------------------------------------------------------------------ files changing on the server

/// Reads `path` from `offset` to the end in 256 KiB steps through one open file, in a
/// thread with a deadline; returns the bytes read and the error that stopped it, if any.
fn read_rest(file: fs::File, offset: u64) -> (Vec<u8>, Option<std::io::Error>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = offset;
        let err = loop {
            match file.read_at(&mut buf, pos) {
                Ok(0) => break None,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    pos += n as u64;
                }
                Err(e) => break Some(e),
            }
        };
        let _ = tx.send((got, err));
    });
    rx.recv_timeout(HANG).expect("reading through the open file hung")
}

fn replace_file(path: &Path, seed: u64, size: u64) {
    let tmp = path.with_extension("new");
    write_pattern_file(&tmp, seed, size);
    fs::rename(&tmp, path).expect("replace the file on the server");
}

fn replaced_file_never_mixes_versions(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let (old, new) = (24 * MIB + 11, 30 * MIB + 5);
    let (_root, server) = serve(kind, |r| write_pattern_file(&r.join("f.bin"), 13, old));
    let mount = Mount::builder(&server).args(["--dir-cache-time", "1", "--timeout", TIMEOUT]).start();
    let path = mount.path("f.bin");
    let file = fs::File::open(&path).expect("open");
    let mut head = vec![0u8; 4096];
    file.read_exact_at(&mut head, 0).expect("read the head");
    assert_eq!(head, pattern_bytes(13, 0, 4096));

    replace_file(&server.path("f.bin"), 14, new);
    // Past the listing TTL, so the mount may already know of the new version.
    std::thread::sleep(Duration::from_millis(1500));
    let (rest, err) = read_rest(file, 4096);
    let want = pattern_bytes(13, 4096, rest.len().min((old - 4096) as usize));
    assert!(rest.len() as u64 <= old - 4096, "{kind:?}: read {} bytes past the old end", rest.len());
    let first_bad = rest.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "{kind:?}: a reader of the old version saw other bytes (new version mixed in)");
    match err {
        None => assert_eq!(rest.len() as u64, old - 4096, "{kind:?}: success means the complete old file"),
        Some(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::EIO)),
            "{kind:?}: want ESTALE or EIO, got {e:?}"
        ),
    }

    let fresh = cat(&path).unwrap_or_else(|o| panic!("{kind:?}: fresh read failed: {}", stderr_of(&o)));
    assert_same(&fresh, 14, new, &format!("{kind:?}: a fresh open after the TTL"));
}

#[test]
fn a_file_replaced_on_vsftpd_while_open_never_mixes_old_and_new_bytes() {
    replaced_file_never_mixes_versions(Kind::Vsftpd);
}

#[test]
fn a_file_replaced_on_pure_ftpd_while_open_never_mixes_old_and_new_bytes() {
    replaced_file_never_mixes_versions(Kind::PureFtpd);
}

#[test]
fn a_file_replaced_on_pyftpdlib_while_open_never_mixes_old_and_new_bytes() {
    replaced_file_never_mixes_versions(Kind::Pyftpdlib);
}

/// Copies a file to stdout chunk by chunk with os.read; an error ends it with "ERR errno" on
/// stderr and exit code 3, after the bytes read before it.
const COPY_TO_STDOUT: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
while True:
    try:
        chunk = os.read(fd, 1 << 20)
    except OSError as e:
        sys.stderr.write("ERR %d" % e.errno)
        sys.exit(3)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk)
"#;

fn short_file_is_an_error(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let listed = 3 * MIB;
    let (_root, server) = serve(kind, |r| write_pattern_file(&r.join("f.bin"), 15, listed));
    let mount = Mount::builder(&server).args(["--dir-cache-time", "600", "--timeout", TIMEOUT]).start();
    assert_eq!(fs::metadata(mount.path("f.bin")).expect("stat").len(), listed);
    // The server's file shrinks after the listing; the mount still believes 3 MiB.
    fs::OpenOptions::new()
        .write(true)
        .open(server.path("f.bin"))
        .and_then(|f| f.set_len(MIB + 7))
        .expect("truncate on the server");
    let out = run(Command::new("python3").args(["-c", COPY_TO_STDOUT]).arg(mount.path("f.bin")), HANG);
    let said = stderr_of(&out);
    let errno: Option<i32> = said.trim().strip_prefix("ERR ").and_then(|n| n.parse().ok());
    assert!(
        matches!(errno, Some(libc::EIO) | Some(libc::ESTALE)),
        "{kind:?}: reading a file shorter than listed must fail; got {} bytes, exit {:?}, stderr {said:?}",
        out.stdout.len(),
        out.status.code()
    );
    // What the reader got before the error is the file's true prefix.
    assert!(out.stdout.len() as u64 <= MIB + 7, "{kind:?}: {} bytes from a file of {}", out.stdout.len(), MIB + 7);
    assert_eq!(out.stdout, pattern_bytes(15, 0, out.stdout.len()), "{kind:?}: bytes before the error");
}

#[test]
fn a_file_shorter_on_vsftpd_than_listed_is_a_read_error_never_short_data() {
    short_file_is_an_error(Kind::Vsftpd);
}

#[test]
fn a_file_shorter_on_pyftpdlib_than_listed_is_a_read_error_never_short_data() {
    short_file_is_an_error(Kind::Pyftpdlib);
}
