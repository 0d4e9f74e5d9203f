#!/usr/bin/env python3
"""A delaying TCP relay that stands in for a WAN link (this kernel has no sch_netem).

It listens on LISTEN_HOST at each given port and forwards every connection to the same
port on UPSTREAM_HOST.  With --rtt-ms R it emulates a path of round-trip time R:

* a new connection is opened upstream only after one RTT (the TCP handshake a client
  would have waited for), so the first byte either side can see arrives after 1.5 RTT;
* every byte is delivered to the other side RTT/2 after the relay read it;
* each direction of each connection has a window: at most --window bytes may have been
  read and not yet "acknowledged", and a byte counts as acknowledged one RTT after it was
  read (or RTT/2 after it was delivered, if the receiver was slower).  One stream thus
  tops out near window/RTT, as a real TCP stream with that window does, instead of being
  buffered without bound.

With --rtt-ms 0 it is a plain forwarder (no queue, no window) so that its own ceiling can
be measured.

Counters (bytes delivered each way, connections) are served as one JSON line to whoever
connects to the --control UNIX socket; sending "reset\\n" first zeroes them.
On start it prints one JSON line {"listen", "upstream", "ports", "rtt_ms", "window",
"control", "pid"} and runs until SIGTERM/SIGINT.

Stdlib only.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = 0  # client -> server bytes delivered
        self.down = 0  # server -> client bytes delivered
        self.conns = 0
        self.active = 0

    def add(self, up: int, down: int) -> None:
        with self.lock:
            self.up += up
            self.down += down

    def reset(self) -> None:
        with self.lock:
            self.up = self.down = self.conns = 0

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "up_bytes": self.up,
                "down_bytes": self.down,
                "connections": self.conns,
                "active": self.active,
            }


def parse_ports(spec: str) -> list[int]:
    ports: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            ports.extend(range(int(lo), int(hi) + 1))
        else:
            ports.append(int(part))
    return ports


def parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suf, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if s.endswith(suf):
            s, mult = s[:-1], m
            break
    return int(float(s) * mult)


def _close_both(a: socket.socket, b: socket.socket) -> None:
    # A broken side must break the other one too, as a reset would on a real path:
    # otherwise the server would wait forever for a client that has gone.
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_direct(src: socket.socket, dst: socket.socket, up: bool, ctr: Counters) -> None:
    """RTT 0: forward as cheaply as possible, so that the relay is not what limits a
    loopback transfer on a 2-core machine.  splice() through a pipe moves pages
    without copying them to user space (about a third of the CPU of recv/send)."""
    try:
        r, w = os.pipe()
    except OSError:
        r = w = -1
    try:
        if r >= 0:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
            except OSError:
                pass
        sfd, dfd = src.fileno(), dst.fileno()
        use_splice = r >= 0 and hasattr(os, "splice")
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            if use_splice:
                try:
                    n = os.splice(sfd, w, CHUNK, flags=os.SPLICE_F_MOVE)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    use_splice = False
                    continue
                if n == 0:
                    break
                left = n
                while left:
                    left -= os.splice(r, dfd, left, flags=os.SPLICE_F_MOVE)
            else:
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(view[:n])
            if up:
                ctr.add(n, 0)
            else:
                ctr.add(0, n)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        _close_both(src, dst)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


class DelayedPump:
    """One direction of one connection: a reader thread and a delivering thread."""

    def __init__(self, src, dst, up, ctr, rtt, window):
        self.src, self.dst, self.up, self.ctr = src, dst, up, ctr
        self.half = rtt / 2.0
        self.rtt = rtt
        self.window = window
        self.cond = threading.Condition()
        self.queue: collections.deque = collections.deque()  # (deliver_at, t_read, data)
        self.releases: collections.deque = collections.deque()  # (release_at, n)
        self.inflight = 0
        self.failed = False

    def _take_credit(self) -> int:
        """Blocks until the window has room; returns how many bytes may be read."""
        with self.cond:
            while True:
                now = time.monotonic()
                while self.releases and self.releases[0][0] <= now:
                    self.inflight -= self.releases.popleft()[1]
                room = self.window - self.inflight
                if room > 0 or self.failed:
                    return max(room, 0)
                if self.releases:
                    self.cond.wait(max(self.releases[0][0] - now, 0.0005))
                else:
                    self.cond.wait(1.0)

    def reader(self) -> None:
        try:
            while True:
                room = self._take_credit()
                if self.failed:
                    return
                data = self.src.recv(min(CHUNK, room))
                t = time.monotonic()
                with self.cond:
                    if not data:
                        self.queue.append((t + self.half, t, None))
                        self.cond.notify_all()
                        return
                    self.inflight += len(data)
                    self.queue.append((t + self.half, t, data))
                    self.cond.notify_all()
        except OSError:
            with self.cond:
                self.queue.append((0.0, 0.0, None))
                self.cond.notify_all()

    def writer(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    deliver_at, t_read, data = self.queue.popleft()
                delay = deliver_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if data is None:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                done = time.monotonic()
                n = len(data)
                if self.up:
                    self.ctr.add(n, 0)
                else:
                    self.ctr.add(0, n)
                with self.cond:
                    self.releases.append((max(t_read + self.rtt, done + self.half), n))
                    self.cond.notify_all()
        except OSError:
            with self.cond:
                self.failed = True
                self.cond.notify_all()
            _close_both(self.src, self.dst)


def handle(client: socket.socket, port: int, args, ctr: Counters) -> None:
    rtt = args.rtt_ms / 1000.0
    with ctr.lock:
        ctr.conns += 1
        ctr.active += 1
    try:
        if rtt > 0:
            # The client's connect() already returned locally; the server must not hear
            # of the connection before a real handshake would have completed.
            time.sleep(rtt)
        try:
            upstream = socket.create_connection((args.upstream, port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threads = []
        if rtt <= 0:
            threads.append(threading.Thread(target=pump_direct, args=(client, upstream, True, ctr), daemon=True))
            threads.append(threading.Thread(target=pump_direct, args=(upstream, client, False, ctr), daemon=True))
        else:
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                p = DelayedPump(src, dst, up, ctr, rtt, args.window)
                threads.append(threading.Thread(target=p.reader, daemon=True))
                threads.append(threading.Thread(target=p.writer, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        upstream.close()
        client.close()
    finally:
        with ctr.lock:
            ctr.active -= 1


def control_server(path: str, ctr: Counters) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        try:
            conn.settimeout(0.2)
            try:
                req = conn.recv(64)
            except (TimeoutError, OSError):
                req = b""
            if req.startswith(b"reset"):
                ctr.reset()
            snap = ctr.snapshot()
            conn.sendall((json.dumps(snap) + "\n").encode())
        except OSError:
            pass
        finally:
            conn.close()


def query(path: str, reset: bool = False, timeout: float = 5.0) -> dict:
    """Reads the counters of a running relay (used by scripts/bench)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"reset\n" if reset else b"get\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return json.loads(data.decode())
    finally:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.2")
    ap.add_argument("--upstream", default="127.0.0.1")
    ap.add_argument("--ports", required=True, help="e.g. 2121,40000-40099")
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--window", type=parse_size, default=4 << 20, help="per-direction in-flight cap (default 4MiB)")
    ap.add_argument("--control", default=None, help="UNIX socket path for counters")
    args = ap.parse_args()

    ctr = Counters()
    ports = parse_ports(args.ports)
    sel = selectors.DefaultSelector()
    listeners = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.listen, p))
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, p)
        listeners.append(s)

    if args.control:
        threading.Thread(target=control_server, args=(args.control, ctr), daemon=True).start()

    def stop(_sig, _frm):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        json.dumps(
            {
                "listen": args.listen,
                "upstream": args.upstream,
                "ports": args.ports,
                "rtt_ms": args.rtt_ms,
                "window": args.window,
                "control": args.control,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    try:
        while True:
            for key, _ in sel.select(timeout=1.0):
                try:
                    conn, _addr = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(True)
                threading.Thread(target=handle, args=(conn, key.data, args, ctr), daemon=True).start()
    finally:
        if args.control:
            try:
                os.unlink(args.control)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
