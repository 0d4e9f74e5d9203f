//! Offline use, end to end: real servers, real mounts, ordinary tools. A mount whose server
//! cannot be reached serves the directories and blocks an earlier mount cached, fails the rest
//! at once with "Network is unreachable" (and its log says why), and goes online by itself
//! when the server is back; `--offline` never connects; a server that answers and refuses
//! still refuses the mount. Every tool runs under a deadline: that nothing hangs is checked,
//! never how fast anything is.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;

const MIB: u64 = 1 << 20;
/// Far beyond any legitimate run of one tool here: reaching it is a hang.
const HANG: Duration = Duration::from_secs(90);
/// Far beyond the longest wait between two tries of an offline mount (30 s).
const BACK_ONLINE: Duration = Duration::from_secs(150);

/// The served tree: `data/` (one file read while online, one never read, a subdirectory),
/// `deep/x/y/z.bin` (reached by name only: `deep/x` and `deep/x/y` are never listed), and
/// `never/` (never visited).
fn fill(root: &Path) {
    write_pattern_file(&root.join("data/a.bin"), 1, 2 * MIB + 5);
    write_pattern_file(&root.join("data/b.bin"), 2, MIB + 3);
    write_file(&root.join("data/sub/c.txt"), b"listed and read\n");
    write_pattern_file(&root.join("deep/x/y/z.bin"), 3, 70_000);
    write_file(&root.join("never/seen.txt"), b"never visited\n");
}

/// A served root, the server's kept files (so a restarted server has the same certificate),
/// and a scratch directory for the mount point, the cache and the daemons.
struct Setup {
    root: tempfile::TempDir,
    workdir: tempfile::TempDir,
    bg: BackgroundMount,
}

impl Setup {
    fn new() -> Setup {
        let root = new_root();
        fill(root.path());
        let workdir = tempfile::Builder::new().prefix("mastfs-offline-server-").tempdir().expect("workdir");
        let bg = BackgroundMount::new();
        fs::create_dir(bg.path().join("mnt")).expect("mount point");
        Setup { root, workdir, bg }
    }

    /// A server of `kind` on this root (on `port`, or a free one).
    fn serve(&self, kind: Kind, port: u16, user: bool) -> Server {
        let mut b = Server::builder(kind).root(self.root.path()).workdir(self.workdir.path()).port(port);
        if user {
            b = b.with_user();
        }
        b.start()
    }

    fn mnt(&self) -> PathBuf {
        self.bg.path().join("mnt")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    fn cache(&self) -> PathBuf {
        self.bg.path().join("cache")
    }

    /// `mastfs mount` in the background, as users run it, against 127.0.0.1:`port` trusting
    /// `ca`; returns once the command exits (the mount is live, or refused).
    fn mount(&self, port: u16, ca: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.bg.command();
        cmd.args(["mount", "--host", "127.0.0.1", "--port", &port.to_string(), "--timeout", "5"])
            .arg("--ca-file")
            .arg(ca)
            .arg("--cache-dir")
            .arg(self.cache())
            .args(extra)
            .arg(self.mnt())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd, Duration::from_secs(60))
    }

    /// `mastfs umount`, then waits for the daemon to end.
    fn umount(&self) {
        let out = run(Command::new(env!("CARGO_BIN_EXE_mastfs")).arg("umount").arg(self.mnt()), HANG);
        assert!(out.status.success(), "umount: {}", stderr_of(&out));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !processes_tagged(self.bg.tag()).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the daemon outlived its unmount: {:?}",
                processes_tagged(self.bg.tag())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The background daemons' log.
    fn log(&self) -> String {
        fs::read_to_string(self.cache().join("mastfs.log")).unwrap_or_default()
    }

    /// One line of the mount's live counters.
    fn counter(&self, name: &str) -> u64 {
        let out = tool("cat", &self.at(".mastfs-stats"));
        assert!(out.status.success(), "cat .mastfs-stats: {}", stderr_of(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
    }
}

/// `program path` under the deadline.
fn tool(program: &str, path: &Path) -> Output {
    run(Command::new(program).arg(path), HANG)
}

fn ls(path: &Path) -> Vec<String> {
    let out = run(Command::new("ls").arg("-1A").arg(path), HANG);
    assert!(out.status.success(), "ls {}: {}", path.display(), stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn cat(path: &Path) -> Vec<u8> {
    let out = tool("cat", path);
    assert!(out.status.success(), "cat {}: {}", path.display(), stderr_of(&out));
    out.stdout
}

/// The run failed with "Network is unreachable" (an offline mount's "not cached").
fn unreachable(out: &Output, what: &str) {
    let err = stderr_of(out);
    assert!(!out.status.success(), "{what}: succeeded, want an error");
    assert!(err.contains("Network is unreachable"), "{what}: want ENETUNREACH, got: {err}");
    assert!(out.stdout.is_empty(), "{what}: no bytes of something nobody could fetch");
}

/// Online: lists the root, `data` and `data/sub`, reads `data/a.bin`, `data/sub/c.txt` and
/// `deep/x/y/z.bin` (by name, through directories nobody lists).
fn visit(s: &Setup) {
    assert_eq!(ls(&s.mnt()), ["data", "deep", "never"]);
    assert_eq!(ls(&s.at("data")), ["a.bin", "b.bin", "sub"]);
    assert_eq!(ls(&s.at("data/sub")), ["c.txt"]);
    assert!(cat(&s.at("data/a.bin")) == pattern_bytes(1, 0, (2 * MIB + 5) as usize));
    assert_eq!(cat(&s.at("data/sub/c.txt")), b"listed and read\n");
    assert!(cat(&s.at("deep/x/y/z.bin")) == pattern_bytes(3, 0, 70_000));
}

fn server_down_then_back(kind: Kind) {
    if !ready(kind) {
        return;
    }
    let s = Setup::new();
    let server = s.serve(kind, 0, false);
    let (port, ca) = (server.port, server.ca_file.clone());
    let out = s.mount(port, &ca, &[], &[]);
    assert!(out.status.success(), "online mount: {}", stderr_of(&out));
    visit(&s);
    s.umount();
    drop(server);

    // The server is gone: the mount still comes up, and says so.
    let out = s.mount(port, &ca, &[], &[]);
    let said = stderr_of(&out);
    assert!(out.status.success(), "the mount must come up offline: {said}");
    assert!(said.contains("OFFLINE") && said.contains("cannot reach"), "said loudly, with the reason: {said}");
    assert!(s.log().contains("OFFLINE"), "and in the log:\n{}", s.log());
    assert_eq!(s.counter("offline"), 1);

    // Every directory visited, every file read: from the cache, with the right bytes.
    visit(&s);
    assert!(s.counter("disk_listings") >= 3, "root, data and data/sub came from the cache");
    let nope = tool("stat", &s.at("data/nope"));
    assert!(!nope.status.success() && stderr_of(&nope).contains("No such file"), "a complete listing answers");

    // Everything else fails at once, clearly, and the log says why.
    unreachable(&tool("cat", &s.at("data/b.bin")), "cat of a file never read");
    unreachable(&tool("ls", &s.at("never")), "ls of a directory never listed");
    unreachable(&tool("ls", &s.at("deep/x")), "ls of a directory only walked through");
    unreachable(&tool("stat", &s.at("deep/x/other")), "a name never looked up where nothing was listed");
    let log = s.log();
    let why = log.lines().find(|l| l.contains("b.bin") && l.contains("not cached")).unwrap_or_default();
    assert!(why.contains("unreachable"), "the log says: offline (server unreachable), not cached:\n{log}");

    // The server comes back on its port: the mount notices by itself.
    let back = s.serve(kind, port, false);
    let deadline = Instant::now() + BACK_ONLINE;
    let b = loop {
        let out = tool("cat", &s.at("data/b.bin"));
        if out.status.success() {
            break out.stdout;
        }
        assert!(Instant::now() < deadline, "still offline {BACK_ONLINE:?} after the server came back:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(b == pattern_bytes(2, 0, (MIB + 3) as usize), "the file never read before, now from the server");
    assert_eq!(s.counter("offline"), 0);
    assert!(s.log().contains("ONLINE"), "the log says it went online:\n{}", s.log());
    assert_eq!(ls(&s.at("never")), ["seen.txt"], "directories never listed list now");
    // pure-ftpd runs in a mount namespace of its own, made while this mount was live: it holds
    // a copy of the mount, which keeps the daemon serving after our unmount until it ends.
    drop(back);
    s.umount();
}

#[test]
fn with_its_vsftpd_server_down_a_mount_serves_the_cache_fails_the_rest_clearly_and_goes_online_when_it_returns() {
    server_down_then_back(Kind::Vsftpd);
}

#[test]
fn with_its_pure_ftpd_server_down_a_mount_serves_the_cache_fails_the_rest_clearly_and_goes_online_when_it_returns() {
    server_down_then_back(Kind::PureFtpd);
}

/// vsftpd's log line for each control connection.
fn connections(server: &Server) -> usize {
    fs::read_to_string(&server.protocol_log).unwrap_or_default().lines().filter(|l| l.contains("CONNECT:")).count()
}

#[test]
fn offline_mounts_make_no_connection_to_a_server_that_is_up() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let s = Setup::new();
    let server = s.serve(Kind::Vsftpd, 0, false);
    let out = s.mount(server.port, &server.ca_file, &[], &[]);
    assert!(out.status.success(), "online mount: {}", stderr_of(&out));
    visit(&s);
    s.umount();
    server.wait_for_sessions_to_end(Duration::from_secs(30));
    let (before, transfers) = (connections(&server), server.retr_count());
    assert!(before > 0, "the online mount's connections are logged");

    for spelling in [&["--offline"][..], &["-o", "offline"][..]] {
        let out = s.mount(server.port, &server.ca_file, spelling, &[]);
        let said = stderr_of(&out);
        assert!(out.status.success(), "{spelling:?}: {said}");
        assert!(said.contains("OFFLINE (--offline)"), "{spelling:?}: {said}");
        visit(&s);
        unreachable(&tool("cat", &s.at("data/b.bin")), "an uncached file with --offline");
        unreachable(&tool("ls", &s.at("never")), "an unlisted directory with --offline");
        assert_eq!(s.counter("offline"), 1);
        assert_eq!(s.counter("logins"), 0);
        s.umount();
    }
    server.wait_for_sessions_to_end(Duration::from_secs(30));
    assert_eq!(connections(&server), before, "no connection reached the server");
    assert_eq!(server.retr_count(), transfers);
}

#[test]
fn a_wrong_password_or_an_untrusted_certificate_still_refuses_the_mount_when_the_cache_is_warm() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let s = Setup::new();
    let server = s.serve(Kind::Vsftpd, 0, true);
    let login = ["--user", TEST_USER];
    let out = s.mount(server.port, &server.ca_file, &login, &[("MASTFS_PASSWORD", TEST_PASSWORD)]);
    assert!(out.status.success(), "online mount: {}", stderr_of(&out));
    visit(&s);
    s.umount();

    let refused = |out: &Output, words: &[&str]| {
        let said = stderr_of(out).to_lowercase();
        assert!(!out.status.success(), "the mount must be refused: {said}");
        assert!(!is_mounted(&s.mnt()), "nothing mounted");
        assert!(!said.contains("offline"), "a server that answers and refuses is not offline: {said}");
        assert!(words.iter().any(|w| said.contains(w)), "a clear reason ({words:?}): {said}");
    };
    let wrong_password = s.mount(server.port, &server.ca_file, &login, &[("MASTFS_PASSWORD", "wrong")]);
    refused(&wrong_password, &["login"]);
    let wrong_ca = s.mount(server.port, &server.wrong_ca_file, &login, &[("MASTFS_PASSWORD", TEST_PASSWORD)]);
    refused(&wrong_ca, &["certificate"]);
}

#[test]
fn an_unreachable_server_with_nothing_cached_refuses_the_mount_and_says_why() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let s = Setup::new();
    let mount = |extra: &[&str]| {
        let mut cmd = s.bg.command();
        cmd.args(["mount", "--host", "127.0.0.1", "--port", &port.to_string(), "--timeout", "5"])
            .arg("--cache-dir")
            .arg(s.cache())
            .args(extra)
            .arg(s.mnt());
        run(&mut cmd, Duration::from_secs(60))
    };
    let out = mount(&[]);
    let said = stderr_of(&out);
    assert!(!out.status.success() && !is_mounted(&s.mnt()), "nothing to serve: refused: {said}");
    assert!(said.contains("cannot reach") && said.contains("nothing of it is cached"), "{said}");

    let out = mount(&["--offline", "--cache-size", "0"]);
    assert!(!out.status.success(), "--offline without a cache serves nothing");
    assert!(stderr_of(&out).contains("--cache-size 0"), "{}", stderr_of(&out));
}

#[test]
fn a_server_that_accepts_but_never_answers_at_mount_time_mounts_offline_and_is_followed_when_it_answers() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    fill(root.path());
    let pasv = Relay::free_pasv_range(16);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = Relay::start(server.port, pasv);
    let cache = tempfile::Builder::new().prefix("mastfs-offline-cache-").tempdir().expect("cache dir");
    // Through the relay (127.0.0.2), whose address the test certificate does not name.
    let mount = || {
        Mount::builder(&server)
            .no_ca()
            .args(["--insecure", "--timeout", "2"])
            .cache_dir(cache.path())
            .start_via(&relay.host(), relay.port)
    };
    let online = mount();
    assert_eq!(ls(&online.path("data")), ["a.bin", "b.bin", "sub"]);
    assert!(cat(&online.path("data/a.bin")) == pattern_bytes(1, 0, (2 * MIB + 5) as usize));
    drop(online);

    // Connections are accepted, and then nothing: not a byte of greeting.
    relay.stall(true);
    let offline = mount();
    let said = offline.stderr();
    assert!(said.contains("OFFLINE") && said.contains("did not answer"), "{said}");
    assert_eq!(ls(&offline.path("data")), ["a.bin", "b.bin", "sub"]);
    assert!(cat(&offline.path("data/a.bin")) == pattern_bytes(1, 0, (2 * MIB + 5) as usize));
    unreachable(&tool("cat", &offline.path("data/b.bin")), "an uncached file while the server is silent");

    relay.stall(false);
    let deadline = Instant::now() + BACK_ONLINE;
    let b = loop {
        let out = tool("cat", &offline.path("data/b.bin"));
        if out.status.success() {
            break out.stdout;
        }
        assert!(Instant::now() < deadline, "still offline {BACK_ONLINE:?} after the server answered again");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(b == pattern_bytes(2, 0, (MIB + 3) as usize));
    assert!(offline.stderr().contains("ONLINE"), "{}", offline.stderr());
}
