#!/usr/bin/env python3
"""UDP echo benchmark: portproxy vs docker-proxy vs a direct path, one run, interleaved.

    python3 bench/udp_echo.py [--portproxy PATH] [--docker-proxy PATH] [--runs 5] [--secs 2]

What it does (Python 3 standard library plus a C compiler for the load generator):
  * builds `udpload` (C source below) and ppbtool (bench/ppbtool.c, its `serve` command is the
    echo backend: recvmmsg/sendmmsg, 64 per batch) into a temporary directory;
  * starts one echo backend on 127.0.0.1 and, per measurement, spawns the proxy exactly as
    dockerd does (argv `-proto udp -host-ip 127.0.0.1 -host-port N -container-ip 127.0.0.1
    -container-port N`, stdio /dev/null, fd 3 handshake pipe) through tests/e2e/pp.py;
  * runs every scenario for every kind in rotating order (run r starts with kind r mod n) so
    slow drifts of the machine hit all kinds alike; reports medians (and min-max) of --runs;
  * CPU: utime+stime of the proxy process from /proc/PID/stat (10 ms ticks) over the
    measurement; "CPU/dgram" = CPU / (2 x echoes received), i.e. per datagram forwarded
    (each echo crosses the proxy twice).

Scenarios (64-byte datagrams; udpload keeps its sockets connected, so replies from a wrong
source address would count as lost):
  closed-1x32   1 flow, at most 32 datagrams in flight: echo rate
  closed-8x32   8 flows, 32 in flight each
  open-8@RATE   8 flows sending RATE datagrams/s in all, whatever comes back (open loop):
                loss under load, the complaint about docker-proxy (--rates, default 50k and
                150k; at a rate the client and backend cannot carry on this machine the loss
                is theirs: see /proc/net/udp's drops column for which socket dropped)

Everything is bounded in time; every process is stopped at the end.
"""

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import pp  # noqa: E402

UDPLOAD_C = r"""
/* udpload HOST PORT FLOWS SECS SIZE WINDOW RATE
 * FLOWS connected UDP sockets send SIZE-byte datagrams for SECS seconds with sendmmsg and
 * read replies with recvmmsg. RATE 0: closed loop, at most WINDOW in flight per flow (a
 * window without a reply for 20 ms is written off as lost). RATE > 0: open loop, RATE
 * datagrams/s in all, in bursts of at most WINDOW per flow. Then 300 ms to drain.
 * Prints: sent= recv= secs= rate= loss_pct= */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define B 64
static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static char rbuf[B][2048], sbuf[2048];
static struct mmsghdr rm[B], sm[B];
static struct iovec riov[B], siov;

static long drain(int fd)
{
	long got = 0;
	for (int round = 0; round < 64; round++) {
		for (int i = 0; i < B; i++) {
			riov[i] = (struct iovec){ rbuf[i], sizeof(rbuf[i]) };
			rm[i].msg_hdr = (struct msghdr){ .msg_iov = &riov[i], .msg_iovlen = 1 };
		}
		int n = recvmmsg(fd, rm, B, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		got += n;
		if (n < B)
			break;
	}
	return got;
}

int main(int argc, char **argv)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	if (argc != 8)
		return 2;
	int flows = atoi(argv[3]);
	double secs = atof(argv[4]);
	size_t size = (size_t)atol(argv[5]);
	long window = atol(argv[6]);
	double rate = atof(argv[7]);
	if (flows < 1 || flows > 1024 || size < 8 || size > 2048 || window < 1 || window > B)
		return 2;
	if (inet_pton(AF_INET, argv[1], &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		((struct sockaddr_in *)&ss)->sin_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)atoi(argv[2]));
		len = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, argv[1], &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)atoi(argv[2]));
		len = sizeof(struct sockaddr_in6);
	} else {
		return 2;
	}
	struct pollfd *pfd = calloc((size_t)flows, sizeof(*pfd));
	long *out = calloc((size_t)flows, sizeof(*out));
	uint64_t *last = calloc((size_t)flows, sizeof(*last));
	for (int i = 0; i < flows; i++) {
		int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), sz = 4 << 20;
		setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
		if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
			perror("connect");
			return 1;
		}
		pfd[i] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}
	memset(sbuf, 'u', sizeof(sbuf));
	siov = (struct iovec){ sbuf, size };
	for (int i = 0; i < B; i++)
		sm[i].msg_hdr = (struct msghdr){ .msg_iov = &siov, .msg_iovlen = 1 };
	long sent = 0, recvd = 0;
	uint64_t t0 = now_ns(), t_stop = t0 + (uint64_t)(secs * 1e9), now;
	for (int i = 0; i < flows; i++)
		last[i] = t0;
	int rr = 0;
	while ((now = now_ns()) < t_stop) {
		if (rate > 0) {
			long due = (long)((double)(now - t0) / 1e9 * rate) - sent;
			for (int k = 0; due > 0 && k < flows; k++) {
				int i = rr++ % flows, n = (int)(due < window ? due : window);
				int r = sendmmsg(pfd[i].fd, sm, (unsigned)n, MSG_DONTWAIT);
				if (r > 0) {
					sent += r;
					due -= r;
				} else {
					sent += n; /* the client's own buffer is full: counts as lost */
					due -= n;
				}
			}
		} else {
			for (int i = 0; i < flows; i++) {
				if (out[i] >= window && now - last[i] > 20000000ull) {
					out[i] = 0;
					last[i] = now;
				}
				if (out[i] < window) {
					int r = sendmmsg(pfd[i].fd, sm, (unsigned)(window - out[i]), MSG_DONTWAIT);
					if (r > 0) {
						if (out[i] == 0)
							last[i] = now;
						out[i] += r;
						sent += r;
					}
				}
			}
		}
		poll(pfd, (nfds_t)flows, rate > 0 ? 0 : 1);
		for (int i = 0; i < flows; i++) {
			long n = drain(pfd[i].fd);
			if (n > 0) {
				recvd += n;
				out[i] = out[i] > n ? out[i] - n : 0;
				last[i] = now;
			}
		}
	}
	double took = (double)(now_ns() - t0) / 1e9;
	long in_time = recvd;
	uint64_t t_drain = now_ns() + 300000000ull;
	while (now_ns() < t_drain) {
		poll(pfd, (nfds_t)flows, 20);
		for (int i = 0; i < flows; i++)
			recvd += drain(pfd[i].fd);
	}
	printf("sent=%ld recv=%ld secs=%.3f rate=%.1f loss_pct=%.3f\n", sent, recvd, took,
	       (double)in_time / took, sent ? 100.0 * (double)(sent - recvd) / (double)sent : 100.0);
	return 0;
}
"""

KINDS = ["direct", "portproxy", "docker-proxy"]
_cleanup = []


@atexit.register
def _cleanup_all():
    for fn in reversed(_cleanup):
        try:
            fn()
        except Exception:
            pass


def build(tmp):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("udp_echo.py: no C compiler (cc) found")
    src = os.path.join(tmp, "udpload.c")
    with open(src, "w") as f:
        f.write(UDPLOAD_C)
    load = os.path.join(tmp, "udpload")
    ppb = os.path.join(tmp, "ppbtool")
    subprocess.run([cc, "-O2", "-o", load, src], check=True)
    subprocess.run([cc, "-O2", "-o", ppb, os.path.join(HERE, "ppbtool.c")], check=True)
    return load, ppb


def start_backend(ppb):
    proc = subprocess.Popen([ppb, "serve", "127.0.0.1", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _cleanup.append(lambda: (proc.terminate(), proc.wait(5)))
    line = proc.stdout.readline().decode()
    m = re.search(r"udp (\d+)", line)
    if not m:
        sys.exit("udp_echo.py: backend did not start: %r" % line)
    return int(m.group(1))


def udp_drops():
    """{inode: drops} of every UDP socket in this network namespace (/proc/net/udp[6])."""
    out = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    out[int(parts[9])] = int(parts[-1])
        except (OSError, ValueError, IndexError):
            pass
    return out


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


def measure(kind, binaries, load, backend_port, args):
    """One measurement. Returns dict: rate, loss, cpu_us (per forwarded datagram) or None,
    proxy_drops (datagrams the kernel dropped at the proxy's own sockets: full receive
    buffers), raw."""
    proxy = None
    port = backend_port
    if kind != "direct":
        for _ in range(3):
            port = pp.free_port(type=socket.SOCK_DGRAM)
            proxy = pp.spawn(pp.proxy_args(port, "127.0.0.1", backend_port, proto="udp"),
                             binary=binaries[kind])
            if proxy.status == "0":
                break
            proxy.cleanup()
            proxy = None
        if proxy is None:
            sys.exit("udp_echo.py: %s did not start" % kind)
    try:
        cpu0 = proxy.cpu_seconds() if proxy else 0.0
        r = subprocess.run([load, "127.0.0.1", str(port)] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=60)
        cpu = (proxy.cpu_seconds() - cpu0) if proxy else None
        # The proxy's sockets are all new (flows live 90 s): their drops are this run's.
        drops = udp_drops()
        proxy_drops = sum(drops.get(i, 0) for i in socket_inodes(proxy.pid)) if proxy else None
    finally:
        if proxy:
            proxy.stop()
            proxy.cleanup()
    kv = dict(x.split("=") for x in r.stdout.split())
    recv = int(kv["recv"])
    return {"rate": float(kv["rate"]), "loss": float(kv["loss_pct"]),
            "cpu_us": (cpu * 1e6 / (2 * recv)) if (cpu is not None and recv) else None,
            "proxy_drops": (100.0 * proxy_drops / int(kv["sent"]))
            if proxy_drops is not None and int(kv["sent"]) else None,
            "raw": r.stdout.strip()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--portproxy", default=os.environ.get(
        "PORTPROXY", os.path.join(HERE, "..", "build", "portproxy")))
    ap.add_argument("--docker-proxy", default=os.environ.get("DOCKER_PROXY",
                                                             "/usr/sbin/docker-proxy"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--secs", type=float, default=2.0)
    ap.add_argument("--rates", default="50000,150000",
                    help="open-loop datagrams/s, comma-separated")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                    help="one more proxy binary to compare (same CLI), e.g. another build")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    binaries = {"portproxy": os.path.abspath(a.portproxy), "docker-proxy": a.docker_proxy}
    kinds = list(KINDS)
    for extra in a.also:
        name, _, path = extra.partition("=")
        binaries[name] = os.path.abspath(path)
        kinds.append(name)
    for k, b in binaries.items():
        if not os.access(b, os.X_OK):
            sys.exit("udp_echo.py: %s not found at %s" % (k, b))
    pp.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="udp-echo-")
    _cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    load, ppb = build(tmp)
    backend_port = start_backend(ppb)

    scenarios = [("closed-1x32", [1, a.secs, 64, 32, 0]),
                 ("closed-8x32", [8, a.secs, 64, 32, 0])]
    for rate in (int(x) for x in a.rates.split(",") if x.strip()):
        scenarios.append(("open-8@%dk" % (rate // 1000), [8, a.secs, 64, 32, rate]))
    results = {(s, k): [] for s, _ in scenarios for k in kinds}
    for run in range(a.runs):
        order = kinds[run % len(kinds):] + kinds[:run % len(kinds)]
        for s, args in scenarios:
            for k in order:
                m = measure(k, binaries, load, backend_port, args)
                results[(s, k)].append(m)
                if a.verbose:
                    print("run %d %-12s %-12s %s cpu_us=%s proxy_drops_pct=%s"
                          % (run, s, k, m["raw"], m["cpu_us"], m["proxy_drops"]),
                          file=sys.stderr)

    def med(vals, fmt):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        return (fmt % statistics.median(vals)) + " (" + (fmt % min(vals)) + "-" + \
            (fmt % max(vals)) + ")"

    print("UDP 64-byte echo, %d interleaved runs of %.1f s, medians (min-max); %s" %
          (a.runs, a.secs, time.strftime("%Y-%m-%d %H:%M")))
    print("| scenario | path | echoes/s | loss % | of which dropped at the proxy's sockets % "
          "| proxy CPU per datagram (us) |")
    print("|---|---|---|---|---|---|")
    for s, _ in scenarios:
        for k in kinds:
            rs = results[(s, k)]
            print("| %s | %s | %s | %s | %s | %s |" % (
                s, k, med([r["rate"] for r in rs], "%.0f"), med([r["loss"] for r in rs], "%.2f"),
                med([r["proxy_drops"] for r in rs], "%.2f"),
                med([r["cpu_us"] for r in rs], "%.2f")))


if __name__ == "__main__":
    main()
