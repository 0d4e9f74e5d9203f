//! End-to-end behaviour of lookups, listings, `statfs` and the stats file, through a real
//! FUSE mount of real FTPS servers.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A server of `kind` over a fresh root prepared by `fill`.
fn serve(builder: ServerBuilder, fill: impl FnOnce(&Path)) -> (tempfile::TempDir, Server) {
    let root = new_root();
    fill(root.path());
    let server = builder.root(root.path()).start();
    (root, server)
}

fn ls_names(dir: &Path) -> Result<HashSet<String>, std::io::Error> {
    fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect()
}

// ------------------------------------------------------------------ names the kernel cannot take

#[test]
fn a_name_longer_than_255_bytes_is_left_out_and_the_rest_of_the_directory_lists() {
    if !ready(Kind::Pyftpdlib) {
        return;
    }
    let (_root, server) = serve(Server::builder(Kind::Pyftpdlib).overlong_name(), |r| {
        write_file(&r.join("data/a.fits"), b"a");
        write_file(&r.join("data/b.fits"), b"bb");
    });
    let mount = Mount::start(&server);
    let listed = ls_names(&mount.path("data")).unwrap_or_else(|e| panic!("ls failed: {e}\n{}", mount.stderr()));
    assert_eq!(listed, HashSet::from(["a.fits".to_string(), "b.fits".to_string()]));
    let out = run(Command::new("ls").arg("-l").arg(mount.path("data")), Duration::from_secs(60));
    assert!(out.status.success(), "ls -l failed: {}", stderr_of(&out));
    assert_eq!(mount.read("data/b.fits"), b"bb");
    let log = mount.stderr();
    let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains(OVERLONG_NAME_PREFIX)).count();
    assert!(warnings >= 1, "the skipped names are reported in the log:\n{log}");
}
