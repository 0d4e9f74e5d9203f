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

/// Counters as the daemon serves them in `.mastfs-stats` (what `mastfs stats` reads);
/// panics on a line that is not `name value`.
fn counters(mount: &Mount) -> Vec<(String, u64)> {
    let path = mount.path(".mastfs-stats");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
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

// ------------------------------------------------------------------ listings and lookups

/// The commands the server logged from `from` (a byte offset of its protocol log) on.
fn commands_since(server: &Server, from: usize) -> Vec<String> {
    let log = fs::read(&server.protocol_log).expect("protocol log");
    let tail = String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned();
    // vsftpd: `... FTP command: Client "127.0.0.1", "LIST -a"`.
    tail.lines()
        .filter_map(|l| l.split_once("FTP command: ").map(|(_, c)| c))
        .filter_map(|c| c.split_once("\", \"").map(|(_, cmd)| cmd.trim_end_matches('"').to_string()))
        .collect()
}

fn log_len(server: &Server) -> usize {
    fs::metadata(&server.protocol_log).map(|m| m.len() as usize).unwrap_or(0)
}

fn is_listing(command: &str) -> bool {
    let verb = command.split(' ').next().unwrap_or_default().to_ascii_uppercase();
    matches!(verb.as_str(), "LIST" | "MLSD" | "NLST")
}

#[test]
fn a_cold_stat_of_a_deep_path_lists_no_ancestor_and_ls_l_lists_only_its_directory() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let (_root, server) = serve(Server::builder(Kind::Vsftpd), |r| {
        write_pattern_file(&r.join("stage/anonymous/req/sub/deep/x.fits"), 1, 2880);
        write_file(&r.join("stage/anonymous/req/sub/deep/y.fits"), b"y");
        write_file(&r.join("stage/anonymous/other.fits"), b"o");
    });
    let mount = Mount::start(&server);
    let start = log_len(&server);
    let meta = fs::metadata(mount.path("stage/anonymous/req/sub/deep/x.fits")).expect("stat of the deep path");
    assert_eq!(meta.len(), 2880);
    let commands = commands_since(&server, start);
    assert!(!commands.is_empty(), "the server saw the lookups");
    let listings: Vec<&String> = commands.iter().filter(|c| is_listing(c)).collect();
    assert!(listings.is_empty(), "no ancestor was listed: {commands:?}");

    let start = log_len(&server);
    let out = run(Command::new("ls").arg("-l").arg(mount.path("stage/anonymous/req/sub/deep")), LIMIT);
    assert!(out.status.success(), "ls -l failed: {}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("x.fits") && text.contains("y.fits"), "{text}");
    let commands = commands_since(&server, start);
    assert_eq!(commands.iter().filter(|c| is_listing(c)).count(), 1, "one listing, of deep: {commands:?}");
    assert_eq!(mount.read("stage/anonymous/req/sub/deep/y.fits"), b"y");
    let missing = fs::metadata(mount.path("stage/anonymous/req/nope"));
    assert_eq!(missing.err().and_then(|e| e.raw_os_error()), Some(libc::ENOENT));
}

/// Reads a directory a few entries per system call (`getdents64` with a small buffer), so
/// the kernel asks the file system for the entries in many small pieces.
struct SmallReads {
    dir: fs::File,
}

impl SmallReads {
    fn open(path: &Path) -> SmallReads {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path).expect("open dir");
        SmallReads { dir }
    }

    /// The names of the next system call's worth of entries; empty at the end.
    fn next_names(&mut self) -> Vec<String> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 1024];
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, self.dir.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        let mut names = Vec::new();
        let mut at = 0;
        while at < n as usize {
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            names.push(String::from_utf8_lossy(name).into_owned());
            at += reclen;
        }
        names
    }
}

#[test]
fn reading_a_directory_while_its_listing_changes_neither_repeats_nor_skips_entries() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    const FILES: usize = 2000;
    let (root, server) = serve(Server::builder(Kind::Vsftpd), |r| {
        make_big_dir(&r.join("big"), FILES);
    });
    // Every listing expires at once: each readdir call could see a new one.
    let mount = Mount::builder(&server).args(["--dir-cache-time", "0"]).start();
    let mut dir = SmallReads::open(&mount.path("big"));
    let mut seen: Vec<String> = Vec::new();
    while seen.len() < 200 {
        let names = dir.next_names();
        assert!(!names.is_empty(), "the directory ended after {} entries", seen.len());
        seen.extend(names);
    }
    // The entries read so far go from the server while the directory is being read: in a
    // new listing everything after them moves forward.
    for name in seen.iter().filter(|n| n.starts_with('f')) {
        fs::remove_file(root.path().join("big").join(name)).expect("remove");
    }
    let gone: HashSet<String> = seen.iter().cloned().collect();
    loop {
        let names = dir.next_names();
        if names.is_empty() {
            break;
        }
        seen.extend(names);
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no entry twice");
    let kept: Vec<String> = (0..FILES).map(|i| format!("f{i:06}.fits")).filter(|n| !gone.contains(n)).collect();
    let missed: Vec<&String> = kept.iter().filter(|n| !unique.contains(n)).collect();
    assert!(missed.is_empty(), "{} files present throughout were skipped, e.g. {:?}", missed.len(), missed.first());
    assert!(seen.len() >= FILES, "every entry of the directory as opened");
}

#[test]
fn an_expired_listing_answers_ls_at_once_while_the_server_hangs() {
    if !ready(Kind::Vsftpd) {
        return;
    }
    let root = new_root();
    write_file(&root.path().join("data/a.fits"), b"a");
    write_file(&root.path().join("data/b.fits"), b"b");
    let pasv = common::relay::Relay::free_pasv_range(16);
    let server = Server::builder(Kind::Vsftpd).root(root.path()).pasv_range(pasv.0, pasv.1).start();
    let relay = common::relay::Relay::start(server.port, pasv);
    let mount = Mount::builder(&server)
        .no_ca()
        .args(["--insecure", "--timeout", "20", "--dir-cache-time", "1"])
        .start_via(&relay.host(), relay.port);
    let names = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let out = run(Command::new("ls").arg(mount.path("data")), LIMIT);
    assert_eq!(names(&out), "a.fits\nb.fits\n");

    relay.stall(true);
    std::thread::sleep(Duration::from_millis(1500));
    // A listing that waited for the server would take its 20 s timeout (twice, with the
    // retries); these deadlines are far below that, so reaching one means ls was blocked.
    for _ in 0..3 {
        let out = run(Command::new("ls").arg(mount.path("data")), Duration::from_secs(8));
        assert!(out.status.success(), "ls failed: {}", stderr_of(&out));
        assert_eq!(names(&out), "a.fits\nb.fits\n");
    }
    relay.stall(false);
}
