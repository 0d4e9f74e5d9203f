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
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const FTPS_SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ftps-server");
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const PASSWORD_ENV: &str = "MASTFS_TEST_FTP_PASSWORD";

/// Default password user for servers built with [`ServerBuilder::with_user`].
/// One system user is shared by all vsftpd servers on the machine, so every
/// test should use the same name and password (or a name of its own).
pub const TEST_USER: &str = "mastfs-test";
pub const TEST_PASSWORD: &str = "s3cret pass;word";

/// `CI=true`: the real-server and FUSE tests must run, and fail if they cannot.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip_or_panic(what: &str, reason: &str) -> bool {
    if ci() {
        panic!("CI=true but {what} is unavailable: {reason}. Run scripts/install-deps.");
    }
    eprintln!("SKIPPED: {what} is unavailable ({reason}); set CI=true to make this a failure");
    false
}

/// True when FUSE mounts can be made here. Without it: skips (prints why), or
/// panics under `CI=true`.
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

/// True when a server of `kind` can be started here. Without it: skips (prints
/// why), or panics under `CI=true`.
pub fn require_server(kind: Kind) -> bool {
    static STATE: OnceLock<Mutex<HashMap<Kind, Result<(), String>>>> = OnceLock::new();
    let map = STATE.get_or_init(|| Mutex::new(HashMap::new()));
    let state = {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(kind).or_insert_with(|| server_available(kind)).clone()
    };
    match state {
        Ok(()) => true,
        Err(reason) => skip_or_panic(&format!("the {} test server", kind.name()), &reason),
    }
}

/// True when `program` is on PATH (e.g. curl for the harness's own checks).
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
    user: Option<(String, String)>,
    tls_max_12: bool,
    pasv_range: Option<(u16, u16)>,
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
        let mut cmd = Command::new("python3");
        cmd.arg(FTPS_SERVER_SCRIPT)
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
        let info = parse_flat_json(&line).unwrap_or_else(|| panic!("ftps-server printed unparsable JSON: {line}"));
        let field = |k: &str| -> String {
            match info.get(k) {
                Some(Json::Str(s)) => s.clone(),
                other => panic!("ftps-server JSON field {k:?} is {other:?}: {line}"),
            }
        };
        let num = |k: &str| -> u64 {
            match info.get(k) {
                Some(Json::Num(n)) => *n as u64,
                other => panic!("ftps-server JSON field {k:?} is {other:?}: {line}"),
            }
        };
        Server {
            kind: self.kind,
            host: field("host"),
            port: u16::try_from(num("port")).expect("port fits u16"),
            ca_file: PathBuf::from(field("ca_file")),
            wrong_ca_file: PathBuf::from(field("wrong_ca_file")),
            root: PathBuf::from(field("root")),
            log: PathBuf::from(field("log")),
            protocol_log: PathBuf::from(field("protocol_log")),
            pid: u32::try_from(num("pid")).expect("pid fits u32"),
            implicit: self.implicit,
            tls: !self.plain,
            user: self.user.clone(),
            child,
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
    pub implicit: bool,
    pub tls: bool,
    /// (name, password) of the password user, if enabled.
    pub user: Option<(String, String)>,
    child: Child,
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
            user: None,
            tls_max_12: false,
            pasv_range: None,
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

    /// Stop the server now (Drop does the same).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin alone stops the script; SIGTERM makes it prompt.
        self.stdin.take();
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// Parses the one-level JSON object that ftps-server prints.
fn parse_flat_json(text: &str) -> Option<HashMap<String, Json>> {
    let mut chars = text.trim().chars().peekable();
    let mut out = HashMap::new();
    let skip_ws = |c: &mut std::iter::Peekable<std::str::Chars>| {
        while c.peek().is_some_and(|ch| ch.is_whitespace()) {
            c.next();
        }
    };
    fn string(c: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
        if c.next()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match c.next()? {
                '"' => return Some(s),
                '\\' => match c.next()? {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'b' => s.push('\u{8}'),
                    'f' => s.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| c.next()).collect();
                        let mut code = u32::from_str_radix(&hex, 16).ok()?;
                        if (0xD800..0xDC00).contains(&code) {
                            // A surrogate pair: \uD8xx\uDCxx.
                            if c.next()? != '\\' || c.next()? != 'u' {
                                return None;
                            }
                            let hex: String = (0..4).filter_map(|_| c.next()).collect();
                            let low = u32::from_str_radix(&hex, 16).ok()?;
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        }
                        s.push(char::from_u32(code)?);
                    }
                    other => s.push(other),
                },
                ch => s.push(ch),
            }
        }
    }
    skip_ws(&mut chars);
    if chars.next()? != '{' {
        return None;
    }
    loop {
        skip_ws(&mut chars);
        if chars.peek() == Some(&'}') {
            break;
        }
        let key = string(&mut chars)?;
        skip_ws(&mut chars);
        if chars.next()? != ':' {
            return None;
        }
        skip_ws(&mut chars);
        let value = match chars.peek()? {
            '"' => Json::Str(string(&mut chars)?),
            _ => {
                let mut word = String::new();
                while chars.peek().is_some_and(|c| !matches!(c, ',' | '}') && !c.is_whitespace()) {
                    word.push(chars.next()?);
                }
                match word.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    "null" => Json::Null,
                    n => Json::Num(n.parse().ok()?),
                }
            }
        };
        out.insert(key, value);
        skip_ws(&mut chars);
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    Some(out)
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

/// FUSE and a server of `kind` are both available (or the test is skipped; fails under CI).
pub fn ready(kind: Kind) -> bool {
    require_fuse() && require_server(kind)
}

/// A fresh directory to serve, searchable by the servers' unprivileged users.
pub fn new_root() -> TempDir {
    let root = tempfile::Builder::new().prefix("mastfs-root-").tempdir().expect("root dir");
    set_mode(root.path(), 0o755);
    root
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

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mastfs"));
        cmd.args(["mount", "--foreground", "--host", host])
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
                return Ok(Mount { mountpoint, cache_dir, child: Some(child), stderr_path, _scratch: scratch });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MountFailure {
                    exit_code: status.code(),
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                    command_line,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
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
    stderr_path: PathBuf,
    _scratch: TempDir,
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

    pub fn read(&self, rel: &str) -> Vec<u8> {
        let path = self.path(rel);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}\n{}", path.display(), self.stderr()))
    }

    /// `len` bytes at `offset` of `rel` (fewer at end of file).
    pub fn read_range(&self, rel: &str, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let path = self.path(rel);
        let f = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f
                .read_at(&mut buf[got..], offset + got as u64)
                .unwrap_or_else(|e| panic!("pread {}: {e}\n{}", path.display(), self.stderr()));
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        buf
    }

    /// `mastfs stats MOUNTPOINT`.
    pub fn stats(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mastfs"))
            .arg("stats")
            .arg(&self.mountpoint)
            .output()
            .expect("run mastfs stats")
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
        if is_mounted(&self.mountpoint) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
            }
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
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
