//! The command line: every command and option. `--help`, the man page and the shell
//! completions are all generated from these definitions, so they cannot drift apart.
//!
//! Two spellings reach [`MountArgs`]: `mastfs mount [SOURCE] MOUNTPOINT --flags -o opts`, and
//! `mastfs SOURCE MOUNTPOINT -o opts`, the form fuse3's `mount.fuse3` runs for
//! `mount -t fuse.mastfs` and `/etc/fstab`. Every flag of `mastfs mount` also has an `-o`
//! spelling (see `mount_opts.rs`); [`parse`] turns those into the flags they stand for, so
//! clap checks their values exactly as it checks the flags.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::mount_opts::{self, MountOpt};

/// The server mounted when neither SOURCE nor `--host` names one.
pub const DEFAULT_HOST: &str = "archive.stsci.edu";

#[derive(Parser, Debug)]
#[command(
    name = "mastfs",
    version,
    about = "Mount the MAST FTPS archive (or any FTPS server) as a read-only local directory",
    long_about = "Mount the MAST FTPS archive (archive.stsci.edu) or any FTPS server as a read-only \
local directory. ls, cp, cat and analysis code such as astropy work on the files in place; a \
persistent block cache on local disk means a re-read never goes back to the network, and reading \
the header of a large FITS file fetches only its first blocks.",
    override_usage = "mastfs <COMMAND> [ARGS]...\n       \
                      mastfs SOURCE MOUNTPOINT [-o OPTIONS]   (the form mount(8) and /etc/fstab use)",
    after_long_help = ROOT_AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const ROOT_AFTER_HELP: &str = "\
Examples:
  mastfs mount ~/mast                  anonymous, archive.stsci.edu, explicit FTPS on port 21
  mastfs mount me@uni.edu@archive.stsci.edu ~/mast
                                       exclusive-access data (password: 'mastfs mount --help')
  mastfs stats ~/mast                  what the mount fetched and served
  mastfs warm ~/mast/stage/anonymous/anonymous12345
                                       fetch a directory into the cache, for offline use
  mastfs umount ~/mast
  mastfs cache du                      what the cache holds, per host and remote directory

mount(8) and /etc/fstab:
  mount(8) runs 'mastfs SOURCE MOUNTPOINT -o OPTIONS' (through fuse3's mount.fuse3), which is
  'mastfs mount SOURCE MOUNTPOINT -o OPTIONS'; it looks for mastfs in /usr/local/sbin,
  /usr/local/bin, /usr/sbin, /usr/bin, /sbin and /bin.
  mount -t fuse.mastfs archive.stsci.edu /mnt/mast -o cache_dir=/var/cache/mastfs
  archive.stsci.edu  /mnt/mast  fuse.mastfs  _netdev,nofail,cache_size=20G  0 0   (in /etc/fstab)

Environment:
  MASTFS_PASSWORD   password of --user (removed from the environment once read)
  XDG_CACHE_HOME    the default cache is $XDG_CACHE_HOME/mastfs
  HOME              ~/.netrc and ~/.cache/mastfs; the passwd entry's home when unset

Files:
  ~/.netrc                 machine HOST login USER password PASSWORD
  ~/.cache/mastfs/         block and listing cache (private, 0700)
  CACHE_DIR/mastfs.log     log of a mount running in the background
  MOUNTPOINT/.mastfs-stats the live counters 'mastfs stats' reads (hidden from ls)";

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the archive at MOUNTPOINT (returns once the mount is live, unless --foreground)
    Mount(MountArgs),
    /// Unmount a mastfs mount
    #[command(visible_alias = "unmount")]
    Umount {
        /// The directory mastfs is mounted on
        mountpoint: PathBuf,
    },
    /// Show what a mount fetched and served: bytes from the network and from the cache, hit
    /// ratio, round trips, reconnects, errors
    Stats(StatsArgs),
    /// Fill the cache with files or whole directories of a live mount, so they read at local
    /// speed or offline (the mount's daemon fetches them; cached files are skipped)
    Warm(WarmArgs),
    /// Check the connection a mount would make, step by step (connect, TLS, login, listing,
    /// data connection), and say what to change when a step fails
    Check(crate::check::CheckArgs),
    /// Show, clear or check the block and listing cache (safe while mounts use it)
    Cache(CacheArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_long_help = COMPLETIONS_AFTER_HELP)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write every page into a directory
    #[command(after_long_help = MAN_AFTER_HELP)]
    Man(ManArgs),
}

const COMPLETIONS_AFTER_HELP: &str = "\
Install, for example:
  mastfs completions bash > ~/.local/share/bash-completion/completions/mastfs
  mastfs completions zsh  > ~/.zfunc/_mastfs       (with fpath+=~/.zfunc before compinit)
  mastfs completions fish > ~/.config/fish/completions/mastfs.fish";

const MAN_AFTER_HELP: &str = "\
Read it:    mastfs man | man -l -
Install:    mastfs man --dir /usr/local/share/man/man1   (mastfs.1, mastfs-mount.1, ...)";

#[derive(Args, Debug)]
#[command(after_long_help = CACHE_AFTER_HELP)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

const CACHE_AFTER_HELP: &str = "\
Examples:
  mastfs cache du                               what is cached, per host and remote directory
  mastfs cache clear /stage/anonymous/anonymous12345
                                                forget one request directory (every host)
  mastfs cache clear --host archive.stsci.edu   forget one host
  mastfs cache clear                            forget everything
  mastfs cache verify                           check every cached file, remove the bad ones

While mounted:
  All three are safe while mounts use the cache: a mount fetches again what was removed
  (never serving wrong bytes or failing a read for it) and corrects its disk-usage
  accounting within a second of its next cache write. PATH is the path on the server (as
  'mastfs cache du' shows it), not a path under a mount point.";

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Show the cache's disk use: total, per host (host:port and user) and per remote directory
    #[command(after_long_help = CACHE_DU_AFTER_HELP)]
    Du(CacheDuArgs),
    /// Remove cached blocks and listings: everything, one host's, or one remote file or
    /// directory subtree's
    #[command(after_long_help = CACHE_CLEAR_AFTER_HELP)]
    Clear(CacheClearArgs),
    /// Check every cached block and listing as a mount does when it loads them; remove the bad
    /// ones
    #[command(after_long_help = CACHE_VERIFY_AFTER_HELP)]
    Verify(CacheVerifyArgs),
}

const CACHE_DU_AFTER_HELP: &str = "\
Counting:
  SIZE counts the cache files on disk: blocks (the cached parts of each file, plus a small
  header per block) and listings (one per directory listed or looked into). A file counts
  under the directory that holds it, cut to --depth components (/stage/anonymous at the
  default 2). Blocks written by mastfs versions that did not record whose files they are
  show as 'unknown'; 'mastfs cache clear' without --host or PATH removes them.";

const CACHE_CLEAR_AFTER_HELP: &str = "\
Selecting:
  Without --host and PATH everything goes, blocks of unknown files included. PATH selects a
  remote file or a whole directory subtree (its files' blocks and its directories'
  listings) on every host, unless --host narrows it; a path under a mount point is refused
  with the server path it probably means. Only whole files are deleted, and only ones
  completely written: a mount reading them meanwhile goes to the server again. Prints what
  it removed (blocks, files, listings, bytes).

Exit status:
  0 when everything selected was removed; 1 when a file could not be removed or the cache
  could not be read.";

const CACHE_VERIFY_AFTER_HELP: &str = "\
Checks:
  Every block file is read whole and checked as a mount checks it before use (format, the
  file and block it claims to be, length, extent table, every checksum); every listing
  likewise. Bad files are removed (a mount would remove them at its next read of them, and
  fetches them again), as are identity records that fail their checks and temp files left
  by writers that died. Each removal is printed with its reason, then the counts.

Exit status:
  0 when everything was good; 1 when damaged files were found (and removed); 2 when a file
  could not be read (it is left in place: EIO, EACCES) or the cache could not be read.";

#[derive(Args, Debug)]
pub struct CacheDuArgs {
    /// The cache directory [default: $XDG_CACHE_HOME/mastfs or ~/.cache/mastfs, as for mount]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Group files by the first N components of their remote directory
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub depth: usize,

    /// Print JSON for scripts (exact byte counts)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheClearArgs {
    /// Remote file or directory whose cached blocks and listings to remove, e.g.
    /// /stage/anonymous/anonymous12345 [default: everything]
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// Only this server's: HOST (any port) or HOST:PORT, as 'mastfs cache du' shows it
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,

    /// The cache directory [default: $XDG_CACHE_HOME/mastfs or ~/.cache/mastfs, as for mount]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Say what would be removed, remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Print what was removed as JSON (exact byte counts)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheVerifyArgs {
    /// The cache directory [default: $XDG_CACHE_HOME/mastfs or ~/.cache/mastfs, as for mount]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print the counts and problems as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The command whose page to print (mount, stats, ...); the overview page if unset
    pub command: Option<String>,

    /// Write mastfs.1 and one page per command into DIR instead of printing
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_long_help = WARM_AFTER_HELP)]
pub struct WarmArgs {
    /// Files or directories inside a mastfs mount. Directories are warmed with everything
    /// below them; symbolic links inside them are not followed
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Files read at once (each also gets the mount's parallel transfers)
    #[arg(short, long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Print the files that would be fetched and how much, and fetch nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

const WARM_AFTER_HELP: &str = "\
How it works:
  mastfs warm walks the PATHs through the mount and reads every file the disk cache does not
  hold whole, in big reads that bypass the kernel's page cache, and throws the bytes away:
  the mount's daemon fetches them with its pooled connections, read-ahead and parallel
  transfers, and stores them in its disk cache. A file counts as warmed once all its bytes
  are on disk. Afterwards reading those files moves 0 bytes on the network, also after a
  remount and offline (the directory listings are cached too).

Output:
  On a terminal a progress bar on stderr (bytes read of the files being warmed, rate, ETA,
  files; before it, how many files the walk found so far); otherwise a progress line every 5 s. A summary on stdout at the end, with what the
  mount received from the network meanwhile (its counters, as 'mastfs stats' shows them: other
  readers of the mount count too). --dry-run lists each file to fetch with the bytes missing.

Stopping and resuming:
  Ctrl-C (or SIGTERM) stops once the reads in progress return: open files are closed, which
  cancels the daemon's transfers, and a summary is printed. (A read waiting on a server that
  went silent ends within the mount's --timeout.) Run the same command again: it skips what
  is cached.

Refusals:
  The whole request must fit in the mount's disk cache (--cache-size of 'mastfs mount'):
  otherwise nothing is fetched and the sizes are printed. A mount without a disk cache
  (--cache-size 0), or whose cache disk is failing, is refused too.

Exit status:
  0 when every file is warmed (or, with --dry-run, would fit); 1 when a file failed (each is
  named on stderr, the others are warmed anyway) or the request was refused; 130 when
  interrupted.

Examples:
  mastfs warm ~/mast/stage/anonymous/anonymous12345
  mastfs warm -n ~/mast/stage/anonymous            how much would a warm of all of it fetch?
  mastfs warm --jobs 8 ~/mast/a.fits ~/mast/b.fits";

#[derive(Args, Debug)]
#[command(after_long_help = STATS_AFTER_HELP)]
pub struct StatsArgs {
    /// The directory mastfs is mounted on [default: every mastfs mount]
    pub mountpoint: Option<PathBuf>,

    /// Print JSON for scripts (one object per line with --watch)
    #[arg(long)]
    pub json: bool,

    /// Refresh every SECS seconds, with rates, until Ctrl-C
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = parse_interval)]
    pub watch: Option<f64>,

    /// With --watch: stop after N refreshes
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

const STATS_AFTER_HELP: &str = "\
The numbers count since the mount started. They come from the hidden file MOUNTPOINT/.mastfs-stats
(one 'name value' line per counter), which scripts may also read directly. Counters this version
of 'mastfs stats' does not know are shown under their own names.";

fn parse_interval(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|_| format!("not a number of seconds: {text:?}"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("the interval must be between 0.1 and 86400 seconds".into());
    }
    Ok(secs)
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMax {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

const MOUNT_USAGE: &str = "mastfs mount [OPTIONS] [SOURCE] <MOUNTPOINT>\n       \
                           mastfs SOURCE MOUNTPOINT [-o OPTIONS]";

#[derive(Args, Debug)]
#[command(override_usage = MOUNT_USAGE, after_long_help = MOUNT_AFTER_HELP)]
pub struct MountArgs {
    /// Where to mount: MOUNTPOINT, or SOURCE MOUNTPOINT. SOURCE is [USER@]HOST[:DIR], as
    /// sshfs spells it: the server, optionally the login and the remote directory shown
    /// (e.g. me@uni.edu@archive.stsci.edu:/stage). MOUNTPOINT must be an existing directory.
    #[arg(value_name = "[SOURCE] MOUNTPOINT", num_args = 1..=2, required = true)]
    targets: Vec<PathBuf>,

    /// The directory to mount on (the last of the positional arguments).
    #[arg(skip)]
    pub mountpoint: PathBuf,

    /// SOURCE as given, if it was: the mount's source in the mount table, where mount(8)
    /// looks for it to tell that an fstab entry is already mounted.
    #[arg(skip)]
    pub source: Option<String>,

    /// FTPS server
    #[arg(long, default_value = DEFAULT_HOST, help_heading = "Server")]
    pub host: String,

    /// Server port [default: 21, or 990 with --implicit]
    #[arg(long, help_heading = "Server")]
    pub port: Option<u16>,

    /// Implicit FTPS: TLS from the first byte (usually port 990) instead of AUTH TLS
    #[arg(long, help_heading = "Server")]
    pub implicit: bool,

    /// Use EPSV instead of PASV for data connections
    #[arg(long, help_heading = "Server")]
    pub epsv: bool,

    /// Remote directory shown at the mount point
    #[arg(long, default_value = "/", value_name = "DIR", help_heading = "Server")]
    pub root: String,

    /// Most connections to open to the server at once (lowered automatically on 421)
    #[arg(long, default_value_t = crate::read::DEFAULT_CONNECTIONS, value_name = "N", help_heading = "Server",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,

    /// Seconds to wait for the server (connect, TLS, each reply, data idle) before failing
    #[arg(long, default_value_t = 30, value_name = "SECS", help_heading = "Server",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Login name for exclusive-access data (your registered e-mail for MAST); anonymous if
    /// unset. Its password comes from --password-file, MASTFS_PASSWORD, ~/.netrc or a prompt
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

    /// Cache directory (blocks and directory listings), created private (0700)
    /// [default: $XDG_CACHE_HOME/mastfs or ~/.cache/mastfs]
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// Most disk space the cache may use (e.g. 512M, 20G), a sixteenth of it for listings; 0
    /// disables the disk cache
    #[arg(long, default_value = "10G", value_name = "SIZE", help_heading = "Cache")]
    pub cache_size: String,

    /// Seconds a directory listing and file attributes are trusted before asking the server again
    #[arg(long, default_value_t = 60, value_name = "SECS", help_heading = "Cache")]
    pub dir_cache_time: u64,

    /// Never contact the server: serve only the directories and blocks in the cache; anything
    /// else fails with "Network is unreachable". (Without it, a server that cannot be reached
    /// at mount time also mounts offline when its root is cached, and goes online by itself.)
    #[arg(long, help_heading = "Cache")]
    pub offline: bool,

    /// Stay in the foreground (logs go to stderr)
    #[arg(short, long, help_heading = "Running")]
    pub foreground: bool,

    /// Log file when running in the background [default: CACHE_DIR/mastfs.log]
    #[arg(long, value_name = "FILE", help_heading = "Running")]
    pub log_file: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Running")]
    pub verbose: u8,

    /// Mount options, comma-separated: any flag above (port=990,implicit,cache_dir=DIR, ...),
    /// FUSE options, and mount(8)/systemd options (see below)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append, help_heading = "Running")]
    pub options: Vec<String>,
}

const MOUNT_AFTER_HELP: &str = "\
Mount options:
  Given with -o, comma-separated. Every flag has an -o spelling: --cache-dir DIR is
  -o cache_dir=DIR, --implicit is -o implicit, --user NAME is -o username=NAME. Write a comma
  inside a value as \\,. An -o setting overrides the same flag given on the command line.
  FUSE options: allow_other, allow_root, auto_unmount, default_permissions, atime, noatime,
  exec, noexec, fsname=NAME. The mount is always ro, nodev and nosuid: rw, dev and suid are
  accepted (mount(8) passes them by default) and have no effect.
  Left to mount(8) and systemd, accepted and ignored: defaults, auto, noauto, user, users,
  nouser, owner, group, _netdev, nofail, sync, async, dirsync, relatime, strictatime,
  lazytime, nodiratime, comment=..., x-* (x-systemd.automount, x-systemd.mount-timeout=...).

Passwords:
  Never on the command line or in /etc/fstab. For --user, in this order: --password-file FILE
  (-o password_file=FILE, mode 0600), the environment variable MASTFS_PASSWORD (removed from
  the environment once read), ~/.netrc (machine HOST login USER password ...), a prompt on
  the terminal.

/etc/fstab:
  archive.stsci.edu  /mnt/mast  fuse.mastfs  _netdev,nofail,cache_dir=/var/cache/mastfs  0 0
  me@uni.edu@archive.stsci.edu:/stage /mnt/stage fuse.mastfs noauto,password_file=/root/mast.pw 0 0
  mount(8) runs mastfs through fuse3's mount.fuse3 with PATH unset: install mastfs in
  /usr/local/bin (or /usr/bin). Then 'mount /mnt/mast' and 'umount /mnt/mast'.";

/// The command definition, with each mount flag's `-o` spelling added to its help.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("mount", |mount| {
        // Every argument, in order: mut_arg moves the argument it changes to the end, so
        // changing only some would reorder the help.
        let spellings: Vec<(String, Option<String>)> = mount
            .get_arguments()
            .filter(|a| a.get_id() != "help")
            .map(|a| {
                let o = a.get_long().and_then(mount_opts::o_name_of_flag);
                let value = a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
                let spelling = o.map(|o| match (a.get_action().takes_values(), value) {
                    (true, Some(v)) => format!("{o}={v}"),
                    (true, None) => format!("{o}=VALUE"),
                    (false, _) => o,
                });
                (a.get_id().to_string(), spelling)
            })
            .collect();
        // A flag given both ways (or twice) takes its last value: -o settings come last.
        let mut mount = mount.args_override_self(true);
        for (id, spelling) in spellings {
            mount = mount.mut_arg(id, |a| match spelling {
                Some(spelling) => {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    a.help(format!("{help} [-o {spelling}]"))
                }
                None => a,
            });
        }
        mount
    })
}

/// Parses the process's arguments; prints help or an error and exits when that is the answer.
pub fn parse() -> Cli {
    match try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

pub fn try_parse_from(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Cli, clap::Error> {
    let mut cmd = command();
    let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if is_mount_helper_form(&cmd, &argv) {
        argv.insert(1, "mount".into());
    }
    let mut matches = cmd.try_get_matches_from_mut(argv.clone())?;
    if let Some((sub @ ("mount" | "check"), m)) = matches.subcommand() {
        let flags = settings_as_flags(&mut cmd, sub, m)?;
        if !flags.is_empty() {
            // Before a `--`, so they stay flags.
            let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
            argv.splice(at..at, flags);
            matches = cmd.try_get_matches_from_mut(argv)?;
        }
    }
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    if let (Command::Mount(args), Some(("mount", m))) = (&mut cli.command, matches.subcommand()) {
        resolve_targets(args, m).map_err(|msg| cmd.error(ErrorKind::ValueValidation, msg))?;
    }
    Ok(cli)
}

/// `mastfs HOST DIR ...`: the first argument is neither a flag nor a command. A word that only
/// looks like a mistyped command (`stat`, `mountt`) is left to clap, which suggests the command.
fn is_mount_helper_form(cmd: &clap::Command, argv: &[OsString]) -> bool {
    let (Some(first), Some(second)) = (argv.get(1), argv.get(2)) else { return false };
    let Some(first) = first.to_str() else { return false };
    if first.starts_with('-') || second.as_encoded_bytes().starts_with(b"-") {
        return false;
    }
    let looks_like_a_host = first.contains(['.', ':', '@', '#', '[']);
    let near_a_command = |name: &str| name == first || name.starts_with(first) || first.starts_with(name);
    let names = cmd.get_subcommands().flat_map(|s| std::iter::once(s.get_name()).chain(s.get_all_aliases()));
    let names: Vec<&str> = names.chain(["help"]).collect();
    if names.contains(&first) {
        return false;
    }
    looks_like_a_host || !names.iter().any(|n| near_a_command(n))
}

/// The `-o` items that stand for flags, as those flags (`port=990` becomes `--port=990`).
/// `mastfs check` takes the mount options too; those it has no flag for (the cache, the
/// daemon) do not concern a connection and are left out.
fn settings_as_flags(cmd: &mut clap::Command, sub: &str, m: &ArgMatches) -> Result<Vec<OsString>, clap::Error> {
    let longs: Vec<String> = cmd
        .find_subcommand(sub)
        .map(|s| s.get_arguments().filter_map(|a| a.get_long()).map(str::to_string).collect())
        .unwrap_or_default();
    let mut flags = Vec::new();
    let options: Vec<&String> = m.get_many::<String>("options").map(|v| v.collect()).unwrap_or_default();
    for item in options.iter().flat_map(|o| mount_opts::split(o)) {
        match mount_opts::classify(&item) {
            MountOpt::Setting { flag, .. } if !longs.contains(&flag) => {}
            MountOpt::Setting { flag, value: Some(v) } => flags.push(format!("--{flag}={v}").into()),
            MountOpt::Setting { flag, value: None } => flags.push(format!("--{flag}").into()),
            MountOpt::Fuse(_) | MountOpt::System => {}
            MountOpt::Unknown => {
                return Err(cmd.error(
                    ErrorKind::InvalidValue,
                    format!("unknown mount option -o {item} (see 'mastfs {sub} --help')"),
                ));
            }
        }
    }
    Ok(flags)
}

/// Splits the positional arguments into SOURCE and MOUNTPOINT and folds SOURCE into the flags
/// it overlaps with; naming one thing two different ways is an error, not a guess.
fn resolve_targets(args: &mut MountArgs, m: &ArgMatches) -> Result<(), String> {
    let mut targets = std::mem::take(&mut args.targets);
    let Some(mountpoint) = targets.pop() else { return Err("no MOUNTPOINT given".into()) };
    args.mountpoint = mountpoint;
    let Some(source) = targets.pop() else { return Ok(()) };
    let text = source.to_str().ok_or("SOURCE is not valid UTF-8")?;
    args.source = Some(text.to_string());
    let source = mount_opts::parse_source(text)?;
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    if given("host") && args.host != source.host {
        return Err(format!("SOURCE names host {} but --host says {}", source.host, args.host));
    }
    args.host = source.host;
    if let Some(user) = source.user {
        if args.user.as_ref().is_some_and(|u| *u != user) {
            return Err(format!("SOURCE names user {user} but --user says {}", args.user.as_deref().unwrap_or("")));
        }
        args.user = Some(user);
    }
    if let Some(dir) = source.dir {
        if given("root") && args.root != dir {
            return Err(format!("SOURCE names directory {dir} but --root says {}", args.root));
        }
        args.root = dir;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_args(argv: &[&str]) -> MountArgs {
        match try_parse_from(argv.iter().copied()) {
            Ok(Cli { command: Command::Mount(a) }) => a,
            Ok(other) => panic!("not a mount: {other:?}"),
            Err(e) => panic!("{argv:?} did not parse: {e}"),
        }
    }

    fn error_of(argv: &[&str]) -> String {
        match try_parse_from(argv.iter().copied()) {
            Ok(cli) => panic!("{argv:?} parsed as {cli:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_mountpoint_alone_mounts_the_mast_archive() {
        let a = mount_args(&["mastfs", "mount", "/mnt/mast"]);
        assert_eq!(a.mountpoint, PathBuf::from("/mnt/mast"));
        assert_eq!(a.host, DEFAULT_HOST);
        assert_eq!(a.root, "/");
        assert_eq!(a.user, None);
    }

    #[test]
    fn the_form_mount_helpers_use_is_a_mount() {
        let a = mount_args(&["mastfs", "me@uni.edu@ftp.example.org:/stage", "/mnt/x", "-o", "rw,dev,suid,port=2121"]);
        assert_eq!(a.mountpoint, PathBuf::from("/mnt/x"));
        assert_eq!(a.host, "ftp.example.org");
        assert_eq!(a.user.as_deref(), Some("me@uni.edu"));
        assert_eq!(a.root, "/stage");
        assert_eq!(a.port, Some(2121));
    }

    #[test]
    fn every_mount_flag_has_an_o_spelling() {
        let a = mount_args(&[
            "mastfs",
            "mount",
            "/m",
            "-o",
            "host=h.example,port=990,implicit,epsv,root=/pub,connections=8,timeout=5,username=me",
            "-o",
            "password_file=/pw,email=a@b.c,ca_file=/ca.pem,tls_max=1.2,cache_dir=/c,cache_size=1G",
            "-o",
            "dir_cache_time=7,offline,foreground,log_file=/l,verbose,verbose",
        ]);
        assert_eq!(a.host, "h.example");
        assert_eq!(a.port, Some(990));
        assert!(a.implicit && a.epsv && a.foreground && a.offline);
        assert_eq!(a.root, "/pub");
        assert_eq!(a.connections, 8);
        assert_eq!(a.timeout, 5);
        assert_eq!(a.user.as_deref(), Some("me"));
        assert_eq!(a.password_file, Some(PathBuf::from("/pw")));
        assert_eq!(a.email, "a@b.c");
        assert_eq!(a.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(a.tls_max, TlsMax::V12);
        assert_eq!(a.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(a.cache_size, "1G");
        assert_eq!(a.dir_cache_time, 7);
        assert_eq!(a.log_file, Some(PathBuf::from("/l")));
        assert_eq!(a.verbose, 2);
        // The check above is only complete if it names every flag `mastfs mount` has.
        let flags: Vec<String> = command()
            .find_subcommand("mount")
            .map(|m| m.get_arguments().filter_map(|a| a.get_long()).map(str::to_string).collect())
            .unwrap_or_default();
        assert_eq!(flags.len(), 20, "a flag was added: give it a line above: {flags:?}");
        assert!(flags.iter().all(|f| mount_opts::o_name_of_flag(f).is_some()));
    }

    #[test]
    fn o_settings_accept_dashes_and_escaped_commas() {
        let a = mount_args(&["mastfs", "mount", "/m", "-o", r"cache-dir=/a\,b,dir-cache-time=3"]);
        assert_eq!(a.cache_dir, Some(PathBuf::from("/a,b")));
        assert_eq!(a.dir_cache_time, 3);
    }

    #[test]
    fn an_o_setting_overrides_the_flag() {
        let a = mount_args(&["mastfs", "mount", "--port", "21", "/m", "-o", "port=990"]);
        assert_eq!(a.port, Some(990));
    }

    #[test]
    fn o_values_are_checked_like_flag_values() {
        let e = error_of(&["mastfs", "mount", "/m", "-o", "connections=0"]);
        assert!(e.contains("connections"), "{e}");
        let e = error_of(&["mastfs", "mount", "/m", "-o", "port=http"]);
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn options_for_mount_and_systemd_are_accepted() {
        let a = mount_args(&[
            "mastfs",
            "h.example",
            "/m",
            "-o",
            "defaults,_netdev,nofail,noauto,users,user=alice,x-systemd.automount,comment=x,relatime,rw",
        ]);
        assert_eq!(a.host, "h.example");
    }

    #[test]
    fn an_unknown_mount_option_is_an_error_naming_it() {
        let e = error_of(&["mastfs", "mount", "/m", "-o", "port=21,frobnicate"]);
        assert!(e.contains("frobnicate"), "{e}");
    }

    #[test]
    fn source_and_flags_may_not_disagree() {
        let e = error_of(&["mastfs", "mount", "--host", "a.example", "b.example", "/m"]);
        assert!(e.contains("a.example") && e.contains("b.example"), "{e}");
        let e = error_of(&["mastfs", "mount", "--root", "/x", "h.example:/y", "/m"]);
        assert!(e.contains("/x") && e.contains("/y"), "{e}");
        let same = mount_args(&["mastfs", "mount", "--host", "h.example", "h.example", "/m"]);
        assert_eq!(same.host, "h.example");
    }

    #[test]
    fn commands_and_their_typos_are_not_taken_for_hosts() {
        assert!(matches!(try_parse_from(["mastfs", "stats", "/m"]), Ok(Cli { command: Command::Stats(_) })));
        assert!(matches!(try_parse_from(["mastfs", "unmount", "/m"]), Ok(Cli { command: Command::Umount { .. } })));
        let e = error_of(&["mastfs", "stat", "/m"]);
        assert!(e.contains("stats"), "clap should suggest the command: {e}");
        assert_eq!(mount_args(&["mastfs", "stats.example.org", "/m"]).host, "stats.example.org");
        assert_eq!(mount_args(&["mastfs", "ftpserver", "/m"]).host, "ftpserver");
    }

    #[test]
    fn every_command_and_option_has_help() {
        fn check(cmd: &clap::Command, path: &str) {
            assert!(cmd.get_about().is_some() || path == "mastfs", "{path} has no help");
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut cmd = command();
        cmd.build();
        check(&cmd, "mastfs");
        cmd.debug_assert();
    }
}
