/*
 * ppecho: a tiny TCP + UDP echo server (and client) for the end-to-end suites.
 *
 * Single file, libc only, so it can be linked statically and dropped into a container
 * image built with `docker import` (tests/e2e/test_dockerd.py does that).
 *
 * Server:  ppecho [-4] PORT[-PORT]...
 *     Serves TCP and UDP echo on every port, on :: with IPV6_V6ONLY=0 (both families), or
 *     on 0.0.0.0 with -4 or where IPv6 is unavailable. Binds all UDP sockets, then listens
 *     on the TCP ports in the order given, then prints "ready\n".
 *     TCP: one forked child per connection; if the first bytes the client sends
 *     are "whoami\n", the server answers with one line describing the connection (below)
 *     and then echoes everything else; on EOF it shuts down its side after echoing all.
 *     UDP: a datagram "whoami" (optionally followed by "\n") gets the description line,
 *     every other datagram is echoed back to its sender.
 *
 *     SIGTERM and SIGINT end it at once (as a container's PID 1 it would ignore them).
 *
 *     The description line:  "peer=ADDR:PORT local=ADDR:PORT proto=tcp|udp\n"
 *     (IPv4-mapped IPv6 addresses are shown as plain IPv4; IPv6 addresses in brackets).
 *
 * Client:  ppecho -c tcp|udp HOST PORT [NBYTES [hold]]
 *     Connects (UDP: a *connected* socket, so a reply from any other address is dropped by
 *     the kernel), asks "whoami", prints the server's line prefixed with "reply " and its own
 *     address as "self=ADDR:PORT", then, if NBYTES > 0, sends NBYTES of patterned data (TCP:
 *     then half-closes and reads everything back; UDP: one datagram, at most 60000 bytes) and
 *     checks the echo. With "hold" it waits for EOF on stdin right after printing the reply
 *     (the connection stays open meanwhile, so a test can look at who holds its sockets).
 *     Exit 0 when all went well, 1 on a mismatch or timeout, 2 on errors.
 *     Every step is bounded (SO_RCVTIMEO/SO_SNDTIMEO and an alarm()).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_SOCKS 256
#define WHOAMI "whoami"
#define CLIENT_DEADLINE_S 20

static void fmt_addr(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		snprintf(out, outlen, "%s:%u", host, port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		port = ntohs(sin6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], host, sizeof(host));
			snprintf(out, outlen, "%s:%u", host, port);
		} else {
			inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
			snprintf(out, outlen, "[%s]:%u", host, port);
		}
	} else {
		snprintf(out, outlen, "?:0");
	}
}

static int describe(int fd, const struct sockaddr_storage *peer, const char *proto, char *out,
		    size_t outlen)
{
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	char p[80], l[80];

	memset(&local, 0, sizeof(local));
	if (getsockname(fd, (struct sockaddr *)&local, &len) < 0)
		local.ss_family = AF_UNSPEC;
	fmt_addr(peer, p, sizeof(p));
	fmt_addr(&local, l, sizeof(l));
	return snprintf(out, outlen, "peer=%s local=%s proto=%s\n", p, l, proto);
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- server ------------------------------------------------------------------------------ */

static void serve_tcp_conn(int fd)
{
	static char buf[65536];
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	int first = 1, one = 1;

	memset(&peer, 0, sizeof(peer));
	getpeername(fd, (struct sockaddr *)&peer, &plen);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (n == 0) {
			shutdown(fd, SHUT_WR);
			break;
		}
		size_t off = 0;
		if (first && (size_t)n >= strlen(WHOAMI "\n") &&
		    memcmp(buf, WHOAMI "\n", strlen(WHOAMI "\n")) == 0) {
			char line[256];
			int len = describe(fd, &peer, "tcp", line, sizeof(line));
			if (write_all(fd, line, (size_t)len) < 0)
				break;
			off = strlen(WHOAMI "\n");
		}
		first = 0;
		if ((size_t)n > off && write_all(fd, buf + off, (size_t)n - off) < 0)
			break;
	}
	close(fd);
}

static void serve_udp(int fd)
{
	static char buf[65536];
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&peer, &plen);

	if (n < 0)
		return;
	if ((n == 6 || n == 7) && memcmp(buf, WHOAMI, 6) == 0 && (n == 6 || buf[6] == '\n')) {
		char line[256];
		int len = describe(fd, &peer, "udp", line, sizeof(line));
		sendto(fd, line, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&peer, plen);
		return;
	}
	sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&peer, plen);
}

static int bind_one(int family, int type, unsigned port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1, zero = 0;
	int fd = socket(family, type | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = in6addr_any;
		sin6->sin6_port = htons((unsigned short)port);
		len = sizeof(*sin6);
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_ANY);
		sin->sin_port = htons((unsigned short)port);
		len = sizeof(*sin);
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 1024) < 0)) {
		close(fd);
		return -1;
	}
	return fd;
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static int server(int argc, char **argv)
{
	struct pollfd pfd[MAX_SOCKS];
	int is_tcp[MAX_SOCKS];
	int nfds = 0, v4only = 0;

	signal(SIGCHLD, SIG_IGN); /* children reap themselves */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term); /* as PID 1 in a container nothing is handled by default */
	signal(SIGINT, on_term);
	static unsigned ports[MAX_SOCKS];
	int nports = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-4") == 0) {
			v4only = 1;
			continue;
		}
		char *end;
		unsigned long lo = strtoul(argv[i], &end, 10), hi = lo;
		if (*end == '-')
			hi = strtoul(end + 1, &end, 10);
		if (*end != '\0' || lo == 0 || hi > 65535 || hi < lo) {
			fprintf(stderr, "ppecho: bad port %s\n", argv[i]);
			return 2;
		}
		for (unsigned long p = lo; p <= hi; p++) {
			if (nports == MAX_SOCKS / 2) {
				fprintf(stderr, "ppecho: too many ports\n");
				return 2;
			}
			ports[nports++] = (unsigned)p;
		}
	}
	/* UDP first, then TCP in order: once the last TCP port accepts connections, every
	 * socket is in place (tests poll for that). */
	for (int t = 1; t >= 0; t--) {
		for (int i = 0; i < nports; i++) {
			int type = t == 0 ? SOCK_STREAM : SOCK_DGRAM;
			int fd = v4only ? -1 : bind_one(AF_INET6, type, ports[i]);
			if (fd < 0)
				fd = bind_one(AF_INET, type, ports[i]);
			if (fd < 0) {
				fprintf(stderr, "ppecho: cannot bind %s port %u: %s\n",
					t == 0 ? "tcp" : "udp", ports[i], strerror(errno));
				return 2;
			}
			pfd[nfds].fd = fd;
			pfd[nfds].events = POLLIN;
			is_tcp[nfds] = t == 0;
			nfds++;
		}
	}
	if (nfds == 0) {
		fprintf(stderr, "usage: ppecho [-4] PORT[-PORT]... | ppecho -c tcp|udp HOST PORT [NBYTES [hold]]\n");
		return 2;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int n = poll(pfd, (nfds_t)nfds, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("ppecho: poll");
			return 2;
		}
		for (int i = 0; i < nfds; i++) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			if (!is_tcp[i]) {
				serve_udp(pfd[i].fd);
				continue;
			}
			int c = accept4(pfd[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			pid_t pid = fork();
			if (pid == 0) {
				for (int j = 0; j < nfds; j++)
					close(pfd[j].fd);
				serve_tcp_conn(c);
				_exit(0);
			}
			close(c);
		}
	}
}

/* ---- client ------------------------------------------------------------------------------ */

static unsigned char pattern_byte(size_t i)
{
	return (unsigned char)((i * 131u + (i >> 8) * 7u + 11u) & 0xff);
}

static int client(const char *proto, const char *host, const char *port, long nbytes, int hold)
{
	struct sockaddr_storage dst;
	socklen_t dlen;
	int udp = strcmp(proto, "udp") == 0;
	struct timeval tv = {.tv_sec = udp ? 1 : 10, .tv_usec = 0};
	char line[512], *end;
	unsigned long portnum = strtoul(port, &end, 10);
	int fd;

	if (!udp && strcmp(proto, "tcp") != 0) {
		fprintf(stderr, "ppecho: proto must be tcp or udp\n");
		return 2;
	}
	if (*end != '\0' || portnum == 0 || portnum > 65535) {
		fprintf(stderr, "ppecho: bad port %s\n", port);
		return 2;
	}
	alarm(CLIENT_DEADLINE_S);
	/* numeric addresses only (no resolver in a static binary) */
	memset(&dst, 0, sizeof(dst));
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&dst)->sin_addr) == 1) {
		((struct sockaddr_in *)&dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&dst)->sin_port = htons((unsigned short)portnum);
		dlen = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&dst)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)&dst)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&dst)->sin6_port = htons((unsigned short)portnum);
		dlen = sizeof(struct sockaddr_in6);
	} else {
		fprintf(stderr, "ppecho: bad address %s\n", host);
		return 2;
	}
	fd = socket(dst.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&dst, dlen) < 0) {
		fprintf(stderr, "ppecho: connect %s %s: %s\n", host, port, strerror(errno));
		return 2;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	{
		struct sockaddr_storage self;
		socklen_t slen = sizeof(self);
		char s[80];
		memset(&self, 0, sizeof(self));
		getsockname(fd, (struct sockaddr *)&self, &slen);
		fmt_addr(&self, s, sizeof(s));
		printf("self=%s\n", s);
	}

	/* whoami */
	size_t got = 0;
	if (udp) {
		int ok = 0;
		for (int attempt = 0; attempt < 5 && !ok; attempt++) {
			if (send(fd, WHOAMI, strlen(WHOAMI), 0) < 0 && errno != ECONNREFUSED) {
				fprintf(stderr, "ppecho: send: %s\n", strerror(errno));
				return 2;
			}
			ssize_t n = recv(fd, line, sizeof(line) - 1, 0);
			if (n > 0) {
				got = (size_t)n;
				ok = 1;
			}
		}
		if (!ok) {
			fprintf(stderr, "ppecho: no udp whoami reply\n");
			return 1;
		}
	} else {
		if (write_all(fd, WHOAMI "\n", strlen(WHOAMI "\n")) < 0) {
			fprintf(stderr, "ppecho: send: %s\n", strerror(errno));
			return 2;
		}
		while (got < sizeof(line) - 1 && (got == 0 || line[got - 1] != '\n')) {
			ssize_t n = read(fd, line + got, 1); /* byte by byte: stop exactly at '\n' */
			if (n <= 0) {
				fprintf(stderr, "ppecho: whoami reply: %s\n", n < 0 ? strerror(errno) : "EOF");
				return 1;
			}
			got += (size_t)n;
		}
	}
	line[got] = '\0';
	printf("reply %s%s", line, (got && line[got - 1] == '\n') ? "" : "\n");
	fflush(stdout);
	if (hold) {
		char b[256];
		for (;;) {
			ssize_t r = read(0, b, sizeof(b));
			if (r > 0 || (r < 0 && errno == EINTR))
				continue;
			break;
		}
	}

	if (nbytes <= 0)
		return 0;
	if (udp && nbytes > 60000)
		nbytes = 60000;
	unsigned char *out = malloc((size_t)nbytes), *in = malloc((size_t)nbytes + 1);
	if (!out || !in)
		return 2;
	for (long i = 0; i < nbytes; i++)
		out[i] = pattern_byte((size_t)i);
	if (udp) {
		for (int attempt = 0; attempt < 5; attempt++) {
			send(fd, out, (size_t)nbytes, 0);
			ssize_t n = recv(fd, in, (size_t)nbytes + 1, 0);
			if (n == nbytes && memcmp(in, out, (size_t)nbytes) == 0) {
				printf("echo ok %ld\n", nbytes);
				return 0;
			}
			if (n > 0) {
				fprintf(stderr, "ppecho: udp echo mismatch (%zd bytes)\n", n);
				return 1;
			}
		}
		fprintf(stderr, "ppecho: no udp echo\n");
		return 1;
	}
	/* TCP: write everything, half-close, read everything back. The server echoes as it
	 * reads, so interleave to avoid both sides blocking on full buffers. */
	size_t sent = 0, recvd = 0;
	int wr_closed = 0;
	while (recvd < (size_t)nbytes) {
		struct pollfd p = {.fd = fd, .events = POLLIN | (wr_closed ? 0 : POLLOUT)};
		if (poll(&p, 1, 10000) <= 0) {
			fprintf(stderr, "ppecho: echo timeout (sent %zu, got %zu)\n", sent, recvd);
			return 1;
		}
		if (!wr_closed && (p.revents & POLLOUT)) {
			size_t chunk = (size_t)nbytes - sent;
			if (chunk > 16384)
				chunk = 16384;
			ssize_t n = send(fd, out + sent, chunk, MSG_DONTWAIT);
			if (n > 0)
				sent += (size_t)n;
			if (sent == (size_t)nbytes) {
				shutdown(fd, SHUT_WR);
				wr_closed = 1;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = recv(fd, in + recvd, (size_t)nbytes + 1 - recvd, MSG_DONTWAIT);
			if (n == 0)
				break;
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "ppecho: recv: %s\n", strerror(errno));
				return 1;
			}
			if (n > 0)
				recvd += (size_t)n;
		}
	}
	if (recvd != (size_t)nbytes || memcmp(in, out, (size_t)nbytes) != 0) {
		fprintf(stderr, "ppecho: tcp echo mismatch (sent %zu, got %zu)\n", sent, recvd);
		return 1;
	}
	/* the server half-closes after echoing everything: expect EOF now */
	char extra;
	ssize_t n = recv(fd, &extra, 1, 0);
	if (n != 0) {
		fprintf(stderr, "ppecho: expected EOF after echo, got %zd\n", n);
		return 1;
	}
	printf("echo ok %ld\n", nbytes);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && strcmp(argv[1], "-c") == 0) {
		if (argc < 5) {
			fprintf(stderr, "usage: ppecho -c tcp|udp HOST PORT [NBYTES [hold]]\n");
			return 2;
		}
		signal(SIGPIPE, SIG_IGN);
		return client(argv[2], argv[3], argv[4], argc > 5 ? atol(argv[5]) : 0,
			      argc > 6 && strcmp(argv[6], "hold") == 0);
	}
	return server(argc, argv);
}
