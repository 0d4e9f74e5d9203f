//! The transport against scripted servers: pipelined exchanges, refusals, stale replies,
//! data connections the server closed, early closes. Real TLS, real sockets; the server's
//! behaviour is whatever each test scripts.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::testkit::{Answer, Session, remote, serve};
use crate::error::RemoteError;
use crate::fake::pattern;
use crate::remote::{Intent, Remote, Version};
use crate::stats::Stats;

const FILE: usize = 3 << 20;

fn version() -> Version {
    Version { size: FILE as u64, mtime: 0 }
}

fn count(stats: &Stats, counter: fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
    counter(stats).load(Ordering::SeqCst)
}

/// Reads `len` bytes at `offset` and closes.
fn read_range(r: &dyn Remote, offset: u64, len: usize, intent: Intent) -> Result<Vec<u8>, RemoteError> {
    let mut reader = r.open("/f", offset, version(), intent)?;
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match reader.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                reader.close();
                return Err(e);
            }
        }
    }
    out.truncate(got);
    reader.close();
    Ok(out)
}

/// A RETR handler serving `data` like vsftpd (size in the 150, 426 after an early close).
fn retr_like_vsftpd(command: &str, s: &mut Session, data: &[u8]) -> Answer {
    if command.starts_with("SIZE") {
        s.reply(&format!("213 {}", data.len()));
        return Answer::Done;
    }
    if !command.starts_with("RETR") {
        return Answer::Default;
    }
    s.reply(&format!("150 Opening BINARY mode data connection for /f ({} bytes).", data.len()));
    if s.send(data) {
        s.reply("226 Transfer complete.");
    } else {
        s.reply("426 Failure writing network stream.");
    }
    Answer::Done
}

fn logs() {
    let _ = env_logger::Builder::new().parse_env("MASTFS_TEST_LOG").is_test(true).try_init();
}

fn wait_untended(pool: &super::Pool) {
    logs();
    assert!(pool.wait_untended(Instant::now() + Duration::from_secs(10)), "the connection was never re-armed");
}

#[test]
fn a_read_on_a_pooled_connection_sends_rest_and_retr_in_one_write_and_gets_the_right_bytes() {
    let data = Arc::new(pattern(FILE, 1));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (d, log) = (Arc::clone(&data), Arc::clone(&seen));
    let server = serve(false, move |c, s| {
        log.lock().expect("log").push(c.to_string());
        retr_like_vsftpd(c, s, &d)
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    r.check("/").expect("login and an empty listing");
    wait_untended(&pool);
    let got = read_range(&r, 1000, 5000, Intent::Peek { len: 5000 }).expect("read");
    assert_eq!(got, &data[1000..6000]);
    wait_untended(&pool);
    let before = count(&stats, |s| &s.round_trips);
    let got = read_range(&r, 2_000_000, 70_000, Intent::Peek { len: 70_000 }).expect("second read");
    assert_eq!(got, &data[2_000_000..2_070_000]);
    assert_eq!(
        count(&stats, |s| &s.round_trips) - before,
        2,
        "REST+RETR with the ClientHello, then the TLS finish answered by the data"
    );
    wait_untended(&pool);
    assert_eq!(count(&stats, |s| &s.logins), 1, "the second read reused the pooled connection");
    assert_eq!(count(&stats, |s| &s.reconnects), 0);
    assert_eq!(count(&stats, |s| &s.aborts), 2, "both reads closed early");
    let log = seen.lock().expect("log").clone();
    let rest = log.iter().position(|c| c == "REST 2000000").expect("REST sent");
    assert_eq!(log[rest + 1], "RETR /f", "RETR right behind its REST: {log:?}");
}

#[test]
fn a_data_connection_the_server_closed_after_it_was_opened_ahead_is_replaced_within_the_same_read() {
    let data = Arc::new(pattern(FILE, 2));
    let d = Arc::clone(&data);
    let mut pasvs = 0;
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closing = Arc::clone(&closed);
    let server = serve(false, move |c, s| {
        if c == "PASV" {
            pasvs += 1;
            s.pasv();
            // The first PASV is the mount check's listing; the second opens a data
            // connection ahead, which the server accepts and closes at once.
            if pasvs == 2 {
                drop(s.accept_data());
                closing.store(true, Ordering::SeqCst);
            }
            return Answer::Done;
        }
        retr_like_vsftpd(c, s, &d)
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    r.check("/").expect("check");
    wait_untended(&pool);
    let waiting = Instant::now();
    while !closed.load(Ordering::SeqCst) && waiting.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the server's FIN reach the client's socket.
    std::thread::sleep(Duration::from_millis(100));
    let got = read_range(&r, 123, 4096, Intent::Peek { len: 4096 }).expect("read despite the closed data connection");
    assert_eq!(got, &data[123..123 + 4096]);
    assert_eq!(count(&stats, |s| &s.stale_arms), 1);
    assert_eq!(count(&stats, |s| &s.logins), 1);
    assert_eq!(count(&stats, |s| &s.reconnects), 0);
}

#[test]
fn a_refused_retr_behind_an_accepted_rest_is_unavailable_and_the_connection_stays_usable() {
    let data = Arc::new(pattern(FILE, 3));
    let d = Arc::clone(&data);
    let mut retrs = 0;
    let server = serve(false, move |c, s| {
        if c.starts_with("RETR") {
            retrs += 1;
            if retrs == 1 {
                s.reply("550 Failed to open file.");
                return Answer::Done;
            }
        }
        retr_like_vsftpd(c, s, &d)
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    let err = read_range(&r, 10, 10, Intent::Peek { len: 10 }).expect_err("refused");
    assert!(matches!(err, RemoteError::Unavailable(_)), "{err:?}");
    wait_untended(&pool);
    assert_eq!(read_range(&r, 10, 10, Intent::Peek { len: 10 }).expect("next read"), &data[10..20]);
    assert_eq!(count(&stats, |s| &s.logins), 1, "the refusal did not cost the connection");
    assert_eq!(count(&stats, |s| &s.reconnects), 0);
}

#[test]
fn a_350_for_another_offset_drops_the_connection_and_the_read_is_done_again_on_a_fresh_one() {
    let data = Arc::new(pattern(FILE, 4));
    let d = Arc::clone(&data);
    let server = serve(false, move |c, s| {
        if c.starts_with("REST") && s.number == 0 {
            // A stale 350 on the first connection: its transfer would start at 0, not 100.
            s.rest = 0;
            s.reply("350 Restart position accepted (4096).");
            return Answer::Done;
        }
        retr_like_vsftpd(c, s, &d)
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    let got = read_range(&r, 100, 10, Intent::Peek { len: 10 }).expect("read on a fresh connection");
    assert_eq!(got, &data[100..110], "never the bytes of the transfer behind the stale 350");
    wait_untended(&pool);
    assert_eq!(count(&stats, |s| &s.reconnects), 1, "an out-of-step connection is dropped, never reused");
    assert_eq!(count(&stats, |s| &s.logins), 2);
}

#[test]
fn a_file_whose_mlst_size_differs_fails_as_changed_and_the_aborted_transfer_leaves_the_connection_in_step() {
    let data = Arc::new(pattern(FILE, 5));
    let d = Arc::clone(&data);
    let mut mlsts = 0;
    let server = serve(true, move |c, s| {
        if c.starts_with("MLST") {
            mlsts += 1;
            let size = if mlsts == 1 { FILE + 1 } else { FILE };
            s.reply(&format!("250-Listing\r\n type=file;size={size};modify=19700101000000; /f\r\n250 End"));
            return Answer::Done;
        }
        if c.starts_with("RETR") {
            // Like pure-ftpd: no size in the 150, nothing at all after an early close.
            s.reply("150 Accepted data connection");
            if s.send(&d) {
                s.reply("226-File successfully transferred\r\n226 0.000 seconds");
            }
            return Answer::Done;
        }
        if c == "ABOR" {
            s.reply("226 Since you see this ABOR must've succeeded");
            return Answer::Done;
        }
        Answer::Default
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    let err = read_range(&r, 0, 10, Intent::Peek { len: 10 }).expect_err("changed");
    assert!(matches!(err, RemoteError::Changed(_)), "{err:?}");
    assert_eq!(count(&stats, |s| &s.net_bytes), 0, "no byte of a changed file is handed out");
    wait_untended(&pool);
    assert_eq!(read_range(&r, 5, 10, Intent::Peek { len: 10 }).expect("next read"), &data[5..15]);
    assert_eq!(count(&stats, |s| &s.reconnects), 0, "ABOR and PASV brought the connection back in step");
    assert_eq!(count(&stats, |s| &s.logins), 1);
}

#[test]
fn an_early_close_mid_transfer_brings_the_connection_back_in_step_for_the_next_read() {
    let data = Arc::new(pattern(FILE, 6));
    let d = Arc::clone(&data);
    let server = serve(false, move |c, s| retr_like_vsftpd(c, s, &d));
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    for offset in [0u64, 1 << 20, 7, 2_500_000] {
        let got = read_range(&r, offset, 100_000.min(FILE - offset as usize), Intent::Run { end: offset + 100_000 })
            .expect("read");
        assert_eq!(got, &data[offset as usize..offset as usize + got.len()]);
        wait_untended(&pool);
    }
    assert_eq!(count(&stats, |s| &s.logins), 1);
    assert_eq!(count(&stats, |s| &s.reconnects), 0, "every early close was followed by a clean ABOR + PASV");
    assert_eq!(count(&stats, |s| &s.aborts), 4);
}

#[test]
fn a_read_to_the_end_of_the_file_finishes_the_transfer_without_abor() {
    let data = Arc::new(pattern(FILE, 7));
    let d = Arc::clone(&data);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server = serve(false, move |c, s| {
        log.lock().expect("log").push(c.to_string());
        retr_like_vsftpd(c, s, &d)
    });
    let (r, pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    let tail = FILE as u64 - 300_000;
    let got = read_range(&r, tail, 300_000, Intent::Run { end: FILE as u64 }).expect("read");
    assert_eq!(got, &data[tail as usize..]);
    wait_untended(&pool);
    assert_eq!(count(&stats, |s| &s.aborts), 0);
    assert!(!seen.lock().expect("log").iter().any(|c| c == "ABOR"), "a complete transfer needs no ABOR");
    assert_eq!(read_range(&r, 0, 10, Intent::Peek { len: 10 }).expect("next"), &data[..10]);
    assert_eq!(count(&stats, |s| &s.reconnects), 0);
}

#[test]
fn a_server_that_never_answers_retr_fails_the_open_with_a_timeout() {
    let server = serve(false, move |c, _s| {
        if c.starts_with("RETR") {
            // Say nothing: the client's deadline must end the wait.
            return Answer::Done;
        }
        Answer::Default
    });
    let (r, _pool, _stats, _dir) = remote(&server, Duration::from_millis(700));
    let err = read_range(&r, 0, 10, Intent::Peek { len: 10 }).expect_err("no answer");
    assert!(matches!(err, RemoteError::Timeout(_) | RemoteError::Connect { .. }), "{err:?}");
}

#[test]
fn a_transfer_the_server_breaks_off_is_a_transient_error_not_a_changed_file() {
    // A server that closes the data connection early and says so (426, as vsftpd does when
    // its send fails) has not told us the file is shorter: the read path must resume at
    // the byte reached, not report the file as replaced (ESTALE).
    let data = Arc::new(pattern(FILE, 9));
    let d = Arc::clone(&data);
    let retrs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = Arc::clone(&retrs);
    let server = serve(false, move |c, s| {
        if c.starts_with("RETR") && n.fetch_add(1, Ordering::SeqCst) == 0 {
            s.reply(&format!("150 Opening BINARY mode data connection for /f ({FILE} bytes)."));
            s.send(&d[..FILE / 2]);
            s.reply("426 Failure writing network stream.");
            return Answer::Done;
        }
        retr_like_vsftpd(c, s, &d)
    });
    let (r, _pool, stats, _dir) = remote(&server, Duration::from_secs(5));
    let err = read_range(&r, 0, FILE, Intent::Run { end: FILE as u64 }).expect_err("broken off");
    assert!(matches!(err, RemoteError::Protocol(_)), "a broken transfer, not a changed file: {err:?}");
    // The 426 left the connection in step: the next read uses it again.
    let got = read_range(&r, 0, FILE, Intent::Run { end: FILE as u64 }).expect("read again");
    assert!(got == *data, "the whole file the second time");
    assert_eq!(count(&stats, |s| &s.logins), 1, "the same connection served both transfers");
    assert_eq!(count(&stats, |s| &s.reconnects), 0);
}

#[test]
fn a_transfer_that_ends_before_the_listed_size_is_an_error_never_a_short_file() {
    let data = Arc::new(pattern(FILE / 2, 8));
    let d = Arc::clone(&data);
    let server = serve(false, move |c, s| {
        if c.starts_with("SIZE") {
            s.reply(&format!("213 {FILE}"));
            return Answer::Done;
        }
        if c.starts_with("RETR") {
            s.reply("150 Opening data connection.");
            s.send(&d);
            s.reply("226 Transfer complete.");
            return Answer::Done;
        }
        Answer::Default
    });
    let (r, _pool, _stats, _dir) = remote(&server, Duration::from_secs(5));
    let err = read_range(&r, 0, FILE, Intent::Run { end: FILE as u64 }).expect_err("short");
    assert!(matches!(err, RemoteError::Changed(_)), "{err:?}");
}
