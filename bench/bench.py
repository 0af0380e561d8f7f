#!/usr/bin/env python3
"""portproxy benchmark: compares portproxy with docker-proxy, haproxy, socat
and a direct connection in one run.  Python 3 standard library only; the
measured-path tools are iperf3 and ppbtool (ppbtool.c beside this file).
Run it through bench/run, which installs missing packages and builds ppbtool.
See README.md for what every metric means."""

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ["direct", "floor", "portproxy", "docker-proxy", "haproxy", "socat"]
FD3_KINDS = ("portproxy", "docker-proxy")
NS_HOST_IP, NS_CONT_IP = "198.51.100.1", "198.51.100.2"
MSG = 64
OPEN_RATE, OPEN_FLOWS = 150000, 8  # open-loop UDP load: datagrams/s in all (direct carries it), flows

MODES = {
    # runs: rounds per metric; iperf_t: seconds per iperf3 test (integer);
    # rr_n: round trips per latency run; crr_s/udp_s: seconds per run;
    # hold: idle connections for the memory test; startup_n: start-ups per kind;
    # range_n: processes actually started for the 1000-port test (scaled to 1000).
    "quick": dict(runs=3, iperf_t=1, rr_n=5000, crr_s=0.5, udp_s=0.5, mem_runs=1,
                  hold=1000, startup_n=20, range_n=100, paths=["loopback"]),
    "full": dict(runs=5, iperf_t=3, rr_n=10000, crr_s=0.7, udp_s=0.7, mem_runs=2,
                 hold=1000, startup_n=20, range_n=1000, paths=["loopback", "netns"]),
}
RANGE_PORTS = 1000

# metric key -> (label, unit, better); order here is the order of the table
METRICS = {}


def metric(key, label, unit, better):
    METRICS[key] = (label, unit, better)


for _p in ("loopback", "netns"):
    for _s in (1, 4):
        metric(f"{_p}.tput{_s}", f"TCP throughput, {_s} stream{'s' * (_s > 1)}", "Gbit/s", "higher")
        metric(f"{_p}.cpugb{_s}", f"proxy CPU per GB, {_s} stream{'s' * (_s > 1)}", "s/GB", "lower")
    metric(f"{_p}.rr50", "64 B round trip p50 (1 CPU)", "µs", "lower")
    metric(f"{_p}.rr99", "64 B round trip p99 (1 CPU)", "µs", "lower")
    for _c in (1, 16):
        _w = "1 loop (1 CPU)" if _c == 1 else f"{_c} loops"
        metric(f"{_p}.crr{_c}", f"connections/s, {_w}", "conn/s", "higher")
        metric(f"{_p}.crrcpu{_c}", f"proxy CPU per connection, {_w}", "µs", "lower")
        metric(f"{_p}.crrend{_c}", f"client+backend CPU per connection, {_w}", "µs", "lower")
    for _f in (1, 8):
        metric(f"{_p}.udp{_f}", f"UDP 64 B echoes/s, {_f} flow{'s' * (_f > 1)}", "echo/s", "higher")
        metric(f"{_p}.udploss{_f}", f"UDP loss, {_f} flow{'s' * (_f > 1)}", "%", "lower")
        metric(f"{_p}.udpcpu{_f}", f"proxy CPU per datagram, {_f} flow{'s' * (_f > 1)}",
               "µs", "lower")
    _o = f"open loop {OPEN_RATE // 1000}k/s, {OPEN_FLOWS} flows"
    metric(f"{_p}.olloss", f"UDP loss, {_o}", "%", "lower")
    metric(f"{_p}.oldrop", f"UDP dropped at the proxy's own sockets, {_o}", "%", "lower")
    metric(f"{_p}.olbedrop", f"UDP dropped at the echo backend's socket, {_o}", "%", "lower")
    metric(f"{_p}.olcpu", f"proxy CPU per datagram, {_o}", "µs", "lower")
metric("mem.idle_pss_anon", "idle Pss_Anon", "KiB", "lower")
metric("mem.idle_private", "idle Private (clean+dirty)", "KiB", "lower")
metric("mem.hold_pss_anon", "Pss_Anon with 1000 connections", "KiB", "lower")
metric("mem.hold_private", "Private with 1000 connections", "KiB", "lower")
metric("mem.conn_pss_anon", "Pss_Anon per connection", "KiB", "lower")
metric("mem.conn_private", "Private per connection", "KiB", "lower")
metric("mem.conn_kernel", "kernel memory per connection (cgroup)", "KiB", "lower")
metric("mem.conn_kernel_ends", "kernel memory per connection, both ends of a direct one (cgroup)",
       "KiB", "lower")
metric("mem.pipes", "pipe fds held with 1000 idle connections (over idle)", "", "lower")
MEM_METRICS = [m for m in METRICS if m.startswith("mem.")]
metric("start.p50", "start-up to \"0\\n\" on fd 3, median", "ms", "lower")
metric("start.p90", "start-up to \"0\\n\" on fd 3, p90", "ms", "lower")
metric("start.stop50", "SIGINT to exit, median", "ms", "lower")
metric("range.procs", "1000 ports: processes", "", "lower")
metric("range.ready", "1000 ports: time until all ready", "s", "lower")
metric("range.pss", "1000 ports: total Pss", "MiB", "lower")
metric("range.private", "1000 ports: total Private", "MiB", "lower")
metric("range.cpu", "1000 ports: CPU to start", "s", "lower")

PATH_LABEL = {"loopback": "lo", "netns": "veth"}
COLOURS = {"direct": "#808080", "floor": "#b0b0b0", "portproxy": "#1b9e77", "docker-proxy": "#2c7fb8",
           "haproxy": "#d95f02", "socat": "#e6ab02"}


class Interrupted(Exception):
    pass


T0 = time.monotonic()


def log(msg):
    print(f"{time.monotonic() - T0:6.1f}s {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


def cpus_available():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return {cpus[0]}, {cpus[1]}
    return {cpus[0]}, {cpus[0]}


@contextlib.contextmanager
def affinity(cpus):
    if not cpus:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


class Proc:
    """A child started with posix_spawn in its own session (so its whole
    process group can be ended), optionally pinned, inside a netns, with the
    write end of a pipe as exactly fd 3, or placed in a cgroup."""

    live = {}
    state_file = None
    cpucg = None  # the CPU cgroup of a proxy (Bench.start_proxy)

    def __init__(self, argv, *, cpus=None, ns=None, fd3=False, stdin_pipe=False,
                 stdout_pipe=False, stderr_pipe=False, log_path=None, cgroup=None):
        self.name = os.path.basename(argv[0])
        if ns:
            argv = ["ip", "netns", "exec", ns] + list(argv)
        self.argv = argv
        self.stdin = self.stdout = self.stderr = self.fd3 = None
        self.rc = None
        fa, child_ends = [], []
        if stdin_pipe:
            r, w = os.pipe()
            fa.append((os.POSIX_SPAWN_DUP2, r, 0))
            child_ends.append(r)
            self.stdin = w
        else:
            fa.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
        out = log_path or "/dev/null"
        for fd, want in ((1, stdout_pipe), (2, stderr_pipe)):
            if want:
                r, w = os.pipe()
                fa.append((os.POSIX_SPAWN_DUP2, w, fd))
                child_ends.append(w)
                if fd == 1:
                    self.stdout = r
                else:
                    self.stderr = r
            else:
                fa.append((os.POSIX_SPAWN_OPEN, fd, out,
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        if fd3:
            r, w = os.pipe()
            if w == 3:  # dup2(3, 3) would keep close-on-exec on old libcs
                w2 = os.dup(w)
                os.close(w)
                w = w2
            fa.append((os.POSIX_SPAWN_DUP2, w, 3))  # last: nothing is dup'ed onto 3 after
            child_ends.append(w)
            self.fd3 = r
        exe = shutil.which(argv[0]) or argv[0]
        try:
            with affinity(cpus):
                self.t0 = time.perf_counter()
                self.pid = os.posix_spawn(exe, argv, os.environ, file_actions=fa, setsid=True,
                                          setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        finally:
            for fd in child_ends:
                os.close(fd)
        Proc.live[self.pid] = self
        Proc.save_state()
        self.owned = []  # cgroups removed once the process has gone
        for cg in cgroup if isinstance(cgroup, list) else [cgroup]:
            if cg:
                cg.add(self.pid)

    @classmethod
    def save_state(cls):
        if cls.state_file:
            with open(cls.state_file + ".tmp", "w") as f:
                f.write("".join(f"pgid {p}\n" for p in cls.live))
                for extra in STATE_EXTRA:
                    f.write(extra + "\n")
            os.replace(cls.state_file + ".tmp", cls.state_file)

    def poll(self):
        if self.rc is None:
            try:
                pid, st = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, st = self.pid, 0
            if pid:
                self.rc = os.waitstatus_to_exitcode(st)
        return self.rc

    def read_fd3(self, timeout):
        """Wait for the readiness message on fd 3: returns (ok, message, seconds)."""
        buf = b""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return False, "timeout waiting for fd 3", None
            r, _, _ = select.select([self.fd3], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd3, 4096)
            if buf == b"" and chunk:
                t_first = time.perf_counter() - self.t0
            buf += chunk
            if buf.startswith(b"0\n"):
                return True, "", t_first
            if not chunk:  # EOF
                if buf.startswith(b"1\n"):
                    return False, buf[2:].decode(errors="replace").strip(), None
                return False, f"fd 3 closed with {buf!r} (exit {self.poll()})", None
            if buf.startswith(b"1\n") and self.poll() is not None:
                return False, buf[2:].decode(errors="replace").strip(), None

    def close_fd3(self):
        if self.fd3 is not None:
            os.close(self.fd3)
            self.fd3 = None

    def communicate(self, timeout):
        """Collect stdout/stderr until exit; returns (rc, out, err). Kills on timeout."""
        deadline = time.monotonic() + timeout
        data = {"stdout": b"", "stderr": b""}
        while True:
            fds = {getattr(self, a): a for a in data if getattr(self, a) is not None}
            if not fds:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop(sig=signal.SIGKILL)
                raise TimeoutError(f"{self.name} timed out after {timeout:.0f} s")
            r, _, _ = select.select(list(fds), [], [], min(left, 0.5))
            for fd in r:
                chunk = os.read(fd, 65536)
                if chunk:
                    data[fds[fd]] += chunk
                else:
                    os.close(fd)
                    setattr(self, fds[fd], None)
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.stop(sig=signal.SIGKILL)
                raise TimeoutError(f"{self.name} did not exit")
            time.sleep(0.002)
        self.forget()
        return self.rc, data["stdout"].decode(errors="replace"), data["stderr"].decode(
            errors="replace")

    def readline(self, timeout):
        """Read one line from stdout (the helper's 'ready' lines)."""
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.stdout], [], [], left)
            if r:
                chunk = os.read(self.stdout, 1)
                if not chunk:
                    return None
                buf += chunk
        return buf.decode().strip()

    def forget(self):
        for attr in ("stdin", "stdout", "stderr", "fd3"):
            fd = getattr(self, attr)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)
        Proc.live.pop(self.pid, None)
        Proc.save_state()

    def signal_group(self, sig):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        """End the whole process group; returns seconds until the leader exited."""
        t0 = time.perf_counter()
        if self.poll() is None:
            self.signal_group(sig)
            deadline = time.monotonic() + timeout
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
        took = time.perf_counter() - t0
        if self.poll() is None:
            self.signal_group(signal.SIGKILL)
            while self.poll() is None:
                time.sleep(0.005)
        if self.pid in Proc.live:  # never signal a group whose id may be reused
            self.signal_group(signal.SIGKILL)  # forked children (socat) left behind
        self.forget()
        while self.owned:
            self.owned.pop().remove()
        return took


STATE_EXTRA = []


def release_holder(holder):
    """End a `ppbtool hold`: EOF on its stdin makes it close its connections
    and exit."""
    if not holder:
        return
    os.close(holder.stdin)
    holder.stdin = None
    with contextlib.suppress(TimeoutError):
        holder.communicate(10)
    holder.stop()


def run_tool(argv, *, cpus=None, ns=None, timeout=60):
    p = Proc(argv, cpus=cpus, ns=ns, stdout_pipe=True, stderr_pipe=True)
    return p.communicate(timeout)


def ports_line(line):
    """ppbtool serve's "tcp P crr P udp P" as {"tcp": P, ...}."""
    words = line.split()
    return dict(zip(words[0::2], map(int, words[1::2])))


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.e+]+)", line)}


# --------------------------------------------------------------------------
# /proc readers

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_tree(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid, tree=False):
    """CPU time of a process.  Single processes: sum of per-thread schedstat
    (ns resolution).  Forking proxies (socat): utime+stime of the live tree
    plus the reaped children's cutime+cstime (clock-tick resolution)."""
    try:
        if not tree:
            total = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            return total / 1e9
    except OSError:
        pass
    ticks = 0
    for i, p in enumerate(proc_tree(pid) if tree else [pid]):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        ticks += int(f[11]) + int(f[12])
        if i == 0:
            ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def smaps(pids):
    tot = {"Pss": 0, "Pss_Anon": 0, "Private": 0, "Rss": 0}
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    k, _, rest = line.partition(":")
                    if k in ("Pss", "Pss_Anon", "Rss"):
                        tot[k] += int(rest.split()[0])
                    elif k in ("Private_Clean", "Private_Dirty"):
                        tot["Private"] += int(rest.split()[0])
        except OSError:
            pass
    return tot  # KiB


def count_pipes(pids):
    """pipe: entries among the open fds of these processes (a pipe pair
    counts twice)."""
    n = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    n += os.readlink(f"/proc/{p}/fd/{fd}").startswith("pipe:")
    return n


def proxy_pids(p, kind):
    """The processes of a proxy: socat's forked children too."""
    if p is None:
        return []
    return proc_tree(p.pid) if kind == "socat" else [p.pid]


def udp_drops(pids):
    """{socket inode: drops} for the UDP sockets these processes hold (the
    last column of /proc/PID/net/udp and udp6: each process's own network
    namespace)."""
    out = {}
    for p in pids:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
        for table in (f"/proc/{p}/net/udp", f"/proc/{p}/net/udp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[9]) in inodes:
                        out[int(cols[9])] = int(cols[-1])
    return out


def listening_ports(pid=None, proto="tcp"):
    ports = set()
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    for fam in ("", "6"):
        try:
            with open(f"{base}/{proto}{fam}") as f:
                next(f)
                for line in f:
                    fld = line.split()
                    if proto == "tcp" and fld[3] != "0A":
                        continue
                    ports.add(int(fld[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def wait_listening(port, proto="tcp", pid=None, timeout=5.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in listening_ports(pid, proto):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def free_port(ns=None, udp_too=True):
    """A port free on 127.0.0.1 (TCP and UDP) found by binding port 0; in a
    namespace the probe runs inside it."""
    if ns:
        code = ("import socket;s=socket.socket();s.bind(('0.0.0.0',0));"
                "print(s.getsockname()[1])")
        rc, out, err = run_tool([sys.executable, "-c", code], ns=ns, timeout=10)
        return int(out)
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        ok = True
        if udp_too:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            u.close()
        s.close()
        if ok:
            return port
    raise RuntimeError("no free port")


def port_free(port):
    for typ in (socket.SOCK_STREAM,):
        s = socket.socket(socket.AF_INET, typ)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def find_port_block(n, rng):
    """n consecutive ports that all bind on 127.0.0.1, below the ephemeral range."""
    lo_eph = 32768
    with contextlib.suppress(OSError):
        lo_eph = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    top = max(lo_eph - n - 1, 10000 + n)
    for _ in range(40):
        base = rng.randrange(10000, top)
        if all(port_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports found")


# --------------------------------------------------------------------------
# namespace and cgroup


def sh(*argv, check=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


class Netns:
    """ppb-<rand> with a veth pair: host 198.51.100.1/24, namespace .2/24."""

    def __init__(self, rng):
        tag = "%06x" % rng.randrange(1 << 24)
        self.name, self.host_if, self.ns_if = f"ppb-{tag}", f"ppbh-{tag}", f"ppbc-{tag}"
        STATE_EXTRA.append(f"netns {self.name}")
        Proc.save_state()
        try:
            sh("ip", "netns", "add", self.name)
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.name)
            sh("ip", "addr", "add", f"{NS_HOST_IP}/24", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            sh("ip", "-n", self.name, "addr", "add", f"{NS_CONT_IP}/24", "dev", self.ns_if)
            sh("ip", "-n", self.name, "link", "set", self.ns_if, "up")
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def close(self):
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        with contextlib.suppress(ValueError):
            STATE_EXTRA.remove(f"netns {self.name}")
        Proc.save_state()


def netns_blocker():
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "no ip(8)"
    used = sh("ip", "-o", "addr", "show", "to", "198.51.100.0/24", check=False).strip()
    routes = sh("ip", "route", "show", "198.51.100.0/24", check=False).strip()
    if used or routes:
        return "198.51.100.0/24 already in use on this host (another test run?)"
    return None


class Cgroup:
    """A cgroup for one proxy and its children.  Memory: cgroup v2
    (memory.stat kernel+sock) or, where only v1 is mounted,
    memory.kmem.usage_in_bytes.  CPU: v1 cpuacct.usage or v2 cpu.stat, in
    nanoseconds of run time of every task that was ever in it (socat's
    children included), the same clock as /proc/PID/schedstat."""

    def __init__(self, path, version):
        self.path, self.version = path, version
        STATE_EXTRA.append(f"cgroup {path}")
        Proc.save_state()

    @staticmethod
    def probe_cpu():
        """Returns (base, version) or (None, reason)."""
        if os.geteuid() != 0:
            return None, "not root"
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            if os.access("/sys/fs/cgroup", os.W_OK):
                return "/sys/fs/cgroup", 2
        elif os.access("/sys/fs/cgroup/cpuacct/cpuacct.usage", os.R_OK) and \
                os.access("/sys/fs/cgroup/cpuacct", os.W_OK):
            return "/sys/fs/cgroup/cpuacct", 1
        return None, "no writable cpuacct (v1) or cgroup v2 hierarchy"

    def cpu_seconds(self):
        if self.version == 1:
            return int(open(f"{self.path}/cpuacct.usage").read()) / 1e9
        st = dict(line.split() for line in open(f"{self.path}/cpu.stat"))
        return int(st["usage_usec"]) / 1e6

    @staticmethod
    def probe():
        """Memory: returns (base, version) or (None, reason)."""
        if os.geteuid() != 0:
            return None, "not root"
        v2 = "/sys/fs/cgroup/cgroup.controllers"
        if os.path.exists(v2):
            ctl = open(v2).read().split()
            sub = open("/sys/fs/cgroup/cgroup.subtree_control").read().split()
            if "memory" in ctl and "memory" in sub and os.access("/sys/fs/cgroup", os.W_OK):
                return "/sys/fs/cgroup", 2
            return None, "cgroup v2 without the memory controller enabled at the root"
        v1 = "/sys/fs/cgroup/memory"
        if os.path.exists(f"{v1}/memory.kmem.usage_in_bytes") and os.access(v1, os.W_OK):
            return v1, 1
        return None, "no writable memory cgroup"

    @classmethod
    def create(cls, base, version, rng):
        path = f"{base}/ppb-{rng.randrange(1 << 32):08x}"
        os.mkdir(path)
        return cls(path, version)

    def add(self, pid):
        with open(f"{self.path}/cgroup.procs", "w") as f:
            f.write(str(pid))

    def kernel_bytes(self):
        if self.version == 1:
            return int(open(f"{self.path}/memory.kmem.usage_in_bytes").read())
        st = dict(line.split() for line in open(f"{self.path}/memory.stat"))
        kern = int(st.get("kernel", 0)) or sum(
            int(st.get(k, 0)) for k in ("slab", "kernel_stack", "pagetables", "percpu"))
        return kern + int(st.get("sock", 0))

    def remove(self):
        """rmdir, retried while its last tasks exit; left in the state file
        for bench/run's cleanup if it still fails."""
        for _ in range(50):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                err = e
                time.sleep(0.05)
        else:
            log(f"cgroup {self.path} not removed: {err}")
            return
        with contextlib.suppress(ValueError):
            STATE_EXTRA.remove(f"cgroup {self.path}")
        Proc.save_state()


# --------------------------------------------------------------------------
# proxies


class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(MODES[args.mode])
        if args.paths:
            self.cfg["paths"] = args.paths.split(",")
        if args.runs:
            self.cfg["runs"] = args.runs
        self.rng = random.Random()
        self.out = args.out
        self.tmp = os.path.join(self.out, "tmp")
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.cpu_proxy, self.cpu_load = cpus_available()
        self.tool = args.ppbtool
        self.bins = {"portproxy": args.portproxy, "docker-proxy": args.docker_proxy,
                     "haproxy": shutil.which("haproxy"), "socat": shutil.which("socat"),
                     "floor": args.ppbtool}
        self.raw = []  # (metric, kind, run, value, extra)
        self.notes = []
        self.na = {}  # (metric, kind) -> reason
        self.structural = set()
        self.kinds = [k for k in (args.kinds.split(",") if args.kinds else KINDS)]
        self.nsobj = None
        self.cg_base = Cgroup.probe()
        if self.cg_base[0] is None:
            self.note(f"kernel memory per connection: N/A ({self.cg_base[1]})")
        elif self.cg_base[1] == 1:
            self.note("kernel memory: cgroup v1 memory.kmem.usage_in_bytes (no cgroup v2 memory "
                      "controller here); socket buffer memory is not included")
        self.cpu_cg_base = Cgroup.probe_cpu()
        if self.cpu_cg_base[0] is None:
            self.note(f"proxy CPU read from /proc (no CPU cgroup: {self.cpu_cg_base[1]}); "
                      "socat's children only at clock-tick resolution")

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)
            log(f"note: {msg}")

    def record(self, m, kind, run, value, extra=""):
        self.raw.append((m, kind, run, value, extra))
        label, unit, _ = METRICS[m]
        v = "N/A" if value is None else f"{value:.4g}"
        log(f"  {m:22s} run {run} {kind:13s} {v} {unit} {extra}")

    def set_na(self, m, kind, why, structural=False):
        """structural: the metric does not apply to the kind; no table row."""
        self.na.setdefault((m, kind), why)
        if structural:
            self.structural.add((m, kind))

    def proxy_argv(self, kind, proto, lport, bip, bport):
        if kind in FD3_KINDS:
            return [self.bins[kind], "-proto", proto, "-host-ip", "127.0.0.1",
                    "-host-port", str(lport), "-container-ip", bip,
                    "-container-port", str(bport)]
        if kind == "haproxy":
            if proto != "tcp":
                return None
            cfg = os.path.join(self.tmp, f"haproxy-{lport}.cfg")
            with open(cfg, "w") as f:
                f.write(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen p{lport}
    bind 127.0.0.1:{lport}
    server b {bip}:{bport}
""")
            return [self.bins["haproxy"], "-f", cfg, "-db"]
        if kind == "floor":
            if proto != "tcp":
                return None
            return [self.tool, "relay", "127.0.0.1", str(lport), bip, str(bport)]
        if kind == "socat":
            if proto == "tcp":
                return [self.bins["socat"],
                        f"TCP4-LISTEN:{lport},bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay",
                        f"TCP4:{bip}:{bport},nodelay"]
            return [self.bins["socat"], f"UDP4-LISTEN:{lport},bind=127.0.0.1,fork,reuseaddr",
                    f"UDP4:{bip}:{bport}"]
        raise ValueError(kind)

    def start_proxy(self, kind, proto, bip, bport, cpus=None, cgroup=None, timeout=10.0):
        """Start one proxy; returns (Proc, port, None) or (None, None, reason)."""
        if not self.bins.get(kind) or not os.access(self.bins[kind], os.X_OK):
            return None, None, f"{kind} binary not found ({self.bins.get(kind)})"
        lport = free_port()
        argv = self.proxy_argv(kind, proto, lport, bip, bport)
        if argv is None:
            return None, None, f"{kind} has no {proto.upper()} mode"
        logp = os.path.join(self.logs, f"{kind}.log")
        cpucg = own = None
        if cgroup and cgroup.version == 2 and self.cpu_cg_base[1] == 2:
            cpucg = cgroup  # one v2 hierarchy: a process is in one cgroup of it
        elif self.cpu_cg_base[0]:
            cpucg = own = Cgroup.create(*self.cpu_cg_base, self.rng)
        p = Proc(argv, cpus=cpus, fd3=kind in FD3_KINDS, log_path=logp, cgroup=[cgroup, own])
        p.cpucg = cpucg
        if own:
            p.owned.append(own)
        if kind in FD3_KINDS:
            ok, msg, _ = p.read_fd3(timeout)
            p.close_fd3()
        else:
            ok = wait_listening(lport, proto, timeout=timeout, proc=p)
            msg = "" if ok else f"not listening after {timeout} s (exit {p.poll()}, see logs)"
        if not ok:
            p.stop()
            return None, None, f"{kind} -proto {proto} failed to start: {msg}"
        return p, lport, None

    # ---------------------------------------------------------------- paths

    def run_path(self, path):
        cfg = self.cfg
        ns = None
        if path == "netns":
            why = netns_blocker()
            if why:
                self.note(f"veth/netns path skipped: {why}")
                return
            self.nsobj = Netns(self.rng)
            ns = self.nsobj.name
            bip = NS_CONT_IP
        else:
            bip = "127.0.0.1"
        procs = self.path_procs = []
        try:
            serve = Proc([self.tool, "serve", bip, str(MSG)], cpus=self.cpu_load, ns=ns,
                         stdout_pipe=True, log_path=os.path.join(self.logs, "ppbtool-serve.log"))
            procs.append(serve)
            line = serve.readline(10)
            if not line:
                raise RuntimeError("echo backend did not start")
            bp = ports_line(line)
            self.iperf_port = free_port(ns=ns)
            self.iperf_argv = (["iperf3", "-s", "-p", str(self.iperf_port), "-B", bip], ns)
            self.iperf_srv = self.start_iperf_server()
            procs_ref = {"direct": {"iperf": (bip, self.iperf_port, None),
                                    "echo": (bip, bp["tcp"], None),
                                    "crr": (bip, bp["crr"], None), "udp": (bip, bp["udp"], None)}}
            for kind in self.kinds:
                if kind == "direct":
                    continue
                procs_ref[kind] = {}
                for svc, proto, bport in (("iperf", "tcp", self.iperf_port),
                                          ("echo", "tcp", bp["tcp"]), ("crr", "tcp", bp["crr"]),
                                          ("udp", "udp", bp["udp"])):
                    if kind == "floor" and svc not in ("iperf", "echo"):
                        continue  # not a proxy: only the byte-moving floor
                    p, lport, why = self.start_proxy(kind, proto, bip, bport, cpus=self.cpu_proxy)
                    if p:
                        procs.append(p)
                        procs_ref[kind][svc] = ("127.0.0.1", lport, p)
                    else:
                        procs_ref[kind][svc] = None
                        procs_ref[kind][svc + "_why"] = why
                        self.note(why)
            self.targets = procs_ref
            self.serve = serve
            pl = path
            for streams in (1, 4):
                self.rounds(lambda k, r: self.m_iperf(pl, k, r, streams),
                            [f"{pl}.tput{streams}", f"{pl}.cpugb{streams}"])
            self.rounds(lambda k, r: self.m_rr(pl, k, r), [f"{pl}.rr50", f"{pl}.rr99"],
                        setup=self.rr_setup, teardown=self.rr_teardown)
            self.rounds(lambda k, r: self.m_crr(pl, k, r, 1), [f"{pl}.crr1", f"{pl}.crrcpu1"],
                        setup=self.rr_setup, teardown=self.rr_teardown)
            self.rounds(lambda k, r: self.m_crr(pl, k, r, 16), [f"{pl}.crr16", f"{pl}.crrcpu16"])
            for flows in (1, 8):
                self.rounds(lambda k, r: self.m_udp(pl, k, r, flows),
                            [f"{pl}.udp{flows}", f"{pl}.udploss{flows}", f"{pl}.udpcpu{flows}"])
            self.rounds(lambda k, r: self.m_udp_open(pl, k, r),
                        [f"{pl}.olloss", f"{pl}.oldrop", f"{pl}.olbedrop", f"{pl}.olcpu"])
            if path == "loopback":
                # alone: with other instances of the same program running, their
                # shared text would move from Private to Shared
                for p in procs[1:]:
                    p.stop()
                self.rounds(lambda k, r: self.m_mem(k, r), MEM_METRICS, runs=cfg["mem_runs"])
        finally:
            for p in reversed(procs):
                p.stop()
            if getattr(self, "iperf_srv", None):
                self.iperf_srv.stop()
                self.iperf_srv = None
            if self.nsobj:
                self.nsobj.close()
                self.nsobj = None

    def rounds(self, fn, metrics, runs=None, kinds=None, setup=None, teardown=None):
        """Run fn(kind, run) for every kind, interleaved, runs times.  A failed
        run is logged and noted; a kind whose every run failed gets its metrics
        marked N/A with the last error, so its rows stay in the table."""
        runs = runs or self.cfg["runs"]
        kinds = [k for k in kinds or self.kinds if any(applies(m, k) for m in metrics)]
        failures = {}  # kind -> (count, last error)
        if setup:
            setup()
        try:
            for r in range(runs):
                order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
                for kind in order:
                    try:
                        fn(kind, r + 1)
                    except Interrupted:
                        raise
                    except Exception as e:
                        self.log_error(f"{kind} run {r + 1} of {', '.join(metrics)}", e)
                        self.note(f"{kind}: run {r + 1} of {metrics[0]} failed: {e}")
                        n, _ = failures.get(kind, (0, None))
                        failures[kind] = (n + 1, e)
        finally:
            if teardown:
                teardown()
        for kind, (n, e) in failures.items():
            if n == runs:
                for m in metrics:
                    self.set_na(m, kind, f"all {runs} runs failed: {e}")

    def log_error(self, what, exc):
        """Append the traceback of an unexpected failure to logs/errors.log."""
        log(f"error: {what}: {exc!r} (traceback in logs/errors.log)")
        with contextlib.suppress(OSError), \
                open(os.path.join(self.logs, "errors.log"), "a") as f:
            f.write(f"--- {time.monotonic() - T0:.1f}s {what}\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def fail_section(self, what, metrics, exc):
        """A whole section raised: log it and mark its metrics N/A for every
        kind that has no value yet (the run goes on with the next section)."""
        self.log_error(what, exc)
        self.note(f"{what} failed: {exc!r}; its missing rows are N/A")
        have = {(m, k) for m, k, _, v, _ in self.raw if v is not None}
        for m in metrics:
            for kind in self.kinds:
                if (m, kind) not in have and applies(m, kind):
                    self.set_na(m, kind, f"{what} failed: {exc}")

    def target(self, kind, svc, metrics):
        t = self.targets.get(kind, {}).get(svc)
        if t is None:
            why = self.targets.get(kind, {}).get(svc + "_why", "not run")
            for m in metrics:
                self.set_na(m, kind, why)
        return t

    def proxy_cpu(self, p, kind):
        if p is None:
            return 0.0
        if p.cpucg:
            return p.cpucg.cpu_seconds()
        # the floor relay's threads exit with their connection: only the
        # process's own utime+stime keeps their time, not per-thread schedstat
        return cpu_seconds(p.pid, tree=kind in ("socat", "floor"))

    def endpoints_cpu(self):
        """CPU of the echo backend plus every client this process has reaped."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cpu_seconds(self.serve.pid) + ru.ru_utime + ru.ru_stime

    # -------------------------------------------------------------- metrics

    def start_iperf_server(self):
        argv, ns = self.iperf_argv
        p = Proc(argv, cpus=self.cpu_load, ns=ns, log_path=os.path.join(self.logs, "iperf3-s.log"))
        pid_for_net = p.pid
        if not wait_listening(self.iperf_port, pid=pid_for_net, timeout=5, proc=p):
            p.stop()
            raise RuntimeError("iperf3 server did not start")
        return p

    def m_iperf(self, path, kind, run, streams):
        mt, mc = f"{path}.tput{streams}", f"{path}.cpugb{streams}"
        t = self.target(kind, "iperf", [mt, mc])
        if t is None:
            return
        ip, port, p = t
        secs = self.cfg["iperf_t"]
        argv = ["iperf3", "-c", ip, "-p", str(port), "-t", str(secs), "-P", str(streams), "-J",
                "--connect-timeout", "3000"]
        for attempt in (1, 2):
            c0 = self.proxy_cpu(p, kind)
            rc, out, err = run_tool(argv, cpus=self.cpu_load, timeout=secs + 20)
            c1 = self.proxy_cpu(p, kind)
            try:
                j = json.loads(out)
            except ValueError:
                j = {"error": (out + err).strip()[:200]}
            if rc == 0 and "error" not in j:
                break
            log(f"  iperf3 via {kind} failed ({j.get('error')}); restarting the server")
            self.iperf_srv.stop()
            self.iperf_srv = self.start_iperf_server()
        else:
            raise RuntimeError(f"iperf3 failed: {j.get('error')}")
        rx = j["end"]["sum_received"]
        gbps = rx["bytes"] * 8 / rx["seconds"] / 1e9
        self.record(mt, kind, run, gbps)
        if kind == "direct":
            self.set_na(mc, kind, "no proxy", True)
        else:
            self.record(mc, kind, run, (c1 - c0) / (rx["bytes"] / 1e9))

    def check_backend(self):
        """The echo backend must outlive every run; restart it (and say so) if not."""
        if self.serve.poll() is None:
            return
        self.note(f"echo backend exited (status {self.serve.rc}) before a memory run; "
                  "restarted it")
        self.serve.forget()
        self.serve = Proc([self.tool, "serve", "127.0.0.1", str(MSG)], cpus=self.cpu_load,
                          stdout_pipe=True,
                          log_path=os.path.join(self.logs, "ppbtool-serve.log"))
        self.path_procs.append(self.serve)
        line = self.serve.readline(10)
        if not line:
            raise RuntimeError("echo backend did not restart")
        bp = ports_line(line)
        self.targets["direct"]["echo"] = ("127.0.0.1", bp["tcp"], None)

    def rr_setup(self):
        # client, proxy and backend on one CPU: no cross-CPU wake-ups in the path
        for pid in proc_tree(self.serve.pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, self.cpu_proxy)

    def rr_teardown(self):
        for pid in proc_tree(self.serve.pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, self.cpu_load)

    def m_rr(self, path, kind, run):
        m50, m99 = f"{path}.rr50", f"{path}.rr99"
        t = self.target(kind, "echo", [m50, m99])
        if t is None:
            return
        ip, port, _ = t
        rc, out, err = run_tool([self.tool, "rr", ip, str(port), str(self.cfg["rr_n"]), str(MSG),
                                 "10"], cpus=self.cpu_proxy, timeout=30)
        if rc:
            raise RuntimeError(f"rr: {err.strip()}")
        r = kv(out)
        self.record(m50, kind, run, r["p50_us"], f"n={int(r['n'])}")
        self.record(m99, kind, run, r["p99_us"])

    def m_crr(self, path, kind, run, conc):
        mr, mc = f"{path}.crr{conc}", f"{path}.crrcpu{conc}"
        t = self.target(kind, "crr", [mr, mc])
        if t is None:
            return
        ip, port, p = t
        c0, e0 = self.proxy_cpu(p, kind), self.endpoints_cpu()
        rc, out, err = run_tool([self.tool, "crr", ip, str(port), str(conc), str(self.cfg["crr_s"]),
                                 str(MSG)], cpus=self.cpu_proxy if conc == 1 else self.cpu_load,
                                timeout=30)
        if kind == "socat" and not p.cpucg:
            time.sleep(0.1)  # let socat reap its children so their time is counted
        c1, e1 = self.proxy_cpu(p, kind), self.endpoints_cpu()
        if rc:
            raise RuntimeError(f"crr: {err.strip()}")
        r = kv(out)
        extra = f"errors={int(r['errors'])}" if r["errors"] else ""
        if r["errors"] > 0.01 * max(r["conns"], 1):
            self.note(f"{kind}: {path} crr {conc}: {int(r['errors'])} failed connections "
                      f"vs {int(r['conns'])} completed in run {run}")
        self.record(mr, kind, run, r["rate"], extra)
        if kind == "direct":
            self.set_na(mc, kind, "no proxy", True)
            # what one connection costs both ends (and the kernel under them): a
            # proxy is the server of one connection and the client of another
            if r["conns"]:
                self.record(f"{path}.crrend{conc}", kind, run, (e1 - e0) / r["conns"] * 1e6)
        elif r["conns"]:
            self.record(mc, kind, run, (c1 - c0) / r["conns"] * 1e6)

    def m_udp(self, path, kind, run, flows):
        mr, ml, mc = f"{path}.udp{flows}", f"{path}.udploss{flows}", f"{path}.udpcpu{flows}"
        if kind == "haproxy":
            for m in (mr, ml, mc):
                self.set_na(m, kind, "haproxy has no UDP mode", True)
            return
        t = self.target(kind, "udp", [mr, ml, mc])
        if t is None:
            return
        ip, port, p = t
        c0 = self.proxy_cpu(p, kind)
        rc, out, err = run_tool([self.tool, "udp", ip, str(port), str(flows),
                                 str(self.cfg["udp_s"]), str(MSG), "32"],
                                cpus=self.cpu_load, timeout=30)
        c1 = self.proxy_cpu(p, kind)
        if rc:
            raise RuntimeError(f"udp: {err.strip()}")
        r = kv(out)
        self.record(mr, kind, run, r["rate"], f"sent={int(r['sent'])} recv={int(r['recv'])}")
        self.record(ml, kind, run, r["loss_pct"])
        if kind == "direct":
            self.set_na(mc, kind, "no proxy", True)
        elif r["recv"]:
            self.record(mc, kind, run, (c1 - c0) / (2 * r["recv"]) * 1e6)

    def m_udp_open(self, path, kind, run):
        """Open loop: OPEN_RATE datagrams/s whatever comes back; the loss, and
        the part of it the kernel dropped at the proxy's own sockets (their
        receive buffers overflowed because the proxy did not read in time)."""
        ml, md, mc = f"{path}.olloss", f"{path}.oldrop", f"{path}.olcpu"
        mb = f"{path}.olbedrop"
        t = self.target(kind, "udp", [ml, md, mc, mb])
        if t is None:
            return
        ip, port, p = t
        d0, c0 = udp_drops(proxy_pids(p, kind)), self.proxy_cpu(p, kind)
        b0 = udp_drops([self.serve.pid])
        rc, out, err = run_tool([self.tool, "udp", ip, str(port), str(OPEN_FLOWS),
                                 str(self.cfg["udp_s"]), str(MSG), "32", str(OPEN_RATE)],
                                cpus=self.cpu_load, timeout=30)
        c1 = self.proxy_cpu(p, kind)
        d1, b1 = udp_drops(proxy_pids(p, kind)), udp_drops([self.serve.pid])
        if rc:
            raise RuntimeError(f"udp: {err.strip()}")
        r = kv(out)
        self.record(ml, kind, run, r["loss_pct"], f"sent={int(r['sent'])} recv={int(r['recv'])}")
        if r["sent"]:
            drops = sum(n - b0.get(i, 0) for i, n in b1.items())
            self.record(mb, kind, run, 100.0 * drops / r["sent"], f"drops={drops}")
        if kind != "direct" and r["sent"]:
            drops = sum(n - d0.get(i, 0) for i, n in d1.items())
            self.record(md, kind, run, 100.0 * drops / r["sent"], f"drops={drops}")
            if r["recv"]:
                self.record(mc, kind, run, (c1 - c0) / (2 * r["recv"]) * 1e6)

    def m_mem_direct(self, run):
        """Kernel memory of both ends of 1000 idle direct connections: a
        fresh echo backend and the holding client, in one memory cgroup.
        A proxy holds the same per connection (the server end of one, the
        client end of another), so this is its floor."""
        m = "mem.conn_kernel_ends"
        base, ver = self.cg_base
        if not base:
            self.set_na(m, "direct", ver)
            return
        cg = Cgroup.create(base, ver, self.rng)
        serve = holder = None
        try:
            serve = Proc([self.tool, "serve", "127.0.0.1", str(MSG)], cpus=self.cpu_load,
                         stdout_pipe=True, cgroup=cg)
            line = serve.readline(10)
            if not line:
                raise RuntimeError("echo backend did not start")
            port = str(ports_line(line)["tcp"])
            time.sleep(0.3)
            k0 = cg.kernel_bytes()
            n = self.cfg["hold"]
            holder = Proc([self.tool, "hold", "127.0.0.1", port, str(n), str(MSG)],
                          cpus=self.cpu_load, stdin_pipe=True, stdout_pipe=True, cgroup=cg)
            line = holder.readline(30)
            if not line or not line.startswith("ready"):
                raise RuntimeError("hold, direct: no ready line")
            ok = int(line.split()[1])
            time.sleep(0.5)
            if ok:
                self.record(m, "direct", run, (cg.kernel_bytes() - k0) / 1024 / ok, f"conns={ok}")
        finally:
            release_holder(holder)
            if serve:
                serve.stop()
            cg.remove()

    def m_mem(self, kind, run):
        if kind == "direct":
            return self.m_mem_direct(run)
        keys = [m for m in MEM_METRICS if applies(m, kind)]
        self.check_backend()
        echo = self.targets["direct"]["echo"]
        cg = None
        base, ver = self.cg_base
        if base:
            cg = Cgroup.create(base, ver, self.rng)
        else:
            self.set_na("mem.conn_kernel", kind, ver)
        p = holder = None
        try:
            p, lport, why = self.start_proxy(kind, "tcp", echo[0], echo[1], cpus=self.cpu_proxy,
                                             cgroup=cg)
            if not p:
                for m in keys:
                    self.set_na(m, kind, why)
                return
            time.sleep(0.3)
            idle = smaps(proxy_pids(p, kind))
            idle_pipes = count_pipes(proxy_pids(p, kind))
            k0 = cg.kernel_bytes() if cg else None
            n = self.cfg["hold"]
            holder = Proc([self.tool, "hold", "127.0.0.1", str(lport), str(n), str(MSG)],
                          cpus=self.cpu_load, stdin_pipe=True, stdout_pipe=True)
            line = holder.readline(30)
            if not line or not line.startswith("ready"):
                raise RuntimeError(f"hold via {kind}: no ready line")
            ok, errs = map(int, line.split()[1:3])
            if errs:
                self.note(f"{kind}: memory test: {errs} of {n} connections failed")
            time.sleep(0.5)
            held = smaps(proxy_pids(p, kind))
            held_pipes = count_pipes(proxy_pids(p, kind))
            k1 = cg.kernel_bytes() if cg else None
            # added over idle: fds inherited from whoever started the bench are not the proxy's
            self.record("mem.pipes", kind, run, held_pipes - idle_pipes,
                        f"held={held_pipes} idle={idle_pipes} conns={ok}")
            self.record("mem.idle_pss_anon", kind, run, idle["Pss_Anon"])
            self.record("mem.idle_private", kind, run, idle["Private"])
            self.record("mem.hold_pss_anon", kind, run, held["Pss_Anon"], f"conns={ok}")
            self.record("mem.hold_private", kind, run, held["Private"])
            if ok:
                self.record("mem.conn_pss_anon", kind, run,
                            (held["Pss_Anon"] - idle["Pss_Anon"]) / ok)
                self.record("mem.conn_private", kind, run, (held["Private"] - idle["Private"]) / ok)
                if cg:
                    self.record("mem.conn_kernel", kind, run, (k1 - k0) / 1024 / ok)
        finally:
            release_holder(holder)
            if p:
                p.stop()
            if cg:
                cg.remove()

    # ------------------------------------------------------------- start-up

    def m_startup(self):
        kinds = [k for k in self.kinds if k in FD3_KINDS]
        for k in self.kinds:
            if k not in FD3_KINDS:
                for m in ("start.p50", "start.p90", "start.stop50"):
                    self.set_na(m, k, "no fd 3 readiness protocol", True)
        times = {k: [] for k in kinds}
        stops = {k: [] for k in kinds}
        failed = {}
        for i in range(self.cfg["startup_n"]):
            for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
                if kind in failed:
                    continue
                lport = free_port()
                p = Proc(self.proxy_argv(kind, "tcp", lport, "127.0.0.1", 9), fd3=True,
                         log_path=os.path.join(self.logs, f"{kind}.log"))
                ok, msg, secs = p.read_fd3(10)
                p.close_fd3()
                if ok:
                    times[kind].append(secs * 1e3)
                    stops[kind].append(p.stop(sig=signal.SIGINT) * 1e3)
                else:
                    p.stop()
                    failed[kind] = msg
                    self.note(f"{kind}: start-up failed: {msg}")
        for kind in kinds:
            if times[kind]:
                ts = sorted(times[kind])
                self.record("start.p50", kind, 1, statistics.median(ts), f"n={len(ts)}")
                self.record("start.p90", kind, 1, ts[min(len(ts) - 1, int(len(ts) * 0.9))])
                self.record("start.stop50", kind, 1, statistics.median(stops[kind]))
            else:
                for m in ("start.p50", "start.p90", "start.stop50"):
                    self.set_na(m, kind, failed.get(kind, "failed"))

    # ---------------------------------------------------------------- range

    def spawn_batch_ready(self, argvs, batch=50, timeout=30):
        """Start processes in parallel batches; returns (procs, seconds, errors)."""
        procs, errors = [], []
        t0 = time.perf_counter()
        for i in range(0, len(argvs), batch):
            group = [Proc(a, fd3=True, log_path=os.path.join(self.logs, "range.log"))
                     for a in argvs[i:i + batch]]
            procs.extend(group)
            pending = {p.fd3: p for p in group}
            bufs = {p.fd3: b"" for p in group}
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                r, _, _ = select.select(list(pending), [], [], 0.5)
                for fd in r:
                    chunk = os.read(fd, 4096)
                    bufs[fd] += chunk
                    if bufs[fd].startswith(b"0\n") or not chunk or bufs[fd].startswith(b"1\n"):
                        p = pending.pop(fd)
                        if not bufs[fd].startswith(b"0\n"):
                            errors.append(bufs[fd].decode(errors="replace").strip()
                                          or f"exit {p.poll()}")
                        p.close_fd3()
            for p in pending.values():
                errors.append("timeout")
                p.close_fd3()
        return procs, time.perf_counter() - t0, errors

    def range_try_single(self, base, n):
        """portproxy range forms; returns (Proc, form) when one process serves all ports."""
        last, first = base + n - 1, base
        forms = []
        if os.environ.get("PORTPROXY_RANGE_ARGS"):
            forms.append(os.environ["PORTPROXY_RANGE_ARGS"].format(
                first=first, last=last).split())
        forms += [
            ["-container-ip", "127.0.0.2", "-p", f"127.0.0.1:{first}-{last}:{first}-{last}"],
            ["-proto", "tcp", "-host-ip", "127.0.0.1", "-container-ip", "127.0.0.2",
             "-p", f"{first}-{last}:{first}-{last}"],
            ["-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", f"{first}-{last}",
             "-container-ip", "127.0.0.2", "-container-port", f"{first}-{last}"],
        ]
        for form in forms:
            p = Proc([self.bins["portproxy"]] + form, fd3=True,
                     log_path=os.path.join(self.logs, "range.log"))
            ok, msg, secs = p.read_fd3(10)
            p.close_fd3()
            if not ok:
                self.note(f"portproxy range form `{' '.join(form)}` failed: {msg}")
            if ok:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    got = len(set(range(first, last + 1)) & listening_ports())
                    if got == n:
                        return p, " ".join(form), secs
                    time.sleep(0.01)
                self.note(f"portproxy range form '{' '.join(form)}' said ready but only "
                          f"{got} of {n} ports listen")
            p.stop()
        return None, None, None

    def m_range(self):
        n = RANGE_PORTS
        for k in self.kinds:
            if k not in FD3_KINDS:
                for m in ("range.procs", "range.ready", "range.pss", "range.private",
                          "range.cpu"):
                    self.set_na(m, k, "one process per port, like docker-proxy", True)
        kinds = [k for k in ("docker-proxy", "portproxy") if k in self.kinds]
        for kind in kinds:
            if not self.bins.get(kind) or not os.access(self.bins[kind], os.X_OK):
                for m in ("range.procs", "range.ready", "range.pss", "range.private", "range.cpu"):
                    self.set_na(m, kind, "binary not found")
                continue
            base = find_port_block(n, self.rng)
            if kind == "portproxy":
                t0 = time.perf_counter()
                p, form, _ = self.range_try_single(base, n)
                if p:
                    ready = time.perf_counter() - t0
                    time.sleep(0.3)
                    mem = smaps([p.pid])
                    cpu = cpu_seconds(p.pid)
                    p.stop(sig=signal.SIGINT)
                    self.note(f"portproxy served {n} ports from one process: {form}")
                    self.record("range.procs", kind, 1, 1)
                    self.record("range.ready", kind, 1, ready)
                    self.record("range.pss", kind, 1, mem["Pss"] / 1024)
                    self.record("range.private", kind, 1, mem["Private"] / 1024)
                    self.record("range.cpu", kind, 1, cpu)
                    continue
                self.note("portproxy: no port-range form accepted; ran one process per port "
                          "like docker-proxy")
            sample = min(self.cfg["range_n"], n)
            scale = n / sample
            if scale != 1:
                self.note(f"{kind}: 1000-port test started {sample} processes; totals are "
                          f"scaled x{scale:g}")
            argvs = [self.proxy_argv(kind, "tcp", port, "127.0.0.2", port)
                     for port in range(base, base + sample)]
            procs = []
            try:
                procs, secs, errors = self.spawn_batch_ready(argvs)
                if errors:
                    self.note(f"{kind}: 1000-port test: {len(errors)} of {sample} failed, e.g. "
                              f"{errors[0]}")
                time.sleep(0.5)
                live = [p.pid for p in procs if p.poll() is None]
                mem = smaps(live)
                cpu = sum(cpu_seconds(pid) for pid in live)
                listening = len(set(range(base, base + sample)) & listening_ports())
                self.record("range.procs", kind, 1, len(live) * scale,
                            f"listening={listening}/{sample}")
                self.record("range.ready", kind, 1, secs * scale)
                self.record("range.pss", kind, 1, mem["Pss"] / 1024 * scale)
                self.record("range.private", kind, 1, mem["Private"] / 1024 * scale)
                self.record("range.cpu", kind, 1, cpu * scale)
            finally:
                for p in procs:
                    p.signal_group(signal.SIGINT)
                deadline = time.monotonic() + 10
                for p in procs:
                    while p.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.005)
                    p.stop()

    # --------------------------------------------------------------- output

    def summarize(self):
        vals = {}
        for m, kind, run, v, _ in self.raw:
            if v is not None:
                vals.setdefault((m, kind), []).append(v)
        med = self.med = {key: statistics.median(v) for key, v in vals.items()}
        self.best = {key: (max if METRICS[key[0]][2] == "higher" else min)(v)
                     for key, v in vals.items()}
        rows = []
        for m, (label, unit, better) in METRICS.items():
            if not any((m, k) in med or (m, k) in self.na for k in self.kinds):
                continue
            for kind in self.kinds:
                v = med.get((m, kind))
                if v is None and ((m, kind) not in self.na or (m, kind) in self.structural):
                    continue
                runs = vals.get((m, kind), [])
                spread = (max(runs) - min(runs)) / abs(v) * 50 if v and len(runs) > 1 else None
                lo_hi = (min(runs), max(runs)) if len(runs) > 1 else None
                rows.append(dict(metric=m, label=label, unit=unit, better=better, kind=kind,
                                 value=v, runs=len(runs), spread=spread, lo_hi=lo_hi,
                                 vs_dp=ratio(v, med.get((m, "docker-proxy"))),
                                 vs_direct=ratio(v, med.get((m, "direct"))),
                                 why=self.na.get((m, kind), "")))
        return rows

    def write_outputs(self, rows, header):
        with open(os.path.join(self.out, "raw.tsv"), "w") as f:
            f.write("metric\tunit\tkind\trun\tvalue\textra\n")
            for m, kind, run, v, extra in self.raw:
                f.write(f"{m}\t{METRICS[m][1]}\t{kind}\t{run}\t"
                        f"{'' if v is None else repr(v)}\t{extra}\n")
        with open(os.path.join(self.out, "summary.tsv"), "w") as f:
            f.write("metric\tlabel\tunit\tbetter\tkind\tmedian\truns\tspread_pct\t"
                    "vs_docker_proxy\tvs_direct\tnote\n")
            for r in rows:
                f.write("\t".join(str("" if r[k] is None else r[k]) for k in (
                    "metric", "label", "unit", "better", "kind", "value", "runs", "spread",
                    "vs_dp", "vs_direct", "why")) + "\n")
        md = markdown(rows, header, self.notes) + targets_md(getattr(self, "med", {}),
                                                             getattr(self, "best", {}), self.na)
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(md)
        return md

    def chart(self, rows):
        if not shutil.which("gnuplot"):
            self.note("gnuplot not found: no chart")
            return
        med = {(r["metric"], r["kind"]): r["value"] for r in rows}
        panels = [
            ("TCP throughput (Gbit/s, higher is better)", "tput", ["tput1", "tput4"]),
            ("proxy CPU per GB (s, lower is better)", "cpugb", ["cpugb1", "cpugb4"]),
            ("64 B round trip, 1 CPU (µs, lower is better)", "rr", ["rr50", "rr99"]),
            ("connections/s (higher is better)", "crr", ["crr1", "crr16"]),
            ("UDP 64 B echoes/s (higher is better)", "udp", ["udp1", "udp8"]),
            ("memory per idle connection (KiB, lower is better)", "mem",
             ["mem.conn_pss_anon", "mem.conn_private", "mem.conn_kernel"]),
            ("start-up and stop (ms, lower is better)", "start",
             ["start.p50", "start.p90", "start.stop50"]),
            ("1000 ports: total memory (MiB, log scale, lower is better)", "range",
             ["range.pss", "range.private"]),
        ]
        short = {"tput1": "1 stream", "tput4": "4 streams", "cpugb1": "1 stream",
                 "cpugb4": "4 streams", "rr50": "p50", "rr99": "p99", "crr1": "1 loop",
                 "crr16": "16 loops", "udp1": "1 flow", "udp8": "8 flows",
                 "mem.conn_pss_anon": "Pss_Anon", "mem.conn_private": "Private",
                 "mem.conn_kernel": "kernel (cgroup)", "start.p50": "start p50",
                 "start.p90": "start p90", "start.stop50": "SIGINT to exit",
                 "range.pss": "Pss", "range.private": "Private"}
        script = ["set terminal pngcairo size 1600,1400 font ',9'",
                  f"set output '{os.path.join(self.out, 'chart.png')}'",
                  "set multiplot layout 4,2 title 'portproxy benchmark (medians)'",
                  "set style data histograms", "set termoption noenhanced", "set style histogram clustered gap 1",
                  "set style fill solid 0.8 border -1", "set boxwidth 0.9",
                  "set datafile missing '?'", "set key outside right top font ',8'",
                  "set grid ytics", "set yrange [0:*]", "set xtics font ',8'"]
        for title, name, keys in panels:
            lines = ["metric\t" + "\t".join(self.kinds)]
            have = set()
            for key in keys:
                ms = [key] if "." in key else [f"{p}.{key}" for p in ("loopback", "netns")]
                for m in ms:
                    vs = [med.get((m, k)) for k in self.kinds]
                    if all(v is None for v in vs):
                        continue
                    have.update(k for k, v in zip(self.kinds, vs) if v is not None)
                    path = m.split(".")[0]
                    lbl = (f"{PATH_LABEL[path]} " if path in PATH_LABEL else "") + short[key]
                    lines.append(f'"{lbl}"\t' + "\t".join(
                        "?" if v is None else f"{v:.6g}" for v in vs))
            dat = os.path.join(self.tmp, f"chart-{name}.dat")
            with open(dat, "w") as f:
                f.write("\n".join(lines) + "\n")
            script.append(f"set title '{title}'")
            if name == "range":
                script.append("set logscale y; set yrange [0.5:*]")
            if have:
                # one series per kind that has data, each kind in its own colour
                series = [f"'{dat}' using {i + 2}:xtic(1) title '{k}' lc rgb '{COLOURS[k]}'"
                          for i, k in enumerate(self.kinds) if k in have]
                script.append("plot " + ", ".join(series))
            else:
                script.append("unset logscale y; set yrange [0:*]")  # [0:1] below
                script.append("set label 1 'no data' at graph 0.5,0.5 center")
                script.append("plot [0:1][0:1] NaN notitle")
                script.append("unset label 1")
            if name == "range":
                script.append("unset logscale y; set yrange [0:*]")
        script.append("unset multiplot")
        gp = os.path.join(self.tmp, "chart.gp")
        with open(gp, "w") as f:
            f.write("\n".join(script) + "\n")
        r = subprocess.run(["gnuplot", gp], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        if r.returncode:
            self.note(f"gnuplot failed: {r.stderr.strip()[:300]}")


def applies(m, kind):
    """Whether metric m can have a value for kind at all."""
    name = m.split(".", 1)[1]
    if m.startswith(("start.", "range.")):
        return kind in FD3_KINDS
    if kind == "floor":
        return name.startswith(("tput", "cpugb", "rr"))
    if name.startswith(("crrend", "conn_kernel_ends")):
        return kind == "direct"
    if kind == "direct" and (m.startswith("mem.") or "cpu" in name or name == "oldrop"):
        return False
    return not (kind == "haproxy" and name.startswith(("udp", "ol")))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v):
    if v is None:
        return "N/A"
    a = abs(v)
    if float(v).is_integer() and a < 1e6:
        return f"{int(v):,}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1 or a == 0:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.2g}×" if abs(r) < 0.1 else f"{r:.2f}×"


def sig3(v):
    """3 significant digits (0.2045 -> 0.205, 12.34 -> 12.3, 1234 -> 1,234)."""
    if v is None:
        return "N/A"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:#.3g}".rstrip(".") if v else "0"


# Targets of issue 6: (name, metric suffix, goal kind, bound, higher is better).
#   "ratio": portproxy / docker-proxy; "added": (pp - direct) / (dp - direct);
#   "loss": portproxy's loss against docker-proxy's (met if not higher);
#   "value": portproxy's own value.
TARGETS = [
    ("bulk 1 stream: throughput", "tput1", "ratio", 1.25, True),
    ("bulk 1 stream: CPU per GB", "cpugb1", "ratio", 0.5, False),
    ("RR pinned: added latency over direct, p50", "rr50", "added", 0.5, False),
    ("RR pinned: p99", "rr99", "ratio", 0.5, False),
    ("connections/s, 16 loops", "crr16", "ratio", 2, True),
    ("CPU per connection, 16 loops", "crrcpu16", "ratio", 0.4, False),
    ("UDP 64 B echoes/s, 1 flow", "udp1", "ratio", 3, True),
    ("UDP loss, 1 flow (portproxy vs docker-proxy)", "udploss1", "loss", 0, False),
    ("UDP 64 B echoes/s, 8 flows", "udp8", "ratio", 3, True),
    ("UDP loss, 8 flows (portproxy vs docker-proxy)", "udploss8", "loss", 0, False),
    (f"UDP loss, open loop {OPEN_RATE // 1000}k/s (portproxy vs docker-proxy)", "olloss", "loss",
     0, False),
    ("idle Pss_Anon", "mem.idle_pss_anon", "ratio", 0.2, False),
    ("Pss_Anon per idle connection", "mem.conn_pss_anon", "ratio", 0.25, False),
    ("kernel memory per idle connection", "mem.conn_kernel", "ratio", 0.25, False),
    # no pipe per idle connection; a small shared splice pool (a few fds) is allowed
    ("pipe fds added by 1000 idle connections", "mem.pipes", "value", 10, False),
    ("start-up, median", "start.p50", "ratio", 0.5, False),
    ("1000 ports: processes", "range.procs", "value", 1, False),
    ("1000 ports: total Pss", "range.pss", "ratio", 0.01, False),
]


# What a lower-is-better target is held against to call it out of reach: a
# reference that does only the work no userland proxy can skip.  By default
# the `floor` kind (a minimal blocking-splice relay: what moving the bytes
# costs by itself); for CPU and kernel memory per connection, both ends of a
# direct connection (a proxy is the server of one connection and the client
# of another, and on loopback pays the receive work of what it sends).  These
# are references measured with the same noise, not proofs: portproxy may
# come out a little below one.  A target is called out of reach only when
# the goal is below even the reference's best run.
FLOOR_OF = {"crrcpu1": ("crrend1", "direct", "both ends of a direct connection"),
            "crrcpu16": ("crrend16", "direct", "both ends of a direct connection"),
            "mem.conn_kernel": ("mem.conn_kernel_ends", "direct",
                                "both ends of a direct connection")}


def floor_of(best, path, key):
    """(best run of the reference, its words) for target metric key."""
    fk, fkind, words = FLOOR_OF.get(key, (key, "floor", "the minimal relay"))
    return best.get((fk if path is None else f"{path}.{fk}", fkind)), words


def targets_md(med, best, na):
    """The "Targets" section: each target of issue 6 from the medians.  A
    goal beyond what a direct connection does (↑), or below what even the
    best run of the reference does (↓, FLOOR_OF), is marked out of reach,
    with the reference's figure."""
    out = ["", "## Targets (issue 6, from the medians above)", "",
           "| target | path | figure | goal | result |", "|---|---|---:|---:|---|"]
    for name, key, how, bound, higher in TARGETS:
        paths = [None] if "." in key else ["loopback", "netns"]
        for path in paths:
            m = key if path is None else f"{path}.{key}"
            pp, dp, d = (med.get((m, k)) for k in ("portproxy", "docker-proxy", "direct"))
            where = PATH_LABEL[path] if path else "—"
            why = na.get((m, "portproxy")) or na.get((m, "docker-proxy")) or ""
            if pp is None and dp is None and not why:
                continue  # not run (path or section not selected)
            goal = f"{'≥' if higher else '≤'} {bound:g}"
            reach = ""
            fig = None
            fl, fl_words = floor_of(best, path, key)
            if how == "ratio":
                fig = ratio(pp, dp)
                goal += "×"
                if fig is not None and d is not None and dp is not None and (
                        bound * dp > d if higher else bound * dp < d):
                    reach = " (above direct: out of reach)"
                elif fig is not None and fl is not None and dp and not higher and \
                        bound * dp < fl:
                    reach = f" (out of reach: {fl_words} at best {sig3(fl / dp)}×)"
            elif how == "added":
                if None not in (pp, dp, d):
                    if dp - d > 0:
                        fig = (pp - d) / (dp - d)
                        if fl is not None and (fl - d) / (dp - d) > bound:
                            reach = (f" (out of reach: {fl_words} adds at best "
                                     f"{sig3((fl - d) / (dp - d))}× docker-proxy's)")
                    else:
                        why = "docker-proxy adds no latency over direct"
                else:
                    why = why or "direct not measured"
            elif how == "loss":
                if pp is not None and dp is not None:
                    fig = pp - dp
            elif how == "value":
                fig = pp
            if fig is None:
                figure, result = "N/A", f"not measured{': ' + why if why else ''}"
            else:
                met = fig >= bound if higher else fig <= bound
                figure = sig3(fig) + ("×" if how == "ratio" else "")
                if how == "loss":
                    figure = f"{sig3(pp)}% vs {sig3(dp)}%"
                    goal = "≤ docker-proxy's"
                elif how == "value" and float(fig).is_integer():
                    figure = str(int(fig))
                result = "met" if met else "**not met**" + reach
            out.append(f"| {name} | {where} | {figure} | {goal} | {result} |")
    return "\n".join(out) + "\n"


def markdown(rows, header, notes):
    out = [header, "",
           "| metric | kind | value | vs docker-proxy | vs direct | runs (spread) |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metric"]
        path = m.split(".")[0]
        where = f"[{PATH_LABEL[path]}] " if path in PATH_LABEL else ""
        arrow = {"higher": "↑", "lower": "↓"}[r["better"]]
        unit = f" ({r['unit']})" if r["unit"] else ""
        value = fmt(r["value"]) if r["value"] is not None else f"N/A: {r['why']}"
        spread = "" if r["spread"] is None else f" (±{r['spread']:.0f}%)"
        if r["unit"] == "%" and r["lo_hi"] and r["lo_hi"][1] > 0:
            spread = f" ({fmt(r['lo_hi'][0])}–{fmt(r['lo_hi'][1])})"  # loss: absolute range
        runs = f"{r['runs']}{spread}" if r["runs"] else ""
        out.append(f"| {where}{r['label']}{unit} {arrow} | {r['kind']} | {value} | "
                   f"{fmt_ratio(r['vs_dp'])} | {fmt_ratio(r['vs_direct'])} | {runs} |")
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def machine_header(args, started, elapsed):
    model = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) // 1024} MiB"

    def version(cmd):
        with contextlib.suppress(Exception):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=5)
            return r.stdout.strip().splitlines()[0]
        return "?"
    dpv = "?"
    with contextlib.suppress(Exception):
        dpv = sh("dpkg-query", "-W", "-f", "${Version}", "docker.io", check=False) or "?"
    ppv = "absent"
    if os.access(args.portproxy, os.X_OK):
        import hashlib
        with open(args.portproxy, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        built = datetime.datetime.fromtimestamp(os.stat(args.portproxy).st_mtime).astimezone()
        ppv = (f"{version([args.portproxy, '-version'])}, sha256 {digest}, built "
               f"{built.strftime('%Y-%m-%d %H:%M %Z')}")
    return "\n".join([
        "# portproxy benchmark results", "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} (took {elapsed:.0f} s)",
        f"- machine: {os.cpu_count()} CPUs ({model}), {mem} RAM, kernel {os.uname().release}; "
        f"1-min load average {LOAD['start']} at start, {LOAD.get('net', '?')} after the "
        "network tests (other work on the machine inflates the noise)",
        *([f"- **{load_warning()}**"] if load_warning() else []),
        f"- command: `bench/run {' '.join(sys.argv[1:])}` (mode {args.mode})",
        f"- portproxy: {args.portproxy_orig} ({ppv}); docker-proxy: {args.docker_proxy} "
        f"(docker.io {dpv}); {version(['haproxy', '-v'])}; "
        f"socat {socat_version()}; "
        f"{version(['iperf3', '--version'])}",
        "- pinning: proxy on CPU 0, clients/backends on CPU 1 (round trip: all on CPU 0); "
        "value = median over runs, kinds interleaved round-robin; "
        "spread = half the min-max range relative to the median",
    ])


def loadavg():
    with contextlib.suppress(OSError):
        return open("/proc/loadavg").read().split()[0]
    return "?"


LOAD = {"start": loadavg()}


def socat_version():
    with contextlib.suppress(Exception):
        out = subprocess.run(["socat", "-V"], stdout=subprocess.PIPE, text=True).stdout
        m = re.search(r"socat version (\S+)", out)
        return m.group(1) if m else "?"
    return "?"


def subset_of(allowed):
    """argparse type: a comma-separated, non-empty subset of allowed (kept as text)."""
    def check(text):
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{','.join(bad) or 'nothing'} not in {','.join(allowed)}")
        return ",".join(items)
    return check


def load_warning():
    with contextlib.suppress(ValueError):
        if float(LOAD["start"]) > 0.5:
            return (f"WARNING: 1-minute load average {LOAD['start']} > 0.5 at start: "
                    "other work on the machine makes these figures noisy")
    return None


def main():
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick")
    g.add_argument("--full", dest="mode", action="store_const", const="full")
    ap.set_defaults(mode="quick")
    ap.add_argument("--out", help="results folder (default bench/results/<timestamp>)")
    ap.add_argument("--portproxy", default=os.environ.get(
        "PORTPROXY", os.path.normpath(os.path.join(HERE, "..", "build", "portproxy"))))
    ap.add_argument("--docker-proxy", default=os.environ.get(
        "DOCKER_PROXY", shutil.which("docker-proxy") or "/usr/sbin/docker-proxy"))
    ap.add_argument("--ppbtool", default=os.environ.get(
        "PPBTOOL", os.path.join(HERE, ".build", "ppbtool")))
    ap.add_argument("--kinds", type=subset_of(KINDS),
                    help="comma-separated subset of " + ",".join(KINDS))
    ap.add_argument("--paths", type=subset_of(["loopback", "netns"]),
                    help="comma-separated: loopback,netns")
    ap.add_argument("--runs", type=int, help="override runs per metric")
    ap.add_argument("--only", type=subset_of(["net", "startup", "range"]),
                    help="comma-separated subset of: net,startup,range")
    args = ap.parse_args()
    started = datetime.datetime.now().astimezone()
    if not args.out:
        args.out = os.path.join(HERE, "results", started.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(args.out, exist_ok=True)
    Proc.state_file = os.environ.get("PPB_STATE")

    def on_term(sig, frame):
        raise Interrupted(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
    signal.signal(signal.SIGHUP, on_term)

    b = Bench(args)
    args.portproxy_orig = args.portproxy
    if not os.access(args.portproxy, os.X_OK):
        b.note(f"portproxy binary {args.portproxy} not found: its rows are N/A")
    else:
        # a private copy: a rebuild during the run must not mix two binaries
        snap = os.path.join(b.tmp, "portproxy")
        shutil.copy2(args.portproxy, snap)
        args.portproxy = b.bins["portproxy"] = snap
    only = set(args.only.split(",")) if args.only else {"net", "startup", "range"}
    if load_warning():
        log(load_warning())
    # (section name, what it runs, its metrics): a section that raises is
    # logged, its missing metrics become N/A, and the next one runs.
    sections = []
    if "net" in only:
        for path in b.cfg["paths"]:
            ms = [m for m in METRICS if m.startswith(path + ".")]
            ms += MEM_METRICS if path == "loopback" else []
            sections.append((f"path {path}", lambda p=path: b.run_path(p), ms))
    sections.append(("load", lambda: LOAD.__setitem__("net", loadavg()), []))
    if "startup" in only:
        sections.append(("start-up", b.m_startup, [m for m in METRICS if m.startswith("start.")]))
    if "range" in only:
        sections.append(("1000-port range", b.m_range,
                         [m for m in METRICS if m.startswith("range.")]))
    t0 = time.monotonic()
    status = 0
    try:
        for name, fn, ms in sections:
            log(f"== {name}")
            try:
                fn()
            except Interrupted:
                raise
            except Exception as e:
                b.fail_section(name, ms, e)
                status = 1
            finally:
                for p in list(Proc.live.values()):
                    p.stop(timeout=1)
    except (KeyboardInterrupt, Interrupted) as e:
        b.note(f"interrupted ({e or 'Ctrl-C'}): partial results")
        status = 130
    finally:
        for p in list(Proc.live.values()):
            p.stop(timeout=1)
        if b.nsobj:
            b.nsobj.close()
        elapsed = time.monotonic() - t0
        rows = b.summarize()
        header = machine_header(args, started, elapsed)
        try:
            b.chart(rows)
        except Exception as e:
            b.log_error("chart", e)
            b.note(f"chart failed: {e!r}")
        md = b.write_outputs(rows, header)
        if not os.environ.get("PPB_KEEP_TMP"):
            shutil.rmtree(b.tmp, ignore_errors=True)
        print(md)
        log(f"results in {args.out} ({elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
