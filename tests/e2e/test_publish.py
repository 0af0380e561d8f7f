#!/usr/bin/env python3
"""End-to-end tests of Docker's publish forms (issue 5): -p / --publish, -P with -expose, host
port ranges, random ports, all-or-nothing failures and the `docker port` report on stdout.

    PORTPROXY=build/portproxy python3 tests/e2e/test_publish.py -v

The proxy is spawned the way a runtime would (fd 3 = handshake pipe), with stdout captured for
the port report. Backends are echo servers on 127.0.0.1 (or ::1) at the *container* ports, which
are found by probing (bind and read back) and then named in the spec; every backend greets with
its port, so a test sees that host port k reached container port k. No fixed ports, traffic only
to 127.0.0.0/8 and ::1, bounded waits, no sleeps as synchronisation.

UDP cases skip (with the reason) while a probe `-p 127.0.0.1::9/udp` does not start.
"""

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pp  # noqa: E402
import publish_util as pu  # noqa: E402

HAVE_V6 = pp.have_ipv6_loopback()
HAVE_V6_ANY = pu.can_bind(0, [("::", "tcp")])
WILD = ("0.0.0.0", "::") if HAVE_V6_ANY else ("0.0.0.0",)
NO_V6 = "IPv6 loopback (::1) is not available here"

_udp_reason = None


def udp_unavailable():
    """'' if the binary publishes UDP, else why not (the probe's answer)."""
    global _udp_reason
    if _udp_reason is None:
        p = pp.spawn(["-container-ip", "127.0.0.1", "-p", "127.0.0.1::9/udp"], stdio_null=False)
        try:
            if p.status == "0":
                _udp_reason = ""
            else:
                _udp_reason = ("UDP publishing is not available in this build yet: the probe "
                               "`-p 127.0.0.1::9/udp` answered %r (exit %s)" %
                               (p.raw, p.wait(2)))
        finally:
            p.stop()
            p.cleanup()
    return _udp_reason


def note(msg):
    sys.stderr.write("\n    [publish] %s\n" % msg)
    sys.stderr.flush()


class PublishCase(unittest.TestCase):
    PROTO = "tcp"

    @classmethod
    def setUpClass(cls):
        if cls.PROTO == "udp":
            why = udp_unavailable()
            if why:
                raise unittest.SkipTest(why)

    # -- spawning --
    def spawn(self, args, container_ip="127.0.0.1"):
        p = pp.spawn(["-container-ip", container_ip] + [str(a) for a in args], stdio_null=False)
        self.addCleanup(p.cleanup)
        return p

    def start(self, specs, extra=(), container_ip="127.0.0.1"):
        """Spawn with one -p per spec (plus `extra` args); expect it to start."""
        args = []
        for s in specs:
            args += ["-p", s]
        p = self.spawn(args + list(extra), container_ip)
        self.assertEqual(p.status, "0", "did not start: %s %s" % (p.argv, p.describe()))
        self.assertTrue(p.alive(), p.describe())
        return p

    def read_report(self, p, n, timeout=5.0):
        """The n report lines on p's stdout, parsed (waits until they are all there)."""
        pp.wait_until(lambda: p.stdout_text().count("\n") >= n or not p.alive(), timeout)
        text = p.stdout_text()
        self.assertEqual(text.count("\n"), n,
                         "want %d report lines, stdout=%r %s" % (n, text[-3000:], p.describe()))
        try:
            ms = pu.parse_report(text)
        except ValueError as e:
            self.fail("%s in stdout %r" % (e, text[-3000:]))
        self.assertEqual(len(ms), n)
        keys = [pu.report_key(m) for m in ms]
        self.assertEqual(keys, sorted(keys), "not in `docker port` order:\n" + text)
        return ms

    def expect_fail(self, p, exit_code, timeout=5.0):
        rc = p.wait(timeout)
        self.assertEqual(rc, exit_code, "exit code; %s" % p.describe())
        self.assertEqual(p.status, "1", "fd 3 should get 1\\n+message; %s" % p.describe())
        self.assertEqual(p.first_read, p.raw, "the failure report was not one write()")
        self.assertTrue(p.message.strip(), "no message after 1\\n")

    # -- checks --
    def assert_listening(self, p, ms):
        """What the report says is exactly what the proxy's own sockets listen on (/proc), and
        ss agrees."""
        want = {(m.proto, m.ip, m.port) for m in ms}
        self.assertEqual(len(want), len(ms), "duplicate report lines")
        got = pu.listening_of(p.pid)
        self.assertEqual(got, want, "report vs /proc/net of pid %d:\nonly listening: %s\n"
                         "only reported: %s" % (p.pid, sorted(got - want), sorted(want - got)))
        ss = pu.ss_listening_of(p.pid)
        if ss is not None and ss:
            self.assertEqual(ss, want, "report vs `ss -lntup`")

    def assert_traffic(self, ms, ipv6=True):
        """Traffic through every reported listener reaches the right container port."""
        errs = []
        for m in ms:
            host = pu.loopback_of(m.ip)
            if not ipv6 and ":" in host:
                continue
            err = pu.check(m.proto, host, m.port, m.cport)
            if err:
                errs.append("%s: %s" % (m.line, err))
        self.assertEqual(errs, [], "traffic failed through %d of %d listeners" %
                         (len(errs), len(ms)))

    def assert_ephemeral(self, ms):
        lo, hi = pu.ephemeral_range()
        for m in ms:
            self.assertTrue(lo <= m.port <= hi,
                            "%s: port %d outside the ephemeral range %d-%d" % (m.line, m.port,
                                                                               lo, hi))

    def assert_port_free(self, port, where, msg=""):
        ok = pp.wait_until(lambda: pu.can_bind(port, where), timeout=2.0)
        self.assertTrue(ok, "port %d still busy on %r after the proxy exited %s" %
                        (port, where, msg))

    # -- resources --
    def backends(self, n, host="127.0.0.1", proto=None):
        b = pu.start_backends(n, proto or self.PROTO, host)
        self.addCleanup(b.close)
        return b.ports

    def host_block(self, n, hosts=("127.0.0.1",), avoid=(), proto=None):
        return pu.find_free_block(n, [(h, proto or self.PROTO) for h in hosts], avoid=avoid)

    def hold(self, host, port, proto=None):
        s = pu.hold_port(host, port, proto or self.PROTO)
        self.addCleanup(s.close)
        return s

    def lines(self, cport, host_ips, port, proto=None):
        """Expected report lines for one container port on `port` of each host IP."""
        proto = proto or self.PROTO
        return ["%d/%s -> %s:%d" % (cport, proto, "[%s]" % ip if ":" in ip else ip, port)
                for ip in host_ips]


class FormsMixin:
    """Every -p form, written once for TCP and UDP (PROTO)."""

    @property
    def sfx(self):
        return "/udp" if self.PROTO == "udp" else ""  # TCP is the default: no suffix

    def test_ip_hostport_containerport(self):
        [c] = self.backends(1)
        h = self.host_block(1)
        p = self.start(["127.0.0.1:%d:%d%s" % (h, c, self.sfx)])
        ms = self.read_report(p, 1)
        self.assertEqual([m.line for m in ms], self.lines(c, ["127.0.0.1"], h))
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_ip_random_port(self):
        [c] = self.backends(1)
        p = self.start(["127.0.0.1::%d%s" % (c, self.sfx)])
        ms = self.read_report(p, 1)
        self.assertEqual([m.line for m in ms], self.lines(c, ["127.0.0.1"], ms[0].port))
        self.assert_ephemeral(ms)
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_hostport_containerport_on_every_address(self):
        [c] = self.backends(1)
        h = self.host_block(1, WILD)
        p = self.start(["%d:%d%s" % (h, c, self.sfx)])
        ms = self.read_report(p, len(WILD))
        self.assertEqual([m.line for m in ms], self.lines(c, WILD, h))
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_container_port_alone(self):
        [c] = self.backends(1)
        p = self.start(["%d%s" % (c, self.sfx)])
        ms = self.read_report(p, len(WILD))
        self.assertEqual([m.line for m in ms], self.lines(c, WILD, ms[0].port),
                         "IPv4 and IPv6 should share the random port")
        self.assert_ephemeral(ms)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_explicit_protocol_suffix(self):
        [c] = self.backends(1)
        p = self.start(["127.0.0.1::%d/%s" % (c, self.PROTO)])
        ms = self.read_report(p, 1)
        self.assertEqual(ms[0].proto, self.PROTO)
        self.assert_traffic(ms)

    @unittest.skipUnless(HAVE_V6, NO_V6)
    def test_ipv6_host_ip_in_brackets(self):
        c1, c2 = self.backends(2)
        h = self.host_block(1, ["::1"])
        p = self.start(["[::1]:%d:%d%s" % (h, c1, self.sfx), "[::1]::%d%s" % (c2, self.sfx)])
        ms = self.read_report(p, 2)
        self.assertEqual(ms[0].line, self.lines(c1, ["::1"], h)[0])
        self.assertEqual(ms[1].line, self.lines(c2, ["::1"], ms[1].port)[0])
        self.assert_ephemeral(ms[1:])
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    @unittest.skipUnless(HAVE_V6, NO_V6)
    def test_ipv6_container_ip(self):
        """IPv4 and IPv6 fronts, IPv6 backend (-container-ip ::1)."""
        [c] = self.backends(1, host="::1")
        p = self.start(["127.0.0.1::%d%s" % (c, self.sfx), "[::1]::%d%s" % (c, self.sfx)],
                       container_ip="::1")
        ms = self.read_report(p, 2)
        self.assertEqual([m.family for m in ms], [socket.AF_INET, socket.AF_INET6])
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_range_port_by_port(self):
        cs = self.backends(3)
        h = self.host_block(3)
        p = self.start(["127.0.0.1:%d-%d:%d-%d%s" % (h, h + 2, cs[0], cs[-1], self.sfx)])
        ms = self.read_report(p, 3)
        want = [l for k, c in enumerate(cs) for l in self.lines(c, ["127.0.0.1"], h + k)]
        self.assertEqual([m.line for m in ms], want)
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_range_port_by_port_on_every_address(self):
        cs = self.backends(4)
        h = self.host_block(4, WILD)
        p = self.start(["%d-%d:%d-%d%s" % (h, h + 3, cs[0], cs[-1], self.sfx)])
        ms = self.read_report(p, 4 * len(WILD))
        want = [l for k, c in enumerate(cs) for l in self.lines(c, WILD, h + k)]
        self.assertEqual([m.line for m in ms], want)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_container_range_on_random_ports(self):
        cs = self.backends(3)
        p = self.start(["127.0.0.1::%d-%d%s" % (cs[0], cs[-1], self.sfx)])
        ms = self.read_report(p, 3)
        self.assertEqual([m.cport for m in ms], cs)
        self.assertEqual(len({m.port for m in ms}), 3, "random ports should differ")
        self.assert_ephemeral(ms)
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_container_range_alone(self):
        cs = self.backends(2)
        p = self.start(["%d-%d%s" % (cs[0], cs[-1], self.sfx)])
        ms = self.read_report(p, 2 * len(WILD))
        by_cport = {}
        for m in ms:
            by_cport.setdefault(m.cport, set()).add(m.port)
        self.assertEqual(sorted(by_cport), cs)
        for c, ports in by_cport.items():
            self.assertEqual(len(ports), 1, "container port %d: IPv4 and IPv6 differ: %r" %
                             (c, ports))
        self.assert_ephemeral(ms)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_host_range_first_ports_busy_picks_next_free(self):
        [c] = self.backends(1)
        h = self.host_block(4)
        self.hold("127.0.0.1", h)
        self.hold("127.0.0.1", h + 1)
        p = self.start(["127.0.0.1:%d-%d:%d%s" % (h, h + 3, c, self.sfx)])
        ms = self.read_report(p, 1)
        self.assertEqual([m.line for m in ms], self.lines(c, ["127.0.0.1"], h + 2))
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_host_range_busy_on_one_family_picks_a_port_free_on_both(self):
        [c] = self.backends(1)
        h = self.host_block(4, WILD)
        self.hold("0.0.0.0", h)
        self.hold(WILD[-1], h + 1)  # [::] (IPv6-only) where there is IPv6
        p = self.start(["%d-%d:%d%s" % (h, h + 3, c, self.sfx)])
        ms = self.read_report(p, len(WILD))
        self.assertEqual([m.line for m in ms], self.lines(c, WILD, h + 2))
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_host_range_skips_a_port_an_earlier_spec_took(self):
        c1, c2 = self.backends(2)
        h = self.host_block(3)
        p = self.start(["127.0.0.1:%d:%d%s" % (h, c1, self.sfx),
                        "127.0.0.1:%d-%d:%d%s" % (h, h + 2, c2, self.sfx)])
        ms = self.read_report(p, 2)
        self.assertEqual([m.line for m in ms], self.lines(c1, ["127.0.0.1"], h) +
                         self.lines(c2, ["127.0.0.1"], h + 1))
        self.assert_listening(p, ms)
        self.assert_traffic(ms)

    def test_host_range_fully_busy_fails_cleanly(self):
        c1, c2, c3 = self.backends(3)
        x = self.host_block(1)
        h = self.host_block(3, avoid=[x])
        for k in range(3):
            self.hold("127.0.0.1", h + k)
        bad = "127.0.0.1:%d-%d:%d%s" % (h, h + 2, c3, self.sfx)
        p = self.spawn(["-p", "127.0.0.1:%d:%d%s" % (x, c1, self.sfx),
                        "-p", "%d%s" % (c2, self.sfx), "-p", bad])
        self.expect_fail(p, 1)
        self.assertIn(bad.split("/")[0], p.message, "message should name the failed spec")
        self.assertNotIn("127.0.0.1:%d:%d" % (x, c1), p.message,
                         "message names an earlier spec that did not fail")
        self.assertEqual(p.stdout_text(), "", "a failed start printed a report")
        self.assert_port_free(x, [("127.0.0.1", self.PROTO)], "(the earlier -p spec)")
        note("range exhausted: %r" % p.message)

    def test_one_to_one_range_with_a_busy_port_fails_cleanly(self):
        cs = self.backends(3)
        x = self.host_block(1)
        h = self.host_block(3, avoid=[x])
        self.hold("127.0.0.1", h + 1)
        bad = "127.0.0.1:%d-%d:%d-%d%s" % (h, h + 2, cs[0], cs[-1], self.sfx)
        p = self.spawn(["-p", "127.0.0.1:%d:%d%s" % (x, cs[0], self.sfx), "-p", bad])
        self.expect_fail(p, 1)
        self.assertIn(bad.split("/")[0], p.message)
        self.assertIn("address already in use", p.message)
        self.assertEqual(p.stdout_text(), "")
        self.assert_port_free(x, [("127.0.0.1", self.PROTO)])
        self.assert_port_free(h, [("127.0.0.1", self.PROTO)], "(first port of the range)")

    def test_same_host_port_twice_fails_cleanly(self):
        c1, c2 = self.backends(2)
        x = self.host_block(1)
        second = "127.0.0.1:%d:%d%s" % (x, c2, self.sfx)
        p = self.spawn(["-p", "127.0.0.1:%d:%d%s" % (x, c1, self.sfx), "-p", second])
        self.expect_fail(p, 1)
        self.assertIn(second.split("/")[0], p.message)
        self.assert_port_free(x, [("127.0.0.1", self.PROTO)])

    def test_random_ports_inside_the_ephemeral_range(self):
        cs = self.backends(4)
        specs = ["127.0.0.1::%d%s" % (c, self.sfx) for c in cs[:2]] + \
                ["%d%s" % (c, self.sfx) for c in cs[2:]]
        p = self.start(specs)
        ms = self.read_report(p, 2 + 2 * len(WILD))
        self.assert_ephemeral(ms)
        v4 = [m.port for m in ms if m.family == socket.AF_INET]
        self.assertEqual(len(set(v4)), len(v4), "two mappings got one port: %r" % v4)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_stop_frees_every_port(self):
        cs = self.backends(2)
        h = self.host_block(2, WILD)
        p = self.start(["%d-%d:%d-%d%s" % (h, h + 1, cs[0], cs[1], self.sfx),
                        "127.0.0.1::%d%s" % (cs[0], self.sfx)])
        ms = self.read_report(p, 2 * len(WILD) + 1)
        self.assertEqual(p.stop(signal.SIGTERM), 0, p.describe())
        for m in ms:
            self.assert_port_free(m.port, [(m.ip, m.proto)], m.line)


class TcpForms(FormsMixin, PublishCase):
    PROTO = "tcp"


class UdpForms(FormsMixin, PublishCase):
    PROTO = "udp"


class PublishAll(PublishCase):
    """-P with several -expose, and the report as a whole."""

    def check_publish_all(self, exposes, want_cports):
        args = ["-P"]
        for e in exposes:
            args += ["-expose", e]
        p = self.start([], extra=args)
        ms = self.read_report(p, len(want_cports) * len(WILD))
        self.assertEqual([(m.cport, m.proto) for m in ms],
                         [cp for cp in want_cports for _ in WILD])
        for i in range(0, len(ms), len(WILD)):
            group = ms[i:i + len(WILD)]
            self.assertEqual([m.ip for m in group], list(WILD))
            self.assertEqual(len({m.port for m in group}), 1,
                             "IPv4 and IPv6 should share a port: %r" % [m.line for m in group])
        self.assert_ephemeral(ms)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)
        return ms

    def test_P_with_several_exposes(self):
        cs = self.backends(5)
        self.check_publish_all(
            ["%d" % cs[0], "%d-%d" % (cs[1], cs[3]), "%d/tcp" % cs[4]],
            [(c, "tcp") for c in cs])

    def test_P_with_a_udp_expose(self):
        why = udp_unavailable()
        if why:
            self.skipTest(why)
        ts = self.backends(3, proto="tcp")
        us = self.backends(2, proto="udp")
        want = sorted([(c, "tcp") for c in ts] + [(c, "udp") for c in us])
        self.check_publish_all(
            ["%d-%d/udp" % (us[0], us[1]), "%d" % ts[0], "%d-%d/tcp" % (ts[1], ts[2])], want)

    def test_P_with_p(self):
        """-p and -P together: both kinds of mapping, one report."""
        cs = self.backends(2)
        h = self.host_block(1)
        p = self.start(["127.0.0.1:%d:%d" % (h, cs[1])], extra=["-P", "-expose", str(cs[0])])
        ms = self.read_report(p, 1 + len(WILD))
        self.assertEqual([m.cport for m in ms], [cs[0]] * len(WILD) + [cs[1]])
        self.assertEqual(ms[-1].line, "%d/tcp -> 127.0.0.1:%d" % (cs[1], h))
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_P_publishes_each_exposed_port_once(self):
        """Exposed ports are a set (docker run -P --expose 7 --expose 7 --expose 6-8 publishes
        7/tcp once): a port exposed twice, or by two overlapping ranges, gets one mapping."""
        cs = self.backends(3)
        self.check_publish_all(
            ["%d" % cs[1], "%d" % cs[1], "%d-%d" % (cs[0], cs[2]), "%d/tcp" % cs[1]],
            [(c, "tcp") for c in cs])

    def test_P_leaves_out_ports_published_with_p(self):
        """As dockerd does, -P adds a random host port only for an exposed port that has no
        -p binding of its own."""
        cs = self.backends(2)
        h = self.host_block(1)
        p = self.start(["127.0.0.1:%d:%d" % (h, cs[0])],
                       extra=["-P", "-expose", str(cs[0]), "-expose", str(cs[1])])
        ms = self.read_report(p, 1 + len(WILD), timeout=2.0)
        self.assertEqual([m.cport for m in ms], [cs[0]] + [cs[1]] * len(WILD),
                         "\n".join(m.line for m in ms))
        self.assertEqual(ms[0].line, "%d/tcp -> 127.0.0.1:%d" % (cs[0], h))
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)

    def test_report_in_docker_port_order(self):
        """Specs given out of order come back in docker port's order: its lines sorted
        naturally (numbers as numbers), so by container port, protocol, then host address."""
        udp = not udp_unavailable()
        c1, c2, c3 = self.backends(3)
        specs = ["%d" % c3]
        want = []
        if HAVE_V6:
            specs.append("[::1]::%d" % c1)
        if udp:
            specs.append("127.0.0.1::%d/udp" % c1)
            specs.append("%d/udp" % c2)
        specs += ["127.0.0.1::%d" % c1, "127.0.0.1::%d/tcp" % c2]
        want.append((c1, "tcp", 0))
        if HAVE_V6:
            want.append((c1, "tcp", 1))
        if udp:
            want.append((c1, "udp", 0))
        want.append((c2, "tcp", 0))
        if udp:
            want += [(c2, "udp", f) for f in range(len(WILD))]
        want += [(c3, "tcp", f) for f in range(len(WILD))]
        p = self.start(specs)
        ms = self.read_report(p, len(want))
        got = [(m.cport, m.proto, 0 if m.family == socket.AF_INET else 1) for m in ms]
        self.assertEqual(sorted(got), sorted(want), "mappings:\n" + "\n".join(m.line for m in ms))
        lines = [m.line for m in ms]
        self.assertEqual(lines, sorted(lines, key=pu.report_key_of_line),
                         "not in docker port's natural order:\n" + "\n".join(lines))
        self.assert_listening(p, ms)
        if not udp:
            note("report order checked without UDP lines: %s" % udp_unavailable())

    def test_report_matches_what_listens(self):
        """A mixed command: the report is exactly what the proxy's sockets listen on (its
        /proc/PID/fd inodes in /proc/net/{tcp,tcp6,udp,udp6}, and `ss -lntup`), and every
        listener passes traffic to the right container port."""
        udp = not udp_unavailable()
        ts = self.backends(3, proto="tcp")
        specs = ["%d" % ts[0], "127.0.0.1::%d-%d" % (ts[1], ts[2])]
        h = self.host_block(2, WILD)
        specs.append("%d-%d:%d-%d" % (h, h + 1, ts[1], ts[2]))
        n = len(WILD) + 2 + 2 * len(WILD)
        if HAVE_V6:
            specs.append("[::1]::%d" % ts[0])
            n += 1
        if udp:
            us = self.backends(2, proto="udp")
            specs += ["%d/udp" % us[0], "127.0.0.1::%d/udp" % us[1]]
            n += len(WILD) + 1
        p = self.start(specs)
        ms = self.read_report(p, n)
        self.assert_listening(p, ms)
        self.assert_traffic(ms, ipv6=HAVE_V6)
        # Still exactly the reported set after traffic (no stray listener, none lost).
        self.assertEqual(pu.listening_of(p.pid), {(m.proto, m.ip, m.port) for m in ms})
        self.assertTrue(p.alive(), p.describe())


class BadCommandLines(PublishCase):
    """Refusals: exit 2, "1\\n"+the line on fd 3, and that line on stderr."""

    BAD_SPECS = [
        ("80-82:80-81", r"length|range"),
        ("70000", r"65535|port"),
        (":80", r"empty|host port"),
        ("1.2.3:80:80", r"IP"),
        ("80/xyz", r"tcp|protocol"),
        ("0", r"port"),
        ("80-", r"port|range"),
        ("82-80", r"port|range"),
        ("127.0.0.1:80", r"port"),
        ("::1:80:80", r"bracket|colon"),
        ("[::1]", r"bracket|port"),
        ("8080:80-81", r"length|range"),
        ("", r"port|empty"),
    ]

    def refuse(self, args, needle, rule=None, code=2):
        p = self.spawn(args)
        self.expect_fail(p, code)
        self.assertIn(needle, p.message, "fd-3 message should name %r" % needle)
        err = p.stderr_text()
        naming = [l for l in err.splitlines() if needle in l]
        self.assertEqual(len(naming), 1, "want one stderr line naming %r, stderr=%r" %
                         (needle, err))
        if rule:
            self.assertRegex(naming[0], "(?i)" + rule, "the line should say which rule")
        self.assertEqual(p.stdout_text(), "", "stdout should stay empty")
        return p, naming[0]

    def test_bad_specs_exit_2_naming_the_spec(self):
        for spec, rule in self.BAD_SPECS:
            with self.subTest(spec=spec):
                needle = '"%s"' % spec
                self.refuse(["-p", spec], needle, rule)

    def test_bad_spec_among_good_ones(self):
        [c] = self.backends(1)
        x = self.host_block(1)
        p, _ = self.refuse(["-p", "127.0.0.1:%d:%d" % (x, c), "-p", "80/xyz"], "80/xyz")
        self.assert_port_free(x, [("127.0.0.1", "tcp")])

    def test_bracketed_ip_needs_a_host_port_field(self):
        """`[::1]:80` is `ip:containerPort`, not a form of the reference (as `127.0.0.1:80`
        is refused, so must this be: `[::1]::80` is the random-port form)."""
        self.refuse(["-p", "[::1]:80"], "[::1]:80", r"port|bracket")

    def test_mixing_p_with_classic_flags(self):
        for extra in (["-host-port", "8080"], ["-host-ip", "127.0.0.1"], ["-proto", "tcp"],
                      ["-container-port", "80"], ["-use-listen-fd"]):
            for mode in (["-p", "127.0.0.1::80"], ["-P", "-expose", "80"]):
                with self.subTest(flag=extra[0], mode=mode[0]):
                    self.refuse(mode + extra, extra[0])

    def test_expose_mistakes(self):
        self.refuse(["-expose", "80"], "-P")
        self.refuse(["-P"], "-expose")
        self.refuse(["-P", "-expose", "80/xyz"], "80/xyz")
        self.refuse(["-P", "-expose", "0"], '"0"')
        self.refuse(["-P", "-expose", "90-80"], "90-80")

    def test_p_needs_container_ip(self):
        p = pp.spawn(["-p", "127.0.0.1::80"], stdio_null=False)
        self.addCleanup(p.cleanup)
        self.expect_fail(p, 2)
        self.assertIn("-container-ip", p.message)

    def test_sctp_starts_or_fails_cleanly(self):
        """/sctp is an accepted form; where this build or kernel cannot serve it the start
        fails cleanly (exit 1, the spec named, earlier specs unbound)."""
        x = self.host_block(1)
        p = self.spawn(["-p", "127.0.0.1:%d:80" % x, "-p", "127.0.0.1::81/sctp"])
        if p.status == "0":
            ms = self.read_report(p, 2)
            self.assertEqual([m.proto for m in ms], ["tcp", "sctp"])
            return
        self.expect_fail(p, 1)
        self.assertIn("127.0.0.1::81/sctp", p.message)
        self.assert_port_free(x, [("127.0.0.1", "tcp")])
        note("sctp: %r" % p.message)


class ThousandPorts(PublishCase):
    N = 1000
    SAMPLE = 10
    MAX_START_S = 1.0
    MAX_PSS_KIB = 8 * 1024

    def test_thousand_port_range(self):
        """-p 127.0.0.1:A-B:C-D over 1000 ports: starts in < 1 s (exec to "0\\n"), all 1000
        listen, a random sample of 10 passes traffic, Pss < 8 MiB, one process."""
        if pp.raise_nofile() < 2 * self.N:
            self.skipTest("RLIMIT_NOFILE too low for %d ports" % self.N)
        rng = random.Random()
        idx = sorted(rng.sample(range(self.N), self.SAMPLE))
        backends = None
        for _ in range(50):
            cfirst = rng.randint(pu.PROBE_LO, pu.PROBE_HI - self.N)
            backends = pu.start_backends_at("127.0.0.1", [cfirst + i for i in idx], "tcp")
            if backends:
                break
        self.assertIsNotNone(backends, "could not place %d sample backends" % self.SAMPLE)
        self.addCleanup(backends.close)
        h = self.host_block(self.N)
        spec = "127.0.0.1:%d-%d:%d-%d" % (h, h + self.N - 1, cfirst, cfirst + self.N - 1)

        t0 = time.monotonic()
        p = self.start([spec])
        wall = time.monotonic() - t0
        ms = self.read_report(p, self.N)
        self.assertEqual([(m.cport, m.port) for m in ms],
                         [(cfirst + k, h + k) for k in range(self.N)])
        self.assert_listening(p, ms)

        errs = [e for e in (pu.check_tcp("127.0.0.1", h + i, cfirst + i) for i in idx) if e]
        self.assertEqual(errs, [])

        roll = pu.smaps_rollup(p.pid)
        pss = roll.get("Pss")
        private = roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)
        threads = pu.thread_count(p.pid)
        kids = pu.child_pids(p.pid)
        note("1000-port range: exec to \"0\\n\" %.1f ms (spawn incl. fork %.1f ms); Pss %s KiB, "
             "private %d KiB, Rss %s KiB; %d fds; %d thread(s), %d child process(es)" %
             (p.handshake_seconds * 1000, wall * 1000, pss, private, roll.get("Rss"),
              p.fd_count(), threads, len(kids)))
        if pu.under_asan(p.pid):
            note("AddressSanitizer build: start-up time and Pss not checked")
        else:
            self.assertLess(p.handshake_seconds, self.MAX_START_S)
            self.assertIsNotNone(pss, "no Pss in /proc/%d/smaps_rollup" % p.pid)
            self.assertLess(pss, self.MAX_PSS_KIB, "Pss %d KiB" % pss)
        self.assertEqual(kids, [], "the proxy has child processes")
        self.assertEqual(threads, 1, "the proxy should be one single-threaded process")
        self.assertEqual(p.stop(signal.SIGTERM), 0, p.describe())


class ReportToAPipe(PublishCase):
    """The report on a stdout pipe the parent has not drained yet (it reads fd 3 first, or reads
    stdout later): the proxy is already listening, so it must serve and obey SIGTERM whatever the
    state of that pipe. The pipe is shrunk to one page so that a few hundred ports overflow it."""

    def start_piped(self):
        [c] = self.backends(1)
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, pu.F_SETPIPE_SZ, 4096)
            cap = fcntl.fcntl(w, pu.F_GETPIPE_SZ)
        finally:
            os.close(r)
            os.close(w)
        line = len("%d/tcp -> 127.0.0.1:%d\n" % (c, 10000))  # every port here has 5 digits
        n = 2 * cap // line + 16
        if n > 4000:
            self.skipTest("pipe capacity %d bytes: too many ports needed" % cap)
        h = self.host_block(n)
        pxy = pu.PipedProxy(["-container-ip", "127.0.0.1",
                             "-p", "127.0.0.1:%d-%d:%d-%d" % (h, h + n - 1, c, c + n - 1)],
                            pipe_size=4096)
        self.addCleanup(pxy.cleanup)
        self.assertEqual(pxy.status, "0", "did not start: %r" % pxy.raw)
        self.assertGreater(n * line, pxy.pipe_capacity)
        return pxy, h, c, n, n * line

    def test_serves_while_the_report_waits_in_a_full_pipe(self):
        pxy, h, c, n, size = self.start_piped()
        err = pu.check_tcp("127.0.0.1", h, c, timeout=3.0)
        self.assertIsNone(err, "no traffic served while %d bytes of report wait in a %d-byte "
                          "stdout pipe" % (size, pxy.pipe_capacity))
        text = pxy.read_stdout(timeout=3.0, lines=n)
        self.assertEqual(text.count("\n"), n, "report after draining: %r" % text[-300:])

    def test_sigterm_while_the_report_waits_in_a_full_pipe(self):
        pxy = self.start_piped()[0]
        os.kill(pxy.pid, signal.SIGTERM)
        try:
            rc = pxy.proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            rc = None
        self.assertEqual(rc, 0, "SIGTERM with the report pending in a full stdout pipe: "
                         "%s" % ("still running 3 s later" if rc is None else "exit %s" % rc))


if __name__ == "__main__":
    pp.require_binary()
    unittest.main()
