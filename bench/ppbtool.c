// SPDX-License-Identifier: MIT
/*
 * ppbtool - echo backend and load generators for the portproxy benchmark.
 *
 * Python would be the bottleneck for microsecond round trips and tens of
 * thousands of connections per second on a 2-vCPU machine, so the parts
 * that sit on the measured path are in C.  Everything is bounded in time.
 *
 *   ppbtool serve ADDR SIZE
 *	TCP echo, TCP echo-once-then-close (for connect/request/close) and UDP
 *	echo, each bound to port 0 on ADDR.  Prints "tcp P crr P udp P" once
 *	listening, then runs until SIGTERM/SIGINT.  The crr listener closes a
 *	connection after echoing SIZE bytes, so TIME_WAIT lands on the server
 *	side and the client never runs out of ephemeral ports.
 *   ppbtool rr HOST PORT COUNT SIZE MAXSEC
 *	One connection, COUNT round trips of SIZE bytes (after 200 warm-up
 *	ones); prints n, p50, p90, p99, mean, min in microseconds.
 *   ppbtool crr HOST PORT CONC SECS SIZE
 *	CONC concurrent loops of connect, send SIZE, read SIZE, read EOF,
 *	close; prints completed connections, errors and the rate.
 *   ppbtool udp HOST PORT FLOWS SECS SIZE WINDOW [RATE]
 *	FLOWS connected UDP sockets, each keeping at most WINDOW datagrams
 *	in flight; prints sent, received, rate and loss.  With RATE > 0 the
 *	load is open loop instead: RATE datagrams/s in all, sent on time
 *	whatever comes back (bursts of at most WINDOW per flow), which is
 *	how a proxy that cannot keep up loses datagrams.
 *   ppbtool hold HOST PORT COUNT SIZE
 *	Opens COUNT connections, echoes SIZE bytes on each, prints
 *	"ready OK ERRORS", then holds them until standard input closes.
 *   ppbtool relay ADDR LPORT HOST PORT
 *	The floor of a userland TCP proxy, for comparison only: listens on
 *	ADDR:LPORT (0: any; prints "port P"), then relays each connection to
 *	HOST:PORT with blocking splice() through a 1 MiB pipe, one thread
 *	per direction.  No event loop, no bookkeeping, no limits: the least
 *	work a process can do to move bytes between two sockets.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXBUF 65536

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "ppbtool: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void resolve(const char *host, const char *port, int type, struct sockaddr_storage *ss,
		    socklen_t *len)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = type,
				  .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
	struct addrinfo *res;
	int rc = getaddrinfo(host, port, &hints, &res);

	if (rc) {
		fprintf(stderr, "ppbtool: %s %s: %s\n", host, port, gai_strerror(rc));
		exit(2);
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		die("getsockname");
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void set_nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Blocking-style full write on a possibly non-blocking socket, bounded to 2 s. */
static int write_all(int fd, const char *buf, size_t len)
{
	uint64_t deadline = now_ns() + 2000000000ull;

	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && now_ns() < deadline) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };

			poll(&p, 1, 100);
			continue;
		}
		return -1;
	}
	return 0;
}

/* Read exactly len bytes, bounded by deadline; 0 ok, -1 error/EOF/timeout. */
static int read_all(int fd, char *buf, size_t len, uint64_t deadline)
{
	while (len) {
		ssize_t n = recv(fd, buf, len, 0);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n == 0)
			return -1;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int64_t left = (int64_t)(deadline - now_ns()) / 1000000;

			if (left <= 0)
				return -1;
			poll(&p, 1, (int)(left > 100 ? 100 : left + 1));
			continue;
		}
		return -1;
	}
	return 0;
}

/* ---- serve ---- */

enum tag { T_ECHO_L, T_CRR_L, T_UDP, T_ECHO, T_CRR };

struct conn {
	enum tag tag;
	int fd;
	size_t got;
};

static int listen_on(const char *host, const char *port, int type)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;
	int fd;

	resolve(host, port, type, &ss, &len);
	fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len))
		die("bind");
	if (type == SOCK_STREAM && listen(fd, 4096))
		die("listen");
	if (type == SOCK_DGRAM) {
		int sz = 4 << 20;

		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)))
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)))
			setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	return fd;
}

static void ep_add(int ep, struct conn *c)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev))
		die("epoll_ctl");
}

static void conn_close(struct conn *c)
{
	close(c->fd); /* also removes it from the epoll set */
	free(c);
}

static void udp_echo(int fd)
{
	enum { B = 64 };
	static char bufs[B][2048];
	static struct mmsghdr msgs[B];
	static struct iovec iov[B];
	static struct sockaddr_storage from[B];

	for (int round = 0; round < 64; round++) {
		int n;

		for (int i = 0; i < B; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof(bufs[i]);
			msgs[i].msg_hdr = (struct msghdr){ .msg_name = &from[i],
							   .msg_namelen = sizeof(from[i]),
							   .msg_iov = &iov[i],
							   .msg_iovlen = 1 };
		}
		n = recvmmsg(fd, msgs, B, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		for (int i = 0; i < n; i++)
			iov[i].iov_len = msgs[i].msg_len;
		sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT);
		if (n < B)
			return;
	}
}

static int cmd_serve(int argc, char **argv)
{
	static char buf[MAXBUF];
	struct conn lst[3] = { { T_ECHO_L, -1, 0 }, { T_CRR_L, -1, 0 }, { T_UDP, -1, 0 } };
	struct epoll_event evs[256];
	size_t size;
	int ep;

	if (argc != 2)
		return 2;
	size = (size_t)atol(argv[1]);
	lst[0].fd = listen_on(argv[0], "0", SOCK_STREAM);
	lst[1].fd = listen_on(argv[0], "0", SOCK_STREAM);
	lst[2].fd = listen_on(argv[0], "0", SOCK_DGRAM);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	for (int i = 0; i < 3; i++)
		ep_add(ep, &lst[i]);
	printf("tcp %d crr %d udp %d\n", port_of(lst[0].fd), port_of(lst[1].fd),
	       port_of(lst[2].fd));
	fflush(stdout);

	while (!stop) {
		int n = epoll_wait(ep, evs, 256, 500);

		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			ssize_t r;

			switch (c->tag) {
			case T_ECHO_L:
			case T_CRR_L:
				for (int k = 0; k < 64; k++) {
					int fd = accept4(c->fd, NULL, NULL,
							 SOCK_NONBLOCK | SOCK_CLOEXEC);
					struct conn *nc;

					if (fd < 0)
						break;
					set_nodelay(fd);
					nc = calloc(1, sizeof(*nc));
					if (!nc)
						die("calloc");
					nc->tag = c->tag == T_ECHO_L ? T_ECHO : T_CRR;
					nc->fd = fd;
					ep_add(ep, nc);
				}
				break;
			case T_UDP:
				udp_echo(c->fd);
				break;
			case T_ECHO:
			case T_CRR:
				r = recv(c->fd, buf, sizeof(buf), 0);
				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					break;
				if (r <= 0 || write_all(c->fd, buf, (size_t)r)) {
					conn_close(c);
					break;
				}
				c->got += (size_t)r;
				if (c->tag == T_CRR && c->got >= size)
					conn_close(c);
				break;
			}
		}
	}
	return 0;
}

/* ---- clients ---- */

static int connect_to(struct sockaddr_storage *ss, socklen_t len, bool nonblock)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0),
			0);

	if (fd < 0)
		return -1;
	set_nodelay(fd);
	if (connect(fd, (struct sockaddr *)ss, len) && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmd_rr(int argc, char **argv)
{
	static char buf[MAXBUF];
	struct sockaddr_storage ss;
	socklen_t len;
	long count, size;
	double maxsec, sum = 0;
	uint64_t *lat, t_end;
	long n = 0;
	int fd;

	if (argc != 5)
		return 2;
	count = atol(argv[2]);
	size = atol(argv[3]);
	maxsec = atof(argv[4]);
	if (count < 1 || size < 1 || size > MAXBUF)
		return 2;
	resolve(argv[0], argv[1], SOCK_STREAM, &ss, &len);
	fd = connect_to(&ss, len, false);
	if (fd < 0)
		die("connect");
	lat = calloc((size_t)count, sizeof(*lat));
	if (!lat)
		die("calloc");
	memset(buf, 'x', (size_t)size);
	t_end = now_ns() + (uint64_t)(maxsec * 1e9);
	for (long i = -200; i < count && now_ns() < t_end; i++) {
		uint64_t t0 = now_ns();

		if (write_all(fd, buf, (size_t)size) ||
		    read_all(fd, buf, (size_t)size, t0 + 2000000000ull)) {
			fprintf(stderr, "ppbtool rr: connection failed after %ld round trips\n", n);
			return 1;
		}
		if (i >= 0)
			lat[n++] = now_ns() - t0;
	}
	close(fd);
	if (n == 0)
		return 1;
	qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
	for (long i = 0; i < n; i++)
		sum += (double)lat[i];
	printf("n=%ld p50_us=%.2f p90_us=%.2f p99_us=%.2f mean_us=%.2f min_us=%.2f\n", n,
	       lat[n / 2] / 1e3, lat[n * 90 / 100] / 1e3, lat[n * 99 / 100] / 1e3,
	       sum / (double)n / 1e3, lat[0] / 1e3);
	return 0;
}

enum crr_state { C_IDLE, C_CONNECTING, C_READING, C_EOF };

struct crr {
	int fd;
	enum crr_state st;
	size_t got;
	uint64_t t0;
};

static int cmd_crr(int argc, char **argv)
{
	static char buf[MAXBUF], msg[MAXBUF];
	struct sockaddr_storage ss;
	struct epoll_event evs[256];
	struct crr *c;
	socklen_t len;
	long conc, done = 0, errs = 0, active = 0;
	double secs;
	size_t size;
	uint64_t t_start, t_stop, t_last_scan;
	int ep;

	if (argc != 5)
		return 2;
	conc = atol(argv[2]);
	secs = atof(argv[3]);
	size = (size_t)atol(argv[4]);
	if (conc < 1 || conc > 4096 || size < 1 || size > MAXBUF)
		return 2;
	resolve(argv[0], argv[1], SOCK_STREAM, &ss, &len);
	c = calloc((size_t)conc, sizeof(*c));
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (!c || ep < 0)
		die("setup");
	memset(msg, 'x', size);
	t_start = now_ns();
	t_stop = t_start + (uint64_t)(secs * 1e9);
	t_last_scan = t_start;

	for (;;) {
		uint64_t now = now_ns();
		bool running = now < t_stop;
		int n;

		/* start new connections while the clock runs */
		for (long i = 0; running && i < conc; i++) {
			struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = (uint64_t)i };

			if (c[i].st != C_IDLE)
				continue;
			c[i].fd = connect_to(&ss, len, true);
			if (c[i].fd < 0) {
				errs++;
				continue;
			}
			c[i].st = C_CONNECTING;
			c[i].got = 0;
			c[i].t0 = now;
			epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
			active++;
		}
		if (!running && (active == 0 || now > t_stop + 2000000000ull))
			break;
		/* fail connections stuck for more than 2 s */
		if (now - t_last_scan > 100000000ull) {
			t_last_scan = now;
			for (long i = 0; i < conc; i++) {
				if (c[i].st != C_IDLE && now - c[i].t0 > 2000000000ull) {
					close(c[i].fd);
					c[i].st = C_IDLE;
					errs++;
					active--;
				}
			}
		}
		n = epoll_wait(ep, evs, 256, 50);
		for (int k = 0; k < n; k++) {
			struct crr *x = &c[evs[k].data.u64];
			bool fail = false, finished = false;

			if (x->st == C_CONNECTING) {
				int err = 0;
				socklen_t el = sizeof(err);
				struct epoll_event ev = { .events = EPOLLIN,
							  .data.u64 = evs[k].data.u64 };

				getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err || write_all(x->fd, msg, size)) {
					fail = true;
				} else {
					x->st = C_READING;
					epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
				}
			} else if (x->st == C_READING || x->st == C_EOF) {
				for (;;) {
					ssize_t r = recv(x->fd, buf, sizeof(buf), 0);

					if (r > 0) {
						x->got += (size_t)r;
						continue;
					}
					if (r == 0) {
						if (x->got >= size)
							finished = true;
						else
							fail = true;
					} else if (errno != EAGAIN && errno != EINTR) {
						fail = true;
					}
					break;
				}
			}
			if (fail || finished) {
				close(x->fd);
				x->st = C_IDLE;
				active--;
				if (fail)
					errs++;
				else if (x->t0 < t_stop)
					done++;
			}
		}
	}
	secs = (double)(t_stop - t_start) / 1e9;
	printf("conns=%ld errors=%ld secs=%.3f rate=%.1f\n", done, errs, secs, (double)done / secs);
	return 0;
}

static int cmd_udp(int argc, char **argv)
{
	static char buf[MAXBUF];
	struct sockaddr_storage ss;
	struct pollfd *pfd;
	socklen_t len;
	long flows, window, *outstanding, next_flow = 0;
	uint64_t *last_rx;
	long sent = 0, recvd = 0, errs = 0;
	double secs, rate = 0;
	size_t size;
	uint64_t t_start, t_stop, t_drain;

	if (argc != 6 && argc != 7)
		return 2;
	flows = atol(argv[2]);
	secs = atof(argv[3]);
	size = (size_t)atol(argv[4]);
	window = atol(argv[5]);
	if (argc == 7)
		rate = atof(argv[6]);
	if (flows < 1 || flows > 1024 || size < 16 || size > 2048 || window < 1 || rate < 0)
		return 2;
	resolve(argv[0], argv[1], SOCK_DGRAM, &ss, &len);
	pfd = calloc((size_t)flows, sizeof(*pfd));
	outstanding = calloc((size_t)flows, sizeof(*outstanding));
	last_rx = calloc((size_t)flows, sizeof(*last_rx));
	if (!pfd || !outstanding || !last_rx)
		die("calloc");
	memset(buf, 'u', size);
	for (long i = 0; i < flows; i++) {
		int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int sz = 1 << 20;

		if (fd < 0)
			die("socket");
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		if (connect(fd, (struct sockaddr *)&ss, len))
			die("connect");
		pfd[i] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}
	t_start = now_ns();
	t_stop = t_start + (uint64_t)(secs * 1e9);
	for (long i = 0; i < flows; i++)
		last_rx[i] = t_start;
	for (;;) {
		uint64_t now = now_ns();

		if (now >= t_stop)
			break;
		if (rate > 0) {
			/* open loop: what is due by now goes out now, flow by flow */
			long due = (long)((double)(now - t_start) / 1e9 * rate) - sent;

			for (long k = 0; due > 0 && k < flows; k++) {
				long i = next_flow++ % flows;

				for (long b = 0; due > 0 && b < window; b++, due--) {
					memcpy(buf, &sent, sizeof(sent));
					/* a datagram the client's own buffer refuses is lost too */
					if (send(pfd[i].fd, buf, size, 0) < 0 && errno != EAGAIN &&
					    errno != ENOBUFS)
						errs++;
					sent++;
				}
			}
		}
		for (long i = 0; rate == 0 && i < flows; i++) {
			/* a window with no reply for 20 ms is written off as lost */
			if (outstanding[i] >= window && now - last_rx[i] > 20000000ull) {
				outstanding[i] = 0;
				last_rx[i] = now;
			}
			while (outstanding[i] < window) {
				memcpy(buf, &sent, sizeof(sent));
				if (send(pfd[i].fd, buf, size, 0) < 0) {
					if (errno != EAGAIN && errno != ENOBUFS)
						errs++;
					break;
				}
				sent++;
				if (outstanding[i]++ == 0)
					last_rx[i] = now;
			}
		}
		poll(pfd, (nfds_t)flows, rate > 0 ? 1 : 5);
		for (long i = 0; i < flows; i++) {
			for (int k = 0; k < 256; k++) {
				ssize_t r = recv(pfd[i].fd, buf, sizeof(buf), 0);

				if (r < 0) {
					if (errno != EAGAIN && errno != EINTR)
						errs++;
					break;
				}
				recvd++;
				if (outstanding[i] > 0)
					outstanding[i]--;
				last_rx[i] = now;
			}
		}
	}
	/* drain late replies for up to 200 ms; they count as received, not as rate */
	secs = (double)(now_ns() - t_start) / 1e9;
	long recvd_in_time = recvd;

	t_drain = now_ns() + 200000000ull;
	while (now_ns() < t_drain) {
		poll(pfd, (nfds_t)flows, 20);
		for (long i = 0; i < flows; i++)
			while (recv(pfd[i].fd, buf, sizeof(buf), 0) >= 0)
				recvd++;
	}
	printf("sent=%ld recv=%ld errors=%ld secs=%.3f rate=%.1f loss_pct=%.3f\n", sent, recvd,
	       errs, secs, (double)recvd_in_time / secs,
	       sent ? 100.0 * (double)(sent - recvd) / (double)sent : 100.0);
	return 0;
}

static int cmd_hold(int argc, char **argv)
{
	static char buf[MAXBUF];
	struct sockaddr_storage ss;
	socklen_t len;
	long count, ok = 0, errs = 0;
	size_t size;
	int *fds;

	if (argc != 4)
		return 2;
	count = atol(argv[2]);
	size = (size_t)atol(argv[3]);
	if (count < 1 || count > 100000 || size < 1 || size > MAXBUF)
		return 2;
	resolve(argv[0], argv[1], SOCK_STREAM, &ss, &len);
	fds = calloc((size_t)count, sizeof(*fds));
	if (!fds)
		die("calloc");
	memset(buf, 'h', size);
	for (long i = 0; i < count; i++) {
		int fd = connect_to(&ss, len, false);

		if (fd < 0 || write_all(fd, buf, size) ||
		    read_all(fd, buf, size, now_ns() + 2000000000ull)) {
			if (fd >= 0)
				close(fd);
			errs++;
			continue;
		}
		fds[ok++] = fd;
	}
	printf("ready %ld %ld\n", ok, errs);
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0 && !stop)
		;
	for (long i = 0; i < ok; i++)
		close(fds[i]);
	return 0;
}

/* ---- relay ---- */

struct relay_pair {
	int fd[2];         /* client, backend */
	atomic_int halves; /* directions still running */
};

struct relay_half {
	struct relay_pair *pair;
	int from, to;
};

static void *relay_half(void *arg)
{
	struct relay_half *h = arg;
	struct relay_pair *pair = h->pair;
	int p[2];

	if (pipe2(p, O_CLOEXEC) == 0) {
		fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
		ssize_t n;

		/* until EOF or an error on either side */
		while ((n = splice(h->from, NULL, p[1], NULL, 1 << 20, 0)) > 0) {
			while (n > 0) {
				ssize_t m = splice(p[0], NULL, h->to, NULL, (size_t)n, 0);

				if (m <= 0)
					break;
				n -= m;
			}
			if (n > 0)
				break;
		}
		close(p[0]);
		close(p[1]);
	}
	shutdown(h->to, SHUT_WR);
	free(h);
	if (atomic_fetch_sub(&pair->halves, 1) == 1) {
		close(pair->fd[0]);
		close(pair->fd[1]);
		free(pair);
	}
	return NULL;
}

static int cmd_relay(int argc, char **argv)
{
	struct sockaddr_storage ss;
	pthread_attr_t attr;
	socklen_t len;
	int lfd, fl;

	if (argc != 4)
		return 2;
	resolve(argv[2], argv[3], SOCK_STREAM, &ss, &len);
	lfd = listen_on(argv[0], argv[1], SOCK_STREAM);
	fl = fcntl(lfd, F_GETFL);
	fcntl(lfd, F_SETFL, fl & ~O_NONBLOCK);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 64 << 10);
	printf("port %d\n", port_of(lfd));
	fflush(stdout);
	while (!stop) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		struct relay_pair *pair;
		int bfd;

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept4");
		}
		set_nodelay(cfd);
		bfd = connect_to(&ss, len, false);
		pair = calloc(1, sizeof(*pair));
		if (bfd < 0 || !pair) {
			close(cfd);
			if (bfd >= 0)
				close(bfd);
			free(pair);
			continue;
		}
		pair->fd[0] = cfd;
		pair->fd[1] = bfd;
		atomic_init(&pair->halves, 2);
		for (int d = 0; d < 2; d++) {
			struct relay_half *h = malloc(sizeof(*h));
			pthread_t t;

			if (!h)
				die("malloc");
			*h = (struct relay_half){ pair, pair->fd[d], pair->fd[!d] };
			if (pthread_create(&t, &attr, relay_half, h)) {
				errno = EAGAIN;
				die("pthread_create");
			}
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (argc >= 2) {
		int rc = -1;

		if (!strcmp(argv[1], "serve"))
			rc = cmd_serve(argc - 2, argv + 2);
		else if (!strcmp(argv[1], "rr"))
			rc = cmd_rr(argc - 2, argv + 2);
		else if (!strcmp(argv[1], "crr"))
			rc = cmd_crr(argc - 2, argv + 2);
		else if (!strcmp(argv[1], "udp"))
			rc = cmd_udp(argc - 2, argv + 2);
		else if (!strcmp(argv[1], "hold"))
			rc = cmd_hold(argc - 2, argv + 2);
		else if (!strcmp(argv[1], "relay"))
			rc = cmd_relay(argc - 2, argv + 2);
		if (rc != 2 && rc != -1)
			return rc;
	}
	fprintf(stderr, "usage: ppbtool serve ADDR SIZE | rr HOST PORT COUNT SIZE MAXSEC |\n"
			"       crr HOST PORT CONC SECS SIZE |\n"
			"       udp HOST PORT FLOWS SECS SIZE WINDOW [RATE] |\n"
			"       hold HOST PORT COUNT SIZE | relay ADDR LPORT HOST PORT\n");
	return 2;
}
