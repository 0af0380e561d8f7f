#!/usr/bin/env python3
"""End-to-end SCTP tests for portproxy (-proto sctp).

Where the kernel has SCTP: messages go through one-to-one associations with their stream id
and PPID preserved, over IPv4 and IPv6, and an unreachable backend aborts the client. Where it
has not (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails), those tests are skipped with that
reason, and what is checked instead is that start-up fails cleanly: "1\\n" and a message on
fd 3, exit 1. Run:

    PORTPROXY=build/portproxy python3 tests/e2e/test_sctp.py [-v]
"""

import contextlib
import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pp  # noqa: E402

pp.require_binary()
HAVE_V6 = pp.have_ipv6_loopback()

# linux/sctp.h
SCTP_NODELAY = 3
SCTP_RECVRCVINFO = 32
SCTP_SNDINFO = 2  # cmsg type: struct sctp_sndinfo
SCTP_RCVINFO = 3  # cmsg type: struct sctp_rcvinfo
SNDINFO = struct.Struct("@HHIIi")      # sid, flags, ppid, context, assoc_id
RCVINFO = struct.Struct("@HHHIIIIi")   # sid, ssn, flags, ppid, tsn, cumtsn, context, assoc_id
MSG_EOR = getattr(socket, "MSG_EOR", 0x80)


def sctp_unavailable():
    """None if SCTP sockets can be made here, else why not."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return None
    except OSError as e:
        return "this kernel has no SCTP (%s)" % e


WHY_NOT = sctp_unavailable()


def sctp_socket(host):
    s = socket.socket(pp.family_of(host), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    s.setsockopt(socket.IPPROTO_SCTP, SCTP_RECVRCVINFO, 1)
    s.setsockopt(socket.IPPROTO_SCTP, SCTP_NODELAY, 1)
    return s


def send_msg(sock, data, sid, ppid):
    info = SNDINFO.pack(sid, 0, ppid, 0, 0)
    sock.sendmsg([data], [(socket.IPPROTO_SCTP, SCTP_SNDINFO, info)])


def recv_msg(sock, timeout=5.0):
    """One whole message: (data, sid, ppid), or (b"", None, None) at EOF."""
    sock.settimeout(timeout)
    parts, sid, ppid = [], None, None
    for _ in range(4096):  # a message of up to 256 MiB in 64 KiB pieces
        data, anc, flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(RCVINFO.size) + 64)
        if not data and not parts:
            return b"", None, None
        for level, typ, raw in anc:
            if level == socket.IPPROTO_SCTP and typ == SCTP_RCVINFO and sid is None:
                f = RCVINFO.unpack(raw[:RCVINFO.size])
                sid, ppid = f[0], f[3]
        parts.append(data)
        if flags & MSG_EOR:
            break
    return b"".join(parts), sid, ppid


class SctpEcho:
    """SCTP echo server: every message goes back on its stream with its PPID; the received
    (length, sid, ppid) are recorded in .seen."""

    def __init__(self, host="127.0.0.1"):
        self.sock = sctp_socket(host)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self._stop = False
        self._conns = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 300
        while not self._stop and time.monotonic() < deadline:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            c.setsockopt(socket.IPPROTO_SCTP, SCTP_RECVRCVINFO, 1)
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with contextlib.suppress(OSError):
            for _ in range(100000):
                data, sid, ppid = recv_msg(c, timeout=60)
                if sid is None:
                    break
                self.seen.append((len(data), sid, ppid))
                send_msg(c, data, sid, ppid)

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        for s in self._conns + [self.sock]:
            with contextlib.suppress(OSError):
                s.close()


class TestSctpUnsupported(unittest.TestCase):
    def test_start_fails_cleanly_without_kernel_sctp(self):
        if WHY_NOT is None:
            self.skipTest("this kernel supports SCTP (TestSctpRelay covers it)")
        p = pp.spawn(pp.proxy_args(pp.free_port(), "127.0.0.1", pp.free_port(), proto="sctp"))
        self.addCleanup(p.cleanup)
        self.assertEqual(p.status, "1", p.describe())
        self.assertTrue(p.message.startswith("listen sctp4 127.0.0.1:"), p.message)
        self.assertIn("protocol not supported", p.message)
        self.assertEqual(p.wait(5), 1, "exit code")
        sys.stderr.write("    [measured] start-up message: %r\n" % p.message)


class TestSctpRelay(unittest.TestCase):
    def setUp(self):
        if WHY_NOT:
            self.skipTest(WHY_NOT + ": the SCTP relay is unverified on this machine")

    def start(self, backend_port, host_ip="127.0.0.1", container_ip="127.0.0.1"):
        for attempt in range(3):
            port = pp.free_port(host_ip)
            p = pp.spawn(pp.proxy_args(port, container_ip, backend_port, host_ip=host_ip,
                                       proto="sctp"))
            self.addCleanup(p.cleanup)
            if p.status == "0":
                p.port = port
                return p
            if "in use" not in p.message:
                break
        self.fail("proxy did not start: %s" % p.describe())

    def echo(self, host):
        e = SctpEcho(host)
        self.addCleanup(e.close)
        return e

    def client(self, host, port):
        c = sctp_socket(host)
        self.addCleanup(c.close)
        c.settimeout(5)
        c.connect((host, port))
        return c

    def roundtrip(self, front, back):
        e = self.echo(back)
        p = self.start(e.port, host_ip=front, container_ip=back)
        c = self.client(front, p.port)
        cases = [(b"hello", 0, 0), (os.urandom(1000), 3, 0x01020304),
                 (os.urandom(70000), 7, 46), (b"x", 0, 0xffffffff)]
        for data, sid, ppid in cases:
            send_msg(c, data, sid, ppid)
            got, gsid, gppid = recv_msg(c)
            self.assertEqual(got, data, "message of %d bytes on stream %d" % (len(data), sid))
            self.assertEqual((gsid, gppid), (sid, ppid), "stream id and PPID preserved")
        self.assertEqual([(n, s, pp_) for n, s, pp_ in e.seen],
                         [(len(d), s, q) for d, s, q in cases], "the backend saw the same")
        return p

    def test_echo_ipv4_stream_and_ppid_preserved(self):
        self.roundtrip("127.0.0.1", "127.0.0.1")

    def test_echo_ipv6(self):
        if not HAVE_V6:
            self.skipTest("no IPv6 loopback")
        self.roundtrip("::1", "::1")

    def test_backend_down_aborts_client(self):
        """As kernel NAT would: the association is aborted, not shut down as if the backend
        had answered and hung up."""
        p = self.start(pp.free_port())
        c = self.client("127.0.0.1", p.port)
        try:
            send_msg(c, b"anyone?", 0, 0)
            _, sid, _ = recv_msg(c, timeout=3)
        except socket.timeout:
            self.fail("no abort within 3 s")
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return
        self.fail("want an abort, got %s" % ("a clean EOF" if sid is None else "a message"))

    def test_sigterm_exits_zero(self):
        e = self.echo("127.0.0.1")
        p = self.start(e.port)
        c = self.client("127.0.0.1", p.port)
        send_msg(c, b"hi", 1, 2)
        recv_msg(c)
        self.assertEqual(p.stop(), 0)
        self.assertLess(p.stop_seconds, 1.0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
