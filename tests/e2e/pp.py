"""Shared helpers for the portproxy end-to-end suites (Python 3, standard library only).

The suites spawn the real binary exactly as dockerd does:

    portproxy -proto tcp -host-ip 127.0.0.1 -host-port N -container-ip IP -container-port N \
        [-use-listen-fd]

with stdin/stdout/stderr on /dev/null, fd 3 the write end of a pipe on which the proxy reports
"0\n" (listening) or "1\n<message>" (failed), and with -use-listen-fd an already bound socket on
fd 4.

Environment:
    PORTPROXY        path of the binary under test (required; suites exit 77 = skipped without it)
    PORTPROXY_TOOLS  directory of helper programs built from tests/tools (optional)

Rules every helper here keeps: no fixed ports (bind port 0 and read it back), traffic only to
127.0.0.0/8, ::1 or the namespace addresses below, every loop bounded in count and time, and
every process and socket cleaned up (atexit is the last resort, tests use addCleanup).
"""

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import os
import resource
import secrets
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SKIP_EXIT = 77
PORTPROXY = os.environ.get("PORTPROXY", "")
# Set by scripts/valgrind: the proxy runs under memcheck, slower and with valgrind's own
# descriptor and rlimit emulation.
UNDER_VALGRIND = os.environ.get("PORTPROXY_UNDER_VALGRIND") == "1"
TOOLS = os.environ.get("PORTPROXY_TOOLS", "")
HANDSHAKE_TIMEOUT = 5.0
MiB = 1 << 20

# Namespace addresses (RFC 5737 / RFC 3849 documentation ranges).
NS_HOST_V4, NS_PEER_V4 = "198.51.100.1", "198.51.100.2"
NS_HOST_V6, NS_PEER_V6 = "2001:db8::1", "2001:db8::2"


def require_binary():
    """Exit 77 (CTest: skipped) unless $PORTPROXY names an executable."""
    if not PORTPROXY:
        print("SKIP: PORTPROXY is not set (path of the portproxy binary)", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    if not os.path.isfile(PORTPROXY) or not os.access(PORTPROXY, os.X_OK):
        print("SKIP: PORTPROXY=%s is not an executable file" % PORTPROXY, file=sys.stderr)
        sys.exit(SKIP_EXIT)


def raise_nofile(want=None):
    """Raise our own soft RLIMIT_NOFILE (to the hard limit, or to `want` if lower).

    Returns the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if want is not None:
        target = min(target, want)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- fds 3 and 4 --------------------------------------------------------------------------------
#
# subprocess cannot map an fd onto a chosen number, so the child does it in preexec_fn (dup2 onto
# 3 and 4, which pass_fds then keeps open across the close_fds sweep). For that to be safe fds 3
# and 4 of *this* process must never be one of the sources, nor subprocess's own error pipe: hold
# them on /dev/null (close-on-exec) for the life of the test process.
_reserved_low_fds = []


def _reserve_low_fds():
    for _ in range(8):
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd > 4:
            os.close(fd)
            return
        _reserved_low_fds.append(fd)


_reserve_low_fds()

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1

_live_procs = []
_temp_paths = []
_live_lock = threading.Lock()


def wait_readable(fd, timeout):
    """True if fd becomes readable within timeout seconds (poll: works for any fd number)."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(max(0, int(timeout * 1000))))


def _track(proc):
    with _live_lock:
        _live_procs.append(proc)


@atexit.register
def _kill_leftovers():
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=2)
            except Exception:
                pass
    with _live_lock:
        paths = list(_temp_paths)
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _make_preexec(fd_map, pdeathsig, user_preexec):
    """Build the child-side setup: place sources on their target fd numbers, parent-death
    SIGTERM (as dockerd sets), then the caller's own hook (e.g. setrlimit)."""

    def child():
        tmp = []
        for src, dst in fd_map:
            # Move every source above the targets first, so dup2 cannot clobber another source.
            tmp.append((fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 16), dst))
        for t, dst in tmp:
            os.dup2(t, dst, inheritable=True)
            os.close(t)
        if pdeathsig and _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if user_preexec is not None:
            user_preexec()

    return child


def proxy_args(host_port, container_ip, container_port, host_ip="127.0.0.1", proto="tcp",
               use_listen_fd=False):
    """The exact argv (after argv[0]) dockerd uses."""
    args = ["-proto", proto, "-host-ip", host_ip, "-host-port", str(host_port),
            "-container-ip", container_ip, "-container-port", str(container_port)]
    if use_listen_fd:
        args.append("-use-listen-fd")
    return args


def start_proxy(case, backend_port, host_ip="127.0.0.1", container_ip="127.0.0.1", proto="tcp",
                host_port=None, extra=(), attempts=3, **kw):
    """For the unittest.TestCase `case`: spawn a proxy host_ip:<port> ->
    container_ip:backend_port exactly as dockerd does (`extra` flags after dockerd's), clean
    it up with the case, and require handshake "0" (case.fail otherwise). Without host_port
    a free port is picked, and picked again if it got taken meanwhile. Returns the Proxy,
    .port set."""
    stype = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    for attempt in range(attempts):
        port = host_port if host_port is not None else free_port(host_ip, stype)
        args = proxy_args(port, container_ip, backend_port, host_ip=host_ip, proto=proto)
        p = spawn(args + list(extra), **kw)
        case.addCleanup(p.cleanup)
        if p.status == "0":
            p.port = port
            return p
        if host_port is None and "in use" in p.message and attempt + 1 < attempts:
            continue
        case.fail("proxy did not start: argv=%r %s" % (p.argv, p.describe()))


def echo_until_eof(conn):
    """Backend side: send back what conn sends (bounded), then shut down writing at EOF."""
    for _ in range(1 << 20):
        d = conn.recv(1 << 16)
        if not d:
            break
        conn.sendall(d)
    conn.shutdown(socket.SHUT_WR)


def count_until_eof(conn, rec):
    """Backend side: read and count into rec["recv"] until EOF (rec["outcome"] = "eof"),
    bounded; socket errors go to the caller."""
    for _ in range(1 << 20):
        d = conn.recv(1 << 16)
        if not d:
            rec["outcome"] = "eof"
            return
        rec["recv"] += len(d)


class Proxy:
    """A spawned portproxy.

    Attributes: proc, pid, argv, status ('0', '1' or None if nothing usable was written),
    message (text after "1\\n"), raw (all handshake bytes), first_read (bytes of the first
    read() on the pipe), handshake_eof (the pipe reached EOF, i.e. the proxy closed fd 3),
    handshake_seconds, stop_seconds (set by stop())."""

    def __init__(self, proc, argv, out_path, err_path):
        self.proc = proc
        self.pid = proc.pid
        self.argv = argv
        self.status = None
        self.message = ""
        self.raw = b""
        self.first_read = b""
        self.handshake_eof = False
        self.handshake_seconds = None
        self.stop_seconds = None
        self._out_path = out_path
        self._err_path = err_path

    # -- handshake --
    def _read_handshake(self, rfd, timeout):
        t0 = time.monotonic()
        deadline = t0 + timeout
        chunks = []
        for _ in range(10000):  # bounded; each pass either reads or ends
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not wait_readable(rfd, remaining):
                break
            data = os.read(rfd, 4096)
            if not data:
                self.handshake_eof = True
                break
            if not chunks:
                self.first_read = data
            chunks.append(data)
            if b"".join(chunks).startswith(b"0\n"):
                # Success: the proxy must close fd 3 right after; give it a moment to show EOF.
                deadline = min(deadline, time.monotonic() + 1.0)
        self.handshake_seconds = time.monotonic() - t0
        self.raw = b"".join(chunks)
        if self.raw.startswith(b"0\n"):
            self.status = "0"
        elif self.raw.startswith(b"1\n"):
            self.status = "1"
            self.message = self.raw[2:].decode("utf-8", "replace")
        elif self.raw:
            self.status = None
            self.message = self.raw.decode("utf-8", "replace")

    def describe(self):
        return ("handshake=%r eof=%s rc=%s stderr=%r" %
                (self.raw, self.handshake_eof, self.proc.poll(), self.stderr_text()[-2000:]))

    # -- process state --
    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=5.0):
        """Wait for exit; return the exit code (negative = signal), or None on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Send `sig` and wait up to `timeout` s. Returns the exit code (None if it did not exit;
        it is then SIGKILLed). self.stop_seconds holds the measured time from the signal to the
        exit (measured through a pidfd, so not rounded by polling)."""
        if self.proc.poll() is not None:
            self.stop_seconds = 0.0
            return self.proc.returncode
        pidfd = None
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        t0 = time.monotonic()
        os.kill(self.pid, sig)
        exited = False
        try:
            if pidfd is not None:
                exited = wait_readable(pidfd, timeout)
                self.stop_seconds = time.monotonic() - t0
            else:
                try:
                    self.proc.wait(timeout=timeout)
                    exited = True
                except subprocess.TimeoutExpired:
                    exited = False
                self.stop_seconds = time.monotonic() - t0
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if not exited:
            self.kill()
            return None
        return self.proc.wait(timeout=5)

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self):
        self.kill()
        for p in (self._out_path, self._err_path):
            if p:
                with contextlib.suppress(OSError):
                    os.unlink(p)

    # -- output --
    def _read_path(self, path):
        if not path:
            return ""
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_text(self):
        return self._read_path(self._err_path)

    def stdout_text(self):
        return self._read_path(self._out_path)

    # -- /proc views --
    def cpu_seconds(self):
        return proc_cpu_seconds(self.pid)

    def fd_count(self):
        return fd_count(self.pid)

    def socket_count(self):
        return socket_fd_count(self.pid)


def spawn(args, listen_fd=None, stdio_null=True, extra_env=None, preexec=None, handshake=True,
          handshake_timeout=HANDSHAKE_TIMEOUT, binary=None, pdeathsig=True):
    """Spawn $PORTPROXY with `args` the way dockerd does and read its fd-3 handshake.

    listen_fd:  a socket object or fd number placed on fd 4 (for -use-listen-fd).
    stdio_null: True = stdin/stdout/stderr on /dev/null (as dockerd); False = stdin on /dev/null,
                stdout and stderr captured to temporary files (Proxy.stdout_text/stderr_text).
    preexec:    extra callable run in the child before exec (e.g. resource.setrlimit).
    handshake:  False = no fd 3 at all (as when run by hand); status stays None.
    Returns a Proxy (always; check .status). The caller owns it: call .cleanup()."""
    binary = binary or PORTPROXY
    argv = [binary] + [str(a) for a in args]
    env = dict(os.environ)
    if extra_env:
        env.update(extra_env)
    out_path = err_path = None
    out_f = err_f = subprocess.DEVNULL
    if not stdio_null:
        fd, out_path = tempfile.mkstemp(prefix="pp-out-")
        out_f = os.fdopen(fd, "wb")
        fd, err_path = tempfile.mkstemp(prefix="pp-err-")
        err_f = os.fdopen(fd, "wb")
        with _live_lock:
            _temp_paths.extend((out_path, err_path))

    rfd = wfd = None
    fd_map = []
    if handshake:
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        fd_map.append((wfd, 3))
    if listen_fd is not None:
        lfd = listen_fd if isinstance(listen_fd, int) else listen_fd.fileno()
        fd_map.append((lfd, 4))
    pass_fds = tuple(dst for _, dst in fd_map)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f,
                                env=env, pass_fds=pass_fds, close_fds=True,
                                preexec_fn=_make_preexec(fd_map, pdeathsig, preexec))
    except BaseException:
        for fd in (rfd, wfd):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        if not stdio_null:
            out_f.close()
            err_f.close()
    _track(proc)
    p = Proxy(proc, argv, out_path, err_path)
    if handshake:
        os.close(wfd)  # only the child holds the write end now: EOF = the proxy closed fd 3
        try:
            p._read_handshake(rfd, handshake_timeout)
        finally:
            os.close(rfd)
    return p


# --- ports and sockets --------------------------------------------------------------------------

def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host="127.0.0.1", type=socket.SOCK_STREAM):
    """A port that was free a moment ago (bind port 0, read it back, close)."""
    with socket.socket(family_of(host), type) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def listening_socket(host="127.0.0.1", port=0, backlog=128, v6only=None, reuseaddr=True):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    if reuseaddr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None and family_of(host) == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    s.bind((host, port))
    s.listen(backlog)
    return s


def connect(host, port, timeout=5.0, rcvbuf=None):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def set_linger_reset(sock):
    """SO_LINGER {1, 0}: the next close() sends RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exact(sock, n, timeout=10.0):
    """Read exactly n bytes (raises on EOF before n, or timeout)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("got %d of %d bytes before the deadline" % (len(buf), n))
        sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock, timeout=10.0, limit=256 * MiB):
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no EOF before the deadline (%d bytes read)" % len(buf))
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
    raise ValueError("more than %d bytes before EOF" % limit)


def echo_roundtrip(host, port, payload, timeout=5.0):
    """Connect, send payload, read it back, half-close, expect EOF. Returns the echoed bytes."""
    with connect(host, port, timeout=timeout) as s:
        s.sendall(payload)
        got = recv_exact(s, len(payload), timeout=timeout)
        s.shutdown(socket.SHUT_WR)
        rest = recv_until_eof(s, timeout=timeout)
        return got + rest


def try_echo(host, port, payload=b"ping", timeout=1.0):
    """True if one echo round trip through host:port works (no exceptions)."""
    try:
        return echo_roundtrip(host, port, payload, timeout=timeout) == payload
    except (OSError, EOFError, TimeoutError):
        return False


def can_connect(host, port, timeout=0.5):
    try:
        with connect(host, port, timeout=timeout):
            return True
    except OSError:
        return False


def random_stream(nbytes, chunk=MiB):
    """Yield nbytes of random data in chunks."""
    left = nbytes
    while left > 0:
        n = min(chunk, left)
        yield os.urandom(n)
        left -= n


# --- polling and /proc ---------------------------------------------------------------------------

def wait_until(pred, timeout=5.0, interval=0.01):
    """Poll pred() until it is true or `timeout` s pass. Returns the last value of pred()."""
    deadline = time.monotonic() + timeout
    val = pred()
    while not val and time.monotonic() < deadline:
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        val = pred()
    return val


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    """utime + stime of pid, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def vm_rss_kib(pid):
    """Resident memory of pid, in KiB (VmRSS from /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError("no VmRSS line")


def under_asan(pid):
    """Whether pid runs with AddressSanitizer's shared runtime (gcc's libasan, clang's
    libclang_rt.asan). ASan keeps freed memory in quarantine (up to 256 MiB): RSS bounds mean
    nothing there."""
    with open("/proc/%d/maps" % pid) as f:
        return any("libasan" in line or "libclang_rt.asan" in line for line in f)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def socket_fd_count(pid):
    n = 0
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def proc_nofile_limits(pid):
    """(soft, hard) RLIMIT_NOFILE of pid from /proc/PID/limits."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return int(parts[3]), int(parts[4])
    raise ValueError("no 'Max open files' line")


def proc_signal_ignored(pid, sig):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (int(sig) - 1)))
    raise ValueError("no SigIgn line")


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}


def tcp_states_on_local_port(port):
    """States (names) of all TCP sockets in this namespace whose local port is `port`."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    if lport == port:
                        out.append(TCP_STATES.get(int(parts[3], 16), parts[3]))
        except OSError:
            pass
    return out


def ss_lines(args, timeout=5):
    """Run `ss` with args, return its output lines ([] if ss is missing)."""
    if not shutil.which("ss"):
        return None
    r = subprocess.run(["ss"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       timeout=timeout)
    return r.stdout.decode("utf-8", "replace").splitlines()


# --- backends ------------------------------------------------------------------------------------

class ThreadedServer:
    """TCP server on host:port (port 0 = pick one) calling handler(conn, addr, server) in a
    thread per connection. The connection is closed after the handler returns. Exceptions from
    handlers are collected in .errors. .port is the bound port."""

    def __init__(self, handler, host="127.0.0.1", port=0, backlog=1024, max_conns=10000):
        self.handler = handler
        self.host = host
        self.sock = listening_socket(host, port, backlog)
        self.port = self.sock.getsockname()[1]
        self.errors = []
        self.results = []  # free for handlers to append to
        self.accepted = 0
        self.lock = threading.Lock()
        self._conns = set()
        self._threads = []
        self._stop = threading.Event()
        self._max_conns = max_conns
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            conn.settimeout(None)
            with self.lock:
                self.accepted += 1
                if self.accepted > self._max_conns:
                    conn.close()
                    continue
                self._conns.add(conn)
            t = threading.Thread(target=self._run, args=(conn, addr), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn, addr):
        try:
            self.handler(conn, addr, self)
        except Exception as e:  # collected for the test to assert on
            with self.lock:
                self.errors.append(repr(e))
        finally:
            with self.lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self):
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)


class EchoServer:
    """Single-threaded selector-based echo server (scales to thousands of connections).

    On EOF from a client it flushes what it owes, then shuts down writing and closes.
    `greeting` is sent first on every connection (to tell servers apart).
    Counters: accepted, active, eofs, resets."""

    def __init__(self, host="127.0.0.1", port=0, greeting=b"", backlog=4096):
        self.host = host
        self.greeting = greeting
        self.sock = listening_socket(host, port, backlog)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.eofs = 0
        self.resets = 0
        self._conns = {}  # sock -> [outbuf(bytearray), eof(bool)]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def active(self):
        return len(self._conns)

    def _drop(self, s):
        with contextlib.suppress(Exception):
            self._sel.unregister(s)
        self._conns.pop(s, None)
        with contextlib.suppress(OSError):
            s.close()

    def _update(self, s):
        out, eof = self._conns[s]
        ev = 0
        if not eof and len(out) < 4 * MiB:  # backpressure: stop reading while we owe a lot
            ev |= selectors.EVENT_READ
        if out:
            ev |= selectors.EVENT_WRITE
        if ev == 0:
            if eof:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
                self._drop(s)
                return
            ev = selectors.EVENT_READ
        self._sel.modify(s, ev)

    def _loop(self):
        deadline = time.monotonic() + 900
        while not self._stop and time.monotonic() < deadline:
            for key, mask in self._sel.select(timeout=0.5):
                if key.data == "wake":
                    return
                if key.data == "listen":
                    for _ in range(64):
                        try:
                            c, _ = self.sock.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        c.setblocking(False)
                        self.accepted += 1
                        self._conns[c] = [bytearray(self.greeting), False]
                        self._sel.register(c, selectors.EVENT_READ, "conn")
                        self._update(c)
                    continue
                s = key.fileobj
                if s not in self._conns:
                    continue
                st = self._conns[s]
                try:
                    if mask & selectors.EVENT_READ and not st[1]:
                        data = s.recv(256 * 1024)
                        if data:
                            st[0] += data
                        else:
                            st[1] = True
                            self.eofs += 1
                    if st[0]:
                        try:
                            n = s.send(st[0])
                            del st[0][:n]
                        except BlockingIOError:
                            pass
                except (ConnectionResetError, BrokenPipeError):
                    self.resets += 1
                    self._drop(s)
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop(s)
                    continue
                self._update(s)

    def close(self):
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for s in list(self._conns):
            self._drop(s)
        for s in (self.sock, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()
        self._sel.close()


def udp_exchange(sock, payload, timeout=2.0, tries=3, to=None, want=None):
    """Send payload (to `to` if the socket is not connected) and wait for one datagram back
    (with `want`, for that datagram: a late reply to an earlier try is skipped); a lost
    datagram is sent again, at most `tries` times in all. Returns (data, source) or
    (None, None)."""
    for _ in range(tries):
        if to is None:
            sock.send(payload)
        else:
            sock.sendto(payload, to)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data, source = sock.recvfrom(65536)
            except socket.timeout:
                break
            except ConnectionRefusedError:
                continue  # an ICMP error from before; keep waiting
            if want is None or data == want:
                return data, source
    return None, None


class UdpBackend:
    """A UDP server in a thread on host:port (0 = pick one): echoes every datagram (echo=True)
    or just records it. Records (source address, length, first 16 bytes) in .seen, bounded.
    `reply` optionally maps the received bytes to what is sent back."""

    def __init__(self, host="127.0.0.1", port=0, echo=True, reply=None, keep=100000):
        self.sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
        if family_of(host) == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.echo = echo
        self.reply = reply
        self.keep = keep
        self.seen = []
        self.count = 0
        self.lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        deadline = time.monotonic() + 600
        try:
            while not self._stop and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    if key.fileobj is self._wake_r:
                        return
                    for _ in range(256):
                        try:
                            data, src = self.sock.recvfrom(65536)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break  # e.g. an ICMP error reported late; keep serving
                        with self.lock:
                            self.count += 1
                            if len(self.seen) < self.keep:
                                self.seen.append((src, len(data), data[:16]))
                        if self.echo:
                            out = self.reply(data) if self.reply else data
                            with contextlib.suppress(OSError):
                                self.sock.sendto(out, src)
        finally:
            sel.close()

    def sources(self):
        with self.lock:
            return [s for s, _, _ in self.seen]

    def close(self):
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()


def _duplex(sock, send_bytes, timeout):
    """Send `send_bytes` random bytes (then SHUT_WR) while hashing everything received until
    EOF. Returns dict sent_len, sent_sha, recv_len, recv_sha, error. Both ends of the bulk
    tests use it: sink_source_handler on the backend, bulk_exchange on the client."""
    res = {"sent_len": 0, "sent_sha": None, "recv_len": 0, "recv_sha": None, "error": None}
    sock.settimeout(timeout)

    def sender():
        h = hashlib.sha256()
        try:
            for chunk in random_stream(send_bytes):
                sock.sendall(chunk)
                h.update(chunk)
                res["sent_len"] += len(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            res["error"] = "send: %r" % e
        res["sent_sha"] = h.hexdigest()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    try:
        for _ in range(1 << 20):
            data = sock.recv(1 << 20)
            if not data:
                break
            h.update(data)
            res["recv_len"] += len(data)
    except OSError as e:
        res["error"] = "recv: %r" % e
    res["recv_sha"] = h.hexdigest()
    t.join(timeout=timeout)
    if t.is_alive() and not res["error"]:
        res["error"] = "sender did not finish"
    return res


def sink_source_handler(send_bytes):
    """Handler for ThreadedServer: concurrently hashes everything it receives until EOF and sends
    `send_bytes` of random data (then shuts down writing). Appends a dict to server.results:
    recv_len, recv_sha, sent_len, sent_sha, error."""

    def handler(conn, addr, server):
        res = _duplex(conn, send_bytes, 60.0)
        with server.lock:
            server.results.append(res)

    return handler


def bulk_exchange(sock, send_bytes, timeout=60.0):
    """Client side of sink_source_handler: send `send_bytes` random bytes (then SHUT_WR) while
    reading until EOF. Returns dict sent_len, sent_sha, recv_len, recv_sha, error."""
    return _duplex(sock, send_bytes, timeout)


def parallel_echo(host, port, payloads, timeout=20.0):
    """Open one connection per payload (all at once), send each payload, read each back, all
    multiplexed on one selector. Returns a list of (received bytes or None, error or None)."""
    n = len(payloads)
    socks = []
    results = [None] * n
    errors = [None] * n
    sel = selectors.DefaultSelector()
    try:
        for i in range(n):
            socks.append(connect(host, port, timeout=timeout))
        state = []
        for i, s in enumerate(socks):
            s.setblocking(False)
            state.append({"out": memoryview(payloads[i]), "in": bytearray(), "done": False})
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
        remaining = n
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for key, mask in sel.select(timeout=0.2):
                i = key.data
                s = key.fileobj
                st = state[i]
                try:
                    if mask & selectors.EVENT_WRITE and len(st["out"]):
                        k = s.send(st["out"])
                        st["out"] = st["out"][k:]
                        if not len(st["out"]):
                            sel.modify(s, selectors.EVENT_READ, i)
                    if mask & selectors.EVENT_READ:
                        data = s.recv(1 << 20)
                        if not data:
                            errors[i] = "EOF after %d bytes" % len(st["in"])
                            st["done"] = True
                        st["in"] += data
                        if len(st["in"]) >= len(payloads[i]):
                            st["done"] = True
                except BlockingIOError:
                    continue
                except OSError as e:
                    errors[i] = repr(e)
                    st["done"] = True
                if st["done"]:
                    sel.unregister(s)
                    results[i] = bytes(st["in"])
                    remaining -= 1
        for i in range(n):
            if results[i] is None and errors[i] is None:
                errors[i] = "timeout with %d bytes" % len(state[i]["in"])
        return list(zip(results, errors))
    finally:
        sel.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


# --- network namespace ---------------------------------------------------------------------------

class NetNSUnavailable(Exception):
    """Raised by NetNS when a namespace cannot be made; the message says why (for skipTest)."""


_NS_ECHO_SCRIPT = r"""
import socket, sys, threading
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
ls = socket.socket(fam, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, 0))
ls.listen(128)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
def accept():
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()  # exit when the test closes our stdin (or dies)
"""


class NetNS:
    """Context manager: a fresh network namespace `ppt-<random>` joined to this one by a veth
    pair: host side NS_HOST_V4/24 + NS_HOST_V6/64, namespace side NS_PEER_V4/24 + NS_PEER_V6/64
    (nodad), lo up. Always deleted on exit. Serialised across processes with a lock file, since
    every suite uses the same addresses. Raises NetNSUnavailable (not root, no `ip`, ...)."""

    LOCK_PATH = "/tmp/portproxy-e2e-netns.lock"
    V4_NET, V6_NET = "198.51.100.0/24", "2001:db8::/64"

    def __init__(self, need_v4=True, need_v6=False, busy_wait=15.0):
        """need_v4/need_v6: raise NetNSUnavailable unless that family's range is free on this
        host (something else, e.g. a benchmark, may be using it: waited for up to busy_wait s).
        A family not needed is configured only if its range is free (see .ipv4, .ipv6)."""
        self.need_v4, self.need_v6, self.busy_wait = need_v4, need_v6, busy_wait
        self.ipv4 = self.ipv6 = False
        tag = secrets.token_hex(4)
        self.name = "ppt-" + tag
        self.host_if = "pph" + tag  # <= 15 chars
        self.peer_if = "ppn" + tag
        self._procs = []
        self._lock_f = None
        self._created_ns = False
        self._created_link = False

    @staticmethod
    def check():
        """None if namespaces can be made here, else the reason."""
        if os.geteuid() != 0:
            return "network namespace tests need root (euid %d)" % os.geteuid()
        if not shutil.which("ip"):
            return "the `ip` command (iproute2) is not installed"
        return None

    def _ip(self, *args, check=True):
        r = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=10)
        if check and r.returncode != 0:
            raise NetNSUnavailable("`ip %s` failed: %s" %
                                   (" ".join(args), r.stderr.decode(errors="replace").strip()))
        return r

    def __enter__(self):
        why = self.check()
        if why:
            raise NetNSUnavailable(why)
        self._lock_f = open(self.LOCK_PATH, "a+")
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(self._lock_f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock_f.close()
                    raise NetNSUnavailable("timed out waiting for %s" % self.LOCK_PATH)
                time.sleep(0.05)
        try:
            self._wait_ranges_free()
            self._setup()
        except BaseException:
            self._teardown()
            raise
        return self

    def _range_user(self, fam, net):
        """Description of what already uses `net` on this host, or "" if nothing does."""
        addrs = self._ip("-o", fam, "addr", "show", "to", net, check=False).stdout.decode()
        routes = self._ip(fam, "route", "show", net, check=False).stdout.decode()
        return (addrs.strip() or routes.strip()).splitlines()[0] if (addrs.strip() or
                                                                     routes.strip()) else ""

    def _wait_ranges_free(self):
        deadline = time.monotonic() + self.busy_wait
        while True:
            v4 = self._range_user("-4", self.V4_NET)
            v6 = self._range_user("-6", self.V6_NET)
            blocking = [(net, who) for need, net, who in
                        ((self.need_v4, self.V4_NET, v4), (self.need_v6, self.V6_NET, v6))
                        if need and who]
            if not blocking:
                break
            if time.monotonic() > deadline:
                raise NetNSUnavailable("%s is already in use on this host by something else "
                                       "(another test run or a benchmark?), waited %.0f s: %s"
                                       % (blocking[0][0], self.busy_wait, blocking[0][1]))
            time.sleep(0.2)
        self.ipv4 = not v4
        self.ipv6 = not v6

    def _setup(self):
        self._ip("netns", "add", self.name)
        self._created_ns = True
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        self._created_link = True
        self._ip("link", "set", self.peer_if, "netns", self.name)
        n = ["-n", self.name]
        self._ip(*n, "link", "set", "lo", "up")
        if self.ipv4:
            self._ip("addr", "add", NS_HOST_V4 + "/24", "dev", self.host_if)
            self._ip(*n, "addr", "add", NS_PEER_V4 + "/24", "dev", self.peer_if)
        if self.ipv6:
            for args in (["addr", "add", NS_HOST_V6 + "/64", "dev", self.host_if, "nodad"],
                         n + ["addr", "add", NS_PEER_V6 + "/64", "dev", self.peer_if, "nodad"]):
                if self._ip(*args, check=False).returncode != 0:
                    if self.need_v6:
                        raise NetNSUnavailable("could not configure IPv6 on the veth pair")
                    self.ipv6 = False
        self._ip("link", "set", self.host_if, "up")
        self._ip(*n, "link", "set", self.peer_if, "up")

    def exec_popen(self, argv, **kw):
        """Popen argv inside the namespace (tracked; killed on exit)."""
        kw.setdefault("preexec_fn", _make_preexec([], True, None))
        p = subprocess.Popen(["ip", "netns", "exec", self.name] + list(argv), **kw)
        self._procs.append(p)
        _track(p)
        return p

    def spawn_echo(self, host, timeout=5.0):
        """Start an echo server inside the namespace bound to host:0. Returns its port."""
        p = self.exec_popen([sys.executable, "-c", _NS_ECHO_SCRIPT, host],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        line = p.stdout.readline() if wait_readable(p.stdout.fileno(), timeout) else b""
        if not line.strip().isdigit():
            err = b""
            if p.poll() is not None:
                err = p.stderr.read()
            raise NetNSUnavailable("echo server in %s on %s did not start: %r %r" %
                                   (self.name, host, line, err[-500:]))
        return int(line)

    def _teardown(self):
        for p in self._procs:
            with contextlib.suppress(Exception):
                if p.stdin:
                    p.stdin.close()
            with contextlib.suppress(Exception):
                p.wait(timeout=1)
            if p.poll() is None:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(timeout=2)
            for f in (p.stdout, p.stderr):
                with contextlib.suppress(Exception):
                    if f:
                        f.close()
        if self._created_ns:
            self._ip("netns", "del", self.name, check=False)
        if self._created_link:
            # Deleting the namespace destroys the peer and with it the pair; be sure anyway.
            if self._ip("link", "show", self.host_if, check=False).returncode == 0:
                self._ip("link", "del", self.host_if, check=False)
        if self._lock_f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_f, fcntl.LOCK_UN)
            self._lock_f.close()
            self._lock_f = None

    def __exit__(self, *exc):
        self._teardown()
        return False
