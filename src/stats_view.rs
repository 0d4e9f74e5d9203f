//! `mastfs stats`: the daemon's raw counters, as people and scripts read them.
//!
//! The daemon serves `name value` lines in the hidden file `MOUNTPOINT/.mastfs-stats`. This
//! side knows how to label the counters it has heard of and shows any other under its own
//! name, so a daemon with more (or fewer) counters than this version knows still reads well.
//! `--watch` samples the file every few seconds and adds per-second rates.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::cli::StatsArgs;
use crate::fs::STATS_NAME;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Unit {
    Bytes,
    Count,
    /// A state, not a counter: 1 is yes, 0 no; it has no rate.
    Flag,
}

/// A counter this version knows: its name in the stats file, its label, its unit, its group.
struct Known {
    name: &'static str,
    label: &'static str,
    unit: Unit,
    group: &'static str,
}

const fn known(name: &'static str, label: &'static str, unit: Unit, group: &'static str) -> Known {
    Known { name, label, unit, group }
}

const DATA: &str = "Data";
const SERVER: &str = "Server";
const ERRORS: &str = "Errors";

/// In display order. Names not (yet) served by the daemon are simply not shown.
const KNOWN: &[Known] = &[
    known("net_bytes", "from the network", Unit::Bytes, DATA),
    known("cache_bytes", "from the cache", Unit::Bytes, DATA),
    known("cache_hits", "cache hits (blocks)", Unit::Count, DATA),
    known("cache_misses", "cache misses (blocks)", Unit::Count, DATA),
    known("prefetched_blocks", "blocks read ahead", Unit::Count, DATA),
    known("round_trips", "round trips", Unit::Count, SERVER),
    known("retrs", "transfers (RETR)", Unit::Count, SERVER),
    known("aborts", "transfers ended early", Unit::Count, SERVER),
    known("listings", "directory listings", Unit::Count, SERVER),
    known("disk_listings", "listings from the cache", Unit::Count, SERVER),
    known("offline", "offline (serving the cache only)", Unit::Flag, SERVER),
    known("logins", "logins", Unit::Count, SERVER),
    known("spares", "spares (logins in the background)", Unit::Count, SERVER),
    known("reconnects", "reconnects", Unit::Count, SERVER),
    known("retries", "retries", Unit::Count, SERVER),
    known("too_many", "refused: too many connections", Unit::Count, SERVER),
    known("read_errors", "read errors", Unit::Count, ERRORS),
    known("cache_write_errors", "cache write errors", Unit::Count, ERRORS),
];

/// One reading of a mount's counters, in the order the daemon wrote them.
#[derive(Clone, Debug)]
struct Sample {
    counters: Vec<(String, u64)>,
    at: Instant,
}

impl Sample {
    fn get(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Share of block lookups served from the cache.
    fn hit_ratio(&self) -> Option<f64> {
        let hits = self.get("cache_hits")?;
        let total = hits + self.get("cache_misses")?;
        (total > 0).then(|| hits as f64 / total as f64)
    }

    /// Per-second change since `earlier`; None for a counter that went backwards (the
    /// daemon restarted) or is new.
    fn rate(&self, earlier: &Sample, name: &str) -> Option<f64> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        let delta = self.get(name)?.checked_sub(earlier.get(name)?)?;
        (secs > 0.0).then(|| delta as f64 / secs)
    }
}

/// `name value` lines; anything else (a line this version cannot read) is skipped rather
/// than failing the whole report. A last line without its newline is dropped too: a read
/// cut short must not turn `net_bytes 5000000` into `net_bytes 50`.
pub(crate) fn parse(text: &str) -> Vec<(String, u64)> {
    text.split_inclusive('\n')
        .filter_map(|line| {
            let mut words = line.strip_suffix('\n')?.split_whitespace();
            let (name, value, rest) = (words.next()?, words.next()?, words.next());
            if rest.is_some() {
                return None;
            }
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A mastfs mount as /proc/self/mountinfo lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) mountpoint: PathBuf,
    pub(crate) source: String,
}

/// The mastfs mounts in mountinfo text (fields: ... mount-point ... - fstype source ...).
pub(crate) fn mastfs_mounts(mountinfo: &str) -> Vec<MountEntry> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (fstype, source, mountpoint) = (fields.get(dash + 1)?, fields.get(dash + 2)?, fields.get(4)?);
            (*fstype == "fuse.mastfs").then(|| MountEntry {
                mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
                source: unescape_mountinfo(source),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = s.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(octal, 8)
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn read_mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// The mounts to report on: the one named (which must be a mastfs mount), or all of them.
fn targets(named: Option<&Path>) -> Result<Vec<MountEntry>, String> {
    let mounts = mastfs_mounts(&read_mountinfo());
    let Some(path) = named else {
        return if mounts.is_empty() { Err("no mastfs mount found".into()) } else { Ok(mounts) };
    };
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match mounts.into_iter().find(|m| m.mountpoint == canonical) {
        Some(m) => Ok(vec![MountEntry { mountpoint: path.to_path_buf(), ..m }]),
        None => Err(format!("{} is not a mastfs mount", path.display())),
    }
}

fn sample(mount: &MountEntry) -> Result<Sample, String> {
    let path = mount.mountpoint.join(STATS_NAME);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the counters of {} ({e})", mount.mountpoint.display()))?;
    Ok(Sample { counters: parse(&text), at: Instant::now() })
}

/// `1536` -> `1.5 KiB`.
pub(crate) fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `1234567` -> `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate_text(unit: Unit, per_sec: f64) -> String {
    match unit {
        Unit::Bytes => format!("{}/s", bytes(per_sec)),
        Unit::Count | Unit::Flag => format!("{per_sec:.1}/s"),
    }
}

/// The report for people: grouped, labelled, in human units; rates when `earlier` is given.
fn render_text(mount: &MountEntry, now: &Sample, earlier: Option<&Sample>) -> String {
    let mut out = String::new();
    let offline = if now.get("offline").is_some_and(|v| v > 0) { "   OFFLINE: serving the cache only" } else { "" };
    let _ = writeln!(out, "{} on {}{offline}", mount.source, mount.mountpoint.display());
    let line = |out: &mut String, label: &str, value: String, rate: Option<String>| {
        let _ = match rate {
            Some(r) => writeln!(out, "  {label:<32} {value:>12}   {r:>12}"),
            None => writeln!(out, "  {label:<32} {value:>12}"),
        };
    };
    let mut group = "";
    for k in KNOWN {
        let Some(v) = now.get(k.name) else { continue };
        if k.group != group {
            group = k.group;
            let _ = writeln!(out, "{group}");
            if group == DATA
                && let Some(ratio) = now.hit_ratio()
            {
                line(&mut out, "cache hit ratio", format!("{:.1} %", ratio * 100.0), None);
            }
        }
        let value = match k.unit {
            Unit::Bytes => bytes(v as f64),
            Unit::Count => count(v),
            Unit::Flag => (if v > 0 { "yes" } else { "no" }).to_string(),
        };
        let rate =
            earlier.filter(|_| k.unit != Unit::Flag).and_then(|e| now.rate(e, k.name)).map(|r| rate_text(k.unit, r));
        line(&mut out, k.label, value, rate);
    }
    let others: Vec<&(String, u64)> = now.counters.iter().filter(|(n, _)| !KNOWN.iter().any(|k| k.name == n)).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "Other");
        for (name, v) in others {
            let rate = earlier.and_then(|e| now.rate(e, name)).map(|r| rate_text(Unit::Count, r));
            line(&mut out, name, count(*v), rate);
        }
    }
    out
}

/// The report for scripts: every counter by its raw name, the hit ratio, and per-second
/// rates when `earlier` is given.
fn render_json(mount: &MountEntry, now: &Sample, earlier: Option<&Sample>) -> Value {
    let counters: Map<String, Value> = now.counters.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
    let mut report = json!({
        "mountpoint": mount.mountpoint.to_string_lossy(),
        "source": mount.source,
        "counters": counters,
        "hit_ratio": now.hit_ratio(),
    });
    if let Some(e) = earlier {
        let rates: Map<String, Value> =
            now.counters.iter().filter_map(|(n, _)| Some((n.clone(), json!(now.rate(e, n)?)))).collect();
        report["interval_secs"] = json!(now.at.duration_since(e.at).as_secs_f64());
        report["rates"] = Value::Object(rates);
    }
    report
}

fn is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

pub fn run(args: StatsArgs) -> ExitCode {
    match report(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mastfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn report(args: &StatsArgs) -> Result<(), String> {
    let mounts = targets(args.mountpoint.as_deref())?;
    let Some(interval) = args.watch else {
        for (i, mount) in mounts.iter().enumerate() {
            let now = sample(mount)?;
            if args.json {
                println!("{}", render_json(mount, &now, None));
            } else {
                print!("{}{}", if i > 0 { "\n" } else { "" }, render_text(mount, &now, None));
            }
        }
        return Ok(());
    };
    let interval = Duration::from_secs_f64(interval);
    let redraw = !args.json && is_terminal();
    let mut earlier: Vec<Option<Sample>> = vec![None; mounts.len()];
    let mut shown = 0u64;
    loop {
        let mut frame = String::new();
        for (mount, earlier) in mounts.iter().zip(earlier.iter_mut()) {
            let now = sample(mount)?;
            if args.json {
                let _ = writeln!(frame, "{}", render_json(mount, &now, earlier.as_ref()));
            } else {
                if !frame.is_empty() {
                    frame.push('\n');
                }
                frame.push_str(&render_text(mount, &now, earlier.as_ref()));
            }
            *earlier = Some(now);
        }
        if redraw {
            // Home and clear, then the frame: a steady picture like watch(1).
            frame.insert_str(0, "\x1b[H\x1b[2J");
            let _ = write!(frame, "\nevery {:.1} s; Ctrl-C to stop\n", interval.as_secs_f64());
        } else if !args.json && shown > 0 {
            frame.insert(0, '\n');
        }
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(frame.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            // The reader went away (`| head`): nothing left to do.
            return Ok(());
        }
        drop(stdout);
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_of(text: &str, at: Instant) -> Sample {
        Sample { counters: parse(text), at }
    }

    fn mount() -> MountEntry {
        MountEntry { mountpoint: PathBuf::from("/mnt/mast"), source: "mastfs#archive.stsci.edu".into() }
    }

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn malformed_and_cut_short_lines_are_skipped_and_the_rest_kept() {
        let counters = parse("net_bytes 10\ngarbage\nretrs x\nlogins 1 2\n\nnew_thing 7\nretries 12");
        assert_eq!(counters, [("net_bytes".to_string(), 10), ("new_thing".to_string(), 7)]);
    }

    #[test]
    fn the_text_report_labels_known_counters_and_keeps_unknown_ones() {
        let now = sample_of(
            "cache_hits 3\ncache_misses 1\nnet_bytes 5242880\nlogins 2\nfancy_new_counter 1234\n",
            Instant::now(),
        );
        let text = render_text(&mount(), &now, None);
        assert!(text.starts_with("mastfs#archive.stsci.edu on /mnt/mast\n"), "{text}");
        assert!(text.contains("from the network") && text.contains("5.0 MiB"), "{text}");
        assert!(text.contains("cache hit ratio") && text.contains("75.0 %"), "{text}");
        assert!(text.contains("logins") && text.contains("fancy_new_counter") && text.contains("1,234"), "{text}");
        assert!(!text.contains("round trips"), "a counter the daemon does not serve was shown: {text}");
        assert!(!text.contains("Errors"), "an empty group was shown: {text}");
    }

    #[test]
    fn a_missing_counter_leaves_out_what_depends_on_it() {
        let now = sample_of("cache_hits 3\n", Instant::now());
        assert_eq!(now.hit_ratio(), None);
        assert!(!render_text(&mount(), &now, None).contains("ratio"));
        let json = render_json(&mount(), &now, None);
        assert_eq!(json["hit_ratio"], Value::Null);
    }

    #[test]
    fn an_offline_mount_says_so_at_the_top_and_its_state_has_no_rate() {
        let t0 = Instant::now();
        let before = sample_of("net_bytes 0\noffline 1\n", t0);
        let after = sample_of("net_bytes 0\noffline 1\n", t0 + Duration::from_secs(2));
        let text = render_text(&mount(), &after, Some(&before));
        assert!(text.lines().next().is_some_and(|l| l.contains("OFFLINE")), "{text}");
        let state = text.lines().find(|l| l.contains("offline (serving the cache only)")).expect("the state line");
        assert!(state.trim_end().ends_with("yes") && !state.contains("/s"), "{state}");
        let online = render_text(&mount(), &sample_of("offline 0\n", t0), None);
        assert!(!online.contains("OFFLINE") && online.contains(" no"), "{online}");
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let before = sample_of("net_bytes 0\nretrs 10\nlogins 5\n", t0);
        let after = sample_of("net_bytes 4194304\nretrs 14\nlogins 1\nnew 3\n", t0 + Duration::from_secs(2));
        assert_eq!(after.rate(&before, "net_bytes"), Some(2097152.0));
        assert_eq!(after.rate(&before, "retrs"), Some(2.0));
        assert_eq!(after.rate(&before, "logins"), None, "a counter that went back has no rate");
        assert_eq!(after.rate(&before, "new"), None);
        let text = render_text(&mount(), &after, Some(&before));
        assert!(text.contains("2.0 MiB/s") && text.contains("2.0/s"), "{text}");
        let json = render_json(&mount(), &after, Some(&before));
        assert_eq!(json["rates"]["net_bytes"], json!(2097152.0));
        assert_eq!(json["interval_secs"], json!(2.0));
        assert!(json["rates"].get("logins").is_none());
    }

    #[test]
    fn the_json_report_has_every_counter_by_its_raw_name() {
        let now = sample_of("cache_hits 1\ncache_misses 1\nnet_bytes 7\nodd 9\n", Instant::now());
        let json = render_json(&mount(), &now, None);
        let parsed: Value = serde_json::from_str(&json.to_string()).expect("valid JSON");
        assert_eq!(parsed["counters"]["net_bytes"], json!(7));
        assert_eq!(parsed["counters"]["odd"], json!(9));
        assert_eq!(parsed["hit_ratio"], json!(0.5));
        assert_eq!(parsed["mountpoint"], json!("/mnt/mast"));
        assert!(parsed.get("rates").is_none());
    }

    #[test]
    fn mastfs_mounts_are_found_in_mountinfo() {
        let info = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    90 28 0:52 / /mnt/my\\040mast ro,nosuid,nodev relatime shared:5 - fuse.mastfs mastfs#h.example ro,user_id=0\n\
                    91 28 0:53 / /mnt/s ro - fuse.sshfs me@h:/ ro\n";
        assert_eq!(
            mastfs_mounts(info),
            [MountEntry { mountpoint: PathBuf::from("/mnt/my mast"), source: "mastfs#h.example".into() }]
        );
    }
}
