//! mastfs: a read-only FUSE view of an FTPS archive, with a persistent block cache.

mod app;
mod cache_admin;
mod cachectl;
mod check;
mod cli;
mod config;
mod credentials;
mod dircache;
mod dirstore;
mod error;
#[cfg(test)]
mod fake;
mod fs;
mod ftp;
mod fuse;
mod inode;
mod listing;
mod manpage;
mod mount;
mod mount_opts;
mod online;
mod read;
mod remote;
mod stats;
mod stats_view;
mod warm;

pub use app::main;
/// The FTPS transport without a mount, for transport tests and measurements (not a stable API).
#[doc(hidden)]
pub use ftp::probe;
