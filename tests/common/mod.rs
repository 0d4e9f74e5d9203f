//! Test support shared by the integration tests: real FTPS servers on loopback
//! (through `scripts/ftps-server`), mastfs mounts, and test data in a served root.
//!
//! Each integration test crate compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod relay;

use std::collections::HashMap;
use std::fs::{self, File, Permissions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tempfile::TempDir;

const FTPS_SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ftps-server");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Far beyond any one call into a mount in these tests: reaching it is a hang.
const MOUNT_CALL_LIMIT: Duration = Duration::from_secs(180);
/// Far beyond the time any test holds a mount: reaching it is a hang.
const MOUNT_LIFETIME_LIMIT: Duration = Duration::from_secs(900);
const PASSWORD_ENV: &str = "MASTFS_TEST_FTP_PASSWORD";

/// Default password user for servers built with [`ServerBuilder::with_user`].
/// One system user is shared by all vsftpd servers on the machine, so every
/// test should use the same name and password (or a name of its own).
pub const TEST_USER: &str = "mastfs-test";
pub const TEST_PASSWORD: &str = "s3cret pass;word";

/// How the synthetic over-long names of [`ServerBuilder::overlong_name`] begins.
pub const OVERLONG_NAME_PREFIX: &str = "overlong-";

/// Set to `1` to let a test whose server, FUSE or tool is missing skip instead of failing
/// (`scripts/test --allow-skip` sets it). Without it every test runs or fails.
pub const ALLOW_SKIP_ENV: &str = "MASTFS_TEST_ALLOW_SKIP";
/// A file that each skipping test appends one line to (`binary<TAB>test<TAB>reason`):
/// `scripts/test` counts skipped tests from it, apart from the passed ones.
pub const SKIP_LOG_ENV: &str = "MASTFS_TEST_SKIP_LOG";

/// `CI=true`: nothing may be skipped, whatever [`ALLOW_SKIP_ENV`] says.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a missing requirement may skip a test: only when asked for explicitly, never on CI.
pub fn skipping_allowed() -> bool {
    !ci() && std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1")
}

fn skip_or_panic(what: &str, reason: &str) -> bool {
    if !skipping_allowed() {
        panic!(
            "{what} is unavailable: {reason}. Install what the tests need with `scripts/install-deps` (as root), \
             or skip such tests explicitly with {ALLOW_SKIP_ENV}=1 (`scripts/test --allow-skip`)."
        );
    }
    record_skip(&format!("{what} is unavailable: {reason}"));
    eprintln!("SKIPPED: {what} is unavailable ({reason}); {ALLOW_SKIP_ENV}=1 allowed the skip");
    false
}

/// Appends this test to the skip log, so the run's closing line counts it as skipped, not passed.
fn record_skip(reason: &str) {
    let Some(log) = std::env::var_os(SKIP_LOG_ENV).filter(|v| !v.is_empty()) else { return };
    // libtest runs each test on a thread named after the test.
    let test = std::thread::current().name().unwrap_or("unknown").to_owned();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let line = format!("{binary}\t{test}\t{}\n", reason.replace(['\t', '\n'], " "));
    // One short O_APPEND write per line: lines from parallel tests never interleave.
    let written =
        fs::OpenOptions::new().create(true).append(true).open(&log).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record a skipped test in {}: {e}", PathBuf::from(log).display());
    }
}

/// True when FUSE mounts can be made here. Without it the test fails with the reason, or
/// skips (returns false) when [`skipping_allowed`].
pub fn require_fuse() -> bool {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist".into());
        }
        if find_program("fusermount3").is_none() {
            return Err("fusermount3 is not installed (Debian package fuse3)".into());
        }
        if !is_root() {
            return Err("the tests mount and start servers as root".into());
        }
        Ok(())
    });
    match state {
        Ok(()) => true,
        Err(reason) => skip_or_panic("FUSE", reason),
    }
}

/// True when a server of `kind` can be started here. Without it the test fails with the
/// reason, or skips (returns false) when [`skipping_allowed`].
pub fn require_server(kind: Kind) -> bool {
    static STATE: OnceLock<Mutex<HashMap<Kind, Result<(), String>>>> = OnceLock::new();
    let map = STATE.get_or_init(|| Mutex::new(HashMap::new()));
    let state = {
        let mut map = map.lock();
        map.entry(kind).or_insert_with(|| server_available(kind)).clone()
    };
    match state {
        Ok(()) => true,
        Err(reason) => skip_or_panic(&format!("the {} test server", kind.name()), &reason),
    }
}

/// True when `program` is on PATH (e.g. curl for the harness's own checks). Without it the
/// test fails, or skips when [`skipping_allowed`].
pub fn require_program(program: &str) -> bool {
    match find_program(program) {
        Some(_) => true,
        None => skip_or_panic(program, "not on PATH"),
    }
}

fn server_available(kind: Kind) -> Result<(), String> {
    if !is_root() {
        return Err("servers need root (chroot, privilege drop, system users)".into());
    }
    for program in ["python3", "openssl"] {
        if find_program(program).is_none() {
            return Err(format!("{program} is not on PATH"));
        }
    }
    match kind {
        Kind::Vsftpd => {
            if find_program("vsftpd").is_none() {
                return Err("vsftpd is not installed (Debian package vsftpd)".into());
            }
        }
        Kind::PureFtpd => {
            let binary = pure_ftpd_cache().join("usr/sbin/pure-ftpd");
            if !binary.exists() {
                return Err(format!("{} is missing (scripts/install-deps unpacks it)", binary.display()));
            }
        }
        Kind::Pyftpdlib => {
            let ok = Command::new("python3")
                .args(["-c", "import pyftpdlib, OpenSSL"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("python3 cannot import pyftpdlib and OpenSSL (pip install pyftpdlib pyopenssl)".into());
            }
        }
    }
    Ok(())
}

fn pure_ftpd_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("mastfs-test/pure-ftpd")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The program's path, searching PATH plus the sbin directories that a
/// non-login root shell may lack.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

// ------------------------------------------------------------------ servers

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Vsftpd,
    PureFtpd,
    Pyftpdlib,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Vsftpd, Kind::PureFtpd, Kind::Pyftpdlib];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Vsftpd => "vsftpd",
            Kind::PureFtpd => "pure-ftpd",
            Kind::Pyftpdlib => "pyftpdlib",
        }
    }

    /// Debian builds pure-ftpd without implicit TLS.
    pub fn supports_implicit(self) -> bool {
        self != Kind::PureFtpd
    }

    /// Whether the server lets clients download a file of this name: pure-ftpd
    /// refuses names containing a backslash (553) even though it lists them.
    pub fn serves_name(self, name: &str) -> bool {
        !(self == Kind::PureFtpd && name.contains('\\'))
    }

    /// Whether the server answers MLSD (vsftpd does not).
    pub fn has_mlsd(self) -> bool {
        self != Kind::Vsftpd
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    Password,
}

/// How to start a server; see `scripts/ftps-server --help`.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    kind: Kind,
    implicit: bool,
    plain: bool,
    root: Option<PathBuf>,
    port: u16,
    max_clients: Option<u32>,
    max_rate: Option<u64>,
    user: Option<(String, String)>,
    tls_max_12: bool,
    pasv_range: Option<(u16, u16)>,
    overlong_name: bool,
    workdir: Option<PathBuf>,
}

impl ServerBuilder {
    /// Implicit FTPS (TLS from the first byte). Not for pure-ftpd.
    pub fn implicit(mut self) -> Self {
        self.implicit = true;
        self
    }

    /// A server without any TLS.
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }

    /// Serve this directory (it and its ancestors must be searchable by
    /// others). Default: a fresh empty directory, removed with the server.
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// A fixed port (default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Cap concurrent control connections; the next one gets a 421.
    pub fn max_clients(mut self, n: u32) -> Self {
        self.max_clients = Some(n);
        self
    }

    /// vsftpd only: each transfer is sent at most this many bytes per second, so what a
    /// transfer delivers in a given time does not depend on how fast the machine is then.
    pub fn max_rate(mut self, bytes_per_second: u64) -> Self {
        self.max_rate = Some(bytes_per_second);
        self
    }

    /// Enable a password user besides anonymous.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Enable the shared password user [`TEST_USER`]/[`TEST_PASSWORD`].
    pub fn with_user(self) -> Self {
        self.user(TEST_USER, TEST_PASSWORD)
    }

    /// The server refuses TLS 1.3.
    pub fn tls_max_12(mut self) -> Self {
        self.tls_max_12 = true;
        self
    }

    pub fn pasv_range(mut self, min: u16, max: u16) -> Self {
        self.pasv_range = Some((min, max));
        self
    }

    /// pyftpdlib only: every listing also shows two files whose names start with
    /// [`OVERLONG_NAME_PREFIX`] and are 300 and 5000 bytes long, longer than any real file
    /// system allows (255) and than a FUSE directory entry may be (1024 or 4095).
    pub fn overlong_name(mut self) -> Self {
        self.overlong_name = true;
        self
    }

    /// Keep the server's files (certificates, logs) in `dir`, which outlives the server. A
    /// server started again on the same `dir` keeps its CA and certificate, so a mount that
    /// trusts the first one can follow the restart.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Start the server; panics (with the server's stderr) if it does not come up.
    pub fn start(self) -> Server {
        let scratch = tempfile::Builder::new()
            .prefix("mastfs-server-")
            .tempdir()
            .expect("create a temp dir for the server's stderr");
        let (root, root_dir) = match &self.root {
            Some(root) => (root.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("mastfs-root-")
                    .permissions(Permissions::from_mode(0o755))
                    .tempdir()
                    .expect("create a served root");
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let stderr_path = scratch.path().join("stderr");
        let stderr = File::create(&stderr_path).expect("create the server's stderr file");

        // Through python3, so a checkout without exec bits still works.
        let tag = new_tag("server");
        let mut cmd = Command::new("python3");
        cmd.env(TAG_ENV, &tag)
            .arg(FTPS_SERVER_SCRIPT)
            .args(["--kind", self.kind.name(), "--watch-stdin", "--root"])
            .arg(&root)
            .args(["--port", &self.port.to_string()]);
        if self.implicit {
            cmd.arg("--implicit");
        }
        if self.plain {
            cmd.arg("--plain");
        }
        if let Some(n) = self.max_clients {
            cmd.args(["--max-clients", &n.to_string()]);
        }
        if let Some(rate) = self.max_rate {
            cmd.args(["--max-rate", &rate.to_string()]);
        }
        if let Some((name, password)) = &self.user {
            cmd.args(["--user", name, "--password-env", PASSWORD_ENV]);
            cmd.env(PASSWORD_ENV, password);
        }
        if self.tls_max_12 {
            cmd.args(["--tls-max", "1.2"]);
        }
        if let Some((min, max)) = self.pasv_range {
            cmd.args(["--pasv-range", &format!("{min}-{max}")]);
        }
        if self.overlong_name {
            cmd.arg("--overlong-name");
        }
        if let Some(dir) = &self.workdir {
            cmd.arg("--workdir").arg(dir);
        }
        // stdin stays open while the Server lives: if the test process dies
        // without running Drop, the script sees EOF and stops its server.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {FTPS_SERVER_SCRIPT}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let res = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let why = match other {
                    Err(_) => format!("no ready line within {STARTUP_TIMEOUT:?}"),
                    Ok(Err(e)) => format!("reading its stdout failed: {e}"),
                    Ok(Ok(_)) => "it exited without a ready line".to_owned(),
                };
                panic!(
                    "{} test server did not start ({why}); its stderr:\n{}",
                    self.kind.name(),
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let info: ReadyLine = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ftps-server printed a ready line mastfs tests cannot read ({e}): {line}"));
        Server {
            kind: self.kind,
            host: info.host,
            port: info.port,
            ca_file: info.ca_file,
            wrong_ca_file: info.wrong_ca_file,
            root: info.root,
            log: info.log,
            protocol_log: info.protocol_log,
            pid: info.pid,
            tag,
            implicit: self.implicit,
            tls: !self.plain,
            user: self.user.clone(),
            child: Some(child),
            stdin,
            stderr_path,
            _scratch: scratch,
            _root_dir: root_dir,
        }
    }
}

/// A running test server; stopped (with its temp files) on drop.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    /// The CA that signed the server's certificate (for `localhost`, 127.0.0.1).
    pub ca_file: PathBuf,
    /// An unrelated CA: verifying the server against it must fail.
    pub wrong_ca_file: PathBuf,
    /// The directory being served.
    pub root: PathBuf,
    /// Transfer log in wu-ftpd xferlog format; see [`Server::transfers`].
    pub log: PathBuf,
    /// The server's own log (vsftpd: every command and reply).
    pub protocol_log: PathBuf,
    /// The server daemon's pid (e.g. to stop or kill it in fault tests).
    pub pid: u32,
    /// The [`TAG_ENV`] value that the control script, the server and every process they fork
    /// carry: see [`processes_tagged`].
    pub tag: String,
    pub implicit: bool,
    pub tls: bool,
    /// (name, password) of the password user, if enabled.
    pub user: Option<(String, String)>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr_path: PathBuf,
    _scratch: TempDir,
    _root_dir: Option<TempDir>,
}

/// One line of a server's transfer log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes the server wrote to the data connection (an early close by the
    /// client still counts what sat in socket buffers).
    pub bytes: u64,
    /// As logged: relative to the root (vsftpd, pyftpdlib) or absolute on
    /// disk (pure-ftpd, anonymous files under the ftp user's home).
    pub path: String,
    /// The server's own "complete" flag (pure-ftpd always says complete).
    pub complete: bool,
    /// The login; for anonymous, vsftpd logs the e-mail given as password,
    /// pure-ftpd `ftp`, pyftpdlib `anonymous`.
    pub user: String,
}

impl Server {
    pub fn builder(kind: Kind) -> ServerBuilder {
        ServerBuilder {
            kind,
            implicit: false,
            plain: false,
            root: None,
            port: 0,
            max_clients: None,
            max_rate: None,
            user: None,
            tls_max_12: false,
            pasv_range: None,
            overlong_name: false,
            workdir: None,
        }
    }

    /// An explicit-FTPS server with anonymous login on an empty root.
    pub fn start(kind: Kind) -> Server {
        Server::builder(kind).start()
    }

    /// `ftp://127.0.0.1:PORT/path` (or `ftps://` when implicit), path percent-encoded.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.implicit { "ftps" } else { "ftp" };
        let path = path.trim_start_matches('/');
        format!("{scheme}://{}:{}/{}", self.host, self.port, url_path_encode(path))
    }

    /// Path of `rel` inside the served root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The server's transfer log so far.
    pub fn transfers(&self) -> Vec<Transfer> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_xferlog_line).collect()
    }

    /// Total bytes the server sent on data connections for file downloads.
    pub fn bytes_sent(&self) -> u64 {
        self.transfers().iter().map(|t| t.bytes).sum()
    }

    /// Number of RETRs logged so far.
    pub fn retr_count(&self) -> usize {
        self.transfers().len()
    }

    /// What the control script has written to stderr (diagnostics).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Run curl against this server with TLS required and verified against
    /// the server's CA. `path` is relative to the root.
    pub fn curl(&self, auth: Auth, extra: &[&str], path: &str) -> Output {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "30"]);
        if self.tls {
            cmd.arg("--ssl-reqd").arg("--cacert").arg(&self.ca_file);
        }
        if auth == Auth::Password {
            let (name, password) = self.user.as_ref().expect("server started with a password user");
            cmd.arg("--user").arg(format!("{name}:{password}"));
        }
        cmd.args(extra).arg(self.url(path));
        cmd.output().expect("run curl")
    }

    /// Waits until no client session of a forking server (vsftpd, pure-ftpd) is left, so that
    /// everything those sessions log has been written. pyftpdlib serves in one process: it
    /// logs each transfer as it ends, and this returns at once.
    pub fn wait_for_sessions_to_end(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let sessions = descendants(self.pid);
            if sessions.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("{} sessions still running after {limit:?}: {sessions:?}", self.kind.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server now (Drop does the same, and fails the test if it had to kill a
    /// process the server left behind).
    pub fn stop(self) {}

    /// Stops the server and returns the processes carrying its tag that were still running
    /// once its control script had exited (they are killed). Empty when the server cleaned
    /// up after itself, as it must.
    pub fn stop_and_list_leftovers(mut self) -> Vec<Proc> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<Proc> {
        let Some(mut child) = self.child.take() else { return Vec::new() };
        // Closing stdin alone stops the script; SIGTERM makes it prompt.
        self.stdin.take();
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            eprintln!("ftps-server did not stop within 30 s of SIGTERM; killing it. Its stderr:\n{}", self.stderr());
            let _ = child.kill();
            let _ = child.wait();
        }
        // The script ends its server's whole tree before it exits: anything still carrying the
        // tag escaped it.
        reap_tagged(&self.tag, Duration::from_secs(2))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let left = self.shutdown();
        if !left.is_empty() {
            fail_unless_panicking(&format!(
                "the {} test server left processes behind (now killed): {left:#?}",
                self.kind.name()
            ));
        }
    }
}

fn parse_xferlog_line(line: &str) -> Option<Transfer> {
    // Five date words, then time, host, bytes, the file name (which may hold
    // spaces), then nine fixed fields.
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 18 {
        return None;
    }
    let tail = &words[words.len() - 9..];
    Some(Transfer {
        bytes: words[7].parse().ok()?,
        path: words[8..words.len() - 9].join(" "),
        complete: tail[8] == "c",
        user: tail[4].to_owned(),
    })
}

/// Percent-encode a URL path, keeping `/` and unreserved characters.
pub fn url_path_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The line `scripts/ftps-server` prints once its server listens (other fields are ignored).
#[derive(Debug, serde::Deserialize)]
struct ReadyLine {
    host: String,
    port: u16,
    ca_file: PathBuf,
    wrong_ca_file: PathBuf,
    root: PathBuf,
    log: PathBuf,
    protocol_log: PathBuf,
    pid: u32,
}

// ------------------------------------------------------------------ test data

/// Deterministic pseudo-random bytes: byte `offset + i` of the stream for
/// `seed`, computable for any range without generating what comes before
/// (a splitmix64 of the 8-byte block index).
pub fn pattern_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    let end = offset + len as u64;
    while pos < end {
        let block = splitmix64(seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min((end - pos) as usize);
        out.extend_from_slice(&block[start..start + take]);
        pos += take as u64;
    }
    out
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Write `size` bytes of [`pattern_bytes`]`(seed, ..)` to `path` (mode 0644),
/// creating parent directories (mode 0755).
pub fn write_pattern_file(path: &Path, seed: u64, size: u64) {
    if let Some(parent) = path.parent() {
        make_dirs(parent);
    }
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    const CHUNK: u64 = 1 << 20;
    let mut off = 0;
    while off < size {
        let n = CHUNK.min(size - off);
        f.write_all(&pattern_bytes(seed, off, n as usize)).expect("write test data");
        off += n;
    }
    set_mode(path, 0o644);
}

/// Write `contents` to `path` (mode 0644), creating parents (mode 0755).
pub fn write_file(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        make_dirs(parent);
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mode(path, 0o644);
}

/// `mkdir -p` with mode 0755, so the servers' unprivileged users can enter.
pub fn make_dirs(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    set_mode(dir, 0o755);
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// File names that break naive FTP clients: spaces (leading, trailing,
/// doubled), separators used by LIST/MLSD parsers, URL and shell
/// metacharacters, non-ASCII, a LIST-line look-alike, and a 240-byte name.
/// None contains `/`, NUL, CR or LF (FTP cannot carry those in a name).
pub fn hostile_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "with space.fits",
        "two  spaces",
        " leading space",
        "trailing space ",
        "-leading-dash",
        "semi;colon.fits",
        "type=file;size=1; fake-mlsd",
        "percent%20encoded",
        "hash#mark",
        "question?mark",
        "star*",
        "[brackets]",
        "{braces}",
        "quote\"double",
        "quote'single",
        "back\\slash",
        "dollar$HOME",
        "arrow -> target",
        "-rw-r--r--    1 0        0        3 Nov 25 13:49 fake",
        "ünïcødé_ñ.fits",
        "日本語.txt",
        "emoji_🔭.fits",
        "..dotdot",
        "~tilde",
        ".hidden",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.push(format!("{}.fits", "x".repeat(235)));
    names
}

/// Create one small file per [`hostile_names`] entry in `dir`; each holds its
/// own name as content. Returns the names.
pub fn make_hostile_files(dir: &Path) -> Vec<String> {
    make_dirs(dir);
    let names = hostile_names();
    for name in &names {
        write_file(&dir.join(name), name.as_bytes());
    }
    names
}

/// A directory with `count` empty files `f000000.fits`, `f000001.fits`, ...
pub fn make_big_dir(dir: &Path, count: usize) -> Vec<String> {
    make_dirs(dir);
    (0..count)
        .map(|i| {
            let name = format!("f{i:06}.fits");
            let path = dir.join(&name);
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            name
        })
        .collect()
}

/// Symlinks in `dir`, returned as (name, target): to a file and a directory
/// inside, a dangling one, one escaping the root, and a loop.
pub fn make_symlinks(dir: &Path) -> Vec<(String, String)> {
    make_dirs(dir);
    write_file(&dir.join("target.txt"), b"symlink target\n");
    make_dirs(&dir.join("target_dir"));
    let links = [
        ("link_to_file", "target.txt"),
        ("link_to_dir", "target_dir"),
        ("dangling", "does-not-exist"),
        ("escape", "/etc/passwd"),
        ("loop_a", "loop_b"),
        ("loop_b", "loop_a"),
    ];
    for (name, target) in links {
        let path = dir.join(name);
        symlink(target, &path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
    }
    links.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
}

/// A file with content but mode 0000: every server kind must refuse to send it.
pub fn make_unreadable_file(path: &Path) {
    write_file(path, b"nobody may read this\n");
    set_mode(path, 0o000);
}

/// A small MAST-like tree: `stage/anonymous/<request>/<file>.fits` with
/// FITS-like headers followed by pattern data, and `pub/README.txt`.
/// Returns the relative paths of the FITS files.
pub fn make_mast_tree(root: &Path, data_size: u64) -> Vec<String> {
    let mut files = Vec::new();
    for (i, request) in ["anonymous12345", "anonymous_20261125Z_0d17d268"].iter().enumerate() {
        for (j, stem) in ["ib2e01lyq_flt", "ib2e01lyq_drz"].iter().enumerate() {
            let rel = format!("stage/anonymous/{request}/{stem}.fits");
            let path = root.join(&rel);
            let seed = (i * 10 + j) as u64 + 1;
            let mut content = fits_header(&[
                ("SIMPLE", "T"),
                ("BITPIX", "8"),
                ("NAXIS", "2"),
                ("NAXIS1", "1024"),
                ("NAXIS2", &((data_size / 1024).max(1)).to_string()),
                ("TELESCOP", "'HST     '"),
            ]);
            content.extend(pattern_bytes(seed, 0, data_size as usize));
            write_file(&path, &content);
            files.push(rel);
        }
    }
    write_file(&root.join("pub/README.txt"), b"A MAST-like test archive.\n");
    files
}

/// A FITS primary header: 80-column cards, END, space-padded to 2880 bytes.
pub fn fits_header(cards: &[(&str, &str)]) -> Vec<u8> {
    let mut h = String::new();
    for (key, value) in cards {
        // Fixed format: strings start in column 11, other values end in column 30.
        let card =
            if value.starts_with('\'') { format!("{key:<8}= {value:<20}") } else { format!("{key:<8}= {value:>20}") };
        h.push_str(&card.chars().take(80).collect::<String>());
        while !h.len().is_multiple_of(80) {
            h.push(' ');
        }
    }
    h.push_str(&format!("{:<80}", "END"));
    while !h.len().is_multiple_of(2880) {
        h.push(' ');
    }
    h.into_bytes()
}

/// FUSE and a server of `kind` are both available. Otherwise the test fails with the reason,
/// or skips (returns false) when [`skipping_allowed`].
pub fn ready(kind: Kind) -> bool {
    require_fuse() && require_server(kind)
}

/// A fresh directory to serve, searchable by the servers' unprivileged users.
pub fn new_root() -> TempDir {
    let root = tempfile::Builder::new().prefix("mastfs-root-").tempdir().expect("root dir");
    set_mode(root.path(), 0o755);
    root
}

// ------------------------------------------------------------------ processes the tests start

/// Every server and mount that this module starts gets this variable in its environment, with
/// a value of its own; every process it forks inherits it (vsftpd's and pure-ftpd's sessions,
/// a daemonised mastfs, fusermount3). That marks the processes a test started, and only
/// those: other people's servers on the same machine never carry it.
pub const TAG_ENV: &str = "MASTFS_TEST_TAG";

/// A tag no other server or mount of any test process uses.
pub fn new_tag(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A live process, for messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
}

/// Live processes whose environment holds `key=value` (a zombie's environment is gone, so
/// it is not listed: it has ended and only waits for its parent).
pub fn processes_with_env(key: &str, value: &str) -> Vec<Proc> {
    let want = format!("{key}={value}");
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_owned();
            found.push(Proc { pid, cmdline });
        }
    }
    found
}

/// Live processes carrying [`TAG_ENV`]`=tag`.
pub fn processes_tagged(tag: &str) -> Vec<Proc> {
    processes_with_env(TAG_ENV, tag)
}

/// Gives the processes tagged `tag` up to `grace` to end by themselves, then kills the rest
/// and waits for them to go. Returns the ones that had to be killed.
pub fn reap_tagged(tag: &str, grace: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + grace;
    let mut left = processes_tagged(tag);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = processes_tagged(tag);
    }
    if left.is_empty() {
        return left;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = processes_tagged(tag);
        if now.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("could not kill processes tagged {tag}: {now:?}");
            break;
        }
        for p in &now {
            // SAFETY: plain syscall; the tag marks processes this test started.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    left
}

/// Pids of every live descendant of `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let mut fields = stat.rsplit(')').next()?.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            (state != "Z").then_some((p, ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree.remove(0);
    tree
}

/// Fails the test from a `Drop`, unless it is already failing (a second panic would abort).
fn fail_unless_panicking(message: &str) {
    if std::thread::panicking() {
        eprintln!("{message}");
    } else {
        panic!("{message}");
    }
}

/// Runs `f` on a thread of its own and returns its result, or fails the test if it is still
/// running after `limit`: for calls into a mount (a plain `read` on a hung FUSE file system
/// would block the test forever). The stuck thread ends once the mount is torn down.
pub fn within<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} hung: still running after {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// A scratch directory for `mastfs mount` run in the background, as users run it (the
/// daemon forks away from the test). On drop, whatever is still mounted below the directory
/// is unmounted and every process started with [`BackgroundMount::command`] has ended (the
/// test fails if one had to be killed).
pub struct BackgroundMount {
    dir: TempDir,
    tag: String,
}

impl BackgroundMount {
    pub fn new() -> BackgroundMount {
        let dir = tempfile::Builder::new().prefix("mastfs-bg-").tempdir().expect("scratch dir");
        BackgroundMount { dir, tag: new_tag("bg-mount") }
    }

    /// The scratch directory (for the mount point, cache, logs).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The [`TAG_ENV`] value of the processes started with [`BackgroundMount::command`].
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `mastfs` with this guard's tag in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mastfs"));
        cmd.env(TAG_ENV, &self.tag);
        cmd
    }
}

impl Default for BackgroundMount {
    fn default() -> Self {
        BackgroundMount::new()
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        let mounted = mounts_below(self.dir.path());
        for mountpoint in &mounted {
            unmount(mountpoint);
        }
        let left = reap_tagged(&self.tag, Duration::from_secs(10));
        if !left.is_empty() {
            fail_unless_panicking(&format!(
                "background mastfs processes outlived their unmount (now killed): {left:#?}"
            ));
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut text = String::new();
    if File::open("/proc/self/mountinfo").and_then(|mut f| f.read_to_string(&mut text)).is_err() {
        return Vec::new();
    }
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(mountinfo_unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn mountinfo_unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// `fusermount3 -u`, or a lazy unmount if the mount is busy.
fn unmount(mountpoint: &Path) {
    let ok =
        Command::new("fusermount3").arg("-u").arg(mountpoint).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(mountpoint).stderr(Stdio::null()).status();
    }
}

// ------------------------------------------------------------------ running tools

/// Runs a command with a deadline, output captured and drained while it runs (a chatty
/// command never blocks on a full pipe). A command still running after `limit` is killed
/// and the test fails: a hang is a failure, never a stuck suite.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    finish(child, &what, limit)
}

/// Waits for a child started with piped output; see [`run`].
pub fn finish(child: Child, what: &str, limit: Duration) -> Output {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for command"),
        Err(_) => {
            // SAFETY: killing the child this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what} hung: still running after {limit:?}");
        }
    }
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One counter of `mastfs stats --json` (plain `mastfs stats` is for people).
pub fn stat_value(mount: &Mount, name: &str) -> u64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mastfs"));
    let out = run(cmd.args(["stats", "--json"]).arg(&mount.mountpoint), Duration::from_secs(30));
    assert!(out.status.success(), "mastfs stats failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    report["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
}

// ------------------------------------------------------------------ mounts

/// How to mount a server with the mastfs binary.
pub struct MountBuilder<'a> {
    server: &'a Server,
    extra: Vec<String>,
    cache_dir: Option<PathBuf>,
    ca: CaChoice,
    auth: Auth,
    env: Vec<(String, String)>,
    hang_limit: Duration,
}

enum CaChoice {
    Server,
    Wrong,
    None,
}

impl<'a> MountBuilder<'a> {
    /// Extra `mastfs mount` arguments (e.g. `["--connections", "2"]`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Use this cache directory (e.g. to remount over a warm cache); default:
    /// a fresh one, removed with the Mount.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Verify the server against an unrelated CA (the mount must fail).
    pub fn wrong_ca(mut self) -> Self {
        self.ca = CaChoice::Wrong;
        self
    }

    /// Pass no `--ca-file` (system roots only: the mount must fail).
    pub fn no_ca(mut self) -> Self {
        self.ca = CaChoice::None;
        self
    }

    /// Log in as the server's password user (password via MASTFS_PASSWORD).
    pub fn password_user(mut self) -> Self {
        self.auth = Auth::Password;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// After this long the mount counts as hung and its daemon is killed (default: 15
    /// minutes, far beyond any test); see [`Mount`].
    pub fn hang_limit(mut self, limit: Duration) -> Self {
        self.hang_limit = limit;
        self
    }

    /// Mount; panics with the daemon's stderr if the mount does not appear.
    pub fn start(self) -> Mount {
        match self.try_start() {
            Ok(m) => m,
            Err(e) => panic!("mastfs mount failed: {e}"),
        }
    }

    /// Mount, or report how the daemon failed (for tests that expect failure).
    pub fn try_start(self) -> Result<Mount, MountFailure> {
        let (host, port) = (self.server.host.clone(), self.server.port);
        self.try_start_at(&host, port)
    }

    /// Mount through `host:port` instead of the server's own address (e.g. a relay).
    pub fn try_start_at(self, host: &str, port: u16) -> Result<Mount, MountFailure> {
        let scratch =
            tempfile::Builder::new().prefix("mastfs-mount-").tempdir().expect("create a temp dir for the mount");
        let mountpoint = scratch.path().join("mnt");
        fs::create_dir(&mountpoint).expect("create the mount point");
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| scratch.path().join("cache"));
        let stderr_path = scratch.path().join("stderr");
        let stderr = File::create(&stderr_path).expect("create the daemon's stderr file");

        let tag = new_tag("mount");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mastfs"));
        cmd.env(TAG_ENV, &tag)
            .args(["mount", "--foreground", "--host", host])
            .args(["--port", &port.to_string()])
            .arg("--cache-dir")
            .arg(&cache_dir);
        match self.ca {
            CaChoice::Server => {
                cmd.arg("--ca-file").arg(&self.server.ca_file);
            }
            CaChoice::Wrong => {
                cmd.arg("--ca-file").arg(&self.server.wrong_ca_file);
            }
            CaChoice::None => {}
        }
        if self.server.implicit {
            cmd.arg("--implicit");
        }
        if self.auth == Auth::Password {
            let (name, password) = self.server.user.as_ref().expect("server started with a password user");
            cmd.args(["--user", name]).env("MASTFS_PASSWORD", password);
        }
        cmd.args(&self.extra).arg(&mountpoint);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let command_line = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mastfs: {e}"));

        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_mounted(&mountpoint) {
                let hang_guard = HangGuard::start(child.id(), &mountpoint, self.hang_limit);
                return Ok(Mount {
                    mountpoint,
                    cache_dir,
                    child: Some(child),
                    tag,
                    hang_guard: Some(hang_guard),
                    stderr_path,
                    _scratch: scratch,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let left = reap_tagged(&tag, Duration::from_secs(5));
                assert!(left.is_empty(), "a mastfs mount that failed left processes behind: {left:#?}");
                return Err(MountFailure {
                    exit_code: status.code(),
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                    command_line,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                reap_tagged(&tag, Duration::ZERO);
                return Err(MountFailure {
                    exit_code: None,
                    stderr: format!(
                        "(no mount within {MOUNT_TIMEOUT:?})\n{}",
                        fs::read_to_string(&stderr_path).unwrap_or_default()
                    ),
                    command_line,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How a mount attempt ended without a mount.
#[derive(Debug)]
pub struct MountFailure {
    /// None if it was killed (timeout) or died by a signal.
    pub exit_code: Option<i32>,
    pub stderr: String,
    pub command_line: String,
}

impl std::fmt::Display for MountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?} for {}; stderr:\n{}", self.exit_code, self.command_line, self.stderr)
    }
}

/// A live `mastfs mount --foreground`; unmounted and stopped on drop.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    child: Option<Child>,
    /// The [`TAG_ENV`] value of the daemon and everything it forks.
    pub tag: String,
    hang_guard: Option<HangGuard>,
    stderr_path: PathBuf,
    _scratch: TempDir,
}

/// Turns a test that hangs on a mount into a failing one: a call into a FUSE mount (a plain
/// `fs::read`, `ls`) blocks for as long as its daemon does not answer, and nothing else
/// would end it. If the mount is still up after [`MOUNT_LIFETIME_LIMIT`], far longer than
/// any test here holds one (or its [`MountBuilder::hang_limit`]), the daemon is killed: the kernel then fails every pending and
/// later call on the mount (ENOTCONN), and the test fails where it was stuck.
struct HangGuard {
    /// The daemon's pid until teardown takes it back, so a reaped (and reusable) pid is never
    /// signalled.
    pid: Arc<Mutex<Option<u32>>>,
    stop: mpsc::Sender<()>,
}

impl HangGuard {
    fn start(pid: u32, mountpoint: &Path, limit: Duration) -> HangGuard {
        let shared = Arc::new(Mutex::new(Some(pid)));
        let (stop, stopped) = mpsc::channel::<()>();
        let (for_thread, mountpoint) = (Arc::clone(&shared), mountpoint.to_path_buf());
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                let pid = for_thread.lock();
                if let Some(pid) = *pid {
                    eprintln!(
                        "the mount at {} is still up after {limit:?}: the test hangs; killing its daemon",
                        mountpoint.display()
                    );
                    // SAFETY: our own child, not yet reaped (teardown clears the pid first).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        });
        HangGuard { pid: shared, stop }
    }

    /// Disarms the guard; after this it never signals the pid.
    fn disarm(self) {
        self.pid.lock().take();
        let _ = self.stop.send(());
    }
}

impl Mount {
    pub fn builder(server: &Server) -> MountBuilder<'_> {
        MountBuilder {
            server,
            extra: Vec::new(),
            cache_dir: None,
            ca: CaChoice::Server,
            auth: Auth::Anonymous,
            env: Vec::new(),
            hang_limit: MOUNT_LIFETIME_LIMIT,
        }
    }

    /// Mount `server` anonymously with its CA and a fresh cache.
    pub fn start(server: &Server) -> Mount {
        Mount::builder(server).start()
    }

    /// Path of `rel` under the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel.trim_start_matches('/'))
    }

    /// The whole file `rel`; fails the test if the read fails or hangs.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let path = self.path(rel);
        let what = format!("read {}", path.display());
        let result = within(&what, MOUNT_CALL_LIMIT, move || fs::read(&path));
        result.unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.stderr()))
    }

    /// `len` bytes at `offset` of `rel` (fewer at end of file); fails the test if a read
    /// fails or hangs.
    pub fn read_range(&self, rel: &str, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let path = self.path(rel);
        let what = format!("pread {} at {offset}", path.display());
        let result = within(&what, MOUNT_CALL_LIMIT, move || -> std::io::Result<Vec<u8>> {
            let f = File::open(&path)?;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        });
        result.unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.stderr()))
    }

    /// `mastfs stats MOUNTPOINT`.
    pub fn stats(&self) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_mastfs")).arg("stats").arg(&self.mountpoint), MOUNT_CALL_LIMIT)
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// The daemon's pid (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Unmount and wait for the daemon; returns its stderr.
    pub fn unmount(mut self) -> String {
        self.teardown();
        self.stderr()
    }

    fn teardown(&mut self) {
        if let Some(guard) = self.hang_guard.take() {
            guard.disarm();
        }
        if is_mounted(&self.mountpoint) {
            unmount(&self.mountpoint);
        }
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            eprintln!("mastfs did not exit within 20 s of its unmount; killing it. Its stderr:\n{}", self.stderr());
            let _ = child.kill();
            let _ = child.wait();
        }
        let left = reap_tagged(&self.tag, Duration::from_secs(5));
        if !left.is_empty() {
            fail_unless_panicking(&format!("the mastfs mount left processes behind (now killed): {left:#?}"));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether `path` is a mount point, per /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let want = mountinfo_escape(path);
    let mut text = String::new();
    if File::open("/proc/self/mountinfo").and_then(|mut f| f.read_to_string(&mut text)).is_err() {
        return false;
    }
    text.lines().any(|line| line.split(' ').nth(4) == Some(want.as_str()))
}

fn mountinfo_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
