//! End-to-end behaviour of the command line around a mount: `mount -t fuse.mastfs` and
//! /etc/fstab lines through the real mount(8) and fuse3's mount.fuse3, `mastfs stats`,
//! completions and man pages, and the demo's walk-through.
//!
//! mount(8) runs helpers with PATH unset, so mount.fuse3 finds `mastfs` only in the shell's
//! default PATH (/usr/local/sbin, /usr/local/bin, ...). These tests put the built binary
//! there inside a private mount namespace (`unshare --mount`), which leaves the machine's
//! /usr/local/sbin and mount table untouched; the FUSE mount lives in that namespace too.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MASTFS: &str = env!("CARGO_BIN_EXE_mastfs");
const KIB: u64 = 1 << 10;
const FLT: &str = "anonymous/anonymous12345/ib2e01lyq_flt.fits";

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mastfs(args: &[&str]) -> Output {
    run(Command::new(MASTFS).args(args), Duration::from_secs(30))
}

fn ready_for_mount_command() -> bool {
    ready(Kind::Vsftpd) && require_program("unshare") && require_program("findmnt")
}

/// Pids of processes whose command line mentions `dir` (the daemons a test started: their
/// mount point and cache sit in the test's own temp dir).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle) && *pid != std::process::id())
        })
        .collect()
}

/// Asserts that every process mentioning `dir` ends within a few seconds; kills any left.
fn assert_all_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = processes_mentioning(dir);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = processes_mentioning(dir);
    }
    for pid in &left {
        // SAFETY: a process this test started (it carries the test's temp dir).
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "processes of this test still running after it: {left:?}");
}

/// A scratch area: a mount point, a cache, and a directory to stand in for /usr/local/sbin
/// that holds `mastfs` (plus links to whatever the real one holds).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("mastfs-cli-").tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("mnt")).expect("mount point");
        let sbin = dir.path().join("sbin");
        fs::create_dir(&sbin).expect("sbin");
        if let Ok(entries) = fs::read_dir("/usr/local/sbin") {
            for e in entries.flatten() {
                let _ = symlink(e.path(), sbin.join(e.file_name()));
            }
        }
        symlink(MASTFS, sbin.join("mastfs")).expect("link mastfs");
        Scratch { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs a bash script in a private mount namespace where /usr/local/sbin holds mastfs.
    /// The script gets MNT, CACHE and SCRATCH; it should unmount what it mounts.
    fn run_in_namespace(&self, script: &str) -> Output {
        let prelude = "set -euo pipefail\nmount --bind \"$SCRATCH/sbin\" /usr/local/sbin\n\
                       trap 'umount \"$MNT\" 2>/dev/null || true' EXIT\n";
        let out = run(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "bash", "-c"])
                .arg(format!("{prelude}{script}"))
                .env("SCRATCH", self.dir.path())
                .env("MNT", self.path("mnt"))
                .env("CACHE", self.path("cache")),
            Duration::from_secs(90),
        );
        assert_all_gone(self.dir.path());
        out
    }
}

fn mast_server() -> (tempfile::TempDir, Server) {
    let root = new_root();
    make_mast_tree(root.path(), 300 * KIB);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).start();
    (root, server)
}

fn assert_ran(out: &Output, what: &str) -> String {
    let text = stdout_of(out);
    assert!(out.status.success(), "{what} failed ({:?}):\n{text}\n{}", out.status, stderr_of(out));
    text
}

#[test]
fn mount_t_fuse_mastfs_mounts_through_mount_fuse3_and_umount_unmounts() {
    if !ready_for_mount_command() {
        return;
    }
    let (_root, server) = mast_server();
    let scratch = Scratch::new();
    let source = server.root.join("stage").join(FLT);
    let out = scratch.run_in_namespace(&format!(
        "mount -t fuse.mastfs 127.0.0.1:/stage \"$MNT\" -o port={port},ca_file={ca},cache_dir=\"$CACHE\",connections=2\n\
         echo \"TABLE $(findmnt -n -o FSTYPE,SOURCE --mountpoint \"$MNT\")\"\n\
         echo \"OPTIONS $(findmnt -n -o OPTIONS --mountpoint \"$MNT\")\"\n\
         cmp \"$MNT/{FLT}\" {source} && echo SAME\n\
         umount \"$MNT\"\n\
         if findmnt --mountpoint \"$MNT\" >/dev/null; then echo STILL-MOUNTED; else echo UNMOUNTED; fi\n",
        port = server.port,
        ca = server.ca_file.display(),
        source = source.display(),
    ));
    let text = assert_ran(&out, "mount -t fuse.mastfs");
    assert!(text.contains("TABLE fuse.mastfs 127.0.0.1:/stage\n"), "mount table entry:\n{text}");
    let options = text.lines().find_map(|l| l.strip_prefix("OPTIONS ")).unwrap_or_default();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(options.split(',').any(|o| o == want), "{want} missing from the mount's options {options}");
    }
    assert!(text.contains("SAME\n"), "the file read through the mount differs:\n{text}");
    assert!(text.contains("UNMOUNTED\n"), "umount left the mount:\n{text}");
}

#[test]
fn an_fstab_line_mounts_with_mount_t_and_mount_a_sees_it_mounted() {
    if !ready_for_mount_command() {
        return;
    }
    let (_root, server) = mast_server();
    let scratch = Scratch::new();
    let fstab = scratch.path("fstab");
    // What users write: network and boot options for mount(8) and systemd, a user mount,
    // mastfs settings in their -o spelling.
    fs::write(
        &fstab,
        format!(
            "# a comment line\n127.0.0.1:/stage {mnt} fuse.mastfs _netdev,nofail,users,x-systemd.automount,\
             x-systemd.mount-timeout=30,comment=mastfs,port={port},ca_file={ca},cache_dir={cache},\
             connections=2,dir_cache_time=5 0 0\n",
            mnt = scratch.path("mnt").display(),
            port = server.port,
            ca = server.ca_file.display(),
            cache = scratch.path("cache").display(),
        ),
    )
    .expect("write fstab");
    let source = server.root.join("stage").join(FLT);
    let out = scratch.run_in_namespace(&format!(
        "mount -T {fstab} \"$MNT\"\n\
         echo \"TABLE $(findmnt -n -o FSTYPE,SOURCE --mountpoint \"$MNT\")\"\n\
         echo \"OPTIONS $(findmnt -n -o OPTIONS --mountpoint \"$MNT\")\"\n\
         cmp \"$MNT/{FLT}\" {source} && echo SAME\n\
         echo \"AGAIN $(mount -T {fstab} -a -v 2>&1)\"\n\
         echo \"MOUNTS $(findmnt -n --mountpoint \"$MNT\" | wc -l)\"\n\
         umount \"$MNT\"\n\
         if findmnt --mountpoint \"$MNT\" >/dev/null; then echo STILL-MOUNTED; else echo UNMOUNTED; fi\n",
        fstab = fstab.display(),
        source = source.display(),
    ));
    let text = assert_ran(&out, "mount -T fstab");
    assert!(text.contains("TABLE fuse.mastfs 127.0.0.1:/stage\n"), "mount table entry:\n{text}");
    let options = text.lines().find_map(|l| l.strip_prefix("OPTIONS ")).unwrap_or_default();
    assert!(
        options.split(',').any(|o| o == "noexec"),
        "`users` should bring noexec, as mount(8) does for user mounts: {options}"
    );
    assert!(text.contains("SAME\n"), "the file read through the mount differs:\n{text}");
    assert!(text.contains("already mounted"), "mount -a did not recognise the mounted entry:\n{text}");
    assert!(text.contains("MOUNTS 1\n"), "mount -a mounted the entry a second time:\n{text}");
    assert!(text.contains("UNMOUNTED\n"), "umount left the mount:\n{text}");
}

#[test]
fn a_password_login_from_fstab_reads_a_private_password_file_and_refuses_a_readable_one() {
    if !ready_for_mount_command() {
        return;
    }
    let root = new_root();
    make_mast_tree(root.path(), 64 * KIB);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).with_user().start();
    let (user, password) = server.user.clone().expect("password user");
    let scratch = Scratch::new();
    let password_file = scratch.path("password");
    fs::write(&password_file, format!("{password}\n")).expect("write password file");
    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let fstab = scratch.path("fstab");
    fs::write(
        &fstab,
        format!(
            "{user}@127.0.0.1:/pub {mnt} fuse.mastfs noauto,password_file={pw},port={port},ca_file={ca},cache_dir={cache} 0 0\n",
            mnt = scratch.path("mnt").display(),
            pw = password_file.display(),
            port = server.port,
            ca = server.ca_file.display(),
            cache = scratch.path("cache").display(),
        ),
    )
    .expect("write fstab");
    let script = format!(
        "mount -T {fstab} -a\n\
         echo \"AUTO $(findmnt -n --mountpoint \"$MNT\" | wc -l)\"\n\
         mount -T {fstab} \"$MNT\"\n\
         echo \"TABLE $(findmnt -n -o SOURCE --mountpoint \"$MNT\")\"\n\
         cat \"$MNT/README.txt\"\n\
         daemons=0 leaks=0\n\
         for pid in $(pgrep -x mastfs); do\n\
           if tr '\\0' '\\n' < /proc/$pid/cmdline | grep -qxF \"$MNT\"; then\n\
             daemons=$((daemons + 1))\n\
             leaks=$((leaks + $(cat /proc/$pid/cmdline /proc/$pid/environ | grep -caF -f {pw} || true)))\n\
           fi\n\
         done\n\
         echo \"DAEMONS $daemons LEAKS $leaks\"\n\
         umount \"$MNT\"\n",
        fstab = fstab.display(),
        pw = password_file.display(),
    );
    let out = scratch.run_in_namespace(&script);
    let text = assert_ran(&out, "a password mount from fstab");
    assert!(text.contains("AUTO 0\n"), "mount -a mounted a noauto entry:\n{text}");
    assert!(text.contains(&format!("TABLE {user}@127.0.0.1:/pub\n")), "mount table entry:\n{text}");
    assert!(text.contains("A MAST-like test archive."), "README not read through the mount:\n{text}");
    assert!(
        text.contains("DAEMONS 1 LEAKS 0\n"),
        "the daemon's command line or environment holds the password:\n{text}"
    );
    assert!(!text.contains(&password), "the password was printed:\n{text}");

    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = scratch.run_in_namespace(&format!(
        "if mount -T {fstab} \"$MNT\" 2>&1; then echo MOUNTED; else echo REFUSED; fi\n\
         findmnt --mountpoint \"$MNT\" >/dev/null && echo STILL-MOUNTED || true\n",
        fstab = fstab.display()
    ));
    let text = assert_ran(&out, "a mount with a readable password file");
    assert!(
        text.contains("REFUSED\n") && !text.contains("STILL-MOUNTED"),
        "a readable password file was used:\n{text}"
    );
    assert!(text.contains("chmod 600"), "the refusal does not say how to fix it:\n{text}");
}

#[test]
fn stats_json_parses_and_its_numbers_move_after_a_read() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = mast_server();
    let mount = Mount::start(&server);
    let mp = mount.mountpoint.to_str().expect("UTF-8 mount point").to_string();
    let json_of = |out: &Output| -> Value {
        let text = assert_ran(out, "mastfs stats --json");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
    };
    let counter =
        |j: &Value, name: &str| j["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {j}"));
    let before = json_of(&mastfs(&["stats", "--json", &mp]));
    assert_eq!(before["mountpoint"].as_str(), Some(mp.as_str()));
    assert_eq!(before["source"].as_str(), Some("127.0.0.1"));

    let rel = format!("stage/{FLT}");
    let size = mount.read(&rel).len() as u64;
    let after = json_of(&mastfs(&["stats", "--json", &mp]));
    assert!(
        counter(&after, "net_bytes") >= counter(&before, "net_bytes") + size,
        "reading {size} bytes moved net_bytes from {} to {}",
        counter(&before, "net_bytes"),
        counter(&after, "net_bytes")
    );
    assert!(counter(&after, "retrs") > counter(&before, "retrs"), "no RETR counted: {after}");
    assert!(after["hit_ratio"].is_f64(), "no hit ratio after a read: {after}");

    let text = assert_ran(&mastfs(&["stats", &mp]), "mastfs stats");
    assert!(text.starts_with(&format!("127.0.0.1 on {mp}\n")), "{text}");
    assert!(text.contains("from the network") && text.contains(" KiB"), "no human byte count:\n{text}");
    assert!(text.contains("cache hit ratio"), "{text}");

    let watch = assert_ran(&mastfs(&["stats", "--json", "--watch", "0.2", "--count", "2", &mp]), "stats --watch");
    let frames: Vec<Value> =
        watch.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(frames.len(), 2, "--count 2 gave:\n{watch}");
    assert!(frames[0].get("rates").is_none());
    assert!(frames[1]["rates"]["net_bytes"].is_f64(), "no rates in the second frame: {}", frames[1]);
}

#[test]
fn stats_of_a_directory_that_is_not_a_mount_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = mastfs(&["stats", dir.path().to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("is not a mastfs mount"), "{}", stderr_of(&out));
}

#[test]
fn completions_are_produced_for_bash_zsh_and_fish_and_bash_loads_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef mastfs"), ("fish", "complete -c mastfs")] {
        let text = assert_ran(&mastfs(&["completions", shell]), shell);
        assert!(text.contains(marker), "{shell} completions lack {marker:?}");
        assert!(text.contains("--cache-dir") || text.contains("cache-dir"), "{shell} completions lack mount's flags");
        fs::write(dir.path().join(shell), text).expect("write completions");
    }
    if require_program("bash") {
        let out = run(
            Command::new("bash")
                .arg("-c")
                .arg("source \"$1\" && complete -p mastfs")
                .arg("_")
                .arg(dir.path().join("bash")),
            Duration::from_secs(20),
        );
        let text = assert_ran(&out, "bash sourcing the completions");
        assert!(text.contains("mastfs"), "bash registered no completion: {text}");
    }
    let out = mastfs(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell must be a usage error");
}

#[test]
fn man_pages_are_produced_for_every_command() {
    let page = assert_ran(&mastfs(&["man"]), "mastfs man");
    assert!(page.contains(".TH mastfs 1"), "not a man page:\n{page}");
    let mount_page = assert_ran(&mastfs(&["man", "mount"]), "mastfs man mount");
    assert!(mount_page.contains("password\\_file") || mount_page.contains("password_file"), "{mount_page}");

    let dir = tempfile::tempdir().expect("temp dir");
    let out = assert_ran(&mastfs(&["man", "--dir", dir.path().to_str().expect("UTF-8")]), "mastfs man --dir");
    for name in [
        "mastfs.1",
        "mastfs-mount.1",
        "mastfs-umount.1",
        "mastfs-stats.1",
        "mastfs-cache.1",
        "mastfs-cache-du.1",
        "mastfs-cache-clear.1",
        "mastfs-cache-verify.1",
        "mastfs-warm.1",
        "mastfs-completions.1",
        "mastfs-man.1",
    ] {
        let path = dir.path().join(name);
        assert!(path.is_file(), "{name} not written; mastfs printed:\n{out}");
        assert!(fs::read_to_string(&path).expect("read page").contains(".TH "), "{name} is not a man page");
    }
    if find_program("man").is_some() {
        let rendered = run(
            Command::new("man")
                .arg("-l")
                .arg(dir.path().join("mastfs-mount.1"))
                .env("MANWIDTH", "100")
                .env("MANPAGER", "cat"),
            Duration::from_secs(20),
        );
        let text = assert_ran(&rendered, "man -l mastfs-mount.1");
        assert!(text.contains("MOUNT OPTIONS") && text.contains("--cache-dir"), "rendered page:\n{text}");
    }
    let clear_page = assert_ran(&mastfs(&["man", "cache-clear"]), "mastfs man cache-clear");
    assert!(clear_page.contains("\\-\\-host") && clear_page.contains("\\-\\-dry\\-run"), "{clear_page}");
}

#[test]
fn help_covers_every_command() {
    let top = assert_ran(&mastfs(&["--help"]), "mastfs --help");
    for command in ["mount", "umount", "stats", "warm", "cache", "completions", "man"] {
        assert!(top.contains(&format!("  {command} ")), "--help does not list {command}:\n{top}");
        let text = assert_ran(&mastfs(&[command, "--help"]), command);
        assert!(text.contains("Usage: mastfs"), "{command} --help:\n{text}");
    }
    for sub in ["du", "clear", "verify"] {
        let text = assert_ran(&mastfs(&["cache", sub, "--help"]), sub);
        assert!(text.contains(&format!("Usage: mastfs cache {sub}")) && text.contains("--cache-dir"), "{text}");
    }
    assert!(top.contains("mastfs SOURCE MOUNTPOINT"), "--help does not show the mount(8) form:\n{top}");
}

#[test]
fn the_demo_check_walks_through_every_step() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("mastfs-demo-test-").tempdir().expect("temp dir");
    let out = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
            .args(["--check", "--binary", MASTFS, "--mountpoint"])
            .arg(dir.path().join("mast")),
        Duration::from_secs(600),
    );
    let text = assert_ran(&out, "scripts/demo --check");
    assert!(text.contains("demo --check: every step worked."), "{text}");
    assert!(!dir.path().join("mast").exists(), "the demo left its mount point behind");
    assert_all_gone(dir.path());
}
