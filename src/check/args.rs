//! The options of `mastfs check`: the connection options of `mastfs mount`, under the same
//! names, defaults and `-o` spellings, so that a mount's command line or an fstab line's
//! options can be checked as they are. What is not about the connection (cache, FUSE,
//! mount(8) options, the mount point) is accepted and has no effect.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::{DEFAULT_HOST, TlsMax};
use crate::config::Secret;
use crate::credentials::{self, PASSWORD_ENV};
use crate::ftp::tls::TlsOptions;
use crate::mount_opts;

const CHECK_USAGE: &str = "mastfs check [OPTIONS] [SOURCE] [MOUNTPOINT]";

const CHECK_AFTER_HELP: &str = "\
Steps:
  resolve, connect, greeting, AUTH TLS, TLS (version, cipher, key exchange, certificate),
  protection (PBSZ/PROT P), login, features (TYPE I, FEAT), root (CWD), passive (PASV or
  EPSV), data connection, listing (MLSD or LIST, over TLS resumed from the control
  connection's session), read (REST + RETR of a few bytes of the smallest listed file), and
  last 'mount': mastfs's own start-up, as 'mastfs mount' runs it. With --implicit, TLS
  comes before the greeting and protection after the login.

  Each step prints its time. The first one that fails ends the check with its likely cause
  and what to try (--ca-file, --implicit, --epsv, --tls-max 1.2, --user, ...). The exit
  status is 0 only if every step worked, 1 if one failed, 2 if the check could not start
  (its options, the password).

Examples:
  mastfs check                                 archive.stsci.edu, anonymous, explicit FTPS
  mastfs check --epsv                          data connections with EPSV instead of PASV
  mastfs check me@uni.edu@archive.stsci.edu    an exclusive-access login (password as for mount)
  mastfs check ftp.example.org -o port=990,implicit,ca_file=/etc/ssl/example-ca.pem
  mastfs check --json | jq .failure            for scripts

The password is never printed; the report says where it came from.";

/// `mastfs check`'s arguments (see `--help`).
#[derive(Args, Debug)]
#[command(override_usage = CHECK_USAGE, after_long_help = CHECK_AFTER_HELP, args_override_self = true)]
pub struct CheckArgs {
    /// The server as `mastfs mount` takes it: [USER@]HOST[:DIR] (e.g. archive.stsci.edu:/stage)
    /// [default: archive.stsci.edu]
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,

    /// Accepted and ignored, so that a mount's command line can be checked by writing
    /// `check` for `mount`. A lone argument that is a path, not a SOURCE, is taken for it.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// Print one JSON object for scripts instead of the report for people
    #[arg(long)]
    pub json: bool,

    /// FTPS server [default: archive.stsci.edu]
    #[arg(long, help_heading = "Server")]
    pub host: Option<String>,

    /// Server port [default: 21, or 990 with --implicit]
    #[arg(long, help_heading = "Server")]
    pub port: Option<u16>,

    /// Implicit FTPS: TLS from the first byte (usually port 990) instead of AUTH TLS
    #[arg(long, help_heading = "Server")]
    pub implicit: bool,

    /// Use EPSV instead of PASV for data connections
    #[arg(long, help_heading = "Server")]
    pub epsv: bool,

    /// Remote directory to list (the one a mount would show) [default: /]
    #[arg(long, value_name = "DIR", help_heading = "Server")]
    pub root: Option<String>,

    /// Seconds to wait for the server in each step before failing it
    #[arg(long, default_value_t = 30, value_name = "SECS", help_heading = "Server",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Login name for exclusive-access data; anonymous if unset. Its password comes from
    /// --password-file, MASTFS_PASSWORD, ~/.netrc or a prompt, as for `mastfs mount`
    #[arg(long, help_heading = "Login")]
    pub user: Option<String>,

    /// File holding the password of --user on its first line; it must be yours and private
    /// (chmod 600)
    #[arg(long, value_name = "FILE", help_heading = "Login")]
    pub password_file: Option<PathBuf>,

    /// Password sent for anonymous logins (MAST asks for an e-mail address)
    #[arg(long, default_value = "mastfs@example.org", value_name = "EMAIL", help_heading = "Login")]
    pub email: String,

    /// PEM file of CA certificates to trust instead of the system's
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify the server's certificate (traffic stays encrypted, but unauthenticated)
    #[arg(long, help_heading = "TLS")]
    pub insecure: bool,

    /// Highest TLS version to offer (1.2 works around servers with broken TLS 1.3 resumption)
    #[arg(long, value_enum, default_value = "1.3", help_heading = "TLS")]
    pub tls_max: TlsMax,

    /// Also show the FTP dialogue on stderr (-v; the password never appears), -vv more
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Output")]
    pub verbose: u8,

    /// Mount options, comma-separated, as `mastfs mount -o` takes them: the connection
    /// settings among them apply (port=990,implicit,ca_file=FILE, ...), the rest is ignored
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append, help_heading = "Output")]
    pub options: Vec<String>,
}

/// What to check, settled from the arguments: every option resolved, the password read.
#[derive(Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub implicit: bool,
    pub epsv: bool,
    pub root: String,
    pub timeout: Duration,
    pub user: String,
    pub anonymous: bool,
    pub password: Secret,
    /// Where the password came from, for the report (never the password itself).
    pub password_source: String,
    pub tls: TlsOptions,
    pub tls_max: &'static str,
}

impl Target {
    /// The options a mount of this target takes, for messages that suggest a change.
    pub fn mode(&self) -> &'static str {
        if self.implicit { "implicit FTPS" } else { "explicit FTPS (AUTH TLS)" }
    }

    pub fn passive(&self) -> &'static str {
        if self.epsv { "EPSV" } else { "PASV" }
    }
}

/// Settles the arguments into a `Target`, reading the password as `mastfs mount` would.
/// Every error is a one-line reason.
pub fn resolve(args: CheckArgs) -> Result<Target, String> {
    let mut source = args.source.clone();
    let a_path = |s: &str| s.contains('/') && mount_opts::parse_source(s).is_err();
    if args.mountpoint.is_none() && source.as_deref().is_some_and(a_path) {
        // No host name holds a '/': a lone path is the mount point of a mount command line.
        source = None;
    }
    let (mut host, mut user, mut root) = (args.host.clone(), args.user.clone(), args.root.clone());
    if let Some(text) = &source {
        let s = mount_opts::parse_source(text)?;
        if host.as_ref().is_some_and(|h| *h != s.host) {
            return Err(format!("SOURCE names host {} but --host says {}", s.host, host.unwrap_or_default()));
        }
        host = Some(s.host);
        if let Some(u) = s.user {
            if user.as_ref().is_some_and(|given| *given != u) {
                return Err(format!("SOURCE names user {u} but --user says {}", user.unwrap_or_default()));
            }
            user = Some(u);
        }
        if let Some(dir) = s.dir {
            if root.as_ref().is_some_and(|r| *r != dir) {
                return Err(format!("SOURCE names directory {dir} but --root says {}", root.unwrap_or_default()));
            }
            root = Some(dir);
        }
    }
    if args.insecure && args.ca_file.is_some() {
        return Err("--insecure and --ca-file contradict each other".into());
    }
    let host = host.unwrap_or_else(|| DEFAULT_HOST.to_string());
    let anonymous = user.as_deref().is_none_or(|u| u == "anonymous" || u == "ftp");
    let (user, password, password_source) = if anonymous {
        if args.password_file.is_some() {
            return Err("--password-file is for --user logins; anonymous logins send --email".into());
        }
        let user = user.unwrap_or_else(|| "anonymous".into());
        (user, Secret::new(args.email.clone()), "the --email address".to_string())
    } else {
        let user = user.unwrap_or_default();
        let (password, source) = password_for(&args, &host, &user)?;
        (user, password, source)
    };
    Ok(Target {
        port: args.port.unwrap_or(if args.implicit { 990 } else { 21 }),
        implicit: args.implicit,
        epsv: args.epsv,
        root: normalize_root(root.as_deref().unwrap_or("/")),
        timeout: Duration::from_secs(args.timeout),
        anonymous,
        password,
        password_source,
        tls: TlsOptions {
            ca_file: args.ca_file.clone(),
            insecure: args.insecure,
            tls12_only: args.tls_max == TlsMax::V12,
        },
        tls_max: if args.tls_max == TlsMax::V12 { "1.2" } else { "1.3" },
        host,
        user,
    })
}

/// The password of `user`, from the same places and in the same order as for a mount, and
/// where it came from.
fn password_for(args: &CheckArgs, host: &str, user: &str) -> Result<(Secret, String), String> {
    if let Some(file) = &args.password_file {
        let password = credentials::password_from_file(file)?;
        return Ok((password, format!("--password-file {}", file.display())));
    }
    let source = if std::env::var_os(PASSWORD_ENV).is_some() {
        PASSWORD_ENV.to_string()
    } else if in_netrc(host, user) {
        "~/.netrc".to_string()
    } else {
        "the prompt".to_string()
    };
    Ok((credentials::password_for(host, user)?, source))
}

fn in_netrc(host: &str, user: &str) -> bool {
    let Some(home) = crate::config::home_dir() else { return false };
    std::fs::read_to_string(home.join(".netrc"))
        .is_ok_and(|text| credentials::netrc_password(&text, host, user).is_some())
}

/// `/stage/` and `stage` are `/stage`, as for a mount.
fn normalize_root(root: &str) -> String {
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, try_parse_from};

    fn target(argv: &[&str]) -> Result<Target, String> {
        match try_parse_from(argv.iter().copied()) {
            Ok(Cli { command: Command::Check(args) }) => resolve(args),
            Ok(other) => panic!("not a check: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn without_arguments_it_checks_the_mast_archive_anonymously_over_explicit_ftps() {
        let t = target(&["mastfs", "check"]).expect("target");
        assert_eq!((t.host.as_str(), t.port, t.implicit, t.epsv), (DEFAULT_HOST, 21, false, false));
        assert_eq!((t.user.as_str(), t.root.as_str()), ("anonymous", "/"));
        assert!(t.anonymous);
        assert_eq!(t.password.expose(), "mastfs@example.org");
    }

    #[test]
    fn a_source_gives_host_login_and_directory_as_for_a_mount() {
        let t = target(&["mastfs", "check", "ftp.example.org:/stage/"]).expect("target");
        assert_eq!((t.host.as_str(), t.root.as_str()), ("ftp.example.org", "/stage"));
        let e = target(&["mastfs", "check", "--host", "a.example", "b.example"]).expect_err("two hosts");
        assert!(e.contains("a.example") && e.contains("b.example"), "{e}");
    }

    #[test]
    fn a_mount_command_line_is_checked_by_writing_check_for_mount() {
        let t = target(&["mastfs", "check", "h.example", "/mnt/mast", "-o", "port=990,implicit,cache_dir=/c"])
            .expect("target");
        assert_eq!((t.host.as_str(), t.port, t.implicit), ("h.example", 990, true));
        let t = target(&["mastfs", "check", "/mnt/mast", "--epsv"]).expect("a lone mount point");
        assert_eq!(t.host, DEFAULT_HOST);
        assert!(t.epsv);
    }

    #[test]
    fn connection_settings_of_o_apply_and_the_rest_is_ignored() {
        let t = target(&[
            "mastfs",
            "check",
            "-o",
            "host=h.example,port=2121,epsv,tls_max=1.2,timeout=5,root=/pub,allow_other,_netdev,connections=8",
            "-o",
            "cache_size=1G,foreground",
        ])
        .expect("target");
        assert_eq!((t.host.as_str(), t.port, t.epsv, t.root.as_str()), ("h.example", 2121, true, "/pub"));
        assert_eq!((t.tls_max, t.timeout), ("1.2", Duration::from_secs(5)));
        assert!(t.tls.tls12_only);
        let e = target(&["mastfs", "check", "-o", "frobnicate"]).expect_err("unknown option");
        assert!(e.contains("frobnicate"), "{e}");
        let e = target(&["mastfs", "check", "-o", "port=http"]).expect_err("bad value");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn contradictions_are_refused_as_for_a_mount() {
        let e = target(&["mastfs", "check", "--insecure", "--ca-file", "/ca.pem"]).expect_err("contradiction");
        assert!(e.contains("--insecure"), "{e}");
        let e = target(&["mastfs", "check", "--password-file", "/pw"]).expect_err("anonymous with a password file");
        assert!(e.contains("--password-file"), "{e}");
    }

    #[test]
    fn a_password_file_is_named_as_the_source_and_its_content_kept_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let file = file.to_str().expect("UTF-8");
        let t = target(&["mastfs", "check", "me@h.example", "--password-file", file]).expect("target");
        assert_eq!((t.user.as_str(), t.password.expose()), ("me", "hunter2"));
        assert!(t.password_source.contains(file) && !t.password_source.contains("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"), "the password shows in {t:?}");
    }
}
