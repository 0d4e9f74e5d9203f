//! `mastfs check` against real servers: every step reported on a good server, and each
//! failure this machine can produce named with its cause and the fix to try — an untrusted
//! certificate, a host name the certificate does not carry, a server without TLS, a wrong
//! password, a closed port, implicit and explicit FTPS mixed up, and a firewall that blocks
//! the passive ports (a real nftables rule, inside a network namespace of the test's own).
//!
//! `check` never mounts: these tests need the servers, not FUSE.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::relay::Relay;
use common::*;
use serde_json::Value;

const MASTFS: &str = env!("CARGO_BIN_EXE_mastfs");
/// Far longer than any check here takes (the slowest waits out a `--timeout 3` or two).
const LIMIT: Duration = Duration::from_secs(120);
/// A password that appears nowhere else, so finding it in output means it leaked.
const WRONG_PASSWORD: &str = "not-the-password-7731";

/// `mastfs check` of `server` (its address, port, CA and FTPS mode) with `extra` arguments.
fn check(server: &Server, extra: &[&str]) -> Output {
    check_at(server, "127.0.0.1", server.port, extra)
}

fn check_at(server: &Server, host: &str, port: u16, extra: &[&str]) -> Output {
    let mut cmd = Command::new(MASTFS);
    cmd.args(["check", host, "--port", &port.to_string(), "--ca-file"]).arg(&server.ca_file);
    if server.implicit {
        cmd.arg("--implicit");
    }
    cmd.args(extra);
    run(&mut cmd, LIMIT)
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The report of `check --json`.
fn report(out: &Output) -> Value {
    let text = stdout_of(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{text}\n{}", stderr_of(out)))
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

/// Asserts that the check failed at `at` with `problem`, and returns the failure.
fn failed_with<'a>(out: &Output, report: &'a Value, at: &str, problem: &str) -> &'a Value {
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1: {report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let failure = &report["failure"];
    assert_eq!(failure["step"], at, "failed at the wrong step: {report:#}");
    assert_eq!(failure["problem"], problem, "{report:#}");
    assert_eq!(step(report, at)["status"], "failed", "{report:#}");
    for s in report["steps"].as_array().expect("steps") {
        if s["step"] != at {
            assert_eq!(s["status"], "ok", "only the failed step may fail: {report:#}");
        }
    }
    failure
}

fn fixes(failure: &Value) -> String {
    failure["fix"].as_array().expect("fix").iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n")
}

/// A served root with one small file.
fn root_with_a_file() -> tempfile::TempDir {
    let root = new_root();
    write_file(&root.path().join("pub/README.txt"), b"A MAST-like test archive.\n");
    write_pattern_file(&root.path().join("data.fits"), 7, 100_000);
    root
}

const STEPS_EXPLICIT: [&str; 14] = [
    "resolve",
    "connect",
    "greeting",
    "AUTH TLS",
    "TLS",
    "protection",
    "login",
    "features",
    "root",
    "passive",
    "data connection",
    "listing",
    "read",
    "mount",
];

/// Every step worked, was timed, and the TLS facts of control and data connections are there.
fn assert_every_step_worked(out: &Output, report: &Value, steps: &[&str]) {
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr_of(out));
    assert_eq!(report["ok"], true);
    assert!(report["failure"].is_null(), "{report:#}");
    let names: Vec<&str> =
        report["steps"].as_array().expect("steps").iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(names, steps, "{report:#}");
    for s in report["steps"].as_array().expect("steps") {
        assert_eq!(s["status"], "ok", "{report:#}");
        assert!(s["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "each step has its time: {s:#}");
    }
    let tls = &step(report, "TLS")["details"];
    assert!(tls["version"].as_str().is_some_and(|v| v.starts_with("TLS 1.")), "{tls:#}");
    assert!(tls["cipher"].as_str().is_some_and(|c| !c.is_empty()), "{tls:#}");
    assert!(tls["key_exchange"].as_str().is_some_and(|k| !k.is_empty()), "{tls:#}");
    assert_eq!(tls["certificate"]["names"], serde_json::json!(["localhost", "127.0.0.1"]), "{tls:#}");
    let listing = &step(report, "listing")["details"];
    assert!(listing["entries"].as_u64().is_some_and(|n| n >= 2), "the root lists its file and dir: {listing:#}");
    assert!(listing["data_tls"]["resumed"].is_boolean(), "{listing:#}");
    let read = &step(report, "read")["details"];
    assert!(read["bytes"].as_u64().is_some_and(|n| n > 0), "a few bytes were read: {read:#}");
}

// ------------------------------------------------------------------ servers that work

#[test]
fn every_step_on_vsftpd_is_reported_with_its_time_banner_tls_and_features_and_exits_0() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let root = root_with_a_file();
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();

    let out = check(&server, &[]);
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr_of(&out));
    // `  ok      1.2 ms  name             summary`: status, time, step name in fixed columns.
    let timed_ok = |line: &str, name: &str| {
        line.starts_with("  ok ")
            && line.get(8..17).is_some_and(|t| t.ends_with(" ms") || t.ends_with(" s"))
            && line.get(19..35).map(str::trim_end) == Some(name)
    };
    for name in STEPS_EXPLICIT {
        assert!(text.lines().any(|l| timed_ok(l, name)), "no timed 'ok' line for step {name}:\n{text}");
    }
    assert!(text.contains("220 (vsFTPd 3.0.3)"), "the banner: {text}");
    assert!(text.contains("TLS 1.3") && text.contains("key exchange"), "TLS version and group: {text}");
    assert!(text.contains("certificate CN=localhost") && text.contains("localhost, 127.0.0.1"), "{text}");
    assert!(text.contains("EPSV") && text.contains("REST"), "the features: {text}");
    assert!(text.contains("session resumed from the control connection"), "vsftpd demands resumption: {text}");
    assert!(text.contains("OK: every step worked"), "{text}");

    let out = check(&server, &["--json"]);
    let r = report(&out);
    assert_every_step_worked(&out, &r, &STEPS_EXPLICIT);
    assert_eq!(step(&r, "listing")["details"]["data_tls"]["resumed"], true, "{r:#}");
    assert_eq!(step(&r, "read")["details"]["data_tls"]["resumed"], true, "{r:#}");
    assert_eq!(step(&r, "features")["details"]["mlsd"], false, "vsftpd lists with LIST: {r:#}");
    assert_eq!(step(&r, "greeting")["details"]["banner"][0], "220 (vsFTPd 3.0.3)");
    let read = &step(&r, "read")["details"];
    let (offset, bytes) = (read["offset"].as_u64().expect("offset"), read["bytes"].as_u64().expect("bytes"));
    assert!(offset > 0, "the read starts in the middle of the file (REST): {read:#}");
    assert_eq!(read["path"], "/data.fits", "the only file of the root: {read:#}");
    assert_eq!((read["size"].as_u64(), bytes), (Some(100_000), 4096), "{read:#}");
    // The server saw the ranged read (the mount step lists, it reads nothing).
    server.wait_for_sessions_to_end(Duration::from_secs(30));
    let reads: Vec<_> = server.transfers().into_iter().filter(|t| t.path.ends_with("data.fits")).collect();
    assert_eq!(reads.len(), 2, "one RETR per check run (human, then JSON): {reads:?}");
}

#[test]
fn every_step_on_pure_ftpd_is_reported_and_its_listing_uses_mlsd() {
    if !require_server(Kind::PureFtpd) {
        return;
    }
    let root = root_with_a_file();
    let server = Server::builder(Kind::PureFtpd).root(root.path()).start();
    let out = check(&server, &["--json"]);
    let r = report(&out);
    assert_every_step_worked(&out, &r, &STEPS_EXPLICIT);
    assert_eq!(step(&r, "features")["details"]["mlsd"], true, "{r:#}");
    assert!(step(&r, "listing")["details"]["command"].as_str().is_some_and(|c| c.starts_with("MLSD")), "{r:#}");
    assert!(step(&r, "greeting")["summary"].as_str().is_some_and(|s| s.contains("Pure-FTPd")), "{r:#}");
}

#[test]
fn an_implicit_ftps_server_is_checked_with_tls_before_the_greeting() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let root = root_with_a_file();
    let server = Server::builder(Kind::Vsftpd).implicit().root(root.path()).start();
    let out = check(&server, &["--json"]);
    let r = report(&out);
    let steps = [
        "resolve",
        "connect",
        "TLS",
        "greeting",
        "login",
        "protection",
        "features",
        "root",
        "passive",
        "data connection",
        "listing",
        "read",
        "mount",
    ];
    assert_every_step_worked(&out, &r, &steps);
}

#[test]
fn tls_1_2_and_epsv_are_checked_when_asked_for() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let root = root_with_a_file();
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    let out = check(&server, &["--json", "--tls-max", "1.2", "--epsv"]);
    let r = report(&out);
    assert_every_step_worked(&out, &r, &STEPS_EXPLICIT);
    assert_eq!(step(&r, "TLS")["details"]["version"], "TLS 1.2", "{r:#}");
    assert_eq!(step(&r, "passive")["details"]["command"], "EPSV", "{r:#}");
    let data = &step(&r, "listing")["details"]["data_tls"];
    assert_eq!((data["version"].as_str(), data["resumed"].as_bool()), (Some("TLS 1.2"), Some(true)), "{r:#}");
}

#[test]
fn a_password_login_is_checked_and_the_password_is_never_printed_even_with_the_dialogue() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let root = root_with_a_file();
    let server = Server::builder(Kind::Vsftpd).root(root.path()).with_user().start();
    let mut cmd = Command::new(MASTFS);
    cmd.args(["check", &format!("{TEST_USER}@127.0.0.1"), "--port", &server.port.to_string(), "-v", "--ca-file"])
        .arg(&server.ca_file)
        .env("MASTFS_PASSWORD", TEST_PASSWORD);
    let out = run(&mut cmd, LIMIT);
    let (text, log) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(0), "{text}\n{log}");
    assert!(text.contains(&format!("as {TEST_USER}, password from MASTFS_PASSWORD")), "{text}");
    assert!(log.contains("-> USER") && log.contains("PASS (not shown)"), "-v shows the dialogue: {log}");
    assert!(!text.contains(TEST_PASSWORD) && !log.contains(TEST_PASSWORD), "the password was printed:\n{text}\n{log}");
}

// ------------------------------------------------------------------ failures, each named

#[test]
fn an_untrusted_certificate_fails_at_tls_says_what_the_certificate_is_and_points_to_ca_file() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).with_user().start();
    let mut cmd = Command::new(MASTFS);
    cmd.args(["check", "127.0.0.1", "--port", &server.port.to_string(), "--user", TEST_USER, "--ca-file"])
        .arg(&server.wrong_ca_file)
        .env("MASTFS_PASSWORD", TEST_PASSWORD);
    let out = run(&mut cmd, LIMIT);
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED at step \"TLS\""), "{text}");
    assert!(text.contains("certificate CN=localhost, issued by CN=mastfs test CA"), "what it says: {text}");
    assert!(text.contains("for localhost, 127.0.0.1"), "its names: {text}");
    assert!(text.contains("fix:") && text.contains("--ca-file"), "{text}");

    let out = run(cmd.arg("--json"), LIMIT);
    let r = report(&out);
    let failure = failed_with(&out, &r, "TLS", "certificate_untrusted");
    assert!(failure["cause"].as_str().is_some_and(|c| c.contains("mastfs test CA")), "{r:#}");
    assert!(fixes(failure).contains("--ca-file"), "{r:#}");
    assert!(step(&r, "TLS")["details"]["certificate"]["subject"] == "CN=localhost", "{r:#}");
    let log = fs::read_to_string(&server.protocol_log).expect("the server's protocol log");
    assert!(log.contains("\"AUTH TLS\"") && !log.contains("USER"), "no login over an untrusted connection:\n{log}");
}

#[test]
fn a_host_name_the_certificate_does_not_carry_is_named_with_the_names_it_does() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let pasv = Relay::free_pasv_range(2);
    let server = Server::builder(Kind::Vsftpd).pasv_range(pasv.0, pasv.1).start();
    // The same server and trusted CA, reached as 127.0.0.2: not a name in its certificate.
    let relay = Relay::start(server.port, pasv);
    let out = check_at(&server, &relay.host(), relay.port, &["--json"]);
    let r = report(&out);
    let failure = failed_with(&out, &r, "TLS", "certificate_wrong_name");
    assert!(failure["cause"].as_str().is_some_and(|c| c.contains("127.0.0.2")), "{r:#}");
    let fix = fixes(failure);
    assert!(fix.contains("localhost, 127.0.0.1"), "the names to use instead: {fix}");
    assert!(relay.stats().control_connections > 0, "the check went through the relay");
}

#[test]
fn a_server_without_tls_is_called_not_ftps_and_never_sees_a_login() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).plain().with_user().start();
    let mut cmd = Command::new(MASTFS);
    cmd.args(["check", "127.0.0.1", "--port", &server.port.to_string(), "--user", TEST_USER, "--json", "--ca-file"])
        .arg(&server.ca_file)
        .env("MASTFS_PASSWORD", TEST_PASSWORD);
    let out = run(&mut cmd, LIMIT);
    let r = report(&out);
    let failure = failed_with(&out, &r, "AUTH TLS", "not_ftps");
    assert!(failure["cause"].as_str().is_some_and(|c| c.contains("never falls back to plain FTP")), "{r:#}");
    let log = fs::read_to_string(&server.protocol_log).expect("the server's protocol log");
    let commands: Vec<&str> = log.lines().filter(|l| l.contains("FTP command")).collect();
    assert!(commands.iter().any(|l| l.contains("AUTH TLS")), "{log}");
    assert!(!commands.iter().any(|l| l.contains("USER") || l.contains("PASS")), "a login in clear:\n{log}");
}

#[test]
fn a_wrong_password_is_a_refused_login_naming_the_user_and_the_password_source_not_the_password() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).with_user().start();
    let mut cmd = Command::new(MASTFS);
    cmd.args(["check", &format!("{TEST_USER}@127.0.0.1"), "--port", &server.port.to_string(), "--ca-file"])
        .arg(&server.ca_file)
        .env("MASTFS_PASSWORD", WRONG_PASSWORD);
    let out = run(&mut cmd, LIMIT);
    let text = stdout_of(&out);
    assert!(text.contains("FAILED at step \"login\""), "{text}");
    assert!(!text.contains(WRONG_PASSWORD) && !stderr_of(&out).contains(WRONG_PASSWORD), "password printed: {text}");

    let out = run(cmd.arg("--json"), LIMIT);
    let r = report(&out);
    let failure = failed_with(&out, &r, "login", "login_refused");
    let cause = failure["cause"].as_str().expect("cause");
    assert!(cause.contains(TEST_USER) && cause.contains("MASTFS_PASSWORD"), "{r:#}");
    assert!(!stdout_of(&out).contains(WRONG_PASSWORD), "{r:#}");
}

#[test]
fn a_closed_port_fails_at_connect_and_points_to_the_port_and_the_ftps_mode() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = check_at(&server, "127.0.0.1", closed, &["--json"]);
    let r = report(&out);
    let failure = failed_with(&out, &r, "connect", "port_closed");
    let fix = fixes(failure);
    assert!(fix.contains("--port") && fix.contains("--implicit") && fix.contains("990"), "{fix}");
}

#[test]
fn explicit_ftps_against_an_implicit_server_is_told_to_add_implicit() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::builder(Kind::Vsftpd).implicit().start();
    let mut cmd = Command::new(MASTFS);
    // No --implicit: the server waits for TLS, the check for a greeting.
    cmd.args(["check", "127.0.0.1", "--port", &server.port.to_string(), "--timeout", "3", "--json", "--ca-file"])
        .arg(&server.ca_file);
    let out = run(&mut cmd, LIMIT);
    let r = report(&out);
    let failure = failed_with(&out, &r, "greeting", "implicit_expected");
    assert!(fixes(failure).contains("add --implicit"), "{r:#}");
}

#[test]
fn implicit_ftps_against_an_explicit_server_is_told_to_drop_implicit() {
    if !require_server(Kind::Vsftpd) {
        return;
    }
    let server = Server::start(Kind::Vsftpd);
    let out = check(&server, &["--implicit", "--json"]);
    let r = report(&out);
    let failure = failed_with(&out, &r, "TLS", "explicit_expected");
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("220")), "the plain greeting is quoted: {r:#}");
    assert!(fixes(failure).contains("drop --implicit"), "{r:#}");
}

// ------------------------------------------------------------------ a firewalled passive port

/// Runs `f` on a thread of its own inside a new network namespace: its own loopback and its
/// own firewall, so a rule added there touches no other test or engineer on this machine.
/// Servers and commands started from that thread live in it. The namespace, and its rules,
/// go away with the last of them.
fn in_private_network<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET moves only the
        // calling thread (and what it starts from now on) into a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        shell(&["ip", "link", "set", "lo", "up"]);
        f()
    });
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn shell(argv: &[&str]) {
    let out = run(Command::new(argv[0]).args(&argv[1..]), Duration::from_secs(30));
    assert!(out.status.success(), "{argv:?} failed: {}", stderr_of(&out));
}

/// An nftables rule in the current thread's namespace: TCP to ports `range` gets `verdict`.
fn firewall(range: (u16, u16), verdict: &str) {
    shell(&["nft", "add", "table", "inet", "mastfs_check"]);
    shell(&["nft", "add", "chain", "inet", "mastfs_check", "input", "{ type filter hook input priority 0; }"]);
    let ports = format!("{}-{}", range.0, range.1);
    let mut rule = vec!["nft", "add", "rule", "inet", "mastfs_check", "input", "tcp", "dport", &ports];
    rule.extend(verdict.split(' '));
    shell(&rule);
}

/// A vsftpd whose passive ports a firewall blocks with `verdict`, checked with `extra`.
fn check_behind_a_firewall(verdict: &'static str, extra: &'static [&'static str]) -> (Output, Value, String) {
    in_private_network(move || {
        let root = root_with_a_file();
        // A namespace of its own: any range is free.
        let pasv = (40000, 40009);
        let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
        firewall(pasv, verdict);
        let mut args = vec!["--timeout", "3"];
        args.extend(extra);
        let out = check(&server, &args);
        let text = stdout_of(&out);
        args.push("--json");
        let out = check(&server, &args);
        let r = report(&out);
        (out, r, text)
    })
}

#[test]
fn a_passive_port_a_firewall_drops_fails_the_data_connection_and_suggests_epsv() {
    if !require_server(Kind::Vsftpd) || !require_program("nft") || !require_program("ip") {
        return;
    }
    let (out, r, text) = check_behind_a_firewall("drop", &[]);
    assert!(text.contains("FAILED at step \"data connection\""), "{text}");
    assert!(text.contains("firewall") && text.contains("--epsv"), "{text}");
    let failure = failed_with(&out, &r, "data connection", "passive_port_blocked");
    assert_eq!(step(&r, "passive")["details"]["command"], "PASV", "{r:#}");
    let port = step(&r, "passive")["details"]["port"].as_u64().expect("the passive port");
    assert!((40000..=40009).contains(&port), "{r:#}");
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("no answer")), "dropped, not refused: {r:#}");
    assert!(failure["cause"].as_str().is_some_and(|c| c.contains("firewall") && c.contains("MAST")), "{r:#}");
    assert!(fixes(failure).starts_with("try --epsv"), "{r:#}");
}

#[test]
fn a_passive_port_a_firewall_rejects_is_named_the_same_way_for_epsv() {
    if !require_server(Kind::Vsftpd) || !require_program("nft") || !require_program("ip") {
        return;
    }
    let (out, r, _) = check_behind_a_firewall("reject with tcp reset", &["--epsv"]);
    let failure = failed_with(&out, &r, "data connection", "passive_port_blocked");
    assert_eq!(step(&r, "passive")["details"]["command"], "EPSV", "{r:#}");
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("refused")), "{r:#}");
    assert!(fixes(failure).starts_with("try without --epsv"), "{r:#}");
}

#[test]
fn a_control_port_a_firewall_drops_is_an_unreachable_host_after_the_timeout() {
    if !require_server(Kind::Vsftpd) || !require_program("nft") || !require_program("ip") {
        return;
    }
    let (out, r) = in_private_network(|| {
        let server = Server::start(Kind::Vsftpd);
        firewall((server.port, server.port), "drop");
        let out = check(&server, &["--timeout", "2", "--json"]);
        let r = report(&out);
        (out, r)
    });
    let failure = failed_with(&out, &r, "connect", "host_unreachable");
    assert!(failure["cause"].as_str().is_some_and(|c| c.contains("firewall")), "{r:#}");
    assert!(fixes(failure).contains("--port"), "{r:#}");
}

// ------------------------------------------------------------------ the command line

#[test]
fn help_describes_check_its_steps_and_its_options() {
    let top = run(Command::new(MASTFS).arg("--help"), LIMIT);
    assert!(stdout_of(&top).contains("  check "), "mastfs --help lists check:\n{}", stdout_of(&top));
    let help = run(Command::new(MASTFS).args(["check", "--help"]), LIMIT);
    let text = stdout_of(&help);
    assert!(help.status.success(), "{text}");
    for word in [
        "--ca-file",
        "--implicit",
        "--epsv",
        "--tls-max",
        "--json",
        "--user",
        "-o <OPTIONS>",
        "0 only if every step worked",
    ] {
        assert!(text.contains(word), "check --help does not mention {word}:\n{text}");
    }
    let page = run(Command::new(MASTFS).args(["man", "check"]), LIMIT);
    assert!(stdout_of(&page).contains(".TH mastfs-check 1"), "{}", stdout_of(&page));
}

#[test]
fn bad_options_stop_the_check_before_any_connection_with_exit_status_2() {
    let out = run(Command::new(MASTFS).args(["check", "--insecure", "--ca-file", "/nonexistent.pem"]), LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("contradict"), "{}", stderr_of(&out));
    let out = run(Command::new(MASTFS).args(["check", "-o", "frobnicate"]), LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let missing = Path::new("/nonexistent/ca.pem");
    let out = run(Command::new(MASTFS).args(["check", "127.0.0.1", "--json", "--ca-file"]).arg(missing), LIMIT);
    let r = report(&out);
    failed_with(&out, &r, "setup", "setup");
}
