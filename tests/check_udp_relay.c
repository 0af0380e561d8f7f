// SPDX-License-Identifier: MIT
/*
 * Unit tests for udp_relay.c and the pktinfo helpers it relies on (sock.c).
 *
 * The relay runs in this process on its own event base, with real UDP
 * sockets on loopback: a client socket, the relay's listener, and a backend
 * socket standing in for the container. Every port is picked by the kernel
 * (bind to port 0, read back); 127.0.0.2 and friends are loopback too,
 * which lets one wildcard listener be reached through several addresses.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "portproxy/sock.h"
#include "portproxy/udp_relay.h"

static struct event_base *base;
static struct udp_relay *relay;
static int backend = -1;     /* the "container" */
static struct addr be_addr;  /* where it listens */
static struct addr lst_addr; /* where the relay listens */
static int lst_fd = -1;      /* the relay's listener (the relay owns it) */

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* A non-blocking UDP socket bound to @ip, port @port (0: any); @a gets
 * its address. */
static int bound(const char *ip, uint16_t port, struct addr *a)
{
	struct addr want, got;
	int fd;

	ck_assert_int_eq(addr_parse_ip(ip, port, &want), 0);
	fd = socket(addr_family(&want), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	if (addr_family(&want) == AF_INET6) {
		int on = 1;

		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	}
	ck_assert_msg(bind(fd, &want.u.sa, want.len) == 0, "bind %s: %s", ip, strerror(errno));
	ck_assert_int_eq(sock_local(fd, &got), 0);
	if (a)
		*a = got;
	return fd;
}

/* A client socket connected to @ip at the relay's port: it accepts replies
 * from exactly that address, as a connected client does. */
static int client_to(const char *ip)
{
	struct addr to;
	int fd;

	ck_assert_int_eq(addr_parse_ip(ip, addr_port(&lst_addr), &to), 0);
	fd = socket(addr_family(&to), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, &to.u.sa, to.len), 0);
	return fd;
}

static bool have_ipv6(void)
{
	struct addr a;
	int fd;

	addr_parse_ip("::1", 0, &a);
	fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd < 0)
		return false;
	if (bind(fd, &a.u.sa, a.len) < 0) {
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

/*
 * Receive one datagram on @fd, running the relay's loop meanwhile, for at
 * most @ms. Return: its length, or -1 when nothing came in time.
 */
static ssize_t recv_pump(int fd, void *buf, size_t len, struct addr *from, int ms)
{
	long long deadline = mono_ms() + ms;

	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		event_base_loop(base, EVLOOP_NONBLOCK);
		n = recvfrom(fd, buf, len, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
		if (n >= 0) {
			if (from)
				addr_from_sockaddr((struct sockaddr *)&ss, sl, from);
			return n;
		}
		if (mono_ms() >= deadline)
			return -1;
		poll(&p, 1, 1);
	}
}

/* Run the loop until @pred holds or @ms pass. Return: whether it held. */
static bool pump_until(bool (*pred)(void), int ms)
{
	long long deadline = mono_ms() + ms;

	while (!pred()) {
		if (mono_ms() >= deadline)
			return false;
		event_base_loop(base, EVLOOP_NONBLOCK);
		poll(NULL, 0, 1);
	}
	return true;
}

static struct udp_relay_stats stats(void)
{
	struct udp_relay_stats st;

	udp_relay_stats(relay, &st);
	return st;
}

/* The relay on @listen_ip:0 forwarding to a fresh backend on @backend_ip. */
static void start(const char *listen_ip, const char *backend_ip, struct udp_relay_opts o)
{
	int fd;

	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	backend = bound(backend_ip, 0, &be_addr);
	fd = bound(listen_ip, 0, &lst_addr);
	lst_fd = fd;
	if (!o.idle_timeout_ms)
		o.idle_timeout_ms = 90000;
	if (!o.max_flows)
		o.max_flows = 64;
	relay = udp_relay_new(base, fd, &be_addr, &o);
	ck_assert_ptr_nonnull(relay);
}

static void stop(void)
{
	udp_relay_free(relay);
	relay = NULL;
	if (backend >= 0)
		close(backend);
	backend = -1;
	event_base_free(base);
	base = NULL;
}

/* Client @c sends @len bytes of @fill; the backend must get them intact.
 * Return: the flow's source port at the backend */
static uint16_t send_through(int c, size_t len, int fill)
{
	static char out[65536], in[65536];
	struct addr from;
	ssize_t n;

	memset(out, fill, len);
	ck_assert_int_eq(send(c, out, len, 0), (ssize_t)len);
	n = recv_pump(backend, in, sizeof(in), &from, 2000);
	ck_assert_int_eq(n, (ssize_t)len);
	ck_assert(!memcmp(in, out, len));
	return addr_port(&from);
}

/* The backend replies @len bytes of @fill to @port; client @c must get them. */
static void reply_through(int c, uint16_t port, size_t len, int fill)
{
	static char out[65536], in[65536];
	struct addr to = be_addr;
	ssize_t n;

	addr_set_port(&to, port);
	memset(out, fill, len);
	ck_assert_int_eq(sendto(backend, out, len, 0, &to.u.sa, to.len), (ssize_t)len);
	n = recv_pump(c, in, sizeof(in), NULL, 2000);
	ck_assert_msg(n == (ssize_t)len, "reply: got %zd of %zu bytes", n, len);
	ck_assert(!memcmp(in, out, len));
}

/* Whether tests run in forked children (Check's default): only then may a
 * test change its process for good (a seccomp filter, a network namespace). */
static bool forked(void)
{
	const char *mode = getenv("CK_FORK");

	if (mode && !strcmp(mode, "no")) {
		fprintf(stderr, "skipped: needs CK_FORK (changes the test process for good)\n");
		return false;
	}
	return true;
}

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/*
 * Make system call @nr fail with @err from now on in this (forked) test
 * process: on descriptor @fd only, or on any when @fd is -1. How a test
 * has the kernel refuse what it would not refuse on loopback.
 * Return: false when seccomp cannot do it here (the caller skips)
 */
static bool fail_syscall(long nr, int fd, int err)
{
#ifdef TEST_AUDIT_ARCH
	/* The low 32 bits of args[0]: a descriptor is an int. */
	const unsigned arg0 = offsetof(struct seccomp_data, args[0]) +
			      (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ ? 4 : 0);
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)fd, 1, 0),
		BPF_STMT(BPF_RET | BPF_K,
			 fd < 0 ? SECCOMP_RET_ERRNO | (unsigned)err : SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	if (!forked())
		return false;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		fprintf(stderr, "skipped: no seccomp filter: %s\n", strerror(errno));
		return false;
	}
	return true;
#else
	(void)nr;
	(void)fd;
	(void)err;
	fprintf(stderr, "skipped: no seccomp test filter for this architecture\n");
	return false;
#endif
}

/*
 * Move this (forked) test process into a network namespace of its own, its
 * loopback up with an MTU of @mtu: a path like Ethernet's, on loopback.
 * Return: false where that is not allowed (not root: the caller skips)
 */
static bool private_loopback(int mtu)
{
	struct ifreq ifr = { 0 };
	int fd;

	if (!forked())
		return false;
	if (unshare(CLONE_NEWNET) < 0) {
		fprintf(stderr, "skipped: no network namespace: %s\n", strerror(errno));
		return false;
	}
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	strcpy(ifr.ifr_name, "lo");
	ifr.ifr_mtu = mtu;
	ck_assert_int_eq(ioctl(fd, SIOCSIFMTU, &ifr), 0);
	ck_assert_int_eq(ioctl(fd, SIOCGIFFLAGS, &ifr), 0);
	ifr.ifr_flags |= IFF_UP;
	ck_assert_int_eq(ioctl(fd, SIOCSIFFLAGS, &ifr), 0);
	close(fd);
	return true;
}

/* ---- pktinfo -------------------------------------------------------- */

START_TEST(pktinfo_roundtrip)
{
	union {
		char buf[SOCK_PKTINFO_SPACE];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = { .msg_control = ctl.buf };
	struct addr src, got;
	char s[ADDR_STRLEN];

	addr_parse_ip("192.0.2.7", 53, &src);
	mh.msg_controllen = sock_pktinfo_put(ctl.buf, sizeof(ctl.buf), &src);
	ck_assert_uint_eq(mh.msg_controllen, CMSG_SPACE(sizeof(struct in_pktinfo)));
	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
	ck_assert_str_eq(addr_format(&got, s, sizeof(s)), "192.0.2.7:0");

	addr_parse_ip("2001:db8::7", 53, &src);
	mh.msg_controllen = sock_pktinfo_put(ctl.buf, sizeof(ctl.buf), &src);
	ck_assert_uint_eq(mh.msg_controllen, CMSG_SPACE(sizeof(struct in6_pktinfo)));
	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
	ck_assert_str_eq(addr_format(&got, s, sizeof(s)), "[2001:db8::7]:0");
	ck_assert_uint_eq(got.u.sin6.sin6_scope_id, 0);

	/* Link-local: the interface comes along as the scope. */
	addr_parse_ip("fe80::7", 0, &src);
	src.u.sin6.sin6_scope_id = 3;
	mh.msg_controllen = sock_pktinfo_put(ctl.buf, sizeof(ctl.buf), &src);
	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
	ck_assert_uint_eq(got.u.sin6.sin6_scope_id, 3);

	/* A multicast destination cannot be a reply's source: unspecified. */
	addr_parse_ip("ff02::1", 0, &src);
	mh.msg_controllen = sock_pktinfo_put(ctl.buf, sizeof(ctl.buf), &src);
	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
	ck_assert(addr_is_any(&got));
}
END_TEST

START_TEST(pktinfo_absent_or_no_room)
{
	char small[8];
	struct msghdr mh = { 0 };
	struct addr src, got;

	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), -ENOENT);
	addr_parse_ip("192.0.2.7", 0, &src);
	ck_assert_uint_eq(sock_pktinfo_put(small, sizeof(small), &src), 0);
}
END_TEST

/* Append a @level/@type control message with @len bytes of @data to @mh. */
static void cmsg_add(struct msghdr *mh, size_t room, int level, int type, const void *data,
		     size_t len)
{
	struct cmsghdr *c = (struct cmsghdr *)((char *)mh->msg_control + mh->msg_controllen);

	ck_assert_uint_le(mh->msg_controllen + CMSG_SPACE(len), room);
	memset(c, 0, CMSG_SPACE(len));
	c->cmsg_level = level;
	c->cmsg_type = type;
	c->cmsg_len = CMSG_LEN(len);
	memcpy(CMSG_DATA(c), data, len);
	mh->msg_controllen += CMSG_SPACE(len);
}

/*
 * An IPv4 datagram on a dual-stack socket brings IPV6_PKTINFO with its
 * header destination (here a broadcast address) and IP_PKTINFO with the
 * address to answer from: the latter wins, IPv4-mapped, whichever comes
 * first.
 */
START_TEST(pktinfo_dual_stack_prefers_spec_dst)
{
	union {
		char buf[SOCK_PKTINFO_RECV_SPACE];
		struct cmsghdr align;
	} ctl;
	struct in6_pktinfo pi6 = { .ipi6_ifindex = 1 };
	struct in_pktinfo pi4 = { .ipi_ifindex = 1 };
	struct msghdr mh = { .msg_control = ctl.buf };
	struct addr got;
	char s[ADDR_STRLEN];

	inet_pton(AF_INET6, "::ffff:127.255.255.255", &pi6.ipi6_addr);
	inet_pton(AF_INET, "127.0.0.1", &pi4.ipi_spec_dst);
	inet_pton(AF_INET, "127.255.255.255", &pi4.ipi_addr);
	for (int order = 0; order < 2; order++) {
		mh.msg_controllen = 0;
		if (order)
			cmsg_add(&mh, sizeof(ctl), IPPROTO_IP, IP_PKTINFO, &pi4, sizeof(pi4));
		cmsg_add(&mh, sizeof(ctl), IPPROTO_IPV6, IPV6_PKTINFO, &pi6, sizeof(pi6));
		if (!order)
			cmsg_add(&mh, sizeof(ctl), IPPROTO_IP, IP_PKTINFO, &pi4, sizeof(pi4));
		ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
		ck_assert_str_eq(addr_format(&got, s, sizeof(s)), "[::ffff:127.0.0.1]:0");
	}
	/* IPv6 proper on the same socket brings IPV6_PKTINFO alone. */
	inet_pton(AF_INET6, "::1", &pi6.ipi6_addr);
	mh.msg_controllen = 0;
	cmsg_add(&mh, sizeof(ctl), IPPROTO_IPV6, IPV6_PKTINFO, &pi6, sizeof(pi6));
	ck_assert_int_eq(sock_pktinfo_local(&mh, &got), 0);
	ck_assert_str_eq(addr_format(&got, s, sizeof(s)), "[::1]:0");
}
END_TEST

/*
 * On a real wildcard socket: the datagram says which of the loopback
 * addresses it was sent to, and a reply with that as its pktinfo source
 * reaches a connected client, which one without would not.
 */
static void pktinfo_live(const char *wild, const char *dst, bool dual)
{
	union {
		char buf[256];
		struct cmsghdr align;
	} ctl;
	char data[16], s[ADDR_STRLEN], want[ADDR_STRLEN];
	struct sockaddr_storage from;
	struct iovec iov = { data, sizeof(data) };
	struct msghdr mh = { .msg_name = &from,
			     .msg_namelen = sizeof(from),
			     .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf) };
	struct addr srv_addr, to, local;
	struct pollfd p;
	int srv, c, off = 0;

	ck_assert_int_eq(addr_parse_ip(wild, 0, &srv_addr), 0);
	srv = socket(addr_family(&srv_addr), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (dual)
		setsockopt(srv, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	ck_assert_int_eq(bind(srv, &srv_addr.u.sa, srv_addr.len), 0);
	sock_local(srv, &srv_addr);
	ck_assert_int_eq(sock_pktinfo_enable(srv), 0);

	addr_parse_ip(dst, addr_port(&srv_addr), &to);
	c = socket(addr_family(&to), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(c, &to.u.sa, to.len), 0);
	ck_assert_int_eq(send(c, "ping", 4, 0), 4);
	p = (struct pollfd){ .fd = srv, .events = POLLIN };
	ck_assert_int_eq(poll(&p, 1, 2000), 1);
	ck_assert_int_eq(recvmsg(srv, &mh, 0), 4);
	ck_assert_int_eq(sock_pktinfo_local(&mh, &local), 0);
	if (dual)
		snprintf(want, sizeof(want), "[::ffff:%s]:0", dst);
	else {
		addr_set_port(&to, 0);
		addr_format(&to, want, sizeof(want));
	}
	ck_assert_str_eq(addr_format(&local, s, sizeof(s)), want);

	/* Without pktinfo the kernel picks the source (127.0.0.1 for any
	 * loopback client): a connected client to another address drops it. */
	mh.msg_iov->iov_len = 4;
	mh.msg_control = NULL;
	mh.msg_controllen = 0;
	ck_assert_int_eq(sendmsg(srv, &mh, 0), 4);
	if (strcmp(dst, "127.0.0.1") && strcmp(dst, "::1"))
		ck_assert_int_lt(recv(c, data, sizeof(data), MSG_DONTWAIT), 0);
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sock_pktinfo_put(ctl.buf, sizeof(ctl.buf), &local);
	ck_assert_int_eq(sendmsg(srv, &mh, 0), 4);
	p = (struct pollfd){ .fd = c, .events = POLLIN };
	ck_assert_int_eq(poll(&p, 1, 2000), 1);
	ck_assert_int_eq(recv(c, data, sizeof(data), 0), 4);
	close(c);
	close(srv);
}

START_TEST(pktinfo_live_v4)
{
	pktinfo_live("0.0.0.0", "127.0.0.2", false);
	pktinfo_live("0.0.0.0", "127.0.0.1", false);
}
END_TEST

START_TEST(pktinfo_live_dual_stack)
{
	if (!have_ipv6())
		return;
	pktinfo_live("::", "127.0.0.3", true);
}
END_TEST

START_TEST(pktinfo_live_v6)
{
	if (!have_ipv6())
		return;
	pktinfo_live("::", "::1", false);
}
END_TEST

/* ---- relay ---------------------------------------------------------- */

/* A connected client reaching a wildcard listener through 127.0.0.2 gets
 * the reply from 127.0.0.2, or (being connected) not at all. */
START_TEST(echo_wildcard_v4)
{
	struct udp_relay_stats st;
	uint16_t port;
	int c;

	start("0.0.0.0", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.2");
	port = send_through(c, 5, 'a');
	reply_through(c, port, 7, 'b');
	st = stats();
	ck_assert_uint_eq(st.flows, 1);
	ck_assert_uint_eq(st.active, 1);
	ck_assert_uint_eq(st.dgrams[0], 1);
	ck_assert_uint_eq(st.dgrams[1], 1);
	ck_assert_uint_eq(st.bytes[0], 5);
	ck_assert_uint_eq(st.bytes[1], 7);
	close(c);
	stop();
}
END_TEST

START_TEST(echo_v6_to_v4_backend)
{
	uint16_t port;
	int c;

	if (!have_ipv6())
		return;
	start("::1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("::1");
	port = send_through(c, 100, 'x');
	reply_through(c, port, 100, 'y');
	close(c);
	stop();
}
END_TEST

START_TEST(echo_dual_stack_listener)
{
	struct addr want;
	uint16_t port;
	int fd, c, off = 0;

	if (!have_ipv6())
		return;
	/* What dockerd may pass as fd 4: "::" without V6ONLY. */
	base = event_base_new();
	backend = bound("127.0.0.1", 0, &be_addr);
	addr_parse_ip("::", 0, &want);
	fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	ck_assert_int_eq(bind(fd, &want.u.sa, want.len), 0);
	sock_local(fd, &lst_addr);
	relay = udp_relay_new(base, fd, &be_addr,
			      &(struct udp_relay_opts){ .idle_timeout_ms = 1000, .max_flows = 4 });
	ck_assert_ptr_nonnull(relay);
	c = client_to("127.0.0.4");
	port = send_through(c, 10, 'd');
	reply_through(c, port, 10, 'e');
	close(c);
	stop();
}
END_TEST

/* Each client has its own flow and its own, stable, port at the backend. */
START_TEST(one_flow_per_client)
{
	uint16_t pa, pb;
	int a, b;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	a = client_to("127.0.0.1");
	b = client_to("127.0.0.1");
	pa = send_through(a, 10, 'a');
	pb = send_through(b, 10, 'b');
	ck_assert_uint_ne(pa, pb);
	for (int i = 0; i < 3; i++) {
		ck_assert_uint_eq(send_through(a, 10, 'a'), pa);
		ck_assert_uint_eq(send_through(b, 10, 'b'), pb);
	}
	reply_through(a, pa, 3, 'A');
	reply_through(b, pb, 3, 'B');
	ck_assert_uint_eq(stats().flows, 2);
	close(a);
	close(b);
	stop();
}
END_TEST

START_TEST(largest_datagram_v4)
{
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 65507, 0x5a);
	reply_through(c, port, 65507, 0xa5);
	ck_assert_uint_eq(stats().truncated[0] + stats().truncated[1], 0);
	close(c);
	stop();
}
END_TEST

START_TEST(largest_datagram_v6)
{
	uint16_t port;
	int c;

	if (!have_ipv6())
		return;
	start("::1", "::1", (struct udp_relay_opts){ 0 });
	c = client_to("::1");
	port = send_through(c, 65527, 0x5a);
	reply_through(c, port, 65527, 0xa5);
	close(c);
	stop();
}
END_TEST

static bool truncated_both(void)
{
	struct udp_relay_stats st = stats();

	return st.truncated[0] == 1 && st.truncated[1] == 1;
}

/* Too big for a slot: dropped and counted, never forwarded cut. */
START_TEST(truncated_dropped)
{
	static char big[2000];
	struct addr to = be_addr;
	char buf[4096];
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .slot_size = 1024 });
	c = client_to("127.0.0.1");
	port = send_through(c, 1024, 'f'); /* exactly a slot: fine */
	ck_assert_int_eq(send(c, big, sizeof(big), 0), (ssize_t)sizeof(big));
	to = be_addr;
	addr_set_port(&to, port);
	ck_assert_int_eq(sendto(backend, big, sizeof(big), 0, &to.u.sa, to.len),
			 (ssize_t)sizeof(big));
	ck_assert(pump_until(truncated_both, 2000));
	ck_assert_int_lt(recv(backend, buf, sizeof(buf), MSG_DONTWAIT), 0);
	ck_assert_int_lt(recv(c, buf, sizeof(buf), MSG_DONTWAIT), 0);
	/* And the flow goes on. */
	ck_assert_uint_eq(send_through(c, 100, 'g'), port);
	reply_through(c, port, 100, 'h');
	close(c);
	stop();
}
END_TEST

static bool one_expired(void)
{
	return stats().expired == 1;
}

/* Idle past the timeout: the flow goes, and the next datagram makes a new one. */
START_TEST(idle_expiry)
{
	struct udp_relay_stats st;
	long long t0;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .idle_timeout_ms = 100 });
	c = client_to("127.0.0.1");
	send_through(c, 10, 'a');
	t0 = mono_ms();
	ck_assert(pump_until(one_expired, 3000));
	ck_assert_int_ge(mono_ms() - t0, 90); /* not before its time (coarse clock) */
	st = stats();
	ck_assert_uint_eq(st.active, 0);
	send_through(c, 10, 'b');
	st = stats();
	ck_assert_uint_eq(st.flows, 2);
	ck_assert_uint_eq(st.active, 1);
	close(c);
	stop();
}
END_TEST

/* Replies alone keep a flow alive: traffic either way counts. */
START_TEST(replies_refresh)
{
	long long end;
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .idle_timeout_ms = 150 });
	c = client_to("127.0.0.1");
	port = send_through(c, 10, 'a');
	end = mono_ms() + 600;
	while (mono_ms() < end)
		reply_through(c, port, 10, 'r'); /* each waits for its delivery */
	ck_assert_uint_eq(stats().expired, 0);
	ck_assert_uint_eq(stats().active, 1);
	ck_assert(pump_until(one_expired, 3000));
	close(c);
	stop();
}
END_TEST

/* At the cap the least recently used flow goes. */
START_TEST(eviction_lru)
{
	struct udp_relay_stats st;
	uint16_t pa, pb, pc;
	int a, b, c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .max_flows = 2 });
	a = client_to("127.0.0.1");
	b = client_to("127.0.0.1");
	c = client_to("127.0.0.1");
	pa = send_through(a, 1, 'a');
	pb = send_through(b, 1, 'b');
	send_through(a, 1, 'a'); /* a is now more recent than b */
	pc = send_through(c, 1, 'c');
	st = stats();
	ck_assert_uint_eq(st.evicted, 1);
	ck_assert_uint_eq(st.active, 2);
	ck_assert_uint_eq(send_through(a, 1, 'a'), pa); /* a survived */
	ck_assert_uint_eq(send_through(c, 1, 'c'), pc);
	ck_assert_uint_ne(send_through(b, 1, 'b'), 0); /* b: a new flow... */
	st = stats();
	ck_assert_uint_eq(st.flows, 4);
	ck_assert_uint_eq(st.evicted, 2);
	(void)pb;
	close(a);
	close(b);
	close(c);
	stop();
}
END_TEST

static bool icmp_seen(void)
{
	return stats().icmp_errors >= 1;
}

static bool two_forwarded(void)
{
	return stats().dgrams[0] == 2;
}

/*
 * No backend yet: the ICMP error is counted and the flow kept; once the
 * backend listens, the next datagram goes through on the same flow. The
 * port is held on 127.0.0.2 meanwhile, so nobody else takes it, while
 * 127.0.0.1 (the backend's address) refuses.
 */
START_TEST(icmp_error_keeps_flow)
{
	struct addr hold_addr;
	int hold, fd, c;

	base = event_base_new();
	hold = bound("127.0.0.2", 0, &hold_addr);
	addr_parse_ip("127.0.0.1", addr_port(&hold_addr), &be_addr);
	fd = bound("127.0.0.1", 0, &lst_addr);
	relay = udp_relay_new(base, fd, &be_addr,
			      &(struct udp_relay_opts){ .idle_timeout_ms = 90000, .max_flows = 8 });
	ck_assert_ptr_nonnull(relay);
	c = client_to("127.0.0.1");
	ck_assert_int_eq(send(c, "lost", 4, 0), 4);
	ck_assert(pump_until(icmp_seen, 2000));
	ck_assert_uint_eq(stats().active, 1);
	/* Another datagram while nothing listens. Its error may still be
	 * pending when the next one is sent: that one must then be tried
	 * again, not dropped. */
	ck_assert_int_eq(send(c, "lost", 4, 0), 4);
	ck_assert(pump_until(two_forwarded, 2000));
	backend = bound("127.0.0.1", addr_port(&hold_addr), NULL);
	send_through(c, 8, 'z');
	ck_assert_uint_eq(stats().flows, 1);
	ck_assert_uint_eq(stats().active, 1);
	ck_assert_uint_eq(stats().dropped[0], 0);
	close(hold);
	close(c);
	stop();
}
END_TEST

/* Queue @n datagrams of @len (the last @last) from @fd to @to, or on a
 * connected socket when @to is NULL; the first byte numbers them. */
static void burst(int fd, const struct addr *to, unsigned n, size_t len, size_t last)
{
	char buf[2048];

	for (unsigned i = 0; i < n; i++) {
		size_t l = i == n - 1 ? last : len;

		memset(buf, (int)i, l);
		ck_assert_int_eq(to ? sendto(fd, buf, l, 0, &to->u.sa, to->len)
				    : send(fd, buf, l, 0),
				 (ssize_t)l);
	}
}

/* Receive @n datagrams from burst() in order and intact. */
static void expect_burst(int fd, unsigned n, size_t len, size_t last, struct addr *from)
{
	char buf[4096];

	for (unsigned i = 0; i < n; i++) {
		size_t l = i == n - 1 ? last : len;
		ssize_t got = recv_pump(fd, buf, sizeof(buf), from, 2000);

		ck_assert_msg(got == (ssize_t)l, "datagram %u: %zd bytes, want %zu", i, got, l);
		for (size_t k = 0; k < l; k++)
			ck_assert_int_eq((unsigned char)buf[k], i & 0xff);
	}
}

/* A batch of equal datagrams goes out in one UDP_SEGMENT send, and still
 * arrives as the same datagrams. */
static void batch_roundtrip(bool no_gso, size_t len, size_t last)
{
	struct udp_relay_stats st;
	struct addr from, to;
	uint16_t port;
	int c;

	start("0.0.0.0", "127.0.0.1", (struct udp_relay_opts){ .no_gso = no_gso });
	c = client_to("127.0.0.2");
	port = send_through(c, 1, 0);
	burst(c, NULL, 20, len, last);
	expect_burst(backend, 20, len, last, &from);
	ck_assert_uint_eq(addr_port(&from), port);
	to = be_addr;
	addr_set_port(&to, port);
	burst(backend, &to, 20, len, last);
	expect_burst(c, 20, len, last, NULL);
	st = stats();
	ck_assert_uint_eq(st.dgrams[0], 21);
	ck_assert_uint_eq(st.dgrams[1], 20);
	ck_assert_uint_eq(st.dropped[0] + st.dropped[1], 0);
	if (no_gso)
		ck_assert_uint_eq(st.gso_sends, 0);
	else if (len == last || last < len)
		ck_assert_uint_ge(st.gso_sends, 2);
	close(c);
	stop();
}

START_TEST(batch_gso_equal)
{
	batch_roundtrip(false, 100, 100);
}
END_TEST

START_TEST(batch_gso_short_last)
{
	batch_roundtrip(false, 100, 40);
}
END_TEST

START_TEST(batch_no_gso)
{
	batch_roundtrip(true, 100, 100);
}
END_TEST

/* Mixed sizes cannot be one GSO send: they go by sendmmsg, intact. */
START_TEST(batch_mixed_sizes)
{
	size_t sizes[] = { 100, 200, 100, 1, 1400, 7 };
	char buf[2048];
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 1, 0);
	for (unsigned i = 0; i < 6; i++) {
		memset(buf, (int)i, sizes[i]);
		ck_assert_int_eq(send(c, buf, sizes[i], 0), (ssize_t)sizes[i]);
	}
	for (unsigned i = 0; i < 6; i++) {
		ck_assert_int_eq(recv_pump(backend, buf, sizeof(buf), NULL, 2000),
				 (ssize_t)sizes[i]);
		ck_assert_int_eq(buf[0], (char)i);
	}
	(void)port;
	close(c);
	stop();
}
END_TEST

/* Empty datagrams are datagrams too: a burst of them must not become one
 * (UDP_SEGMENT with a gso_size of 0 would send all as a single one). */
START_TEST(burst_of_empty_datagrams)
{
	struct udp_relay_stats st;
	struct addr to;
	char buf[16];
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 1, 0);
	burst(c, NULL, 10, 0, 0);
	expect_burst(backend, 10, 0, 0, NULL);
	to = be_addr;
	addr_set_port(&to, port);
	burst(backend, &to, 10, 0, 0);
	expect_burst(c, 10, 0, 0, NULL);
	ck_assert_int_lt(recv_pump(backend, buf, sizeof(buf), NULL, 100), 0);
	ck_assert_int_lt(recv_pump(c, buf, sizeof(buf), NULL, 100), 0);
	st = stats();
	ck_assert_uint_eq(st.dgrams[0], 11);
	ck_assert_uint_eq(st.dgrams[1], 10);
	ck_assert_uint_eq(st.gso_sends, 0);
	close(c);
	stop();
}
END_TEST

/*
 * A broadcast to a dual-stack listener (what dockerd may pass as fd 4):
 * the reply must come from the address the kernel names for answering
 * (ipi_spec_dst), not from the broadcast address, which no datagram may
 * come from.
 */
static void broadcast_roundtrip(bool dual)
{
	struct udp_relay_stats st;
	struct addr want, to, from;
	char buf[64], s[ADDR_STRLEN];
	int fd, c, on = 1, off = 0;
	ssize_t n;

	base = event_base_new();
	backend = bound("127.0.0.1", 0, &be_addr);
	addr_parse_ip(dual ? "::" : "0.0.0.0", 0, &want);
	fd = socket(addr_family(&want), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (dual)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	ck_assert_int_eq(bind(fd, &want.u.sa, want.len), 0);
	sock_local(fd, &lst_addr);
	relay = udp_relay_new(base, fd, &be_addr,
			      &(struct udp_relay_opts){ .idle_timeout_ms = 9000, .max_flows = 4 });
	ck_assert_ptr_nonnull(relay);
	c = bound("127.0.0.1", 0, NULL);
	ck_assert_int_eq(setsockopt(c, SOL_SOCKET, SO_BROADCAST, &on, sizeof(on)), 0);
	addr_parse_ip("127.255.255.255", addr_port(&lst_addr), &to);
	ck_assert_int_eq(sendto(c, "hello?", 6, 0, &to.u.sa, to.len), 6);
	ck_assert_int_eq(recv_pump(backend, buf, sizeof(buf), &from, 2000), 6);
	ck_assert_int_eq(sendto(backend, "reply", 5, 0, &from.u.sa, from.len), 5);
	n = recv_pump(c, buf, sizeof(buf), &from, 2000);
	ck_assert_msg(n == 5, "no reply to a broadcast (dual-stack %d)", dual);
	ck_assert_str_eq(addr_format_ip(&from, s, sizeof(s)), "127.0.0.1");
	ck_assert_uint_eq(addr_port(&from), addr_port(&lst_addr));
	st = stats();
	ck_assert_uint_eq(st.dropped[1], 0);
	ck_assert_uint_eq(st.icmp_errors, 0);
	close(c);
	stop();
}

START_TEST(broadcast_v4_listener)
{
	broadcast_roundtrip(false);
}
END_TEST

START_TEST(broadcast_dual_stack_listener)
{
	if (!have_ipv6())
		return;
	broadcast_roundtrip(true);
}
END_TEST

static unsigned long long want_dropped_back;

static bool dropped_back(void)
{
	return stats().dropped[1] >= want_dropped_back;
}

/*
 * The listener is not connected: ENETUNREACH or EACCES from it are refusals
 * of the datagram at hand, not ICMP errors about an earlier one. Dropped and
 * counted as drops, never retried as ICMP.
 */
START_TEST(listener_refusal_is_not_icmp)
{
	struct udp_relay_stats st;
	struct addr to;
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 10, 'a');
	if (!fail_syscall(SYS_sendmmsg, lst_fd, ENETUNREACH) ||
	    !fail_syscall(SYS_sendmsg, lst_fd, EACCES))
		goto out;
	to = be_addr;
	addr_set_port(&to, port);
	burst(backend, &to, 1, 100, 100);
	want_dropped_back = 1;
	ck_assert(pump_until(dropped_back, 2000));
	burst(backend, &to, 5, 100, 100); /* a GSO candidate */
	want_dropped_back = 6;
	ck_assert(pump_until(dropped_back, 2000));
	st = stats();
	ck_assert_uint_eq(st.dropped[1], 6);
	ck_assert_uint_eq(st.dgrams[1], 0);
	ck_assert_uint_eq(st.icmp_errors, 0);
	ck_assert_uint_eq(st.active, 1);
	ck_assert_uint_eq(send_through(c, 10, 'b'), port); /* the flow goes on */
out:
	close(c);
	stop();
}
END_TEST

static bool one_without_flow(void)
{
	return stats().no_flow == 1;
}

/* A flow that cannot be opened costs no other flow its place at the cap. */
START_TEST(failed_open_evicts_nobody)
{
	struct udp_relay_stats st;
	uint16_t pa;
	int a, b;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .max_flows = 1 });
	a = client_to("127.0.0.1");
	b = client_to("127.0.0.1");
	pa = send_through(a, 10, 'a');
	if (!fail_syscall(SYS_connect, -1, ENETUNREACH))
		goto out;
	ck_assert_int_eq(send(b, "b", 1, 0), 1);
	ck_assert(pump_until(one_without_flow, 2000));
	st = stats();
	ck_assert_uint_eq(st.evicted, 0);
	ck_assert_uint_eq(st.active, 1);
	ck_assert_uint_eq(send_through(a, 10, 'a'), pa);
	reply_through(a, pa, 10, 'r');
out:
	close(a);
	close(b);
	stop();
}
END_TEST

/*
 * Eight clients, their datagrams interleaved in one batch: each flow's go
 * out with one call (not one per datagram), in order, from its own port.
 */
static void interleaved(bool no_gso)
{
	enum { CLIENTS = 8, ROUNDS = 4 };
	struct udp_relay_stats st0, st;
	uint16_t port[CLIENTS];
	unsigned next[CLIENTS] = { 0 };
	int c[CLIENTS];
	char buf[128];

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .no_gso = no_gso });
	for (int i = 0; i < CLIENTS; i++) {
		c[i] = client_to("127.0.0.1");
		port[i] = send_through(c[i], 1, i);
	}
	st0 = stats();
	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < CLIENTS; i++) {
			memset(buf, 'x', 64);
			buf[0] = (char)i;
			buf[1] = (char)r;
			ck_assert_int_eq(send(c[i], buf, 64, 0), 64);
		}
	}
	for (int k = 0; k < CLIENTS * ROUNDS; k++) {
		struct addr from;
		int i;

		ck_assert_int_eq(recv_pump(backend, buf, sizeof(buf), &from, 2000), 64);
		i = buf[0];
		ck_assert_int_lt(i, CLIENTS);
		ck_assert_uint_eq(addr_port(&from), port[i]);
		ck_assert_int_eq(buf[1], (char)next[i]); /* each flow in order */
		next[i]++;
	}
	st = stats();
	ck_assert_uint_eq(st.dgrams[0] - st0.dgrams[0], CLIENTS * ROUNDS);
	ck_assert_uint_eq(st.sends[0] - st0.sends[0], CLIENTS);
	ck_assert_uint_eq(st.gso_sends - st0.gso_sends, no_gso ? 0 : CLIENTS);
	for (int i = 0; i < CLIENTS; i++)
		close(c[i]);
	stop();
}

START_TEST(interleaved_clients_gso)
{
	interleaved(false);
}
END_TEST

START_TEST(interleaved_clients_no_gso)
{
	interleaved(true);
}
END_TEST

/* With a cap below the clients in one batch, flows are evicted while the
 * batch is sorted: every datagram still goes, each client's in order. */
START_TEST(interleaved_clients_small_cap)
{
	enum { CLIENTS = 3, ROUNDS = 10 };
	unsigned next[CLIENTS] = { 0 };
	int c[CLIENTS];
	char buf[128];

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ .max_flows = 2 });
	for (int i = 0; i < CLIENTS; i++)
		c[i] = client_to("127.0.0.1");
	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < CLIENTS; i++) {
			buf[0] = (char)i;
			buf[1] = (char)r;
			ck_assert_int_eq(send(c[i], buf, 2, 0), 2);
		}
	}
	for (int k = 0; k < CLIENTS * ROUNDS; k++) {
		ck_assert_int_eq(recv_pump(backend, buf, sizeof(buf), NULL, 2000), 2);
		ck_assert_int_eq(buf[1], (char)next[(int)buf[0]]);
		next[(int)buf[0]]++;
	}
	ck_assert_uint_eq(stats().dropped[0], 0);
	ck_assert_uint_le(stats().active, 2);
	for (int i = 0; i < CLIENTS; i++)
		close(c[i]);
	stop();
}
END_TEST

/*
 * Across a 1500-byte MTU path: replies go out with UDP_SEGMENT only when
 * their size fits that path (1452 bytes over IPv6, 1472 over IPv4), and no
 * send is spent on a GSO attempt bound to fail.
 */
static void gso_fits_mtu(const char *ip, size_t too_big, size_t fits)
{
	struct udp_relay_stats st0, st;
	struct addr to;
	uint16_t port;
	int c;

	start(ip, ip, (struct udp_relay_opts){ 0 });
	c = client_to(ip);
	port = send_through(c, 1, 0);
	to = be_addr;
	addr_set_port(&to, port);
	st0 = stats();
	burst(backend, &to, 20, too_big, too_big);
	expect_burst(c, 20, too_big, too_big, NULL);
	st = stats();
	ck_assert_uint_eq(st.sends[1] - st0.sends[1], 1); /* sendmmsg() alone */
	ck_assert_uint_eq(st.gso_sends - st0.gso_sends, 0);
	st0 = st;
	burst(backend, &to, 20, fits, fits);
	expect_burst(c, 20, fits, fits, NULL);
	st = stats();
	ck_assert_uint_eq(st.sends[1] - st0.sends[1], 1);
	ck_assert_uint_eq(st.gso_sends - st0.gso_sends, 1);
	ck_assert_uint_eq(st.dropped[1], 0);
	close(c);
	stop();
}

START_TEST(gso_v6_fits_1500_mtu)
{
	if (!private_loopback(1500) || !have_ipv6())
		return;
	gso_fits_mtu("::1", 1460, 1452);
}
END_TEST

START_TEST(gso_v4_fits_1500_mtu)
{
	if (!private_loopback(1500))
		return;
	gso_fits_mtu("127.0.0.1", 1473, 1472);
}
END_TEST

/* A GSO send that finds no room (EAGAIN) loses nothing: sendmmsg() takes
 * the group instead. */
START_TEST(gso_eagain_falls_back)
{
	struct udp_relay_stats st;
	struct addr to;
	uint16_t port;
	int c;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 1, 0);
	if (!fail_syscall(SYS_sendmsg, -1, EAGAIN))
		goto out;
	burst(c, NULL, 20, 100, 100);
	expect_burst(backend, 20, 100, 100, NULL);
	to = be_addr;
	addr_set_port(&to, port);
	burst(backend, &to, 20, 100, 100);
	expect_burst(c, 20, 100, 100, NULL);
	st = stats();
	ck_assert_uint_eq(st.dropped[0] + st.dropped[1], 0);
	ck_assert_uint_eq(st.gso_sends, 0);
	ck_assert_uint_eq(st.dgrams[0], 21);
	ck_assert_uint_eq(st.dgrams[1], 20);
out:
	close(c);
	stop();
}
END_TEST

/* The descriptor of the flow socket connected to the backend from @port. */
static int flow_fd(uint16_t port)
{
	for (int fd = 3; fd < 1024; fd++) {
		struct addr local, peer;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);

		if (fd == lst_fd || fd == backend || sock_local(fd, &local) < 0 ||
		    getpeername(fd, (struct sockaddr *)&ss, &sl) < 0 ||
		    addr_from_sockaddr((struct sockaddr *)&ss, sl, &peer) < 0)
			continue;
		if (addr_port(&local) == port && addr_equal(&peer, &be_addr))
			return fd;
	}
	ck_abort_msg("no flow socket from port %u", port);
	return -1;
}

/* Receive datagrams on @fd until none comes for 300 ms. Return: how many */
static unsigned drain(int fd)
{
	char buf[2048];
	unsigned n = 0;

	while (recv_pump(fd, buf, sizeof(buf), NULL, 300) >= 0)
		n++;
	return n;
}

/*
 * What the kernel drops at the relay's own sockets (receive buffer full) is
 * counted: the listener's and the flows'. The count rides on the next
 * datagram the socket receives (SO_RXQ_OVFL).
 */
START_TEST(kernel_drops_counted)
{
	int small = 4096, c, ffd;
	unsigned got;
	struct addr to;
	uint16_t port;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	c = client_to("127.0.0.1");
	port = send_through(c, 10, 'a');
	ck_assert_uint_eq(stats().kernel_drops, 0);

	ck_assert_int_eq(setsockopt(lst_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
	burst(c, NULL, 50, 1000, 1000);
	got = drain(backend);
	ck_assert_uint_lt(got, 50);
	send_through(c, 10, 'b');
	ck_assert_uint_eq(stats().kernel_drops, 50 - got);

	ffd = flow_fd(port);
	ck_assert_int_eq(setsockopt(ffd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
	to = be_addr;
	addr_set_port(&to, port);
	burst(backend, &to, 50, 1000, 1000);
	got += drain(c);
	ck_assert_uint_lt(got, 100);
	reply_through(c, port, 10, 'c');
	ck_assert_uint_eq(stats().kernel_drops, 100 - got);
	close(c);
	stop();
}
END_TEST

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* Freeing the relay closes the listener and every flow socket. */
START_TEST(free_closes_all)
{
	int before = count_fds(), c[5];

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	for (int i = 0; i < 5; i++) {
		c[i] = client_to("127.0.0.1");
		send_through(c[i], 4, 'q');
	}
	ck_assert_uint_eq(stats().active, 5);
	for (int i = 0; i < 5; i++)
		close(c[i]);
	stop(); /* closes the backend too */
	ck_assert_int_eq(count_fds(), before);
}
END_TEST

/* Two relays in one process share the batch scratch; either may go first. */
START_TEST(two_relays_share_scratch)
{
	struct udp_relay *first;
	uint16_t port;
	int c, fd;

	start("127.0.0.1", "127.0.0.1", (struct udp_relay_opts){ 0 });
	first = relay;
	fd = bound("127.0.0.1", 0, &lst_addr);
	relay = udp_relay_new(base, fd, &be_addr,
			      &(struct udp_relay_opts){ .idle_timeout_ms = 1000, .max_flows = 4 });
	ck_assert_ptr_nonnull(relay);
	c = client_to("127.0.0.1");
	port = send_through(c, 300, 's');
	udp_relay_free(first); /* the second relay still has the scratch */
	ck_assert_uint_eq(send_through(c, 300, 't'), port);
	reply_through(c, port, 300, 'u');
	close(c);
	stop();
}
END_TEST

START_TEST(new_rejects_bad_opts)
{
	struct addr a;

	addr_parse_ip("127.0.0.1", 9, &a);
	base = event_base_new();
	errno = 0;
	ck_assert_ptr_null(udp_relay_new(base, -1, &a, &(struct udp_relay_opts){ 0 }));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(udp_relay_new(
		base, -1, &a, &(struct udp_relay_opts){ .idle_timeout_ms = 1, .max_flows = 1 }));
	event_base_free(base);
}
END_TEST

static Suite *udp_relay_suite(void)
{
	Suite *s = suite_create("udp_relay");
	TCase *pk = tcase_create("pktinfo"), *echo = tcase_create("echo");
	TCase *life = tcase_create("lifecycle"), *batch = tcase_create("batch");

	tcase_add_test(pk, pktinfo_roundtrip);
	tcase_add_test(pk, pktinfo_absent_or_no_room);
	tcase_add_test(pk, pktinfo_live_v4);
	tcase_add_test(pk, pktinfo_live_v6);
	tcase_add_test(pk, pktinfo_live_dual_stack);
	tcase_add_test(pk, pktinfo_dual_stack_prefers_spec_dst);
	tcase_add_test(echo, echo_wildcard_v4);
	tcase_add_test(echo, echo_v6_to_v4_backend);
	tcase_add_test(echo, echo_dual_stack_listener);
	tcase_add_test(echo, one_flow_per_client);
	tcase_add_test(echo, largest_datagram_v4);
	tcase_add_test(echo, largest_datagram_v6);
	tcase_add_test(echo, truncated_dropped);
	tcase_add_test(echo, burst_of_empty_datagrams);
	tcase_add_test(echo, broadcast_v4_listener);
	tcase_add_test(echo, broadcast_dual_stack_listener);
	tcase_add_test(life, idle_expiry);
	tcase_add_test(life, replies_refresh);
	tcase_add_test(life, eviction_lru);
	tcase_add_test(life, icmp_error_keeps_flow);
	tcase_add_test(life, free_closes_all);
	tcase_add_test(life, new_rejects_bad_opts);
	tcase_add_test(life, two_relays_share_scratch);
	tcase_add_test(life, listener_refusal_is_not_icmp);
	tcase_add_test(life, failed_open_evicts_nobody);
	tcase_add_test(life, kernel_drops_counted);
	tcase_add_test(batch, batch_gso_equal);
	tcase_add_test(batch, batch_gso_short_last);
	tcase_add_test(batch, batch_no_gso);
	tcase_add_test(batch, batch_mixed_sizes);
	tcase_add_test(batch, interleaved_clients_gso);
	tcase_add_test(batch, interleaved_clients_no_gso);
	tcase_add_test(batch, interleaved_clients_small_cap);
	tcase_add_test(batch, gso_v6_fits_1500_mtu);
	tcase_add_test(batch, gso_v4_fits_1500_mtu);
	tcase_add_test(batch, gso_eagain_falls_back);
	tcase_set_timeout(life, 20);
	suite_add_tcase(s, pk);
	suite_add_tcase(s, echo);
	suite_add_tcase(s, life);
	suite_add_tcase(s, batch);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(udp_relay_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
