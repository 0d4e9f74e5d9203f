//! The `mastfs` command: dispatch, and the mount daemon.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;

use nix::fcntl::OFlag;
use nix::mount::MntFlags;
use nix::unistd::ForkResult;

use crate::cli::{Command, MountArgs};
use crate::{manpage, mount, stats_view};

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> ExitCode {
    bound_malloc();
    let cli = crate::cli::parse();
    match cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Umount { mountpoint } => unmount(&mountpoint),
        Command::Stats(args) => stats_view::run(args),
        Command::Warm(args) => crate::warm::run(args),
        Command::Check(args) => crate::check::run(args),
        Command::Cache(args) => crate::cache_admin::run(args.command),
        Command::Completions { shell } => manpage::completions(shell),
        Command::Man(args) => manpage::man(args),
    }
}

/// glibc raises its mmap threshold after the first 1 MiB block is freed, and then serves
/// blocks from per-thread arenas that keep freed memory: measured 285 MiB peak RSS for a
/// 1 GiB copy on 24 threads. Two arenas bound that; a fixed threshold above the block size
/// keeps blocks on the heap, where freed blocks are reused without fresh page faults (with
/// blocks mmapped instead: loopback 1 GiB cold 4.2 s and re-read after a remount 1.1 s;
/// with the heap: 2.4–2.9 s and 0.6 s; peak RSS 56 -> 73–80 MiB).
fn bound_malloc() {
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("mastfs: {msg}");
    ExitCode::FAILURE
}

fn init_logging(verbose: u8, log_file: Option<std::fs::File>) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // suppaftp logs command lines at debug level, and PASS is one of them: its logs stay at
    // warn whatever -v says, so a password never reaches a log.
    // fuser warns about its own unmount racing ours at exit: noise unless debugging.
    let fuser_level = if verbose >= 2 { level } else { "error" };
    let filter = format!("{level},suppaftp=warn,rustls=warn,fuser={fuser_level}");
    let mut builder = env_logger::Builder::new();
    builder.format_timestamp_millis();
    builder.parse_filters(&filter);
    if let Some(f) = log_file {
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let _ = builder.try_init();
}

fn open_log(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).ok()
}

fn run_mount(args: MountArgs) -> ExitCode {
    let foreground = args.foreground;
    let verbose = args.verbose;
    let prepared = match mount::prepare(args) {
        Ok(p) => p,
        Err(m) => return fail(&m),
    };
    if prepared.args.insecure {
        eprintln!(
            "mastfs: WARNING: --insecure: the server's certificate is NOT verified; anyone on the path can impersonate it"
        );
    }
    let mut report_pipe = None;
    if foreground {
        init_logging(verbose, None);
    } else {
        match daemonize() {
            Ok(Daemon::Parent(code)) => return code,
            Ok(Daemon::Child(pipe)) => report_pipe = Some(pipe),
            Err(m) => return fail(&m),
        }
        let log_path = prepared.args.log_file.clone().unwrap_or_else(|| prepared.cache_dir.join("mastfs.log"));
        init_logging(verbose, open_log(&log_path));
    }

    let built = match mount::build(&prepared) {
        Ok(b) => b,
        Err(m) => {
            log::error!("{m}");
            mount::report(report_pipe.take(), &Err(m.clone()));
            return if foreground { fail(&m) } else { ExitCode::FAILURE };
        }
    };
    if let Some(message) = &built.offline {
        log::warn!("{message}");
        if !foreground {
            // The terminal is still ours until the mount is reported live; the log has it too.
            eprintln!("mastfs: {message}");
        }
    }
    let store = built.store.clone();
    let mountpoint = prepared.args.mountpoint.clone();
    // Handlers go in before the mount appears: a SIGTERM that arrives just after it would
    // otherwise kill the daemon with the default action and leave a dead mount behind. A
    // signal caught before the session exists waits in `signals` until the thread reads it.
    let signals = match signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cannot handle signals ({e}); use `mastfs umount`");
            None
        }
    };
    let mut session = match fuser::Session::new(built.adapter, &mountpoint, &built.config) {
        Ok(s) => s,
        Err(e) => {
            let m = format!("cannot mount on {}: {e}", mountpoint.display());
            log::error!("{m}");
            mount::report(report_pipe.take(), &Err(m.clone()));
            return if foreground { fail(&m) } else { ExitCode::FAILURE };
        }
    };
    log::info!("mounted {} on {}", prepared.args.host, mountpoint.display());
    {
        // Looking the mount up is a FUSE request itself: it is answered once the session runs.
        let mountpoint = mountpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("mastfs-readahead".into())
            .spawn(move || crate::read::raise_kernel_read_ahead(&mountpoint));
        if let Err(e) = spawned {
            log::info!("kernel read-ahead left at its default: {e}");
        }
    }
    if let Some(mut signals) = signals {
        let mut unmounter = session.unmount_callable();
        let signal_mountpoint = mountpoint.clone();
        let spawned = std::thread::Builder::new().name("mastfs-signals".into()).spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    // Busy (a shell sits in it): detach lazily so the daemon can exit.
                    log::warn!("unmount failed ({e}); detaching lazily");
                    lazy_unmount(&signal_mountpoint);
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("no signal thread ({e}); use `mastfs umount`");
        }
    }
    if !foreground {
        mount::report(report_pipe.take(), &Ok(()));
        detach_stdio();
    }
    let result = session.run();
    store.stop();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("FUSE session ended: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Daemon {
    /// The original process, with the exit code the daemon's start-up earned.
    Parent(ExitCode),
    /// The daemon, with the pipe to report its start-up on.
    Child(File),
}

/// Forks; the parent waits until the child reports the mount live (or why not), so a failed
/// start is an error message and an exit code, never a silent dead daemon.
fn daemonize() -> Result<Daemon, String> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: no thread exists yet (the file system is built after this), so the child may
    // do anything the parent could.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            // EOF without a line: the daemon died before it could say why.
            let line = BufReader::new(File::from(read_end)).lines().next().and_then(Result::ok).unwrap_or_default();
            Ok(Daemon::Parent(match line.strip_prefix("ERR ") {
                None if line == "OK" => ExitCode::SUCCESS,
                Some(m) => fail(m),
                None => fail("the mount daemon exited during start-up (see its log)"),
            }))
        }
        ForkResult::Child => {
            drop(read_end);
            let mut pipe = File::from(write_end);
            // Its own session: the terminal's hang-up and job control no longer reach it.
            if let Err(e) = nix::unistd::setsid() {
                let m = format!("setsid: {e}");
                mount::report(Some(&mut pipe), &Err(m.clone()));
                return Err(m);
            }
            Ok(Daemon::Child(pipe))
        }
    }
}

/// Points the standard streams at /dev/null once the daemon no longer has a terminal to
/// write to (it logs to its log file).
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") else { return };
    let _ = nix::unistd::dup2_stdin(&null);
    let _ = nix::unistd::dup2_stdout(&null);
    let _ = nix::unistd::dup2_stderr(&null);
}

fn lazy_unmount(path: &Path) {
    if nix::mount::umount2(path, MntFlags::MNT_DETACH).is_err() {
        let _ = std::process::Command::new("fusermount3").arg("-uz").arg(path).status();
    }
}

fn unmount(mountpoint: &Path) -> ExitCode {
    let via_fusermount = std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).output();
    if matches!(&via_fusermount, Ok(o) if o.status.success()) {
        return ExitCode::SUCCESS;
    }
    let err = match nix::mount::umount(mountpoint) {
        Ok(()) => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    let detail = match via_fusermount {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    fail(&format!("cannot unmount {}: {err}; {detail}", mountpoint.display()))
}
