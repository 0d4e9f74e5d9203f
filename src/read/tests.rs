//! The read path against the fake remote: what crosses the "link", when reads return, how
//! transfers start and end, and what happens when the remote misbehaves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::error::RemoteError;
use crate::fake::{FakeRemote, Transfer, pattern};
use crate::remote::Intent;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn read_path(remote: &FakeRemote, disk: Option<BlockCache>, config: ReadConfig) -> (Arc<ReadPath>, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let r: Arc<dyn Remote> = Arc::new(remote.clone());
    (ReadPath::new(r, disk, config, Arc::clone(&stats)), stats)
}

fn config() -> ReadConfig {
    ReadConfig { memory_blocks: 64, timeout: Duration::from_secs(5) }
}

/// A fake remote holding one file of `size` patterned bytes (`seed`) that allows
/// `connections` transfers at once, and the file's bytes.
fn one_file(name: &str, size: u64, seed: u64, connections: usize) -> (FakeRemote, Vec<u8>) {
    let data = pattern(size as usize, seed);
    let remote = FakeRemote::with_file(name, data.clone());
    remote.set_parallelism(connections);
    (remote, data)
}

/// Copies the whole of `name` through `rp`, checking every byte, waits until no transfer
/// runs, checks that each byte crossed once, and returns the transfers in file order.
fn copy_whole(rp: &ReadPath, remote: &FakeRemote, name: &str, data: &[u8]) -> Vec<Transfer> {
    let f = rp.open(id(remote, name));
    assert!(read_all(rp, &f, data.len() as u64) == data, "bytes differ");
    rp.release(&f);
    until_quiet(remote);
    let mut t = remote.transfers();
    t.sort_by_key(|x| x.offset);
    assert_eq!(remote.bytes(), data.len() as u64, "every byte once: {t:?}");
    t
}

/// A disk cache far larger than any test's file, in a directory that lives as long as the guard.
fn big_disk_cache() -> (tempfile::TempDir, BlockCache) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = BlockCache::open(dir.path(), 4 << 30).expect("cache");
    (dir, disk)
}

/// The identity a listing of `path` gives the file now.
fn id(remote: &FakeRemote, path: &str) -> FileId {
    let v = remote.version(path).expect("file exists");
    FileId { server: "fake:21".into(), user: "anonymous".into(), path: path.into(), size: v.size, mtime: v.mtime }
}

fn stat(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

/// Reads the whole file as the kernel does for `cat`: 1 MiB requests, two at a time in
/// flight and answered in either order.
fn read_all(rp: &ReadPath, f: &OpenFile, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let mut off = 0;
    while off < size {
        let second = (off + MIB).min(size);
        std::thread::scope(|s| {
            let a = s.spawn(|| rp.read(f, off, MIB as u32).expect("read"));
            let b = s.spawn(|| rp.read(f, second, MIB as u32).expect("read"));
            let (a, b) = (a.join().expect("reader"), b.join().expect("reader"));
            out[off as usize..off as usize + a.len()].copy_from_slice(&a);
            out[second as usize..second as usize + b.len()].copy_from_slice(&b);
        });
        off = (second + MIB).min(size);
    }
    out
}

/// Waits (bounded) until the fake has no transfer open.
fn until_quiet(remote: &FakeRemote) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while remote.live() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(remote.live(), 0, "transfers still open: {:?}", remote.transfers());
}

/// Runs `f` on a thread and fails the test if it has not returned after `limit`: a read that
/// hangs is a failure, never a stuck test.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("still running: a hang")
}

#[test]
fn a_random_read_fetches_only_its_own_bytes_with_one_peek() {
    let data = pattern((64 * MIB) as usize, 7);
    let remote = FakeRemote::with_file("/big", data.clone());
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/big"));
    let off = 40 * MIB + 12 * KIB;
    let got = rp.read(&f, off, 4096).expect("read");
    assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
    until_quiet(&remote);
    let t = remote.transfers();
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!((t[0].offset, t[0].intent, t[0].delivered), (off, Intent::Peek { len: 4096 }, 4096));
    assert_eq!(remote.bytes(), 4096, "4 KiB crossed the link, not a block");
    assert_eq!((stat(&stats.stripes), stat(&stats.cancelled)), (0, 0));
}

#[test]
fn a_read_returns_when_its_bytes_arrive_while_the_rest_is_still_arriving() {
    let data = pattern((8 * MIB) as usize, 8);
    let remote = FakeRemote::with_file("/f", data.clone());
    // 1 MiB/s: the 1 MiB the first reader asked for takes a second to arrive.
    remote.faults().rate.store(MIB, Ordering::SeqCst);
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/f"));
    std::thread::scope(|s| {
        let big = s.spawn(|| rp.read(&f, 0, MIB as u32).expect("big read"));
        // The small read of the first 4 KiB waits on the same transfer.
        while remote.opens() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let small = rp.read(&f, 0, 4096).expect("small read");
        let arrived = remote.bytes();
        assert_eq!(&small[..], &data[..4096]);
        assert!(arrived < MIB / 2, "the small read waited for {arrived} bytes, not for its own 4 KiB");
        assert!(big.join().expect("reader").len() == MIB as usize);
    });
    assert_eq!(remote.opens(), 1, "both readers shared one transfer");
}

#[test]
fn concurrent_readers_of_one_range_share_one_fetch() {
    let data = pattern((2 * MIB) as usize, 3);
    let remote = FakeRemote::with_file("/f", data.clone());
    remote.faults().open_delay_us.store(20_000, Ordering::SeqCst);
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/f"));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let (rp, f, data) = (&rp, &f, &data);
            scope.spawn(move || {
                assert_eq!(&rp.read(f, 5000, 3000).expect("read")[..], &data[5000..8000]);
            });
        }
    });
    assert_eq!(remote.opens(), 1);
    assert_eq!(remote.bytes(), 3000);
}

#[test]
fn the_kernels_first_read_ahead_of_a_file_is_one_transfer() {
    let data = pattern((64 * MIB) as usize, 5);
    let remote = FakeRemote::with_file("/h.fits", data.clone());
    remote.faults().rate.store(64 * MIB, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/h.fits"));
    // The kernel's first requests for a read at 0: seven 128 KiB requests, a few in flight
    // at once (less than a sequential reader's trigger).
    std::thread::scope(|s| {
        for i in 0..7u64 {
            let (rp, f, data) = (&rp, &f, &data);
            s.spawn(move || {
                let off = i * 128 * KIB;
                let got = rp.read(f, off, 128 * 1024).expect("read");
                assert_eq!(&got[..], &data[off as usize..(off + 128 * KIB) as usize]);
            });
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    until_quiet(&remote);
    assert_eq!(remote.bytes(), 7 * 128 * KIB, "nothing beyond what was asked");
    assert_eq!(stat(&stats.stripes), 0, "a header read is not sequential");
    assert!(remote.opens() <= 3, "requests extend the transfer instead of opening others: {:?}", remote.transfers());
}

#[test]
fn a_sequential_read_switches_to_stripes_fetches_every_byte_once_and_ends_only_at_stripe_ends() {
    let size = 40 * MIB + 777;
    let (remote, data) = one_file("/seq", size, 9, 4);
    let (rp, stats) = read_path(&remote, None, config());
    let t = copy_whole(&rp, &remote, "/seq", &data);
    assert_eq!(t.len() as u64, stat(&stats.stripes) + stat(&stats.peeks), "{t:?}");
    assert!(stat(&stats.peeks) <= 1, "at most the first read's peek is not part of the run: {t:?}");
    assert!(stat(&stats.stripes) >= 4, "split among the connections: {t:?}");
    // Peeks for the first reads (two requests in flight may start two), then stripes only.
    let runs_from = t.iter().position(|x| matches!(x.intent, Intent::Run { .. })).expect("stripes");
    assert!(runs_from <= 2, "{t:?}");
    assert!(t[runs_from..].iter().all(|x| matches!(x.intent, Intent::Run { .. })), "{t:?}");
    // Early closes happen exactly where another transfer took over, and nowhere else.
    for x in &t {
        if let Some(at) = x.closed_early_at {
            assert!(t.iter().any(|y| y.offset == at), "closed at {at}, where no stripe starts: {t:?}");
        }
        if let Intent::Run { end } = x.intent {
            let stop = x.offset + x.delivered;
            assert!(
                stop == end || t.iter().any(|y| y.offset == stop),
                "a stripe runs to its end, or to where another connection took over its end: {x:?}"
            );
        }
    }
    assert_eq!(t.iter().filter(|x| x.closed_early_at.is_none()).count(), 1, "one transfer ends at EOF");
    assert_eq!(stat(&stats.cancelled), 0);
    assert_eq!(stat(&stats.planned_ends), t.len() as u64 - 1);
}

#[test]
fn a_reader_that_closes_early_stops_its_stripes() {
    let size = 256 * MIB;
    let remote = FakeRemote::with_file("/huge", pattern(size as usize, 4));
    remote.faults().rate.store(16 * MIB, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/huge"));
    let mut off = 0;
    while off < 8 * MIB {
        off += rp.read(&f, off, MIB as u32).expect("read").len() as u64;
    }
    rp.release(&f);
    until_quiet(&remote);
    assert!(stat(&stats.stripes) > 1, "the reader was sequential");
    assert!(stat(&stats.cancelled) > 0);
    assert!(remote.bytes() < size / 2, "stripes stopped: {} bytes fetched", remote.bytes());
}

#[test]
fn a_reader_that_seeks_far_away_stops_its_stripes_and_peeks_at_the_new_place() {
    let size = 256 * MIB;
    let data = pattern(size as usize, 6);
    let remote = FakeRemote::with_file("/huge", data.clone());
    remote.faults().rate.store(16 * MIB, Ordering::SeqCst);
    // A small cache: stripes reach only 8 MiB ahead, so 200 MiB is outside the run.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = BlockCache::open(dir.path(), 32 * MIB).expect("cache");
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let f = rp.open(id(&remote, "/huge"));
    let mut off = 0;
    while off < 4 * MIB {
        off += rp.read(&f, off, MIB as u32).expect("read").len() as u64;
    }
    let far = 200 * MIB;
    assert_eq!(&rp.read(&f, far, 4096).expect("far read")[..], &data[far as usize..far as usize + 4096]);
    until_quiet(&remote);
    let t = remote.transfers();
    let at_far: Vec<&Transfer> = t.iter().filter(|x| x.offset == far).collect();
    assert_eq!(at_far.len(), 1, "{t:?}");
    assert_eq!(at_far[0].intent, Intent::Peek { len: 4096 });
    assert!(t.iter().any(|x| matches!(x.intent, Intent::Run { .. })), "the reader was sequential: {t:?}");
    assert!(stat(&stats.cancelled) > 0, "the run's stripes stopped: {t:?}");
}

#[test]
fn a_broken_transfer_resumes_at_the_exact_byte() {
    let data = pattern((4 * MIB) as usize, 5);
    let remote = FakeRemote::with_file("/b", data.clone());
    remote.faults().break_after.store(300 * KIB, Ordering::SeqCst);
    remote.faults().break_count.store(2, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/b"));
    let off = 100;
    let got = rp.read(&f, off, MIB as u32).expect("read survives two breaks");
    assert!(got[..] == data[off as usize..(off + MIB) as usize], "bytes differ");
    until_quiet(&remote);
    let t = remote.transfers();
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t[0].broke && t[1].broke && !t[2].broke);
    assert_eq!(t[1].offset, off + 300 * KIB, "resumed where the first broke");
    assert_eq!(t[2].offset, off + 600 * KIB);
    assert_eq!(stat(&stats.resumed), 2);
    assert_eq!(remote.bytes(), MIB, "no byte fetched twice");
}

#[test]
fn a_transfer_that_cannot_start_is_retried_a_few_times_then_fails_the_read_as_eio() {
    let data = pattern((4 * MIB) as usize, 5);
    let remote = FakeRemote::with_file("/b", data.clone());
    let (rp, stats) = read_path(&remote, None, config());
    let f = Arc::new(rp.open(id(&remote, "/b")));
    // Two failed opens (a reset connection): retried, and the read succeeds.
    remote.faults().fail_opens.store(2, Ordering::SeqCst);
    assert_eq!(&rp.read(&f, 0, 4096).expect("retried")[..], &data[..4096]);
    assert_eq!(stat(&stats.retries), 2);
    // Failing for good: a few tries, then the error, with its kind.
    remote.faults().fail_opens.store(u64::MAX, Ordering::SeqCst);
    let err = within(Duration::from_secs(30), {
        let (rp, f) = (Arc::clone(&rp), Arc::clone(&f));
        move || rp.read(&f, 3 * MIB, 4096)
    })
    .expect_err("fails");
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
    assert_eq!(crate::error::FsError::from(err).errno(), libc::EIO);
    remote.faults().fail_opens.store(0, Ordering::SeqCst);
}

#[test]
fn a_refusal_reaches_every_waiter_as_unavailable() {
    let remote = FakeRemote::with_file("/secret", pattern(5000, 1));
    remote.faults().refuse.store(true, Ordering::SeqCst);
    remote.faults().open_delay_us.store(30_000, Ordering::SeqCst);
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/secret"));
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..4).map(|_| s.spawn(|| rp.read(&f, 0, 4096))).collect();
        for r in readers {
            let err = r.join().expect("reader").expect_err("refused");
            assert!(matches!(err, RemoteError::Unavailable(_)), "{err:?}");
            assert_eq!(crate::error::FsError::from(err).errno(), libc::EACCES);
        }
    });
}

#[test]
fn a_stalled_server_fails_a_read_within_its_deadline() {
    let remote = FakeRemote::with_file("/s", pattern((3 * MIB) as usize, 2));
    let timeout = Duration::from_millis(300);
    let (rp, stats) = read_path(&remote, None, ReadConfig { timeout, ..config() });
    let f = rp.open(id(&remote, "/s"));
    remote.faults().stall.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let result = within(Duration::from_secs(15), {
        let rp = Arc::clone(&rp);
        move || rp.read(&f, MIB, 4096)
    });
    let waited = started.elapsed();
    remote.faults().stall.store(false, Ordering::SeqCst);
    let err = result.expect_err("no bytes from a stalled server");
    assert!(matches!(err, RemoteError::Timeout(_)), "{err:?}");
    assert_eq!(crate::error::FsError::from(err).errno(), libc::EIO);
    assert!(waited >= timeout, "waited the whole timeout first");
    drop(stats);
}

#[test]
fn the_kernels_retry_of_a_read_that_timed_out_fails_at_once_and_a_later_read_asks_again() {
    let data = pattern((3 * MIB) as usize, 2);
    let remote = FakeRemote::with_file("/s", data.clone());
    let timeout = Duration::from_millis(300);
    let (rp, _) = read_path(&remote, None, ReadConfig { timeout, ..config() });
    let f = Arc::new(rp.open(id(&remote, "/s")));
    remote.faults().stall.store(true, Ordering::SeqCst);
    let read = |offset: u64, len: u32| {
        let (rp, f) = (Arc::clone(&rp), Arc::clone(&f));
        within(Duration::from_secs(15), move || rp.read(&f, offset, len).map(|d| d.to_vec()))
    };
    let first = read(0, 128 * KIB as u32);
    assert!(matches!(first, Err(RemoteError::Timeout(_))), "{first:?}");
    // The kernel asks again for the first page of the failed read-ahead, at once: a second
    // full wait would make the reader's failure take twice --timeout. The retry gets the same
    // error without asking the server, which would have answered it by now.
    remote.faults().stall.store(false, Ordering::SeqCst);
    let retry = read(0, 4096);
    assert!(matches!(retry, Err(RemoteError::Timeout(_))), "the same error, not the server's answer: {retry:?}");
    // A read after the echo window is served.
    std::thread::sleep(TIMEOUT_ECHO);
    let later = read(0, 4096);
    assert_eq!(later.expect("a later read asks the server again"), data[..4096]);
}

#[test]
fn a_stalled_transfer_fails_a_read_within_its_deadline_but_a_slow_one_does_not() {
    let data = pattern((3 * MIB) as usize, 2);
    let remote = FakeRemote::with_file("/s", data.clone());
    let timeout = Duration::from_millis(300);
    let (rp, _) = read_path(&remote, None, ReadConfig { timeout, ..config() });
    let f = Arc::new(rp.open(id(&remote, "/s")));
    // Slow but moving: 1 MiB at 1 MiB/s takes longer than the timeout, and still succeeds.
    remote.faults().rate.store(MIB, Ordering::SeqCst);
    let got = within(Duration::from_secs(15), {
        let (rp, f) = (Arc::clone(&rp), Arc::clone(&f));
        move || rp.read(&f, 0, MIB as u32)
    });
    assert!(got.expect("a slow transfer keeps the read alive")[..] == data[..MIB as usize]);
}

#[test]
fn a_failing_cache_disk_degrades_to_uncached_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = BlockCache::open(dir.path(), 64 * MIB).expect("cache");
    // The layout directory replaced by a file: every write fails (chmod does not stop root).
    std::fs::remove_dir(dir.path().join("v2")).expect("rmdir");
    std::fs::write(dir.path().join("v2"), b"not a directory").expect("file");
    let size = 6 * MIB + 5;
    let data = pattern(size as usize, 12);
    let remote = FakeRemote::with_file("/d", data.clone());
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let f = rp.open(id(&remote, "/d"));
    assert!(read_all(&rp, &f, size) == data);
    rp.writer.flush();
    assert!(stat(&stats.cache_write_errors) > 0);
    assert!(!rp.writer.usable(), "the cache is off for a while");
    // Still correct afterwards, from memory or the network.
    assert_eq!(&rp.read(&f, 3 * MIB, 4096).expect("read")[..], &data[3 * MIB as usize..3 * MIB as usize + 4096]);
}

#[test]
fn memory_stays_bounded_whatever_the_readers_do() {
    let size = 48 * MIB;
    let (remote, data) = one_file("/m", size, 13, 4);
    let blocks = 12;
    let (rp, _) = read_path(&remote, None, ReadConfig { memory_blocks: blocks, ..config() });
    let f = rp.open(id(&remote, "/m"));
    let g = rp.open(id(&remote, "/m"));
    std::thread::scope(|s| {
        s.spawn(|| assert!(read_all(&rp, &f, size) == data, "sequential bytes"));
        s.spawn(|| {
            for i in 0..40u64 {
                let off = (i * 7_919_003) % size;
                let got = rp.read(&g, off, 70_000).expect("random read");
                assert_eq!(&got[..], &data[off as usize..(off as usize + got.len())]);
            }
        });
    });
    let peak = rp.memory.pool().peak_in_use();
    assert!(peak <= blocks, "{peak} block buffers alive at once, {blocks} allowed");
}

#[test]
fn partial_blocks_survive_a_reopen_of_the_cache_and_a_corrupt_one_is_a_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern((8 * MIB) as usize, 14);
    let remote = FakeRemote::with_file("/p.fits", data.clone());
    let off = 5 * MIB + 2880;
    {
        let (rp, _) = read_path(&remote, Some(BlockCache::open(dir.path(), 64 * MIB).expect("cache")), config());
        let f = rp.open(id(&remote, "/p.fits"));
        assert_eq!(&rp.read(&f, off, 2880).expect("read")[..], &data[off as usize..off as usize + 2880]);
        until_quiet(&remote);
        rp.stop();
    }
    let opens = remote.opens();
    let (rp, _) = read_path(&remote, Some(BlockCache::open(dir.path(), 64 * MIB).expect("cache")), config());
    let f = rp.open(id(&remote, "/p.fits"));
    assert_eq!(&rp.read(&f, off, 2880).expect("cached")[..], &data[off as usize..off as usize + 2880]);
    assert_eq!(remote.opens(), opens, "served from the partial block on disk");
    // Bytes next to it were never fetched: they come from the server.
    assert_eq!(&rp.read(&f, off + 2880, 100).expect("next")[..], &data[(off + 2880) as usize..(off + 2980) as usize]);
    assert_eq!(remote.opens(), opens + 1);
    rp.stop();
    drop(rp);

    // A corrupted block file: a miss, deleted, fetched again, never served.
    let files: Vec<_> = walk(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "blk")).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).expect("block file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&files[0], &bytes).expect("corrupt");
    let (rp, _) = read_path(&remote, Some(BlockCache::open(dir.path(), 64 * MIB).expect("cache")), config());
    let f = rp.open(id(&remote, "/p.fits"));
    assert_eq!(&rp.read(&f, off, 2880).expect("read")[..], &data[off as usize..off as usize + 2880]);
    assert!(remote.opens() > opens + 1, "fetched again, not served from the bad file");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_file_whose_time_changed_but_not_its_size_is_reported_stale() {
    let remote = FakeRemote::with_file("/t", pattern(3000, 1));
    let old = id(&remote, "/t");
    // Replaced on the server with other bytes of the same size: a new time.
    remote.put("/t", pattern(3000, 2));
    assert_eq!(remote.version("/t").map(|v| v.size), Some(3000));
    assert_ne!(remote.version("/t").map(|v| v.mtime), Some(old.mtime));
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(old);
    let err = rp.read(&f, 0, 100).expect_err("stale");
    assert!(matches!(err, RemoteError::Changed(_)), "{err:?}");
    assert_eq!(crate::error::FsError::from(err).errno(), libc::ESTALE);
}

#[test]
fn files_have_distinct_modification_times() {
    let remote = FakeRemote::default();
    remote.put("/a", vec![1]);
    remote.put("/b", vec![1]);
    assert_ne!(remote.version("/a").map(|v| v.mtime), remote.version("/b").map(|v| v.mtime));
}

#[test]
fn a_re_read_never_goes_back_to_the_network() {
    let data = pattern((3 * MIB) as usize, 1);
    let remote = FakeRemote::with_file("/f", data.clone());
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/f"));
    rp.read(&f, 100, 5000).expect("first read");
    until_quiet(&remote);
    let before = remote.bytes();
    assert_eq!(&rp.read(&f, 100, 5000).expect("re-read")[..], &data[100..5100]);
    assert_eq!(remote.bytes(), before);
}

#[test]
fn a_whole_file_read_through_the_disk_cache_is_byte_exact_after_a_remount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 5 * MIB + 3;
    let data = pattern(size as usize, 11);
    let remote = FakeRemote::with_file("/p", data.clone());
    {
        let (rp, _) = read_path(&remote, Some(BlockCache::open(dir.path(), 1 << 30).expect("cache")), config());
        let f = rp.open(id(&remote, "/p"));
        assert!(read_all(&rp, &f, size) == data);
        until_quiet(&remote);
        rp.stop();
    }
    let before = remote.bytes();
    let (rp, _) = read_path(&remote, Some(BlockCache::open(dir.path(), 1 << 30).expect("cache")), config());
    let f = rp.open(id(&remote, "/p"));
    assert!(read_all(&rp, &f, size) == data);
    assert_eq!(remote.bytes(), before, "zero bytes on the wire after a remount");
}

#[test]
fn reads_across_blocks_and_past_the_end_return_the_right_bytes() {
    let size = MIB + 10;
    let data = pattern(size as usize, 2);
    let remote = FakeRemote::with_file("/e", data.clone());
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/e"));
    assert_eq!(&rp.read(&f, MIB - 100, 4096).expect("across")[..], &data[(MIB - 100) as usize..]);
    assert!(rp.read(&f, size, 10).expect("eof").is_empty());
    assert!(rp.read(&f, size + 100, 10).expect("past eof").is_empty());
}

#[test]
fn a_random_reader_is_served_while_stripes_hold_every_connection() {
    let size = 128 * MIB;
    let (remote, data) = one_file("/big", size, 15, 2);
    remote.faults().rate.store(8 * MIB, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let seq = rp.open(id(&remote, "/big"));
    let mut off = 0;
    // Far enough that both stripes fetch at full speed (and hold both connections).
    while off < 10 * MIB {
        off += rp.read(&seq, off, MIB as u32).expect("read").len() as u64;
    }
    let random = rp.open(id(&remote, "/big"));
    let far = 100 * MIB + 7;
    let got = within(Duration::from_secs(15), {
        let rp = Arc::clone(&rp);
        move || rp.read(&random, far, 4096).map(|d| d.to_vec())
    });
    assert_eq!(got.expect("served")[..], data[far as usize..far as usize + 4096]);
    assert!(stat(&stats.cancelled) >= 1, "a stripe made room");
    // And the sequential reader still gets the right bytes.
    assert_eq!(&rp.read(&seq, off, 4096).expect("read")[..], &data[off as usize..off as usize + 4096]);
    rp.release(&seq);
    until_quiet(&remote);
}

#[test]
fn a_reader_that_pauses_loses_its_stripes_and_gets_new_ones_when_it_reads_on() {
    let size = 512 * MIB;
    let data = pattern(size as usize, 16);
    let remote = FakeRemote::with_file("/big", data.clone());
    // Slow enough that the stripes are far from their ends when the reader pauses.
    remote.faults().rate.store(MIB, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/big"));
    let mut off = 0;
    while off < 4 * MIB {
        off += rp.read(&f, off, MIB as u32).expect("read").len() as u64;
    }
    // Not a read for longer than the idle limit: the stripes stop by themselves.
    std::thread::sleep(fetch::IDLE_STOP + Duration::from_millis(500));
    until_quiet(&remote);
    assert!(stat(&stats.cancelled) > 0, "stripes stopped while the reader paused");
    let stripes_before = remote.transfers().iter().filter(|x| matches!(x.intent, Intent::Run { .. })).count();
    assert!(stripes_before > 0);
    // Reading on: the run starts again, with new stripes from where the reader is.
    let target = off + 4 * MIB;
    while off < target {
        let got = rp.read(&f, off, MIB as u32).expect("read on");
        assert!(got[..] == data[off as usize..off as usize + got.len()], "bytes at {off}");
        off += got.len() as u64;
    }
    rp.release(&f);
    until_quiet(&remote);
    let t = remote.transfers();
    let stripes_after = t.iter().filter(|x| matches!(x.intent, Intent::Run { .. })).count();
    assert!(stripes_after > stripes_before, "new stripes: {t:?}");
}

#[test]
fn a_reader_that_stops_after_a_few_mib_leaves_the_other_stripes_unopened() {
    let size = 256 * MIB;
    let (remote, data) = one_file("/big", size, 17, 8);
    let (_dir, disk) = big_disk_cache();
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let f = rp.open(id(&remote, "/big"));
    let mut off = 0;
    while off < 4 * MIB {
        let got = rp.read(&f, off, MIB as u32).expect("read");
        assert!(got[..] == data[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
    // As `head -c 4M` does: a short pause for the last reply, then close.
    std::thread::sleep(Duration::from_millis(100));
    rp.release(&f);
    until_quiet(&remote);
    let t = remote.transfers();
    assert!(t.len() <= 3, "only the transfers near the reader opened: {t:?}");
    assert!(remote.bytes() <= 4 * MIB + 8 * MIB + MIB, "fetched {} bytes for 4 MiB read: {t:?}", remote.bytes());
    assert!(stat(&stats.stripes) >= 1);
}

#[test]
fn a_reader_that_turns_sequential_gets_every_connection_logged_in_before_its_stripes_open() {
    let size = 256 * MIB;
    let (remote, data) = one_file("/big", size, 19, 8);
    let (_dir, disk) = big_disk_cache();
    let (rp, _) = read_path(&remote, Some(disk), config());
    let f = rp.open(id(&remote, "/big"));
    // Random reads (a FITS header, then another) log in nothing ahead.
    let off = 100 * MIB;
    assert!(rp.read(&f, off, 4096).expect("read")[..] == data[off as usize..off as usize + 4096]);
    assert!(rp.read(&f, 0, 4096).expect("read")[..] == data[..4096]);
    assert_eq!(remote.prepared(), 0, "a random reader wants one connection");
    let mut off = 0;
    while off < 3 * MIB {
        let got = rp.read(&f, off, MIB as u32).expect("read");
        assert!(got[..] == data[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
    // Its other stripes wait for the ramp (`FULL_SPEED_AFTER`), their connections do not.
    assert_eq!(remote.prepared(), 8, "every connection asked for when the stripes were planned");
    assert!(remote.transfers().len() <= 4, "{:?}", remote.transfers());
    rp.release(&f);
    until_quiet(&remote);
}

#[test]
fn a_connection_whose_stripe_ended_takes_over_the_end_of_the_stripe_that_ends_last() {
    let size = 48 * MIB;
    let (remote, data) = one_file("/tail", size, 23, 4);
    // The first stripe starts about a second before the others (they wait until the reader
    // has read `FULL_SPEED_AFTER`), so it ends that much sooner: the tail.
    remote.faults().rate.store(8 * MIB, Ordering::SeqCst);
    remote.faults().open_delay_us.store(5_000, Ordering::SeqCst);
    let (_dir, disk) = big_disk_cache();
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let t = copy_whole(&rp, &remote, "/tail", &data);
    let shortened: Vec<&Transfer> =
        t.iter().filter(|x| matches!(x.intent, Intent::Run { end } if x.offset + x.delivered < end)).collect();
    assert!(!shortened.is_empty(), "a stripe handed its end to a free connection: {t:?}");
    for x in shortened {
        let stop = x.offset + x.delivered;
        assert_eq!(x.closed_early_at, Some(stop), "{x:?}");
        assert_eq!(x.told_end, Some(stop), "the transport learnt the stripe's new end: {x:?}");
        assert!(t.iter().any(|y| y.offset == stop && matches!(y.intent, Intent::Run { .. })), "{t:?}");
    }
    // Still: every transfer ends where the next begins, and only the last one reaches EOF.
    assert_eq!(stat(&stats.cancelled), 0);
    assert_eq!(stat(&stats.planned_ends), t.len() as u64 - 1, "{t:?}");
    assert_eq!(t.iter().filter(|x| x.closed_early_at.is_none()).count(), 1, "{t:?}");
}

#[test]
fn a_slow_stripe_keeps_only_what_it_fetches_while_the_connection_taking_over_its_end_opens() {
    let size = 48 * MIB;
    let (remote, data) = one_file("/unequal", size, 29, 4);
    // One stripe gets a thirty-second of the others' rate, as one of several streams sharing
    // a shallow queue can. The 4th open is a stripe opened when the ramp ended.
    remote.faults().rate.store(32 * MIB, Ordering::SeqCst);
    remote.faults().slow_rate.store(MIB, Ordering::SeqCst);
    remote.faults().slow_open.store(4, Ordering::SeqCst);
    remote.faults().open_delay_us.store(5_000, Ordering::SeqCst);
    let (_dir, disk) = big_disk_cache();
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let t = copy_whole(&rp, &remote, "/unequal", &data);
    let slow = t.iter().find(|x| x.slow).unwrap_or_else(|| panic!("a slow transfer: {t:?}"));
    assert!(slow.told_end.is_some(), "the slow stripe handed over its end: {t:?}");
    // Halved, it would have kept 5 MiB or more and been split again and again as connections
    // came free. It keeps what it fetches while the new transfer opens, rounded up to a block
    // past the one it fills, and is split once.
    assert_eq!(slow.times_told, 1, "{slow:?}");
    assert!(slow.delivered <= 2 * MIB, "the slow stripe fetched {} bytes: {t:?}", slow.delivered);
    assert_eq!(stat(&stats.cancelled), 0);
    assert_eq!(stat(&stats.planned_ends), t.len() as u64 - 1, "{t:?}");
}

#[test]
fn a_reader_waiting_longer_than_the_idle_limit_for_a_slow_stripe_keeps_its_run() {
    let size = 48 * MIB;
    let (remote, data) = one_file("/trickle", size, 31, 4);
    // The 4th open, a stripe opened when the ramp ended, trickles: a 1 MiB read from it
    // waits about 4 s, longer than `IDLE_STOP`, while the transfer keeps making progress.
    remote.faults().rate.store(32 * MIB, Ordering::SeqCst);
    remote.faults().slow_rate.store(256 * KIB, Ordering::SeqCst);
    remote.faults().slow_open.store(4, Ordering::SeqCst);
    remote.faults().open_delay_us.store(5_000, Ordering::SeqCst);
    let (_dir, disk) = big_disk_cache();
    let (rp, stats) = read_path(&remote, Some(disk), config());
    let t = copy_whole(&rp, &remote, "/trickle", &data);
    assert!(t.iter().any(|x| x.slow), "a slow transfer: {t:?}");
    // Waiting for bytes is reading: no stripe was stopped as if the reader had paused, and
    // every transfer ended where it was planned to.
    assert_eq!(stat(&stats.cancelled), 0, "{t:?}");
    assert_eq!(stat(&stats.planned_ends), t.len() as u64 - 1, "{t:?}");
}

/// A two-HDU FITS file: a one-record primary header over `data_len` bytes of 8-bit data,
/// then an extension header, then `tail` bytes of pattern. Returns the bytes and where the
/// extension header begins.
fn two_hdu_fits(data_len: u64, tail: usize) -> (Vec<u8>, u64) {
    let card = |s: String| format!("{s:<80}");
    let header = |cards: &[String]| {
        let mut h: String = cards.concat();
        h.push_str(&card("END".into()));
        while !h.len().is_multiple_of(2880) {
            h.push(' ');
        }
        h.into_bytes()
    };
    let mut bytes = header(&[
        card(format!("{:<8}= {:>20}", "SIMPLE", "T")),
        card(format!("{:<8}= {:>20}", "BITPIX", "8")),
        card(format!("{:<8}= {:>20}", "NAXIS", "1")),
        card(format!("{:<8}= {:>20}", "NAXIS1", data_len)),
        card(format!("{:<8}= {:>20}", "EXTEND", "T")),
    ]);
    bytes.extend(pattern(data_len as usize, 5));
    bytes.resize(bytes.len().div_ceil(2880) * 2880, 0);
    let next = bytes.len() as u64;
    bytes.extend(header(&[
        card(format!("{:<8}= {:>20}", "XTENSION", "'IMAGE   '")),
        card(format!("{:<8}= {:>20}", "BITPIX", "8")),
        card(format!("{:<8}= {:>20}", "NAXIS", "0")),
    ]));
    bytes.extend(pattern(tail, 6));
    (bytes, next)
}

/// Waits (bounded) until the fake has opened `n` transfers.
fn until_opened(remote: &FakeRemote, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while remote.opens() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// astropy's `getheader(path, ext=1)`: the first header, then a seek to the next one, which
/// must already be on its way (or here) when the reader asks for it.
fn reads_the_next_fits_header_ahead(parallelism: usize) {
    let (data, next) = two_hdu_fits(4 * MIB + 1000, (MIB / 2) as usize);
    let remote = FakeRemote::with_file("/two.fits", data.clone());
    remote.set_parallelism(parallelism);
    remote.faults().open_delay_us.store(5_000, Ordering::SeqCst);
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/two.fits"));
    let got = rp.read(&f, 0, 2880).expect("first header");
    assert_eq!(&got[..], &data[..2880]);
    // astropy closes the file and opens it again for the extension.
    rp.release(&f);
    // Nobody has asked for the second header yet: it is fetched anyway.
    until_opened(&remote, 2);
    assert_eq!(remote.opens(), 2, "the next header was fetched before it was read");
    let f = rp.open(id(&remote, "/two.fits"));
    let len = 64 * 1024;
    let got = rp.read(&f, next, len as u32).expect("second header");
    assert_eq!(&got[..], &data[next as usize..next as usize + len]);
    rp.release(&f);
    until_quiet(&remote);
    let t = remote.transfers();
    assert_eq!(t.len(), 2, "the read of the second header opened no transfer of its own: {t:?}");
    let ahead = t.iter().find(|x| x.offset != 0).expect("the prefetch");
    assert_eq!(ahead.offset, next - next % 4096, "from the page the header starts in");
    assert!(matches!(ahead.intent, Intent::Peek { len } if len <= 72 * KIB), "a small range: {ahead:?}");
    assert!(remote.bytes() <= 2880 + 72 * KIB, "{} bytes fetched: {t:?}", remote.bytes());
    assert_eq!((stat(&stats.prefetches), stat(&stats.stripes)), (1, 0));
}

#[test]
fn the_next_fits_header_is_fetched_ahead_on_a_free_connection() {
    reads_the_next_fits_header_ahead(4);
}

#[test]
fn the_next_fits_header_is_fetched_ahead_on_the_one_connection_once_it_is_free() {
    // With no other connection free, the prefetch waits for the first transfer's rather
    // than opening (logging in) another.
    reads_the_next_fits_header_ahead(1);
}

#[test]
fn files_that_are_not_fits_or_malformed_fits_are_read_as_before() {
    let (fits, _) = two_hdu_fits(2 * MIB, 4096);
    let mut bad_bitpix = fits.clone();
    bad_bitpix[80 + 29] = b'7';
    let mut no_end = fits.clone();
    no_end[5 * 80..5 * 80 + 3].copy_from_slice(b"XND");
    for (name, data) in [("plain", pattern((4 * MIB) as usize, 9)), ("bad_bitpix", bad_bitpix), ("no_end", no_end)] {
        let path = format!("/{name}");
        let remote = FakeRemote::with_file(&path, data.clone());
        let (rp, stats) = read_path(&remote, None, config());
        let f = rp.open(id(&remote, &path));
        let got = rp.read(&f, 0, 64 * 1024).expect("read");
        assert_eq!(&got[..], &data[..64 * 1024], "{name}");
        rp.release(&f);
        until_quiet(&remote);
        assert_eq!(remote.opens(), 1, "{name}: {:?}", remote.transfers());
        assert_eq!(remote.bytes(), 64 * KIB, "{name}");
        assert_eq!(stat(&stats.prefetches), 0, "{name}");
    }
}

#[test]
fn a_fits_file_that_ends_after_its_primary_hdu_gets_no_prefetch() {
    let (data, next) = two_hdu_fits(MIB, 0);
    let data = data[..next as usize].to_vec();
    let remote = FakeRemote::with_file("/one.fits", data.clone());
    let (rp, stats) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/one.fits"));
    assert_eq!(&rp.read(&f, 0, 2880).expect("read")[..], &data[..2880]);
    rp.release(&f);
    until_quiet(&remote);
    assert_eq!((remote.opens(), stat(&stats.prefetches)), (1, 0));
}

#[test]
fn a_read_whose_first_block_is_filled_to_its_end_fetches_only_from_the_next_block() {
    let (remote, data) = one_file("/f", 3 * MIB, 41, 4);
    let (rp, _) = read_path(&remote, None, config());
    let f = rp.open(id(&remote, "/f"));
    // A random read of exactly block 0: it is then in memory, filled to its end; block 1 is not.
    assert!(*rp.read(&f, 0, MIB as u32).expect("read") == data[..MIB as usize]);
    until_quiet(&remote);
    assert_eq!(remote.transfers().len(), 1);
    // The bytes from 512 KiB to the end of block 0 are there: only block 1 is fetched. (The
    // check of what is filled once stopped at the missing block and counted nothing, and a
    // second transfer fetched block 0's bytes again.)
    let streams = rp.fetcher.ensure(&f.file, 512 * KIB, 2 * MIB);
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote.transfers().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in &streams {
        s.stop_waiting();
    }
    until_quiet(&remote);
    let offsets: Vec<u64> = remote.transfers().iter().map(|t| t.offset).collect();
    assert_eq!(offsets, vec![0, MIB], "{:?}", remote.transfers());
    rp.release(&f);
}
