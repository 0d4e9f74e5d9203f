//! Proves the test harness itself (tests/common, scripts/ftps-server) against
//! curl, independently of mastfs: every server kind really serves FTPS the
//! way the mastfs tests assume.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Auth, BackgroundMount, Kind, Mount, Server};

const MIB: u64 = 1 << 20;

fn ready(kind: Kind) -> bool {
    common::require_server(kind) && common::require_program("curl")
}

fn ok_stdout(out: &Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: curl failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

/// Names from a bare listing (NLST), without `.` and `..`.
fn names(server: &Server, auth: Auth, dir: &str) -> Vec<String> {
    let out = server.curl(auth, &["--list-only"], &format!("{}/", dir.trim_end_matches('/')));
    let text = String::from_utf8(ok_stdout(&out, "NLST")).expect("UTF-8 listing");
    let mut v: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .filter(|l| !l.is_empty() && l != "." && l != "..")
        .collect();
    v.sort();
    v
}

fn serves_listing_ranged_reads_and_refuses_unreadable_files(kind: Kind, implicit: bool) {
    if !ready(kind) {
        return;
    }
    let mut builder = Server::builder(kind).with_user();
    if implicit {
        builder = builder.implicit();
    }
    let server = builder.start();
    common::write_pattern_file(&server.path("data/file.bin"), 42, 3 * MIB);
    common::make_unreadable_file(&server.path("data/secret.fits"));

    for auth in [Auth::Anonymous, Auth::Password] {
        let listed = names(&server, auth, "data");
        assert_eq!(listed, ["file.bin", "secret.fits"], "{kind:?} {auth:?} listing");

        let mid = ok_stdout(&server.curl(auth, &["--range", "100-199"], "data/file.bin"), "range");
        assert_eq!(mid, common::pattern_bytes(42, 100, 100), "{kind:?} {auth:?} bytes 100-199");

        let start = 3 * MIB - 1000;
        let tail = ok_stdout(&server.curl(auth, &["--range", &format!("{start}-")], "data/file.bin"), "tail range");
        assert_eq!(tail, common::pattern_bytes(42, start, 1000), "{kind:?} {auth:?} last 1000 bytes");

        let secret = server.curl(auth, &[], "data/secret.fits");
        assert!(!secret.status.success() && secret.stdout.is_empty(), "{kind:?} {auth:?} sent a mode-0000 file");
    }
    // A server writes its transfer log after the client has gone; under load that can lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The two tails ran to the end of the file, so at least their 2 x 1000 bytes are logged; a
    // transfer curl ended early is logged with what the server had written when it noticed,
    // which under load can be nothing (seen with pure-ftpd).
    while (server.retr_count() < 4 || server.bytes_sent() < 2000) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(server.retr_count() >= 4, "{kind:?} logged no transfers in {}", server.log.display());
    assert!(server.bytes_sent() >= 2000, "{kind:?} logged fewer bytes than its complete transfers sent");
}

#[test]
fn vsftpd_explicit_serves_listing_and_ranged_reads_to_anonymous_and_password_users() {
    serves_listing_ranged_reads_and_refuses_unreadable_files(Kind::Vsftpd, false);
}

#[test]
fn pure_ftpd_explicit_serves_listing_and_ranged_reads_to_anonymous_and_password_users() {
    serves_listing_ranged_reads_and_refuses_unreadable_files(Kind::PureFtpd, false);
}

#[test]
fn pyftpdlib_explicit_serves_listing_and_ranged_reads_to_anonymous_and_password_users() {
    serves_listing_ranged_reads_and_refuses_unreadable_files(Kind::Pyftpdlib, false);
}

#[test]
fn vsftpd_implicit_serves_listing_and_ranged_reads_to_anonymous_and_password_users() {
    serves_listing_ranged_reads_and_refuses_unreadable_files(Kind::Vsftpd, true);
}

#[test]
fn pyftpdlib_implicit_serves_listing_and_ranged_reads_to_anonymous_and_password_users() {
    serves_listing_ranged_reads_and_refuses_unreadable_files(Kind::Pyftpdlib, true);
}

#[test]
fn a_client_trusting_an_unrelated_ca_is_refused_by_every_server_kind() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::start(kind);
        let out = Command::new("curl")
            .args(["--silent", "--ssl-reqd", "--max-time", "20", "--cacert"])
            .arg(&server.wrong_ca_file)
            .arg(server.url("/"))
            .output()
            .expect("run curl");
        assert_eq!(out.status.code(), Some(60), "{kind:?}: want curl's certificate error");
        let good = server.curl(Auth::Anonymous, &[], "/");
        ok_stdout(&good, "listing with the right CA");
    }
}

#[test]
fn a_plain_server_serves_clear_text_and_cannot_satisfy_a_tls_client() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::builder(kind).plain().start();
        common::write_file(&server.path("a.txt"), b"clear\n");
        let out = Command::new("curl")
            .args(["--silent", "--max-time", "20"])
            .arg(server.url("a.txt"))
            .output()
            .expect("run curl");
        assert_eq!(ok_stdout(&out, "plain download"), b"clear\n", "{kind:?}");
        let tls = Command::new("curl")
            .args(["--silent", "--ssl-reqd", "--max-time", "20", "--cacert"])
            .arg(&server.ca_file)
            .arg(server.url("a.txt"))
            .output()
            .expect("run curl");
        assert_eq!(tls.status.code(), Some(64), "{kind:?}: want 'requested SSL level failed'");
    }
}

#[test]
fn a_tls_12_capped_server_refuses_tls_13_clients_and_serves_tls_12_ones() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::builder(kind).tls_max_12().start();
        common::write_file(&server.path("a.txt"), b"twelve\n");
        let only13 = server.curl(Auth::Anonymous, &["--tlsv1.3"], "a.txt");
        // 35: the TLS handshake failed (not a refused login or a missing file).
        assert_eq!(only13.status.code(), Some(35), "{kind:?} and a TLS 1.3 client: {}", common::stderr_of(&only13));
        let v12 = server.curl(Auth::Anonymous, &["--tls-max", "1.2"], "a.txt");
        assert_eq!(ok_stdout(&v12, "TLS 1.2 download"), b"twelve\n", "{kind:?}");
    }
}

#[test]
fn max_clients_turns_away_the_next_control_connection_with_421() {
    for kind in Kind::ALL {
        if !common::require_server(kind) {
            continue;
        }
        let server = Server::builder(kind).max_clients(2).start();
        let banner = |stream: &mut TcpStream| -> String {
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
            let mut buf = [0u8; 4096];
            let mut text = String::new();
            // A multi-line 220 (pure-ftpd) may arrive in pieces: read until a
            // final "NNN " line.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if text.lines().any(|l| l.len() >= 4 && l.as_bytes()[3] == b' ') {
                    break;
                }
            }
            text
        };
        let addr = (server.host.as_str(), server.port);
        let mut first = TcpStream::connect(addr).expect("connect 1");
        let mut second = TcpStream::connect(addr).expect("connect 2");
        assert!(banner(&mut first).starts_with("220"), "{kind:?} first connection");
        assert!(banner(&mut second).starts_with("220"), "{kind:?} second connection");
        let mut third = TcpStream::connect(addr).expect("connect 3");
        let refused = banner(&mut third);
        assert!(refused.starts_with("421"), "{kind:?} third connection got {refused:?}");
    }
}

#[test]
fn every_server_kind_lists_all_10000_entries_of_a_big_directory() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::start(kind);
        let mut want = common::make_big_dir(&server.path("big"), 10_000);
        want.sort();
        assert_eq!(names(&server, Auth::Anonymous, "big"), want, "{kind:?}");
    }
}

#[test]
fn every_server_kind_lists_and_serves_hostile_file_names() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::start(kind);
        let mut want = common::make_hostile_files(&server.path("odd"));
        want.sort();
        // Whether a bare NLST shows dot files differs by server (vsftpd
        // hides them unless asked with -a), so compare the others.
        let undotted = |v: &[String]| -> Vec<String> { v.iter().filter(|n| !n.starts_with('.')).cloned().collect() };
        let listed = names(&server, Auth::Anonymous, "odd");
        assert_eq!(undotted(&listed), undotted(&want), "{kind:?}");
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|name| {
                let got = server.curl(Auth::Anonymous, &[], &format!("odd/{name}"));
                let served = got.status.success() && got.stdout == name.as_bytes();
                (served != kind.serves_name(name))
                    .then(|| format!("{name:?} served={served}: {}", String::from_utf8_lossy(&got.stderr).trim()))
            })
            .collect();
        assert!(wrong.is_empty(), "{kind:?} unlike Kind::serves_name: {wrong:#?}");
    }
}

#[test]
fn symlinks_inside_the_root_are_followed_and_those_leaving_it_are_not() {
    for kind in Kind::ALL {
        if !ready(kind) {
            continue;
        }
        let server = Server::start(kind);
        common::make_symlinks(&server.path("links"));
        let via_link = server.curl(Auth::Anonymous, &[], "links/link_to_file");
        assert_eq!(ok_stdout(&via_link, "link_to_file"), b"symlink target\n", "{kind:?}");
        let escape = server.curl(Auth::Anonymous, &[], "links/escape");
        // 78: the server answered that the file does not exist (not a connection or TLS failure).
        assert_eq!(
            escape.status.code(),
            Some(78),
            "{kind:?} and a link out of its root: {}",
            common::stderr_of(&escape)
        );
    }
}

/// An FTPS client that logs in and then holds its session until its stdin closes: vsftpd
/// moves a logged-in session into a process session of its own, out of the server's group.
const HOLD_A_SESSION: &str = r#"
import ftplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ftp = ftplib.FTP_TLS(context=ctx, timeout=30)
ftp.connect(sys.argv[1], int(sys.argv[2]))
ftp.auth()
ftp.login()
ftp.prot_p()
print(ftp.pwd(), flush=True)
sys.stdin.read()
"#;

#[test]
fn every_server_kind_ends_all_its_processes_when_stopped_with_a_client_logged_in() {
    for kind in Kind::ALL {
        if !common::require_server(kind) {
            continue;
        }
        let server = Server::start(kind);
        let mut client = Command::new("python3")
            .args(["-c", HOLD_A_SESSION, &server.host, &server.port.to_string()])
            .arg(&server.ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the FTPS client");
        let stdout = client.stdout.take().expect("piped stdout");
        let logged_in = common::within("the client's login", Duration::from_secs(60), move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let logged_in = logged_in.expect("read the client's stdout");
        assert!(logged_in.starts_with('/'), "{kind:?}: the client did not log in: {logged_in:?}");
        let running = common::processes_tagged(&server.tag);
        // The control script and the server, plus at least one session where the server forks.
        let least = if kind == Kind::Pyftpdlib { 2 } else { 3 };
        assert!(running.len() >= least, "{kind:?}: the tag marks the server's processes: {running:#?}");

        let left = server.stop_and_list_leftovers();
        drop(client.stdin.take());
        let _ = common::finish(client, "the FTPS client", Duration::from_secs(30));
        assert!(left.is_empty(), "{kind:?}: processes outlived the stopped server: {left:#?}");
    }
}

#[test]
fn a_dropped_mount_leaves_neither_its_mount_nor_its_daemon_behind() {
    if !common::ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let mount = Mount::start(&server);
    let (tag, mountpoint) = (mount.tag.clone(), mount.mountpoint.clone());
    assert!(!common::processes_tagged(&tag).is_empty(), "the tag marks the daemon");
    drop(mount);
    assert!(!common::is_mounted(&mountpoint));
    assert_eq!(common::processes_tagged(&tag), [], "processes of the dropped mount");
}

#[test]
fn a_background_mount_a_test_never_unmounts_is_unmounted_and_its_daemon_ended_by_its_guard() {
    if !common::ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let guard = BackgroundMount::new();
    let mountpoint = guard.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mount point");
    let out = common::run(
        guard
            .command()
            .args(["mount", "--host", &server.host, "--port", &server.port.to_string(), "--ca-file"])
            .arg(&server.ca_file)
            .arg("--cache-dir")
            .arg(guard.path().join("cache"))
            .arg(&mountpoint),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "mount: {}", common::stderr_of(&out));
    assert!(common::is_mounted(&mountpoint));
    let tag = guard.tag().to_owned();
    let daemons = common::processes_tagged(&tag);
    assert_eq!(daemons.len(), 1, "the forked daemon carries the guard's tag: {daemons:#?}");
    // As a test that fails before its `mastfs umount` would: the guard alone cleans up.
    drop(guard);
    assert!(!common::is_mounted(&mountpoint));
    assert_eq!(common::processes_tagged(&tag), [], "processes of the background mount");
}

#[test]
fn a_read_from_a_mount_whose_daemon_stopped_answering_fails_instead_of_hanging_the_test() {
    if !common::ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    common::write_file(&server.path("f.txt"), b"data\n");
    let mount = Mount::builder(&server).hang_limit(Duration::from_secs(5)).start();
    let pid = mount.pid().expect("daemon pid") as libc::pid_t;
    // SAFETY: stopping the daemon this test started; the hang guard kills it later.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let path = mount.path("f.txt");
    let read = common::within("a read from a stopped daemon", Duration::from_secs(60), move || std::fs::read(path));
    let err = read.expect_err("nothing can answer this read");
    // The kernel aborts the FUSE connection of a dead daemon: ECONNABORTED for a request in
    // flight, ENOTCONN for one made after.
    assert!(matches!(err.raw_os_error(), Some(libc::ECONNABORTED) | Some(libc::ENOTCONN)), "{err:?}");
}

#[test]
fn pattern_bytes_of_a_range_equal_the_same_slice_of_the_whole_stream() {
    let whole = common::pattern_bytes(7, 0, 100);
    assert_eq!(common::pattern_bytes(7, 13, 50), whole[13..63]);
    assert_ne!(common::pattern_bytes(8, 0, 100), whole);
}

#[test]
fn a_mast_like_tree_has_fits_headers_of_whole_2880_byte_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = common::make_mast_tree(dir.path(), 4096);
    assert_eq!(files.len(), 4);
    let bytes = std::fs::read(dir.path().join(&files[0])).expect("read FITS file");
    assert_eq!(bytes.len(), 2880 + 4096);
    let header = String::from_utf8_lossy(&bytes[..2880]);
    assert!(header.starts_with("SIMPLE  =                    T"));
    assert!(header.contains("TELESCOP= 'HST     '"));
    let cards: Vec<&str> = (0..36).map(|i| &header[i * 80..(i + 1) * 80]).collect();
    let end = cards.iter().position(|c| c.trim_end() == "END").expect("an END card");
    assert!(cards[end + 1..].iter().all(|c| c.trim().is_empty()), "padding after END is blank");
    assert!(dir.path().join("pub/README.txt").exists());
}
