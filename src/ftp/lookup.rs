//! Listings and single-path lookups, each one exchange on the control connection.
//!
//! A listing is `MLSD dir` where the server offers it, otherwise `CWD dir` + `LIST -a` (from
//! inside the directory: `LIST` arguments are parsed as options and globs by some servers,
//! vsftpd treats a name starting with `-` or holding `*` specially), sent in one write with
//! `PASV` when no data connection was opened ahead. If `CWD` fails, the `LIST` behind it
//! lists some other directory: its bytes are thrown away. Listings are bounded in size and
//! split on CRLF only (see `read_lines`).
//!
//! A lookup (`stat`) is `MLST path` where offered, otherwise `SIZE` + `MDTM` + `CWD` in one
//! write: a file answers the first two, a directory the third, a missing path none.
//!
//! Threads: run by the request's thread on its leased connection.

use std::io::{self, Read};
use std::time::{Instant, SystemTime};

use super::control::io_error;
use super::data::{self, timed_out};
use super::login::remaining;
use super::pool::Lease;
use super::transfer::mlst_entry;
use super::watchdog;
use crate::error::RemoteError;
use crate::listing::{Dialect, parse_mlsd_line};
use crate::remote::{EntryKind, RemoteEntry};

/// A listing larger than this is refused rather than buffered without bound.
const MAX_LISTING_BYTES: u64 = 256 << 20;
/// A listing must move at least this many bytes per timeout period (see `transfer.rs`).
const MIN_PROGRESS: u64 = 16 * 1024;

/// Lists `dir` (an absolute path) as raw lines, and says which dialect they are in.
pub(crate) fn list(lease: &mut Lease, dir: &str, deadline: Instant) -> Result<(Vec<String>, Dialect), RemoteError> {
    let pool = std::sync::Arc::clone(lease.pool());
    let stats = pool.stats();
    let timeout = pool.timeout();
    let epsv = pool.epsv();
    let name = pool.server_name()?;
    let conn = lease.conn()?;
    let dialect = if conn.mlst { Dialect::Mlsd } else { Dialect::List };
    let ahead = conn.take_ahead(stats);
    let passive = data::passive_command(epsv);
    let mut commands = Vec::new();
    if ahead.is_none() {
        commands.push(passive.to_string());
    }
    let command = match dialect {
        Dialect::Mlsd => format!("MLSD {dir}"),
        Dialect::List => {
            commands.push(format!("CWD {dir}"));
            "LIST -a".to_string()
        }
    };
    commands.push(command.clone());

    let _exchange = conn.control.deadline(remaining(deadline)?);
    conn.control.send(&commands)?;
    let mut data_deadline = None;
    let mut stream = match ahead {
        Some(a) => {
            data_deadline = watchdog::arm(&a.sock, remaining(deadline)?);
            Some(data::start_tls(a.sock, &conn.tls, &name, &conn.flights).inspect_err(|_| conn.control.set_broken())?)
        }
        None => None,
    };
    let mut failure: Option<RemoteError> = None;
    if stream.is_none() {
        match conn.control.answer(passive, &[if epsv { 229 } else { 227 }]) {
            Ok(reply) => {
                let addr = data::passive_address(&reply, conn.peer).inspect_err(|_| conn.control.set_broken())?;
                let sock = data::connect(addr, &conn.flights, remaining(deadline)?, timeout)
                    .inspect_err(|_| conn.control.set_broken())?;
                data_deadline = watchdog::arm(&sock, remaining(deadline)?);
                stream = Some(
                    data::start_tls(sock, &conn.tls, &name, &conn.flights)
                        .inspect_err(|_| conn.control.set_broken())?,
                );
            }
            Err(e) if conn.control.is_broken() => return Err(e),
            Err(e) => failure = Some(e),
        }
    }
    if dialect == Dialect::List {
        match conn.control.answer_about_path(&format!("CWD {dir}"), &[250]) {
            Ok(_) => {}
            Err(e) if conn.control.is_broken() => return Err(e),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let started = match conn.control.answer_about_path(&command, &[125, 150]) {
        Ok(_) => true,
        Err(e) if conn.control.is_broken() => return Err(e),
        Err(e) => {
            failure.get_or_insert(e);
            false
        }
    };
    let Some(mut stream) = stream.filter(|_| started) else {
        return Err(failure.unwrap_or_else(|| RemoteError::Protocol(format!("{command} was not answered"))));
    };
    if let Some(e) = failure {
        // The listing is of some other directory (CWD failed): never read it. The TLS
        // handshake is finished first: vsftpd ends the whole session when a data connection
        // dies in its handshake.
        data::finish_tls(&mut stream)
            .map_err(|e| timed_out(e, &data_deadline))
            .inspect_err(|_| conn.control.set_broken())?;
        drop(data_deadline);
        conn.abort_transfer(stream, stats, true, timeout);
        return Err(e);
    }
    data::finish_tls(&mut stream)
        .map_err(|e| timed_out(e, &data_deadline))
        .inspect_err(|_| conn.control.set_broken())?;
    drop(data_deadline);
    drop(_exchange);

    let mut raw = Vec::new();
    let read = read_bounded(&mut stream, &mut raw, timeout);
    match read {
        Ok(()) if raw.len() as u64 > MAX_LISTING_BYTES => {
            conn.abort_transfer(stream, stats, false, timeout);
            return Err(RemoteError::Protocol(format!("listing of {dir} exceeds {MAX_LISTING_BYTES} bytes")));
        }
        Ok(()) => {}
        Err(e) => {
            conn.control.set_broken();
            return Err(e);
        }
    }
    data::close_tls(stream);
    let _closing = conn.control.deadline(timeout);
    conn.control.answer(&format!("end of {command}"), &[226, 250])?;
    Ok((split_lines(&raw), dialect))
}

/// Reads a listing's data connection to its end, at most `MAX_LISTING_BYTES` + 1 bytes, with
/// the same progress floor as file data.
fn read_bounded(stream: &mut impl Read, raw: &mut Vec<u8>, timeout: std::time::Duration) -> Result<(), RemoteError> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut period = Instant::now();
    let mut period_bytes = 0u64;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A server that closes the socket without TLS close_notify after the listing
            // (its 226 still has to confirm it is complete).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io_error(e, "listing data")),
        };
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() as u64 > MAX_LISTING_BYTES {
            return Ok(());
        }
        period_bytes += n as u64;
        if period.elapsed() >= timeout {
            if period_bytes < MIN_PROGRESS {
                return Err(RemoteError::Timeout("listing data slower than a trickle".into()));
            }
            period = Instant::now();
            period_bytes = 0;
        }
    }
}

/// One path's entry without listing its parent. `None` when the server knows no such path.
pub(crate) fn stat(lease: &mut Lease, path: &str, deadline: Instant) -> Result<Option<RemoteEntry>, RemoteError> {
    let conn = lease.conn()?;
    let name = path.rsplit('/').next().unwrap_or(path).to_string();
    let _exchange = conn.control.deadline(remaining(deadline)?);
    if conn.mlst {
        conn.control.send(&[format!("MLST {path}")])?;
        return match conn.control.answer(&format!("MLST {path}"), &[250]) {
            Ok(reply) => {
                let entry = mlst_entry(&reply, "x").map_err(|e| RemoteError::Protocol(format!("MLST {path}: {e}")))?;
                Ok(entry.map(|e| RemoteEntry { name, ..e }))
            }
            Err(e) if conn.control.is_broken() => Err(e),
            Err(_) => Ok(None),
        };
    }
    conn.control.send(&[format!("SIZE {path}"), format!("MDTM {path}"), format!("CWD {path}")])?;
    let mut answers = Vec::with_capacity(3);
    for (what, code) in [("SIZE", 213), ("MDTM", 213), ("CWD", 250)] {
        match conn.control.answer(&format!("{what} {path}"), &[code]) {
            Ok(reply) => answers.push(Some(reply.text())),
            Err(e) if conn.control.is_broken() => return Err(e),
            Err(_) => answers.push(None),
        }
    }
    let (size, mdtm, cwd) = (&answers[0], &answers[1], &answers[2]);
    if let Some(size) = size {
        let size: u64 = size.trim().parse().map_err(|_| RemoteError::Protocol(format!("SIZE {path}: {size:?}")))?;
        let mtime = mdtm
            .as_deref()
            .and_then(parse_mdtm)
            .ok_or_else(|| RemoteError::Protocol(format!("MDTM {path}: {mdtm:?}")))?;
        return Ok(Some(RemoteEntry {
            name,
            kind: EntryKind::File,
            size,
            mtime,
            mtime_precision: 1,
            perm: None,
            link_target: None,
        }));
    }
    if cwd.is_some() {
        return Ok(Some(RemoteEntry {
            name,
            kind: EntryKind::Dir,
            size: 0,
            mtime: std::time::UNIX_EPOCH,
            mtime_precision: 1,
            perm: None,
            link_target: None,
        }));
    }
    Ok(None)
}

/// The time in an `MDTM` reply's text (`YYYYMMDDHHMMSS[.sss]`, UTC).
fn parse_mdtm(text: &str) -> Option<SystemTime> {
    let stamp = text.split_whitespace().next()?;
    let digits = stamp.split('.').next()?;
    let line = format!("modify={digits}; x");
    parse_mlsd_line(&line).ok().flatten().map(|e| e.mtime)
}

/// Splits a listing into lines. Servers end lines with CRLF but pass a bare LF inside a file
/// name through unchanged, so when the listing uses CRLF only CRLF ends a line: a name
/// holding "\n" must not forge an entry of its own (the parser then rejects the line whose
/// name holds the LF). Listings with bare-LF line ends are split on LF.
fn split_lines(raw: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let crlf = raw.windows(2).any(|w| w == b"\r\n");
    let mut push = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
    };
    if crlf {
        let mut rest = raw;
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            push(&rest[..at]);
            rest = &rest[at + 2..];
        }
        push(rest);
    } else {
        raw.split(|&b| b == b'\n').for_each(push);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_feed_inside_a_name_does_not_forge_a_listing_entry() {
        let raw = b"-rw-r--r-- 1 0 0 5 Nov 25 13:49 a\n-rw-r--r-- 1 0 0 999 Nov 25 13:49 injected\r\n-rw-r--r-- 1 0 0 3 Nov 25 13:49 b\r\n";
        let got = split_lines(raw);
        assert_eq!(got.len(), 2, "two server lines, not three: {got:?}");
        assert!(got[0].contains("a\n-rw"));
        assert!(got[1].ends_with(" b"));
    }

    #[test]
    fn listings_with_bare_line_feeds_are_still_split() {
        assert_eq!(split_lines(b"one\ntwo\n\nthree"), ["one", "two", "three"]);
    }

    #[test]
    fn mdtm_times_are_utc_seconds_with_or_without_fractions() {
        let t = parse_mdtm("20261127184037").expect("time");
        let secs = t.duration_since(std::time::UNIX_EPOCH).expect("after epoch").as_secs();
        assert_eq!(secs % 60, 37);
        assert_eq!(parse_mdtm("20261127184037.123"), Some(t));
        assert_eq!(parse_mdtm("yesterday"), None);
    }
}
