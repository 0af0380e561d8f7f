// SPDX-License-Identifier: MIT
/*
 * Unit tests for tcp_relay.c: the pump, driven over AF_UNIX socketpairs
 * (splice works on them), so no TCP and no ports are involved.
 *
 *   client app <-socketpair-> relay <-socketpair-> backend app
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "portproxy/loop.h"
#include "portproxy/pipe_pool.h"
#include "portproxy/tcp_relay.h"

/* One application end: what it sends, what it has received. */
struct end {
	int fd;
	const uint8_t *tx;
	size_t txlen, txoff;
	bool shut_when_sent, shut_done;
	bool reading;
	uint8_t *rx;
	size_t rxcap, rxlen;
	bool eof;
	int rxerr;
};

static struct event_base *base;
static struct pipe_pool *pool;
static struct tcp_relay *relay;
static struct end cli, srv;
static int relay_cli_fd; /* the relay's end of the client socketpair */

static void make_relay(size_t pipe_size, unsigned max_pipes)
{
	struct addr unused;
	struct tcp_relay_opts o = { .pipe_size = pipe_size };
	int a[2], b[2];

	signal(SIGPIPE, SIG_IGN); /* as main() does: splice() has no MSG_NOSIGNAL */
	base = loop_new();
	ck_assert_ptr_nonnull(base);
	pool = pipe_pool_new(pipe_size, max_pipes);
	o.pipes = pool;
	addr_parse_ip("127.0.0.1", 9, &unused);
	relay = tcp_relay_new(base, &unused, &o);
	ck_assert_ptr_nonnull(relay);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, a), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, b), 0);
	memset(&cli, 0, sizeof(cli));
	memset(&srv, 0, sizeof(srv));
	cli.fd = a[0];
	srv.fd = b[1];
	cli.reading = srv.reading = true;
	relay_cli_fd = a[1];
	ck_assert_int_eq(tcp_relay_join(relay, a[1], b[0]), 0);
}

static void setup_pipes(void)
{
	make_relay(64 * 1024, 16);
}

static void setup_small_pipes(void)
{
	make_relay(4096, 16);
}

static void setup_copy(void)
{
	make_relay(64 * 1024, 0);
}

static void teardown(void)
{
	tcp_relay_free(relay);
	pipe_pool_free(pool);
	event_base_free(base);
	if (cli.fd >= 0)
		close(cli.fd);
	if (srv.fd >= 0)
		close(srv.fd);
	free(cli.rx);
	free(srv.rx);
}

static void end_expect(struct end *e, size_t n)
{
	e->rx = malloc(n + 1);
	e->rxcap = n + 1;
}

static void end_step(struct end *e)
{
	ssize_t n;

	if (e->fd < 0)
		return;
	while (e->txoff < e->txlen) {
		n = send(e->fd, e->tx + e->txoff, e->txlen - e->txoff, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		e->txoff += (size_t)n;
	}
	if (e->txoff == e->txlen && e->shut_when_sent && !e->shut_done) {
		shutdown(e->fd, SHUT_WR);
		e->shut_done = true;
	}
	while (e->reading && !e->eof && !e->rxerr && e->rxlen < e->rxcap) {
		n = recv(e->fd, e->rx + e->rxlen, e->rxcap - e->rxlen, 0);
		if (n > 0)
			e->rxlen += (size_t)n;
		else if (n == 0)
			e->eof = true;
		else if (errno != EAGAIN)
			e->rxerr = errno;
		if (n <= 0)
			break;
	}
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Run the relay and both ends until @done() or @ms pass. Return: done() */
static bool drive(bool (*done)(void), int ms)
{
	long long end = now_ms() + ms;

	while (now_ms() < end) {
		struct pollfd pf[2] = { { cli.fd, POLLIN, 0 }, { srv.fd, POLLIN, 0 } };

		event_base_loop(base, EVLOOP_NONBLOCK);
		end_step(&cli);
		end_step(&srv);
		if (done && done())
			return true;
		poll(pf, 2, 1);
	}
	return done ? done() : true;
}

static bool both_eof(void)
{
	return cli.eof && srv.eof;
}

static uint8_t *random_bytes(size_t n, unsigned seed)
{
	uint8_t *p = malloc(n);

	srandom(seed);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)random();
	return p;
}

static void check_bulk(size_t n)
{
	uint8_t *up = random_bytes(n, 1), *down = random_bytes(n, 2);
	struct tcp_relay_stats st;

	cli.tx = up;
	cli.txlen = n;
	srv.tx = down;
	srv.txlen = n;
	cli.shut_when_sent = srv.shut_when_sent = true;
	end_expect(&cli, n);
	end_expect(&srv, n);
	ck_assert_msg(drive(both_eof, 10000), "no EOF both ways: cli %zu/%zu srv %zu/%zu",
		      cli.rxlen, n, srv.rxlen, n);
	ck_assert_uint_eq(srv.rxlen, n);
	ck_assert_uint_eq(cli.rxlen, n);
	ck_assert(!memcmp(srv.rx, up, n));
	ck_assert(!memcmp(cli.rx, down, n));
	tcp_relay_stats(relay, &st);
	ck_assert_uint_eq(st.closed, 1);
	ck_assert_uint_eq(st.aborted, 0);
	ck_assert_uint_eq(st.active, 0);
	ck_assert_uint_eq(st.bytes[0], n);
	ck_assert_uint_eq(st.bytes[1], n);
	ck_assert_uint_eq(pipe_pool_in_use(pool), 0);
	free(up);
	free(down);
}

START_TEST(bulk_both_ways)
{
	check_bulk(8 << 20);
}
END_TEST

START_TEST(bulk_copy_fallback)
{
	struct tcp_relay_stats st;

	check_bulk(4 << 20);
	tcp_relay_stats(relay, &st);
	ck_assert_uint_ge(st.copied, 2);
}
END_TEST

static bool srv_got_eof(void)
{
	return srv.eof;
}

START_TEST(half_close_client_first)
{
	static const uint8_t req[] = "request", resp[] = "answer after EOF";
	struct tcp_relay_stats st;

	cli.tx = req;
	cli.txlen = sizeof(req);
	cli.shut_when_sent = true;
	end_expect(&srv, 64);
	end_expect(&cli, 64);
	ck_assert(drive(srv_got_eof, 3000));
	ck_assert_uint_eq(srv.rxlen, sizeof(req));
	/* The backend answers only after it saw the client's EOF. */
	srv.tx = resp;
	srv.txlen = sizeof(resp);
	srv.shut_when_sent = true;
	ck_assert(drive(both_eof, 3000));
	ck_assert_uint_eq(cli.rxlen, sizeof(resp));
	ck_assert(!memcmp(cli.rx, resp, sizeof(resp)));
	tcp_relay_stats(relay, &st);
	ck_assert_uint_eq(st.closed, 1);
}
END_TEST

static bool cli_got_eof(void)
{
	return cli.eof;
}

START_TEST(half_close_backend_first)
{
	static const uint8_t banner[] = "server speaks first", late[] = "client still talks";

	srv.tx = banner;
	srv.txlen = sizeof(banner);
	srv.shut_when_sent = true;
	end_expect(&cli, 64);
	end_expect(&srv, 64);
	ck_assert(drive(cli_got_eof, 3000));
	ck_assert_uint_eq(cli.rxlen, sizeof(banner));
	cli.tx = late;
	cli.txlen = sizeof(late);
	cli.shut_when_sent = true;
	ck_assert(drive(both_eof, 3000));
	ck_assert_uint_eq(srv.rxlen, sizeof(late));
	ck_assert(!memcmp(srv.rx, late, sizeof(late)));
}
END_TEST

/* The events this process's epoll set watches on @fd, from /proc fdinfo. */
static uint32_t epoll_watch_mask(int fd)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;
	bool found = false;
	uint32_t mask = 0;

	ck_assert_ptr_nonnull(dir);
	while (!found && (de = readdir(dir))) {
		char path[300], line[256], link[64];
		ssize_t len;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		len = readlink(path, link, sizeof(link) - 1);
		if (len < 0)
			continue;
		link[len] = '\0';
		if (strcmp(link, "anon_inode:[eventpoll]") != 0)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%s", de->d_name);
		f = fopen(path, "r");
		while (f && fgets(line, sizeof(line), f)) {
			int tfd;
			unsigned ev;

			if (sscanf(line, "tfd: %d events: %x", &tfd, &ev) == 2 && tfd == fd) {
				mask = ev;
				found = true;
			}
		}
		if (f)
			fclose(f);
	}
	closedir(dir);
	ck_assert_msg(found, "fd %d is in no epoll set", fd);
	return mask;
}

START_TEST(backpressure_loses_nothing)
{
	size_t n = 16 << 20;
	uint8_t *up = random_bytes(n, 3);
	struct tcp_relay_stats st;
	uint32_t mask;

	cli.tx = up;
	cli.txlen = n;
	cli.shut_when_sent = true;
	srv.reading = false;
	end_expect(&srv, n);
	drive(NULL, 300);
	/* The backend reads nothing: the relay must stop reading the client. */
	ck_assert_uint_lt(cli.txoff, n);
	tcp_relay_stats(relay, &st);
	ck_assert_uint_lt(st.bytes[0], n);
	ck_assert_uint_le(pipe_pool_in_use(pool), 1);
	/* Nor listen to it: each segment the client sends would wake the relay
	 * for nothing. Its output (the other direction) stays watched. */
	mask = epoll_watch_mask(relay_cli_fd);
	ck_assert_msg(!(mask & EPOLLIN), "client input still watched: events %#x", mask);
	ck_assert(mask & EPOLLOUT);
	/* Watched again once the backend drains: everything arrives. */
	srv.reading = true;
	ck_assert(drive(srv_got_eof, 10000));
	ck_assert_uint_eq(srv.rxlen, n);
	ck_assert(!memcmp(srv.rx, up, n));
	free(up);
}
END_TEST

static bool cli_done(void)
{
	return cli.eof || cli.rxerr;
}

START_TEST(backend_vanishes_mid_stream)
{
	size_t n = 8 << 20;
	uint8_t *up = random_bytes(n, 4);
	struct tcp_relay_stats st;

	cli.tx = up;
	cli.txlen = n;
	srv.reading = false;
	end_expect(&cli, 16);
	drive(NULL, 100);
	close(srv.fd); /* with unread data: the relay's writes fail */
	srv.fd = -1;
	ck_assert(drive(cli_done, 3000));
	tcp_relay_stats(relay, &st);
	ck_assert_uint_eq(st.aborted, 1);
	ck_assert_uint_eq(st.active, 0);
	ck_assert_uint_eq(pipe_pool_in_use(pool), 0);
	free(up);
}
END_TEST

static bool srv_got_4(void)
{
	return srv.rxlen == 4;
}

START_TEST(idle_connection_holds_no_pipe)
{
	struct tcp_relay_stats st;

	cli.tx = (const uint8_t *)"ping";
	cli.txlen = 4;
	end_expect(&srv, 16);
	ck_assert(drive(srv_got_4, 3000));
	drive(NULL, 20);
	tcp_relay_stats(relay, &st);
	ck_assert_uint_eq(st.active, 1);
	ck_assert_uint_eq(pipe_pool_in_use(pool), 0);
	ck_assert_uint_le(pipe_pool_idle(pool), 1);
}
END_TEST

static Suite *tcp_relay_suite(void)
{
	Suite *s = suite_create("tcp_relay");
	TCase *pipes = tcase_create("splice"), *small = tcase_create("small pipes"),
	      *copy = tcase_create("copy fallback");

	tcase_add_checked_fixture(pipes, setup_pipes, teardown);
	tcase_add_test(pipes, bulk_both_ways);
	tcase_add_test(pipes, half_close_client_first);
	tcase_add_test(pipes, half_close_backend_first);
	tcase_add_test(pipes, backpressure_loses_nothing);
	tcase_add_test(pipes, backend_vanishes_mid_stream);
	tcase_add_test(pipes, idle_connection_holds_no_pipe);
	tcase_set_timeout(pipes, 30);
	/* 4 KiB pipes use up the pump's rounds budget: exercises the re-arm. */
	tcase_add_checked_fixture(small, setup_small_pipes, teardown);
	tcase_add_test(small, bulk_both_ways);
	tcase_add_test(small, backpressure_loses_nothing);
	tcase_set_timeout(small, 30);
	tcase_add_checked_fixture(copy, setup_copy, teardown);
	tcase_add_test(copy, bulk_copy_fallback);
	tcase_add_test(copy, backpressure_loses_nothing);
	tcase_set_timeout(copy, 30);
	suite_add_tcase(s, pipes);
	suite_add_tcase(s, small);
	suite_add_tcase(s, copy);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(tcp_relay_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
