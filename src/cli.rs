//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "mastfs",
    version,
    about = "Mount the MAST FTPS archive (or any FTPS server) as a read-only local directory",
    long_about = "Mount the MAST FTPS archive (archive.stsci.edu) or any FTPS server as a read-only \
local directory, with a persistent block cache so a re-read never goes back to the network.\n\n\
Passwords are never taken from the command line: for --user, mastfs reads MASTFS_PASSWORD, then \
~/.netrc (machine HOST login USER password ...), then asks on the terminal."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the archive at MOUNTPOINT (returns once the mount is live, unless --foreground)
    Mount(MountArgs),
    /// Unmount a mastfs mount
    Umount {
        /// The directory mastfs is mounted on
        mountpoint: PathBuf,
    },
    /// Print the live counters of a mount (cache hits, bytes from the network, RETRs, ...)
    Stats {
        /// The directory mastfs is mounted on
        mountpoint: PathBuf,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMax {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Directory to mount on (must exist and not be a mount already)
    pub mountpoint: PathBuf,

    /// FTPS server
    #[arg(long, default_value = "archive.stsci.edu")]
    pub host: String,

    /// Server port [default: 21, or 990 with --implicit]
    #[arg(long)]
    pub port: Option<u16>,

    /// Implicit FTPS: TLS from the first byte (usually port 990) instead of AUTH TLS
    #[arg(long)]
    pub implicit: bool,

    /// Login name for exclusive-access data (your registered e-mail for MAST); anonymous if unset
    #[arg(long)]
    pub user: Option<String>,

    /// Password sent for anonymous logins (MAST asks for an e-mail address)
    #[arg(long, default_value = "mastfs@example.org", value_name = "EMAIL")]
    pub email: String,

    /// Remote directory shown at the mount point
    #[arg(long, default_value = "/")]
    pub root: String,

    /// PEM file of CA certificates to trust instead of the system's
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify the server's certificate (traffic stays encrypted, but unauthenticated)
    #[arg(long)]
    pub insecure: bool,

    /// Highest TLS version to offer (1.2 works around servers with broken TLS 1.3 resumption)
    #[arg(long, value_enum, default_value = "1.3")]
    pub tls_max: TlsMax,

    /// Use EPSV instead of PASV for data connections
    #[arg(long)]
    pub epsv: bool,

    /// Most connections to open to the server at once (lowered automatically on 421)
    #[arg(long, default_value_t = crate::read::DEFAULT_CONNECTIONS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,

    /// Block cache directory [default: $XDG_CACHE_HOME/mastfs or ~/.cache/mastfs]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Most disk space the block cache may use (e.g. 512M, 20G); 0 disables the disk cache
    #[arg(long, default_value = "10G", value_name = "SIZE")]
    pub cache_size: String,

    /// Seconds to wait for the server (connect, TLS, each reply, data idle) before failing
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Seconds a directory listing and file attributes are trusted before asking the server again
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub dir_cache_time: u64,

    /// Stay in the foreground (logs go to stderr)
    #[arg(short, long)]
    pub foreground: bool,

    /// Log file when running in the background [default: CACHE_DIR/mastfs.log]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// FUSE mount options, comma-separated: allow_other, allow_root, auto_unmount,
    /// default_permissions, noatime, noexec, fsname=NAME
    #[arg(short = 'o', value_name = "OPTS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,

    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
