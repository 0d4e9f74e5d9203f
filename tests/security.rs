//! Secure defaults and hostile input: certificate and name checks, no plaintext fallback,
//! secrets kept out of every trace, private caches, FUSE access control, read-only
//! enforcement, hostile listings, and servers that speak garbage.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;
use proptest::prelude::*;

const HANG: Duration = Duration::from_secs(90);
/// A mount with `--timeout 2` that has not given up on a garbage server after this long never will.
const GIVE_UP: Duration = Duration::from_secs(30);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The one `mastfs: ...` line a refused mount prints, lower-cased.
fn refusal_line(stderr: &str) -> String {
    stderr.lines().find(|l| l.starts_with("mastfs:")).unwrap_or_default().to_lowercase()
}

// ------------------------------------------------------------------ TLS: trust, names, no fallback

#[test]
fn an_unknown_ca_refuses_the_mount_before_any_credential_is_sent() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).with_user().start();
    let failure = match Mount::builder(&server).password_user().wrong_ca().try_start() {
        Ok(_) => panic!("a server signed by an unknown CA was mounted"),
        Err(f) => f,
    };
    let line = refusal_line(&failure.stderr);
    assert!(line.contains("certificate"), "a clear reason: {}", failure.stderr);
    let log = fs::read_to_string(&server.protocol_log).expect("the server's protocol log");
    // The log holds this very attempt (an empty or unrelated log would prove nothing).
    assert!(log.contains("\"AUTH TLS\""), "the server logged mastfs asking for TLS:\n{log}");
    assert!(!log.contains("USER") && !log.contains(TEST_PASSWORD), "credentials reached the server:\n{log}");
}

#[test]
fn a_host_name_the_certificate_does_not_cover_refuses_the_mount() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let pasv = Relay::free_pasv_range(8);
    let root = new_root();
    write_file(&root.path().join("f.txt"), b"named\n");
    let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = Relay::start(server.port, pasv);
    // Same server, same trusted CA, but reached as 127.0.0.2: not a name in its certificate.
    let failure = match Mount::builder(&server).try_start_via(&relay.host(), relay.port) {
        Ok(_) => panic!("mounted a server whose certificate does not name 127.0.0.2"),
        Err(f) => f,
    };
    assert!(relay.stats().control_connections > 0, "the attempt went through the relay");
    let line = refusal_line(&failure.stderr);
    assert!(line.contains("certificate"), "a clear reason: {}", failure.stderr);
    let log = fs::read_to_string(&server.protocol_log).expect("the server's protocol log");
    assert!(log.contains("\"AUTH TLS\""), "the server logged mastfs asking for TLS through the relay:\n{log}");
    assert!(!log.contains("USER"), "a login was attempted over an unverified connection:\n{log}");

    // The name the certificate does carry mounts.
    let by_name = Mount::builder(&server).start_via("localhost", server.port);
    assert_eq!(fs::read(by_name.path("f.txt")).expect("read via localhost"), b"named\n");
}

#[test]
fn a_server_without_tls_refuses_the_mount_and_never_sees_the_login_in_clear() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).plain().with_user().start();
    let failure = match Mount::builder(&server).password_user().try_start() {
        Ok(_) => panic!("mounted a server without TLS"),
        Err(f) => f,
    };
    let line = refusal_line(&failure.stderr);
    assert!(line.contains("tls"), "a clear reason: {}", failure.stderr);
    let log = fs::read_to_string(&server.protocol_log).expect("the server's protocol log");
    let commands: Vec<&str> = log.lines().filter(|l| l.contains("FTP command")).collect();
    assert!(commands.iter().any(|l| l.contains("AUTH TLS")), "mastfs asked for TLS first:\n{log}");
    assert!(!commands.iter().any(|l| l.contains("USER") || l.contains("PASS")), "login sent in clear:\n{log}");
    assert!(!log.contains(TEST_PASSWORD), "the password crossed the wire in clear");
}

#[test]
fn insecure_mounts_an_unverifiable_server_with_a_warning() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let pasv = Relay::free_pasv_range(8);
    let root = new_root();
    write_file(&root.path().join("f.txt"), b"unverified\n");
    let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = Relay::start(server.port, pasv);
    let mount = Mount::builder(&server).no_ca().args(["--insecure"]).start_via(&relay.host(), relay.port);
    assert_eq!(fs::read(mount.path("f.txt")).expect("read"), b"unverified\n");
    let stderr = mount.stderr();
    assert!(stderr.contains("WARNING") && stderr.contains("--insecure"), "a warning on stderr: {stderr}");
}

// ------------------------------------------------------------------ secrets and private files

/// Pids whose command line mentions `needle` (the daemon of a background mount).
fn pids_with_arg(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_bytes();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle)))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() {
            walk(&p, out);
        }
    }
}

#[test]
fn the_password_is_in_no_command_line_log_or_cache_file_and_the_cache_is_private() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    write_pattern_file(&root.path().join("secret.bin"), 31, 2 * (1 << 20) + 5);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).with_user().start();
    // Unmounts and ends the daemon if an assertion fails before the umount below.
    let dir = BackgroundMount::new();
    let (mnt, cache, log) = (dir.path().join("mnt"), dir.path().join("cache"), dir.path().join("logs/mastfs.log"));
    fs::create_dir(&mnt).expect("mount point");

    // A background mount, as users run it, logging everything it can.
    let out = run(
        dir.command()
            .args(["mount", "--host", &server.host, "--port", &server.port.to_string(), "--user", TEST_USER])
            .arg("--ca-file")
            .arg(&server.ca_file)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--log-file")
            .arg(&log)
            .arg("-vvv")
            .arg(&mnt)
            .env("MASTFS_PASSWORD", TEST_PASSWORD),
        HANG,
    );
    assert!(out.status.success(), "mount failed: {}", stderr_of(&out));
    let daemons = pids_with_arg(&mnt);
    let copied = run(Command::new("cat").arg(mnt.join("secret.bin")), HANG);
    let umount = || run(Command::new(env!("CARGO_BIN_EXE_mastfs")).arg("umount").arg(&mnt), HANG);
    if !copied.status.success() {
        umount();
        panic!("read through the mount failed: {}", stderr_of(&copied));
    }
    assert!(copied.stdout == pattern_bytes(31, 0, 2 * (1 << 20) + 5));
    assert_eq!(daemons.len(), 1, "one daemon serves the mount: {daemons:?}");
    let cmdline = fs::read(format!("/proc/{}/cmdline", daemons[0])).expect("daemon cmdline");
    let umounted = umount();
    assert!(umounted.status.success(), "umount: {}", stderr_of(&umounted));

    let secret = TEST_PASSWORD.as_bytes();
    assert!(!contains(&cmdline, secret), "password in the daemon's command line");
    assert!(!contains(&out.stdout, secret) && !contains(&out.stderr, secret), "password printed by mount");
    let log_text = fs::read(&log).expect("the log file exists");
    assert!(log_text.len() > 100, "-vvv logged something ({} bytes)", log_text.len());
    assert!(!contains(&log_text, secret), "password in the log file");
    assert!(!contains(&log_text, b"PASS "), "the PASS command line was logged");
    assert_eq!(fs::metadata(&log).expect("log").mode() & 0o777, 0o600, "the log is private");

    let mut files = Vec::new();
    walk(&cache, &mut files);
    let blocks = files.iter().filter(|p| p.extension().is_some_and(|x| x == "blk")).count();
    assert!(blocks >= 3, "the read was cached ({blocks} blocks)");
    assert_eq!(fs::metadata(&cache).expect("cache").mode() & 0o777, 0o700, "cache dir");
    for p in &files {
        let meta = fs::symlink_metadata(p).expect("metadata");
        let mode = meta.mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
            assert!(!contains(&fs::read(p).expect("cache file"), secret), "password in {}", p.display());
        }
    }

    // The foreground mount's own stderr at full verbosity holds no password either.
    let fg = Mount::builder(&server).password_user().args(["-vvv"]).start();
    assert!(fs::read(fg.path("secret.bin")).is_ok());
    let fg_log = fg.unmount();
    assert!(fg_log.len() > 100, "-vvv logged something");
    assert!(!fg_log.contains(TEST_PASSWORD), "password on the foreground mount's stderr");
}

// ------------------------------------------------------------------ access control and read-only

fn as_nobody(args: &[&str], path: &Path) -> Output {
    run(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(args).arg(path), HANG)
}

#[test]
fn other_users_are_refused_unless_allow_other_is_given() {
    if !ready(Kind::Vsftpd) || !require_program("setpriv") {
        return;
    }
    let root = new_root();
    write_file(&root.path().join("f.txt"), b"shared\n");
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();

    let private = Mount::start(&server);
    // The mount point's parent must be enterable for the check to be about the mount itself.
    let parent = private.mountpoint.parent().expect("parent").to_path_buf();
    set_mode(&parent, 0o755);
    let denied = as_nobody(&["cat"], &private.path("f.txt"));
    assert!(!denied.status.success(), "another uid read a mount made without allow_other");
    assert!(stderr_of(&denied).contains("Permission denied"), "EACCES: {}", stderr_of(&denied));
    drop(private);

    let shared = Mount::builder(&server).args(["-o", "allow_other"]).start();
    set_mode(shared.mountpoint.parent().expect("parent"), 0o755);
    let allowed = as_nobody(&["cat"], &shared.path("f.txt"));
    assert!(allowed.status.success(), "allow_other: {}", stderr_of(&allowed));
    assert_eq!(allowed.stdout, b"shared\n");
}

#[test]
fn every_kind_of_change_through_the_mount_fails_with_erofs() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    write_file(&root.path().join("d/f.txt"), b"original\n");
    make_dirs(&root.path().join("d/sub"));
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    let mount = Mount::start(&server);
    let d = mount.path("d");
    let f = d.join("f.txt");
    let sh = |script: &str| -> Vec<String> { vec!["sh".into(), "-c".into(), script.into()] };
    let q = |p: &Path| format!("'{}'", p.display());
    let attempts: Vec<Vec<String>> = vec![
        vec!["touch".into(), d.join("new").display().to_string()],
        vec!["mkdir".into(), d.join("newdir").display().to_string()],
        vec!["rm".into(), "-f".into(), f.display().to_string()],
        vec!["rmdir".into(), d.join("sub").display().to_string()],
        vec!["mv".into(), f.display().to_string(), d.join("moved").display().to_string()],
        vec!["chmod".into(), "600".into(), f.display().to_string()],
        vec!["ln".into(), "-s".into(), "f.txt".into(), d.join("link").display().to_string()],
        vec!["ln".into(), f.display().to_string(), d.join("hard").display().to_string()],
        vec!["truncate".into(), "-s".into(), "0".into(), f.display().to_string()],
        vec!["cp".into(), "/etc/hostname".into(), d.join("copied").display().to_string()],
        sh(&format!("echo overwrite > {}", q(&f))),
        sh(&format!("echo append >> {}", q(&f))),
    ];
    for argv in &attempts {
        let out = run(Command::new(&argv[0]).args(&argv[1..]), HANG);
        assert!(!out.status.success(), "{argv:?} succeeded on a read-only mount");
        assert!(stderr_of(&out).contains("Read-only file system"), "{argv:?}: want EROFS, got {}", stderr_of(&out));
    }
    assert_eq!(fs::read(&f).expect("still readable"), b"original\n");
    assert_eq!(fs::read(root.path().join("d/f.txt")).expect("server copy"), b"original\n");
}

// ------------------------------------------------------------------ hostile listings

/// Names that a listing line cannot carry as they are. A bare LF (or CR) inside a name is
/// still distinguishable from the CRLF that ends a listing line, so none of these may turn
/// into an entry the server does not have, however a naive parser would split them.
fn names_with_line_breaks() -> Vec<String> {
    vec![
        "cr\rin name".into(),
        "lf\nin name".into(),
        "tab\tin name".into(),
        "evil\ntype=file;size=999;modify=20200101000000; injected".into(),
        "evil2\n-rw-r--r--    1 0        0             999 Jan 01  2020 injected".into(),
    ]
}

/// Names with a CRLF inside: on the wire these are indistinguishable from two listing lines,
/// so a client can only be asked to survive them.
fn names_with_crlf() -> Vec<String> {
    vec![
        "crlf\r\nin name".into(),
        "evil3\r\ntype=file;size=999;modify=20200101000000; injected".into(),
        "evil4\r\n-rw-r--r--    1 0        0             999 Jan 01  2020 injected".into(),
    ]
}

fn read_dir_with_deadline(dir: PathBuf) -> HashSet<OsString> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let names: std::io::Result<HashSet<OsString>> =
            fs::read_dir(&dir).and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect());
        let _ = tx.send(names);
    });
    rx.recv_timeout(HANG).expect("readdir hung").expect("readdir")
}

fn hostile_listing(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let root = new_root();
    let big = root.path().join("big");
    make_big_dir(&big, 10_000);
    for name in names_with_line_breaks().into_iter().chain(["back\\slash".into(), "y".repeat(255)]) {
        write_file(&big.join(&name), b"x");
    }
    let on_server: HashSet<OsString> =
        fs::read_dir(&big).expect("server dir").map(|e| e.expect("entry").file_name()).collect();
    let crlf = root.path().join("crlf");
    make_dirs(&crlf);
    for name in names_with_crlf() {
        write_file(&crlf.join(&name), b"x");
    }
    write_file(&crlf.join("plain.txt"), b"plain\n");
    let server = Server::builder(kind).root(root.path()).start();
    let mount = Mount::start(&server);

    let ls = run(Command::new("ls").arg("-l").arg(mount.path("big")), HANG);
    assert!(ls.status.success(), "{kind:?}: ls -l failed: {}", stderr_of(&ls));
    let lines = String::from_utf8_lossy(&ls.stdout).lines().filter(|l| l.starts_with('-')).count();
    assert!(lines >= 10_000, "{kind:?}: ls -l printed {lines} files");
    let listed = read_dir_with_deadline(mount.path("big"));
    let regular = listed.iter().filter(|n| n.as_bytes().starts_with(b"f") && n.len() == 12).count();
    assert_eq!(regular, 10_000, "{kind:?}: every ordinary entry listed");
    assert!(listed.contains(&OsString::from("y".repeat(255))), "{kind:?}: the 255-byte name");
    assert!(listed.contains(&OsString::from("back\\slash")), "{kind:?}: the backslash name");
    let mut invented: Vec<&OsString> = listed.difference(&on_server).collect();
    invented.sort();
    assert!(invented.is_empty(), "{kind:?}: names the server does not have: {invented:?}");

    let ls = run(Command::new("ls").arg("-l").arg(mount.path("crlf")), HANG);
    assert!(ls.status.success(), "{kind:?}: ls -l of CRLF names failed: {}", stderr_of(&ls));
    assert_eq!(fs::read(mount.path("crlf/plain.txt")).expect("a plain neighbour reads"), b"plain\n");
}

#[test]
fn ls_l_of_10000_entries_with_control_characters_and_forged_lines_in_names_on_vsftpd() {
    hostile_listing(Kind::Vsftpd);
}

#[test]
fn ls_l_of_10000_entries_with_control_characters_and_forged_lines_in_names_on_pyftpdlib() {
    hostile_listing(Kind::Pyftpdlib);
}

// ------------------------------------------------------------------ servers that speak garbage

/// A plain-TCP "FTP server" on 127.0.0.1 that runs `script` on every connection.
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Script = dyn Fn(&mut TcpStream, &AtomicBool) + Send + Sync;

impl FakeServer {
    fn start(script: Arc<Script>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let (script, flag) = (Arc::clone(&script), Arc::clone(&flag));
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                            script(&mut conn, &flag);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeServer { port, stop, thread: Some(thread) }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one command line from the client (empty if it closed or said nothing in time).
fn read_command(conn: &mut TcpStream) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let _ = BufReader::new(conn.try_clone().expect("clone")).read_line(&mut line);
    line
}

/// Writes `chunk` over and over until the client goes away or the server stops.
fn flood(conn: &mut TcpStream, stop: &AtomicBool, chunk: &[u8], pause: Duration) {
    while !stop.load(Ordering::SeqCst) {
        if conn.write_all(chunk).is_err() {
            return;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

struct Attempt {
    out: Output,
    peak_rss_kib: u64,
}

/// `mastfs mount --foreground` against the fake server: how it ended and its peak memory.
fn mount_fake(port: u16) -> Attempt {
    let dir = tempfile::tempdir().expect("scratch");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mastfs"))
        .args(["mount", "--foreground", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--insecure", "--timeout", "2", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mastfs");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + GIVE_UP;
    let mut peak = 0;
    let status = loop {
        if let Ok(status_text) = fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let rss = status_text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            peak = peak.max(rss);
        }
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline || is_mounted(&mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
            let _ = child.kill();
            let _ = child.wait();
            panic!("mastfs did not give up on a garbage server within {GIVE_UP:?} (mounted: {})", is_mounted(&mnt));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    Attempt { out: Output { status, stdout: Vec::new(), stderr }, peak_rss_kib: peak }
}

fn assert_refused(attempt: &Attempt, what: &str) {
    let stderr = stderr_of(&attempt.out);
    assert!(!attempt.out.status.success(), "{what}: the mount succeeded");
    assert!(stderr.lines().any(|l| l.starts_with("mastfs:")), "{what}: no clear message: {stderr}");
    assert!(attempt.peak_rss_kib < 200 * 1024, "{what}: peak RSS {} KiB", attempt.peak_rss_kib);
}

fn refused_by(what: &str, script: Arc<Script>) {
    let fake = FakeServer::start(script);
    let attempt = mount_fake(fake.port);
    assert_refused(&attempt, what);
}

#[test]
fn a_binary_greeting_refuses_the_mount() {
    refused_by(
        "binary greeting",
        Arc::new(|c, _| {
            let _ = c.write_all(b"\x00\xff\xfe garbage \x1b[31m\r\n");
            read_command(c);
        }),
    );
}

#[test]
fn a_greeting_that_never_ends_refuses_the_mount_without_eating_memory() {
    refused_by(
        "endless multi-line greeting",
        Arc::new(|c, stop| {
            let line = format!("220-{}\r\n", "x".repeat(200));
            flood(c, stop, line.as_bytes(), Duration::ZERO)
        }),
    );
}

#[test]
fn an_endless_line_without_newline_refuses_the_mount_without_eating_memory() {
    refused_by("endless line", Arc::new(|c, stop| flood(c, stop, &[b'A'; 65536], Duration::ZERO)));
}

#[test]
fn a_greeting_dripping_in_slower_than_the_timeout_never_hangs_the_mount() {
    // Each line arrives within --timeout (2 s), so no single read times out: only a
    // deadline on the whole reply can end this.
    refused_by(
        "dripping greeting",
        Arc::new(|c, stop| flood(c, stop, b"220-still greeting you\r\n", Duration::from_millis(500))),
    );
}

#[test]
fn a_server_that_greets_and_then_falls_silent_refuses_the_mount() {
    refused_by(
        "silence after the greeting",
        Arc::new(|c, stop| {
            let _ = c.write_all(b"220 hello\r\n");
            read_command(c);
            while !stop.load(Ordering::SeqCst) && c.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }),
    );
}

#[test]
fn garbage_in_answer_to_auth_tls_refuses_the_mount() {
    refused_by(
        "garbage AUTH reply",
        Arc::new(|c, _| {
            let _ = c.write_all(b"220 hello\r\n");
            read_command(c);
            let _ = c.write_all(b"lol what\r\n");
            read_command(c);
        }),
    );
}

#[test]
fn a_server_that_accepts_auth_tls_and_then_sends_no_tls_refuses_the_mount() {
    refused_by(
        "non-TLS bytes after 234",
        Arc::new(|c, _| {
            let _ = c.write_all(b"220 hello\r\n");
            read_command(c);
            let _ = c.write_all(b"234 go ahead\r\n");
            let _ = c.write_all(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".repeat(200));
            read_command(c);
        }),
    );
}

#[test]
fn a_server_that_accepts_and_closes_refuses_the_mount() {
    refused_by("accept and close", Arc::new(|_, _| {}));
}

fn reply_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(vec![&b""[..], b"220 ", b"220-", b"234 ", b"421 ", b"530 ", b"2", b"99999 "]);
    (prefix, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(p, rest)| {
        let mut v = p.to_vec();
        v.extend(rest);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_garbage_greeting_or_auth_reply_refuses_the_mount_cleanly(
        greeting in reply_bytes(),
        auth_reply in reply_bytes(),
        close_early in any::<bool>(),
    ) {
        let script: Arc<Script> = Arc::new(move |c, _| {
            let _ = c.write_all(&greeting);
            if close_early {
                return;
            }
            let _ = c.write_all(b"\r\n");
            read_command(c);
            let _ = c.write_all(&auth_reply);
            let _ = c.write_all(b"\r\n");
        });
        refused_by("random replies", script);
    }
}
