//! End-to-end behaviour of lookups, listings, `statfs` and the stats file, through a real
//! FUSE mount of real FTPS servers.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

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

// ------------------------------------------------------------------ the stats file and statfs

/// Counters as `mastfs stats` prints them; panics on a line that is not `name value`.
fn counters(mount: &Mount) -> Vec<(String, u64)> {
    let out = mount.stats();
    assert!(out.status.success(), "mastfs stats failed: {}", stderr_of(&out));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.ends_with('\n'), "the text ends with a whole line: {text:?}");
    text.lines()
        .map(|l| {
            let (name, value) = l.split_once(' ').unwrap_or_else(|| panic!("not a counter line: {l:?} in {text:?}"));
            (name.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {l:?} in {text:?}")))
        })
        .collect()
}

#[test]
fn mastfs_stats_prints_every_counter_whole_after_the_counters_grew_longer() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Server::builder(Kind::Vsftpd), |r| write_pattern_file(&r.join("f.bin"), 1, 3 << 20));
    let mount = Mount::start(&server);
    let before = counters(&mount);
    let stats_file = mount.path(".mastfs-stats");
    // The kernel now holds the text's length from this stat for the attribute timeout.
    let stat_size = fs::metadata(&stats_file).expect("stat .mastfs-stats").len();
    assert_eq!(mount.read("f.bin").len(), 3 << 20);
    let after = counters(&mount);
    let names = |c: &[(String, u64)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "every counter, in the same order");
    let net = after.iter().find(|(n, _)| n == "net_bytes").map(|(_, v)| *v);
    assert!(net >= Some(3 << 20), "net_bytes counts the read: {after:?}");
    let text_len: usize = after.iter().map(|(n, v)| n.len() + v.to_string().len() + 2).sum();
    assert!(text_len as u64 > stat_size, "the text grew past the size stat saw ({stat_size})");
}

#[test]
fn df_shows_a_sized_read_only_file_system_with_255_byte_names() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Server::builder(Kind::Vsftpd), |r| write_file(&r.join("f"), b"x"));
    let mount = Mount::start(&server);
    let out = run(Command::new("df").args(["-B1", "--output=size,avail,target"]).arg(&mount.mountpoint), LIMIT);
    assert!(out.status.success(), "df failed: {}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let size: u64 = row.first().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("df printed {text:?}"));
    assert!(size >= 1 << 40, "a size, not 0: {text}");
    let out = run(Command::new("stat").args(["-f", "-c", "%l %S %a"]).arg(&mount.mountpoint), LIMIT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<u64> = text.split_whitespace().map(|f| f.parse().expect("number")).collect();
    assert_eq!(fields.first(), Some(&255), "f_namemax: {text}");
    assert!(fields[1] > 0 && fields[2] > 0, "a block size, blocks available: {text}");
    // Read-only comes from the mount, whatever statfs counts.
    let out = run(Command::new("findmnt").args(["-n", "-o", "OPTIONS"]).arg(&mount.mountpoint), LIMIT);
    assert!(String::from_utf8_lossy(&out.stdout).split(',').any(|o| o == "ro"), "mounted ro");
}
