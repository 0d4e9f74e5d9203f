//! End-to-end behaviour of `mastfs mount` against real FTPS servers, through a real FUSE
//! mount, with ordinary tools.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// A server over a fresh root prepared by `fill`.
fn serve(kind: Kind, fill: impl FnOnce(&Path)) -> (tempfile::TempDir, Server) {
    let root = new_root();
    fill(root.path());
    let server = Server::builder(kind).root(root.path()).start();
    (root, server)
}

fn ls_names(dir: &Path) -> HashSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8 name"))
        .collect()
}

// ------------------------------------------------------------------ listing

fn ls_l_of_10000_files(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let (_root, server) = serve(kind, |r| {
        make_big_dir(&r.join("big"), 10_000);
    });
    let mount = Mount::start(&server);
    let out = run(Command::new("ls").arg("-l").arg(mount.path("big")), Duration::from_secs(120));
    assert!(out.status.success(), "ls -l failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = text.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(files.len(), 10_000, "every entry listed");
    assert!(files.iter().all(|l| l.contains(" 0 ") && l.ends_with(".fits")));
    assert_eq!(stat_value(&mount, "retrs"), 0, "ls -l needs no per-file transfers");
    assert!(stat_value(&mount, "listings") <= 3, "one listing per directory, not one per file");
}

#[test]
fn ls_l_shows_all_10000_files_from_vsftpd_list() {
    ls_l_of_10000_files(Kind::Vsftpd);
}

#[test]
fn ls_l_shows_all_10000_files_from_pure_ftpd_mlsd() {
    ls_l_of_10000_files(Kind::PureFtpd);
}

fn hostile_names_nested_dirs_and_symlinks(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let (_root, server) = serve(kind, |r| {
        make_hostile_files(&r.join("a/b/c/names"));
        make_symlinks(&r.join("links"));
        make_unreadable_file(&r.join("a/secret.fits"));
    });
    let mount = Mount::start(&server);
    let listed = ls_names(&mount.path("a/b/c/names"));
    let expected: HashSet<String> = hostile_names().into_iter().collect();
    assert_eq!(listed, expected, "names exactly as on the server");
    for name in hostile_names().iter().filter(|n| kind.serves_name(n)) {
        let got = fs::read(mount.path("a/b/c/names").join(name)).unwrap_or_else(|e| panic!("read {name:?}: {e}"));
        assert_eq!(got, name.as_bytes(), "content of {name:?}");
    }

    // Servers that describe links (vsftpd's LIST, pure-ftpd's MLSD) show them as links;
    // pyftpdlib's MLSD describes the target instead, which reads as a plain file. vsftpd
    // shows them only in listings: a lookup in a directory nobody listed asks SIZE/MDTM/CWD,
    // which follow links (see README, Limits), so list it first.
    ls_names(&mount.path("links"));
    let link = mount.path("links/link_to_file");
    if kind == Kind::Pyftpdlib {
        assert!(fs::symlink_metadata(&link).expect("lstat").is_file());
    } else {
        assert!(fs::symlink_metadata(&link).expect("lstat").file_type().is_symlink());
        assert_eq!(fs::read_link(&link).expect("readlink"), Path::new("target.txt"));
    }
    assert_eq!(fs::read(&link).expect("read through the link"), b"symlink target\n");
    assert!(fs::symlink_metadata(mount.path("links/target.txt")).expect("target").is_file());

    // The unreadable file is listed; reading it fails promptly and cleanly.
    assert!(ls_names(&mount.path("a")).contains("secret.fits"));
    let secret = mount.path("a/secret.fits");
    let err = within("read of an unreadable file", Duration::from_secs(120), move || fs::read(secret))
        .expect_err("an unreadable file must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "a refused RETR is EACCES, got {err:?}");
    // And the mount still works afterwards.
    assert_eq!(fs::read(mount.path("links/target.txt")).expect("read"), b"symlink target\n");
}

#[test]
fn vsftpd_shows_hostile_names_nested_dirs_symlinks_and_unreadable_files() {
    hostile_names_nested_dirs_and_symlinks(Kind::Vsftpd);
}

#[test]
fn pure_ftpd_shows_hostile_names_nested_dirs_symlinks_and_unreadable_files() {
    hostile_names_nested_dirs_and_symlinks(Kind::PureFtpd);
}

#[test]
fn pyftpdlib_shows_hostile_names_nested_dirs_symlinks_and_unreadable_files() {
    hostile_names_nested_dirs_and_symlinks(Kind::Pyftpdlib);
}

#[test]
fn symlinks_from_a_list_server_are_symlinks_with_their_targets() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| {
        make_symlinks(&r.join("links"));
    });
    let mount = Mount::start(&server);
    // Links show in listings; lookups in an unlisted directory follow them (README, Limits).
    ls_names(&mount.path("links"));
    for (name, target) in
        [("link_to_file", "target.txt"), ("link_to_dir", "target_dir"), ("dangling", "does-not-exist")]
    {
        let path = mount.path("links").join(name);
        assert!(fs::symlink_metadata(&path).expect("lstat").file_type().is_symlink(), "{name} is a symlink");
        assert_eq!(fs::read_link(&path).expect("readlink"), Path::new(target));
    }
    assert_eq!(fs::read(mount.path("links/link_to_file")).expect("follow"), b"symlink target\n");
}

// ------------------------------------------------------------------ reading

#[test]
fn copies_are_byte_exact_from_empty_to_64_mib() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let sizes = [0, 1, 2880, MIB + 1, 64 * MIB];
    let (_root, server) = serve(Kind::Vsftpd, |r| {
        for (i, size) in sizes.iter().enumerate() {
            write_pattern_file(&r.join(format!("data/f{i}.bin")), i as u64 + 100, *size);
        }
    });
    let mount = Mount::builder(&server).args(["--connections", "4"]).start();
    let out_dir = tempfile::tempdir().expect("out dir");
    for (i, size) in sizes.iter().enumerate() {
        let dst = out_dir.path().join(format!("f{i}.bin"));
        let out =
            run(Command::new("cp").arg(mount.path(&format!("data/f{i}.bin"))).arg(&dst), Duration::from_secs(300));
        assert!(out.status.success(), "cp failed: {}\n{}", String::from_utf8_lossy(&out.stderr), mount.stderr());
        let got = fs::read(&dst).expect("copied file");
        assert_eq!(got.len() as u64, *size);
        assert!(got == pattern_bytes(i as u64 + 100, 0, *size as usize), "bytes of the {size}-byte file differ");
    }
    assert!(stat_value(&mount, "stripes") > 1, "the 64 MiB copy was split among the connections");
    assert_eq!(stat_value(&mount, "cancelled"), 0, "no transfer stopped before its planned end");
}

fn random_preads(kind: Kind, extra: &[&str]) {
    if !ready(kind) {
        return;
    }
    let size = 24 * MIB + 12345;
    let (_root, server) = serve(kind, |r| write_pattern_file(&r.join("r.bin"), 7, size));
    let mount = Mount::builder(&server).args(extra.iter().copied()).start();
    std::thread::scope(|s| {
        for reader in 0..8u64 {
            let path = mount.path("r.bin");
            s.spawn(move || {
                let f = fs::File::open(&path).expect("open");
                let mut x = reader * 7919 + 1;
                for _ in 0..25 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let off = (x >> 11) % size;
                    let len = [1usize, 2880, 4096, 70_000][(x % 4) as usize];
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).expect("pread");
                    let want = pattern_bytes(7, off, len.min((size - off) as usize));
                    // A regular file answers a read in full up to its end.
                    assert_eq!(n, want.len(), "bytes read at {off}");
                    assert_eq!(&buf[..n], &want[..], "bytes at {off}");
                }
            });
        }
    });
    assert_eq!(stat_value(&mount, "read_errors"), 0);
    assert!(stat_value(&mount, "aborts") > 0, "random reads end their transfers early");
    assert_eq!(stat_value(&mount, "reconnects"), 0, "every early end left the control connection in step");
}

#[test]
fn eight_concurrent_random_readers_see_the_right_bytes_on_vsftpd_tls13() {
    random_preads(Kind::Vsftpd, &["--connections", "4"]);
}

#[test]
fn eight_concurrent_random_readers_see_the_right_bytes_on_vsftpd_tls12() {
    random_preads(Kind::Vsftpd, &["--connections", "4", "--tls-max", "1.2"]);
}

#[test]
fn eight_concurrent_random_readers_see_the_right_bytes_on_pure_ftpd() {
    random_preads(Kind::PureFtpd, &["--connections", "3"]);
}

#[test]
fn eight_concurrent_random_readers_see_the_right_bytes_on_pyftpdlib() {
    random_preads(Kind::Pyftpdlib, &["--connections", "3", "--epsv"]);
}

#[test]
fn a_header_read_of_a_1_gib_file_moves_one_block_not_the_file() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| {
        // Sparse: the server reads zeros, the disk holds nothing.
        let f = fs::File::create(r.join("huge.fits")).expect("create");
        f.set_len(1 << 30).expect("truncate");
        set_mode(&r.join("huge.fits"), 0o644);
    });
    let mount = Mount::start(&server);
    assert_eq!(fs::metadata(mount.path("huge.fits")).expect("stat").len(), 1 << 30);
    let got = mount.read_range("huge.fits", 500 * MIB, 2880);
    assert_eq!(got, vec![0u8; 2880]);
    let net = stat_value(&mount, "net_bytes");
    assert!(net <= 2 * MIB, "fetched {net} bytes for a 2880-byte read");
    assert_eq!(stat_value(&mount, "retrs"), 1);
    // The server's own log: what it wrote, including what sat in socket buffers when the
    // client closed, is still far from the whole file.
    let sent = server.bytes_sent();
    assert!(sent < 64 * MIB, "server wrote {sent} bytes");
}

#[test]
fn random_reads_fetch_only_the_blocks_they_touch() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 64 * MIB;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("r.bin"), 3, size));
    let mount = Mount::start(&server);
    let offsets = [5 * MIB + 100, 33 * MIB, 60 * MIB + MIB / 2, 17 * MIB + 9];
    for off in offsets {
        assert_eq!(mount.read_range("r.bin", off, 4096), pattern_bytes(3, off, 4096));
    }
    // The kernel reads ahead a little around each read; the read path fetches what it asks.
    let fetched = stat_value(&mount, "fetched_bytes");
    assert!(fetched <= offsets.len() as u64 * 512 * 1024, "fetched {fetched} bytes for {} random reads", offsets.len());
    assert_eq!(stat_value(&mount, "stripes"), 0, "random reads start no stripes");
}

#[test]
fn a_re_read_after_a_remount_comes_from_the_disk_cache_with_zero_network_bytes() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let size = 20 * MIB + 3;
    let (_root, server) = serve(Kind::Vsftpd, |r| write_pattern_file(&r.join("d/warm.bin"), 5, size));
    let cache = tempfile::tempdir().expect("cache dir");
    {
        let first = Mount::builder(&server).cache_dir(cache.path()).start();
        assert!(first.read("d/warm.bin") == pattern_bytes(5, 0, size as usize));
        // A run that ends mid-file may receive part of one more read chunk before it stops.
        let net = stat_value(&first, "net_bytes");
        assert!((size..size + MIB).contains(&net), "first read moved {net} bytes for {size}");
        first.unmount();
    }
    // Every RETR of the first mount is in the transfer log once its sessions have ended.
    server.wait_for_sessions_to_end(Duration::from_secs(30));
    let retrs_before = server.retr_count();
    assert!(retrs_before > 0, "the transfer log shows the first mount's reads: {}", server.log.display());
    let second = Mount::builder(&server).cache_dir(cache.path()).start();
    assert!(second.read("d/warm.bin") == pattern_bytes(5, 0, size as usize));
    assert_eq!(stat_value(&second, "net_bytes"), 0, "zero bytes on the wire after the remount");
    assert_eq!(stat_value(&second, "retrs"), 0);
    assert_eq!(server.retr_count(), retrs_before, "the server saw no RETR");
    let mode = fs::metadata(cache.path()).expect("cache").mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache is private");
}

// ------------------------------------------------------------------ logins and refusals

#[test]
fn a_password_user_sees_the_servers_files() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = tempfile::Builder::new().prefix("mastfs-root-").tempdir().expect("root");
    set_mode(root.path(), 0o755);
    write_file(&root.path().join("exclusive.fits"), b"proprietary data");
    let server = Server::builder(Kind::Vsftpd).root(root.path()).with_user().start();
    let mount = Mount::builder(&server).password_user().start();
    assert_eq!(mount.read("exclusive.fits"), b"proprietary data");
}

#[test]
fn implicit_ftps_mounts_and_reads() {
    if !ready(Kind::Pyftpdlib) {
        return;
    }
    let root = tempfile::Builder::new().prefix("mastfs-root-").tempdir().expect("root");
    set_mode(root.path(), 0o755);
    write_pattern_file(&root.path().join("i.bin"), 9, 3 * MIB);
    let server = Server::builder(Kind::Pyftpdlib).root(root.path()).implicit().start();
    let mount = Mount::start(&server);
    assert!(mount.read("i.bin") == pattern_bytes(9, 0, (3 * MIB) as usize));
}

/// `mastfs mount` without --foreground: exit status and stderr as a user sees them. The
/// guard unmounts and ends the daemon when dropped, even if the test fails before its umount.
fn mount_in_background(
    server: &Server,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, BackgroundMount) {
    let dir = BackgroundMount::new();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    let mut cmd = dir.command();
    cmd.args(["mount", "--host", &server.host, "--port", &server.port.to_string()])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--timeout", "10"])
        .args(args)
        .arg(&mnt)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (run(&mut cmd, Duration::from_secs(60)), dir)
}

fn refused_with(out: &std::process::Output, dir: &Path, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount must fail; stderr: {stderr}");
    assert!(!is_mounted(&dir.join("mnt")), "nothing mounted");
    let line = stderr.lines().find(|l| l.starts_with("mastfs:")).unwrap_or_default().to_lowercase();
    assert!(words.iter().any(|w| line.contains(w)), "a clear reason ({words:?}) in: {stderr}");
}

#[test]
fn the_background_mount_returns_only_once_live_and_umount_ends_it() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| write_file(&r.join("hello.txt"), b"hello\n"));
    let ca = server.ca_file.to_string_lossy().into_owned();
    let (out, dir) = mount_in_background(&server, &["--ca-file", &ca], &[]);
    assert!(out.status.success(), "mount failed: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = dir.path().join("mnt");
    assert!(is_mounted(&mnt), "live as soon as the command returned");
    assert_eq!(fs::read(mnt.join("hello.txt")).expect("read"), b"hello\n");
    let um = run(Command::new(env!("CARGO_BIN_EXE_mastfs")).arg("umount").arg(&mnt), Duration::from_secs(30));
    assert!(um.status.success(), "umount: {}", String::from_utf8_lossy(&um.stderr));
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_wrong_password_refuses_the_mount_with_a_clear_message() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).with_user().start();
    let ca = server.ca_file.to_string_lossy().into_owned();
    let (out, dir) =
        mount_in_background(&server, &["--ca-file", &ca, "--user", TEST_USER], &[("MASTFS_PASSWORD", "wrong")]);
    refused_with(&out, dir.path(), &["login"]);
}

#[test]
fn a_certificate_from_an_unknown_ca_refuses_the_mount() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let wrong = server.wrong_ca_file.to_string_lossy().into_owned();
    let (out, dir) = mount_in_background(&server, &["--ca-file", &wrong], &[]);
    refused_with(&out, dir.path(), &["certificate", "tls"]);
}

#[test]
fn a_server_without_tls_refuses_the_mount_instead_of_falling_back_to_plain_ftp() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).plain().start();
    let ca = server.ca_file.to_string_lossy().into_owned();
    let (out, dir) = mount_in_background(&server, &["--ca-file", &ca], &[]);
    refused_with(&out, dir.path(), &["tls"]);
}

#[test]
fn a_missing_or_busy_mount_point_is_refused() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_mastfs")).args(["mount", "--host", "127.0.0.1", "/nonexistent/mnt"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mnt"));
    let mount = Mount::start(&server);
    let busy = run(
        Command::new(env!("CARGO_BIN_EXE_mastfs")).args(["mount", "--host", "127.0.0.1"]).arg(&mount.mountpoint),
        Duration::from_secs(30),
    );
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("busy"));
}

#[test]
fn nothing_can_be_written_created_renamed_or_deleted() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| write_file(&r.join("d/f.txt"), b"x"));
    let mount = Mount::start(&server);
    let erofs = |r: std::io::Result<()>| r.expect_err("must fail").raw_os_error();
    let f = mount.path("d/f.txt");
    assert_eq!(erofs(fs::OpenOptions::new().write(true).open(&f).map(|_| ())), Some(libc::EROFS));
    assert_eq!(erofs(fs::write(mount.path("d/new.txt"), b"y")), Some(libc::EROFS));
    assert_eq!(erofs(fs::create_dir(mount.path("d/sub"))), Some(libc::EROFS));
    assert_eq!(erofs(fs::remove_file(&f)), Some(libc::EROFS));
    assert_eq!(erofs(fs::rename(&f, mount.path("d/g.txt"))), Some(libc::EROFS));
    assert_eq!(fs::read(&f).expect("still readable"), b"x");
    assert!(fs::metadata(mount.path("missing")).is_err_and(|e| e.kind() == ErrorKind::NotFound));
}

#[test]
fn sigterm_unmounts_cleanly() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Kind::Vsftpd, |r| write_file(&r.join("f"), b"1"));
    let mount = Mount::start(&server);
    let pid = mount.pid().expect("daemon pid") as libc::pid_t;
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while mount.is_mounted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!mount.is_mounted(), "SIGTERM unmounted the file system");
}
