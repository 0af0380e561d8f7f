// SPDX-License-Identifier: MIT
/*
 * Unit tests for publish.c: specs to bound sockets, all or nothing.
 * Binds only on loopback (and 0.0.0.0/:: for the no-IP form, which sends
 * nothing). Never a fixed port: free regions are found by probing.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portproxy/publish.h"
#include "portproxy/sock.h"

static struct binding_set set;
static struct port_range eph;
static struct addr container;
static char err[256];

static void setup(void)
{
	memset(&set, 0, sizeof(set));
	publish_ephemeral_range("/proc/sys/net/ipv4/ip_local_port_range", &eph);
	addr_parse_ip("198.51.100.2", 0, &container);
}

static void teardown(void)
{
	publish_close(&set);
}

static int bind_tcp(const char *ip, unsigned port)
{
	struct addr a;
	const char *op;

	addr_parse_ip(ip, (uint16_t)port, &a);
	return sock_listen(SOCK_STREAM, IPPROTO_TCP, &a, &op);
}

/* The first port of @n consecutive free TCP ports on 127.0.0.1. */
static unsigned free_region(unsigned n)
{
	for (int attempt = 0; attempt < 100; attempt++) {
		int probe = bind_tcp("127.0.0.1", 0), fds[16];
		struct addr a;
		unsigned base, k;

		sock_local(probe, &a);
		close(probe);
		base = addr_port(&a);
		if (base + n > 65535)
			continue;
		for (k = 0; k < n; k++) {
			fds[k] = bind_tcp("127.0.0.1", base + k);
			if (fds[k] < 0)
				break;
		}
		for (unsigned j = 0; j < k; j++)
			close(fds[j]);
		if (k == n)
			return base;
	}
	ck_abort_msg("no free region of %u ports", n);
	return 0;
}

static void parse(const char *s, struct port_spec *ps)
{
	ck_assert_msg(spec_parse_publish(s, ps, err, sizeof(err)) == 0, "%s", err);
}

START_TEST(ephemeral_range_file)
{
	char path[] = "/tmp/pp-range-XXXXXX";
	int fd = mkstemp(path);
	struct port_range r;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "32768\t60999\n", 12), 12);
	close(fd);
	ck_assert_int_eq(publish_ephemeral_range(path, &r), 0);
	ck_assert_uint_eq(r.pr_first, 32768);
	ck_assert_uint_eq(r.pr_last, 60999);
	unlink(path);
	ck_assert_int_eq(publish_ephemeral_range(path, &r), -ENOENT);
	ck_assert_uint_eq(r.pr_first, 49153);
	ck_assert_uint_eq(r.pr_last, 65535);
}
END_TEST

START_TEST(random_port_in_ephemeral_range)
{
	struct port_spec ps;
	char line[128];
	FILE *f;

	parse("127.0.0.1::80", &ps);
	ck_assert_int_eq(publish_bind(&ps, 1, &container, &eph, &set, err, sizeof(err)), 0);
	ck_assert_uint_eq(set.bs_n, 1);
	ck_assert_uint_ge(addr_port(&set.bs_v[0].b_host), eph.pr_first);
	ck_assert_uint_le(addr_port(&set.bs_v[0].b_host), eph.pr_last);
	ck_assert_uint_eq(addr_port(&set.bs_v[0].b_backend), 80);
	f = fmemopen(line, sizeof(line), "w");
	publish_report(&set, f);
	fclose(f);
	char want[64];
	snprintf(want, sizeof(want), "80/tcp -> 127.0.0.1:%u\n", addr_port(&set.bs_v[0].b_host));
	ck_assert_str_eq(line, want);
}
END_TEST

START_TEST(both_families_without_ip)
{
	struct port_spec ps;

	parse("53/udp", &ps);
	ck_assert_int_eq(publish_bind(&ps, 1, &container, &eph, &set, err, sizeof(err)), 0);
	ck_assert_uint_ge(set.bs_n, 1);
	ck_assert_int_eq(addr_family(&set.bs_v[0].b_host), AF_INET);
	ck_assert(addr_is_any(&set.bs_v[0].b_host));
	if (set.bs_n == 2) { /* the host has IPv6 */
		ck_assert_int_eq(addr_family(&set.bs_v[1].b_host), AF_INET6);
		ck_assert_uint_eq(addr_port(&set.bs_v[1].b_host), addr_port(&set.bs_v[0].b_host));
	}
	ck_assert_int_eq(set.bs_v[0].b_proto, IPPROTO_UDP);
}
END_TEST

START_TEST(range_port_by_port)
{
	unsigned base = free_region(3);
	struct port_spec ps;
	char spec[64];

	snprintf(spec, sizeof(spec), "127.0.0.1:%u-%u:1000-1002", base, base + 2);
	parse(spec, &ps);
	ck_assert_int_eq(publish_bind(&ps, 1, &container, &eph, &set, err, sizeof(err)), 0);
	ck_assert_uint_eq(set.bs_n, 3);
	for (unsigned k = 0; k < 3; k++) {
		ck_assert_uint_eq(addr_port(&set.bs_v[k].b_host), base + k);
		ck_assert_uint_eq(addr_port(&set.bs_v[k].b_backend), 1000 + k);
	}
}
END_TEST

START_TEST(host_range_first_free)
{
	unsigned base = free_region(3);
	int busy0 = bind_tcp("127.0.0.1", base), busy1 = bind_tcp("127.0.0.1", base + 1);
	struct port_spec ps;
	char spec[64];

	snprintf(spec, sizeof(spec), "127.0.0.1:%u-%u:80", base, base + 2);
	parse(spec, &ps);
	ck_assert_int_eq(publish_bind(&ps, 1, &container, &eph, &set, err, sizeof(err)), 0);
	ck_assert_uint_eq(set.bs_n, 1);
	ck_assert_uint_eq(addr_port(&set.bs_v[0].b_host), base + 2);
	close(busy0);
	close(busy1);
}
END_TEST

START_TEST(busy_range_fails_cleanly)
{
	unsigned base = free_region(2);
	int busy0 = bind_tcp("127.0.0.1", base), busy1 = bind_tcp("127.0.0.1", base + 1);
	struct port_spec ps;
	char spec[64];

	snprintf(spec, sizeof(spec), "127.0.0.1:%u-%u:80", base, base + 1);
	parse(spec, &ps);
	ck_assert_int_eq(publish_bind(&ps, 1, &container, &eph, &set, err, sizeof(err)), -ENOSPC);
	ck_assert_uint_eq(set.bs_n, 0);
	ck_assert_ptr_nonnull(strstr(err, "no free port in host range"));
	ck_assert_ptr_nonnull(strstr(err, spec));
	close(busy0);
	close(busy1);
}
END_TEST

START_TEST(all_or_nothing)
{
	unsigned base = free_region(2);
	int busy = bind_tcp("127.0.0.1", base + 1), probe;
	struct port_spec ps[2];
	char spec[2][64];

	snprintf(spec[0], sizeof(spec[0]), "127.0.0.1:%u:80", base);
	snprintf(spec[1], sizeof(spec[1]), "127.0.0.1:%u:81", base + 1);
	parse(spec[0], &ps[0]);
	parse(spec[1], &ps[1]);
	ck_assert_int_eq(publish_bind(ps, 2, &container, &eph, &set, err, sizeof(err)),
			 -EADDRINUSE);
	ck_assert_uint_eq(set.bs_n, 0);
	ck_assert_ptr_nonnull(strstr(err, "address already in use"));
	ck_assert_ptr_nonnull(strstr(err, spec[1]));
	/* The first spec's port was given back. */
	probe = bind_tcp("127.0.0.1", base);
	ck_assert_int_ge(probe, 0);
	close(probe);
	close(busy);
}
END_TEST

START_TEST(report_order)
{
	static const struct {
		int proto;
		const char *host, *backend;
		unsigned hport, bport;
	} in[] = {
		{ IPPROTO_UDP, "::", "10.0.0.2", 32768, 80 },
		{ IPPROTO_TCP, "::", "10.0.0.2", 32768, 80 },
		{ IPPROTO_TCP, "127.0.0.3", "10.0.0.2", 5, 80 },
		{ IPPROTO_TCP, "0.0.0.0", "10.0.0.2", 32768, 80 },
		{ IPPROTO_SCTP, "0.0.0.0", "10.0.0.2", 1, 80 },
		{ IPPROTO_TCP, "127.0.0.1", "10.0.0.2", 5, 80 },
		{ IPPROTO_TCP, "127.0.0.1", "10.0.0.2", 40000, 22 },
		{ IPPROTO_TCP, "127.0.0.1", "10.0.0.2", 9, 8080 },
	};
	char out[512];
	FILE *f;

	for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		struct binding b = { .b_proto = in[i].proto, .b_fd = -1 };

		addr_parse_ip(in[i].host, (uint16_t)in[i].hport, &b.b_host);
		addr_parse_ip(in[i].backend, (uint16_t)in[i].bport, &b.b_backend);
		publish_add(&set, &b);
	}
	publish_sort(&set);
	f = fmemopen(out, sizeof(out), "w");
	publish_report(&set, f);
	fclose(f);
	/* docker port's order: the lines in natural order (numbers as numbers). */
	ck_assert_str_eq(out, "22/tcp -> 127.0.0.1:40000\n"
			      "80/sctp -> 0.0.0.0:1\n"
			      "80/tcp -> 0.0.0.0:32768\n"
			      "80/tcp -> 127.0.0.1:5\n"
			      "80/tcp -> 127.0.0.3:5\n"
			      "80/tcp -> [::]:32768\n"
			      "80/udp -> [::]:32768\n"
			      "8080/tcp -> 127.0.0.1:9\n");
}
END_TEST

START_TEST(host_range_keeps_the_random_cursor)
{
	unsigned base = free_region(3);
	struct port_spec ps[3];
	char spec[64];
	unsigned p1, p2;

	/* Random ports: the ephemeral range from its middle, so a reset to its
	 * bottom would show. */
	eph.pr_first = 20000;
	eph.pr_last = 60000;
	snprintf(spec, sizeof(spec), "127.0.0.1:%u-%u:80", base, base + 2);
	parse(spec, &ps[0]);
	parse("127.0.0.1::81", &ps[1]);
	parse("127.0.0.1::82", &ps[2]);
	ck_assert_int_eq(publish_bind(ps, 3, &container, &eph, &set, err, sizeof(err)), 0);
	ck_assert_uint_eq(set.bs_n, 3);
	p1 = addr_port(&set.bs_v[1].b_host);
	p2 = addr_port(&set.bs_v[2].b_host);
	/* A cursor reset by the host range would start the random ports at the
	 * bottom of the range (1 in 13000 that a random start lands there). */
	ck_assert_msg(p1 > (unsigned)eph.pr_first + 3, "random port %u at the bottom of the range", p1);
	ck_assert_msg(p2 > p1 || p1 > 59000, "random ports %u then %u", p1, p2);
}
END_TEST

static Suite *publish_suite(void)
{
	Suite *s = suite_create("publish");
	TCase *tc = tcase_create("bind");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ephemeral_range_file);
	tcase_add_test(tc, random_port_in_ephemeral_range);
	tcase_add_test(tc, both_families_without_ip);
	tcase_add_test(tc, range_port_by_port);
	tcase_add_test(tc, host_range_first_free);
	tcase_add_test(tc, busy_range_fails_cleanly);
	tcase_add_test(tc, all_or_nothing);
	tcase_add_test(tc, report_order);
	tcase_add_test(tc, host_range_keeps_the_random_cursor);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(publish_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
