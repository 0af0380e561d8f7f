#!/usr/bin/env python3
"""End-to-end fault tests for portproxy (issue 7): faults, floods, limits and a soak.

Every test spawns the real binary the way dockerd does (pp.spawn) in front of Python backends
on loopback, drives it into one fault, and checks what the proxy promises there: it stays up,
it does not spin, the other connections do not notice, and afterwards it holds no more
descriptors (and, outside AddressSanitizer, no more memory) than before. Run:

    PORTPROXY=build/portproxy python3 tests/e2e/test_faults.py [-v] [TestClass.test_name]

Environment:
    PORTPROXY               the binary under test (exit 77 = skipped without it)
    PORTPROXY_SOAK_SECONDS  length of the soak (default 60)
    PORTPROXY_UNDER_VALGRIND=1  set by scripts/valgrind (which does not run this file: its
                            timings assume a native proxy); only the close-on-exec check
                            looks at it

Exit 77 when $PORTPROXY is missing (CTest: skipped). Measurements are printed to stderr as
"[measured]" lines. The whole file takes about 80 s on 2 cores (75 s under AddressSanitizer),
60 of them the soak.

Descriptor accounting: at rest the proxy holds its listener(s), libevent's own descriptors and
up to 32 idle pipes (64 fds) kept by the pipe pool for reuse (DESIGN 2). "No leak" here means:
the same sockets and other descriptors as before, and at most 64 pipe ends.
"""

import collections
import contextlib
import errno
import hashlib
import os
import random
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pp  # noqa: E402

pp.require_binary()
NOFILE = pp.raise_nofile()
MiB = pp.MiB
SOAK_SECONDS = float(os.environ.get("PORTPROXY_SOAK_SECONDS", "60"))
UNDER_VALGRIND = os.environ.get("PORTPROXY_UNDER_VALGRIND") == "1"
IDLE_PIPE_FDS = 64  # the pipe pool keeps up to 32 idle pipes by design
O_CLOEXEC_FLAG = 0o2000000

# 8 MiB of random bytes; payloads are random slices of it (os.urandom per MiB is slow in a loop).
_RANDOM = os.urandom(8 * MiB)


def note(fmt, *args):
    """Measurements worth seeing in a CI log (stderr, so unittest output stays readable)."""
    sys.stderr.write("    [measured] " + (fmt % args) + "\n")


def random_payload(n, rng=random):
    if n <= 0:
        return b""
    start = rng.randrange(0, len(_RANDOM) - n + 1) if n < len(_RANDOM) else 0
    return _RANDOM[start:start + n]


# --- /proc views ---------------------------------------------------------------------------------

FdSnapshot = collections.namedtuple("FdSnapshot", "sockets pipes other")


def fd_snapshot(pid):
    """The proxy's descriptors by kind: sockets, pipe ends, and the sorted targets of the rest
    (epoll, eventfd, /dev/null...)."""
    sockets = pipes = 0
    other = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:"):
            sockets += 1
        elif target.startswith("pipe:"):
            pipes += 1
        else:
            other.append(target)
    return FdSnapshot(sockets, pipes, sorted(other))


def non_cloexec_fds(pid):
    """Descriptors >= 3 of pid without O_CLOEXEC (they would leak into anything executed).
    Under valgrind (PORTPROXY_UNDER_VALGRIND=1) its own log file is not counted: valgrind
    leaves it open, inheritable, at the lowest free number."""
    bad = []
    for name in os.listdir("/proc/%d/fdinfo" % pid):
        if int(name) < 3:
            continue
        try:
            with open("/proc/%d/fdinfo/%s" % (pid, name)) as f:
                flags = [int(ln.split()[1], 8) for ln in f if ln.startswith("flags:")]
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue  # closed meanwhile
        if UNDER_VALGRIND and os.path.basename(target).startswith("vg."):
            continue
        if flags and not flags[0] & O_CLOEXEC_FLAG:
            bad.append("%s -> %s" % (name, target))
    return bad


def children_of(pid):
    kids = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/%d/task" % pid):
            with contextlib.suppress(OSError):
                with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                    kids += f.read().split()
    return kids


def wait_steady(read, hold=0.3, timeout=10.0):
    """Poll read() until its value has not changed for `hold` s (or timeout). Returns it."""
    last, since = read(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.02)
        cur = read()
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= hold:
            break
    return last


def cpu_over(p, seconds):
    """CPU seconds (user + system) the proxy used over a window of `seconds`."""
    cpu0, t0 = p.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return p.cpu_seconds() - cpu0, time.monotonic() - t0


# --- traffic helpers ----------------------------------------------------------------------------

def duplex_echo(sock, payload, timeout=30.0):
    """Send payload (then SHUT_WR) while reading the echo until EOF, without threads. Returns
    (bytes received, sha256 of them). Raises TimeoutError, OSError."""
    sock.setblocking(False)
    out = memoryview(payload)
    h = hashlib.sha256()
    got = 0
    shut = False
    if not out:
        sock.shutdown(socket.SHUT_WR)
        shut = True
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | (0 if shut else selectors.EVENT_WRITE))
        for _ in range(10 ** 7):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("echo: %d of %d bytes back before the deadline" %
                                   (got, len(payload)))
            for _, mask in sel.select(min(remaining, 1.0)):
                if mask & selectors.EVENT_WRITE and not shut:
                    with contextlib.suppress(BlockingIOError):
                        n = sock.send(out[:256 * 1024])
                        out = out[n:]
                    if not out:
                        sock.shutdown(socket.SHUT_WR)
                        shut = True
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        d = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not d:
                        return got, h.hexdigest()
                    h.update(d)
                    got += len(d)
    raise TimeoutError("echo: loop bound reached")


def wait_writable(sock, timeout):
    p = select.poll()
    p.register(sock, select.POLLOUT)
    return bool(p.poll(int(timeout * 1000)))


def duplex_roundtrip(sock, payload, timeout=30.0):
    """On a non-blocking socket to an echo server: send payload while reading, until
    len(payload) bytes came back (the connection stays open). Returns the bytes received."""
    out = memoryview(payload)
    got = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        for _ in range(10 ** 7):
            if len(got) >= len(payload):
                return bytes(got)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("%d of %d bytes back before the deadline" %
                                   (len(got), len(payload)))
            for _, mask in sel.select(min(remaining, 1.0)):
                if mask & selectors.EVENT_WRITE and out:
                    with contextlib.suppress(BlockingIOError):
                        n = sock.send(out[:256 * 1024])
                        out = out[n:]
                    if not out:
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        d = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not d:
                        raise EOFError("EOF after %d of %d bytes" % (len(got), len(payload)))
                    got += d
    raise TimeoutError("loop bound reached")


def open_nonblocking(host, port, n, timeout=10.0):
    """n connections at once: non-blocking connect()s, then wait for all to complete.
    Returns (connected sockets, number that failed)."""
    socks, failed = [], 0
    with selectors.DefaultSelector() as sel:
        for _ in range(n):
            s = socket.socket(pp.family_of(host), socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        pending = set(socks)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sel.unregister(key.fileobj)
                pending.discard(key.fileobj)
        for s in list(socks):
            if s in pending or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                socks.remove(s)
                s.close()
                failed += 1
    return socks, failed


def udp_exchange(sock, payload, timeout=1.0, tries=3):
    """The echo of payload on a connected UDP socket, or None (late replies skipped)."""
    return pp.udp_exchange(sock, payload, timeout, tries, want=payload)[0]


def fault_handler(conn, addr, srv):
    """Backend for pp.ThreadedServer; the client's first byte picks the behaviour:
      E  echo (the E too) until EOF, then shut down writing
      X  send 1 MiB of random data, then reset (SO_LINGER 0 + close)
      D  duplex: send random data and read, both until an error or EOF; record how it ended
      N  accept and never read, until the test releases srv.release (an Event)
    Records go to srv.results as (mode, dict)."""
    conn.settimeout(30)
    cmd = conn.recv(1)
    if cmd == b"E":
        conn.sendall(cmd)
        pp.echo_until_eof(conn)
    elif cmd == b"X":
        data = random_payload(MiB)
        rec = {"sent": data}
        with srv.lock:
            srv.results.append(("X", rec))
        conn.sendall(data)
        pp.set_linger_reset(conn)
    elif cmd == b"D":
        rec = {"outcome": None, "t_end": None, "recv": 0, "sent": 0}
        with srv.lock:
            srv.results.append(("D", rec))
        errors = []

        def sender():
            try:
                for _ in range(100000):
                    conn.sendall(random_payload(64 * 1024))
                    rec["sent"] += 64 * 1024
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            pp.count_until_eof(conn, rec)
        except OSError as e:
            errors.append(e)
        t.join(timeout=10)
        if any(isinstance(e, (ConnectionResetError, BrokenPipeError)) for e in errors):
            rec["outcome"] = "reset"
        elif rec["outcome"] is None:
            rec["outcome"] = "error: %r" % errors
        rec["t_end"] = time.monotonic()
    elif cmd == b"N":
        with srv.lock:
            srv.results.append(("N", {"t": time.monotonic()}))
        srv.release.wait(60)


# ------------------------------------------------------------------------------------------------
class FaultCase(unittest.TestCase):
    """Helpers shared by the test classes; everything is cleaned up with addCleanup."""

    def start_proxy(self, backend_port, **kw):
        """127.0.0.1:<free port> -> 127.0.0.1:backend_port (pp.start_proxy)."""
        return pp.start_proxy(self, backend_port, **kw)

    def echo_server(self, **kw):
        s = pp.EchoServer("127.0.0.1", **kw)
        self.addCleanup(s.close)
        return s

    def fault_server(self):
        srv = pp.ThreadedServer(fault_handler, "127.0.0.1")
        srv.release = threading.Event()
        self.addCleanup(srv.close)
        self.addCleanup(srv.release.set)  # runs first: frees "N" handlers before the close
        return srv

    def records(self, srv, mode, n=1, timeout=5):
        ok = pp.wait_until(lambda: len([r for m, r in srv.results if m == mode]) >= n, timeout)
        self.assertTrue(ok, "backend never saw a %r connection" % mode)
        return [r for m, r in srv.results if m == mode]

    def need_fds(self, n):
        if NOFILE < n:
            self.skipTest("need RLIMIT_NOFILE >= %d, have %d" % (n, NOFILE))

    def assert_echo(self, port, payload=None, what=""):
        payload = payload if payload is not None else os.urandom(10000)
        try:
            got = pp.echo_roundtrip("127.0.0.1", port, payload, timeout=10)
        except (OSError, EOFError, TimeoutError) as e:
            self.fail("echo through port %d failed %s: %r" % (port, what, e))
        self.assertTrue(got == payload, "echo through port %d %s: %d bytes back of %d, or "
                        "different" % (port, what, len(got), len(payload)))

    def assert_modal_echo(self, port, what):
        with pp.connect("127.0.0.1", port, timeout=5) as c:
            c.sendall(b"Eok")
            self.assertEqual(pp.recv_exact(c, 3, timeout=5), b"Eok",
                             "proxy stopped serving %s" % what)

    def assert_cloexec(self, p, what):
        """Every descriptor but stdio is close-on-exec, now, in whatever state p is."""
        bad = non_cloexec_fds(p.pid)
        self.assertEqual(bad, [], "%s: descriptors without O_CLOEXEC: %r" % (what, bad))

    def assert_fds_back(self, p, base, what, timeout=10.0):
        """The proxy is back to `base` (an FdSnapshot at rest): the same sockets and other
        descriptors, and no more pipe ends than the pool's idle maximum."""

        def ok():
            cur = fd_snapshot(p.pid)
            return (cur.sockets == base.sockets and cur.other == base.other and
                    cur.pipes <= IDLE_PIPE_FDS)

        if not pp.wait_until(ok, timeout, interval=0.05):
            cur = fd_snapshot(p.pid)
            self.fail("%s: descriptors leaked: now %d sockets, %d pipe ends, other %r; before "
                      "%d sockets, %d pipe ends, other %r" %
                      (what, cur.sockets, cur.pipes, cur.other, base.sockets, base.pipes,
                       base.other))
        return fd_snapshot(p.pid)

    def settled_snapshot(self, p):
        wait_steady(lambda: fd_snapshot(p.pid), hold=0.3, timeout=5)
        return fd_snapshot(p.pid)


# ------------------------------------------------------------------------------------------------
class TestOutOfDescriptors(FaultCase):
    """Out of descriptors: stays up, does not spin, serves again once the clients leave."""

    def test_500_clients_with_nofile_64(self):
        n = 500
        self.need_fds(n + 200)
        echo = self.echo_server()
        p = self.start_proxy(echo.port, stdio_null=False,
                             preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
        self.assertEqual(pp.proc_nofile_limits(p.pid), (64, 64))
        self.assert_echo(p.port, b"before", "before the flood of clients")
        base = self.settled_snapshot(p)

        clients, failed = open_nonblocking("127.0.0.1", p.port, n)
        self.addCleanup(lambda: [c.close() for c in clients])
        for i, c in enumerate(clients):
            with contextlib.suppress(OSError):
                c.send(b"%05d" % i)
        starved_fds = wait_steady(p.fd_count, hold=0.3, timeout=10)
        self.assertTrue(p.alive(), "proxy died out of descriptors: %s" % p.describe())
        self.assert_cloexec(p, "out of descriptors")
        cpu, secs = cpu_over(p, 1.0)
        # Where the clients are: served (echo back), reset, or waiting (backlog / no answer).
        ends = collections.Counter()
        for c in clients:
            try:
                ends["echoed" if c.recv(16) else "eof"] += 1
            except BlockingIOError:
                ends["waiting"] += 1
            except ConnectionResetError:
                ends["reset"] += 1
        note("nofile 64, %d clients (%d connects failed): proxy holds %d fds; clients %r; CPU "
             "%.3f s over %.2f s while starved", n, failed, starved_fds, dict(ends), cpu, secs)
        self.assertTrue(p.alive(), "proxy died out of descriptors: %s" % p.describe())
        self.assertGreaterEqual(starved_fds, 56, "the proxy never got near its limit of 64 "
                                "(holds %d): the test did not starve it" % starved_fds)
        self.assertLess(cpu, 0.2, "proxy burns %.3f s CPU per %.2f s while out of descriptors "
                        "(it must back off, not spin)" % (cpu, secs))

        for c in clients:
            c.close()
        clients.clear()
        t0 = time.monotonic()
        ok = pp.wait_until(lambda: pp.try_echo("127.0.0.1", p.port, b"again", timeout=1), 20,
                           interval=0.1)
        self.assertTrue(ok, "no service 20 s after the clients left: %s" % p.describe())
        note("serving again %.2f s after the clients left", time.monotonic() - t0)
        self.assertTrue(p.alive())
        self.assert_fds_back(p, base, "after the clients left", timeout=20)
        lines = p.stderr_text().splitlines()
        note("%d stderr lines while starved", len(lines))
        self.assertLess(len(lines), 100, "warnings not rate-limited: %d lines, e.g. %r" %
                        (len(lines), lines[:3]))


# ------------------------------------------------------------------------------------------------
class TestMidStream(FaultCase):
    """Resets and stalls in the middle of a transfer, and a backend that restarts."""

    def expect_reset(self, sock, within, what):
        """recv() must end in ECONNRESET within `within` s (never a clean EOF). Returns the
        bytes read before."""
        got = bytearray()
        deadline = time.monotonic() + within
        for _ in range(1 << 20):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                d = sock.recv(1 << 20)
            except ConnectionResetError:
                return bytes(got)
            except socket.timeout:
                break
            if not d:
                self.fail("%s: clean EOF after %d bytes where a reset was due" % (what,
                                                                                  len(got)))
            got += d
        self.fail("%s: no reset within %.1f s (%d bytes read)" % (what, within, len(got)))

    def test_backend_resets_midstream(self):
        srv = self.fault_server()
        p = self.start_proxy(srv.port)
        self.assert_modal_echo(p.port, "at first")
        base = self.settled_snapshot(p)
        for i in range(3):
            with pp.connect("127.0.0.1", p.port) as c:
                c.sendall(b"X")
                got = self.expect_reset(c, 5.0, "client %d after the backend reset" % i)
            rec = self.records(srv, "X", i + 1)[i]
            self.assertTrue(got == rec["sent"][:len(got)], "bytes before the reset are not a "
                            "prefix of what the backend sent")
            if i == 0:
                note("backend reset after 1 MiB: the client read %d bytes, then ECONNRESET",
                     len(got))
        self.assertTrue(p.alive(), "proxy died after backend resets")
        self.assert_fds_back(p, base, "after backend resets")
        self.assert_modal_echo(p.port, "after backend resets")

    def test_client_resets_midstream(self):
        srv = self.fault_server()
        p = self.start_proxy(srv.port)
        self.assert_modal_echo(p.port, "at first")
        base = self.settled_snapshot(p)
        delays = []
        for i in range(3):
            c = pp.connect("127.0.0.1", p.port)
            try:
                c.sendall(b"D")
                pp.recv_exact(c, 512 * 1024, timeout=5)  # data flows towards us...
                c.sendall(random_payload(512 * 1024))  # ...and from us
                (rec,) = self.records(srv, "D", i + 1)[i:i + 1]
                self.assertTrue(pp.wait_until(lambda: rec["recv"] >= 256 * 1024, 5),
                                "backend did not receive the client's data")
                pp.set_linger_reset(c)
            finally:
                t_rst = time.monotonic()
                c.close()
            self.assertTrue(pp.wait_until(lambda: rec["t_end"] is not None, 8),
                            "backend connection still open 8 s after the client reset")
            delays.append(rec["t_end"] - t_rst)
            self.assertEqual(rec["outcome"], "reset", "the backend must see the client's reset "
                             "as a reset (got %s)" % rec["outcome"])
        note("client resets reached the backend as resets after %s ms",
             ", ".join("%.1f" % (d * 1000) for d in delays))
        self.assertLess(max(delays), 2.0, "backend torn down late")
        self.assertTrue(p.alive(), "proxy died after client resets")
        self.assert_fds_back(p, base, "after client resets")
        self.assert_modal_echo(p.port, "after client resets")

    def test_backend_never_reads(self):
        """One connection's backend accepts and never reads: that client blocks (bounded
        buffering, no busy loop); 50 other connections through the same proxy are served."""
        srv = self.fault_server()
        p = self.start_proxy(srv.port)
        self.assert_modal_echo(p.port, "at first")
        base = self.settled_snapshot(p)

        stuck = pp.connect("127.0.0.1", p.port)
        self.addCleanup(stuck.close)
        stuck.sendall(b"N")
        self.records(srv, "N")
        stuck.setblocking(False)
        chunk = random_payload(256 * 1024)
        pushed, last_progress = 0, time.monotonic()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pushed < 512 * MiB:
            try:
                pushed += stuck.send(chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress >= 0.5:
                    break
                wait_writable(stuck, 0.05)
        self.assertLess(pushed, 512 * MiB, "the stuck connection took 512 MiB: nothing blocks")
        self.assertGreaterEqual(time.monotonic() - last_progress, 0.5,
                                "the stuck client never blocked within 15 s")
        self.assert_cloexec(p, "with a pipe full of undelivered data")
        cpu, secs = cpu_over(p, 1.0)
        note("backend never reads: the client could push %.1f MiB before blocking; proxy CPU "
             "%.3f s over %.2f s while blocked", pushed / MiB, cpu, secs)
        self.assertLess(cpu, 0.1, "proxy spins while a connection is blocked")

        payloads = [b"E" + os.urandom(random.randrange(1, 64 * 1024)) for _ in range(50)]
        t0 = time.monotonic()
        res = pp.parallel_echo("127.0.0.1", p.port, payloads, timeout=20)
        bad = [(i, e) for i, ((got, e), want) in enumerate(zip(res, payloads)) if got != want]
        note("50 other connections served in %.2f s while one is stuck",
             time.monotonic() - t0)
        self.assertEqual(bad, [], "other connections were affected by the stuck one")
        with self.assertRaises(BlockingIOError, msg="the stuck connection moved again"):
            stuck.send(chunk)

        srv.release.set()  # the backend closes with unread data: an RST, passed on to the client
        stuck.close()
        self.assertTrue(p.alive())
        self.assert_fds_back(p, base, "after the stuck connection ended")

    def test_backend_restarts_with_connections_open(self):
        e1 = pp.EchoServer("127.0.0.1", greeting=b"v1:")
        self.addCleanup(e1.close)
        bport = e1.port
        p = self.start_proxy(bport)
        base = self.settled_snapshot(p)
        old = []
        self.addCleanup(lambda: [c.close() for c in old])
        for i in range(10):
            c = pp.connect("127.0.0.1", p.port)
            old.append(c)
            c.sendall(b"hello %d" % i)
            self.assertEqual(pp.recv_exact(c, 3 + len(b"hello %d" % i)), b"v1:hello %d" % i)

        e1.close()  # the backend goes away with its connections (FIN on each)
        ends = collections.Counter()
        for c in old:
            try:
                ends["eof" if pp.recv_until_eof(c, timeout=5) == b"" else "data+eof"] += 1
            except ConnectionResetError:
                ends["reset"] += 1
            except TimeoutError:
                ends["still open"] += 1
        note("backend stopped: old connections ended %r", dict(ends))
        self.assertEqual(ends["still open"], 0, "old connections outlived their backend")
        self.assertTrue(p.alive(), "proxy died when the backend stopped")

        # While it is down, new clients are reset (nothing listens), not left hanging.
        self.assertEqual(self.connect_outcome(p.port), "reset",
                         "a client of a stopped backend must be reset")

        try:
            e2 = pp.EchoServer("127.0.0.1", port=bport, greeting=b"v2:")
        except OSError as e:
            self.skipTest("backend port %d was taken meanwhile: %r" % (bport, e))
        self.addCleanup(e2.close)
        for i in range(10):
            with pp.connect("127.0.0.1", p.port) as c:
                c.sendall(b"again %d" % i)
                self.assertEqual(pp.recv_exact(c, 3 + len(b"again %d" % i)), b"v2:again %d" % i,
                                 "new connections must reach the restarted backend")
        for c in old:
            c.close()
        old.clear()
        self.assert_fds_back(p, base, "after the backend restart")

    def connect_outcome(self, port, timeout=2.0):
        """Connect and read: "reset", "eof", "data" or "timeout"."""
        try:
            c = pp.connect("127.0.0.1", port, timeout=timeout)
        except ConnectionResetError:
            return "reset"  # the reset beat connect()'s return
        with c:
            c.settimeout(timeout)
            try:
                return "data" if c.recv(1) else "eof"
            except ConnectionResetError:
                return "reset"
            except socket.timeout:
                return "timeout"


# ------------------------------------------------------------------------------------------------
class TestChurn(FaultCase):
    """Many connections, in a row and at once: no descriptor or memory growth afterwards."""

    RSS_SLACK_KIB = 1024

    def check_rss(self, p, rss0, what):
        rss1 = pp.vm_rss_kib(p.pid)
        if pp.under_asan(p.pid):
            note("%s: VmRSS %d -> %d KiB (not checked under AddressSanitizer)", what, rss0, rss1)
            return
        note("%s: VmRSS %d -> %d KiB", what, rss0, rss1)
        self.assertLess(rss1 - rss0, self.RSS_SLACK_KIB, "%s: VmRSS grew %d KiB" %
                        (what, rss1 - rss0))

    def test_10k_short_connections_in_a_row(self):
        n, budget = 10000, 90.0
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        for i in range(200):  # warm up: pipe pool, malloc arenas
            self.assertTrue(pp.try_echo("127.0.0.1", p.port, b"w%d" % i, timeout=5))
        base = self.settled_snapshot(p)
        rss0 = pp.vm_rss_kib(p.pid)
        t0 = time.monotonic()
        done = 0
        for i in range(n):
            if time.monotonic() - t0 > budget:
                break
            payload = b"%d" % i
            got = pp.echo_roundtrip("127.0.0.1", p.port, payload, timeout=5)
            self.assertEqual(got, payload, "connection %d" % i)
            done += 1
        dt = time.monotonic() - t0
        note("%d short connections in a row in %.1f s (%.0f/s)", done, dt, done / dt)
        self.assertEqual(done, n, "only %d connections in %.0f s" % (done, budget))
        self.assertTrue(p.alive())
        snap = self.assert_fds_back(p, base, "after %d connections in a row" % n)
        note("fds at rest: %d sockets, %d pipe ends before; %d, %d after", base.sockets,
             base.pipes, snap.sockets, snap.pipes)
        self.check_rss(p, rss0, "%d connections in a row" % n)

    def test_1000_connections_at_once(self):
        n, rounds = 1000, 3
        self.need_fds(3 * n + 200)
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        base = rss0 = None
        for r in range(rounds):
            payloads = [os.urandom(random.randrange(1, 8192)) for _ in range(n)]
            t0 = time.monotonic()
            res = pp.parallel_echo("127.0.0.1", p.port, payloads, timeout=60)
            dt = time.monotonic() - t0
            bad = [(i, e) for i, ((got, e), want) in enumerate(zip(res, payloads))
                   if got != want]
            self.assertEqual(bad[:5], [], "round %d: %d of %d connections failed" %
                             (r, len(bad), n))
            snap = self.settled_snapshot(p)
            note("round %d: %d connections at once in %.2f s; at rest %d sockets, %d pipe ends,"
                 " VmRSS %d KiB", r, n, dt, snap.sockets, snap.pipes, pp.vm_rss_kib(p.pid))
            if r == 0:  # the first round warms up the pool and the heap
                base, rss0 = snap, pp.vm_rss_kib(p.pid)
            else:
                self.assert_fds_back(p, base, "after round %d of %d at once" % (r, n))
        self.assertTrue(p.alive())
        self.check_rss(p, rss0, "%d more rounds of %d at once" % (rounds - 1, n))


# ------------------------------------------------------------------------------------------------
class TestUdpFlood(FaultCase):
    """A flood of distinct source ports over -udp-max-flows: bounded, others unaffected."""

    def test_flood_over_flow_cap(self):
        cap, rounds, per_round = 64, 8, 500
        self.need_fds(per_round + 200)
        be = pp.UdpBackend()
        self.addCleanup(be.close)
        # Idle flows expire after 1 s, so that in the end all of them must be gone.
        p = self.start_proxy(be.port, proto="udp",
                             extra=["-udp-max-flows", str(cap), "-udp-timeout", "1s"])
        victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(victim.close)
        victim.connect(("127.0.0.1", p.port))
        self.assertIsNotNone(udp_exchange(victim, b"before"), "no echo before the flood")
        base = self.settled_snapshot(p)
        rss0 = pp.vm_rss_kib(p.pid)
        max_fds, probes, lost, slow = p.fd_count(), 0, 0, 0
        sent = 0
        t0 = time.monotonic()
        for r in range(rounds):
            socks = []
            try:
                for k in range(per_round):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind(("127.0.0.1", 0))
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        s.sendto(b"flood %d %d" % (r, k), ("127.0.0.1", p.port))
                        sent += 1
                    if k % 50 == 49:
                        probes += 1
                        tp = time.monotonic()
                        msg = b"victim %d %d" % (r, k)
                        if udp_exchange(victim, msg, timeout=0.5, tries=4) is None:
                            lost += 1
                        elif time.monotonic() - tp > 0.5:
                            slow += 1
                        # Counted once the victim's echo is back: the listener is FIFO, so
                        # every flood datagram before it has its flow by now. While a flow is
                        # being opened there is one socket more for an instant (the new one
                        # is made before the least recently used one is closed).
                        max_fds = max(max_fds, p.fd_count())
            finally:
                for s in socks:
                    s.close()
            if r == rounds // 2:
                self.assert_cloexec(p, "UDP proxy at its flow cap")
        dt = time.monotonic() - t0
        max_fds = max(max_fds, p.fd_count())
        rss1 = pp.vm_rss_kib(p.pid)
        note("UDP flood: %d datagrams from %d source ports in %.2f s (backend got %d from %d "
             "sources); victim probes %d, lost %d, needed a retry %d; proxy fds %d -> max %d; "
             "VmRSS %d -> %d KiB", sent, rounds * per_round, dt, be.count, len(set(be.sources())),
             probes, lost, slow, sum([base.sockets, base.pipes, len(base.other)]), max_fds, rss0,
             rss1)
        self.assertTrue(p.alive(), "proxy died in the flood: %s" % p.describe())
        base_total = base.sockets + base.pipes + len(base.other)
        # base holds the victim's flow: at most cap flow sockets in all.
        self.assertLessEqual(max_fds, base_total - 1 + cap, "flow sockets beyond -udp-max-flows")
        self.assertEqual(lost, 0, "the victim's flow lost %d of %d probes in the flood" %
                         (lost, probes))
        if not pp.under_asan(p.pid):
            self.assertLess(rss1 - rss0, 4 * 1024, "VmRSS grew %d KiB in the flood" %
                            (rss1 - rss0))
        self.assertIsNotNone(udp_exchange(victim, b"after"), "victim not served after the flood")
        fresh = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(fresh.close)
        fresh.connect(("127.0.0.1", p.port))
        self.assertIsNotNone(udp_exchange(fresh, b"fresh"), "a fresh client is not served")
        fresh.close()
        victim.close()
        # Every flow expires: only the listener is left (base held the victim's flow).
        self.assert_fds_back(p, base._replace(sockets=base.sockets - 1),
                             "after the flood, once every flow expired", timeout=10)


# ------------------------------------------------------------------------------------------------
class Pumper:
    """Keeps many connections busy in both directions from one thread: every socket registered
    sends random data whenever writable and reads (and drops) whatever arrives."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.received = collections.Counter()  # fileno -> bytes
        self.total_in = 0
        self.total_out = 0
        self.errors = 0
        self._socks = []
        self._chunk = random_payload(64 * 1024)
        self._lock = threading.Lock()
        self._thread = None

    def add(self, sock):
        sock.setblocking(False)
        self._socks.append(sock)
        self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sock.fileno())

    def start(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for key, mask in self._sel.select(0.5):
                if key.data is None:
                    return
                s = key.fileobj
                try:
                    if mask & selectors.EVENT_READ:
                        d = s.recv(256 * 1024)
                        if not d:
                            self._sel.unregister(s)
                            continue
                        self.received[key.data] += len(d)
                        self.total_in += len(d)
                    if mask & selectors.EVENT_WRITE:
                        self.total_out += s.send(self._chunk)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.errors += 1
                    with contextlib.suppress(Exception):
                        self._sel.unregister(s)

    def stop(self):
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread:
            self._thread.join(timeout=5)
        self._sel.close()
        for s in self._socks:
            s.close()
        self._wake_r.close()
        self._wake_w.close()


class TestSignalUnderLoad(FaultCase):
    """SIGINT while 1000 connections transfer: a prompt exit (target 100 ms) and a free port."""

    BOUND = 0.5  # CI bound for noise; the target is 100 ms and the figure is printed
    # LeakSanitizer scans the heap at exit: 100-350 ms more with 1000 connections just freed.
    BOUND_ASAN = 1.5

    def test_sigint_while_1000_connections_transfer(self):
        n = 1000
        self.need_fds(2 * n + 300)
        lsock = pp.listening_socket("127.0.0.1", 0, backlog=4096)
        self.addCleanup(lsock.close)
        p = self.start_proxy(lsock.getsockname()[1])
        pump = Pumper()
        self.addCleanup(pump.stop)
        clients = []
        lsock.settimeout(5)
        for i in range(n):
            c = pp.connect("127.0.0.1", p.port, timeout=5)
            clients.append(c)
            b, _ = lsock.accept()  # the proxy connects to us per client, in order
            pump.add(c)
            pump.add(b)
        pump.start()
        ok = pp.wait_until(lambda: len([c for c in clients if pump.received[c.fileno()] > 0])
                           >= n * 9 // 10 and pump.total_in > 64 * MiB, 30, interval=0.05)
        moving = len([c for c in clients if pump.received[c.fileno()] > 0])
        self.assertTrue(ok, "only %d of %d client connections received data (%d bytes in all)"
                        % (moving, n, pump.total_in))
        self.assert_cloexec(p, "with 1000 connections transferring")
        fds = p.fd_count()
        in0, t0 = pump.total_in, time.monotonic()
        time.sleep(0.2)  # a measurement window, not a synchronisation
        rate = (pump.total_in - in0) / (time.monotonic() - t0)
        bound = self.BOUND_ASAN if pp.under_asan(p.pid) else self.BOUND
        rc = p.stop(signal.SIGINT, timeout=5)
        note("SIGINT with %d connections transferring (%d receiving, %.0f MiB/s to clients, "
             "proxy holding %d fds): exit %s after %.1f ms", n, moving, rate / MiB, fds, rc,
             (p.stop_seconds or 0) * 1000)
        self.assertIsNotNone(rc, "proxy did not exit within 5 s of SIGINT")
        self.assertEqual(rc, 0, "exit code after SIGINT")
        self.assertLess(p.stop_seconds, bound, "exit took %.3f s (bound %.1f s)" %
                        (p.stop_seconds, bound))
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p.port))
                s.listen(1)
            except OSError as e:
                self.fail("port %d not free after the exit: %r (states %r)" %
                          (p.port, e, pp.tcp_states_on_local_port(p.port)))


# ------------------------------------------------------------------------------------------------
class TestSoak(FaultCase):
    """Mixed TCP and UDP load on one process (-p tcp and -p udp) for PORTPROXY_SOAK_SECONDS:
    every byte echoed exactly, RSS flat between 25% and 100% of the run, nothing leaked."""

    TCP_WORKERS = 4
    UDP_FLOWS = 8

    def start_publish(self, tcp_port, udp_port):
        args = ["-container-ip", "127.0.0.1",
                "-p", "127.0.0.1::%d/tcp" % tcp_port, "-p", "127.0.0.1::%d/udp" % udp_port,
                "-udp-timeout", "1s", "-udp-max-flows", "64"]
        p = pp.spawn(args, stdio_null=False)
        self.addCleanup(p.cleanup)
        if p.status != "0":
            self.fail("proxy with -p did not start: %s" % p.describe())
        ports = {}

        def read_ports():
            for line in p.stdout_text().splitlines():  # "80/tcp -> 127.0.0.1:32768"
                left, _, right = line.partition(" -> ")
                if "/" in left and ":" in right:
                    ports[left.split("/")[1]] = int(right.rsplit(":", 1)[1])
            return len(ports) == 2

        self.assertTrue(pp.wait_until(read_ports, 5), "no mappings on stdout: %r" %
                        p.stdout_text())
        return p, ports["tcp"], ports["udp"]

    def test_soak_mixed_tcp_udp(self):
        duration = SOAK_SECONDS
        echo = self.echo_server()
        uecho = pp.UdpBackend()
        self.addCleanup(uecho.close)
        p, tport, uport = self.start_publish(echo.port, uecho.port)
        base = self.settled_snapshot(p)  # before any flow exists
        self.assert_echo(tport, b"tcp before")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("127.0.0.1", uport))
        self.assertIsNotNone(udp_exchange(probe, b"udp before"))
        probe.close()

        stop = threading.Event()
        lock = threading.Lock()
        st = collections.Counter()
        failures = []

        def tcp_worker(seed):
            """Connections of 1-30 echo round trips (1 B to 4 MiB each, both directions at
            once), then a half-close whose EOF must come back after the last byte. Several
            round trips per connection keep TIME_WAIT sockets (and ephemeral ports) in
            check."""
            rng = random.Random(seed)
            for _ in range(10 ** 6):
                if stop.is_set():
                    return
                try:
                    with pp.connect("127.0.0.1", tport, timeout=10) as c:
                        c.setblocking(False)
                        for _ in range(rng.randrange(1, 31)):
                            r = rng.random()
                            if r < 0.5:
                                n = rng.randrange(1, 4096)
                            elif r < 0.95:
                                n = rng.randrange(4096, 256 * 1024)
                            else:
                                n = rng.randrange(MiB, 4 * MiB)
                            payload = random_payload(n, rng)
                            if duplex_roundtrip(c, payload) != payload:
                                raise ValueError("%d bytes echoed differently" % n)
                            with lock:
                                st["tcp_trips"] += 1
                                st["tcp_bytes"] += 2 * n
                            if stop.is_set():
                                break
                        last = random_payload(rng.randrange(0, 1000), rng)
                        got, sha = duplex_echo(c, last, timeout=30)
                        if got != len(last) or sha != hashlib.sha256(last).hexdigest():
                            raise ValueError("the last %d bytes before EOF echoed as %d "
                                             "bytes, or differently" % (len(last), got))
                except (OSError, TimeoutError, EOFError, ValueError) as e:
                    with lock:
                        failures.append("tcp: %r" % e)
                    return
                with lock:
                    st["tcp_conns"] += 1
                    st["tcp_bytes"] += 2 * len(last)

        def udp_worker(seed):
            rng = random.Random(seed)
            socks = []

            def new_flow():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect(("127.0.0.1", uport))
                return s

            try:
                socks = [new_flow() for _ in range(self.UDP_FLOWS)]
                for seq in range(10 ** 7):
                    if stop.is_set():
                        return
                    k = rng.randrange(len(socks))
                    if seq % 200 == 199:  # a new client now and then; the old flow expires
                        socks[k].close()
                        socks[k] = new_flow()
                        with lock:
                            st["udp_flows"] += 1
                    n = rng.randrange(1, 9000) if rng.random() < 0.95 else rng.randrange(
                        9000, 60000)
                    payload = struct.pack("!Q", seq) + random_payload(n, rng)
                    reply = udp_exchange(socks[k], payload, timeout=0.5, tries=3)
                    with lock:
                        if reply is None:
                            st["udp_lost"] += 1
                        else:
                            st["udp_ok"] += 1
                            st["udp_bytes"] += 2 * len(payload)
            except OSError as e:
                with lock:
                    failures.append("udp: %r" % e)
            finally:
                for s in socks:
                    s.close()

        threads = [threading.Thread(target=tcp_worker, args=(i,), daemon=True)
                   for i in range(self.TCP_WORKERS)]
        threads.append(threading.Thread(target=udp_worker, args=(99,), daemon=True))
        t0 = time.monotonic()
        cpu0 = p.cpu_seconds()
        for t in threads:
            t.start()
        rss = {}
        try:
            pp.wait_until(lambda: bool(failures) or not p.alive(), duration * 0.25, interval=0.1)
            rss[25] = pp.vm_rss_kib(p.pid)
            self.assert_cloexec(p, "under mixed load")
            self.assertEqual(children_of(p.pid), [], "the proxy started a process")
            pp.wait_until(lambda: bool(failures) or not p.alive(), duration * 0.75, interval=0.1)
            rss[100] = pp.vm_rss_kib(p.pid)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=40)
        secs = time.monotonic() - t0
        cpu = p.cpu_seconds() - cpu0
        note("soak %.0f s: %d TCP connections, %d round trips, %.0f MiB echoed; %d UDP "
             "datagrams echoed (%.1f MiB), %d lost, %d new flows; proxy CPU %.1f s; VmRSS %d "
             "KiB at 25%%, %d KiB at 100%%", secs, st["tcp_conns"], st["tcp_trips"],
             st["tcp_bytes"] / MiB, st["udp_ok"],
             st["udp_bytes"] / MiB, st["udp_lost"], st["udp_flows"], cpu, rss.get(25, -1),
             rss.get(100, -1))
        self.assertTrue(p.alive(), "proxy died in the soak: %s" % p.describe())
        self.assertEqual(failures, [], "soak failures")
        self.assertGreater(st["tcp_conns"], 5 * self.TCP_WORKERS, "little TCP load got through")
        self.assertGreater(st["udp_ok"], 100, "little UDP load got through")
        udp_total = st["udp_ok"] + st["udp_lost"]
        self.assertLessEqual(st["udp_lost"], max(3, udp_total // 100),
                             "UDP: %d of %d datagrams lost with one in flight per flow" %
                             (st["udp_lost"], udp_total))
        if pp.under_asan(p.pid):
            note("soak: VmRSS not checked under AddressSanitizer")
        else:
            slack = max(2048, rss[25] // 10)
            self.assertLess(rss[100] - rss[25], slack, "VmRSS grew from %d to %d KiB between "
                            "25%% and 100%% of the soak" % (rss[25], rss[100]))
        # Flows expire after 1 s idle: then only the listeners and the pool's pipes remain.
        snap = self.assert_fds_back(p, base, "after the soak", timeout=10)
        note("soak: at rest %d sockets, %d pipe ends (before: %d, %d)", snap.sockets, snap.pipes,
             base.sockets, base.pipes)


# ------------------------------------------------------------------------------------------------
class TestHardening(FaultCase):
    """Close-on-exec everywhere, and nothing in the binary that could execute a program."""

    def test_adopted_fd4_and_every_fd_cloexec(self):
        echo = self.echo_server()
        lsock = pp.listening_socket("127.0.0.1", 0)
        self.addCleanup(lsock.close)
        port = lsock.getsockname()[1]
        args = pp.proxy_args(port, "127.0.0.1", echo.port, use_listen_fd=True)
        p = pp.spawn(args, listen_fd=lsock)
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        lsock.close()
        self.assertTrue(p.handshake_eof, "fd 3 not closed after the handshake")
        self.assert_echo(port, b"via fd 4")
        self.assertIn("4", os.listdir("/proc/%d/fd" % p.pid), "the proxy closed fd 4")
        self.assert_cloexec(p, "proxy serving a socket passed as fd 4")
        # And with connections open in both directions, pipes borrowed:
        c = pp.connect("127.0.0.1", port)
        self.addCleanup(c.close)
        c.sendall(os.urandom(4 * MiB))
        self.assert_cloexec(p, "proxy relaying")

    def test_binary_cannot_execute_programs(self):
        """The proxy never executes anything: the binary does not even import exec*, system,
        popen, posix_spawn or fork (nm -D). A sanitizer build's runtime does (for its
        symbolizer), so there the imports are only printed."""
        nm = shutil.which("nm")
        if not nm:
            self.skipTest("nm (binutils) is not installed")
        r = subprocess.run([nm, "-D", pp.PORTPROXY], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if r.returncode != 0:
            self.skipTest("nm -D failed on %s: %r" % (pp.PORTPROXY, r.stderr[-200:]))
        undefined, names = set(), set()
        for ln in r.stdout.decode(errors="replace").splitlines():
            parts = ln.split()
            if not parts:
                continue
            name = parts[-1].split("@")[0]
            names.add(name)
            if len(parts) == 2 and parts[0] in ("U", "w"):
                undefined.add(name)
        banned = {"execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle",
                  "fexecve", "execveat", "system", "popen", "posix_spawn", "posix_spawnp",
                  "fork", "vfork", "clone", "clone3"}
        found = sorted(undefined & banned)
        if any(n.startswith(("__asan_", "__ubsan_", "__sanitizer_", "__tsan_")) for n in names):
            note("sanitizer build: process-starting imports not checked: %r", found)
            return
        self.assertEqual(found, [], "the binary imports process-starting functions (the proxy "
                         "must never execute anything)")


if __name__ == "__main__":
    unittest.main()
