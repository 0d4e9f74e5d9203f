//! From what went wrong to what to do about it: each `Problem` the steps can meet, with the
//! facts it needs, becomes a cause in words and the fixes to try, in one table. Kept apart
//! from the steps so that every explanation is tested without a server.

use std::net::SocketAddr;
use std::time::Duration;

use super::args::Target;
use super::cert::CertInfo;

/// How a TCP connection attempt ended without a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No answer at all within the timeout: packets silently dropped.
    TimedOut,
    /// A reset: nothing listens, or a firewall rejects.
    Refused,
    /// No route, network down, and other errors (the message).
    Other(String),
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertProblem {
    /// Signed by no CA the check trusts.
    UnknownIssuer,
    /// Valid, but for other names than the host connected to.
    WrongName,
    Expired,
    NotYetValid,
    /// Anything else rustls says (the message).
    Other(String),
}

/// Something a step met that ends the check.
#[derive(Debug, Clone)]
pub(crate) enum Problem {
    /// `--ca-file` unreadable, no system roots, and other set-up failures.
    Setup(String),
    Resolve(String),
    Connect {
        addr: SocketAddr,
        how: Refusal,
    },
    /// Connected, but no greeting came (`tls_answered`: a TLS handshake on a second
    /// connection was answered, so the port speaks implicit FTPS).
    NoGreeting {
        tls_answered: bool,
    },
    /// The server closed the connection before or instead of answering.
    Closed {
        during: &'static str,
    },
    /// Bytes that are no FTP reply.
    NotFtp {
        said: String,
    },
    /// `421` or a refusal of the greeting: too many connections, or not now.
    Busy {
        reply: String,
    },
    AuthTlsRefused {
        reply: String,
    },
    /// Implicit TLS asked for, but the server answered in plain text (its greeting).
    PlainText {
        said: String,
    },
    Certificate {
        problem: CertProblem,
        error: String,
        cert: Option<CertInfo>,
    },
    /// No TLS version or cipher in common.
    TlsIncompatible {
        error: String,
    },
    Tls {
        error: String,
    },
    /// No answer in time during an exchange that had started.
    Timeout {
        during: &'static str,
    },
    LoginRefused {
        reply: String,
    },
    ProtectionRefused {
        reply: String,
    },
    /// A reply that makes no sense for its command.
    Unexpected {
        during: &'static str,
        reply: String,
    },
    RootRefused {
        reply: String,
    },
    PassiveRefused {
        command: &'static str,
        reply: String,
        other_answered: Option<bool>,
    },
    PassiveUnreadable {
        command: &'static str,
        reply: String,
    },
    DataConnect {
        addr: SocketAddr,
        command: &'static str,
        how: Refusal,
    },
    /// The server answered the transfer command with a refusal about the data connection.
    DataRefused {
        reply: String,
    },
    /// The data connection's TLS failed (the server's control reply, if it said why).
    DataTls {
        error: String,
        reply: Option<String>,
        resumed: Option<bool>,
    },
    /// The data connection opened, but its data did not arrive in time.
    DataStalled,
    FileRefused {
        path: String,
        reply: String,
    },
    RestRefused {
        reply: String,
    },
    /// Every step worked, but mastfs's own start-up code did not.
    Mount {
        error: String,
    },
}

/// What the report says about a failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnosis {
    /// A stable name for scripts (`passive_port_blocked`, `certificate_untrusted`, ...).
    pub(crate) problem: &'static str,
    /// What happened, in one line (the step's line in the report).
    pub(crate) error: String,
    /// The likely cause, in words.
    pub(crate) cause: String,
    /// What to try, most likely first.
    pub(crate) fix: Vec<String>,
}

fn d(problem: &'static str, error: String, cause: String, fix: Vec<String>) -> Diagnosis {
    Diagnosis { problem, error, cause, fix }
}

fn secs(t: Duration) -> String {
    format!("{} s", t.as_secs())
}

/// The other way to reach a server of this kind: explicit FTPS is usually on port 21,
/// implicit on 990.
fn other_mode(t: &Target) -> String {
    if t.implicit {
        "if the server speaks explicit FTPS (AUTH TLS, usually port 21), drop --implicit".to_string()
    } else {
        "if the server speaks implicit FTPS (TLS from the first byte, usually port 990), add --implicit".to_string()
    }
}

/// Turns a problem into its explanation for this target.
pub(crate) fn explain(p: &Problem, t: &Target) -> Diagnosis {
    let host = &t.host;
    let timeout = secs(t.timeout);
    match p {
        Problem::Setup(m) => d(
            "setup",
            m.clone(),
            format!("the check could not start: {m}"),
            vec!["check the file given with --ca-file (a PEM file of CA certificates), or install the system's CA certificates (Debian: ca-certificates)".into()],
        ),
        Problem::Resolve(m) => d(
            "host_unknown",
            format!("cannot resolve {host}: {m}"),
            format!("the name {host} does not resolve to an address"),
            vec![
                "check the host name (SOURCE or --host)".into(),
                "check this machine's network connection and DNS".into(),
            ],
        ),
        Problem::Connect { addr, how } => {
            let mode_fix = other_mode(t);
            match how {
                Refusal::Refused => d(
                    "port_closed",
                    format!("connection to {addr} refused"),
                    format!("nothing accepts connections on port {} of {host}: the port is closed, or a firewall rejects it", addr.port()),
                    vec![
                        format!("check --port: explicit FTPS listens on port 21 by default, implicit FTPS (--implicit) on 990; this check used {}", addr.port()),
                        mode_fix,
                        format!("check the host: is {host} the FTPS server?"),
                    ],
                ),
                Refusal::TimedOut => d(
                    "host_unreachable",
                    format!("no answer from {addr} within {timeout}"),
                    format!("{host} did not answer on port {} within {timeout}: the host is down or unreachable, the address is wrong, or a firewall silently drops the connection", addr.port()),
                    vec![
                        "check the host and --port (explicit FTPS: 21, implicit FTPS with --implicit: 990)".into(),
                        "check that this machine may open outgoing connections to that port (a firewall, a proxy-only network)".into(),
                        "a slow link: try a larger --timeout".into(),
                    ],
                ),
                Refusal::Other(m) => d(
                    "host_unreachable",
                    format!("cannot connect to {addr}: {m}"),
                    format!("{host} cannot be reached from here ({m})"),
                    vec!["check this machine's network connection and the host name".into()],
                ),
            }
        }
        Problem::NoGreeting { tls_answered: true } => d(
            "implicit_expected",
            format!("connected, but no FTP greeting within {timeout}; the port answers TLS instead"),
            format!("port {} of {host} speaks implicit FTPS: it waits for a TLS handshake before it says anything, while explicit FTPS (AUTH TLS, what this check used) waits for the server's greeting", t.port),
            vec!["add --implicit (or -o implicit)".into()],
        ),
        Problem::NoGreeting { tls_answered: false } => d(
            "no_greeting",
            format!("connected, but no FTP greeting within {timeout}"),
            format!("{host} accepted the connection on port {} but sent no FTP greeting within {timeout}", t.port),
            vec![
                other_mode(t),
                "the server may be overloaded: try again, or with a larger --timeout".into(),
                "check --port: is this port an FTP server's?".into(),
            ],
        ),
        Problem::Closed { during } => d(
            "connection_closed",
            format!("the server closed the connection during {during}"),
            format!("{host} closed the connection during {during} without saying why: it may refuse this machine's address, be out of connections, or expect another protocol on this port"),
            vec![other_mode(t), "try again later; check --port".into()],
        ),
        Problem::NotFtp { said } => d(
            "not_ftp",
            format!("not an FTP reply: {said}"),
            format!("what answers on port {} of {host} does not speak FTP (it said: {said})", t.port),
            vec!["check --host and --port (explicit FTPS: 21, implicit FTPS: 990)".into()],
        ),
        Problem::Busy { reply } => d(
            "server_busy",
            format!("the server turned the connection away: {reply}"),
            format!("{host} refuses more connections now ({reply}); servers limit connections per user and per address"),
            vec![
                "close other sessions to this server (other mounts, FTP clients) or try again later".into(),
                "a mount adapts to such a limit by itself (it lowers --connections on 421)".into(),
            ],
        ),
        Problem::AuthTlsRefused { reply } => d(
            "not_ftps",
            format!("AUTH TLS refused: {reply}"),
            format!("{host} refused to start TLS ({reply}): on this port it offers plain FTP only, not FTPS. mastfs never falls back to plain FTP, which would send the password and every byte in the clear"),
            vec![
                "if the server offers implicit FTPS (usually on port 990), try --implicit".into(),
                "otherwise this server cannot be used with mastfs; ask its operators for FTPS".into(),
            ],
        ),
        Problem::PlainText { said } => d(
            "explicit_expected",
            format!("TLS handshake answered in plain text: {said}"),
            format!("port {} of {host} speaks FTP in plain text first (explicit FTPS: TLS starts with AUTH TLS after the greeting), but --implicit expects TLS from the first byte", t.port),
            vec![format!("drop --implicit (or -o implicit); explicit FTPS is usually on port 21 (this check used {})", t.port)],
        ),
        Problem::Certificate { problem, error, cert } => certificate(problem, error, cert.as_ref(), t),
        Problem::TlsIncompatible { error } => d(
            "tls_incompatible",
            format!("TLS handshake failed: {error}"),
            format!("{host} and mastfs have no TLS version or cipher in common ({error}); mastfs offers TLS 1.3 and 1.2 with modern ciphers only"),
            vec![
                if t.tls.tls12_only { "try without --tls-max 1.2".into() } else { "try --tls-max 1.2".into() },
                "a server that offers only TLS 1.0/1.1 or old ciphers cannot be used safely; ask its operators to update it".into(),
            ],
        ),
        Problem::Tls { error } => d(
            "tls_failed",
            format!("TLS handshake failed: {error}"),
            format!("the TLS handshake with {host} failed: {error}"),
            vec![other_mode(t), "try --tls-max 1.2".into()],
        ),
        Problem::Timeout { during } => d(
            "timeout",
            format!("no answer within {timeout} during {during}"),
            format!("{host} stopped answering during {during}: the server or the link is slow or stalled"),
            vec![
                "try again, or with a larger --timeout".into(),
                "a firewall or proxy that inspects FTP may hold the connection: try from another network".into(),
            ],
        ),
        Problem::LoginRefused { reply } if t.anonymous => d(
            "login_refused",
            format!("anonymous login refused: {reply}"),
            format!("{host} refused the anonymous login ({reply}): it may not allow anonymous logins, or wants an e-mail address as the password"),
            vec![
                "anonymous logins send --email as the password: give a real address, --email you@example.org".into(),
                "for exclusive-access data log in with --user (MAST: the e-mail address you registered with)".into(),
            ],
        ),
        Problem::LoginRefused { reply } => d(
            "login_refused",
            format!("login of {} refused: {reply}", t.user),
            format!("{host} refused the login of {} ({reply}): the user name or the password is wrong (the password came from {})", t.user, t.password_source),
            vec![
                "check --user (MAST: the e-mail address you registered with)".into(),
                format!("check the password from {}", t.password_source),
                "public data needs no --user: leave it out for an anonymous login".into(),
            ],
        ),
        Problem::ProtectionRefused { reply } => d(
            "data_protection_refused",
            format!("PBSZ/PROT P refused: {reply}"),
            format!("{host} refused to protect data connections with TLS ({reply}); mastfs never moves listings or file data in the clear"),
            vec!["this server cannot be used with mastfs as it is configured; ask its operators to allow PROT P".into()],
        ),
        Problem::Unexpected { during, reply } => d(
            "protocol_error",
            format!("unexpected reply during {during}: {reply}"),
            format!("{host} answered {during} with {reply}, which mastfs does not expect there"),
            vec!["run the check again with -v to see the whole exchange".into()],
        ),
        Problem::RootRefused { reply } => d(
            "root_unavailable",
            format!("cannot enter {}: {reply}", t.root),
            format!("{host} refuses to enter {} ({reply}): it does not exist, or this login may not read it", t.root),
            vec![
                "check --root (or the :DIR of SOURCE)".into(),
                "at MAST, public data is under /stage/anonymous/ and /pub; exclusive data needs --user".into(),
            ],
        ),
        Problem::PassiveRefused { command, reply, other_answered } => {
            let other = if *command == "PASV" { "EPSV" } else { "PASV" };
            let flag = if *command == "PASV" { "add --epsv" } else { "drop --epsv" };
            let fix = match other_answered {
                Some(true) => vec![format!("the server answers {other}: {flag}")],
                Some(false) => vec![format!("{other} was refused too: this server offers no passive mode mastfs can use")],
                None => vec![format!("try {flag}")],
            };
            d(
                "passive_refused",
                format!("{command} refused: {reply}"),
                format!("{host} refused {command} ({reply}), so no data connection (for listings and files) can be opened"),
                fix,
            )
        }
        Problem::PassiveUnreadable { command, reply } => d(
            "passive_unreadable",
            format!("no port in the {command} reply: {reply}"),
            format!("the server's {command} reply holds no port mastfs can read ({reply})"),
            vec![if *command == "PASV" { "try --epsv".into() } else { "try without --epsv".into() }],
        ),
        Problem::DataConnect { addr, command, how } => passive_blocked(addr, command, how, t),
        Problem::DataRefused { reply } => d(
            "data_connection_refused",
            format!("the server refused the data connection: {reply}"),
            format!("{host} did not accept the data connection ({reply}). Servers refuse a data connection that comes from another address than the control connection (vsftpd: \"Security: Bad IP connecting\"), as happens behind some NAT routers and proxies"),
            vec![
                "try --epsv".into(),
                "from a network without such a NAT or proxy, the same check should pass".into(),
            ],
        ),
        Problem::DataTls { error, reply, resumed } => {
            let said = reply.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            let resumption = match resumed {
                Some(false) => " The data connection's TLS session was not resumed from the control connection's.",
                _ => "",
            };
            d(
                "data_tls_refused",
                format!("TLS on the data connection failed: {error}{said}"),
                format!("{host} refused the data connection's TLS{said}. Servers such as vsftpd (require_ssl_reuse) demand that every data connection resumes the TLS session of its control connection; mastfs does, but some servers cannot resume TLS 1.3 sessions.{resumption}"),
                vec![
                    if t.tls.tls12_only { "it failed with TLS 1.2 too: the server may want client certificates, which mastfs does not offer".into() } else { "try --tls-max 1.2".into() },
                ],
            )
        }
        Problem::DataStalled => d(
            "data_stalled",
            format!("the data connection opened, but no data came within {timeout}"),
            format!("{host} accepted the data connection but its data did not arrive within {timeout}: a firewall or proxy may pass the connection but hold its data"),
            vec!["try --epsv".into(), "try again, or with a larger --timeout".into()],
        ),
        Problem::FileRefused { path, reply } => d(
            "file_refused",
            format!("RETR {path} refused: {reply}"),
            format!("the listing came through, so data connections work, but {host} refused to send {path} ({reply}): this login may not read that file"),
            vec!["check the file's permissions on the server, or try a --root whose files this login may read".into()],
        ),
        Problem::RestRefused { reply } => d(
            "rest_refused",
            format!("REST refused: {reply}"),
            format!("{host} refuses to start a transfer at an offset ({reply}). mastfs reads files in ranges (REST + RETR) and cannot read from such a server"),
            vec!["ask the server's operators to enable REST STREAM (RFC 3659)".into()],
        ),
        Problem::Mount { error } => d(
            "mount_failed",
            format!("mastfs's own start-up failed: {error}"),
            format!("every step of the check worked, but the start-up 'mastfs mount' runs did not: {error}"),
            vec!["run the check again with -v and report its output".into()],
        ),
    }
}

fn certificate(problem: &CertProblem, error: &str, cert: Option<&CertInfo>, t: &Target) -> Diagnosis {
    let host = &t.host;
    let trusted = match &t.tls.ca_file {
        Some(f) => format!("the CAs in {}", f.display()),
        None => "the system's CAs".to_string(),
    };
    let names = cert.map(|c| c.names.join(", ")).filter(|n| !n.is_empty());
    match problem {
        CertProblem::UnknownIssuer => {
            let issuer = cert.map(|c| c.issuer.clone()).unwrap_or_else(|| "its issuer".into());
            d(
                "certificate_untrusted",
                format!("certificate not trusted: {error}"),
                format!("the certificate of {host} was issued by {issuer}, which is not among {trusted}"),
                vec![
                    "if the server uses a private or self-signed CA, trust that CA's certificate: --ca-file CA.pem".into(),
                    "make sure you reach the right server: someone in between could present a certificate of their own".into(),
                    "only as a last resort, --insecure skips this check (still encrypted, but anyone in between could read and change the traffic)".into(),
                ],
            )
        }
        CertProblem::WrongName => d(
            "certificate_wrong_name",
            format!("certificate not valid for {host}: {error}"),
            format!(
                "the server's certificate is valid for {}, not for {host}",
                names.as_deref().unwrap_or("other names")
            ),
            vec![
                match names {
                    Some(n) => format!("connect with a name the certificate carries (one of: {n}) in SOURCE or --host"),
                    None => "connect with the name the certificate carries, in SOURCE or --host".into(),
                },
                "--ca-file does not help: the certificate is for another name, whoever signed it".into(),
            ],
        ),
        CertProblem::Expired | CertProblem::NotYetValid => d(
            "certificate_expired",
            format!("certificate not valid now: {error}"),
            format!("the certificate of {host} is not valid at this time ({error})"),
            vec![
                "check this machine's clock and date".into(),
                "if the clock is right, the server's operators must renew the certificate".into(),
            ],
        ),
        CertProblem::Other(_) => d(
            "certificate_refused",
            format!("certificate refused: {error}"),
            format!("the certificate of {host} was refused: {error}"),
            vec!["if the server uses a private CA, trust it with --ca-file CA.pem".into()],
        ),
    }
}

fn passive_blocked(addr: &SocketAddr, command: &str, how: &Refusal, t: &Target) -> Diagnosis {
    let host = &t.host;
    let port = addr.port();
    let what = match how {
        Refusal::TimedOut => format!("no answer within {}: the packets were dropped", secs(t.timeout)),
        Refusal::Refused => "connection refused".to_string(),
        Refusal::Other(m) => m.clone(),
    };
    let epsv = if command == "PASV" {
        "try --epsv (EPSV instead of PASV: some firewalls and NAT routers handle its data connections differently)"
    } else {
        "try without --epsv (PASV instead of EPSV)"
    };
    d(
        "passive_port_blocked",
        format!("no data connection to {addr} ({command} port): {what}"),
        format!("the control connection works, but the data connection to port {port} of {host}, the port the server gave in its {command} reply, could not be opened ({what}). FTP opens a second connection for every listing and file, to a port the server picks: a firewall between here and the server (on this machine, in your network, or at the server) blocks the server's passive ports. MAST's own FTP help page describes such passive-mode (PASV) trouble for external hosts"),
        vec![
            epsv.into(),
            "the network must allow outgoing TCP connections to the server's passive port range: ask your network administrator, or try from another network".into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::ftp::tls::TlsOptions;

    fn target() -> Target {
        Target {
            host: "ftp.example.org".into(),
            port: 21,
            implicit: false,
            epsv: false,
            root: "/stage".into(),
            timeout: Duration::from_secs(7),
            user: "anonymous".into(),
            anonymous: true,
            password: Secret::new("me@example.org".into()),
            password_source: "the --email address".into(),
            tls: TlsOptions::default(),
            tls_max: "1.3",
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn all_text(d: &Diagnosis) -> String {
        format!("{} {} {}", d.error, d.cause, d.fix.join(" "))
    }

    #[test]
    fn a_blocked_passive_port_blames_a_firewall_and_suggests_epsv() {
        let p = Problem::DataConnect { addr: addr(40001), command: "PASV", how: Refusal::TimedOut };
        let d = explain(&p, &target());
        assert_eq!(d.problem, "passive_port_blocked");
        assert!(d.cause.contains("firewall") && d.cause.contains("40001") && d.cause.contains("7 s"), "{d:?}");
        assert!(d.fix[0].contains("--epsv"), "{d:?}");
        assert!(d.cause.contains("MAST"), "{d:?}");
        let with_epsv = Target { epsv: true, ..target() };
        let p = Problem::DataConnect { addr: addr(40001), command: "EPSV", how: Refusal::Refused };
        assert!(explain(&p, &with_epsv).fix[0].contains("without --epsv"));
    }

    #[test]
    fn an_untrusted_certificate_points_to_ca_file_and_says_what_the_certificate_is() {
        let cert = CertInfo {
            subject: "CN=ftp.example.org".into(),
            issuer: "CN=Private CA".into(),
            names: vec!["ftp.example.org".into()],
            not_before: "2026".into(),
            not_after: "2027".into(),
            chain_len: 1,
        };
        let p = Problem::Certificate {
            problem: CertProblem::UnknownIssuer,
            error: "invalid peer certificate: UnknownIssuer".into(),
            cert: Some(cert.clone()),
        };
        let d = explain(&p, &target());
        assert_eq!(d.problem, "certificate_untrusted");
        assert!(d.cause.contains("CN=Private CA") && d.cause.contains("the system's CAs"), "{d:?}");
        assert!(d.fix[0].contains("--ca-file"), "{d:?}");
        let p =
            Problem::Certificate { problem: CertProblem::WrongName, error: "NotValidForName".into(), cert: Some(cert) };
        let d = explain(&p, &target());
        assert_eq!(d.problem, "certificate_wrong_name");
        assert!(d.fix[0].contains("ftp.example.org"), "{d:?}");
    }

    #[test]
    fn the_implicit_and_explicit_mismatch_is_named_both_ways() {
        let d = explain(&Problem::NoGreeting { tls_answered: true }, &target());
        assert_eq!(d.problem, "implicit_expected");
        assert!(d.fix[0].contains("add --implicit"), "{d:?}");
        let implicit = Target { implicit: true, port: 990, ..target() };
        let d = explain(&Problem::PlainText { said: "220 ready".into() }, &implicit);
        assert_eq!(d.problem, "explicit_expected");
        assert!(d.fix[0].contains("drop --implicit"), "{d:?}");
        let d = explain(&Problem::Connect { addr: addr(990), how: Refusal::Refused }, &implicit);
        assert!(all_text(&d).contains("drop --implicit") && all_text(&d).contains("21"), "{d:?}");
    }

    #[test]
    fn a_server_without_tls_is_called_not_ftps_and_never_offered_plain_ftp() {
        let d = explain(&Problem::AuthTlsRefused { reply: "530 Please login with USER and PASS.".into() }, &target());
        assert_eq!(d.problem, "not_ftps");
        assert!(d.cause.contains("never falls back to plain FTP"), "{d:?}");
    }

    #[test]
    fn a_refused_login_names_the_user_and_where_the_password_came_from_never_the_password() {
        let t = Target {
            user: "me@uni.edu".into(),
            anonymous: false,
            password: Secret::new("hunter2".into()),
            password_source: "MASTFS_PASSWORD".into(),
            ..target()
        };
        let d = explain(&Problem::LoginRefused { reply: "530 Login incorrect.".into() }, &t);
        let text = all_text(&d);
        assert!(text.contains("me@uni.edu") && text.contains("MASTFS_PASSWORD"), "{d:?}");
        assert!(!text.contains("hunter2"), "{d:?}");
        let d = explain(&Problem::LoginRefused { reply: "530 no".into() }, &target());
        assert!(all_text(&d).contains("e-mail address"), "{d:?}");
    }

    #[test]
    fn a_refused_data_tls_points_to_session_reuse_and_tls_1_2() {
        let p = Problem::DataTls {
            error: "unexpected end of file".into(),
            reply: Some("522 SSL connection failed: session reuse required".into()),
            resumed: Some(false),
        };
        let d = explain(&p, &target());
        assert_eq!(d.problem, "data_tls_refused");
        assert!(d.cause.contains("resume") && d.cause.contains("522"), "{d:?}");
        assert!(d.fix[0].contains("--tls-max 1.2"), "{d:?}");
    }

    #[test]
    fn unreachable_hosts_and_closed_ports_point_to_host_port_and_the_ftps_mode() {
        let d = explain(&Problem::Connect { addr: addr(21), how: Refusal::Refused }, &target());
        assert_eq!(d.problem, "port_closed");
        let text = all_text(&d);
        assert!(text.contains("--port") && text.contains("--implicit") && text.contains("990"), "{d:?}");
        let d = explain(&Problem::Connect { addr: addr(21), how: Refusal::TimedOut }, &target());
        assert_eq!(d.problem, "host_unreachable");
        assert!(d.cause.contains("7 s"), "{d:?}");
    }

    #[test]
    fn a_refused_passive_command_says_whether_the_other_one_works() {
        let p = Problem::PassiveRefused { command: "PASV", reply: "500 no".into(), other_answered: Some(true) };
        assert!(explain(&p, &target()).fix[0].contains("add --epsv"));
        let p = Problem::PassiveRefused { command: "EPSV", reply: "500 no".into(), other_answered: Some(true) };
        assert!(explain(&p, &target()).fix[0].contains("drop --epsv"));
    }
}
