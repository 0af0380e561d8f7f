#!/usr/bin/env python3
"""End-to-end TCP tests for portproxy.

Every test spawns the real binary the way dockerd does (see pp.spawn: exact argv order, stdio on
/dev/null, fd 3 handshake pipe, optional fd 4 listening socket) in front of Python backends on
loopback, or inside a throw-away network namespace. Run:

    PORTPROXY=build/portproxy python3 tests/e2e/test_tcp.py [-v] [TestClass.test_name]

Exit 77 when $PORTPROXY is missing (CTest: skipped). Measurements are printed to stderr.
"""

import hashlib
import os
import re
import resource
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pp  # noqa: E402

pp.require_binary()
NOFILE = pp.raise_nofile()
HAVE_V6 = pp.have_ipv6_loopback()
MiB = pp.MiB


def note(fmt, *args):
    """Measurements worth seeing in a CI log (stderr, so unittest output stays readable)."""
    sys.stderr.write("    [measured] " + (fmt % args) + "\n")


def somaxconn():
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def non_cloexec_fds(pid):
    """fds >= 3 of pid that lack O_CLOEXEC (would leak into anything the proxy executes)."""
    bad = []
    for name in os.listdir("/proc/%d/fdinfo" % pid):
        if int(name) < 3:
            continue
        try:
            with open("/proc/%d/fdinfo/%s" % (pid, name)) as f:
                for line in f:
                    if line.startswith("flags:"):
                        if not int(line.split()[1], 8) & 0o2000000:
                            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
                            if pp.UNDER_VALGRIND and os.path.basename(target).startswith("vg."):
                                continue  # valgrind's own log file, not the proxy's
                            bad.append("%s -> %s" % (name, target))
                        break
        except OSError:
            pass
    return bad


def modal_handler(conn, addr, srv):
    """Backend for ThreadedServer whose behaviour the client picks with its first byte:
      E  echo until EOF, then shut down writing
      H  half-close (client side): read until EOF, then answer "got <n> <sha256>"
      G  half-close (backend side): send greeting, SHUT_WR, then read until EOF and record it
      S  send random data (up to 64 MiB) until the send fails; record how it ended
      R  read until EOF or error; record how it ended
      N  latency: 100 rounds of: read "q" + 50 "Q" (two writes), answer "H" + 100 "B"
    Records go to srv.results as (mode, dict)."""
    conn.settimeout(10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cmd = conn.recv(1)
    if cmd == b"E":
        pp.echo_until_eof(conn)
    elif cmd == b"H":
        data = pp.recv_until_eof(conn, timeout=10)
        conn.sendall(b"got %d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))
        conn.shutdown(socket.SHUT_WR)
    elif cmd == b"G":
        rec = {"got": None, "err": None}
        with srv.lock:
            srv.results.append(("G", rec))
        conn.sendall(b"hello from backend")
        conn.shutdown(socket.SHUT_WR)
        try:
            rec["got"] = pp.recv_until_eof(conn, timeout=10)
        except (OSError, TimeoutError) as e:
            rec["err"] = repr(e)
    elif cmd == b"S":
        rec = {"sent": 0, "outcome": None, "t_end": None}
        with srv.lock:
            srv.results.append(("S", rec))
        conn.settimeout(5)
        try:
            for chunk in pp.random_stream(64 * MiB, 64 * 1024):
                conn.sendall(chunk)
                rec["sent"] += len(chunk)
            rec["outcome"] = "sent all 64 MiB without an error"
        except (ConnectionResetError, BrokenPipeError):
            rec["outcome"] = "reset"
        except socket.timeout:
            rec["outcome"] = "send blocked for 5 s (connection neither forwarded nor torn down)"
        except OSError as e:
            rec["outcome"] = "error %r" % e
        rec["t_end"] = time.monotonic()
    elif cmd == b"R":
        rec = {"recv": 0, "outcome": None, "t_end": None}
        with srv.lock:
            srv.results.append(("R", rec))
        conn.settimeout(5)
        try:
            pp.count_until_eof(conn, rec)
        except ConnectionResetError:
            rec["outcome"] = "reset"
        except socket.timeout:
            rec["outcome"] = "nothing for 5 s (connection left open)"
        rec["t_end"] = time.monotonic()
    elif cmd == b"N":
        for _ in range(100):
            pp.recv_exact(conn, 51, timeout=10)
            conn.sendall(b"H")
            time.sleep(0.002)  # pacing: makes the two writes separate segments
            conn.sendall(b"B" * 100)
        pp.recv_until_eof(conn, timeout=10)
        conn.shutdown(socket.SHUT_WR)


class ProxyTestCase(unittest.TestCase):
    """Helpers shared by all the test classes; everything is cleaned up with addCleanup."""

    def start_proxy(self, backend_port, **kw):
        """A TCP proxy to backend_port (pp.start_proxy)."""
        return pp.start_proxy(self, backend_port, **kw)

    def echo_server(self, host="127.0.0.1", **kw):
        s = pp.EchoServer(host, **kw)
        self.addCleanup(s.close)
        return s

    def server(self, handler=modal_handler, host="127.0.0.1", **kw):
        s = pp.ThreadedServer(handler, host, **kw)
        self.addCleanup(s.close)
        return s

    def client(self, host, port, **kw):
        s = pp.connect(host, port, **kw)
        self.addCleanup(s.close)
        return s

    def assert_echo(self, host, port, payload=None, what=""):
        payload = payload if payload is not None else os.urandom(100000)
        try:
            got = pp.echo_roundtrip(host, port, payload, timeout=10)
        except (OSError, EOFError, TimeoutError) as e:
            self.fail("echo via %s:%d failed %s: %r" % (host, port, what, e))
        self.assertEqual(len(got), len(payload), "echo via %s:%d %s: length" % (host, port, what))
        self.assertTrue(got == payload, "echo via %s:%d %s: bytes differ" % (host, port, what))

    def records(self, srv, mode, n=1, timeout=5):
        ok = pp.wait_until(lambda: len([r for m, r in srv.results if m == mode]) >= n, timeout)
        self.assertTrue(ok, "backend never saw a %r connection" % mode)
        return [r for m, r in srv.results if m == mode]

    def expect_reset(self, sock, within, what):
        """recv() on sock must fail with ECONNRESET within `within` s; returns the bytes read
        before that."""
        got = bytearray()
        t0 = time.monotonic()
        deadline = t0 + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail("%s: no reset within %.1f s (%d bytes read)" % (what, within, len(got)))
            sock.settimeout(remaining)
            try:
                d = sock.recv(1 << 20)
            except ConnectionResetError:
                return bytes(got), time.monotonic() - t0
            except socket.timeout:
                self.fail("%s: no reset within %.1f s (%d bytes read)" % (what, within, len(got)))
            if not d:
                self.fail("%s: clean EOF after %d bytes where a reset was due (a refused or "
                          "reset backend must not look like a server that hung up)"
                          % (what, len(got)))
            got += d

    def connect_expect_reset(self, host, port, within, what):
        """Connect and require a reset within `within` s. The reset may come so fast that
        connect() itself reports it (the proxy refused before our connect() returned)."""
        t0 = time.monotonic()
        try:
            c = pp.connect(host, port, timeout=2)
        except ConnectionResetError:
            return time.monotonic() - t0
        try:
            return self.expect_reset(c, within, what)[1]
        finally:
            c.close()

    def need_v6(self):
        if not HAVE_V6:
            self.skipTest("IPv6 loopback (::1) is not available here")


# ------------------------------------------------------------------------------------------------
class TestEcho(ProxyTestCase):
    """Case 1: bytes go through unchanged, per address family combination."""

    def test_echo_ipv4(self):
        """127.0.0.1 front -> 127.0.0.1 backend."""
        echo = self.echo_server("127.0.0.1")
        p = self.start_proxy(echo.port)
        self.assert_echo("127.0.0.1", p.port, b"hello")
        self.assert_echo("127.0.0.1", p.port, os.urandom(3 * MiB), "(3 MiB)")
        self.assertEqual(echo.accepted, 2, "backend should see exactly one connection per client")

    def test_echo_ipv6(self):
        """::1 front -> ::1 backend."""
        self.need_v6()
        echo = self.echo_server("::1")
        p = self.start_proxy(echo.port, host_ip="::1", container_ip="::1")
        self.assert_echo("::1", p.port, b"hello6")
        self.assert_echo("::1", p.port, os.urandom(3 * MiB), "(3 MiB)")

    def test_echo_6to4(self):
        """::1 front -> 127.0.0.1 backend (the container may be of the other family)."""
        self.need_v6()
        echo = self.echo_server("127.0.0.1")
        p = self.start_proxy(echo.port, host_ip="::1", container_ip="127.0.0.1")
        self.assert_echo("::1", p.port, os.urandom(MiB))

    def test_v4_and_v6_proxies_share_a_port(self):
        """dockerd runs one proxy for 0.0.0.0 and one for :: on the same port: the IPv6 one
        must listen with IPV6_V6ONLY, and each must serve its own family."""
        self.need_v6()
        e4 = self.echo_server("127.0.0.1", greeting=b"4")
        e6 = self.echo_server("127.0.0.1", greeting=b"6")
        port = pp.free_port("::")  # free on both families
        self.start_proxy(e4.port, host_ip="0.0.0.0", host_port=port, attempts=1)
        p6 = pp.spawn(pp.proxy_args(port, "127.0.0.1", e6.port, host_ip="::"))
        self.addCleanup(p6.cleanup)
        self.assertEqual(p6.status, "0", "proxy for [::]:%d next to one for 0.0.0.0:%d must start "
                         "(IPV6_V6ONLY): %s" % (port, port, p6.describe()))
        for host, want in (("127.0.0.1", b"4"), ("::1", b"6")):
            with pp.connect(host, port) as s:
                self.assertEqual(pp.recv_exact(s, 1), want,
                                 "connection to %s:%d reached the wrong proxy" % (host, port))
                s.sendall(b"x")
                self.assertEqual(pp.recv_exact(s, 1), b"x")


# ------------------------------------------------------------------------------------------------
class TestHandshake(ProxyTestCase):
    """The parent protocol on fd 3, and process hygiene."""

    def test_handshake_single_write_then_close(self):
        """'0\\n' arrives in one write (dockerd reads once) and fd 3 is closed after it."""
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        self.assertEqual(p.raw, b"0\n", "handshake bytes")
        self.assertEqual(p.first_read, b"0\n",
                         "'0' and '\\n' came in separate writes (dockerd would time out)")
        self.assertTrue(p.handshake_eof, "the proxy did not close fd 3 after the handshake")
        self.assertTrue(p.alive(), "proxy exited after the handshake")
        note("handshake after %.3f s", p.handshake_seconds)

    def test_no_fd3_runs_and_serves(self):
        """Run by hand (no fd 3 at all): the proxy must still listen and keep listening
        (docker-proxy's listener lands on fd 3 and is closed by its handshake)."""
        echo = self.echo_server()
        port = pp.free_port()
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", echo.port), handshake=False)
        self.addCleanup(p.cleanup)
        up = pp.wait_until(lambda: pp.can_connect("127.0.0.1", port) or not p.alive(), 5)
        self.assertTrue(p.alive(), "proxy without fd 3 exited with %s" % p.proc.poll())
        self.assertTrue(up, "proxy without fd 3 never accepted a connection in 5 s")
        self.assert_echo("127.0.0.1", port, b"first")
        time.sleep(0.2)  # let any late handshake/cleanup code run; the listener must survive it
        self.assert_echo("127.0.0.1", port, b"second")
        self.assertTrue(p.alive())

    @unittest.skipIf(pp.UNDER_VALGRIND, "valgrind emulates RLIMIT_NOFILE")
    def test_raises_nofile_soft_limit_to_hard(self):
        echo = self.echo_server()
        p = self.start_proxy(
            echo.port,
            preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096)))
        soft, hard = pp.proc_nofile_limits(p.pid)
        self.assertEqual((soft, hard), (4096, 4096), "soft RLIMIT_NOFILE must be raised to hard")

    def test_sigpipe_ignored(self):
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        self.assertTrue(pp.proc_signal_ignored(p.pid, signal.SIGPIPE),
                        "SIGPIPE must be ignored process-wide (splice has no MSG_NOSIGNAL)")

    def test_all_fds_close_on_exec(self):
        """Every fd past stdio (listener, fd 4, connection sockets) is close-on-exec."""
        echo = self.echo_server()
        ls = pp.listening_socket("127.0.0.1", 0)
        port = ls.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", echo.port, use_listen_fd=True),
                     listen_fd=ls)
        ls.close()
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        c = self.client("127.0.0.1", port)
        c.sendall(b"x")
        self.assertEqual(pp.recv_exact(c, 1), b"x")
        self.assertEqual(non_cloexec_fds(p.pid), [], "fds without O_CLOEXEC")
        self.assertFalse(os.path.exists("/proc/%d/fd/3" % p.pid) and
                         os.readlink("/proc/%d/fd/3" % p.pid).startswith("pipe:"),
                         "fd 3 (handshake pipe) still open after the handshake")


# ------------------------------------------------------------------------------------------------
class TestHalfClose(ProxyTestCase):
    """Case 2: a FIN is forwarded only after the data before it, and the other direction goes
    on working."""

    def test_client_shuts_down_write_backend_answers_after_eof(self):
        srv = self.server()
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port)
        data = os.urandom(2 * MiB)
        c.sendall(b"H" + data)
        c.shutdown(socket.SHUT_WR)
        try:
            answer = pp.recv_until_eof(c, timeout=10)
        except (OSError, TimeoutError) as e:
            self.fail("no answer after half-close: %r (backend errors %r)" % (e, srv.errors))
        want = b"got %d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
        self.assertEqual(answer, want, "the backend's answer after EOF must arrive intact")

    def test_backend_shuts_down_write_client_keeps_sending(self):
        srv = self.server()
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port)
        c.sendall(b"G")
        try:
            greeting = pp.recv_until_eof(c, timeout=10)
        except (OSError, TimeoutError) as e:
            self.fail("backend's FIN not forwarded to the client: %r" % e)
        self.assertEqual(greeting, b"hello from backend")
        data = os.urandom(2 * MiB)
        try:
            c.sendall(data)  # our read side is closed; the write side must still work
        except OSError as e:
            self.fail("client could not send after the backend's half-close: %r" % e)
        c.shutdown(socket.SHUT_WR)
        (rec,) = self.records(srv, "G")
        self.assertTrue(pp.wait_until(lambda: rec["got"] is not None or rec["err"], 10),
                        "backend never saw the client's EOF")
        self.assertIsNone(rec["err"], "backend error while reading: %s" % rec["err"])
        self.assertEqual(len(rec["got"]), len(data), "bytes sent after the backend's half-close")
        self.assertTrue(rec["got"] == data, "data after the backend's half-close differs")


# ------------------------------------------------------------------------------------------------
class TestBulk(ProxyTestCase):
    """Cases 3-5 and Nagle: byte-exact bulk in both directions, backpressure, concurrency."""

    def test_64mib_each_way_at_once(self):
        srv = self.server(pp.sink_source_handler(64 * MiB))
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port, timeout=60)
        t0 = time.monotonic()
        cres = pp.bulk_exchange(c, 64 * MiB, timeout=60)
        dt = time.monotonic() - t0
        self.assertTrue(pp.wait_until(lambda: srv.results, 10), "backend never finished")
        bres = srv.results[0]
        note("128 MiB (64 MiB each way) in %.2f s", dt)
        self.assertIsNone(cres["error"], "client side: %s" % cres["error"])
        self.assertIsNone(bres["error"], "backend side: %s" % bres["error"])
        self.assertEqual(cres["sent_len"], 64 * MiB)
        self.assertEqual(bres["recv_len"], cres["sent_len"], "client->backend byte count")
        self.assertEqual(bres["recv_sha"], cres["sent_sha"], "client->backend sha256")
        self.assertEqual(cres["recv_len"], bres["sent_len"], "backend->client byte count")
        self.assertEqual(cres["recv_sha"], bres["sent_sha"], "backend->client sha256")

    def test_slow_reader_backpressure(self):
        """The backend sends 64 MiB to a client that first reads nothing, then reads slowly:
        buffering must be bounded (the backend stalls), the proxy must not spin while the output
        is blocked, and every byte must arrive intact."""
        total = 64 * MiB
        st = {"sent": 0, "sha": None, "err": None}

        def handler(conn, addr, srv):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            conn.settimeout(30)
            h = hashlib.sha256()
            try:
                for chunk in pp.random_stream(total, 64 * 1024):
                    conn.sendall(chunk)
                    h.update(chunk)
                    st["sent"] += len(chunk)
                st["sha"] = h.hexdigest()  # before the FIN: the client may check at once
                conn.shutdown(socket.SHUT_WR)
                pp.recv_until_eof(conn, timeout=30)
            except (OSError, TimeoutError) as e:
                st["err"] = repr(e)

        srv = self.server(handler)
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port, timeout=30, rcvbuf=64 * 1024)

        # Phase 1: read nothing until the backend's progress stops for 300 ms.
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            cur = st["sent"]
            if cur != last:
                last, since = cur, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                break
            time.sleep(0.02)
        note("backend stalled after %.1f MiB with the client not reading", st["sent"] / MiB)
        self.assertLess(st["sent"], total,
                        "backend sent all %d MiB to a client that read nothing: unbounded "
                        "buffering in the proxy" % (total // MiB))
        self.assertGreater(st["sent"], 0, "nothing was sent at all")
        cpu0 = p.cpu_seconds()
        time.sleep(0.5)
        cpu = p.cpu_seconds() - cpu0
        note("proxy CPU while the output was blocked: %.3f s in 0.5 s", cpu)
        self.assertLess(cpu, 0.1, "proxy burns CPU while its output is blocked (busy loop)")
        self.assertEqual(non_cloexec_fds(p.pid), [], "fds without O_CLOEXEC (pipes?)")

        # Phase 2: read slowly, in bounded small steps.
        h = hashlib.sha256()
        got = 0
        before = st["sent"]
        for _ in range(300):
            d = c.recv(4096)
            self.assertTrue(d, "EOF after %d bytes during the slow phase" % got)
            h.update(d)
            got += len(d)
            time.sleep(0.002)
        # Phase 3: read the rest at full speed.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            d = c.recv(1 << 20)
            if not d:
                break
            h.update(d)
            got += len(d)
        self.assertGreater(st["sent"], before, "backend never resumed after the client read")
        self.assertIsNone(st["err"], "backend: %s" % st["err"])
        self.assertEqual(got, total, "bytes received by the slow reader")
        self.assertEqual(h.hexdigest(), st["sha"], "sha256 of what the slow reader got")

    def test_200_concurrent_connections(self):
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        payloads = [b"%06d:" % i + os.urandom(16 * 1024 + i) for i in range(200)]
        t0 = time.monotonic()
        res = pp.parallel_echo("127.0.0.1", p.port, payloads, timeout=30)
        note("200 concurrent echoes in %.2f s", time.monotonic() - t0)
        bad = [(i, err or "wrong bytes (%d of %d)" % (len(got or b""), len(payloads[i])))
               for i, (got, err) in enumerate(res) if err or got != payloads[i]]
        self.assertEqual(bad, [], "%d of 200 connections failed" % len(bad))
        self.assertEqual(echo.accepted, 200)

    def test_small_writes_are_not_delayed(self):
        """Request/response where each side writes a message in two parts: with Nagle on the
        proxy's sockets (no TCP_NODELAY) each round stalls ~40 ms on delayed ACKs."""
        srv = self.server()
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"N")
        rounds = []
        for i in range(100):
            t0 = time.monotonic()
            c.sendall(b"q")
            time.sleep(0.002)  # pacing: two separate segments
            c.sendall(b"Q" * 50)
            self.assertEqual(pp.recv_exact(c, 101, timeout=5), b"H" + b"B" * 100,
                             "round %d" % i)
            rounds.append(time.monotonic() - t0)
        rounds.sort()
        median = rounds[len(rounds) // 2]
        note("100 split-write round trips: median %.1f ms, max %.1f ms (4 ms of each is "
             "pacing)", median * 1000, rounds[-1] * 1000)
        # A Nagle stall waits for a delayed ACK (>= 40 ms) in nearly every round; the median
        # ignores the odd round slowed down by a loaded CI machine.
        self.assertLess(median, 0.020, "median round trip %.1f ms: small writes are being "
                        "delayed (TCP_NODELAY missing on the proxy's sockets?)" % (median * 1000))


# ------------------------------------------------------------------------------------------------
class TestResets(ProxyTestCase):
    """Cases 6-7: refusals and resets reach the other side as resets, never as a clean EOF."""

    def test_backend_down_client_reset_then_recovers(self):
        bport = pp.free_port()
        p = self.start_proxy(bport)
        base = p.socket_count()
        for i in range(20):
            dt = self.connect_expect_reset("127.0.0.1", p.port, 1.0, "connection %d to a proxy "
                                           "whose backend refuses" % i)
            if i == 0:
                note("reset after %.1f ms", dt * 1000)
        self.assertTrue(p.alive(), "proxy died after backend refusals")
        self.assertTrue(pp.wait_until(lambda: p.socket_count() == base, 3),
                        "sockets leaked after refusals: %d open, %d at start"
                        % (p.socket_count(), base))
        try:
            self.echo_server(port=bport)
        except OSError as e:
            self.skipTest("backend port %d was taken meanwhile: %r" % (bport, e))
        self.assert_echo("127.0.0.1", p.port, b"now it listens", "after the backend came up")

    def test_backend_resets_midstream(self):
        sent = {}

        def handler(conn, addr, srv):
            data = os.urandom(2 * MiB)
            sent["data"] = data
            conn.sendall(data)
            pp.set_linger_reset(conn)
            conn.close()

        srv = self.server(handler)
        p = self.start_proxy(srv.port)
        c = self.client("127.0.0.1", p.port)
        got, _ = self.expect_reset(c, 5.0, "client after the backend reset mid-stream")
        self.assertTrue(got == sent["data"][:len(got)],
                        "bytes before the reset are not a prefix of what the backend sent")
        self.assertTrue(p.alive(), "proxy died after a backend reset")
        # The same proxy keeps serving (the handler is looked up per connection: switch it).
        srv.handler = modal_handler
        with pp.connect("127.0.0.1", p.port) as c2:
            c2.sendall(b"Eabc")
            self.assertEqual(pp.recv_exact(c2, 3), b"abc", "proxy stopped serving after a reset")

    def _client_reset(self, mode):
        srv = self.server()
        p = self.start_proxy(srv.port)
        base = p.socket_count()
        c = pp.connect("127.0.0.1", p.port)
        try:
            c.sendall(mode)
            if mode == b"S":
                pp.recv_exact(c, 256 * 1024, timeout=5)  # data is flowing towards us
            else:
                c.sendall(os.urandom(64 * 1024))
                (rec,) = self.records(srv, "R")
                self.assertTrue(pp.wait_until(lambda: rec["recv"] >= 64 * 1024, 5),
                                "backend did not receive the client's data")
            pp.set_linger_reset(c)
        finally:
            c.close()
        t_rst = time.monotonic()
        (rec,) = self.records(srv, mode.decode())
        self.assertTrue(pp.wait_until(lambda: rec["t_end"] is not None, 8),
                        "backend connection still open 8 s after the client reset")
        rec["delay"] = rec["t_end"] - t_rst
        note("backend saw %r %.1f ms after the client's reset", rec["outcome"],
             rec["delay"] * 1000)
        return p, base, rec

    def test_client_resets_while_backend_sends(self):
        p, base, rec = self._client_reset(b"S")
        self.assertEqual(rec["outcome"], "reset",
                         "backend sending to a client that reset must be torn down")
        self.assertLess(rec["delay"], 2.0, "backend torn down only %.2f s after the client "
                        "reset" % rec["delay"])
        self.assertTrue(p.alive(), "proxy died after a client reset")
        self.assertTrue(pp.wait_until(lambda: p.socket_count() == base, 3),
                        "sockets leaked: %d open, %d at start" % (p.socket_count(), base))
        with pp.connect("127.0.0.1", p.port) as c2:
            c2.sendall(b"Eok")
            self.assertEqual(pp.recv_exact(c2, 2), b"ok", "proxy stopped serving after a reset")

    def test_client_resets_while_backend_reads(self):
        p, base, rec = self._client_reset(b"R")
        self.assertIn(rec["outcome"], ("reset", "eof"),
                      "backend reading from a client that reset must see a reset or EOF")
        self.assertTrue(p.alive(), "proxy died after a client reset")
        self.assertTrue(pp.wait_until(lambda: p.socket_count() == base, 3),
                        "sockets leaked: %d open, %d at start" % (p.socket_count(), base))
        with pp.connect("127.0.0.1", p.port) as c2:
            c2.sendall(b"Eok")
            self.assertEqual(pp.recv_exact(c2, 2), b"ok", "proxy stopped serving after a reset")


# ------------------------------------------------------------------------------------------------
class TestListen(ProxyTestCase):
    """Cases 8-9: binding, bind errors, and the socket passed as fd 4."""

    def assert_fails(self, p, needle=None, rc_want=1):
        rc = p.wait(5)
        self.assertEqual(p.status, "1", "handshake must be '1\\n<message>': %s" % p.describe())
        self.assertTrue(p.message.strip(), "failure handshake without a message")
        if needle:
            self.assertIn(needle, p.message.lower(), "message: %r" % p.message)
        self.assertEqual(rc, rc_want, "exit code (%s)" % p.describe())
        note("failure message: %r", p.message)

    def test_bind_conflict_with_listener(self):
        other = pp.listening_socket("127.0.0.1", 0)
        self.addCleanup(other.close)
        port = other.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", pp.free_port()))
        self.addCleanup(p.cleanup)
        self.assert_fails(p, "address already in use")
        self.assertIn(str(port), p.message, "the message should name the port")

    def test_bind_conflict_with_bound_socket(self):
        other = socket.socket()
        self.addCleanup(other.close)
        other.bind(("127.0.0.1", 0))  # bound, not listening, no SO_REUSEADDR
        port = other.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", pp.free_port()))
        self.addCleanup(p.cleanup)
        self.assert_fails(p, "address already in use")

    def test_listen_fd_tcp(self):
        echo = self.echo_server()
        ls = pp.listening_socket("127.0.0.1", 0, backlog=5)
        port = ls.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", echo.port, use_listen_fd=True),
                     listen_fd=ls)
        ls.close()  # as dockerd does: the proxy owns it now
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        self.assert_echo("127.0.0.1", port, os.urandom(MiB), "(socket passed as fd 4)")

    def test_listen_fd_udp_socket_rejected(self):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(u.close)
        u.bind(("127.0.0.1", 0))
        p = pp.spawn(pp.proxy_args(u.getsockname()[1], "127.0.0.1", pp.free_port(),
                                   use_listen_fd=True), listen_fd=u)
        self.addCleanup(p.cleanup)
        self.assert_fails(p)

    def test_listen_fd_not_listening_rejected(self):
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        p = pp.spawn(pp.proxy_args(s.getsockname()[1], "127.0.0.1", pp.free_port(),
                                   use_listen_fd=True), listen_fd=s)
        self.addCleanup(p.cleanup)
        self.assert_fails(p)

    def test_listen_fd_missing_rejected(self):
        """-use-listen-fd with nothing on fd 4."""
        p = pp.spawn(pp.proxy_args(pp.free_port(), "127.0.0.1", pp.free_port(),
                                   use_listen_fd=True))
        self.addCleanup(p.cleanup)
        self.assert_fails(p)

    def test_listen_fd_dual_stack_reached_over_ipv4(self):
        self.need_v6()
        echo = self.echo_server()
        ls = pp.listening_socket("::", 0, v6only=False)
        port = ls.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", echo.port, host_ip="::",
                                   use_listen_fd=True), listen_fd=ls)
        ls.close()
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        self.assert_echo("127.0.0.1", port, os.urandom(100000), "(IPv4 to a dual-stack fd 4)")
        self.assert_echo("::1", port, os.urandom(100000), "(IPv6 to a dual-stack fd 4)")

    def _backlog(self, port):
        lines = pp.ss_lines(["-ltnH", "sport = :%d" % port])
        if lines is None:
            self.skipTest("ss (iproute2) is not installed")
        rows = [ln.split() for ln in lines if ln.strip()]
        self.assertEqual(len(rows), 1, "ss rows for port %d: %r" % (port, lines))
        return int(rows[0][2])  # LISTEN: Send-Q is the backlog

    def test_listen_backlog(self):
        """listen(fd, 4096) (capped by somaxconn), also on a socket passed as fd 4."""
        want = min(4096, somaxconn() or 4096)
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        self.assertEqual(self._backlog(p.port), want, "backlog of the proxy's own listener")
        ls = pp.listening_socket("127.0.0.1", 0, backlog=5)
        port = ls.getsockname()[1]
        p2 = pp.spawn(pp.proxy_args(port, "127.0.0.1", echo.port, use_listen_fd=True),
                      listen_fd=ls)
        ls.close()
        self.addCleanup(p2.cleanup)
        self.assertEqual(p2.status, "0", p2.describe())
        self.assertEqual(self._backlog(port), want, "backlog of a listener passed as fd 4 "
                         "(was 5)")

    def test_accepted_socket_keepalive(self):
        """Accepted sockets get keepalive with Go's docker-proxy timing (15 s)."""
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        c = self.client("127.0.0.1", p.port)
        c.sendall(b"x")
        self.assertEqual(pp.recv_exact(c, 1), b"x")
        lines = pp.ss_lines(["-tnoH", "state", "established", "sport = :%d" % p.port])
        if lines is None:
            self.skipTest("ss (iproute2) is not installed")
        rows = [ln for ln in lines if ln.strip()]
        self.assertEqual(len(rows), 1, "ss rows: %r" % lines)
        m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:([\d.]+)sec)?(?:([\d.]+)ms)?", rows[0])
        self.assertIsNotNone(m, "no keepalive timer on the accepted socket: %r" % rows[0])
        secs = (int(m.group(1) or 0) * 60 + float(m.group(2) or 0) +
                float(m.group(3) or 0) / 1000)
        self.assertLessEqual(secs, 15.0, "keepalive idle time %.1f s (want 15 s)" % secs)


# ------------------------------------------------------------------------------------------------
class TestFairness(ProxyTestCase):
    """The pump's fairness budget, with 4 KiB pipes so that it is used up at once: a connection
    that used it re-arms itself (an edge-triggered event would not fire again for data already
    waiting), and busy connections never keep the loop from signals."""

    def small_pipe_proxy(self, backend_port):
        port = pp.free_port()
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", backend_port) + ["-pipe-size", "4K"])
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "0", p.describe())
        p.port = port
        return p

    def test_burst_then_silence_arrives_whole(self):
        burst = os.urandom(MiB)

        def handler(conn, addr, srv):
            conn.sendall(burst)
            conn.settimeout(10)
            try:
                conn.recv(1)  # then silent, and open until the client goes
            except OSError:
                pass

        p = self.small_pipe_proxy(self.server(handler).port)
        c = self.client("127.0.0.1", p.port)
        t0 = time.monotonic()
        try:
            got = pp.recv_exact(c, len(burst), timeout=3)
        except (TimeoutError, EOFError) as e:
            self.fail("a 1 MiB burst followed by silence stalled: %s" % e)
        note("1 MiB burst through 4 KiB pipes in %.1f ms", (time.monotonic() - t0) * 1000)
        self.assertTrue(got == burst, "burst bytes differ")

    def test_sigterm_while_busy_connections_use_their_budget(self):
        stop = threading.Event()
        self.addCleanup(stop.set)
        chunk = os.urandom(256 * 1024)

        def handler(conn, addr, srv):
            deadline = time.monotonic() + 20
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(chunk)
            except OSError:
                pass

        def drain(c):
            c.settimeout(20)
            try:
                while c.recv(1 << 20):
                    pass
            except OSError:
                pass

        p = self.small_pipe_proxy(self.server(handler).port)
        readers = []
        for _ in range(3):
            c = self.client("127.0.0.1", p.port)
            t = threading.Thread(target=drain, args=(c,), daemon=True)
            t.start()
            readers.append(t)
        time.sleep(0.5)  # let the three transfers run at full speed: this is the load, not a sync
        rc = p.stop(signal.SIGTERM, timeout=5)
        note("SIGTERM with 3 busy 4 KiB-pipe connections: exit %s after %.1f ms", rc,
             (p.stop_seconds or 0) * 1000)
        stop.set()
        self.assertEqual(rc, 0)
        self.assertLess(p.stop_seconds, 1.0, "busy connections delayed SIGTERM")

    def test_sigterm_mid_transfer_resets_instead_of_eof(self):
        """A stream cut off by the proxy's exit must not look complete to the client."""
        total = 64 * MiB

        def handler(conn, addr, srv):
            conn.settimeout(20)
            try:
                for piece in pp.random_stream(total, MiB):
                    conn.sendall(piece)
            except OSError:
                pass

        echo = self.server(handler)
        p = self.start_proxy(echo.port)
        c = self.client("127.0.0.1", p.port, rcvbuf=64 * 1024)
        c.recv(1)  # the transfer runs; then we stop reading and the proxy's pipe fills
        time.sleep(0.3)  # not a sync: time for the buffers to fill up
        self.assertEqual(p.stop(signal.SIGTERM, timeout=5), 0)
        got, _ = self.expect_reset(c, 10, "client of a proxy stopped mid-transfer")
        self.assertLess(len(got), total)


# ------------------------------------------------------------------------------------------------
class TestSignals(ProxyTestCase):
    """Cases 10-11: prompt clean exit on SIGINT/SIGTERM, and rebinding right after."""

    BOUND = 1.0  # generous CI bound; the target is 100 ms (printed)

    def _stop_and_check(self, p, sig, what):
        rc = p.stop(sig, timeout=5)
        note("%s: exit %s after %.1f ms", what, rc, (p.stop_seconds or 0) * 1000)
        self.assertIsNotNone(rc, "%s: proxy did not exit within 5 s" % what)
        self.assertEqual(rc, 0, "%s: exit code" % what)
        self.assertLess(p.stop_seconds, self.BOUND, "%s: exit took %.3f s" %
                        (what, p.stop_seconds))
        try:
            with pp.connect("127.0.0.1", p.port, timeout=1):
                self.fail("%s: port %d still accepts after the exit" % (what, p.port))
        except ConnectionRefusedError:
            pass

    def _signal_idle(self, sig):
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        self.assert_echo("127.0.0.1", p.port, b"before the signal")
        self._stop_and_check(p, sig, signal.Signals(sig).name)

        def plain_bind():
            try:
                with socket.socket() as s:  # no SO_REUSEADDR: nothing at all may hold the port
                    s.bind(("127.0.0.1", p.port))
                    s.listen(1)
                return True
            except OSError:
                return False

        self.assertTrue(pp.wait_until(plain_bind, 2),
                        "port %d not free after the exit: %r" %
                        (p.port, pp.tcp_states_on_local_port(p.port)))

    def test_sigterm(self):
        self._signal_idle(signal.SIGTERM)

    def test_sigint(self):
        self._signal_idle(signal.SIGINT)

    def test_sigint_with_1000_idle_connections(self):
        n = 1000
        if NOFILE < 2 * n + 200:
            self.skipTest("need RLIMIT_NOFILE >= %d for 2x%d sockets, have %d" %
                          (2 * n + 200, n, NOFILE))
        echo = self.echo_server()
        p = self.start_proxy(echo.port)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for i in range(n):
            clients.append(pp.connect("127.0.0.1", p.port, timeout=5))
        ok = pp.wait_until(lambda: echo.active >= n, 20)
        self.assertTrue(ok, "only %d of %d connections reached the backend" % (echo.active, n))
        clients[-1].sendall(b"alive")
        self.assertEqual(pp.recv_exact(clients[-1], 5), b"alive")
        note("proxy holds %d fds with %d idle connections", p.fd_count(), n)
        self._stop_and_check(p, signal.SIGINT, "SIGINT with %d idle connections" % n)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p.port))
                s.listen(1)
            except OSError as e:
                self.fail("port %d not free (SO_REUSEADDR bind) after the exit: %r" %
                          (p.port, e))

    def test_restart_same_port_with_time_wait(self):
        """A new proxy must bind the port at once while the old one's connections sit in
        TIME_WAIT (SO_REUSEADDR)."""

        def closer(conn, addr, srv):  # server speaks first and closes first
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
            pp.recv_until_eof(conn, timeout=5)

        srv = self.server(closer)
        p1 = self.start_proxy(srv.port)
        port = p1.port
        for _ in range(5):
            with pp.connect("127.0.0.1", port) as c:
                self.assertEqual(pp.recv_until_eof(c, timeout=5), b"bye")
        # The proxy's side closed first, so its sockets (local port = port) go to TIME_WAIT.
        tw = pp.wait_until(lambda: "TIME_WAIT" in pp.tcp_states_on_local_port(port), 3)
        self.assertTrue(tw, "no TIME_WAIT on port %d (states %r): the proxy did not close "
                        "gracefully after both EOFs" % (port, pp.tcp_states_on_local_port(port)))
        self.assertEqual(p1.stop(signal.SIGTERM), 0)
        p2 = self.start_proxy(srv.port, host_port=port, attempts=1)
        with pp.connect("127.0.0.1", p2.port) as c:
            self.assertEqual(pp.recv_until_eof(c, timeout=5), b"bye", "restarted proxy serves")


# ------------------------------------------------------------------------------------------------
class TestLimits(ProxyTestCase):
    """Case 12: out of descriptors, the proxy backs off (no spin), survives and recovers."""

    def starved_proxy(self, echo):
        p = self.start_proxy(
            echo.port, stdio_null=False,
            preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)))
        self.assertEqual(pp.proc_nofile_limits(p.pid), (32, 32))
        return p

    def open_clients(self, port, n):
        """n connections at once; returns (sockets, number whose connect() failed)."""
        clients, failed = [], 0
        self.addCleanup(lambda: [c.close() for c in clients])
        for _ in range(n):
            try:
                clients.append(pp.connect("127.0.0.1", port, timeout=5))
            except OSError:
                failed += 1
        return clients, failed

    def test_emfile_backs_off_and_recovers(self):
        echo = self.echo_server()
        p = self.starved_proxy(echo)
        clients, failed = self.open_clients(p.port, 100)
        # Let it run into the limit: wait for the fd count to hold still for 300 ms.
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cur = p.fd_count() if p.alive() else -2
            if cur != last:
                last, since = cur, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                break
            time.sleep(0.02)
        self.assertTrue(p.alive(), "proxy died out of fds: %s" % p.describe())
        note("starved proxy holds %d fds, backend has %d connections, %d connects failed",
             p.fd_count(), echo.active, failed)
        cpu0 = p.cpu_seconds()
        t0 = time.monotonic()
        time.sleep(1.0)
        cpu = (p.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        note("CPU while out of fds: %.3f s per second", cpu)
        self.assertTrue(p.alive(), "proxy died out of fds: %s" % p.describe())
        self.assertLess(cpu, 0.3, "proxy spins while out of fds")
        for c in clients:
            c.close()
        clients.clear()
        ok = pp.wait_until(lambda: pp.try_echo("127.0.0.1", p.port, b"again", timeout=1), 15,
                           interval=0.1)
        self.assertTrue(ok, "no service after the clients left: %s" % p.describe())
        self.assertTrue(p.alive())
        lines = p.stderr_text().splitlines()
        note("%d stderr lines while starved", len(lines))
        self.assertLess(len(lines), 100, "warnings not rate-limited: %d lines, e.g. %r"
                        % (len(lines), lines[:3]))

    @unittest.skipIf(pp.UNDER_VALGRIND, "valgrind's accept4 closes fds above its emulated limit")
    def test_emfile_excess_clients_wait_in_backlog(self):
        """DESIGN 4: out of fds, clients wait in the backlog until there is room; none is
        reset. Each of 100 clients sends its number; a client whose echo came back is closed,
        which makes room for the next ones; in the end all 100 were served."""
        echo = self.echo_server()
        p = self.starved_proxy(echo)
        clients, failed = self.open_clients(p.port, 100)
        self.assertEqual(failed, 0, "%d of 100 connect() calls failed (reset while the proxy "
                         "was out of fds?)" % failed)
        want = {}
        pending = set(range(len(clients)))
        reset, eof = [], []
        for i, c in enumerate(clients):
            want[i] = b"%04d" % i
            try:
                c.sendall(want[i])
            except (ConnectionResetError, BrokenPipeError):
                reset.append(i)
                pending.discard(i)
            c.setblocking(False)
        got = {i: b"" for i in pending}
        deadline = time.monotonic() + 20
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                try:
                    d = clients[i].recv(16)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    reset.append(i)
                    pending.discard(i)
                    continue
                if not d:
                    eof.append(i)
                    pending.discard(i)
                    continue
                got[i] += d
                if len(got[i]) >= 4:
                    self.assertEqual(got[i], want[i], "client %d got another's bytes" % i)
                    clients[i].close()
                    pending.discard(i)
            time.sleep(0.01)
        note("served %d, reset %d, EOF %d, still waiting %d",
             100 - len(reset) - len(eof) - len(pending), len(reset), len(eof), len(pending))
        self.assertTrue(p.alive(), "proxy died out of fds: %s" % p.describe())
        self.assertEqual(len(reset), 0, "%d clients were reset while the proxy was out of fds "
                         "(they should wait in the backlog); e.g. clients %r"
                         % (len(reset), reset[:5]))
        self.assertEqual(len(eof), 0, "%d clients got EOF without an answer" % len(eof))
        self.assertEqual(len(pending), 0, "%d clients never served in 20 s" % len(pending))


# ------------------------------------------------------------------------------------------------
class TestFlags(ProxyTestCase):
    """Case 14: Go `flag` compatible command line."""

    def run_flags(self, args, handshake=True):
        p = pp.spawn(args, stdio_null=False, handshake=handshake)
        self.addCleanup(p.cleanup)
        rc = p.wait(5)
        self.assertIsNotNone(rc, "%r did not exit" % (args,))
        return p, rc

    def assert_usage_error(self, args, needle):
        p, rc = self.run_flags(args)
        self.assertEqual(rc, 2, "exit code for %r" % (args,))
        lines = [ln for ln in p.stderr_text().splitlines() if ln.strip()]
        # One error line (plus at most a "see -h" hint), not the whole usage text.
        self.assertTrue(1 <= len(lines) <= 2, "want a one-line error on stderr for %r, got %r"
                        % (args, lines))
        self.assertIn(needle.lower(), lines[0].lower(), "stderr should name %r" % needle)
        self.assertEqual(p.status, "1", "fd 3 should carry '1\\n<message>' for %r: %s"
                         % (args, p.describe()))
        self.assertTrue(p.message.strip(), "empty fd-3 message for %r" % (args,))

    def base(self, **over):
        a = {"host_port": pp.free_port(), "container_ip": "127.0.0.1",
             "container_port": pp.free_port()}
        a.update(over)
        return pp.proxy_args(**a)

    def test_help(self):
        p, rc = self.run_flags(["-h"])
        self.assertEqual(rc, 0, "-h exit code")
        out = p.stdout_text() + p.stderr_text()
        for flag in ("-host-port", "-container-ip", "-proto"):
            self.assertIn(flag, out, "usage should list %s" % flag)

    def test_unknown_flag(self):
        p, rc = self.run_flags(self.base() + ["-bogus-flag"])
        self.assertEqual(rc, 2, "unknown flag exit code")
        self.assertIn("-container-ip", p.stderr_text(), "usage on stderr for an unknown flag")

    def test_bad_host_port_out_of_range(self):
        self.assert_usage_error(self.base(host_port=70000), "70000")

    def test_bad_host_port_not_a_number(self):
        self.assert_usage_error(self.base(host_port="abc"), "abc")

    def test_bad_host_ip(self):
        self.assert_usage_error(self.base(host_ip="1.2.3"), "1.2.3")

    def test_missing_container_ip(self):
        args = ["-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", str(pp.free_port()),
                "-container-port", str(pp.free_port())]
        self.assert_usage_error(args, "container-ip")

    def test_version(self):
        for flag in ("-v", "-version"):
            with self.subTest(flag=flag):
                p, rc = self.run_flags([flag])
                self.assertEqual(rc, 0, "%s exit code" % flag)
                lines = [ln for ln in (p.stdout_text() + p.stderr_text()).splitlines()
                         if ln.strip()]
                self.assertEqual(len(lines), 1, "%s should print one line: %r" % (flag, lines))
                note("%s: %r", flag, lines[0])

    def test_go_style_forms(self):
        echo = self.echo_server()
        for form in ("-host-port=N", "--host-port N", "--host-port=N", "all --x=v"):
            with self.subTest(form=form):
                port = pp.free_port()
                if form == "all --x=v":
                    args = ["--proto=tcp", "--host-ip=127.0.0.1", "--host-port=%d" % port,
                            "--container-ip=127.0.0.1", "--container-port=%d" % echo.port]
                else:
                    args = self.base(host_port=port, container_port=echo.port)
                    i = args.index("-host-port")
                    if form == "-host-port=N":
                        args[i:i + 2] = ["-host-port=%d" % port]
                    elif form == "--host-port N":
                        args[i] = "--host-port"
                    else:
                        args[i:i + 2] = ["--host-port=%d" % port]
                p = pp.spawn(args)
                self.addCleanup(p.cleanup)
                self.assertEqual(p.status, "0", "%r: %s" % (args, p.describe()))
                self.assert_echo("127.0.0.1", port, b"form " + form.encode())
                p.kill()

    def test_bool_forms_of_use_listen_fd(self):
        echo = self.echo_server()
        for form in ("-use-listen-fd=true", "--use-listen-fd"):
            with self.subTest(form=form):
                ls = pp.listening_socket("127.0.0.1", 0)
                port = ls.getsockname()[1]
                args = pp.proxy_args(port, "127.0.0.1", echo.port) + [form]
                p = pp.spawn(args, listen_fd=ls)
                ls.close()
                self.addCleanup(p.cleanup)
                self.assertEqual(p.status, "0", "%r: %s" % (args, p.describe()))
                self.assert_echo("127.0.0.1", port, b"bool form")
                p.kill()
        with self.subTest(form="-use-listen-fd=false"):
            port = pp.free_port()
            args = pp.proxy_args(port, "127.0.0.1", echo.port) + ["-use-listen-fd=false"]
            p = pp.spawn(args)  # no fd 4: it must bind by itself
            self.addCleanup(p.cleanup)
            self.assertEqual(p.status, "0", "%r: %s" % (args, p.describe()))
            self.assert_echo("127.0.0.1", port, b"binds itself")

    def test_proto_sctp_without_kernel_support(self):
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
            self.skipTest("this kernel supports SCTP (the SCTP suite covers it)")
        except OSError:
            pass
        p, rc = self.run_flags(self.base(proto="sctp"))
        self.assertEqual(p.status, "1", "handshake for -proto sctp: %s" % p.describe())
        self.assertTrue(p.message.strip(), "empty message")
        self.assertEqual(rc, 1, "exit code for -proto sctp without kernel SCTP")
        note("sctp message: %r", p.message)


# ------------------------------------------------------------------------------------------------
class TestNetns(ProxyTestCase):
    """Case 15: the backend lives in another network namespace, like a container."""

    def netns(self, **kw):
        ns = pp.NetNS(**kw)
        try:
            ns.__enter__()
        except pp.NetNSUnavailable as e:
            self.skipTest(str(e))
        self.addCleanup(ns.__exit__, None, None, None)
        return ns

    def _through(self, ns, peer):
        try:
            port = ns.spawn_echo(peer)
        except pp.NetNSUnavailable as e:
            self.skipTest(str(e))
        if not pp.wait_until(lambda: pp.can_connect(peer, port), 5, interval=0.05):
            self.skipTest("cannot reach %s:%d in the namespace directly" % (peer, port))
        p = self.start_proxy(port, container_ip=peer)
        self.assert_echo("127.0.0.1", p.port, os.urandom(4 * MiB), "to %s in a netns" % peer)
        # Nothing listens on this port in the fresh namespace: refused -> client reset.
        p2 = self.start_proxy(pp.free_port(), container_ip=peer)
        self.connect_expect_reset("127.0.0.1", p2.port, 1.0, "backend port closed in the "
                                  "namespace")

    def test_backend_in_netns_ipv4(self):
        ns = self.netns()
        self._through(ns, pp.NS_PEER_V4)

    def test_backend_in_netns_ipv6(self):
        ns = self.netns(need_v4=False, need_v6=True)
        self._through(ns, pp.NS_PEER_V6)


if __name__ == "__main__":
    unittest.main(verbosity=2)
