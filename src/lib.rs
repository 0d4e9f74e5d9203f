//! mastfs: a read-only FUSE view of an FTPS archive, with a persistent block cache.

mod app;
mod cli;
mod config;
mod credentials;
mod error;
#[cfg(test)]
mod fake;
mod fs;
mod ftp;
mod fuse;
mod inode;
mod listing;
mod mount;
mod read;
mod remote;
mod stats;

pub use app::main;
