//! mastfs: a read-only FUSE view of an FTPS archive, with a persistent block cache.

pub mod blocks;
pub mod cache;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
#[cfg(test)]
pub mod fake;
pub mod fs;
pub mod ftp;
pub mod fuse;
pub mod inode;
pub mod listing;
pub mod mount;
pub mod readahead;
pub mod remote;
pub mod stats;
