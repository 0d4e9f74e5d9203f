//! `mastfs-wanlink`: a packet-level WAN link for `scripts/bench`. A benchmark tool, not part of
//! the file system; it needs root.
//!
//! This kernel has no `sch_netem`, and a TCP relay ends connections locally (new connections skip
//! slow start, handshakes look cheap). So the servers live in a network namespace of their own,
//! reached through two TUN devices, one on each side, and this program moves every IP packet
//! from one device to the other after holding it for RTT/2. Optionally each direction also has a
//! rate: packets are serialised at that rate through a byte-counted drop-tail queue (one
//! bandwidth-delay product by default), so too many streams lose packets and too few leave the
//! link idle, as on a real bottleneck.
//!
//! Segments stay real: the devices run with `IFF_VNET_HDR`. Without a rate the devices offer
//! TSO, so the sending kernel hands over whole TSO bursts (up to 64 KiB, `gso_size` = the MSS of
//! a 1500-byte MTU) that are passed on as one GSO packet, which the receiving kernel takes like a
//! GRO-merged one. Congestion control still counts MSS-sized segments (initial window 10
//! segments, slow start, delayed ACKs per segment); only the number of system calls per byte
//! drops. With a rate, TSO is off, so the kernel segments before this program sees a packet and
//! every 1500-byte segment is queued, paced or dropped on its own.
//!
//! Once ready it prints one JSON line (addresses, devices, the namespace's path for `nsenter
//! --net=`, the control socket). A connection to the control socket gets one JSON line of
//! counters per direction: packets, IP bytes, wire bytes (TSO bursts counted as the segments they
//! stand for), TCP payload bytes, drops, packets held right now; and the kernel's drop counters
//! of both devices. It runs until SIGTERM, SIGINT or SIGHUP, or until its parent dies; then it
//! ends every process still inside its namespace (only what its user started there can be in
//! it), and the devices and the namespace vanish with their last user. The devices are not
//! persistent, so they vanish even if this program is killed with SIGKILL.
//!
//! Threads: `main` (set-up, then waits for a stop event, then cleans up), `netns` (the one
//! thread inside the namespace; it stays alive so that its `/proc` path names the namespace),
//! `up` and `down` (one per direction: read one device, hold, write the other), `control`
//! (answers the counters), and signal-hook's signal thread. There are no locks: counters are
//! atomics and each direction's queue belongs to its thread.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

/// virtio_net_hdr without `num_buffers`: the TUN default.
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// The devices' own transmit rings. The kernel drops (not queues) when one is full, which would
/// be a loss this program did not decide, so they are deep; the `kernel` counters show any.
const TX_QUEUE_LEN: i32 = 20_000;
/// Longest a worker sleeps without looking at the stop flag.
const MAX_NAP: Duration = Duration::from_millis(100);
/// Packets read in one go before due packets get their turn.
const READ_BURST: usize = 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Offload {
    /// TSO without a rate, checksum offload only with one
    Auto,
    /// TSO bursts pass as one packet (fewest system calls)
    Tso,
    /// Every segment is its own packet; checksums are left to the receiver
    Csum,
    /// Every segment is its own packet with a computed checksum
    None,
}

#[derive(Parser, Debug)]
#[command(
    name = "mastfs-wanlink",
    about = "Packet-level WAN link for scripts/bench: a network namespace reached through two TUN devices, \
every packet delayed by RTT/2 each way, optionally paced at a rate through a drop-tail queue"
)]
struct Args {
    /// Round-trip time added by the link, in milliseconds (half each way)
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,

    /// Link rate in Mbit/s each way; 0 = no rate limit and no queue
    #[arg(long, default_value_t = 0.0)]
    rate_mbit: f64,

    /// Drop-tail queue per direction in bytes [default: one bandwidth-delay product]
    #[arg(long)]
    queue_bytes: Option<u64>,

    /// MTU of both devices
    #[arg(long, default_value_t = 1500)]
    mtu: i32,

    /// Segmentation offload on the devices
    #[arg(long, value_enum, default_value = "auto")]
    offload: Offload,

    /// UNIX socket that answers the counters [default: /run/mastfs-wanlink-PID.sock]
    #[arg(long)]
    control: Option<PathBuf>,

    /// Third octet N of the link's addresses 198.18.N.1 (this side) and 198.18.N.2 (the
    /// namespace) [default: the first N not in use]. 198.18.0.0/15 is reserved for benchmarks.
    #[arg(long)]
    subnet: Option<u8>,

    /// Microseconds between the forwarder's rounds while packets are in flight (see
    /// `Direction::run`); 0 wakes up for every packet
    #[arg(long, default_value_t = 250)]
    tick_us: u64,

    /// Do not run the forwarding threads at real-time priority (SCHED_FIFO 1). With it, a
    /// loaded machine does not add scheduling delay to the link.
    #[arg(long)]
    no_realtime: bool,
}

// ------------------------------------------------------------------ the link model

/// One direction of the link: when a packet that arrives now leaves the far end, if at all.
#[derive(Debug)]
struct LinkModel {
    delay: Duration,
    /// Bytes per second; `None` is an unlimited link with no queue.
    rate: Option<f64>,
    queue_cap: u64,
    /// When the serialiser finishes what it has been given.
    free_at: Option<Instant>,
}

impl LinkModel {
    fn new(delay: Duration, rate: Option<f64>, queue_cap: u64) -> Self {
        LinkModel { delay, rate, queue_cap, free_at: None }
    }

    /// The time a packet of `wire` bytes arriving at `now` is delivered, or `None` when the
    /// drop-tail queue has no room for it. The backlog is what is not yet serialised, the
    /// packet on the wire included; an empty queue takes any packet.
    fn admit(&mut self, now: Instant, wire: u64) -> Option<Instant> {
        let Some(rate) = self.rate else {
            return Some(now + self.delay);
        };
        let start = self.free_at.filter(|t| *t > now).unwrap_or(now);
        let backlog = (start - now).as_secs_f64() * rate;
        if backlog > 0.0 && backlog + wire as f64 > self.queue_cap as f64 {
            return None;
        }
        let done = start + Duration::from_secs_f64(wire as f64 / rate);
        self.free_at = Some(done);
        Some(done + self.delay)
    }
}

/// What one packet read from a device stands for on a real wire.
#[derive(Debug, PartialEq, Eq, Default, Clone, Copy)]
struct PacketSize {
    /// Bytes of the IP packet as read (a TSO burst is one packet).
    ip: u64,
    /// Bytes on a wire: a TSO burst as the segments it stands for, each with its headers.
    wire: u64,
    /// TCP payload bytes (TLS records, FTP commands and replies).
    payload: u64,
}

/// Sizes of an IP packet that followed a virtio_net_hdr with these `gso_type` and `gso_size`.
fn packet_size(ip: &[u8], gso_type: u8, gso_size: u16) -> PacketSize {
    let len = ip.len() as u64;
    let plain = PacketSize { ip: len, wire: len, payload: 0 };
    let Some(&first) = ip.first() else {
        return plain;
    };
    let (ip_hdr, proto) = match first >> 4 {
        4 if ip.len() >= 20 => (usize::from(first & 0x0f) * 4, ip[9]),
        6 if ip.len() >= 40 => (40, ip[6]),
        _ => return plain,
    };
    if proto != 6 || ip.len() < ip_hdr + 20 {
        return plain;
    }
    let headers = ip_hdr + usize::from(ip[ip_hdr + 12] >> 4) * 4;
    if ip.len() < headers {
        return plain;
    }
    let payload = (ip.len() - headers) as u64;
    let segments = if gso_type != VIRTIO_NET_HDR_GSO_NONE && gso_size > 0 {
        payload.div_ceil(u64::from(gso_size)).max(1)
    } else {
        1
    };
    PacketSize { ip: len, wire: payload + segments * headers as u64, payload }
}

// ------------------------------------------------------------------ counters

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    ip_bytes: AtomicU64,
    wire_bytes: AtomicU64,
    payload_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_wire_bytes: AtomicU64,
    held_packets: AtomicU64,
    held_wire_bytes: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "packets": g(&self.packets),
            "ip_bytes": g(&self.ip_bytes),
            "wire_bytes": g(&self.wire_bytes),
            "payload_bytes": g(&self.payload_bytes),
            "dropped_packets": g(&self.dropped_packets),
            "dropped_wire_bytes": g(&self.dropped_wire_bytes),
            "held_packets": g(&self.held_packets),
            "held_wire_bytes": g(&self.held_wire_bytes),
            "write_errors": g(&self.write_errors),
        })
    }
}

// ------------------------------------------------------------------ system calls

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device name too long: {name}")));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

/// Creates TUN device `name` in the calling thread's network namespace; it lives as long as the
/// returned descriptor.
fn open_tun(name: &str, offload: Offload) -> io::Result<OwnedFd> {
    // SAFETY: a plain open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(os_err("open /dev/net/tun"));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(os_err(&format!("TUNSETIFF {name}")));
    }
    let flags = match offload {
        Offload::Tso => libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
        Offload::Csum => libc::TUN_F_CSUM,
        Offload::None | Offload::Auto => 0,
    };
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(os_err(&format!("TUNSETOFFLOAD {name}")));
    }
    Ok(fd)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Interface ioctls of the calling thread's namespace.
struct IfCtl(OwnedFd);

impl IfCtl {
    fn new() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err("socket"));
        }
        // SAFETY: fd was just created and is owned by nothing else.
        Ok(IfCtl(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, req: libc::c_ulong, ifr: &mut libc::ifreq, what: &str) -> io::Result<()> {
        // SAFETY: every request used here reads or writes one ifreq.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), req, ifr as *mut libc::ifreq) } < 0 {
            return Err(os_err(what));
        }
        Ok(())
    }

    fn up(&self, name: &str) -> io::Result<()> {
        let mut ifr = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut ifr, &format!("SIOCGIFFLAGS {name}"))?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut ifr, &format!("SIOCSIFFLAGS {name}"))
    }

    /// A point-to-point device: `addr` here, `peer` at the other end, so the kernel routes
    /// `peer` (and only it) through this device.
    fn configure(&self, name: &str, addr: Ipv4Addr, peer: Ipv4Addr, mtu: i32) -> io::Result<()> {
        let mut ifr = ifreq(name)?;
        ifr.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut ifr, &format!("SIOCSIFADDR {name}"))?;
        let mut ifr = ifreq(name)?;
        ifr.ifr_ifru.ifru_dstaddr = sockaddr(peer);
        self.ioctl(libc::SIOCSIFDSTADDR, &mut ifr, &format!("SIOCSIFDSTADDR {name}"))?;
        let mut ifr = ifreq(name)?;
        ifr.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::BROADCAST);
        self.ioctl(libc::SIOCSIFNETMASK, &mut ifr, &format!("SIOCSIFNETMASK {name}"))?;
        let mut ifr = ifreq(name)?;
        ifr.ifr_ifru.ifru_mtu = mtu;
        self.ioctl(libc::SIOCSIFMTU, &mut ifr, &format!("SIOCSIFMTU {name}"))?;
        let mut ifr = ifreq(name)?;
        // ifr_qlen shares the union with ifr_ifindex.
        ifr.ifr_ifru.ifru_ifindex = TX_QUEUE_LEN;
        self.ioctl(libc::SIOCSIFTXQLEN, &mut ifr, &format!("SIOCSIFTXQLEN {name}"))?;
        self.up(name)
    }
}

/// IPv6 would add router solicitations and the like to the link's counters; the bench uses IPv4.
/// /proc/sys/net follows the calling thread's namespace.
fn disable_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) cannot fail.
    unsafe { libc::gettid() }
}

/// Per-thread: wake-ups from the poll timeout land within a microsecond of the due time.
fn tighten_timer_slack() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn set_realtime() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: 0 is the calling thread; param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(os_err("sched_setscheduler"));
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passed (nanosecond resolution, unlike poll(2)).
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd and a valid timespec; no signal mask change.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

// ------------------------------------------------------------------ forwarding

struct Held {
    due: Instant,
    packet: Box<[u8]>,
    size: PacketSize,
}

struct Direction {
    name: &'static str,
    input: Arc<OwnedFd>,
    output: Arc<OwnedFd>,
    model: LinkModel,
    counters: Arc<Counters>,
}

impl Direction {
    fn deliver(&self, packet: &[u8], size: PacketSize) {
        let c = &self.counters;
        loop {
            match write_fd(self.output.as_raw_fd(), packet) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if c.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("mastfs-wanlink: {}: write: {e}", self.name);
                    }
                    return;
                }
            }
        }
        c.packets.fetch_add(1, Ordering::Relaxed);
        c.ip_bytes.fetch_add(size.ip, Ordering::Relaxed);
        c.wire_bytes.fetch_add(size.wire, Ordering::Relaxed);
        c.payload_bytes.fetch_add(size.payload, Ordering::Relaxed);
    }

    /// Reads every packet waiting on the input (up to `READ_BURST`), stamped `arrived`; without a
    /// delay or rate they go straight out.
    fn drain(
        &mut self,
        buf: &mut [u8],
        held: &mut VecDeque<Held>,
        arrived: Instant,
        pass_through: bool,
    ) -> io::Result<usize> {
        let c = Arc::clone(&self.counters);
        let mut got = 0;
        while got < READ_BURST {
            let n = match read_fd(self.input.as_raw_fd(), buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: read: {e}", self.name))),
            };
            got += 1;
            if n <= VNET_HDR_LEN {
                continue;
            }
            let gso_size = u16::from_ne_bytes([buf[4], buf[5]]);
            let size = packet_size(&buf[VNET_HDR_LEN..n], buf[1], gso_size);
            if pass_through {
                self.deliver(&buf[..n], size);
                continue;
            }
            match self.model.admit(arrived, size.wire) {
                Some(due) => {
                    c.held_packets.fetch_add(1, Ordering::Relaxed);
                    c.held_wire_bytes.fetch_add(size.wire, Ordering::Relaxed);
                    held.push_back(Held { due, packet: buf[..n].into(), size });
                }
                None => {
                    c.dropped_packets.fetch_add(1, Ordering::Relaxed);
                    c.dropped_wire_bytes.fetch_add(size.wire, Ordering::Relaxed);
                }
            }
        }
        Ok(got)
    }

    /// The direction's loop. With a tick, a busy link is served once per tick instead of once per
    /// packet: on this 2-core VM a wake-up costs more than forwarding a packet (measured: a third
    /// of the forwarder's CPU in context switches at one wake-up per packet). A packet read at a
    /// tick arrived at some time since the previous one and is stamped with the middle of that
    /// interval; a packet is delivered at the tick nearest its due time. So each packet's one-way
    /// delay is exact on average and off by at most one tick; admission, pacing and drops follow
    /// the stamped times. An idle link waits for its first packet, which is stamped exactly.
    fn run(mut self, stop: &AtomicBool, realtime: bool, tick: Duration) -> io::Result<()> {
        tighten_timer_slack();
        if realtime && let Err(e) = set_realtime() {
            eprintln!("mastfs-wanlink: {}: no real-time priority ({e}); continuing without", self.name);
        }
        let mut buf = vec![0u8; VNET_HDR_LEN + 65_536 + 1024];
        let mut held: VecDeque<Held> = VecDeque::new();
        let pass_through = self.model.delay.is_zero() && self.model.rate.is_none();
        let c = Arc::clone(&self.counters);
        let mut last = Instant::now();
        let mut woke_on_input = true;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let arrived = if woke_on_input || tick.is_zero() { now } else { last + (now - last) / 2 };
            let got = self.drain(&mut buf, &mut held, arrived, pass_through)?;
            last = now;
            let horizon = now + tick / 2;
            while held.front().is_some_and(|h| h.due <= horizon) {
                if let Some(h) = held.pop_front() {
                    self.deliver(&h.packet, h.size);
                    c.held_packets.fetch_sub(1, Ordering::Relaxed);
                    c.held_wire_bytes.fetch_sub(h.size.wire, Ordering::Relaxed);
                }
            }
            if got == READ_BURST {
                woke_on_input = false;
                continue;
            }
            let next_due = held.front().map(|h| h.due);
            if tick.is_zero() || pass_through || (next_due.is_none() && got == 0) {
                let nap = next_due.map_or(MAX_NAP, |d| d.saturating_duration_since(Instant::now())).min(MAX_NAP);
                wait_readable(self.input.as_raw_fd(), nap);
                woke_on_input = true;
            } else {
                let wake = next_due.map_or(now + tick, |d| (d - tick / 2).min(now + tick));
                let nap = wake.saturating_duration_since(Instant::now());
                if !nap.is_zero() {
                    thread::sleep(nap);
                }
                woke_on_input = false;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ control socket

/// Transmit/receive drop counters of the devices, from the namespace each lives in.
fn kernel_drops(net_dev: &Path, dev: &str) -> Value {
    let text = std::fs::read_to_string(net_dev).unwrap_or_default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.trim() != dev {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() >= 12 {
            return json!({ "rx_dropped": f[3], "tx_dropped": f[11] });
        }
    }
    Value::Null
}

struct Stats {
    up: Arc<Counters>,
    down: Arc<Counters>,
    client_dev: String,
    server_dev: String,
    ns_tid: i32,
    started: Instant,
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "up": self.up.json(),
            "down": self.down.json(),
            "kernel": {
                "client_dev": kernel_drops(Path::new("/proc/self/net/dev"), &self.client_dev),
                "server_dev": kernel_drops(&PathBuf::from(format!("/proc/self/task/{}/net/dev", self.ns_tid)), &self.server_dev),
            },
        })
    }
}

fn serve_control(listener: UnixListener, stats: Stats) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        // Any request line (or none) gets the counters.
        let _ = BufReader::new(&conn).read_line(&mut line);
        let _ = conn.write_all(format!("{}\n", stats.json()).as_bytes());
    }
}

// ------------------------------------------------------------------ set-up and clean-up

/// Third octets of 198.18.N.x addresses already on this side's devices.
fn subnets_in_use() -> Vec<u8> {
    let mut used = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return used;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of at least its family's size.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let a = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).octets();
                if a[0] == 198 && a[1] == 18 {
                    used.push(a[2]);
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    used
}

/// Ends every process in the namespace whose identity is `ns` ("net:[inode]"): the servers the
/// bench started there. Polite first, then SIGKILL.
fn end_processes_in(ns: &str) {
    let me = std::process::id();
    let find = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == ns))
            .filter_map(|pid| i32::try_from(pid).ok())
            .collect()
    };
    for (sig, wait) in [(libc::SIGTERM, Duration::from_secs(3)), (libc::SIGKILL, Duration::from_secs(3))] {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            // SAFETY: kill(2) on a pid that is in our own namespace.
            unsafe { libc::kill(*pid, sig) };
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !find().is_empty() {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let left = find();
    if !left.is_empty() {
        eprintln!("mastfs-wanlink: processes still in the namespace after SIGKILL: {left:?}");
    }
}

enum Event {
    Stop,
    Failed(String),
}

/// The namespace side: its thread, identity and device.
struct Namespace {
    tid: i32,
    /// "net:[inode]", as /proc/PID/ns/net reads for every process inside.
    id: String,
    server_fd: OwnedFd,
    keeper: thread::JoinHandle<()>,
    keeper_exit: mpsc::Sender<()>,
}

impl Namespace {
    /// Builds the namespace side in a thread of its own: unshare(CLONE_NEWNET) moves only the
    /// calling thread, and a TUN device belongs to the namespace of whoever opened /dev/net/tun.
    fn create(dev: String, addr: Ipv4Addr, peer: Ipv4Addr, mtu: i32, offload: Offload) -> io::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(i32, String, OwnedFd)>>();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let keeper = thread::Builder::new().name("netns".into()).spawn(move || {
            let made = (|| {
                // SAFETY: unshare(2) of the network namespace affects this thread only.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(os_err("unshare(CLONE_NEWNET)"));
                }
                let tid = gettid();
                let id = std::fs::read_link(format!("/proc/self/task/{tid}/ns/net"))?.to_string_lossy().into_owned();
                let ctl = IfCtl::new()?;
                ctl.up("lo")?;
                let fd = open_tun(&dev, offload)?;
                disable_ipv6(&dev);
                ctl.configure(&dev, addr, peer, mtu)?;
                Ok((tid, id, fd))
            })();
            let ok = made.is_ok();
            let _ = ready_tx.send(made);
            if ok {
                // Until the main thread says so (or is gone).
                let _ = exit_rx.recv();
            }
        })?;
        let (tid, id, server_fd) =
            ready_rx.recv().map_err(|_| io::Error::other("namespace thread ended before it was ready"))??;
        Ok(Namespace { tid, id, server_fd, keeper, keeper_exit: exit_tx })
    }

    /// Ends what runs inside, then lets the thread go: with no process and no device left the
    /// kernel frees the namespace.
    fn close(self) {
        end_processes_in(&self.id);
        drop(self.server_fd);
        let _ = self.keeper_exit.send(());
        let _ = self.keeper.join();
    }
}

/// Everything the forwarding needs, fixed at start.
struct Config {
    rtt: Duration,
    rtt_ms: f64,
    rate_mbit: f64,
    /// Bytes per second each way, if limited.
    rate: Option<f64>,
    queue_cap: u64,
    mtu: i32,
    offload: Offload,
    realtime: bool,
    tick: Duration,
    control: PathBuf,
    client_addr: Ipv4Addr,
    server_addr: Ipv4Addr,
    client_dev: String,
    server_dev: String,
}

impl Config {
    fn from_args(args: Args) -> io::Result<Self> {
        if !(0.0..=10_000.0).contains(&args.rtt_ms) || !(0.0..=100_000.0).contains(&args.rate_mbit) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "--rtt-ms or --rate-mbit out of range"));
        }
        let rate = (args.rate_mbit > 0.0).then_some(args.rate_mbit * 1e6 / 8.0);
        let rtt = Duration::from_secs_f64(args.rtt_ms / 1000.0);
        let queue_cap = args.queue_bytes.unwrap_or_else(|| rate.map_or(0, |r| (r * rtt.as_secs_f64()) as u64));
        let offload = match args.offload {
            Offload::Auto if rate.is_some() => Offload::Csum,
            Offload::Auto => Offload::Tso,
            o => o,
        };
        let subnet = match args.subnet {
            Some(n) => n,
            None => {
                let used = subnets_in_use();
                (0..=255u8)
                    .find(|n| !used.contains(n))
                    .ok_or_else(|| io::Error::other("every 198.18.N.0/24 is in use"))?
            }
        };
        let pid = std::process::id();
        Ok(Config {
            rtt,
            rtt_ms: args.rtt_ms,
            rate_mbit: args.rate_mbit,
            rate,
            queue_cap,
            mtu: args.mtu,
            offload,
            realtime: !args.no_realtime,
            tick: Duration::from_micros(args.tick_us),
            control: args.control.unwrap_or_else(|| PathBuf::from(format!("/run/mastfs-wanlink-{pid}.sock"))),
            client_addr: Ipv4Addr::new(198, 18, subnet, 1),
            server_addr: Ipv4Addr::new(198, 18, subnet, 2),
            client_dev: format!("mwan{pid}c"),
            server_dev: format!("mwan{pid}s"),
        })
    }
}

fn run(cfg: Config) -> io::Result<i32> {
    // SAFETY: getppid/prctl with integer arguments. The parent's death (even by SIGKILL) becomes
    // our SIGTERM, so a killed bench still gets its devices and servers cleaned up.
    let parent = unsafe { libc::getppid() };
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) };
    if unsafe { libc::getppid() } != parent {
        return Ok(0);
    }
    let (events_tx, events_rx) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    {
        let tx = events_tx.clone();
        thread::Builder::new().name("signals".into()).spawn(move || {
            if signals.forever().next().is_some() {
                let _ = tx.send(Event::Stop);
            }
        })?;
    }
    let ns = Namespace::create(cfg.server_dev.clone(), cfg.server_addr, cfg.client_addr, cfg.mtu, cfg.offload)?;
    let result = (|| {
        let client_fd = open_tun(&cfg.client_dev, cfg.offload)?;
        disable_ipv6(&cfg.client_dev);
        IfCtl::new()?.configure(&cfg.client_dev, cfg.client_addr, cfg.server_addr, cfg.mtu)?;
        // The client device goes first: once it is gone, nothing can reach the namespace.
        serve(&cfg, &ns, client_fd, events_tx, events_rx)
    })();
    ns.close();
    result
}

/// Forwards until a signal or a failed direction; the client device closes on return.
fn serve(
    cfg: &Config,
    ns: &Namespace,
    client_fd: OwnedFd,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
) -> io::Result<i32> {
    let _ = std::fs::remove_file(&cfg.control);
    let listener = UnixListener::bind(&cfg.control)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", cfg.control.display())))?;
    std::fs::set_permissions(&cfg.control, std::fs::Permissions::from_mode(0o600))?;
    let up = Arc::new(Counters::default());
    let down = Arc::new(Counters::default());
    let stats = Stats {
        up: Arc::clone(&up),
        down: Arc::clone(&down),
        client_dev: cfg.client_dev.clone(),
        server_dev: cfg.server_dev.clone(),
        ns_tid: ns.tid,
        started: Instant::now(),
    };
    thread::Builder::new().name("control".into()).spawn(move || serve_control(listener, stats))?;

    // The server side's descriptor is borrowed for the workers' lifetime: they are joined below.
    let server_fd = Arc::new(ns.server_fd.try_clone()?);
    let client_fd = Arc::new(client_fd);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (name, input, output, counters) in [("up", &client_fd, &server_fd, up), ("down", &server_fd, &client_fd, down)]
    {
        let dir = Direction {
            name,
            input: Arc::clone(input),
            output: Arc::clone(output),
            model: LinkModel::new(cfg.rtt / 2, cfg.rate, cfg.queue_cap),
            counters,
        };
        let stop = Arc::clone(&stop);
        let tx = events_tx.clone();
        let realtime = cfg.realtime;
        let tick = cfg.tick;
        workers.push(thread::Builder::new().name(name.into()).spawn(move || {
            if let Err(e) = dir.run(&stop, realtime, tick) {
                let _ = tx.send(Event::Failed(e.to_string()));
            }
        })?);
    }

    let pid = std::process::id();
    let ready = json!({
        "pid": pid,
        "netns": format!("/proc/{pid}/task/{}/ns/net", ns.tid),
        "client_addr": cfg.client_addr.to_string(),
        "server_addr": cfg.server_addr.to_string(),
        "client_dev": cfg.client_dev,
        "server_dev": cfg.server_dev,
        "rtt_ms": cfg.rtt_ms,
        "rate_mbit": cfg.rate_mbit,
        "queue_bytes": cfg.queue_cap,
        "mtu": cfg.mtu,
        "offload": format!("{:?}", cfg.offload).to_lowercase(),
        "tick_us": cfg.tick.as_micros() as u64,
        "control": cfg.control.to_string_lossy(),
    });
    println!("{ready}");
    io::stdout().flush()?;

    let code = match events_rx.recv() {
        Ok(Event::Stop) | Err(_) => 0,
        Ok(Event::Failed(msg)) => {
            eprintln!("mastfs-wanlink: {msg}");
            1
        }
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let _ = std::fs::remove_file(&cfg.control);
    Ok(code)
}

fn main() -> std::process::ExitCode {
    match Config::from_args(Args::parse()).and_then(run) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("mastfs-wanlink: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_a_rate_every_packet_arrives_one_way_delay_later_and_none_is_dropped() {
        let mut link = LinkModel::new(ms(10), None, 0);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            assert_eq!(link.admit(t0 + Duration::from_micros(i), 65_000), Some(t0 + Duration::from_micros(i) + ms(10)));
        }
    }

    #[test]
    fn with_a_rate_back_to_back_packets_are_spaced_by_their_serialisation_time() {
        // 1,000,000 bytes/s: a 1,000-byte packet takes 1 ms on the wire.
        let mut link = LinkModel::new(ms(10), Some(1e6), 1_000_000);
        let t0 = Instant::now();
        let a = link.admit(t0, 1000).map(|t| t - t0);
        let b = link.admit(t0, 1000).map(|t| t - t0);
        let c = link.admit(t0 + ms(5), 1000).map(|t| t - t0);
        assert_eq!(a, Some(ms(11)));
        assert_eq!(b, Some(ms(12)));
        // The link was idle again by 5 ms: no queueing delay.
        assert_eq!(c, Some(ms(16)));
    }

    #[test]
    fn a_full_drop_tail_queue_drops_arrivals_until_it_has_drained() {
        // 10 packets of backlog fit; the 11th arriving at the same instant is dropped.
        let mut link = LinkModel::new(ms(10), Some(1e6), 10_000);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(link.admit(t0, 1000).is_some());
        }
        assert_eq!(link.admit(t0, 1000), None);
        // 1 ms later one packet has left the queue, so one more fits (and only one).
        assert!(link.admit(t0 + ms(1), 1000).is_some());
        assert_eq!(link.admit(t0 + ms(1), 1000), None);
    }

    #[test]
    fn the_counters_and_the_kernels_drop_counts_read_back_as_json() {
        let c = Counters::default();
        c.packets.store(3, Ordering::Relaxed);
        c.write_errors.store(u64::MAX, Ordering::Relaxed);
        let parsed: Value = serde_json::from_str(&c.json().to_string()).expect("valid JSON");
        assert_eq!((parsed["packets"].as_u64(), parsed["write_errors"].as_u64()), (Some(3), Some(u64::MAX)));
        assert_eq!(parsed["held_wire_bytes"].as_u64(), Some(0));
        // /proc/net/dev: two header lines, then the receive and transmit columns per device.
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("dev");
        let line = (1..=16).map(|n| n.to_string()).collect::<Vec<_>>().join(" ");
        std::fs::write(&dev, format!("Inter-|   Receive\n face |bytes\n  wl0: {line}\n")).expect("write");
        assert_eq!(kernel_drops(&dev, "wl0"), json!({ "rx_dropped": 4, "tx_dropped": 12 }));
        assert_eq!(kernel_drops(&dev, "other"), Value::Null);
    }

    #[test]
    fn an_empty_queue_takes_a_packet_bigger_than_the_queue() {
        let mut link = LinkModel::new(ms(0), Some(1e6), 100);
        assert!(link.admit(Instant::now(), 1500).is_some());
    }

    fn tcp4(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32 + payload];
        p[0] = 0x45; // IPv4, 20-byte header
        p[9] = 6; // TCP
        p[20 + 12] = 8 << 4; // 32-byte TCP header (timestamps)
        p
    }

    #[test]
    fn a_plain_segment_counts_its_payload_and_its_own_length_on_the_wire() {
        let p = tcp4(1448);
        assert_eq!(packet_size(&p, 0, 0), PacketSize { ip: 1500, wire: 1500, payload: 1448 });
    }

    #[test]
    fn a_tso_burst_counts_as_the_segments_it_stands_for() {
        let p = tcp4(1448 * 10 + 100);
        let s = packet_size(&p, 1, 1448);
        assert_eq!(s.payload, 14_580);
        assert_eq!(s.wire, 14_580 + 11 * 52);
        assert_eq!(s.ip, p.len() as u64);
    }

    #[test]
    fn a_pure_ack_has_no_payload_and_garbage_counts_only_its_length() {
        assert_eq!(packet_size(&tcp4(0), 0, 0), PacketSize { ip: 52, wire: 52, payload: 0 });
        assert_eq!(packet_size(&[0x45, 1, 2], 0, 0), PacketSize { ip: 3, wire: 3, payload: 0 });
        assert_eq!(packet_size(&[], 0, 0), PacketSize::default());
        let mut udp = tcp4(100);
        udp[9] = 17;
        assert_eq!(packet_size(&udp, 0, 0).payload, 0);
    }
}
