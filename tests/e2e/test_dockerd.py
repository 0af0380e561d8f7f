#!/usr/bin/env python3
"""Real dockerd end to end: portproxy as dockerd's --userland-proxy-path.

Starts containerd and dockerd (Debian's docker.io, dockerd 20.10) by hand inside a private
network + mount namespace made with `unshare --net --mount --propagation private`, once with
--iptables=false and once with --iptables=true (iptables then runs inside that namespace only),
builds a tiny image with `docker import` (static busybox + a static echo server built from
tests/tools/ppecho.c), and checks every publish form of `docker run` end to end.

What is checked, in each mode:
  * publish forms, TCP and UDP: -p H:C, -p 127.0.0.1:H:C, -p [::1]:H:C, -p 127.0.0.1::C,
    -p [::1]::C, -p C, -p C1-C2, -p H1-H2:C (one host port out of a range), -p H1-H2:C1-C2,
    and -P with the image's EXPOSE (docker import --change) and --expose; `docker port` says
    what was asked for, and there is exactly one portproxy per binding: a child of our
    dockerd, running our binary, with exactly dockerd's argv.
  * traffic, byte-exact with half-closes (TCP) and through connected sockets (UDP): the host
    reaching published ports on 127.0.0.1 / 127.0.0.2 / ::1 (only a proxy can serve these),
    the host reaching the bridge address (the proxy with --iptables=false, kernel DNAT with
    --iptables=true: checked both ways), and hairpin (a container reaching its own published
    port through the gateway, IPv4 and IPv6). "Through portproxy" means the proxy process
    for that mapping holds both the accepted socket and the one connected to the container
    (looked up by exact 4-tuple with sock_diag) and the container sees the gateway as peer.
  * bind conflicts (0.0.0.0, [::], 127.0.0.1, UDP): docker run fails promptly naming the
    address and "address already in use", no proxy is left behind, and the same container
    starts once the port is free.
  * docker stop / start / restart / rm -f: proxies exit (stop within 5 s), ports are released,
    new proxies serve after start and restart.
  * SIGKILL of dockerd: every proxy exits promptly with status 0 (parent-death SIGTERM), the
    ports are released, and a new dockerd restarts a --restart=always container with new
    proxies that serve.

Isolation (nothing of the host is changed):
  * network: a fresh netns; this test process joins it (setns) so every socket it opens lives
    there too. The docker bridge uses 198.51.100.0/24 and 2001:db8:1::/64 (documentation
    ranges). Traffic goes only to 127.0.0.1, ::1 and addresses inside that namespace.
  * mounts: a private mount namespace with its own tmpfs on /run (dockerd's exec-root,
    containerd's state, runc's state, shim sockets), a tmpfs for dockerd's data-root and
    containerd's root, a sysfs of the new netns, and modprobe masked by /bin/true (dockerd
    would otherwise load modules such as br_netfilter into the host kernel). /etc/docker is
    only read (--config-file and --deprecated-key-path point into the temp dir).
  * cgroups: containers go under a cgroup parent named after this process, removed at the end.
  * cleanup is by PID: dockerd, containerd, the namespace holder, and every process found in
    our mount/net namespace or our cgroup parent get killed and reaped, even on failure.
  * one thing does reach out: /dev is the host's, so where /dev/log exists the proxies' start
    lines (portproxy logs to syslog when its stderr is /dev/null) land in the host's log.

Skipped (exit 77, CTest "Not Run") when it cannot run: not root, a missing tool (dockerd,
containerd, runc, docker CLI, unshare, nsenter, ip, static busybox, a C compiler that can link
statically), or dockerd not answering within DOCKERD_START_TIMEOUT (its log tail is printed).
The --iptables=true mode alone is skipped when iptables does not work in a namespace.
UDP checks are skipped (with a message) when `portproxy -proto udp` does not start.

Environment: PORTPROXY (binary under test, required), PORTPROXY_TOOLS (optional; a static
ppecho there is used as is, otherwise it is built with `cc -static`), PORTPROXY_DOCKERD /
PORTPROXY_DOCKER / PORTPROXY_BUSYBOX (override the binaries), PORTPROXY_E2E_REQUIRE_DOCKERD=1
(CI: a dockerd that cannot start or run containers fails instead of skipping),
PORTPROXY_E2E_NO_IPV6=1 (dockerd without --ipv6), PORTPROXY_E2E_KEEP=1 (keep the temp dir with the
dockerd and containerd logs), PORTPROXY_E2E_VERBOSE=1 (log every docker command).
"""

import atexit
import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

SKIP_EXIT = 77
HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS_SRC = os.path.normpath(os.path.join(HERE, "..", "tools"))
PORTPROXY = os.environ.get("PORTPROXY", "")
TOOLS = os.environ.get("PORTPROXY_TOOLS", "")

DOCKERD_START_TIMEOUT = 30.0
IMAGE = "ppe2e:1"
BRIDGE_V4_CIDR = "198.51.100.1/24"
GATEWAY_V4 = "198.51.100.1"
FIXED_CIDR_V6 = "2001:db8:1::/64"
GATEWAY_V6 = "2001:db8:1::1"
VERBOSE = os.environ.get("PORTPROXY_E2E_VERBOSE", "") not in ("", "0")


def log(msg):
    print("# " + msg, file=sys.stderr, flush=True)


def skip_file(reason):
    print("SKIP: " + reason, file=sys.stderr, flush=True)
    sys.exit(SKIP_EXIT)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --- namespaces, prctl ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def setns(fd, nstype):
    if _libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns: " + os.strerror(e))


def _pdeathsig_kill():
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def ns_inode(pid, kind):
    try:
        return os.stat("/proc/%d/ns/%s" % (pid, kind)).st_ino
    except OSError:
        return None


# --- /proc helpers -------------------------------------------------------------------------------

def all_pids():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            out.append(int(name))
    return out


def proc_stat(pid):
    """(state, ppid) or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def proc_exe(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None


def gone_or_zombie(pid):
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        pass
    return inodes


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_diag_seq = [0]


def _diag_addr(fam, ip):
    if fam == socket.AF_INET:
        return socket.inet_pton(socket.AF_INET, ip) + bytes(12)
    return socket.inet_pton(socket.AF_INET6, ip)


def sock_inode(proto, local, remote):
    """Inode of the socket (in this process's netns) whose local and remote (ip, port) are
    exactly these, or None: one sock_diag exact lookup (/proc/net/tcp would walk the whole
    established hash table, ~0.1 s per read on a big machine)."""
    fam = family_of(local[0])
    if family_of(remote[0]) != fam:
        return None
    ipproto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP

    def sockid(src, dst):
        return struct.pack("!HH", src[1], dst[1]) + _diag_addr(fam, src[0]) + \
            _diag_addr(fam, dst[0]) + struct.pack("=III", 0, INET_DIAG_NOCOOKIE,
                                                  INET_DIAG_NOCOOKIE)

    # The request names the socket from its own side for TCP, but from the packet's side
    # for UDP (udp_diag: "src and dst are swapped for historical reasons"); the answer always
    # describes the socket from its own side.
    want = sockid(local, remote)
    req = struct.pack("=BBBxI", fam, ipproto, 0, 0xFFFFFFFF) + \
        (want if proto == "tcp" else sockid(remote, local))
    _diag_seq[0] += 1
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                      _diag_seq[0], 0) + req
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(5)
        nl.sendto(msg, (0, 0))
        data = nl.recv(65536)
    _len, typ = struct.unpack_from("=IH", data, 0)
    if typ == NLMSG_ERROR or typ != SOCK_DIAG_BY_FAMILY:
        return None
    # nlmsghdr (16) + inet_diag_msg: family, state, timer, retrans, sockid (48), expires,
    # rqueue, wqueue, uid, inode. The kernel's lookup falls back to a listening / unconnected
    # socket on the local address: only an exact 4-tuple counts.
    if data[16 + 4:16 + 4 + 36] != want[:36]:
        return None
    return struct.unpack_from("=I", data, 16 + 4 + 48 + 16)[0]


def bound_ports(proto):
    """Local ports of every listening TCP socket / every UDP socket in this netns (a
    sock_diag dump: listening TCP sockets only, so the established hash is not walked)."""
    ports = set()
    ipproto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
    states = (1 << 10) if proto == "tcp" else 0xFFFFFFFF  # TCP_LISTEN; any UDP socket
    for fam in (socket.AF_INET, socket.AF_INET6):
        req = struct.pack("=BBBxI", fam, ipproto, 0, states) + bytes(48)
        _diag_seq[0] += 1
        msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, _diag_seq[0], 0) + req
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(5)
            nl.sendto(msg, (0, 0))
            done = False
            for _ in range(100000):
                data = nl.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    mlen, typ = struct.unpack_from("=IH", data, off)
                    if typ in (NLMSG_DONE, NLMSG_ERROR):
                        done = True
                        break
                    if typ == SOCK_DIAG_BY_FAMILY:
                        ports.add(struct.unpack_from("!H", data, off + 16 + 4)[0])
                    off += (mlen + 3) & ~3
                if done:
                    break
    return ports


def port_released(port, proto):
    """No socket listens on (TCP) or is bound to (UDP) this port in our netns any more.
    (Binding a test socket is no proof either way: a TIME_WAIT left by some connection that
    got the same number as its ephemeral source port makes a wildcard bind fail.)"""
    return port not in bound_ports(proto)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# --- tools ---------------------------------------------------------------------------------------

def find_tool(name, candidates=(), env=None):
    if env and os.environ.get(env):
        p = os.environ[env]
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def is_static_elf(path):
    """True for an ELF executable without a PT_INTERP program header."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
                return False
            e_phoff, = struct.unpack_from("<Q", hdr, 32)
            e_phentsize, e_phnum = struct.unpack_from("<HH", hdr, 54)
            f.seek(e_phoff)
            ph = f.read(e_phentsize * e_phnum)
    except OSError:
        return False
    for i in range(e_phnum):
        p_type, = struct.unpack_from("<I", ph, i * e_phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def run(cmd, timeout=60, check=False, env=None, input=None):
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL if input is None else None,
                              input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=check, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("command timed out after %ss: %s" % (timeout, " ".join(cmd))) from e


def file_tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return "\n".join(data.splitlines()[-lines:])


# --- the environment: namespace holder, containerd, dockerd --------------------------------------

HOLDER_SCRIPT = r'''
set -eu
T="$1"
# private /run: exec-root, containerd state and shim sockets, runc state, xtables lock
mount -n -t tmpfs -o mode=0755,size=256m ppe2e-run /run
# data-root (docker), root (containerd)
mount -n -t tmpfs -o mode=0700,size=1g ppe2e-data "$T/ns"
# a sysfs that shows this netns, with the cgroup hierarchies moved on top of it
mkdir "$T/ns/cg"
mount -n --rbind /sys/fs/cgroup "$T/ns/cg"
mount -n -t sysfs ppe2e-sys /sys
mount -n --move "$T/ns/cg" /sys/fs/cgroup
# no kernel modules loaded on dockerd's behalf (br_netfilter, overlay, ...)
for m in /sbin/modprobe /usr/sbin/modprobe /bin/modprobe /usr/bin/modprobe; do
    if [ -e "$m" ] && ! [ -L "$m" ]; then mount -n --bind /bin/true "$m"; fi
done
# dockerd raises these global kernel limits when they are low: give it private copies
for k in root_maxkeys root_maxbytes; do
    f=/proc/sys/kernel/keys/$k
    if [ -f "$f" ]; then cat "$f" > "$T/$k"; mount -n --bind "$T/$k" "$f" || true; fi
done
ip link set lo up
echo ready
exec sleep 100000
'''


class EnvError(Exception):
    pass


_live_envs = []


class DockerEnv:
    """containerd + dockerd in a private net+mount namespace. Use start() / stop()."""

    def __init__(self, mode, iptables, ipv6, portproxy, ppecho, busybox):
        self.mode = mode
        self.iptables = iptables
        self.ipv6 = ipv6
        self.portproxy = portproxy
        self.portproxy_real = os.path.realpath(portproxy)
        self.ppecho = ppecho
        self.busybox = busybox
        self.tmp = tempfile.mkdtemp(prefix="ppdk-%s-" % mode)
        self.cgroup_parent = "ppe2e-%d-%s" % (os.getpid(), mode)
        self.holder = None
        self.containerd = None
        self.dockerd = None
        self.dockerd_starts = 0
        self.orig_netns_fd = None
        self.netns_ino = None
        self.mntns_ino = None
        self.sock = os.path.join(self.tmp, "docker.sock")
        self.cli_env = dict(os.environ)
        self.cli_env.update({"DOCKER_HOST": "unix://" + self.sock,
                             "DOCKER_CONFIG": os.path.join(self.tmp, "cli"),
                             "DOCKER_CLI_EXPERIMENTAL": "enabled"})
        self.cli_env.pop("DOCKER_CONTEXT", None)
        self.cli_env.pop("DOCKER_TLS_VERIFY", None)
        self.docker_bin = find_tool("docker", ["/usr/bin/docker"], "PORTPROXY_DOCKER")
        self.dockerd_bin = find_tool("dockerd", ["/usr/sbin/dockerd", "/usr/bin/dockerd"],
                                     "PORTPROXY_DOCKERD")
        self.containerd_bin = find_tool("containerd", ["/usr/bin/containerd"])
        self.containerd_log = os.path.join(self.tmp, "containerd.log")
        self.dockerd_log = os.path.join(self.tmp, "dockerd.log")
        self.image_ready = False

    # -- lifecycle --
    def start(self):
        _live_envs.append(self)
        os.mkdir(os.path.join(self.tmp, "ns"))
        os.mkdir(os.path.join(self.tmp, "cli"))
        self._start_holder()
        self._enter_netns()
        if self.iptables:
            self._probe_iptables()
        self._start_containerd()
        self.start_dockerd()

    def _start_holder(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--",
             "/bin/sh", "-c", HOLDER_SCRIPT, "holder", self.tmp],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_pdeathsig_kill, close_fds=True)
        r, _, _ = select.select([self.holder.stdout], [], [], 10)
        line = self.holder.stdout.readline() if r else b""
        if line.strip() != b"ready":
            err = b""
            if self.holder.poll() is not None:
                err = self.holder.stderr.read()
            raise EnvError("namespace setup failed (unshare --net --mount): %s"
                           % err.decode("utf-8", "replace").strip()[-2000:])
        self.netns_ino = ns_inode(self.holder.pid, "net")
        self.mntns_ino = ns_inode(self.holder.pid, "mnt")
        if self.netns_ino == ns_inode(os.getpid(), "net") or \
                self.mntns_ino == ns_inode(os.getpid(), "mnt"):
            raise EnvError("unshare did not create new namespaces")

    def _enter_netns(self):
        self.orig_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open("/proc/%d/ns/net" % self.holder.pid, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        if ns_inode(os.getpid(), "net") != self.netns_ino:
            raise EnvError("setns into the test namespace did not take effect")

    def _leave_netns(self):
        if self.orig_netns_fd is not None:
            try:
                setns(self.orig_netns_fd, CLONE_NEWNET)
            finally:
                os.close(self.orig_netns_fd)
                self.orig_netns_fd = None

    def nsenter(self, cmd):
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"] + cmd

    def ns_run(self, cmd, timeout=30):
        return run(self.nsenter(cmd), timeout=timeout)

    def _probe_iptables(self):
        ipt = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
        if not ipt:
            raise unittest.SkipTest("--iptables=true mode: no iptables binary")
        for cmd in (["iptables", "-t", "nat", "-N", "PPE2E_PROBE"],
                    ["iptables", "-t", "nat", "-X", "PPE2E_PROBE"],
                    ["iptables", "-t", "filter", "-S"]):
            r = self.ns_run(cmd)
            if r.returncode != 0:
                raise unittest.SkipTest("--iptables=true mode: `%s` fails in a network "
                                        "namespace: %s" % (" ".join(cmd),
                                                           r.stderr.decode().strip()))
        r = self.ns_run(["ip6tables", "-t", "nat", "-S"])
        self.ip6tables = r.returncode == 0 and self.ipv6

    def _start_containerd(self):
        cfg = os.path.join(self.tmp, "containerd.toml")
        with open(cfg, "w") as f:
            f.write('version = 2\n'
                    'root = "%s"\n'
                    'state = "/run/containerd"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    '[grpc]\n  address = "/run/containerd/containerd.sock"\n'
                    '[debug]\n  address = ""\n  level = "info"\n'
                    '[metrics]\n  address = ""\n'
                    % os.path.join(self.tmp, "ns", "containerd"))
        with open(self.containerd_log, "ab") as logf:
            self.containerd = subprocess.Popen(
                self.nsenter([self.containerd_bin, "--config", cfg]),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, close_fds=True,
                preexec_fn=_pdeathsig_kill, cwd=self.tmp)

        def up():
            if self.containerd.poll() is not None:
                raise EnvError("containerd exited with %s:\n%s"
                               % (self.containerd.returncode, file_tail(self.containerd_log)))
            r = self.ns_run(["test", "-S", "/run/containerd/containerd.sock"], timeout=10)
            return r.returncode == 0

        if not wait_until(up, 20, 0.1):
            raise EnvError("containerd did not create its socket within 20 s:\n"
                           + file_tail(self.containerd_log))

    def dockerd_args(self):
        cfgfile = os.path.join(self.tmp, "daemon.json")
        with open(cfgfile, "w") as f:
            # Our own config file, so the host's /etc/docker/daemon.json is never read; the
            # trust key (20.10 writes /etc/docker/key.json by default) goes to the temp dir.
            json.dump({"deprecated-key-path": os.path.join(self.tmp, "ns", "key.json")}, f)
        args = [self.dockerd_bin,
                "--config-file", cfgfile,
                "--data-root", os.path.join(self.tmp, "ns", "docker"),
                "--exec-root", "/run/docker",
                "--pidfile", "/run/docker.pid",
                "-H", "unix://" + self.sock,
                "--containerd", "/run/containerd/containerd.sock",
                "--storage-driver", "vfs",
                "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--cgroup-parent", "/" + self.cgroup_parent,
                "--bip", BRIDGE_V4_CIDR,
                "--userland-proxy=true",
                "--userland-proxy-path", self.portproxy,
                "--iptables=%s" % ("true" if self.iptables else "false"),
                "--debug"]
        if self.ipv6:
            args += ["--ipv6", "--fixed-cidr-v6", FIXED_CIDR_V6]
            if self.iptables and getattr(self, "ip6tables", False):
                args += ["--experimental", "--ip6tables"]
        return args

    def start_dockerd(self):
        self.dockerd_starts += 1
        with open(self.dockerd_log, "ab") as logf:
            logf.write(("\n===== dockerd start #%d =====\n" % self.dockerd_starts).encode())
            logf.flush()
            self.dockerd = subprocess.Popen(
                self.nsenter(self.dockerd_args()),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, close_fds=True,
                preexec_fn=_pdeathsig_kill, cwd=self.tmp)

        def up():
            if self.dockerd.poll() is not None:
                raise EnvError("dockerd exited with %s; log tail:\n%s"
                               % (self.dockerd.returncode, file_tail(self.dockerd_log)))
            return self.ping()

        if not wait_until(up, DOCKERD_START_TIMEOUT, 0.1):
            raise EnvError("dockerd did not answer within %.0f s; log tail:\n%s"
                           % (DOCKERD_START_TIMEOUT, file_tail(self.dockerd_log)))

    def ping(self):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(self.sock)
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                data = b""
                while len(data) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            return data.startswith(b"HTTP/1.") and data.rstrip().endswith(b"OK")
        except OSError:
            return False

    def stop(self):
        """Tear everything down by PID. Safe to call twice and after partial starts; every
        step runs even if an earlier one failed. Returns the problems met."""
        if self in _live_envs:
            _live_envs.remove(self)
        errors = []

        def step(fn):
            try:
                fn()
            except Exception as e:  # keep going: the next steps still free resources
                errors.append("%s: %r" % (getattr(fn, "__name__", "step"), e))

        def remove_containers():
            if self.dockerd is None or self.dockerd.poll() is not None or not self.docker_bin:
                return
            ids = run([self.docker_bin, "ps", "-aq"], timeout=15, env=self.cli_env)
            if ids.returncode == 0 and ids.stdout.split():
                run([self.docker_bin, "rm", "-f"] + ids.stdout.decode().split(), timeout=30,
                    env=self.cli_env)

        def stop_daemons():
            for name in ("dockerd", "containerd"):
                p = getattr(self, name)
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        errors.append("%s ignored SIGTERM for 15 s" % name)
                        p.kill()
                        p.wait(timeout=5)

        def kill_leftovers():
            # everything left in our namespaces or cgroups (shims, containers, orphaned proxies)
            for _ in range(50):
                victims = self.leftover_pids()
                if not victims:
                    return
                for pid in victims:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
                reap_children()
            errors.append("processes survive SIGKILL: %s" % self.leftover_pids())

        def stop_holder():
            if self.holder is not None:
                if self.holder.poll() is None:
                    self.holder.kill()
                    self.holder.wait(timeout=5)
                for f in (self.holder.stdout, self.holder.stderr):
                    with contextlib.suppress(Exception):
                        f.close()

        def remove_tmp():
            if os.environ.get("PORTPROXY_E2E_KEEP"):
                log("kept %s" % self.tmp)
                return
            for _ in range(20):  # the tmpfs goes away with the last process of the mount ns
                shutil.rmtree(self.tmp, ignore_errors=True)
                if not os.path.exists(self.tmp):
                    return
                time.sleep(0.1)
            errors.append("could not remove %s" % self.tmp)

        for fn in (remove_containers, stop_daemons, kill_leftovers, stop_holder,
                   self._leave_netns, reap_children, self._remove_cgroups, remove_tmp):
            step(fn)
        return errors

    def leftover_pids(self):
        me = os.getpid()
        out = set()
        holder = self.holder.pid if self.holder else -1
        for pid in all_pids():
            if pid in (me, holder):
                continue
            if (self.mntns_ino and ns_inode(pid, "mnt") == self.mntns_ino) or \
                    (self.netns_ino and ns_inode(pid, "net") == self.netns_ino):
                st = proc_stat(pid)
                if st and st[0] != "Z":
                    out.add(pid)
        for d in self._cgroup_dirs():
            for root, _dirs, files in os.walk(d):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        with open(os.path.join(root, "cgroup.procs")) as f:
                            out.update(int(x) for x in f.read().split())
        out.discard(me)
        return sorted(out)

    def _cgroup_dirs(self):
        out = []
        with contextlib.suppress(OSError):
            for ctrl in os.listdir("/sys/fs/cgroup"):
                d = os.path.join("/sys/fs/cgroup", ctrl, self.cgroup_parent)
                if os.path.isdir(d):
                    out.append(d)
        d = os.path.join("/sys/fs/cgroup", self.cgroup_parent)
        if os.path.isdir(d):
            out.append(d)
        return out

    def _remove_cgroups(self):
        for _ in range(30):
            dirs = self._cgroup_dirs()
            if not dirs:
                return
            for d in dirs:
                for root, subdirs, _files in os.walk(d, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(root)
            time.sleep(0.1)
        log("could not remove cgroups: %s" % self._cgroup_dirs())

    # -- docker CLI --
    def docker(self, *args, timeout=60, check=True, input=None):
        r = run([self.docker_bin] + list(args), timeout=timeout, env=self.cli_env, input=input)
        if VERBOSE:
            log("%.2f docker %s -> %d %s" % (time.monotonic(), " ".join(args), r.returncode,
                                        r.stderr.decode("utf-8", "replace").strip()))
        if check and r.returncode != 0:
            raise AssertionError("docker %s failed (%d): %s\n%s"
                                 % (" ".join(args), r.returncode,
                                    r.stderr.decode("utf-8", "replace").strip(),
                                    r.stdout.decode("utf-8", "replace").strip()))
        return r

    def build_image(self):
        if self.image_ready:
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add_dir(name, mode=0o755):
                ti = tarfile.TarInfo(name)
                ti.type = tarfile.DIRTYPE
                ti.mode = mode
                tar.addfile(ti)

            def add_file(name, data, mode=0o644):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = mode
                tar.addfile(ti, io.BytesIO(data))

            for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "www", "run", "var"):
                add_dir(d, 0o1777 if d == "tmp" else 0o755)
            with open(self.busybox, "rb") as f:
                add_file("bin/busybox", f.read(), 0o755)
            applets = run([self.busybox, "--list"], timeout=10).stdout.decode().split()
            for a in applets:
                if a and a != "busybox" and "/" not in a:
                    ti = tarfile.TarInfo("bin/" + a)
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = "busybox"
                    tar.addfile(ti)
            with open(self.ppecho, "rb") as f:
                add_file("ppecho", f.read(), 0o755)
            add_file("etc/passwd",
                     b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
            add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
            add_file("www/index.html", b"portproxy e2e\n")
        path = os.path.join(self.tmp, "rootfs.tar")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        self.docker("import", "-c", "EXPOSE 7000", "-c", 'CMD ["/ppecho", "7000"]',
                    path, IMAGE, timeout=60)
        self.image_ready = True

    # -- processes --
    def proxies(self):
        """Live portproxy processes in our netns: {pid: (ppid, argv)}."""
        out = {}
        for pid in all_pids():
            if ns_inode(pid, "net") != self.netns_ino or pid == os.getpid():
                continue
            st = proc_stat(pid)
            if not st or st[0] in ("Z", "X"):
                continue
            exe = proc_exe(pid)
            if exe is None:
                continue
            if exe.endswith(" (deleted)"):
                exe = exe[:-10]
            if os.path.realpath(exe) != self.portproxy_real:
                continue
            argv = proc_cmdline(pid)
            if argv is None:
                continue
            out[pid] = (st[1], argv)
        return out


def reap_children():
    """Reap any exited child (orphans we adopted as subreaper), never blocking."""
    for _ in range(10000):
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@atexit.register
def _stop_all_envs():
    for env in list(_live_envs):
        with contextlib.suppress(Exception):
            env.stop()


# --- client side checks (this process lives in the test netns) -----------------------------------

def parse_whoami(line):
    """'peer=1.2.3.4:5 local=[::1]:6 proto=tcp' -> {'peer': (ip, port), 'local': ..., 'proto': }"""
    out = {}
    for word in line.split():
        k, _, v = word.partition("=")
        if k in ("peer", "local", "self"):
            host, _, port = v.rpartition(":")
            out[k] = (host.strip("[]"), int(port))
        else:
            out[k] = v
    return out


def recv_line(sock, deadline):
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < 1024:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        b = sock.recv(1)  # byte by byte: do not eat echoed data
        if not b:
            raise AssertionError("EOF before a whole line (got %r)" % buf)
        buf += b
    return buf.decode()


def exchange(sock, payload, timeout=30.0):
    """Send payload, half-close, read until EOF. Returns what came back."""
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    sent, got, wr_done = 0, [], False
    view = memoryview(payload)
    if not payload:
        sock.shutdown(socket.SHUT_WR)
        wr_done = True
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("echo exchange timed out (sent %d of %d, got %d)"
                                 % (sent, len(payload), sum(map(len, got))))
        r, w, _ = select.select([sock], [] if wr_done else [sock], [], left)
        if w:
            try:
                sent += sock.send(view[sent:sent + 262144])
            except BlockingIOError:
                pass
            if sent == len(payload):
                sock.shutdown(socket.SHUT_WR)
                wr_done = True
        if r:
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                break
            got.append(data)
    return b"".join(got)


def port_bindable(port, proto="tcp", ipv6=True):
    """Nobody holds port on 0.0.0.0 nor [::] (SO_REUSEADDR, as a restarted server would)."""
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    fams = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if ipv6 else [])
    for fam, host in fams:
        s = socket.socket(fam, typ)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            if typ == socket.SOCK_STREAM:
                s.listen(1)
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_ports(count=1, ipv6=None):
    """`count` consecutive ports free for TCP and UDP on both families (in this netns): the
    first is what the kernel gives for port 0, the rest are checked one by one."""
    if ipv6 is None:
        ipv6 = CONFIG.get("host_v6", True)
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", 0))
        base = s.getsockname()[1]
        s.close()
        if base + count > 65535:
            continue
        if all(port_bindable(p, "tcp", ipv6) and port_bindable(p, "udp", ipv6)
               for p in range(base, base + count)):
            return list(range(base, base + count))
    raise AssertionError("could not find %d consecutive free ports" % count)


def probe_udp(portproxy):
    """Start `portproxy -proto udp` once (on loopback, dockerd's argv and fd 3 protocol).
    Returns None if it works, else the reason."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    hp, cp = a.getsockname()[1], b.getsockname()[1]
    a.close()
    argv = [portproxy, "-proto", "udp", "-host-ip", "127.0.0.1", "-host-port", str(hp),
            "-container-ip", "127.0.0.1", "-container-port", str(cp)]
    # fd 3 = the handshake pipe (here: our stdout pipe), stdout/stderr /dev/null
    p = subprocess.Popen(["/bin/sh", "-c", 'exec "$@" 3>&1 >/dev/null 2>&1', "sh"] + argv,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
    try:
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not data.startswith(b"0\n"):
            r, _, _ = select.select([p.stdout], [], [], max(0.01, deadline - time.monotonic()))
            if not r:
                break
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"0\n"):
            return None
        if data.startswith(b"1\n"):
            return "it reported: %s" % data[2:].decode("utf-8", "replace").strip()
        return "no handshake within 5 s (got %r, exit status %s)" % (data, p.poll())
    finally:
        b.close()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stdout.close()


# --- the cases -----------------------------------------------------------------------------------

CONFIG = {}  # filled by preflight(): portproxy, ppecho, busybox, ipv6, host_v6, udp_reason


class Container:
    def __init__(self, name, pid, ip4, ip6):
        self.name, self.pid, self.ip4, self.ip6 = name, pid, ip4, ip6

    def ip_for(self, host_ip):
        """The container address dockerd forwards a host address of this family to."""
        return self.ip6 if (":" in host_ip and self.ip6) else self.ip4


class DockerdCases:
    """The checks, run once per dockerd mode (the subclasses set IPTABLES)."""

    IPTABLES = None
    env = None
    udp_reason = None

    # -- class setup --
    @classmethod
    def setUpClass(cls):
        cls.ipv6 = CONFIG["ipv6"]  # dockerd --ipv6: containers and the bridge get IPv6
        cls.host_v6 = CONFIG["host_v6"]  # the kernel has IPv6: dockerd also publishes on ::
        cls.udp_reason = CONFIG["udp_reason"]
        mode = "ipt" if cls.IPTABLES else "noipt"
        env = DockerEnv(mode, cls.IPTABLES, cls.ipv6, CONFIG["portproxy"], CONFIG["ppecho"],
                        CONFIG["busybox"])
        cls.addClassCleanup(cls._stop_env, env)
        t0 = time.monotonic()
        try:
            env.start()
            env.build_image()
        except EnvError as e:
            msg = "dockerd cannot run here (--iptables=%s): %s" % (cls.IPTABLES, e)
            if os.environ.get("PORTPROXY_E2E_REQUIRE_DOCKERD"):
                raise AssertionError(msg)
            log("SKIP: " + msg)
            raise unittest.SkipTest(msg.splitlines()[0])
        # can this machine run a container at all? (no network: the proxy plays no part)
        r = env.docker("run", "--rm", "--network", "none", IMAGE, "/bin/true", check=False,
                       timeout=60)
        if r.returncode != 0:
            msg = "dockerd cannot run containers here (--iptables=%s): %s\ndockerd log tail:\n%s" \
                % (cls.IPTABLES, r.stderr.decode("utf-8", "replace").strip(),
                   file_tail(env.dockerd_log, 20))
            if os.environ.get("PORTPROXY_E2E_REQUIRE_DOCKERD"):
                raise AssertionError(msg)
            log("SKIP: " + msg)
            raise unittest.SkipTest(msg.splitlines()[0])
        ver = env.docker("version", "-f", "{{.Server.Version}}").stdout.decode().strip()
        cls.dockerd_version = tuple(int(x) for x in re.findall(r"\d+", ver)[:2]) or (0, 0)
        cls.env = env
        cls.shared = {}
        log("--iptables=%s: dockerd (pid %d) up with an image in %.1f s, temp dir %s"
            % (cls.IPTABLES, env.dockerd.pid, time.monotonic() - t0, env.tmp))

    @classmethod
    def _stop_env(cls, env):
        errors = env.stop()
        for e in errors:
            log("cleanup: " + e)

    def setUp(self):
        self._t0 = time.monotonic()

    def tearDown(self):
        log("%s: %.1f s" % (self._testMethodName, time.monotonic() - self._t0))

    def need_udp(self):
        if self.udp_reason:
            self.skipTest("UDP: `portproxy -proto udp` does not start (%s)" % self.udp_reason)

    # -- containers --
    def run_container(self, name, publish, ports, extra=(), keep=False):
        """docker run -d with the publish args; wait until ppecho listens and the container's
        IPv6 address has finished DAD. Removed at the end of the test unless keep."""
        env = self.env
        env.docker("run", "-d", "--name", name, *extra, *publish, IMAGE, "/ppecho", *ports)
        if keep:
            self.addClassCleanup(env.docker, "rm", "-f", name, check=False)
        else:
            self.addCleanup(env.docker, "rm", "-f", name, check=False)
        return self.wait_container(name, ports)

    def inspect(self, name):
        fmt = "{{.State.Pid}}|{{.State.Status}}|{{.NetworkSettings.IPAddress}}|" \
              "{{.NetworkSettings.GlobalIPv6Address}}"
        f = self.env.docker("inspect", "-f", fmt, name).stdout.decode().strip().split("|")
        return int(f[0]), f[1], f[2], f[3]

    def wait_container(self, name, ports):
        pid, status, ip4, ip6 = self.inspect(name)
        if status != "running":
            logs = self.env.docker("logs", name, check=False)
            self.fail("container %s is %s; logs: %s %s" % (name, status, logs.stdout.decode(),
                                                            logs.stderr.decode()))
        want = set()
        for p in ports:
            lo, _, hi = str(p).partition("-")
            want.update(range(int(lo), int(hi or lo) + 1))

        def listening(port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                return probe.connect_ex((ip4, port)) == 0

        def ready():
            # ppecho binds all its UDP ports before it listens on any TCP port
            if not listening(max(want)) or not all(listening(p) for p in want):
                return False
            if ip6:
                # IPv6 duplicate address detection must be over on both ends: dockerd gives
                # the container's address NODAD, but the bridge's own addresses (the gateway)
                # go through DAD again whenever docker0 regains carrier (its first port).
                # Meanwhile the kernel picks ::1 as the source for the proxy's connect to
                # the container, and that SYN-SENT hangs for the kernel's whole SYN retry
                # budget (docker-proxy does exactly the same).
                for path, dev in (("/proc/%d/net/if_inet6" % pid, None),
                                  ("/proc/self/net/if_inet6", "docker0")):
                    with open(path) as f:
                        for line in f.read().splitlines():
                            c = line.split()
                            if (dev is None or c[5] == dev) and int(c[4], 16) & 0x40:
                                return False  # IFA_F_TENTATIVE
            return True

        if not wait_until(ready, 15, 0.05):
            logs = self.env.docker("logs", name, check=False)
            self.fail("container %s not ready within 15 s (ports %s; DAD); logs: %s %s"
                      % (name, sorted(want), logs.stdout.decode(), logs.stderr.decode()))
        return Container(name, pid, ip4, ip6 or None)

    def docker_port(self, name):
        """`docker port NAME` as a set of (proto, container port, host ip, host port)."""
        out = self.env.docker("port", name).stdout.decode()
        res = set()
        for line in out.splitlines():
            m = re.match(r"^(\d+)/(\w+) -> (.+):(\d+)$", line.strip())
            self.assertIsNotNone(m, "unexpected `docker port` line %r" % line)
            res.add((m.group(2), int(m.group(1)), m.group(3).strip("[]"), int(m.group(4))))
        return res

    def container_proxies(self, c):
        """{pid: argv} of live portproxy processes forwarding to container c."""
        out = {}
        for pid, (ppid, argv) in self.env.proxies().items():
            if "-container-ip" in argv:
                cip = argv[argv.index("-container-ip") + 1]
                if cip in (c.ip4, c.ip6):
                    out[pid] = (ppid, argv)
        return out

    def expected_argv(self, c, binding):
        proto, cport, hip, hport = binding
        return (self.env.portproxy, "-proto", proto, "-host-ip", hip, "-host-port", str(hport),
                "-container-ip", c.ip_for(hip), "-container-port", str(cport))

    def check_proxies_match(self, c, bindings):
        """One portproxy per binding, spawned by our dockerd, with exactly dockerd's argv."""
        want = {self.expected_argv(c, b) for b in bindings}
        got = self.container_proxies(c)
        # dockerd 20.10 passes exactly the ten words; moby 28+ appends -use-listen-fd
        have = sorted(tuple(a for a in argv if a != "-use-listen-fd")
                      for _ppid, argv in got.values())
        self.assertEqual(sorted(want), have,
                         "portproxy processes do not match `docker port` for %s" % c.name)
        for pid, (ppid, argv) in got.items():
            self.assertEqual(ppid, self.env.dockerd.pid,
                             "portproxy %d (%s) is not a child of dockerd" % (pid, argv))
        return got

    def proxy_for(self, proto, host_ip, host_port):
        for pid, (_ppid, argv) in self.env.proxies().items():
            if argv[argv.index("-proto") + 1] == proto and \
                    argv[argv.index("-host-ip") + 1] == host_ip and \
                    argv[argv.index("-host-port") + 1] == str(host_port):
                return pid
        return None

    def owner_of(self, proto, local, remote):
        """The portproxy pid holding the socket local <-> remote ((ip, port) each), or None."""
        inode = sock_inode(proto, local, remote)
        if inode is None:
            return None
        for pid in self.env.proxies():
            if inode in socket_inodes(pid):
                return pid
        return None

    # -- traffic --
    def tcp_check(self, host, port, c, cport, proxied, nbytes=65536):
        """Connect from the namespace's own stack; check the backend port, that the proxy
        holds both ends (or, with proxied=False, that it does not), and a byte-exact echo with
        a half-close in each direction."""
        what = "tcp %s:%d -> %s:%d" % (host, port, c.name, cport)
        deadline = time.monotonic() + 20
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        try:
            s.settimeout(10)
            try:
                s.connect((host, port))
            except OSError as e:
                self.fail("%s: connect failed: %s" % (what, e))
            s.sendall(b"whoami\n")
            info = parse_whoami(recv_line(s, deadline))
            self.assertEqual(info["local"][1], cport,
                             "%s: reached the wrong port: %s" % (what, info))
            backend_ip = info["local"][0]
            self.assertIn(backend_ip, (c.ip4, c.ip6), "%s: reached %s" % (what, info))
            front = self.owner_of("tcp", s.getpeername()[:2], s.getsockname()[:2])
            back = self.owner_of("tcp", info["peer"], (backend_ip, cport))
            if proxied:
                gw = GATEWAY_V6 if ":" in backend_ip else GATEWAY_V4
                self.assertIsNotNone(front, "%s: no portproxy holds the accepted connection" % what)
                self.assertEqual(front, back, "%s: the proxy holding the client (%s) is not the "
                                 "one connected to the container (%s)" % (what, front, back))
                self.assertEqual(info["peer"][0], gw,
                                 "%s: the container saw %s, not the gateway" % (what, info))
                argv = self.env.proxies().get(front, (0, []))[1]
                self.assertEqual((argv[argv.index("-host-port") + 1],
                                  argv[argv.index("-container-port") + 1]),
                                 (str(port), str(cport)), "%s: held by %s" % (what, argv))
            else:
                self.assertIsNone(front, "%s: expected kernel NAT, but portproxy %s accepted it"
                                  % (what, front))
                # Kernel NAT keeps our address; conntrack may rewrite the source port
                # when it clashes with one left by a proxied connection, so only the
                # address is ours to check.
                self.assertEqual(info["peer"][0], s.getsockname()[0],
                                 "%s: the container did not see our own address: %s"
                                 % (what, info))
            payload = os.urandom(nbytes)
            back_data = exchange(s, payload)
            self.assertEqual(len(back_data), len(payload), "%s: echo length" % what)
            self.assertEqual(hashlib.sha256(back_data).digest(), hashlib.sha256(payload).digest(),
                             "%s: echo differs" % what)
            return front
        finally:
            s.close()

    def udp_check(self, host, port, c, cport, proxied):
        """Connected UDP client (so replies from any other address are dropped): whoami, the
        proxy's flow socket (local port = what the container saw), and a 1200-byte echo."""
        what = "udp %s:%d -> %s:%d" % (host, port, c.name, cport)
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        try:
            s.connect((host, port))
            s.settimeout(1.0)
            line = None
            for _ in range(5):
                s.send(b"whoami")
                try:
                    line = s.recv(2048).decode()
                    break
                except (socket.timeout, ConnectionRefusedError):
                    continue
            self.assertIsNotNone(line, "%s: no reply to 5 datagrams" % what)
            info = parse_whoami(line)
            self.assertEqual(info.get("local", (None, 0))[1], cport,
                             "%s: reached the wrong port: %r" % (what, line))
            peer_ip, peer_port = info["peer"]
            self.assertIn(peer_ip, (c.ip4, c.ip6, GATEWAY_V4, GATEWAY_V6, "127.0.0.1", "::1"))
            owner = self.owner_of("udp", info["peer"], (c.ip_for(peer_ip), cport))
            if proxied:
                gw = GATEWAY_V6 if ":" in peer_ip else GATEWAY_V4
                self.assertEqual(peer_ip, gw, "%s: the container saw %s" % (what, line))
                self.assertIsNotNone(owner, "%s: no portproxy flow socket from port %d"
                                     % (what, peer_port))
                argv = self.env.proxies().get(owner, (0, []))[1]
                self.assertEqual((argv[argv.index("-host-port") + 1],
                                  argv[argv.index("-container-port") + 1]),
                                 (str(port), str(cport)), "%s: flow held by %s" % (what, argv))
            else:
                self.assertIsNone(owner, "%s: expected kernel NAT, but portproxy %s forwarded it"
                                  % (what, owner))
                self.assertEqual(peer_port, s.getsockname()[1],
                                 "%s: the container did not see our own socket: %r" % (what, line))
            payload = os.urandom(1200)
            for _ in range(5):
                s.send(payload)
                try:
                    self.assertEqual(s.recv(65535), payload, "%s: echo differs" % what)
                    break
                except socket.timeout:
                    continue
            else:
                self.fail("%s: no echo to 5 datagrams" % what)
            return owner
        finally:
            s.close()

    def hairpin(self, c, proto, host, port, cport, nbytes=65536):
        """From inside container c to host:port (the gateway): through the proxy, which
        must be seen holding the connection while it is open (TCP) or the flow (UDP)."""
        what = "hairpin %s from %s to %s:%d" % (proto, c.name, host, port)
        argv = [self.env.docker_bin, "exec", "-i", c.name, "/ppecho", "-c", proto, host, str(port),
                str(nbytes if proto == "tcp" else 1200), "hold"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env.cli_env)
        try:
            lines = []
            deadline = time.monotonic() + 20
            buf = b""
            while not any(l.startswith("reply ") for l in lines):
                left = deadline - time.monotonic()
                r, _, _ = select.select([p.stdout], [], [], max(0, left))
                if not r:
                    self.fail("%s: no reply within 20 s" % what)
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    p.wait(timeout=10)
                    self.fail("%s: client ended (%s): %s %s" % (what, p.returncode, buf,
                                                                p.stderr.read()))
                buf += chunk
                lines = buf.decode().splitlines()
            selfaddr = parse_whoami([l for l in lines if l.startswith("self=")][0])["self"]
            info = parse_whoami([l for l in lines if l.startswith("reply ")][0][6:])
            self.assertEqual(info["local"][1], cport, "%s: reached %s" % (what, info))
            gw = GATEWAY_V6 if ":" in info["peer"][0] else GATEWAY_V4
            self.assertEqual(info["peer"][0], gw, "%s: the container saw %s" % (what, info))
            if proto == "tcp":
                front = self.owner_of("tcp", (host, port), selfaddr)
            else:
                front = self.proxy_for("udp", "::" if ":" in host else "0.0.0.0", port)
            back = self.owner_of(proto, info["peer"], (c.ip_for(info["peer"][0]), cport))
            self.assertIsNotNone(front, "%s: no portproxy accepted it" % what)
            self.assertEqual(front, back, "%s: the proxy facing the client (%s) is not the "
                             "one connected to the container (%s)" % (what, front, back))
            out, err = p.communicate(input=b"", timeout=30)  # EOF on stdin: finish the echo
            self.assertEqual(p.returncode, 0, "%s: %s %s" % (what, out, err))
            self.assertIn(b"echo ok", out)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                with contextlib.suppress(Exception):
                    f.close()

    def refused(self, host, port):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((host, port))
            return False
        except (ConnectionRefusedError, socket.timeout):
            return True
        finally:
            s.close()

    # -- shared containers --
    def forms_container(self, proto):
        """A container published with every -p form of docker run's reference for proto;
        shared by several tests. Container ports:
            7000  -p H1:7000              7004  -p 7004 (docker picks the host port)
            7001  -p 127.0.0.1:H2:7001    7005  -p [::1]::7005
            7002  -p [::1]:H3:7002        7006  -p Q0-Q2:7006 (one host port out of a range)
            7003  -p 127.0.0.1::7003      7010-7012  -p R0-R2:7010-7012
                                          7013-7014  -p 7013-7014 (docker picks a range)"""
        key = "forms-" + proto
        if key in self.shared:
            return self.shared[key]
        h1, h2, h3 = free_ports(1)[0], free_ports(1)[0], free_ports(1)[0]
        r = free_ports(3)
        q = free_ports(3)
        sfx = "/" + proto
        publish = ["-p", "%d:7000%s" % (h1, sfx),
                   "-p", "127.0.0.1:%d:7001%s" % (h2, sfx),
                   "-p", "127.0.0.1::7003%s" % sfx,
                   "-p", "7004" + sfx,
                   "-p", "%d-%d:7006%s" % (q[0], q[-1], sfx),
                   "-p", "%d-%d:7010-7012%s" % (r[0], r[-1], sfx),
                   "-p", "7013-7014" + sfx]
        if self.host_v6:
            publish += ["-p", "[::1]:%d:7002%s" % (h3, sfx), "-p", "[::1]::7005" + sfx]
        c = self.run_container("ppforms%s" % proto, publish, ["7000-7014"], keep=True)
        self.forms_range = q
        bindings = self.docker_port(c.name)
        expect_fixed = {(proto, 7000, "0.0.0.0", h1), (proto, 7001, "127.0.0.1", h2)}
        expect_fixed.update((proto, 7010 + i, "0.0.0.0", r[i]) for i in range(3))
        if self.host_v6:
            expect_fixed.add((proto, 7002, "::1", h3))
            expect_fixed.add((proto, 7000, "::", h1))
            expect_fixed.update((proto, 7010 + i, "::", r[i]) for i in range(3))
        self.shared[key] = (c, bindings, expect_fixed, h1, h2, h3, r)
        return self.shared[key]

    def check_forms_docker_port(self, proto):
        c, bindings, expect_fixed, *_ = self.forms_container(proto)
        missing = expect_fixed - bindings
        self.assertFalse(missing, "`docker port` lacks %s; it says %s" % (missing, bindings))
        dyn = bindings - expect_fixed
        fams = ["0.0.0.0"] + (["::"] if self.host_v6 else [])
        want_dyn = {(7003, "127.0.0.1")} | {(cp, f) for cp in (7004, 7006, 7013, 7014)
                                            for f in fams}
        if self.host_v6:
            want_dyn.add((7005, "::1"))
        self.assertEqual({(b[1], b[2]) for b in dyn}, want_dyn,
                         "`docker port` dynamic bindings: %s" % sorted(dyn))
        for b in dyn:
            self.assertTrue(1024 <= b[3] <= 65535, b)
        q = self.forms_range
        for b in dyn:
            if b[1] == 7006:
                self.assertIn(b[3], q, "-p %d-%d:7006 got host port %d" % (q[0], q[-1], b[3]))
        for f in fams:  # -p 7013-7014: each gets its own host port (not even in order)
            pair = sorted((b[1], b[3]) for b in dyn if b[1] in (7013, 7014) and b[2] == f)
            self.assertNotEqual(pair[0][1], pair[1][1], "-p 7013-7014 on %s: %s" % (f, pair))
        self.check_proxies_match(c, bindings)

    def check_forms_traffic(self, proto, what):
        c, bindings, _fixed, h1, h2, h3, r = self.forms_container(proto)
        check = self.tcp_check if proto == "tcp" else self.udp_check
        by = {}
        for b in bindings:
            by.setdefault((b[1], b[2]), b[3])
        if what == "localhost":
            # the host reaching published ports on localhost: only the proxy can do that
            for (cport, hip), hport in sorted(by.items()):
                host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(hip, hip)
                check(host, hport, c, cport, proxied=True)
            # Another loopback address on the 0.0.0.0 mapping: a UDP reply must come from the
            # address the client wrote to (IP_PKTINFO), or its connected socket drops it
            # (docker-proxy's moby #11998); TCP gets that for free.
            check("127.0.0.2", h1, c, 7000, proxied=True)
            if proto == "tcp":
                # a bigger byte-exact transfer, both families
                check("127.0.0.1", h1, c, 7000, proxied=True, nbytes=8 << 20)
                if self.host_v6:
                    check("::1", h1, c, 7000, proxied=True, nbytes=8 << 20)
        elif what == "gateway":
            # the namespace's own stack to the bridge address: the proxy with --iptables=false,
            # kernel DNAT (OUTPUT chain) with --iptables=true
            nat = self.IPTABLES
            check(GATEWAY_V4, h1, c, 7000, proxied=not nat)
            check(GATEWAY_V4, r[1], c, 7011, proxied=not nat)
            if self.ipv6:
                nat6 = nat and getattr(self.env, "ip6tables", False)
                check(GATEWAY_V6, h1, c, 7000, proxied=not nat6)
                check(GATEWAY_V6, r[2], c, 7012, proxied=not nat6)
            if proto == "tcp":
                # host-ip bound mappings listen on that address only
                self.assertTrue(self.refused(GATEWAY_V4, h2),
                                "127.0.0.1:%d mapping reachable on the gateway address" % h2)
                if self.ipv6:
                    self.assertTrue(self.refused(GATEWAY_V6, h3),
                                    "[::1]:%d mapping reachable on the gateway address" % h3)
        elif what == "hairpin":
            # a container reaching a published port through the host (the bridge gateway)
            self.hairpin(c, proto, GATEWAY_V4, h1, 7000)
            self.hairpin(c, proto, GATEWAY_V4, r[0], 7010)
            if self.ipv6:
                self.hairpin(c, proto, GATEWAY_V6, h1, 7000)

    # -- the tests --
    def test_10_tcp_publish_forms_docker_port_and_processes(self):
        self.check_forms_docker_port("tcp")

    def test_11_tcp_localhost(self):
        self.check_forms_traffic("tcp", "localhost")

    def test_12_tcp_gateway_address(self):
        self.check_forms_traffic("tcp", "gateway")

    def test_13_tcp_hairpin(self):
        self.check_forms_traffic("tcp", "hairpin")

    def test_20_udp_publish_forms_docker_port_and_processes(self):
        self.need_udp()
        self.check_forms_docker_port("udp")

    def test_21_udp_localhost(self):
        self.need_udp()
        self.check_forms_traffic("udp", "localhost")

    def test_22_udp_gateway_address(self):
        self.need_udp()
        self.check_forms_traffic("udp", "gateway")

    def test_23_udp_hairpin(self):
        self.need_udp()
        self.check_forms_traffic("udp", "hairpin")

    def test_30_publish_all(self):
        """-P publishes the image's EXPOSE 7000 (docker import --change) and --expose ports."""
        extra = ["-P", "--expose", "7020", "--expose", "7021-7022"]
        want = {("tcp", 7000), ("tcp", 7020), ("tcp", 7021), ("tcp", 7022)}
        if not self.udp_reason:
            extra += ["--expose", "7023/udp"]
            want.add(("udp", 7023))
        c = self.run_container("ppall", [], ["7000", "7020-7023"], extra=extra)
        bindings = self.docker_port(c.name)
        fams = ["0.0.0.0"] + (["::"] if self.host_v6 else [])
        self.assertEqual({(b[0], b[1], b[2]) for b in bindings},
                         {(p, cp, f) for p, cp in want for f in fams}, sorted(bindings))
        self.check_proxies_match(c, bindings)
        v4 = {(b[0], b[1]): b[3] for b in bindings if b[2] == "0.0.0.0"}
        v6 = {(b[0], b[1]): b[3] for b in bindings if b[2] == "::"}
        if v6 and v4 != v6:
            log("note: dockerd picked different host ports for 0.0.0.0 and :: with -P: %s vs %s"
                % (sorted(v4.items()), sorted(v6.items())))
        for proto, cport, hip, hport in sorted(bindings):
            host = "127.0.0.1" if hip == "0.0.0.0" else "::1"
            if proto == "tcp":
                self.tcp_check(host, hport, c, cport, proxied=True)
            else:
                self.udp_check(host, hport, c, cport, proxied=True)

    def conflict(self, proto, hold_host, publish_ip):
        """Hold a port ourselves, ask docker to publish it: docker run fails with the proxy's
        message, nothing is left behind, and `docker start` works once the port is free."""
        port = free_ports(1)[0]
        fam = family_of(hold_host)
        s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((hold_host, port))
        if proto == "tcp":
            s.listen(1)
        name = "ppconf%s%d" % (proto, port)
        spec = ("%s:%d:7000/%s" % (publish_ip, port, proto)) if publish_ip else \
            ("%d:7000/%s" % (port, proto))
        try:
            self.addCleanup(self.env.docker, "rm", "-f", name, check=False)
            t0 = time.monotonic()
            r = self.env.docker("run", "-d", "--name", name, "-p", spec, IMAGE, check=False,
                                timeout=60)
            took = time.monotonic() - t0
            err = r.stderr.decode("utf-8", "replace")
            self.assertNotEqual(r.returncode, 0, "docker run -p %s succeeded on a busy port" % spec)
            self.assertLess(took, 15, "docker run took %.1f s to report the conflict" % took)
            if self.dockerd_version < (28, 0):  # later ones bind themselves (-use-listen-fd)
                self.assertIn("Error starting userland proxy", err)
            self.assertIn("address already in use", err)
            shown = ("[%s]:%d" if ":" in hold_host else "%s:%d") % (hold_host, port)
            self.assertIn(shown, err, "the error does not name %s" % shown)
            log("bind conflict (%s %s): %s" % (proto, spec, err.strip().splitlines()[0]))
            def left_behind():
                return [a for _p, (_pp, a) in self.env.proxies().items()
                        if a[a.index("-host-port") + 1] == str(port)]

            wait_until(lambda: not left_behind(), 5)
            left = left_behind()
            self.assertEqual(left, [], "portproxy processes left behind after the conflict")
            self.assertEqual(self.inspect(name)[1], "created")
        finally:
            s.close()
        # port free again: the same container starts and serves
        self.env.docker("start", name)
        c = self.wait_container(name, ["7000"])
        bindings = self.docker_port(name)
        self.check_proxies_match(c, bindings)
        host = publish_ip.strip("[]") if publish_ip else \
            ("::1" if ":" in hold_host else "127.0.0.1")
        if proto == "tcp":
            self.tcp_check(host, port, c, 7000, proxied=True)
        else:
            self.udp_check(host, port, c, 7000, proxied=True)

    def test_40_tcp_bind_conflict_ipv4(self):
        self.conflict("tcp", "0.0.0.0", None)

    def test_41_tcp_bind_conflict_ipv6(self):
        if not self.host_v6:
            self.skipTest("no IPv6")
        self.conflict("tcp", "::", None)

    def test_42_tcp_bind_conflict_loopback(self):
        self.conflict("tcp", "127.0.0.1", "127.0.0.1")

    def test_43_udp_bind_conflict(self):
        self.need_udp()
        self.conflict("udp", "0.0.0.0", None)

    def test_50_stop_start_restart_rm(self):
        h = free_ports(1)[0]
        publish = ["-p", "%d:7000" % h, "-p", "127.0.0.1::7001"]
        protos = ["tcp"]
        if not self.udp_reason:
            publish += ["-p", "%d:7000/udp" % h]
            protos.append("udp")
        c = self.run_container("ppcycle", publish, ["7000-7001"])
        env = self.env

        def check_up(c):
            bindings = self.docker_port(c.name)
            got = self.check_proxies_match(c, bindings)
            self.tcp_check("127.0.0.1", h, c, 7000, proxied=True)
            if self.host_v6:
                self.tcp_check("::1", h, c, 7000, proxied=True)
            if "udp" in protos:
                self.udp_check("127.0.0.1", h, c, 7000, proxied=True)
            dyn = [b[3] for b in bindings if b[1] == 7001]
            self.tcp_check("127.0.0.1", dyn[0], c, 7001, proxied=True)
            return set(got), bindings

        def check_released(pids, bindings, what):
            self.assertTrue(wait_until(lambda: all(gone_or_zombie(p) for p in pids), 5),
                            "%s: portproxy processes %s still alive" % (what, pids))
            self.assertFalse(self.container_proxies(c), what)
            for proto, _cport, _hip, hport in bindings:
                self.assertTrue(wait_until(lambda: port_released(hport, proto), 5),
                                "%s: %s port %d still held" % (what, proto, hport))

        pids1, b1 = check_up(c)
        t0 = time.monotonic()
        env.docker("stop", "-t", "5", c.name)
        took = time.monotonic() - t0
        self.assertLess(took, 5, "docker stop took %.1f s (a lingering proxy wedges it)" % took)
        check_released(pids1, b1, "after docker stop")

        env.docker("start", c.name)
        c = self.wait_container(c.name, ["7000-7001"])
        pids2, b2 = check_up(c)
        self.assertFalse(pids1 & pids2)

        env.docker("restart", "-t", "5", c.name)
        c2 = self.wait_container(c.name, ["7000-7001"])
        self.assertTrue(all(gone_or_zombie(p) for p in pids2), "restart kept old proxies")
        pids3, b3 = check_up(c2)
        self.assertFalse(pids2 & pids3)

        env.docker("rm", "-f", c.name)
        check_released(pids3, b3, "after docker rm -f")

    def test_90_kill_dockerd(self):
        """SIGKILL dockerd: every portproxy gets its parent-death SIGTERM and exits 0 promptly,
        freeing the ports; a restarted dockerd restarts the container and its proxies."""
        env = self.env
        h = free_ports(1)[0]
        publish = ["-p", "%d:7000" % h, "-p", "127.0.0.1::7001"]
        if not self.udp_reason:
            publish += ["-p", "%d:7000/udp" % h]
        c = self.run_container("ppkill", publish, ["7000-7001"], extra=["--restart", "always"],
                               keep=True)
        bindings = self.docker_port(c.name)
        self.check_proxies_match(c, bindings)
        all_proxies = env.proxies()  # including other tests' leftovers, if any
        self.tcp_check("127.0.0.1", h, c, 7000, proxied=True)
        t0 = time.monotonic()
        os.kill(env.dockerd.pid, signal.SIGKILL)
        env.dockerd.wait(timeout=10)
        statuses = {}
        deadline = t0 + 5
        while len(statuses) < len(all_proxies) and time.monotonic() < deadline:
            for pid in all_proxies:
                if pid in statuses:
                    continue
                try:
                    wpid, st = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # not adopted by us: just watch it go
                    if gone_or_zombie(pid):
                        statuses[pid] = None
                    continue
                if wpid == pid:
                    statuses[pid] = st
            time.sleep(0.01)
        took = time.monotonic() - t0
        alive = [p for p in all_proxies if p not in statuses]
        self.assertEqual(alive, [], "portproxy still running %.1f s after dockerd was killed: %s"
                         % (took, {p: all_proxies[p][1] for p in alive}))
        for pid, st in statuses.items():
            if st is not None:
                # The kernel sends the parent-death signal again each time the orphan is
                # handed from one exiting dockerd thread to the next, so a proxy can get
                # SIGTERM two or three times; one that lands after its handlers are gone
                # kills it with the default action (wait status 0xf).
                self.assertTrue(os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0,
                                "portproxy %d %s after its parent-death SIGTERM (want exit 0): "
                                "%s" % (pid, ("was killed by signal %d" % os.WTERMSIG(st))
                                        if os.WIFSIGNALED(st) else
                                        "exited %d" % os.WEXITSTATUS(st), all_proxies[pid][1]))
        log("SIGKILL dockerd: %d portproxy processes exited within %.2f s (%d reaped by us, "
            "all with exit status 0)" % (len(statuses), took,
                                         len([v for v in statuses.values() if v is not None])))
        for proto, _cport, _hip, hport in bindings:
            self.assertTrue(wait_until(lambda: port_released(hport, proto), 5),
                            "%s port %d still held after dockerd died" % (proto, hport))
        # a new dockerd restarts the container (--restart always) and its proxies
        env.start_dockerd()

        # the container may get a new address: look the proxies up by host port
        def back_by_port():
            mine = {p: v for p, v in env.proxies().items()
                    if v[0] == env.dockerd.pid and
                    v[1][v[1].index("-host-port") + 1] in {str(b[3]) for b in bindings}}
            return mine if len(mine) >= len([b for b in bindings if b[1] == 7000]) else None

        self.assertTrue(wait_until(back_by_port, 30, 0.1),
                        "proxies not back 30 s after restarting dockerd; log tail:\n%s"
                        % file_tail(env.dockerd_log))
        c = self.wait_container(c.name, ["7000-7001"])
        b2 = self.docker_port(c.name)
        self.check_proxies_match(c, b2)
        self.tcp_check("127.0.0.1", h, c, 7000, proxied=True)
        if self.host_v6:
            self.tcp_check("::1", h, c, 7000, proxied=True)


class TestDockerdIptablesOff(DockerdCases, unittest.TestCase):
    IPTABLES = False


class TestDockerdIptablesOn(DockerdCases, unittest.TestCase):
    IPTABLES = True


# --- main ----------------------------------------------------------------------------------------

def build_ppecho(tmpdir):
    if TOOLS:
        cand = os.path.join(TOOLS, "ppecho")
        if os.path.isfile(cand) and is_static_elf(cand):
            return cand, None
    src = os.path.join(TOOLS_SRC, "ppecho.c")
    if not os.path.isfile(src):
        return None, "no %s" % src
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler to build a static ppecho"
    out = os.path.join(tmpdir, "ppecho")
    r = run([cc, "-static", "-O2", "-o", out, src], timeout=120)
    if r.returncode != 0 or not is_static_elf(out):
        return None, "cannot link ppecho statically (libc6-dev / static libc?): %s" \
            % r.stderr.decode("utf-8", "replace").strip()[-500:]
    return out, None


def preflight():
    """Exit 77 with a reason unless dockerd can be tried here."""
    if not PORTPROXY:
        skip_file("PORTPROXY is not set (path of the portproxy binary)")
    if not (os.path.isfile(PORTPROXY) and os.access(PORTPROXY, os.X_OK)):
        skip_file("PORTPROXY=%s is not an executable file" % PORTPROXY)
    if not os.path.isabs(PORTPROXY):
        skip_file("PORTPROXY must be an absolute path (dockerd wants one)")
    if os.geteuid() != 0:
        skip_file("dockerd needs root (euid %d)" % os.geteuid())
    if sys.platform != "linux":
        skip_file("Linux only")
    missing = []
    tools = {"dockerd": find_tool("dockerd", ["/usr/sbin/dockerd", "/usr/bin/dockerd"],
                                  "PORTPROXY_DOCKERD"),
             "docker": find_tool("docker", ["/usr/bin/docker"], "PORTPROXY_DOCKER")}
    for t in ("containerd", "containerd-shim-runc-v2", "runc", "unshare", "nsenter", "ip",
              "mount"):
        tools[t] = find_tool(t)
    for t, p in tools.items():
        if not p:
            missing.append(t)
    busybox = find_tool("busybox", ["/bin/busybox", "/usr/bin/busybox"], "PORTPROXY_BUSYBOX")
    if not busybox or not is_static_elf(busybox):
        missing.append("static busybox (busybox-static)")
    if missing:
        skip_file("missing: %s (Debian: apt-get install docker.io busybox-static)"
                  % ", ".join(missing))
    if not os.path.isdir("/sys/fs/cgroup") or not os.listdir("/sys/fs/cgroup"):
        skip_file("no cgroup filesystem at /sys/fs/cgroup")
    r = run([tools["unshare"], "--net", "--mount", "--propagation", "private", "true"], timeout=20)
    if r.returncode != 0:
        skip_file("cannot create network/mount namespaces: %s" % r.stderr.decode().strip())
    tmp = tempfile.mkdtemp(prefix="ppdk-tools-")
    atexit.register(shutil.rmtree, tmp, True)
    ppecho, why = build_ppecho(tmp)
    if not ppecho:
        skip_file(why)
    host_v6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")
    ipv6 = host_v6 and not os.environ.get("PORTPROXY_E2E_NO_IPV6")
    udp_reason = probe_udp(PORTPROXY)
    if udp_reason:
        log("UDP checks will be skipped: `%s -proto udp` does not start: %s"
            % (PORTPROXY, udp_reason))
    ver = run([tools["dockerd"], "--version"], timeout=20).stdout.decode().strip()
    log("%s; portproxy %s; IPv6: host %s, dockerd --ipv6 %s"
        % (ver, PORTPROXY, "yes" if host_v6 else "no", "yes" if ipv6 else "no"))
    CONFIG.update(portproxy=PORTPROXY, ppecho=ppecho, busybox=busybox, ipv6=ipv6, host_v6=host_v6,
                  udp_reason=udp_reason)


def main():
    preflight()
    # Orphans (proxies whose dockerd we kill, containerd's shims) get reparented to us, so
    # we can collect their exit status and clean them up by PID.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        prog = unittest.main(exit=False, verbosity=2)
    finally:
        _stop_all_envs()
        reap_children()
    result = prog.result
    log("finished in %.1f s" % (time.monotonic() - t0))
    # a class skipped in setUpClass (dockerd cannot run) counts no test as run
    skipped_tests = [t for t, _why in result.skipped if isinstance(t, unittest.TestCase)]
    passed = result.testsRun - len(skipped_tests) - len(result.failures) - len(result.errors)
    if result.wasSuccessful() and passed <= 0:
        sys.exit(SKIP_EXIT)  # CTest: "Not Run (skipped)"
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
