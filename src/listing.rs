//! Parsing of FTP directory listings (MLSD and LIST) into [`RemoteEntry`]s.
//!
//! Written by hand rather than with suppaftp's parser because real servers send lines it
//! rejects or misreads: ACL suffixes on permissions, `;` in MLSD names, fractional `modify=`
//! and year-less dates around New Year.
//!
//! Every parser here is total: any `&str` gives an entry, `None` or a [`ParseError`], never a
//! panic, and work is linear in the line length.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::remote::{EntryKind, NAME_MAX, RemoteEntry, TARGET_MAX};

/// Lines longer than this are skipped by [`parse_listing`]: no real entry needs one, and a
/// hostile server should not get unbounded work out of us.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Beyond this many warnings, [`parse_listing`] only counts them, so that a listing of garbage
/// cannot make the warning list as large as the listing.
const MAX_WARNINGS: usize = 100;

/// How far in the future a year-less date may land before it is taken as last year's: covers
/// a server clock running ahead and a server reporting local time east of UTC.
const FUTURE_SLACK_SECS: i64 = 3 * 86_400;

/// How many characters of the offending line a [`ParseError`] quotes.
const EXCERPT_CHARS: usize = 60;

const SECS_PER_DAY: i64 = 86_400;

/// Which command produced the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 3659 machine listing: `fact=value;...; name`.
    Mlsd,
    /// Free-form `LIST` output, Unix `ls -l` style or DOS/IIS style.
    List,
}

/// The usable entries of a listing, plus one message per line or entry that was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<RemoteEntry>,
    pub warnings: Vec<String>,
}

/// A listing line that could not be turned into an entry. The line is shown with Debug
/// quoting, which escapes control characters, so a hostile line cannot forge log lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} in {excerpt:?}")]
pub struct ParseError {
    reason: String,
    excerpt: String,
}

impl ParseError {
    fn new(reason: impl Into<String>, line: &str) -> Self {
        ParseError { reason: reason.into(), excerpt: excerpt(line) }
    }
}

fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Parses a whole listing, skipping (with a warning) every line that fails to parse or names
/// an entry that cannot be a path component, and every later duplicate of a name.
///
/// `now` places year-less Unix dates (`Nov 23 19:37`). Blank lines, `total N`, and the `.`,
/// `..`, `cdir` and `pdir` entries are skipped silently: they are normal, not damage.
pub fn parse_listing(lines: &[String], dialect: Dialect, now: SystemTime) -> Listing {
    let mut entries = Vec::with_capacity(lines.len());
    let mut warnings = Warnings::default();
    let mut seen: HashSet<String> = HashSet::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        if line.len() > MAX_LINE_LEN {
            warnings.push(format!("line {number}: skipped, {} bytes long (limit {MAX_LINE_LEN})", line.len()));
            continue;
        }
        let parsed = match dialect {
            Dialect::Mlsd => parse_mlsd_line(line),
            Dialect::List => parse_list_line(line, now),
        };
        match parsed {
            Err(e) => warnings.push(format!("line {number}: skipped: {e}")),
            Ok(None) => {}
            Ok(Some(entry)) => {
                if seen.contains(&entry.name) {
                    warnings.push(format!(
                        "line {number}: skipped duplicate name {:?}, keeping the first",
                        excerpt(&entry.name)
                    ));
                } else {
                    seen.insert(entry.name.clone());
                    entries.push(entry);
                }
            }
        }
    }
    Listing { entries, warnings: warnings.finish() }
}

#[derive(Default)]
struct Warnings {
    kept: Vec<String>,
    suppressed: usize,
}

impl Warnings {
    fn push(&mut self, warning: String) {
        if self.kept.len() < MAX_WARNINGS {
            self.kept.push(warning);
        } else {
            self.suppressed += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.suppressed > 0 {
            self.kept.push(format!("{} more warnings not shown", self.suppressed));
        }
        self.kept
    }
}

/// Drops the line terminator a caller may have left on: names cannot contain CR or LF anyway.
fn strip_eol(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_dot_entry(name: &str) -> bool {
    name == "." || name == ".."
}

/// Enforces [`RemoteEntry::name`]'s invariant (apart from `.`/`..`, which callers skip).
fn check_name(name: &str, line: &str) -> Result<(), ParseError> {
    if name.is_empty() {
        return Err(ParseError::new("empty name", line));
    }
    if let Some(bad) = name.chars().find(|c| matches!(c, '/' | '\0' | '\r' | '\n')) {
        return Err(ParseError::new(format!("name contains {bad:?}, which a path component cannot"), line));
    }
    if name.len() > NAME_MAX {
        let reason = format!("name {:?} is {} bytes, longer than NAME_MAX ({NAME_MAX})", excerpt(name), name.len());
        return Err(ParseError::new(reason, line));
    }
    Ok(())
}

/// Enforces [`RemoteEntry::link_target`]'s invariant: `readlink` could not return the target
/// whole (or would cut it at the NUL), so such a link could only mislead.
fn check_target(target: Option<&str>, line: &str) -> Result<(), ParseError> {
    let Some(target) = target else { return Ok(()) };
    if target.contains('\0') {
        return Err(ParseError::new("symlink target contains '\\0'", line));
    }
    if target.len() > TARGET_MAX {
        return Err(ParseError::new(
            format!("symlink target is {} bytes, longer than PATH_MAX allows ({TARGET_MAX})", target.len()),
            line,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MLSD

/// Parses one MLSD line: `fact=value;fact=value; name`.
///
/// The name is everything after the first `"; "`, so it may itself contain `;`, spaces
/// (leading and trailing) or anything else except what [`RemoteEntry::name`] forbids. Fact
/// names are case-insensitive and unknown facts are ignored. A missing `modify` gives the Unix
/// epoch, so that the same listing always gives the same times. Returns `Ok(None)` for
/// `type=cdir`/`type=pdir`, `.`/`..` and blank lines.
///
/// A symlink target that itself contains `"; "` cannot be told apart from the end of the facts
/// (RFC 3659 does not allow `;` in fact values); such a line gives a wrong name or an error.
pub fn parse_mlsd_line(line: &str) -> Result<Option<RemoteEntry>, ParseError> {
    let line = strip_eol(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (facts, name) = match line.strip_prefix(' ') {
        // RFC 3659 allows a line with no facts at all.
        Some(name) => ("", name),
        None => match line.find("; ") {
            Some(at) => (&line[..at], &line[at + 2..]),
            None => return Err(ParseError::new("no \"; \" before the name", line)),
        },
    };

    let mut kind = EntryKind::File;
    let mut size = None;
    let mut sizd = None;
    let mut mtime = None;
    let mut perm = None;
    let mut link_target: Option<String> = None;
    // pure-ftpd prints `type=OS.unix=slink:TARGET` raw, so a target containing `;` spills into
    // what looks like further facts; glue those pieces back onto the target.
    let mut in_slink_target = false;
    for fact in facts.split(';') {
        let Some((key, value)) = fact.split_once('=') else {
            if in_slink_target {
                if let Some(target) = link_target.as_mut() {
                    target.push(';');
                    target.push_str(fact);
                }
                continue;
            }
            if fact.is_empty() {
                continue;
            }
            return Err(ParseError::new(format!("fact {:?} has no '='", excerpt(fact)), line));
        };
        in_slink_target = false;
        if key.eq_ignore_ascii_case("type") {
            match mlsd_type(value) {
                MlsdType::Skip => return Ok(None),
                MlsdType::Kind(k) => kind = k,
                MlsdType::Symlink(target) => {
                    kind = EntryKind::Symlink;
                    link_target = target.map(str::to_owned);
                    in_slink_target = link_target.is_some();
                }
            }
        } else if key.eq_ignore_ascii_case("size") {
            size = Some(parse_size(value, line)?);
        } else if key.eq_ignore_ascii_case("sizd") {
            sizd = Some(parse_size(value, line)?);
        } else if key.eq_ignore_ascii_case("modify") {
            mtime = Some(parse_mlsd_time(value, line)?);
        } else if key.eq_ignore_ascii_case("unix.mode") {
            // A mode we cannot read only costs the permission bits, not the entry.
            perm = parse_octal_mode(value);
        }
    }

    if is_dot_entry(name) {
        return Ok(None);
    }
    check_name(name, line)?;
    check_target(link_target.as_deref(), line)?;
    let size = match kind {
        EntryKind::Dir => sizd.or(size),
        EntryKind::File | EntryKind::Symlink => size.or(sizd),
    }
    .unwrap_or(0);
    Ok(Some(RemoteEntry {
        name: name.to_owned(),
        kind,
        size,
        mtime: mtime.unwrap_or(UNIX_EPOCH),
        mtime_precision: 1,
        perm,
        link_target: link_target.filter(|t| !t.is_empty()),
    }))
}

enum MlsdType<'a> {
    Skip,
    Kind(EntryKind),
    Symlink(Option<&'a str>),
}

fn mlsd_type(value: &str) -> MlsdType<'_> {
    if value.eq_ignore_ascii_case("dir") {
        return MlsdType::Kind(EntryKind::Dir);
    }
    if value.eq_ignore_ascii_case("cdir") || value.eq_ignore_ascii_case("pdir") {
        return MlsdType::Skip;
    }
    // `OS.unix=slink:TARGET` (pure-ftpd), `OS.unix=symlink` (proftpd); the OS name varies.
    if value.get(..3).is_some_and(|os| os.eq_ignore_ascii_case("os."))
        && let Some((_, os_type)) = value.split_once('=')
    {
        let (what, target) = match os_type.split_once(':') {
            Some((what, target)) => (what, Some(target)),
            None => (os_type, None),
        };
        if what.eq_ignore_ascii_case("slink") || what.eq_ignore_ascii_case("symlink") {
            return MlsdType::Symlink(target);
        }
    }
    // `file`, and types that are neither files nor dirs (pure-ftpd says `unknown` for a FIFO):
    // offering them as files is harmless, reading one just fails on the server.
    MlsdType::Kind(EntryKind::File)
}

/// `YYYYMMDDHHMMSS[.sss]`, UTC (RFC 3659 section 2.3).
fn parse_mlsd_time(value: &str, line: &str) -> Result<SystemTime, ParseError> {
    let bad = || ParseError::new("modify= is not YYYYMMDDHHMMSS[.sss]", line);
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    if whole.len() != 14 || !is_digits(whole) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| whole[range].parse::<u32>().map_err(|_| bad());
    let mut nanos = 0;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !is_digits(fraction) {
            return Err(bad());
        }
        // Digits past nanoseconds carry nothing SystemTime could hold.
        for (i, digit) in fraction.bytes().take(9).enumerate() {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    let civil = Civil {
        year: i64::from(field(0..4)?),
        month: field(4..6)?,
        day: field(6..8)?,
        hour: field(8..10)?,
        minute: field(10..12)?,
        second: field(12..14)?,
    };
    let secs = civil.to_unix_secs().map_err(|why| ParseError::new(why, line))?;
    to_system_time(secs, nanos).ok_or_else(|| ParseError::new("modify= out of range", line))
}

/// `0644`, `04755` (pure-ftpd) or `0o644` (pyftpdlib).
fn parse_octal_mode(value: &str) -> Option<u32> {
    let digits = value.strip_prefix("0o").or_else(|| value.strip_prefix("0O")).unwrap_or(value);
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().map(|mode| mode & 0o7777)
}

// ---------------------------------------------------------------------------------------------
// LIST

/// Parses one LIST line, Unix `ls -l` style or DOS/IIS style.
///
/// Returns `Ok(None)` for `total N`, `.`/`..` and blank lines. Year-less Unix dates are placed
/// in the year that puts them at most a few days after `now`. All times are taken as UTC.
pub fn parse_list_line(line: &str, now: SystemTime) -> Result<Option<RemoteEntry>, ParseError> {
    let line = strip_eol(line);
    if line.trim().is_empty() || is_total_line(line) {
        return Ok(None);
    }
    if line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        parse_dos_line(line)
    } else {
        parse_unix_line(line, now)
    }
}

fn is_total_line(line: &str) -> bool {
    let mut tokens = Tokens::new(line).map(|(_, token)| token);
    matches!(
        (tokens.next(), tokens.next(), tokens.next()),
        (Some(word), Some(count), None) if word.eq_ignore_ascii_case("total") && is_digits(count)
    )
}

/// `-rw-r--r--    1 ftp      ftp          2880 Nov 23 19:37 name`
///
/// The columns before the size vary (link count, owner, group, each may be missing), so the
/// parser looks for the first run `SIZE MONTH DAY TIME-OR-YEAR`; the name begins exactly one
/// space after it, which keeps leading spaces in names.
fn parse_unix_line(line: &str, now: SystemTime) -> Result<Option<RemoteEntry>, ParseError> {
    let mode_field = line.split_once(' ').map_or(line, |(field, _)| field).as_bytes();
    let kind = match mode_field.first() {
        Some(b'd') => EntryKind::Dir,
        Some(b'l') => EntryKind::Symlink,
        // Devices, pipes, sockets, Solaris doors: listed as files, see `mlsd_type`.
        Some(b'-' | b'c' | b'b' | b'p' | b's' | b'D') => EntryKind::File,
        _ => return Err(ParseError::new("not a LIST line (unknown file type)", line)),
    };
    // Ten characters, then at most a couple of ACL / extended-attribute markers.
    let well_formed =
        mode_field.len() >= 10 && mode_field.len() <= 12 && mode_field[10..].iter().all(|b| b"+@.".contains(b));
    if !well_formed {
        return Err(ParseError::new("malformed permission field", line));
    }
    let perm = unix_perm_bits(&mode_field[1..10]);

    let mut window: [(usize, &str); 4] = [(0, ""); 4];
    for (count, token) in Tokens::new(line).enumerate() {
        window.rotate_left(1);
        window[3] = token;
        // The permission field, then at least the four date-and-size columns.
        if count < 4 {
            continue;
        }
        let [(_, size), (_, month), (_, day), (time_at, time)] = window;
        let Some(month) = month_number(month) else {
            continue;
        };
        if !(is_digits(size) && is_digits(day) && day.len() <= 2 && is_time_or_year(time)) {
            continue;
        }
        let size = parse_size(size, line)?;
        let day: u32 = day.parse().map_err(|_| ParseError::new("bad day", line))?;
        let (mtime, mtime_precision) = unix_list_time(month, day, time, now, line)?;
        let after_date = &line[time_at + time.len()..];
        let Some(name) = after_date.strip_prefix(' ') else {
            return Err(ParseError::new("no name after the date", line));
        };
        let (name, link_target) = match (kind, name.split_once(" -> ")) {
            (EntryKind::Symlink, Some((name, target))) => (name, Some(target.to_owned())),
            _ => (name, None),
        };
        if is_dot_entry(name) {
            return Ok(None);
        }
        check_name(name, line)?;
        check_target(link_target.as_deref(), line)?;
        return Ok(Some(RemoteEntry {
            name: name.to_owned(),
            kind,
            size,
            mtime,
            mtime_precision,
            perm,
            link_target: link_target.filter(|t| !t.is_empty()),
        }));
    }
    Err(ParseError::new("no \"SIZE MONTH DAY TIME\" columns", line))
}

/// `rwxr-sr-t` → `0o3755`; `None` if a character is not one `ls` prints there.
fn unix_perm_bits(chars: &[u8]) -> Option<u32> {
    let mut mode = 0;
    for (i, &c) in chars.iter().enumerate() {
        let bit = 0o400 >> i;
        let special = match i {
            2 => 0o4000,
            5 => 0o2000,
            _ => 0o1000,
        };
        mode |= match (i % 3, c) {
            (_, b'-') => 0,
            (0, b'r') | (1, b'w') | (2, b'x') => bit,
            (2, b's') if i < 8 => bit | special,
            (2, b'S') if i < 8 => special,
            (2, b't') if i == 8 => bit | special,
            (2, b'T') if i == 8 => special,
            _ => return None,
        };
    }
    Some(mode)
}

fn month_number(token: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let index = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(token))?;
    u32::try_from(index + 1).ok()
}

/// `19:37`, `19:37:05` or a year (any digits, so that `99999` is an error, not a name).
fn is_time_or_year(token: &str) -> bool {
    is_digits(token) || parse_clock(token).is_some()
}

/// `H:MM` or `HH:MM[:SS]` → (hour, minute, second), unchecked ranges.
fn parse_clock(token: &str) -> Option<(u32, u32, u32)> {
    let mut parts = token.split(':');
    let mut next = |max_len: usize| {
        parts.next().filter(|p| is_digits(p) && p.len() <= max_len).and_then(|p| p.parse::<u32>().ok())
    };
    let hour = next(2)?;
    let minute = next(2)?;
    let second = match parts.next() {
        None => 0,
        Some(s) if is_digits(s) && s.len() <= 2 => s.parse().ok()?,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((hour, minute, second))
}

/// The time of a LIST line and how precise it is in seconds: a day for a date with a year,
/// a minute for a time of day (a second if the server printed seconds).
fn unix_list_time(
    month: u32,
    day: u32,
    time: &str,
    now: SystemTime,
    line: &str,
) -> Result<(SystemTime, u32), ParseError> {
    let (secs, precision) = if is_digits(time) {
        let year = time.parse::<i64>().map_err(|_| ParseError::new("year out of range", line))?;
        let civil = Civil { year, month, day, hour: 0, minute: 0, second: 0 };
        (civil.to_unix_secs().map_err(|why| ParseError::new(why, line))?, 86_400)
    } else {
        let (hour, minute, second) = parse_clock(time).ok_or_else(|| ParseError::new("bad time", line))?;
        let precision = if time.matches(':').count() == 2 { 1 } else { 60 };
        (place_yearless(month, day, hour, minute, second, now).map_err(|why| ParseError::new(why, line))?, precision)
    };
    let mtime = to_system_time(secs, 0).ok_or_else(|| ParseError::new("date out of range", line))?;
    Ok((mtime, precision))
}

/// `ls` leaves the year out for dates in the last six months, so take the latest year that
/// does not put the date more than [`FUTURE_SLACK_SECS`] after `now`: `Dec 31 23:00` seen on
/// 2 January is last year's. A few years further back are tried for `Feb 29`.
fn place_yearless(
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    now: SystemTime,
) -> Result<i64, &'static str> {
    // Check against a leap year first, so `Feb 30` is reported as such, not as "no year fits".
    let probe = Civil { year: 2000, month, day, hour, minute, second };
    probe.to_unix_secs()?;
    let now_secs = unix_secs_of(now);
    let (now_year, _, _) = civil_from_days(now_secs.div_euclid(SECS_PER_DAY));
    let latest = now_secs.saturating_add(FUTURE_SLACK_SECS);
    for year in (now_year - 8..=now_year + 1).rev() {
        let candidate = Civil { year, ..probe };
        if let Ok(secs) = candidate.to_unix_secs()
            && secs <= latest
        {
            return Ok(secs);
        }
    }
    Err("no year places the year-less date near the current time")
}

/// `11-23-26  07:37PM       <DIR>          name` or `... 2880 name` (IIS), also with a
/// four-digit year and a 24-hour clock.
fn parse_dos_line(line: &str) -> Result<Option<RemoteEntry>, ParseError> {
    let mut tokens = Tokens::new(line);
    let mut next = |what: &str| tokens.next().ok_or_else(|| ParseError::new(format!("missing {what}"), line));
    let (_, date) = next("date")?;
    let (year, month, day) = parse_dos_date(date).ok_or_else(|| ParseError::new("bad date", line))?;
    let (_, mut time) = next("time")?;
    let mut meridiem = None;
    for suffix in ["AM", "PM"] {
        let split = time.len().saturating_sub(2);
        if split > 0 && time.get(split..).is_some_and(|end| end.eq_ignore_ascii_case(suffix)) {
            meridiem = Some(suffix);
            time = &time[..split];
        }
    }
    let mut column = next("size")?;
    if meridiem.is_none() {
        for suffix in ["AM", "PM"] {
            if column.1.eq_ignore_ascii_case(suffix) {
                meridiem = Some(suffix);
            }
        }
        if meridiem.is_some() {
            column = next("size")?;
        }
    }
    let (hour, minute, second) = parse_clock(time).ok_or_else(|| ParseError::new("bad time", line))?;
    let hour = match meridiem {
        None => hour,
        Some(_) if !(1..=12).contains(&hour) => {
            return Err(ParseError::new("hour out of range", line));
        }
        Some("AM") => hour % 12,
        Some(_) => hour % 12 + 12,
    };
    let civil = Civil { year, month, day, hour, minute, second };
    let secs = civil.to_unix_secs().map_err(|why| ParseError::new(why, line))?;
    let mtime = to_system_time(secs, 0).ok_or_else(|| ParseError::new("date out of range", line))?;

    let (column_at, column) = column;
    let after = &line[column_at + column.len()..];
    let (kind, size, name) = if column.eq_ignore_ascii_case("<DIR>") {
        // IIS pads `<DIR>` to a fixed width, so a directory name's own leading spaces are
        // indistinguishable from the padding and are lost.
        (EntryKind::Dir, 0, after.trim_start_matches(' '))
    } else if is_digits(column) {
        let Some(name) = after.strip_prefix(' ') else {
            return Err(ParseError::new("no name after the size", line));
        };
        (EntryKind::File, parse_size(column, line)?, name)
    } else {
        return Err(ParseError::new("neither <DIR> nor a size", line));
    };
    if is_dot_entry(name) {
        return Ok(None);
    }
    check_name(name, line)?;
    let mtime_precision = if time.matches(':').count() == 2 { 1 } else { 60 };
    Ok(Some(RemoteEntry { name: name.to_owned(), kind, size, mtime, mtime_precision, perm: None, link_target: None }))
}

/// `MM-DD-YY`, `MM-DD-YYYY` or `YYYY-MM-DD` → (year, month, day), unchecked ranges.
fn parse_dos_date(token: &str) -> Option<(i64, u32, u32)> {
    let mut parts = token.split('-');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ![a, b, c].iter().all(|p| is_digits(p)) {
        return None;
    }
    match (a.len(), b.len(), c.len()) {
        (2, 2, 2) => {
            let yy: i64 = c.parse().ok()?;
            // IIS's two-digit years: the usual POSIX pivot.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            Some((year, a.parse().ok()?, b.parse().ok()?))
        }
        (2, 2, 4) => Some((c.parse().ok()?, a.parse().ok()?, b.parse().ok()?)),
        (4, 2, 2) => Some((a.parse().ok()?, b.parse().ok()?, c.parse().ok()?)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// Space-separated tokens with their byte offsets. Only ' ' separates: listings use spaces
/// and a tab in a name must stay part of it.
struct Tokens<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Tokens { text, pos: 0 }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.text.get(self.pos..)?;
        let start = self.pos + (rest.len() - rest.trim_start_matches(' ').len());
        let tail = self.text.get(start..)?;
        if tail.is_empty() {
            self.pos = self.text.len();
            return None;
        }
        let len = tail.find(' ').unwrap_or(tail.len());
        self.pos = start + len;
        Some((start, &tail[..len]))
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_size(value: &str, line: &str) -> Result<u64, ParseError> {
    if !is_digits(value) {
        return Err(ParseError::new("size is not a number", line));
    }
    value.parse().map_err(|_| ParseError::new("size does not fit in 64 bits", line))
}

/// A UTC calendar date and time, fields as printed (unchecked until converted).
#[derive(Debug, Clone, Copy)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    /// Seconds since the Unix epoch, after checking every field's range. A leap second (`:60`)
    /// is accepted and lands on the next minute's first second.
    fn to_unix_secs(self) -> Result<i64, &'static str> {
        if !(1..=9999).contains(&self.year) {
            return Err("year out of range");
        }
        if !(1..=12).contains(&self.month) {
            return Err("month out of range");
        }
        if self.day < 1 || self.day > days_in_month(self.year, self.month) {
            return Err("day out of range");
        }
        if self.hour > 23 || self.minute > 59 || self.second > 60 {
            return Err("time of day out of range");
        }
        let days = days_from_civil(self.year, self.month, self.day);
        Ok(days * SECS_PER_DAY + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second))
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`):
/// counts in 400-year eras that start on 1 March, so the leap day is the last day of a year.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // In range by construction: month 1..=12, day 1..=31.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// Signed seconds since the epoch, saturating for times no listing can be compared with.
fn unix_secs_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn to_system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }?;
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `LIST` from vsftpd 3.0.3 on this machine (anonymous, so owner and group are numeric),
    /// captured 2026-11-25 13:38 UTC.
    const VSFTPD_LIST: &[&str] = &[
        "-rw-r--r--    1 0        0               0 Nov 25 13:38  leading space",
        "lrwxrwxrwx    1 0        0              11 Nov 25 13:38 a -> b -> two  spaces",
        "prw-r--r--    1 0        0               0 Nov 25 13:38 fifo",
        "lrwxrwxrwx    1 0        0               9 Nov 25 13:38 link_to_plain -> plain.txt",
        "-rw-r--r--    1 0        0               0 Dec 31  2025 newyear.fits",
        "-rwsr-xr-x    1 0        0               0 Jan 05  2023 old.fits",
        "-rw-r--r--    1 0        0               0 Nov 25 13:38 pct%20*star",
        "-rw-r--r--    1 0        0            2880 Nov 25 13:38 plain.txt",
        "-rw-r--r--    1 0        0               0 Nov 25 13:38 semi;colon; x",
        "-rw-r--r--    1 0        0        5000000000 Nov 25 13:38 sparse.bin",
        "drwxr-xr-x    2 0        0            4096 Nov 25 13:38 subdir",
        "-rw-r--r--    1 0        0               0 Nov 25 13:38 trailing space ",
        "-rw-r--r--    1 0        0               0 Nov 25 13:38 two  spaces",
        "-rw-r--r--    1 0        0               0 Nov 25 13:38 ünïcødé ☃.fits",
    ];

    /// The head of vsftpd's `LIST -a` of the same directory.
    const VSFTPD_LIST_A: &[&str] = &[
        "-rw-r--r--    1 0        0               0 Nov 25 13:38  leading space",
        "drwxr-xr-x    3 0        0            4096 Nov 25 13:38 .",
        "drwxr-xr-x    3 0        0            4096 Nov 25 13:38 ..",
    ];

    /// `LIST` from pure-ftpd 1.0.50 (`-H`, anonymous) of the same directory.
    const PUREFTPD_LIST: &[&str] = &[
        "-rw-r--r--    1 0          0                   0 Nov 25 13:38  leading space",
        "lrwxrwxrwx    1 0          0                  11 Nov 25 13:38 a -> b -> two  spaces",
        "lrwxrwxrwx    1 0          0                   9 Nov 25 13:38 link_to_plain -> plain.txt",
        "-rw-r--r--    1 0          0                   0 Dec 31  2025 newyear.fits",
        "-rwsr-xr-x    1 0          0                   0 Jan  5  2023 old.fits",
        "-rw-r--r--    1 0          0                2880 Nov 25 13:38 plain.txt",
        "-rw-r--r--    1 0          0          5000000000 Nov 25 13:38 sparse.bin",
        "drwxr-xr-x    2 0          0                4096 Nov 25 13:38 subdir",
        "-rw-r--r--    1 0          0                   0 Nov 25 13:38 trailing space ",
    ];

    /// `LIST` from pyftpdlib 2.2.0 of the same directory (named owner and group).
    const PYFTPDLIB_LIST: &[&str] = &[
        "-rw-r--r--   1 root     root            0 Nov 25 13:38  leading space",
        "lrwxrwxrwx   1 root     root           11 Nov 25 13:38 a -> b -> two  spaces",
        "-rwsr-xr-x   1 root     root            0 Jan 05  2023 old.fits",
        "-rw-r--r--   1 root     root         2880 Nov 25 13:38 plain.txt",
        "-rw-r--r--   1 root     root     5000000000 Nov 25 13:38 sparse.bin",
        "drwxr-xr-x   2 root     root         4096 Nov 25 13:38 subdir",
    ];

    /// `MLSD` from pure-ftpd 1.0.50 of the same directory.
    const PUREFTPD_MLSD: &[&str] = &[
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c115;  leading space",
        "type=file;size=0;modify=20230105120000;UNIX.mode=04755;unique=fe00g98c11e; old.fits",
        "type=cdir;sizd=4096;modify=20261125133824;UNIX.mode=0755;unique=fe00g98c111; .",
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c116; trailing space ",
        "type=unknown;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c11d; fifo",
        "type=OS.unix=slink:plain.txt;size=9;modify=20261125133824;UNIX.mode=0777;unique=fe00g98c11b; link_to_plain",
        "type=file;size=5000000000;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c120; sparse.bin",
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c119; pct%20*star",
        "type=dir;sizd=4096;modify=20261125133824;UNIX.mode=0755;unique=fe00g98c112; subdir",
        "type=pdir;sizd=4096;modify=20261125133824;UNIX.mode=0755;unique=fe00g98c111; ..",
        "type=OS.unix=slink:two  spaces;size=11;modify=20261125133824;UNIX.mode=0777;unique=fe00g98c11c; a -> b",
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c117; two  spaces",
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c11a; ünïcødé ☃.fits",
        "type=file;size=0;modify=20251231230000;UNIX.mode=0644;unique=fe00g98c11f; newyear.fits",
        "type=file;size=2880;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c114; plain.txt",
        "type=file;size=0;modify=20261125133824;UNIX.mode=0644;unique=fe00g98c118; semi;colon; x",
    ];

    /// `MLSD` from pyftpdlib 2.2.0: default facts (it follows symlinks), then after
    /// `OPTS MLST type;size;modify;perm;unix.mode;unix.uid;unix.gid;unique;`.
    const PYFTPDLIB_MLSD: &[&str] = &[
        "modify=20261125133824;perm=r;size=0;type=file;unique=fe00g98c115;  leading space",
        "modify=20261125133824;perm=r;size=2880;type=file;unique=fe00g98c114; link_to_plain",
        "modify=20261125133824;perm=el;size=4096;type=dir;unique=fe00g98c112; subdir",
        "modify=20261125133824;perm=r;size=0;type=file;unique=fe00g98c118; semi;colon; x",
        "modify=20230105120000;perm=r;size=0;type=file;unique=fe00g98c11e;unix.gid=0;unix.mode=0o755;unix.uid=0; old.fits",
        "modify=20261125133824;perm=el;size=4096;type=dir;unique=fe00g98c112;unix.gid=0;unix.mode=0o755;unix.uid=0; subdir2",
    ];

    /// IIS-style `LIST` (the format of Microsoft FTP Service, not captured here).
    const IIS_LIST: &[&str] = &[
        "11-23-26  07:37PM       <DIR>          aspnet_client",
        "11-23-26  07:37PM                 2880 plain.txt",
        "01-05-23  12:00AM           5000000000 big file.bin",
        "11-23-2026  19:37       <DIR>          four digit year",
    ];

    fn utc(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> SystemTime {
        let civil = Civil { year, month, day, hour, minute, second };
        to_system_time(civil.to_unix_secs().expect("valid test date"), 0).expect("in range")
    }

    /// When the fixtures were captured.
    fn capture_time() -> SystemTime {
        utc(2026, 11, 25, 13, 40, 0)
    }

    fn list(line: &str) -> RemoteEntry {
        parse_list_line(line, capture_time())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no entry from {line:?}"))
    }

    fn mlsd(line: &str) -> RemoteEntry {
        parse_mlsd_line(line).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no entry from {line:?}"))
    }

    fn list_err(line: &str) -> ParseError {
        match parse_list_line(line, capture_time()) {
            Err(e) => e,
            Ok(other) => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn mlsd_err(line: &str) -> ParseError {
        match parse_mlsd_line(line) {
            Err(e) => e,
            Ok(other) => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn owned(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    fn names(listing: &Listing) -> Vec<&str> {
        listing.entries.iter().map(|e| e.name.as_str()).collect()
    }

    fn assert_valid_name(name: &str) {
        assert!(!name.is_empty(), "empty name");
        assert!(name != "." && name != "..", "dot entry {name:?}");
        assert!(!name.contains(['/', '\0', '\r', '\n']), "forbidden character in {name:?}");
        assert!(name.len() <= NAME_MAX, "{} bytes: longer than NAME_MAX", name.len());
    }

    // --- calendar arithmetic --------------------------------------------------------------

    #[test]
    fn days_from_civil_matches_known_day_numbers() {
        // Reference values from Python's datetime.date arithmetic.
        for (year, month, day, expected) in [
            (1970, 1, 1, 0),
            (1969, 12, 31, -1),
            (2000, 2, 29, 11_016),
            (2000, 3, 1, 11_017),
            (2026, 11, 25, 20_782),
            (1600, 2, 29, -135_081),
            (1, 1, 1, -719_162),
            (9999, 12, 31, 2_932_896),
        ] {
            assert_eq!(days_from_civil(year, month, day), expected, "{year}-{month}-{day}");
            assert_eq!(civil_from_days(expected), (year, month, day));
        }
    }

    #[test]
    fn civil_time_converts_to_known_unix_seconds() {
        let secs =
            |y, mo, d, h, mi, s| Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: s }.to_unix_secs();
        assert_eq!(secs(2026, 11, 25, 13, 38, 24), Ok(1_795_613_904));
        assert_eq!(secs(2023, 1, 5, 12, 0, 0), Ok(1_672_920_000));
        assert_eq!(secs(2025, 12, 31, 23, 0, 0), Ok(1_767_222_000));
        // A leap second is the next minute's first second, not an error.
        assert_eq!(secs(2016, 12, 31, 23, 59, 60), secs(2017, 1, 1, 0, 0, 0));
    }

    #[test]
    fn civil_time_rejects_fields_out_of_range() {
        for (y, mo, d, h, mi, s) in [
            (2023, 2, 29, 0, 0, 0),
            (2024, 2, 30, 0, 0, 0),
            (1900, 2, 29, 0, 0, 0),
            (2024, 4, 31, 0, 0, 0),
            (2024, 13, 1, 0, 0, 0),
            (2024, 0, 1, 0, 0, 0),
            (2024, 1, 0, 0, 0, 0),
            (2024, 1, 1, 24, 0, 0),
            (2024, 1, 1, 0, 60, 0),
            (2024, 1, 1, 0, 0, 61),
            (0, 1, 1, 0, 0, 0),
            (10_000, 1, 1, 0, 0, 0),
            (-5, 1, 1, 0, 0, 0),
        ] {
            let civil = Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: s };
            assert!(civil.to_unix_secs().is_err(), "{civil:?} accepted");
        }
        assert!(Civil { year: 2000, month: 2, day: 29, hour: 0, minute: 0, second: 0 }.to_unix_secs().is_ok());
    }

    #[test]
    fn times_before_the_epoch_are_representable() {
        assert_eq!(utc(1969, 12, 31, 23, 59, 59), UNIX_EPOCH - Duration::from_secs(1));
    }

    // --- MLSD -----------------------------------------------------------------------------

    #[test]
    fn pure_ftpd_mlsd_file_gives_size_mode_and_utc_mtime() {
        let entry = mlsd(PUREFTPD_MLSD[14]);
        assert_eq!(
            entry,
            RemoteEntry {
                name: "plain.txt".into(),
                kind: EntryKind::File,
                size: 2880,
                mtime: utc(2026, 11, 25, 13, 38, 24),
                mtime_precision: 1,
                perm: Some(0o644),
                link_target: None,
            }
        );
    }

    #[test]
    fn pure_ftpd_mlsd_keeps_setuid_bit_and_sizes_beyond_4_gib() {
        assert_eq!(mlsd(PUREFTPD_MLSD[1]).perm, Some(0o4755));
        assert_eq!(mlsd(PUREFTPD_MLSD[1]).mtime, utc(2023, 1, 5, 12, 0, 0));
        assert_eq!(mlsd(PUREFTPD_MLSD[6]).size, 5_000_000_000);
    }

    #[test]
    fn mlsd_directory_takes_its_size_from_sizd() {
        let entry = mlsd(PUREFTPD_MLSD[8]);
        assert_eq!(entry.kind, EntryKind::Dir);
        assert_eq!(entry.size, 4096);
        assert_eq!(entry.perm, Some(0o755));
    }

    #[test]
    fn mlsd_current_and_parent_dir_lines_are_not_entries() {
        assert_eq!(parse_mlsd_line(PUREFTPD_MLSD[2]), Ok(None));
        assert_eq!(parse_mlsd_line(PUREFTPD_MLSD[9]), Ok(None));
        // Some servers call them plain dirs.
        assert_eq!(parse_mlsd_line("type=dir;modify=20261125133824; .."), Ok(None));
    }

    #[test]
    fn mlsd_slink_type_is_a_symlink_with_its_target() {
        let entry = mlsd(PUREFTPD_MLSD[5]);
        assert_eq!(entry.kind, EntryKind::Symlink);
        assert_eq!(entry.name, "link_to_plain");
        assert_eq!(entry.link_target.as_deref(), Some("plain.txt"));
        let spaced = mlsd(PUREFTPD_MLSD[10]);
        assert_eq!(spaced.name, "a -> b");
        assert_eq!(spaced.link_target.as_deref(), Some("two  spaces"));
    }

    #[test]
    fn mlsd_symlink_type_without_target_is_a_symlink() {
        let entry = mlsd("type=OS.unix=symlink;size=9;modify=20261125133824; link");
        assert_eq!(entry.kind, EntryKind::Symlink);
        assert_eq!(entry.link_target, None);
    }

    #[test]
    fn mlsd_slink_target_containing_semicolons_is_kept_whole() {
        let entry = mlsd("type=OS.unix=slink:a;b;c;size=5;modify=20261125133824; link");
        assert_eq!(entry.link_target.as_deref(), Some("a;b;c"));
        assert_eq!(entry.size, 5);
        assert_eq!(entry.name, "link");
    }

    #[test]
    fn mlsd_other_types_are_listed_as_files() {
        assert_eq!(mlsd(PUREFTPD_MLSD[4]).kind, EntryKind::File);
        assert_eq!(mlsd("type=OS.unix=blkdev;size=0; sda").kind, EntryKind::File);
    }

    #[test]
    fn mlsd_name_is_everything_after_the_first_semicolon_space() {
        assert_eq!(mlsd(PUREFTPD_MLSD[0]).name, " leading space");
        assert_eq!(mlsd(PUREFTPD_MLSD[3]).name, "trailing space ");
        assert_eq!(mlsd(PUREFTPD_MLSD[7]).name, "pct%20*star");
        assert_eq!(mlsd(PUREFTPD_MLSD[11]).name, "two  spaces");
        assert_eq!(mlsd(PUREFTPD_MLSD[12]).name, "ünïcødé ☃.fits");
        assert_eq!(mlsd(PUREFTPD_MLSD[15]).name, "semi;colon; x");
        assert_eq!(mlsd(PYFTPDLIB_MLSD[3]).name, "semi;colon; x");
        assert_eq!(mlsd("type=file;size=1; a=b;c=d").name, "a=b;c=d");
    }

    #[test]
    fn pyftpdlib_mlsd_without_unix_mode_has_no_permission_bits() {
        let entry = mlsd(PYFTPDLIB_MLSD[0]);
        assert_eq!(entry.name, " leading space");
        assert_eq!(entry.perm, None);
        assert_eq!(entry.mtime, utc(2026, 11, 25, 13, 38, 24));
        assert_eq!(mlsd(PYFTPDLIB_MLSD[2]).kind, EntryKind::Dir);
        assert_eq!(mlsd(PYFTPDLIB_MLSD[2]).size, 4096);
    }

    #[test]
    fn pyftpdlib_python_style_octal_mode_is_understood() {
        assert_eq!(mlsd(PYFTPDLIB_MLSD[4]).perm, Some(0o755));
        assert_eq!(mlsd(PYFTPDLIB_MLSD[5]).perm, Some(0o755));
    }

    #[test]
    fn mlsd_unreadable_mode_costs_only_the_permission_bits() {
        let entry = mlsd("type=file;size=3;UNIX.mode=rw-r--r--; x");
        assert_eq!(entry.perm, None);
        assert_eq!(entry.size, 3);
    }

    #[test]
    fn mlsd_fact_names_and_type_values_are_case_insensitive() {
        let entry = mlsd("Type=DIR;Sizd=512;Modify=20261123193700;Unix.Mode=0700; Data");
        assert_eq!(entry.kind, EntryKind::Dir);
        assert_eq!(entry.size, 512);
        assert_eq!(entry.mtime, utc(2026, 11, 23, 19, 37, 0));
        assert_eq!(entry.perm, Some(0o700));
        assert_eq!(parse_mlsd_line("TYPE=CDir; ."), Ok(None));
    }

    #[test]
    fn mlsd_unknown_facts_are_ignored() {
        let entry = mlsd("type=file;size=7;x.vendor=whatever=else;unique=801U1;perm=adfrw; f");
        assert_eq!(entry.size, 7);
        assert_eq!(entry.name, "f");
    }

    #[test]
    fn mlsd_fractional_modify_keeps_the_fraction() {
        let entry = mlsd("type=file;size=1;modify=20261123193700.123; f");
        assert_eq!(entry.mtime, utc(2026, 11, 23, 19, 37, 0) + Duration::from_millis(123));
        let long = mlsd("type=file;size=1;modify=20261123193700.1234567891234; f");
        assert_eq!(long.mtime, utc(2026, 11, 23, 19, 37, 0) + Duration::from_nanos(123_456_789));
    }

    #[test]
    fn mlsd_without_modify_or_size_gets_epoch_and_zero() {
        let entry = mlsd("type=file; f");
        assert_eq!(entry.mtime, UNIX_EPOCH);
        assert_eq!(entry.size, 0);
        assert_eq!(entry.kind, EntryKind::File);
    }

    #[test]
    fn mlsd_line_without_facts_is_just_a_name() {
        let entry = mlsd(" name with spaces");
        assert_eq!(entry.name, "name with spaces");
        assert_eq!(entry.kind, EntryKind::File);
    }

    #[test]
    fn mlsd_line_terminator_is_not_part_of_the_name() {
        assert_eq!(mlsd("type=file;size=1; name \r\n").name, "name ");
    }

    #[test]
    fn mlsd_largest_size_is_accepted_and_one_more_is_an_error() {
        assert_eq!(mlsd("type=file;size=18446744073709551615; f").size, u64::MAX);
        let error = mlsd_err("type=file;size=18446744073709551616; f");
        assert!(error.to_string().contains("64 bits"), "{error}");
    }

    #[test]
    fn mlsd_malformed_lines_are_errors() {
        for line in [
            "type=file;size=1",
            "type=file;garbage; x",
            "type=file;size=-1; x",
            "type=file;size=+1; x",
            "type=file;size=; x",
            "type=file;modify=2026112319370; x",
            "type=file;modify=20261123193700.; x",
            "type=file;modify=2026112319370x; x",
            "type=file;modify=20260230120000; x",
            "type=file;modify=20261123250000; x",
            "type=file;modify=00001123120000; x",
            "type=file;modify=20261323120000; x",
            "550 No such directory",
        ] {
            mlsd_err(line);
        }
    }

    #[test]
    fn mlsd_names_that_are_not_path_components_are_errors() {
        for line in [
            "type=file;size=1; ",
            "type=file;size=1; a/b",
            "type=file;size=1; /",
            "type=file;size=1; a\0b",
            "type=file;size=1; a\rb",
            "type=file;size=1; a\nb",
        ] {
            mlsd_err(line);
        }
    }

    #[test]
    fn names_up_to_255_bytes_are_entries_and_longer_ones_are_errors_that_quote_them() {
        let longest = "é".repeat(127) + "x";
        assert_eq!(longest.len(), 255);
        assert_eq!(mlsd(&format!("type=file;size=1; {longest}")).name, longest);
        assert_eq!(list(&format!("-rw-r--r--    1 0 0 1 Nov 25 13:38 {longest}")).name, longest);
        assert_eq!(list(&format!("11-25-26  01:38PM      1 {longest}")).name, longest);
        let over = "n".repeat(256);
        for err in [
            mlsd_err(&format!("type=file;size=1; {over}")),
            list_err(&format!("-rw-r--r--    1 0 0 1 Nov 25 13:38 {over}")),
            list_err(&format!("11-25-26  01:38PM      1 {over}")),
        ] {
            let text = err.to_string();
            assert!(text.contains("256 bytes") && text.contains("nnnnnnnn"), "says why and which: {text}");
        }
    }

    #[test]
    fn symlinks_whose_target_readlink_could_not_return_are_errors() {
        let longest = "t".repeat(4095);
        assert_eq!(list(&format!("lrwxrwxrwx 1 0 0 1 Nov 25 13:38 l -> {longest}")).link_target, Some(longest));
        list_err(&format!("lrwxrwxrwx 1 0 0 1 Nov 25 13:38 l -> {}", "t".repeat(4096)));
        mlsd_err(&format!("type=OS.unix=slink:{};size=1; l", "t".repeat(4096)));
        list_err("lrwxrwxrwx 1 0 0 1 Nov 25 13:38 l -> a\0b");
        mlsd_err("type=OS.unix=slink:a\0b; l");
    }

    #[test]
    fn a_listing_keeps_the_entries_beside_an_over_long_name() {
        let lines =
            owned(&["type=file;size=1; a", &format!("type=file;size=1; {}", "n".repeat(300)), "type=file;size=2; b"]);
        let listing = parse_listing(&lines, Dialect::Mlsd, capture_time());
        assert_eq!(names(&listing), ["a", "b"]);
        assert_eq!(listing.warnings.len(), 1, "{:?}", listing.warnings);
    }

    #[test]
    fn blank_lines_are_not_entries() {
        assert_eq!(parse_mlsd_line(""), Ok(None));
        assert_eq!(parse_mlsd_line("  \r\n"), Ok(None));
        assert_eq!(parse_list_line("", capture_time()), Ok(None));
    }

    #[test]
    fn parse_error_says_what_and_quotes_a_truncated_line() {
        let long_name = "x".repeat(500);
        let line = format!("type=file;size=1;modify=bogus; {long_name}");
        let error = mlsd_err(&line);
        let text = error.to_string();
        assert!(text.contains("modify="), "{text}");
        assert!(text.contains("type=file;size=1"), "{text}");
        assert!(text.contains('…'), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn parse_error_escapes_control_characters() {
        let error = mlsd_err("type=file; evil\nname");
        assert!(!error.to_string().contains('\n'), "{error}");
    }

    // --- Unix LIST ------------------------------------------------------------------------

    #[test]
    fn vsftpd_file_gives_size_mode_and_minute_mtime_in_this_year() {
        assert_eq!(
            list(VSFTPD_LIST[7]),
            RemoteEntry {
                name: "plain.txt".into(),
                kind: EntryKind::File,
                size: 2880,
                mtime: utc(2026, 11, 25, 13, 38, 0),
                mtime_precision: 60,
                perm: Some(0o644),
                link_target: None,
            }
        );
    }

    #[test]
    fn vsftpd_old_file_has_its_year_and_setuid_bit() {
        let entry = list(VSFTPD_LIST[5]);
        assert_eq!(entry.name, "old.fits");
        assert_eq!(entry.mtime, utc(2023, 1, 5, 0, 0, 0));
        assert_eq!(entry.perm, Some(0o4755));
        assert_eq!(list(VSFTPD_LIST[4]).mtime, utc(2025, 12, 31, 0, 0, 0));
    }

    #[test]
    fn list_names_keep_leading_inner_and_trailing_spaces() {
        for lines in [VSFTPD_LIST, PUREFTPD_LIST, PYFTPDLIB_LIST] {
            assert_eq!(list(lines[0]).name, " leading space");
        }
        assert_eq!(list(VSFTPD_LIST[11]).name, "trailing space ");
        assert_eq!(list(PUREFTPD_LIST[8]).name, "trailing space ");
        assert_eq!(list(VSFTPD_LIST[12]).name, "two  spaces");
        assert_eq!(list(VSFTPD_LIST[8]).name, "semi;colon; x");
        assert_eq!(list(VSFTPD_LIST[6]).name, "pct%20*star");
        assert_eq!(list(VSFTPD_LIST[13]).name, "ünïcødé ☃.fits");
    }

    #[test]
    fn list_directory_and_large_size() {
        let dir = list(VSFTPD_LIST[10]);
        assert_eq!((dir.kind, dir.size, dir.perm), (EntryKind::Dir, 4096, Some(0o755)));
        assert_eq!(list(VSFTPD_LIST[9]).size, 5_000_000_000);
        assert_eq!(list(PUREFTPD_LIST[6]).size, 5_000_000_000);
    }

    #[test]
    fn list_symlink_splits_at_the_first_arrow() {
        let entry = list(VSFTPD_LIST[3]);
        assert_eq!(entry.kind, EntryKind::Symlink);
        assert_eq!(entry.name, "link_to_plain");
        assert_eq!(entry.link_target.as_deref(), Some("plain.txt"));
        // The real link is named "a -> b"; LIST cannot say so, and the first arrow wins.
        let ambiguous = list(VSFTPD_LIST[1]);
        assert_eq!(ambiguous.name, "a");
        assert_eq!(ambiguous.link_target.as_deref(), Some("b -> two  spaces"));
    }

    #[test]
    fn list_arrow_in_a_plain_file_name_is_part_of_the_name() {
        let entry = list("-rw-r--r--    1 0        0               0 Nov 25 13:38 a -> b");
        assert_eq!(entry.name, "a -> b");
        assert_eq!(entry.link_target, None);
    }

    #[test]
    fn pure_ftpd_space_padded_day_is_understood() {
        assert_eq!(list(PUREFTPD_LIST[4]).mtime, utc(2023, 1, 5, 0, 0, 0));
        assert_eq!(list(PUREFTPD_LIST[4]).name, "old.fits");
    }

    #[test]
    fn all_captured_list_lines_parse() {
        for line in VSFTPD_LIST.iter().chain(PUREFTPD_LIST).chain(PYFTPDLIB_LIST) {
            assert_valid_name(&list(line).name);
        }
    }

    #[test]
    fn pipes_devices_and_sockets_are_listed_as_files() {
        assert_eq!(list(VSFTPD_LIST[2]).kind, EntryKind::File);
        let null = list("crw-rw-rw-   1 root     root       1,   3 Nov 23 19:37 null");
        assert_eq!((null.kind, null.name.as_str()), (EntryKind::File, "null"));
        for line in [
            "brw-rw----   1 root     disk       8,   0 Nov 23 19:37 sda",
            "srwxrwxrwx   1 root     root            0 Nov 23 19:37 sock",
        ] {
            assert_eq!(list(line).kind, EntryKind::File);
        }
    }

    #[test]
    fn acl_and_xattr_markers_after_the_permissions_are_accepted() {
        for (line, perm) in [
            ("-rw-r--r--+   1 ftp      ftp          10 Nov 23 19:37 acl", 0o644),
            ("drwxr-xr-x@   3 user     staff        96 Nov 23 19:37 xattr", 0o755),
            ("-rw-r--r--.   1 root     root         10 Nov 23 19:37 selinux", 0o644),
        ] {
            assert_eq!(list(line).perm, Some(perm), "{line}");
        }
    }

    #[test]
    fn special_permission_bits_are_decoded() {
        for (mode, bits) in [
            ("drwxrwxrwt", 0o1777),
            ("drwxrwxrwT", 0o1776),
            ("-rwxr-sr-x", 0o2755),
            ("-rwxr-Sr-x", 0o2745),
            ("-rwSr--r--", 0o4644),
            ("----------", 0),
        ] {
            let line = format!("{mode}   1 0 0 1 Nov 23 19:37 f");
            assert_eq!(list(&line).perm, Some(bits), "{mode}");
        }
        assert_eq!(list("-rwxrwxrwz   1 0 0 1 Nov 23 19:37 f").perm, None);
    }

    #[test]
    fn list_owner_and_group_may_be_named_numeric_or_missing() {
        for line in [
            "-rw-r--r--   1 ftp      ftp          2880 Nov 23 19:37 name",
            "-rw-r--r--   1 1000     1000         2880 Nov 23 19:37 name",
            "-rw-r--r--   1 ftp          2880 Nov 23 19:37 name",
            "-rw-r--r--   1 owner with space group 2880 Nov 23 19:37 name",
        ] {
            let entry = list(line);
            assert_eq!((entry.name.as_str(), entry.size), ("name", 2880), "{line}");
            assert_eq!(entry.mtime, utc(2026, 11, 23, 19, 37, 0));
        }
    }

    #[test]
    fn list_date_inside_a_name_does_not_confuse_the_columns() {
        let entry = list("-rw-r--r--   1 ftp ftp 5 Nov 23 19:37 log 12 Jan 01 10:00 copy");
        assert_eq!(entry.name, "log 12 Jan 01 10:00 copy");
        assert_eq!(entry.size, 5);
    }

    #[test]
    fn total_and_dot_lines_are_not_entries() {
        assert_eq!(parse_list_line("total 123", capture_time()), Ok(None));
        assert_eq!(parse_list_line("total 0\r\n", capture_time()), Ok(None));
        assert_eq!(parse_list_line(VSFTPD_LIST_A[1], capture_time()), Ok(None));
        assert_eq!(parse_list_line(VSFTPD_LIST_A[2], capture_time()), Ok(None));
    }

    #[test]
    fn yearless_date_late_in_december_seen_in_january_is_last_year() {
        let now = utc(2027, 1, 2, 10, 0, 0);
        let line = "-rw-r--r--   1 ftp ftp 1 Dec 31 23:00 f";
        let entry = parse_list_line(line, now).ok().flatten().map(|e| e.mtime);
        assert_eq!(entry, Some(utc(2026, 12, 31, 23, 0, 0)));
    }

    #[test]
    fn yearless_date_in_january_seen_in_january_is_this_year() {
        let now = utc(2027, 1, 2, 10, 0, 0);
        let line = "-rw-r--r--   1 ftp ftp 1 Jan 01 00:30 f";
        let entry = parse_list_line(line, now).ok().flatten().map(|e| e.mtime);
        assert_eq!(entry, Some(utc(2027, 1, 1, 0, 30, 0)));
    }

    #[test]
    fn yearless_date_slightly_ahead_of_now_stays_in_this_year() {
        // Server clock ahead, or local time east of UTC.
        let entry = list("-rw-r--r--   1 ftp ftp 1 Nov 27 09:00 f");
        assert_eq!(entry.mtime, utc(2026, 11, 27, 9, 0, 0));
        // A week ahead is more likely last year's file.
        let entry = list("-rw-r--r--   1 ftp ftp 1 Dec 02 09:00 f");
        assert_eq!(entry.mtime, utc(2025, 12, 2, 9, 0, 0));
    }

    #[test]
    fn yearless_new_year_edge_seen_just_after_midnight() {
        let now = utc(2027, 1, 1, 0, 5, 0);
        let line = "-rw-r--r--   1 ftp ftp 1 Dec 31 23:59 f";
        let entry = parse_list_line(line, now).ok().flatten().map(|e| e.mtime);
        assert_eq!(entry, Some(utc(2026, 12, 31, 23, 59, 0)));
    }

    #[test]
    fn yearless_february_29_goes_back_to_a_leap_year() {
        let now = utc(2027, 3, 1, 0, 0, 0);
        let line = "-rw-r--r--   1 ftp ftp 1 Feb 29 12:00 f";
        let entry = parse_list_line(line, now).ok().flatten().map(|e| e.mtime);
        assert_eq!(entry, Some(utc(2024, 2, 29, 12, 0, 0)));
    }

    #[test]
    fn list_dates_out_of_range_are_errors() {
        for line in [
            "-rw-r--r--   1 ftp ftp 1 Feb 30 12:00 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 25:00 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 12:60 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 00 12:00 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23     0 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 99999 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 99999999999999999999999 f",
            "-rw-r--r--   1 ftp ftp 1 Feb 29  2023 f",
        ] {
            list_err(line);
        }
    }

    #[test]
    fn list_size_beyond_u64_is_an_error() {
        let error = list_err("-rw-r--r--   1 ftp ftp 18446744073709551616 Nov 23 19:37 f");
        assert!(error.to_string().contains("64 bits"), "{error}");
        assert_eq!(list("-rw-r--r--   1 ftp ftp 18446744073709551615 Nov 23 19:37 f").size, u64::MAX);
    }

    #[test]
    fn list_lines_that_are_not_listings_are_errors() {
        for line in [
            "hello world",
            "226 Transfer complete.",
            "xrw-r--r--   1 ftp ftp 1 Nov 23 19:37 f",
            "-rw-r--   1 ftp ftp 1 Nov 23 19:37 f",
            "-rw-r--r--!!   1 ftp ftp 1 Nov 23 19:37 f",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 19:37",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 19:37 ",
            "-rw-r--r--   1 ftp ftp 1 Nov 23 19:37 dir/file",
            "-rw-r--r--   1 ftp ftp many Nov 23 19:37 f",
        ] {
            list_err(line);
        }
    }

    #[test]
    fn list_line_terminator_is_not_part_of_the_name() {
        assert_eq!(list("-rw-r--r-- 1 0 0 1 Nov 23 19:37 name \r\n").name, "name ");
    }

    // --- DOS / IIS LIST -------------------------------------------------------------------

    #[test]
    fn iis_directory_line() {
        let entry = list(IIS_LIST[0]);
        assert_eq!(
            entry,
            RemoteEntry {
                name: "aspnet_client".into(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: utc(2026, 11, 23, 19, 37, 0),
                mtime_precision: 60,
                perm: None,
                link_target: None,
            }
        );
    }

    #[test]
    fn iis_file_lines() {
        let entry = list(IIS_LIST[1]);
        assert_eq!((entry.kind, entry.size), (EntryKind::File, 2880));
        assert_eq!(entry.name, "plain.txt");
        let big = list(IIS_LIST[2]);
        assert_eq!(big.name, "big file.bin");
        assert_eq!(big.size, 5_000_000_000);
        assert_eq!(big.mtime, utc(2023, 1, 5, 0, 0, 0));
    }

    #[test]
    fn dos_four_digit_year_and_24_hour_clock() {
        let entry = list(IIS_LIST[3]);
        assert_eq!(entry.name, "four digit year");
        assert_eq!(entry.mtime, utc(2026, 11, 23, 19, 37, 0));
        let iso = list("2026-11-23  19:37                 10 iso");
        assert_eq!(iso.mtime, utc(2026, 11, 23, 19, 37, 0));
    }

    #[test]
    fn dos_twelve_oclock_and_separate_meridiem() {
        assert_eq!(list("11-23-26  12:05AM   1 f").mtime, utc(2026, 11, 23, 0, 5, 0));
        assert_eq!(list("11-23-26  12:05PM   1 f").mtime, utc(2026, 11, 23, 12, 5, 0));
        assert_eq!(list("11-23-26  07:37 pm   1 f").mtime, utc(2026, 11, 23, 19, 37, 0));
    }

    #[test]
    fn dos_two_digit_years_pivot_at_1970() {
        assert_eq!(list("01-01-99  10:00AM  1 f").mtime, utc(1999, 1, 1, 10, 0, 0));
        assert_eq!(list("01-01-69  10:00AM  1 f").mtime, utc(2069, 1, 1, 10, 0, 0));
    }

    #[test]
    fn dos_file_name_keeps_leading_spaces_after_the_size_column() {
        assert_eq!(list("11-23-26  07:37PM   2880  spaced ").name, " spaced ");
    }

    #[test]
    fn dos_malformed_lines_are_errors() {
        for line in [
            "11-23-26  13:37PM   1 f",
            "11-23-26  00:37AM   1 f",
            "13-23-26  07:37PM   1 f",
            "02-30-26  07:37PM   1 f",
            "11-23-26  25:00   1 f",
            "11-23-26  07:37PM   <FILE> f",
            "11-23-26  07:37PM   1",
            "11-23-26  07:37PM",
            "11-23-26",
            "11-23-26  07:37PM   18446744073709551616 f",
            "11-23-26  07:37PM   <DIR>   a/b",
            "1234 5678",
        ] {
            list_err(line);
        }
    }

    // --- whole listings -------------------------------------------------------------------

    #[test]
    fn pure_ftpd_mlsd_listing_parses_without_warnings() {
        let listing = parse_listing(&owned(PUREFTPD_MLSD), Dialect::Mlsd, capture_time());
        assert_eq!(listing.warnings, Vec::<String>::new());
        assert_eq!(listing.entries.len(), PUREFTPD_MLSD.len() - 2);
        assert!(!names(&listing).contains(&"."));
        assert!(!names(&listing).contains(&".."));
    }

    #[test]
    fn vsftpd_list_a_listing_skips_dot_entries_silently() {
        let listing = parse_listing(&owned(VSFTPD_LIST_A), Dialect::List, capture_time());
        assert_eq!(listing.warnings, Vec::<String>::new());
        assert_eq!(names(&listing), vec![" leading space"]);
    }

    #[test]
    fn captured_list_listings_parse_without_warnings() {
        for lines in [VSFTPD_LIST, PUREFTPD_LIST, PYFTPDLIB_LIST, IIS_LIST] {
            let listing = parse_listing(&owned(lines), Dialect::List, capture_time());
            assert_eq!(listing.warnings, Vec::<String>::new());
            assert_eq!(listing.entries.len(), lines.len());
        }
    }

    #[test]
    fn a_bad_line_is_skipped_with_a_warning_naming_it() {
        let lines = owned(&[VSFTPD_LIST[7], "garbage from a proxy", VSFTPD_LIST[10]]);
        let listing = parse_listing(&lines, Dialect::List, capture_time());
        assert_eq!(names(&listing), vec!["plain.txt", "subdir"]);
        assert_eq!(listing.warnings.len(), 1);
        assert!(listing.warnings[0].starts_with("line 2:"), "{:?}", listing.warnings);
        assert!(listing.warnings[0].contains("garbage"), "{:?}", listing.warnings);
    }

    #[test]
    fn entries_that_cannot_be_path_components_are_dropped_with_warnings() {
        let lines =
            owned(&["type=file;size=1; ok", "type=file;size=1; a/b", "type=file;size=1; ", "type=file;size=1; a\0b"]);
        let listing = parse_listing(&lines, Dialect::Mlsd, capture_time());
        assert_eq!(names(&listing), vec!["ok"]);
        assert_eq!(listing.warnings.len(), 3);
    }

    #[test]
    fn duplicate_names_keep_the_first_entry_with_a_warning() {
        let lines = owned(&["type=file;size=1; same", "type=dir;sizd=2; other", "type=dir;sizd=3; same"]);
        let listing = parse_listing(&lines, Dialect::Mlsd, capture_time());
        assert_eq!(names(&listing), vec!["same", "other"]);
        assert_eq!(listing.entries[0].size, 1);
        assert_eq!(listing.warnings.len(), 1);
        assert!(listing.warnings[0].contains("duplicate"), "{:?}", listing.warnings);
    }

    #[test]
    fn overlong_lines_are_skipped_with_a_warning() {
        // An unknown fact is ignored, whatever its length: only the line's length counts.
        let padding = "n".repeat(MAX_LINE_LEN - "x.pad=;type=file; a".len());
        let lines = vec![format!("x.pad={padding};type=file; a"), format!("x.pad={padding}n;type=file; a")];
        let listing = parse_listing(&lines, Dialect::Mlsd, capture_time());
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.warnings.len(), 1);
        assert!(listing.warnings[0].starts_with("line 2:"), "{:?}", listing.warnings);
    }

    #[test]
    fn warnings_are_capped_and_the_rest_counted() {
        let lines = vec!["garbage".to_owned(); 1000];
        let listing = parse_listing(&lines, Dialect::List, capture_time());
        assert!(listing.entries.is_empty());
        assert_eq!(listing.warnings.len(), MAX_WARNINGS + 1);
        let last = listing.warnings.last().map(String::as_str);
        assert_eq!(last, Some("900 more warnings not shown"));
    }

    #[test]
    fn a_line_of_many_short_tokens_is_rejected() {
        let line = format!("-rw-r--r-- {}", "1 ".repeat(30_000));
        list_err(&line);
    }

    // --- properties -----------------------------------------------------------------------

    const NOW_MIN: i64 = 946_684_800; // 2000-01-01
    const NOW_MAX: i64 = 4_102_444_800; // 2100-01-01
    const SECS_MIN: i64 = -62_135_596_800; // 0001-01-01
    const SECS_MAX: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

    fn secs_to_civil(secs: i64) -> Civil {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let of_day = secs.rem_euclid(SECS_PER_DAY);
        Civil {
            year,
            month,
            day,
            hour: u32::try_from(of_day / 3600).expect("< 24"),
            minute: u32::try_from(of_day / 60 % 60).expect("< 60"),
            second: u32::try_from(of_day % 60).expect("< 60"),
        }
    }

    fn all_samples() -> Vec<&'static str> {
        [VSFTPD_LIST, VSFTPD_LIST_A, PUREFTPD_LIST, PYFTPDLIB_LIST, IIS_LIST, PUREFTPD_MLSD, PYFTPDLIB_MLSD].concat()
    }

    /// Valid names, weighted towards what breaks naive parsers.
    fn name_strategy() -> impl Strategy<Value = String> {
        let body = prop_oneof!["[^/\\x00\\r\\n]{1,20}", "[ ;=%*a-zA-Z0-9.>-]{1,20}", "[ a-zé☃ü]{1,12}",];
        (" {0,2}", body, " {0,2}")
            .prop_map(|(lead, body, trail)| format!("{lead}{body}{trail}"))
            .prop_filter("not a dot entry", |n| !is_dot_entry(n))
    }

    /// Arbitrary edits of a valid line, on character boundaries.
    fn mutated_sample() -> impl Strategy<Value = String> {
        let edit = (0u8..3, any::<usize>(), prop_oneof!["[ -~]{0,4}", "[\\x00\\r\\n/;:. >-]{0,3}", ".{0,3}"]);
        (proptest::sample::select(all_samples()), proptest::collection::vec(edit, 1..4)).prop_map(|(line, edits)| {
            let mut chars: Vec<char> = line.chars().collect();
            for (kind, at, text) in edits {
                let at = at % (chars.len() + 1);
                match kind {
                    0 => {
                        let end = (at + text.chars().count().max(1)).min(chars.len());
                        chars.drain(at..end);
                    }
                    1 => {
                        chars.splice(at..at, text.chars());
                    }
                    _ => {
                        if let (Some(slot), Some(c)) = (chars.get_mut(at), text.chars().next()) {
                            *slot = c;
                        }
                    }
                }
            }
            chars.into_iter().collect()
        })
    }

    fn any_line() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), mutated_sample()]
    }

    fn assert_valid_entry(entry: &RemoteEntry) {
        assert_valid_name(&entry.name);
        if let Some(target) = &entry.link_target {
            assert!(!target.is_empty() && target.len() <= TARGET_MAX && !target.contains('\0'), "target {target:?}");
        }
    }

    fn check_line(line: &str, now: SystemTime) {
        if let Ok(Some(entry)) = parse_list_line(line, now) {
            assert_valid_entry(&entry);
        }
        if let Ok(Some(entry)) = parse_mlsd_line(line) {
            assert_valid_entry(&entry);
            if let Some(mode) = entry.perm {
                assert!(mode <= 0o7777);
            }
        }
    }

    proptest! {
        #[test]
        fn civil_from_days_inverts_days_from_civil(days in -719_162i64..=2_932_896) {
            let (year, month, day) = civil_from_days(days);
            prop_assert!((1..=9999).contains(&year));
            prop_assert!(day >= 1 && day <= days_in_month(year, month));
            prop_assert_eq!(days_from_civil(year, month, day), days);
        }

        #[test]
        fn line_parsers_never_panic_and_only_return_valid_names(
            line in any_line(),
            now in NOW_MIN..NOW_MAX,
        ) {
            check_line(&line, UNIX_EPOCH + Duration::from_secs(now.unsigned_abs()));
        }

        #[test]
        fn line_parsers_survive_any_clock(line in mutated_sample(), now in any::<i64>()) {
            let now = to_system_time(now / 2, 0).unwrap_or(UNIX_EPOCH);
            check_line(&line, now);
        }

        #[test]
        fn parse_listing_returns_unique_valid_names(
            lines in proptest::collection::vec(any_line(), 0..40),
            mlsd in any::<bool>(),
        ) {
            let dialect = if mlsd { Dialect::Mlsd } else { Dialect::List };
            let listing = parse_listing(&lines, dialect, utc(2026, 11, 25, 13, 40, 0));
            let mut seen = HashSet::new();
            for entry in &listing.entries {
                assert_valid_name(&entry.name);
                prop_assert!(seen.insert(entry.name.clone()), "duplicate {:?}", entry.name);
            }
            prop_assert!(listing.entries.len() <= lines.len());
        }

        #[test]
        fn vsftpd_style_list_line_round_trips(
            name in name_strategy(),
            size in any::<u64>(),
            kind in prop_oneof![Just(EntryKind::File), Just(EntryKind::Dir), Just(EntryKind::Symlink)],
            target in "[^\\x00\\r\\n]{1,20}",
            now in prop_oneof![
                NOW_MIN..NOW_MAX,
                // Around New Year, where year-less dates are hardest to place.
                (2000i64..2099, -3 * SECS_PER_DAY..3 * SECS_PER_DAY)
                    .prop_map(|(y, offset)| days_from_civil(y, 1, 1) * SECS_PER_DAY + offset),
            ],
            age in -2 * SECS_PER_DAY..40 * 365 * SECS_PER_DAY,
            pure_ftpd_day in any::<bool>(),
        ) {
            // A symlink's line is `name -> target`, split at the first " -> ": a name that
            // makes one earlier (" ->" followed by the separator's space, or one inside it)
            // cannot be told apart from a shorter name, whatever the parser does.
            prop_assume!(
                kind != EntryKind::Symlink || format!("{name} -> {target}").find(" -> ") == Some(name.len())
            );
            let mtime = now - age;
            let c = secs_to_civil(mtime);
            // vsftpd shows the time for the last six months, the year otherwise.
            let recent = (0..182 * SECS_PER_DAY).contains(&age);
            let day = if pure_ftpd_day { format!("{:>2}", c.day) } else { format!("{:02}", c.day) };
            let (when, expected) = if recent {
                (format!("{:02}:{:02}", c.hour, c.minute), mtime - mtime.rem_euclid(60))
            } else {
                (format!(" {}", c.year), mtime - mtime.rem_euclid(SECS_PER_DAY))
            };
            let (mode, shown) = match kind {
                EntryKind::File => ("-rw-r--r--", name.clone()),
                EntryKind::Dir => ("drwxr-xr-x", name.clone()),
                EntryKind::Symlink => ("lrwxrwxrwx", format!("{name} -> {target}")),
            };
            let month = MONTHS[usize::try_from(c.month - 1).expect("month")];
            let line = format!("{mode}    1 ftp      ftp      {size:>8} {month} {day} {when} {shown}");
            let now = to_system_time(now, 0).expect("now in range");
            let entry = parse_list_line(&line, now)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no entry from {line:?}"));
            prop_assert_eq!(&entry.name, &name);
            prop_assert_eq!(entry.size, size);
            prop_assert_eq!(entry.kind, kind);
            prop_assert_eq!(entry.mtime, to_system_time(expected, 0).expect("in range"));
            let expected_target = (kind == EntryKind::Symlink).then(|| target.clone());
            prop_assert_eq!(entry.link_target, expected_target);
        }

        #[test]
        fn mlsd_line_round_trips(
            name in name_strategy(),
            size in any::<u64>(),
            dir in any::<bool>(),
            mtime in SECS_MIN..=SECS_MAX,
            mode in 0u32..=0o7777,
        ) {
            let c = secs_to_civil(mtime);
            let (kind, kind_fact, size_fact) =
                if dir { (EntryKind::Dir, "dir", "sizd") } else { (EntryKind::File, "file", "size") };
            let line = format!(
                "type={kind_fact};{size_fact}={size};modify={:04}{:02}{:02}{:02}{:02}{:02};UNIX.mode=0{mode:o};unique=fe00g98c115; {name}",
                c.year, c.month, c.day, c.hour, c.minute, c.second
            );
            let entry = parse_mlsd_line(&line)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no entry from {line:?}"));
            prop_assert_eq!(&entry.name, &name);
            prop_assert_eq!(entry.size, size);
            prop_assert_eq!(entry.kind, kind);
            prop_assert_eq!(entry.perm, Some(mode));
            prop_assert_eq!(entry.mtime, to_system_time(mtime, 0).expect("in range"));
        }
    }
}
