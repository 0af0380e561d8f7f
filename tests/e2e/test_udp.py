#!/usr/bin/env python3
"""End-to-end UDP tests for portproxy (-proto udp).

Every test spawns the real binary the way dockerd does (pp.spawn: exact argv order
`-proto udp -host-ip IP -host-port N -container-ip IP -container-port N`, stdio on /dev/null,
fd 3 the handshake pipe, fd 4 a bound UDP socket with -use-listen-fd) in front of Python UDP
backends on loopback, or inside a throw-away network namespace. Run:

    PORTPROXY=build/portproxy python3 tests/e2e/test_udp.py [-v] [TestClass.test_name]

Exit 77 when $PORTPROXY is missing (CTest: skipped). Measurements are printed to stderr.

Client sockets are *connected* wherever the point is the reply's source address: a connected
UDP socket drops datagrams from any address but the one it connected to (moby #11998).
"""

import contextlib
import os
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
MAX_V4 = 65507  # 65535 - 20 (IPv4) - 8 (UDP)
MAX_V6 = 65527  # 65535 - 8 (UDP); the IPv6 header is not in the payload length


def note(fmt, *args):
    """Measurements worth seeing in a CI log (stderr, so unittest output stays readable)."""
    sys.stderr.write("    [measured] " + (fmt % args) + "\n")


def udp_client(host, port, connect=True, bind_ip=None):
    s = socket.socket(pp.family_of(host), socket.SOCK_DGRAM)
    if bind_ip is not None:
        s.bind((bind_ip, 0))
    if connect:
        s.connect((host, port))
    return s


def recv_burst(sock, n, timeout=5.0):
    """Receive up to n datagrams on sock, waiting `timeout` s at most in all. Returns them in
    the order they came (fewer than n if the time ran out)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(65536))
        except socket.timeout:
            break
    return got


def udp_socket_drops(pid):
    """The kernel's drop counts (/proc/net/udp{,6}, the drops column) of pid's UDP sockets,
    summed: what the proxy's own sockets lost to a full receive buffer."""
    inodes = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        with contextlib.suppress(OSError):
            link = os.readlink("/proc/%d/fd/%s" % (pid, name))
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    total = 0
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(path) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[9]) in inodes:
                    total += int(fields[-1])
    return total


exchange = pp.udp_exchange


class UdpTestCase(unittest.TestCase):
    """Helpers; everything is cleaned up with addCleanup."""

    def start_proxy(self, backend_port, **kw):
        """A UDP proxy to backend_port (pp.start_proxy)."""
        return pp.start_proxy(self, backend_port, proto="udp", **kw)

    def backend(self, host="127.0.0.1", **kw):
        b = pp.UdpBackend(host, **kw)
        self.addCleanup(b.close)
        return b

    def client(self, host, port, **kw):
        s = udp_client(host, port, **kw)
        self.addCleanup(s.close)
        return s

    def need_v6(self):
        if not HAVE_V6:
            self.skipTest("IPv6 loopback (::1) is not available here")

    def assert_echo(self, sock, payload, what, src=None, to=None):
        data, source = exchange(sock, payload, to=to)
        self.assertIsNotNone(data, "%s: no reply (after 3 tries)" % what)
        self.assertEqual(len(data), len(payload), "%s: length" % what)
        self.assertTrue(data == payload, "%s: bytes differ" % what)
        if src is not None:
            self.assertEqual(source[:2], src, "%s: reply from the wrong address" % what)
        return source


# ------------------------------------------------------------------------------------------------
class TestEcho(UdpTestCase):
    """Datagrams go through unchanged and replies come from the address the client used."""

    def test_echo_ipv4_connected(self):
        be = self.backend()
        p = self.start_proxy(be.port)
        c = self.client("127.0.0.1", p.port)
        for i in range(5):
            self.assert_echo(c, os.urandom(100 + i), "echo over IPv4 (connected client)")
        self.assertEqual(p.first_read, b"0\n", "handshake must be one write of '0\\n'")
        self.assertTrue(p.handshake_eof, "fd 3 must be closed after the handshake")

    def test_echo_ipv6_connected(self):
        self.need_v6()
        be = self.backend("::1")
        p = self.start_proxy(be.port, host_ip="::1", container_ip="::1")
        c = self.client("::1", p.port)
        for i in range(5):
            self.assert_echo(c, os.urandom(100 + i), "echo over IPv6 (connected client)")

    def test_wildcard_v4_replies_from_the_address_used(self):
        be = self.backend()
        p = self.start_proxy(be.port, host_ip="0.0.0.0")
        for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.53"):
            c = self.client(ip, p.port)
            self.assert_echo(c, b"wild " + ip.encode(), "0.0.0.0 proxy via %s" % ip)
            u = self.client(ip, p.port, connect=False)
            self.assert_echo(u, b"unconnected", "0.0.0.0 proxy via %s (unconnected)" % ip,
                             src=(ip, p.port), to=(ip, p.port))

    def test_wildcard_v6_replies_from_the_address_used(self):
        self.need_v6()
        be = self.backend("::1")
        p = self.start_proxy(be.port, host_ip="::", container_ip="::1")
        c = self.client("::1", p.port)
        self.assert_echo(c, b"wild v6", ":: proxy via ::1")
        u = self.client("::1", p.port, connect=False)
        self.assert_echo(u, b"unconnected", ":: proxy via ::1 (unconnected)",
                         src=("::1", p.port), to=("::1", p.port))

    def test_echo_6to4(self):
        self.need_v6()
        be = self.backend("127.0.0.1")
        p = self.start_proxy(be.port, host_ip="::1", container_ip="127.0.0.1")
        c = self.client("::1", p.port)
        self.assert_echo(c, os.urandom(1000), "IPv6 front, IPv4 backend")

    def test_v4_and_v6_proxies_share_a_port(self):
        """dockerd runs one proxy for 0.0.0.0 and one for :: on the same port (V6ONLY)."""
        self.need_v6()
        be4 = self.backend("127.0.0.1", reply=lambda d: b"v4:" + d)
        be6 = self.backend("::1", reply=lambda d: b"v6:" + d)
        p4 = self.start_proxy(be4.port, host_ip="0.0.0.0")
        p6 = pp.spawn(pp.proxy_args(p4.port, "::1", be6.port, host_ip="::", proto="udp"))
        self.addCleanup(p6.cleanup)
        self.assertEqual(p6.status, "0", ":: proxy on the 0.0.0.0 proxy's port: %s"
                         % p6.describe())
        d4, _ = exchange(self.client("127.0.0.1", p4.port), b"x")
        d6, _ = exchange(self.client("::1", p4.port), b"x")
        self.assertEqual(d4, b"v4:x")
        self.assertEqual(d6, b"v6:x")

    def test_eight_clients_at_once_get_only_their_own(self):
        be = self.backend()
        p = self.start_proxy(be.port)
        n_clients, rounds = 8, 200
        errors = []
        barrier = threading.Barrier(n_clients)

        def run(idx):
            c = udp_client("127.0.0.1", p.port)
            try:
                tag = b"client-%d:" % idx
                barrier.wait(timeout=10)
                for i in range(rounds):
                    msg = tag + b"%d" % i
                    got, _ = exchange(c, msg, timeout=1.0)
                    if got is None:
                        errors.append("client %d: no reply to datagram %d" % (idx, i))
                        return
                    # A late echo of an earlier retry is ours too; anything else is crosstalk.
                    if not got.startswith(tag):
                        errors.append("client %d got %r (someone else's)" % (idx, got[:30]))
                        return
            except Exception as e:  # reported below
                errors.append("client %d: %r" % (idx, e))
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertFalse(any(t.is_alive() for t in threads), "clients did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(len(set(be.sources())), n_clients,
                         "the backend should see one source port per client")


# ------------------------------------------------------------------------------------------------
class TestSizes(UdpTestCase):
    """The largest datagram of each family passes intact, both ways."""

    def test_65507_bytes_over_ipv4(self):
        be = self.backend()
        p = self.start_proxy(be.port)
        c = self.client("127.0.0.1", p.port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.assert_echo(c, os.urandom(MAX_V4), "65507-byte datagram over IPv4")
        self.assert_echo(c, os.urandom(1), "and a 1-byte one after it")
        self.assert_echo(c, b"", "and an empty one")

    def test_65527_bytes_over_ipv6(self):
        self.need_v6()
        be = self.backend("::1")
        p = self.start_proxy(be.port, host_ip="::1", container_ip="::1")
        c = self.client("::1", p.port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.assert_echo(c, os.urandom(MAX_V6), "65527-byte datagram over IPv6")

    def test_burst_of_equal_datagrams_keeps_boundaries(self):
        """Many equal datagrams at once (the proxy may send them as one UDP_SEGMENT batch):
        each must arrive as itself, in order."""
        be = self.backend()
        p = self.start_proxy(be.port)
        c = self.client("127.0.0.1", p.port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for size in (64, 1200):
            msgs = [bytes([i]) * size for i in range(64)]
            for m in msgs:
                c.send(m)
            got = recv_burst(c, len(msgs))
            self.assertEqual(len(got), len(msgs), "%d-byte burst: datagrams back" % size)
            self.assertEqual(sorted(got), msgs, "%d-byte burst: contents" % size)

    def test_burst_of_empty_datagrams(self):
        """Empty datagrams sent back to back stay as many datagrams, both ways (a UDP_SEGMENT
        send with a segment size of 0 would make them one)."""
        be = self.backend()
        p = self.start_proxy(be.port)
        c = self.client("127.0.0.1", p.port)
        self.assert_echo(c, b"open", "the flow first")
        for _ in range(10):
            c.send(b"")
        got = recv_burst(c, 11, timeout=2.0)
        self.assertEqual(got, [b""] * 10, "10 empty datagrams echoed through the proxy")
        self.assertEqual(be.count, 11, "datagrams at the backend (1 + 10 empty)")


# ------------------------------------------------------------------------------------------------
class TestFlows(UdpTestCase):
    """One socket per client flow; idle expiry; the flow cap."""

    def test_source_port_stable_then_new_after_expiry(self):
        """A flow that only sends keeps its source port at the backend until it has been idle
        for -udp-timeout; then the next datagram makes a new flow with a new port."""
        be = self.backend(echo=False)
        p = self.start_proxy(be.port, extra=["-udp-timeout", "300ms"])
        base_fds = p.fd_count()
        c = self.client("127.0.0.1", p.port)
        for i in range(10):
            c.send(b"only-sends %d" % i)
            time.sleep(0.05)  # paced below the timeout on purpose: the flow must stay
        self.assertTrue(pp.wait_until(lambda: be.count >= 10, 3), "backend got %d" % be.count)
        ports = {s[1] for s in be.sources()}
        self.assertEqual(len(ports), 1, "source port changed within one flow: %r" % ports)
        self.assertEqual(p.fd_count(), base_fds + 1, "one flow socket while the flow lives")
        t0 = time.monotonic()
        self.assertTrue(pp.wait_until(lambda: p.fd_count() == base_fds, 5),
                        "the idle flow's socket was not closed")
        note("flow expired %.0f ms after the check began (timeout 300 ms)",
             (time.monotonic() - t0) * 1000)
        c.send(b"after expiry")
        self.assertTrue(pp.wait_until(lambda: be.count >= 11, 3))
        new_port = be.sources()[-1][1]
        self.assertNotIn(new_port, ports, "after expiry the flow should be new")

    def test_replies_keep_the_flow_alive(self):
        """Traffic from the backend alone refreshes the flow."""
        be = self.backend(echo=False)
        p = self.start_proxy(be.port, extra=["-udp-timeout", "300ms"])
        c = self.client("127.0.0.1", p.port)
        c.send(b"hello")
        self.assertTrue(pp.wait_until(lambda: be.count >= 1, 3))
        src = be.sources()[0]
        base_fds = p.fd_count()
        end = time.monotonic() + 1.2  # four timeouts
        got = 0
        for _ in range(100):
            if time.monotonic() >= end:
                break
            be.sock.sendto(b"push", src)
            c.settimeout(1)
            try:
                c.recv(100)
                got += 1
            except socket.timeout:
                pass
            time.sleep(0.1)  # pacing the pushes, not synchronisation
        self.assertGreaterEqual(got, 8, "pushes from the backend reached the client")
        self.assertEqual(p.fd_count(), base_fds, "the flow must live while replies flow")
        c.send(b"again")
        self.assertTrue(pp.wait_until(lambda: be.count >= 2, 3))
        self.assertEqual(be.sources()[-1], src, "same flow, same source port")

    def test_idle_proxy_does_not_wake_up(self):
        """No periodic timer: with no flow (none yet, or all expired) the proxy sleeps."""
        be = self.backend()
        p = self.start_proxy(be.port, extra=["-udp-timeout", "200ms"])
        base_fds = p.fd_count()
        slack = 3 if pp.UNDER_VALGRIND else 1
        self.assertLessEqual(self.wakeups_during(p, 1.0), slack, "wake-ups of a fresh idle proxy")
        self.assert_echo(self.client("127.0.0.1", p.port), b"x", "one flow")
        self.assertTrue(pp.wait_until(lambda: p.fd_count() == base_fds, 3), "flow not expired")
        self.assertLessEqual(self.wakeups_during(p, 1.0), slack,
                             "wake-ups of an idle proxy whose flows have expired")

    @staticmethod
    def wakeups_during(p, secs):
        def switches():
            with open("/proc/%d/status" % p.pid) as f:
                return sum(int(line.split()[1]) for line in f
                           if line.startswith(("voluntary_ctxt_switches",
                                               "nonvoluntary_ctxt_switches")))
        before = switches()
        time.sleep(secs)  # the measurement window itself, not synchronisation
        return switches() - before

    def test_timeout_flag_forms(self):
        be = self.backend()
        for val in ("30s", "1m30s", "1.5s"):
            p = self.start_proxy(be.port, extra=["-udp-timeout", val])
            self.assert_echo(self.client("127.0.0.1", p.port), b"t", "-udp-timeout %s" % val)
            p.stop()

    def test_flood_of_source_ports_stays_bounded(self):
        """50,000 distinct client addresses (ports on 5 loopback IPs) against -udp-max-flows
        256: descriptors and memory stay bounded, and a fresh client is still served."""
        cap, per_round, rounds = 256, 10000, 5
        if NOFILE < per_round + 200:
            self.skipTest("RLIMIT_NOFILE %d is too low for %d sockets" % (NOFILE, per_round))
        be = self.backend()
        p = self.start_proxy(be.port, extra=["-udp-max-flows", str(cap)])
        c = self.client("127.0.0.1", p.port)
        self.assert_echo(c, b"before", "before the flood")
        base_fds, rss0 = p.fd_count(), pp.vm_rss_kib(p.pid)
        max_fds, rss = base_fds, []
        t0, cpu0 = time.monotonic(), p.cpu_seconds()
        sent = 0
        for r in range(rounds):
            ip = "127.0.9.%d" % (10 + r)
            socks = []
            try:
                for _ in range(per_round):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((ip, 0))
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        s.sendto(b"flood", ("127.0.0.1", p.port))
                        sent += 1
                    if len(socks) % 1000 == 0:
                        max_fds = max(max_fds, p.fd_count())
            finally:
                for s in socks:
                    s.close()
            max_fds = max(max_fds, p.fd_count())
            rss.append(pp.vm_rss_kib(p.pid))
        secs, cpu = time.monotonic() - t0, p.cpu_seconds() - cpu0
        self.assertTrue(p.alive(), "proxy died in the flood: %s" % p.describe())
        note("flood: %d datagrams from distinct addresses in %.2f s; backend got %d; proxy "
             "CPU %.2f s; fds %d -> max %d; VmRSS %d KiB -> %r KiB", sent, secs, be.count, cpu,
             base_fds, max_fds, rss0, rss)
        self.assertLessEqual(max_fds, base_fds + cap + 8, "flow sockets beyond the cap")
        if pp.under_asan(p.pid):
            note("flood: VmRSS not checked under AddressSanitizer (quarantine)")
        else:
            self.assertLess(rss[-1] - rss0, 16 * 1024, "VmRSS grew by more than 16 MiB")
            self.assertLess(rss[-1] - rss[0], 2 * 1024, "VmRSS kept growing round after round")
        # The flood may still be draining through a slow proxy (valgrind): wait until the
        # backend's count stands still for a second, bounded.
        last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 120
        while time.monotonic() < deadline and time.monotonic() - still_since < 1.0:
            if be.count != last:
                last, still_since = be.count, time.monotonic()
            time.sleep(0.05)
        fresh = self.client("127.0.0.1", p.port, bind_ip="127.0.0.77")
        self.assert_echo(fresh, b"after the flood", "a fresh client after the flood")
        self.assert_echo(c, b"old client", "the first client (its flow evicted) again")

    def test_drops_at_the_proxy_are_counted(self):
        """What the kernel drops at the proxy's own sockets (receive buffer full while the proxy
        is stopped) shows in its exit summary, exactly as /proc/net/udp counts it."""
        be = self.backend()
        p = self.start_proxy(be.port, stdio_null=False)
        c = self.client("127.0.0.1", p.port)
        c.setblocking(False)
        self.assertEqual(udp_socket_drops(p.pid), 0)
        os.kill(p.pid, signal.SIGSTOP)
        try:
            for _ in range(30000):
                with contextlib.suppress(BlockingIOError):
                    c.send(b"x" * 64)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        self.assertTrue(pp.wait_until(lambda: udp_socket_drops(p.pid) > 0, 3),
                        "no drops at the proxy: the flood fitted its buffer")
        # Let the backlog drain (echoes included), then one exchange: its datagrams carry the
        # drop counts of the listener and the flow socket to the proxy.
        last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline and time.monotonic() - still_since < 0.5:
            if be.count != last:
                last, still_since = be.count, time.monotonic()
            time.sleep(0.05)
        c.setblocking(True)
        while True:  # the echoes of the flood still queued at the client
            try:
                c.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        drops = udp_socket_drops(p.pid)
        self.assert_echo(c, b"after", "after the flood")
        self.assertEqual(p.stop(), 0)
        summary = [ln for ln in p.stderr_text().splitlines() if "dropped by the kernel" in ln]
        self.assertEqual(len(summary), 1, p.stderr_text()[-2000:])
        counted = int(summary[0].split(" dropped by the kernel")[0].rsplit(" ", 1)[1])
        note("flood at a stopped proxy: %d dropped at its sockets, %d in its summary",
             drops, counted)
        self.assertEqual(counted, drops)

    def test_flows_at_cap_evict_least_recently_used(self):
        be = self.backend()
        p = self.start_proxy(be.port, extra=["-udp-max-flows", "4"])
        base_fds = p.fd_count()
        clients = [self.client("127.0.0.1", p.port) for _ in range(6)]
        for i, c in enumerate(clients):
            self.assert_echo(c, b"c%d" % i, "client %d" % i)
        self.assertEqual(p.fd_count(), base_fds + 4, "flows beyond the cap of 4")
        for i, c in enumerate(clients):
            self.assert_echo(c, b"again %d" % i, "client %d again (maybe a new flow)" % i)


# ------------------------------------------------------------------------------------------------
class TestBackendErrors(UdpTestCase):
    """ICMP errors from the backend side are counted, not fatal to the flow."""

    def test_backend_not_listening_then_started(self):
        # Hold the port on 127.0.0.2 so nobody else takes it, while 127.0.0.1:<port> refuses.
        hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(hold.close)
        hold.bind(("127.0.0.2", 0))
        port = hold.getsockname()[1]
        p = self.start_proxy(port, container_ip="127.0.0.1")
        c = self.client("127.0.0.1", p.port)
        for i in range(5):
            c.send(b"nobody home %d" % i)
            c.settimeout(0.1)
            with contextlib.suppress(socket.timeout, ConnectionRefusedError):
                c.recv(100)
        self.assertTrue(p.alive(), "proxy died of ICMP errors: %s" % p.describe())
        fds = p.fd_count()
        be = self.backend("127.0.0.1", port=port)
        # No retries: the very first datagram after the backend starts must come back.
        data, _ = exchange(c, b"now it listens", timeout=2.0, tries=1)
        self.assertEqual(data, b"now it listens", "first datagram after the backend started")
        self.assertEqual(p.fd_count(), fds, "the flow should have been kept, not remade")
        self.assertEqual(len(set(be.sources())), 1)


# ------------------------------------------------------------------------------------------------
class TestListenFd(UdpTestCase):
    """-use-listen-fd: a bound UDP socket on fd 4."""

    def spawn_with_fd(self, sock, backend_port, host_ip="127.0.0.1", proto="udp",
                      container_ip="127.0.0.1"):
        port = sock.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, container_ip, backend_port, host_ip=host_ip,
                                   proto=proto, use_listen_fd=True), listen_fd=sock)
        sock.close()  # as dockerd does: the proxy owns it now
        self.addCleanup(p.cleanup)
        p.port = port
        return p

    def test_bound_udp_socket_on_fd4(self):
        be = self.backend()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        p = self.spawn_with_fd(u, be.port)
        self.assertEqual(p.status, "0", p.describe())
        self.assert_echo(self.client("127.0.0.1", p.port), os.urandom(500), "via fd 4")

    def test_dual_stack_socket_on_fd4_reached_over_ipv4(self):
        self.need_v6()
        be = self.backend()
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u.bind(("::", 0))
        p = self.spawn_with_fd(u, be.port, host_ip="::")
        self.assertEqual(p.status, "0", p.describe())
        for ip in ("127.0.0.1", "127.0.0.2"):
            self.assert_echo(self.client(ip, p.port), b"dual " + ip.encode(),
                             "dual-stack fd 4 via %s (connected)" % ip)
        self.assert_echo(self.client("::1", p.port), b"dual v6", "dual-stack fd 4 via ::1")

    def test_dual_stack_socket_on_fd4_broadcast(self):
        """A broadcast to a dual-stack fd 4 is answered from the address the kernel names for
        it (ipi_spec_dst), as on a plain IPv4 socket: a broadcast address is no source."""
        self.need_v6()
        be = self.backend()
        for family in (socket.AF_INET, socket.AF_INET6):
            u = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            u.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            p = self.spawn_with_fd(u, be.port,
                                   host_ip="::" if family == socket.AF_INET6 else "0.0.0.0")
            self.assertEqual(p.status, "0", p.describe())
            c = self.client("127.0.0.1", p.port, connect=False, bind_ip="127.0.0.1")
            c.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            self.assert_echo(c, b"anyone?", "broadcast to %s fd 4" % family.name,
                             src=("127.0.0.1", p.port), to=("127.255.255.255", p.port))

    def test_unbound_udp_socket_rejected(self):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        p = pp.spawn(pp.proxy_args(pp.free_port(type=socket.SOCK_DGRAM), "127.0.0.1",
                                   pp.free_port(), proto="udp", use_listen_fd=True),
                     listen_fd=u)
        u.close()
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "1", p.describe())
        self.assertEqual(p.wait(5), 1)

    def test_tcp_socket_rejected_for_udp(self):
        ls = pp.listening_socket("127.0.0.1", 0)
        p = self.spawn_with_fd(ls, pp.free_port())
        self.assertEqual(p.status, "1", p.describe())
        self.assertIn("udp4", p.message)
        self.assertEqual(p.wait(5), 1)


# ------------------------------------------------------------------------------------------------
class TestStartAndStop(UdpTestCase):
    """Handshake failures and signals."""

    def test_bind_conflict(self):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(u.close)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        p = pp.spawn(pp.proxy_args(port, "127.0.0.1", pp.free_port(), proto="udp"))
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "1", p.describe())
        self.assertEqual(p.message, "listen udp4 127.0.0.1:%d: bind: address already in use"
                         % port)
        self.assertEqual(p.wait(5), 1)

    def _signal_with_flows(self, sig):
        be = self.backend()
        p = self.start_proxy(be.port)
        base_fds = p.fd_count()
        clients = [self.client("127.0.0.1", p.port) for _ in range(100)]
        for i, c in enumerate(clients):
            c.send(b"flow %d" % i)
        self.assertTrue(pp.wait_until(lambda: p.fd_count() >= base_fds + 100, 5),
                        "100 flows did not open (%d fds)" % p.fd_count())
        rc = p.stop(sig, timeout=5)
        self.assertEqual(rc, 0, "exit code after %s" % sig.name)
        note("%s with 100 flows: exit 0 after %.1f ms", sig.name, p.stop_seconds * 1000)
        self.assertLess(p.stop_seconds, 1.0, "exit should be prompt")

    def test_sigint_with_flows(self):
        self._signal_with_flows(signal.SIGINT)

    def test_sigterm_with_flows(self):
        self._signal_with_flows(signal.SIGTERM)


# ------------------------------------------------------------------------------------------------
_NS_UDP_ECHO = r"""
import socket, sys
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((host, 0))
print(s.getsockname()[1], flush=True)
s.settimeout(1.0)
import select, time
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    r, _, _ = select.select([s, sys.stdin], [], [], 1.0)
    if sys.stdin in r and not sys.stdin.buffer.read1(1):
        break
    if s in r:
        try:
            d, a = s.recvfrom(65536)
            s.sendto(d, a)
        except OSError:
            pass
"""


class TestNetns(UdpTestCase):
    """The backend lives in another network namespace, like a container (root only)."""

    def netns(self):
        ns = pp.NetNS()
        try:
            ns.__enter__()
        except pp.NetNSUnavailable as e:
            self.skipTest("no network namespace: %s" % e)
        self.addCleanup(ns.__exit__, None, None, None)
        return ns

    def ns_echo(self, ns, host):
        import subprocess
        proc = ns.exec_popen([sys.executable, "-c", _NS_UDP_ECHO, host], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        import select
        r, _, _ = select.select([proc.stdout], [], [], 5)
        line = proc.stdout.readline() if r else b""
        if not line.strip().isdigit():
            self.skipTest("UDP echo in the namespace did not start: %r" % line)
        return int(line)

    def _through(self, ns, peer, maxsize):
        port = self.ns_echo(ns, peer)
        p = self.start_proxy(port, container_ip=peer)
        c = self.client("127.0.0.1", p.port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for size in (1, 1400, 1472, 9000, maxsize):
            self.assert_echo(c, os.urandom(size), "%d bytes to %s in a netns" % (size, peer))
        # A burst of equal datagrams across the veth (GSO sized to its 1500-byte MTU).
        msgs = [bytes([i]) * 1000 for i in range(32)]
        for m in msgs:
            c.send(m)
        self.assertEqual(sorted(recv_burst(c, len(msgs))), msgs, "burst through the namespace")

    def test_backend_in_netns_ipv4(self):
        ns = self.netns()
        self._through(ns, pp.NS_PEER_V4, MAX_V4)

    def test_backend_in_netns_ipv6(self):
        ns = self.netns()
        if not ns.ipv6:
            self.skipTest("could not configure IPv6 on the veth pair")
        self._through(ns, pp.NS_PEER_V6, MAX_V4)  # the front is IPv4: 65507 at most


if __name__ == "__main__":
    unittest.main(verbosity=2)
