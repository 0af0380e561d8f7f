// SPDX-License-Identifier: MIT
/* Unit tests for spec.c: every publish form of Docker's run reference. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "portproxy/spec.h"

static struct port_spec ps;
static char err[256];

static void ok(const char *s)
{
	err[0] = '\0';
	ck_assert_msg(spec_parse_publish(s, &ps, err, sizeof(err)) == 0, "%s: %s", s, err);
}

static void expect(int proto, const char *ip, unsigned hf, unsigned hl, unsigned cf, unsigned cl)
{
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(ps.ps_proto, proto);
	if (ip)
		ck_assert_str_eq(addr_format_ip(&ps.ps_ip, buf, sizeof(buf)), ip);
	ck_assert(ps.ps_has_ip == (ip != NULL));
	ck_assert_uint_eq(ps.ps_host_first, hf);
	ck_assert_uint_eq(ps.ps_host_last, hl);
	ck_assert_uint_eq(ps.ps_cont_first, cf);
	ck_assert_uint_eq(ps.ps_cont_last, cl);
}

START_TEST(every_form)
{
	ok("80");
	expect(IPPROTO_TCP, NULL, 0, 0, 80, 80);
	ok("8080:80");
	expect(IPPROTO_TCP, NULL, 8080, 8080, 80, 80);
	ok("127.0.0.1:8080:80");
	expect(IPPROTO_TCP, "127.0.0.1", 8080, 8080, 80, 80);
	ok("127.0.0.1::80");
	expect(IPPROTO_TCP, "127.0.0.1", 0, 0, 80, 80);
	ok("[::1]:8080:80");
	expect(IPPROTO_TCP, "::1", 8080, 8080, 80, 80);
	ok("[::1]::80/udp");
	expect(IPPROTO_UDP, "::1", 0, 0, 80, 80);
	ok("[2001:db8::1]:53:53/udp");
	expect(IPPROTO_UDP, "2001:db8::1", 53, 53, 53, 53);
	ok("53/udp");
	expect(IPPROTO_UDP, NULL, 0, 0, 53, 53);
	ok("9/sctp");
	expect(IPPROTO_SCTP, NULL, 0, 0, 9, 9);
	ok("80/tcp");
	expect(IPPROTO_TCP, NULL, 0, 0, 80, 80);
	ok("80/UDP"); /* Docker lower-cases the protocol */
	expect(IPPROTO_UDP, NULL, 0, 0, 80, 80);
	ok("80/"); /* and takes an empty one for tcp */
	expect(IPPROTO_TCP, NULL, 0, 0, 80, 80);
}
END_TEST

START_TEST(ranges)
{
	ok("1234-1236:1234-1236/tcp");
	expect(IPPROTO_TCP, NULL, 1234, 1236, 1234, 1236);
	ok("2000-2002:3000-3002");
	expect(IPPROTO_TCP, NULL, 2000, 2002, 3000, 3002);
	ok("1234-1236:1234/tcp"); /* the first free of the host range */
	expect(IPPROTO_TCP, NULL, 1234, 1236, 1234, 1234);
	ok("7000-7010"); /* each on a random port */
	expect(IPPROTO_TCP, NULL, 0, 0, 7000, 7010);
	ok("0.0.0.0:5000-5001:6000-6001/udp");
	expect(IPPROTO_UDP, "0.0.0.0", 5000, 5001, 6000, 6001);
	ok("65535");
	expect(IPPROTO_TCP, NULL, 0, 0, 65535, 65535);
	ok("0:80"); /* host port 0: a random one, as Docker */
	expect(IPPROTO_TCP, NULL, 0, 0, 80, 80);
	ok("127.0.0.1:0:80");
	expect(IPPROTO_TCP, "127.0.0.1", 0, 0, 80, 80);
	ok("[::ffff:127.0.0.1]::80"); /* an IPv4-mapped address is IPv4 */
	expect(IPPROTO_TCP, "127.0.0.1", 0, 0, 80, 80);
	ck_assert_int_eq(addr_family(&ps.ps_ip), AF_INET);
}
END_TEST

START_TEST(bad_forms)
{
	static const struct {
		const char *spec, *why;
	} bad[] = {
		{ "80-82:80-81", "same length" },
		{ "80:80-81", "same length" },
		{ "70000", "container port" },
		{ ":80", "host port is empty" },
		{ "1.2.3:80:80", "not an IP" },
		{ "80/xyz", "protocol" },
		{ "", "no container port" },
		{ "/tcp", "no container port" },
		{ "[::1]:80", "brackets" },
		{ "0", "container port" },
		{ "82-80", "container port" },
		{ "::1:80:80", "brackets" },
		{ "::80", "host IP is empty" },
		{ "[::1]80", "brackets" },
		{ "[::1:80:80", "brackets" },
		{ "[1.2.3.4]:80:80", "not an IP" },
		{ "localhost:80:80", "not an IP" },
		{ "a:b", "host port" },
		{ "80:", "container port is empty" },
		{ "80:-1", "container port" },
		{ "1-2-3", "container port" },
		{ "80:80:80:80", "colons" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		ck_assert_msg(spec_parse_publish(bad[i].spec, &ps, err, sizeof(err)) == -EINVAL,
			      "\"%s\" accepted", bad[i].spec);
		ck_assert_msg(strstr(err, bad[i].why), "\"%s\": \"%s\" lacks \"%s\"", bad[i].spec,
			      err, bad[i].why);
		ck_assert_msg(strstr(err, bad[i].spec), "\"%s\": error does not name the spec",
			      bad[i].spec);
	}
}
END_TEST

START_TEST(expose)
{
	ck_assert_int_eq(spec_parse_expose("80", &ps, err, sizeof(err)), 0);
	expect(IPPROTO_TCP, NULL, 0, 0, 80, 80);
	ck_assert_int_eq(spec_parse_expose("7000-7002/udp", &ps, err, sizeof(err)), 0);
	expect(IPPROTO_UDP, NULL, 0, 0, 7000, 7002);
	ck_assert_uint_eq(spec_ports(&ps), 3);
	ck_assert_int_eq(spec_parse_expose("80:80", &ps, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(spec_parse_expose("80/icmp", &ps, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(spec_parse_expose("", &ps, err, sizeof(err)), -EINVAL);
}
END_TEST

static Suite *spec_suite(void)
{
	Suite *s = suite_create("spec");
	TCase *tc = tcase_create("publish");

	tcase_add_test(tc, every_form);
	tcase_add_test(tc, ranges);
	tcase_add_test(tc, bad_forms);
	tcase_add_test(tc, expose);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(spec_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
