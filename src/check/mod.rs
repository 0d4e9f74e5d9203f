//! `mastfs check`: diagnoses the connection a mount would make, step by step.
//!
//! Read in this order: `args.rs` settles the options (those of `mastfs mount`) into a
//! `Target`; `steps.rs` walks one connection through resolve, connect, greeting, AUTH TLS,
//! TLS, protection, login, features, root, passive, data connection, listing and read, then
//! runs the mount's own start-up; `diagnose.rs` turns the first failure into its likely cause
//! and fix; `report.rs` prints each step as it ends (or JSON at the end); `cert.rs` says what
//! the server's certificate is.
//!
//! Threads: the caller's, plus the transport's watchdog and (in the last step) the pool's
//! own threads, none of which touch the check's state.

mod args;
mod cert;
mod diagnose;
mod report;
mod steps;

use std::process::ExitCode;

pub use args::CheckArgs;

/// Runs `mastfs check`: exit status 0 if every step worked, 1 if one failed, 2 if the check
/// could not start (its options, the password).
pub fn run(args: CheckArgs) -> ExitCode {
    let json = args.json;
    init_logging(args.verbose);
    let target = match args::resolve(args) {
        Ok(t) => t,
        Err(m) => {
            eprintln!("mastfs: {m}");
            return ExitCode::from(2);
        }
    };
    if target.tls.insecure {
        eprintln!(
            "mastfs: WARNING: --insecure: the server's certificate is NOT verified; anyone on the path can impersonate it"
        );
    }
    let mut report = report::Report::start(&target, json);
    steps::walk(&target, &mut report);
    report.finish();
    if report.succeeded() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `-v` shows the FTP dialogue on stderr (mastfs's own log lines; `PASS` is never shown).
/// suppaftp stays at warnings whatever is asked: it logs the password at debug level.
fn init_logging(verbose: u8) {
    let filter = match verbose {
        // The report says what went wrong; the transport's own warnings would say it twice.
        0 => "error,suppaftp=warn",
        1 => "warn,mastfs=debug,suppaftp=warn",
        _ => "warn,mastfs=trace,rustls=debug,suppaftp=warn",
    };
    let mut builder = env_logger::Builder::new();
    builder.format_timestamp_millis().parse_filters(filter).target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}
