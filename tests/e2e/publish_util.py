"""Helpers for test_publish.py (Python 3, standard library only): the `docker port` style report,
what a process really listens on (from /proc), free port blocks found by probing, backends that
say which container port they are, and one-shot TCP/UDP checks through a published port.

Same rules as pp.py: no fixed ports (everything is probed), traffic only to 127.0.0.0/8 and ::1,
bounded loops, and every socket and thread closed by its owner.
"""

import collections
import contextlib
import fcntl
import functools
import os
import random
import re
import selectors
import socket
import struct
import subprocess
import threading
import time

import pp

EPHEMERAL_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
EPHEMERAL_FALLBACK = (49153, 65535)

# Ports the probes pick host and container ports from: below the usual ephemeral range, so the
# kernel's own choices (and the proxy's random ones) rarely collide with ours.
PROBE_LO, PROBE_HI = 10000, 30000

SOCK_TYPE = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}

# "80/tcp -> 0.0.0.0:32768", "80/tcp -> [::]:32768"
REPORT_RE = re.compile(r"^(\d{1,5})/(tcp|udp|sctp) -> "
                       r"(?:(\d{1,3}(?:\.\d{1,3}){3})|\[([0-9A-Fa-f:.]+)\]):(\d{1,5})$")

Mapping = collections.namedtuple("Mapping", "cport proto ip port family line")


def parse_report(text):
    """Parse the proxy's stdout report. Raises ValueError naming the first bad line."""
    out = []
    for line in text.splitlines():
        m = REPORT_RE.match(line)
        if not m:
            raise ValueError("not a `docker port` line: %r" % line)
        cport, proto, v4, v6, port = m.groups()
        if v4:
            ip, fam = v4, socket.AF_INET
        else:
            ip, fam = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, v6)), \
                socket.AF_INET6
        out.append(Mapping(int(cport), proto, ip, int(port), fam, line))
    return out


def natural_cmp(a, b):
    """docker port's order (docker/cli sorts its lines with sortorder.NaturalLess): bytes
    compare as bytes, but a run of digits compares as a number and sorts before any other
    character; of equal numbers the one with fewer leading zeros goes first."""
    i = j = 0
    while i < len(a) and j < len(b):
        da, db = a[i].isdigit(), b[j].isdigit()
        if da != db:
            return -1 if da else 1
        if not da:
            if a[i] != b[j]:
                return -1 if a[i] < b[j] else 1
            i, j = i + 1, j + 1
            continue
        zi, zj = i, j
        while zi < len(a) and a[zi] == "0":
            zi += 1
        while zj < len(b) and b[zj] == "0":
            zj += 1
        ei, ej = zi, zj
        while ei < len(a) and a[ei].isdigit():
            ei += 1
        while ej < len(b) and b[ej].isdigit():
            ej += 1
        na, nb = a[zi:ei], b[zj:ej]
        if len(na) != len(nb):
            return -1 if len(na) < len(nb) else 1
        if na != nb:
            return -1 if na < nb else 1
        if zi - i != zj - j:
            return -1 if zi - i < zj - j else 1
        i, j = ei, ej
    return (len(a) - i > 0) - (len(b) - j > 0)


report_key_of_line = functools.cmp_to_key(natural_cmp)


def report_key(m):
    return report_key_of_line(m.line)


def ephemeral_range():
    try:
        with open(EPHEMERAL_PATH) as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
        if 1 <= lo <= hi <= 65535:
            return lo, hi
    except (OSError, ValueError):
        pass
    return EPHEMERAL_FALLBACK


def loopback_of(ip):
    """Where to send traffic for a listener on `ip` (wildcards -> loopback of their family)."""
    if ip == "0.0.0.0":
        return "127.0.0.1"
    if ip == "::":
        return "::1"
    return ip


# --- what a process listens on, from /proc ------------------------------------------------------

def socket_inodes(pid):
    inodes = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _hex_addr(h, fam):
    if fam == socket.AF_INET:
        raw = struct.pack("<I", int(h, 16))
    else:
        raw = b"".join(struct.pack("<I", int(h[i:i + 8], 16)) for i in range(0, 32, 8))
    return socket.inet_ntop(fam, raw)


def proc_net(proto):
    """Entries of /proc/net/<proto>{,6}: dicts ip, port, rip, rport, state, inode, family."""
    out = []
    for path, fam in (("/proc/net/%s" % proto, socket.AF_INET),
                      ("/proc/net/%s6" % proto, socket.AF_INET6)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            laddr, lport = parts[1].split(":")
            raddr, rport = parts[2].split(":")
            out.append({"ip": _hex_addr(laddr, fam), "port": int(lport, 16),
                        "rip": _hex_addr(raddr, fam), "rport": int(rport, 16),
                        "state": int(parts[3], 16), "inode": int(parts[9]), "family": fam})
    return out


def listening_of(pid):
    """{(proto, ip, port)} of pid's TCP listeners and unconnected UDP sockets."""
    inodes = socket_inodes(pid)
    found = set()
    for e in proc_net("tcp"):
        if e["inode"] in inodes and e["state"] == 10:  # LISTEN
            found.add(("tcp", e["ip"], e["port"]))
    for e in proc_net("udp"):
        if e["inode"] in inodes and e["rport"] == 0:
            found.add(("udp", e["ip"], e["port"]))
    return found


def ss_listening_of(pid):
    """Same as listening_of, from `ss -Hlntup` (None if ss is missing or cannot show pids)."""
    lines = pp.ss_lines(["-H", "-l", "-n", "-t", "-u", "-p"])
    if lines is None:
        return None
    found = set()
    tag = "pid=%d," % pid
    for line in lines:
        if tag not in line:
            continue
        parts = line.split()
        if len(parts) < 5:
            continue
        proto, local = parts[0], parts[4]
        ip, _, port = local.rpartition(":")
        ip = ip.strip("[]")
        if "%" in ip:
            ip = ip.split("%", 1)[0]
        if ip == "*":
            continue
        found.add((proto, socket.inet_ntop(pp.family_of(ip),
                                           socket.inet_pton(pp.family_of(ip), ip)), int(port)))
    return found


def child_pids(pid):
    """Pids whose parent is pid."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(")") + 2:].split()[1]) == pid:
            kids.append(int(name))
    return kids


def thread_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def under_asan(pid):
    """True if pid runs with AddressSanitizer (its memory and start-up time mean nothing)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            return any("libasan" in line or "libclang_rt.asan" in line for line in f)
    except OSError:
        return False


def smaps_rollup(pid):
    """{field: kB} from /proc/PID/smaps_rollup (empty if unreadable)."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


# --- free ports, by probing ---------------------------------------------------------------------

def can_bind(port, where):
    """True if `port` can be bound now on every (host, proto) of `where`. No SO_REUSEADDR (a TCP
    port with a TIME_WAIT left counts as busy: conservative), IPv6 sockets IPv6-only."""
    for host, proto in where:
        s = socket.socket(pp.family_of(host), SOCK_TYPE[proto])
        try:
            if pp.family_of(host) == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def find_free_block(n, where, lo=PROBE_LO, hi=PROBE_HI, attempts=400, avoid=()):
    """The first port of `n` consecutive ports free on every (host, proto) of `where`, none of
    them in `avoid`. Raises RuntimeError if none is found in `attempts` random tries."""
    avoid = set(avoid)
    rng = random.Random()
    for _ in range(attempts):
        start = rng.randint(lo, hi - n)
        ok = True
        for p in range(start, start + n):
            if p in avoid or not can_bind(p, where):
                ok = False
                break
        if ok:
            return start
    raise RuntimeError("no %d consecutive free ports in %d-%d for %r" % (n, lo, hi, where))


def hold_port(host, port, proto):
    """A socket that keeps host:port busy for `proto` (TCP: listening; UDP: bound), the way an
    ordinary program would hold it (no SO_REUSEADDR)."""
    s = socket.socket(pp.family_of(host), SOCK_TYPE[proto])
    try:
        if pp.family_of(host) == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        if proto == "tcp":
            s.listen(16)
    except BaseException:
        s.close()
        raise
    return s


# --- backends -----------------------------------------------------------------------------------

def greeting(cport):
    return b"port=%d\n" % cport


class UdpEcho:
    """UDP echo on several ports of one host, one thread: every datagram comes back prefixed
    with greeting(port), so the sender sees which container port it reached."""

    def __init__(self, host, ports):
        self.host = host
        self.socks = []
        self.received = 0
        try:
            for p in ports:
                s = socket.socket(pp.family_of(host), socket.SOCK_DGRAM)
                self.socks.append(s)
                s.bind((host, p))
                s.setblocking(False)
        except BaseException:
            for s in self.socks:
                s.close()
            raise
        self.ports = [s.getsockname()[1] for s in self.socks]
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        for s in self.socks:
            self._sel.register(s, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            for key, _ in self._sel.select(timeout=0.5):
                s = key.fileobj
                if s is self._wake_r:
                    return
                for _ in range(64):
                    try:
                        data, addr = s.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    self.received += 1
                    with contextlib.suppress(OSError):
                        s.sendto(greeting(s.getsockname()[1]) + data, addr)

    def close(self):
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._sel.close()
        for s in self.socks + [self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError):
                s.close()


class Backends:
    """Echo backends on `host` at the given ports for `proto`; each greets with its port."""

    def __init__(self, host, ports, proto):
        self.host = host
        self.proto = proto
        self.ports = list(ports)
        self._servers = []
        try:
            if proto == "tcp":
                for p in self.ports:
                    self._servers.append(pp.EchoServer(host, p, greeting=greeting(p)))
            else:
                self._servers.append(UdpEcho(host, self.ports))
        except BaseException:
            self.close()
            raise

    def close(self):
        for s in self._servers:
            with contextlib.suppress(Exception):
                s.close()
        self._servers = []


def start_backends(n, proto, host="127.0.0.1", attempts=50, avoid=()):
    """Backends on n consecutive free ports of host (probed). Returns a Backends."""
    last = None
    for _ in range(attempts):
        start = find_free_block(n, [(host, proto)], avoid=avoid)
        try:
            return Backends(host, range(start, start + n), proto)
        except OSError as e:  # lost a race for one of the ports: try another block
            last = e
    raise RuntimeError("could not start %d %s backends on %s: %r" % (n, proto, host, last))


def start_backends_at(host, ports, proto):
    """Backends at exactly these ports, or None if one of them is busy."""
    try:
        return Backends(host, ports, proto)
    except OSError:
        return None


# --- one exchange through a published port ------------------------------------------------------

def check_tcp(host, port, cport, timeout=3.0):
    """None if a connection to host:port reaches the backend of container port `cport` and
    echoes; else what went wrong."""
    payload = b"hello %s:%d " % (host.encode(), port) + os.urandom(8).hex().encode()
    greet = greeting(cport)
    try:
        with pp.connect(host, port, timeout=timeout) as s:
            got = pp.recv_exact(s, len(greet), timeout=timeout)
            if got != greet:
                return "%s:%d: greeted %r, want %r" % (host, port, got, greet)
            s.sendall(payload)
            back = pp.recv_exact(s, len(payload), timeout=timeout)
            if back != payload:
                return "%s:%d: echoed %r, want %r" % (host, port, back, payload)
    except (OSError, EOFError, TimeoutError) as e:
        return "%s:%d: %r" % (host, port, e)
    return None


def check_udp(host, port, cport, tries=3, timeout=1.0):
    """None if a datagram to host:port reaches the backend of container port `cport` and its
    answer comes back from host:port; else what went wrong. Retries a lost datagram."""
    payload = b"dgram %s:%d " % (host.encode(), port) + os.urandom(8).hex().encode()
    want = greeting(cport) + payload
    last = "no answer"
    with socket.socket(pp.family_of(host), socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        for _ in range(tries):
            try:
                s.sendto(payload, (host, port))
            except OSError as e:
                return "%s:%d: send %r" % (host, port, e)
            deadline = time.monotonic() + timeout
            for _ in range(16):  # skip stale answers to an earlier try
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                s.settimeout(remaining)
                try:
                    data, src = s.recvfrom(65535)
                except socket.timeout:
                    break
                except OSError as e:
                    last = "recv %r" % e
                    break
                if data != want:
                    last = "answer %r, want %r" % (data[:80], want)
                    continue
                if src[1] != port:
                    return "%s:%d: answer came from %r" % (host, port, src)
                return None
    return "%s:%d: %s" % (host, port, last)


def check(proto, host, port, cport, **kw):
    return (check_tcp if proto == "tcp" else check_udp)(host, port, cport, **kw)


# --- a proxy whose stdout is a pipe -------------------------------------------------------------

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032


class PipedProxy:
    """$PORTPROXY with fd 3 the handshake pipe and stdout a pipe this object holds the read end
    of and does NOT drain (until read_stdout()), as a parent does that reads the report late.
    stderr on /dev/null. Attributes: proc, pid, status ('0'/'1'/None), raw, stdout_fd."""

    def __init__(self, args, pipe_size=None, timeout=pp.HANDSHAKE_TIMEOUT):
        self.stdout_fd, out_w = os.pipe2(os.O_CLOEXEC)
        if pipe_size:
            with contextlib.suppress(OSError):
                fcntl.fcntl(out_w, F_SETPIPE_SZ, pipe_size)
        self.pipe_capacity = fcntl.fcntl(out_w, F_GETPIPE_SZ)
        hs_r, hs_w = os.pipe2(os.O_CLOEXEC)

        def child():
            t = fcntl.fcntl(hs_w, fcntl.F_DUPFD_CLOEXEC, 16)
            os.dup2(t, 3, inheritable=True)
            os.close(t)

        try:
            # pass_fds=(3,): keep fd 3 through close_fds (pp holds our own fd 3 on /dev/null).
            self.proc = subprocess.Popen([pp.PORTPROXY] + [str(a) for a in args],
                                         stdin=subprocess.DEVNULL, stdout=out_w,
                                         stderr=subprocess.DEVNULL, pass_fds=(3,),
                                         close_fds=True, preexec_fn=child)
        finally:
            os.close(out_w)
            os.close(hs_w)
        self.pid = self.proc.pid
        self.raw = b""
        try:
            deadline = time.monotonic() + timeout
            for _ in range(100):
                left = deadline - time.monotonic()
                if left <= 0 or not pp.wait_readable(hs_r, left):
                    break
                data = os.read(hs_r, 4096)
                if not data:
                    break
                self.raw += data
        finally:
            os.close(hs_r)
        self.status = self.raw[:1].decode() if self.raw[1:2] == b"\n" else None

    def read_stdout(self, timeout=5.0, lines=None):
        """Drain stdout until EOF, `lines` lines or `timeout` s; returns the text."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0 or not pp.wait_readable(self.stdout_fd, left):
                break
            data = os.read(self.stdout_fd, 1 << 16)
            if not data:
                break
            buf += data
            if lines is not None and buf.count(b"\n") >= lines:
                break
        return buf.decode("utf-8", "replace")

    def cleanup(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.stdout_fd is not None:
            os.close(self.stdout_fd)
            self.stdout_fd = None
