// SPDX-License-Identifier: MIT
/* Unit tests for addr.c: parsing and formatting addresses and ports. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>

#include "portproxy/addr.h"

START_TEST(parse_ipv4)
{
	struct addr a;
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(addr_parse_ip("192.0.2.1", 80, &a), 0);
	ck_assert_int_eq(addr_family(&a), AF_INET);
	ck_assert_uint_eq(a.len, sizeof(struct sockaddr_in));
	ck_assert_uint_eq(addr_port(&a), 80);
	ck_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "192.0.2.1:80");
	ck_assert_str_eq(addr_format_ip(&a, buf, sizeof(buf)), "192.0.2.1");
	ck_assert(!addr_is_any(&a));
	ck_assert_int_eq(addr_parse_ip("0.0.0.0", 0, &a), 0);
	ck_assert(addr_is_any(&a));
}
END_TEST

START_TEST(parse_ipv6)
{
	struct addr a;
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(addr_parse_ip("::1", 8080, &a), 0);
	ck_assert_int_eq(addr_family(&a), AF_INET6);
	ck_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "[::1]:8080");
	ck_assert_int_eq(addr_parse_ip("[2001:db8::2]", 1, &a), 0);
	ck_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "[2001:db8::2]:1");
	ck_assert_int_eq(addr_parse_ip("::", 0, &a), 0);
	ck_assert(addr_is_any(&a));
	ck_assert_int_eq(addr_parse_ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535, &a),
			 0);
	ck_assert_str_eq(addr_format(&a, buf, sizeof(buf)),
			 "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
}
END_TEST

START_TEST(parse_bad_ip)
{
	static const char *const bad[] = { "",	       "1.2.3",	 "1.2.3.4.5", "256.1.1.1",
					   "localhost", "[::1",	 "::1]",      "[1.2.3.4]",
					   "fe80::1%lo", " 1.2.3.4", "1.2.3.4 ", ":::" };
	struct addr a;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(addr_parse_ip(bad[i], 0, &a) == -EINVAL, "\"%s\" accepted", bad[i]);
}
END_TEST

START_TEST(parse_port)
{
	uint16_t p;

	ck_assert_int_eq(addr_parse_port("0", &p), 0);
	ck_assert_uint_eq(p, 0);
	ck_assert_int_eq(addr_parse_port("65535", &p), 0);
	ck_assert_uint_eq(p, 65535);
	ck_assert_int_eq(addr_parse_port("00080", &p), 0);
	ck_assert_uint_eq(p, 80);
	ck_assert_int_eq(addr_parse_port("65536", &p), -ERANGE);
	ck_assert_int_eq(addr_parse_port("999999", &p), -ERANGE);
	ck_assert_int_eq(addr_parse_port("", &p), -EINVAL);
	ck_assert_int_eq(addr_parse_port("-1", &p), -EINVAL);
	ck_assert_int_eq(addr_parse_port("8o", &p), -EINVAL);
	ck_assert_int_eq(addr_parse_port(" 80", &p), -EINVAL);
}
END_TEST

START_TEST(equality_and_ports)
{
	struct addr a, b;

	addr_parse_ip("127.0.0.1", 1, &a);
	addr_parse_ip("127.0.0.1", 2, &b);
	ck_assert(!addr_equal(&a, &b));
	addr_set_port(&b, 1);
	ck_assert(addr_equal(&a, &b));
	addr_parse_ip("::1", 1, &b);
	ck_assert(!addr_equal(&a, &b));
	addr_parse_ip("::1", 1, &a);
	ck_assert(addr_equal(&a, &b));
	addr_set_port(&a, 443);
	ck_assert_uint_eq(addr_port(&a), 443);
}
END_TEST

START_TEST(from_sockaddr)
{
	struct addr a, b;

	addr_parse_ip("2001:db8::1", 9, &a);
	ck_assert_int_eq(addr_from_sockaddr(&a.u.sa, a.len, &b), 0);
	ck_assert(addr_equal(&a, &b));
	ck_assert_int_eq(addr_from_sockaddr(&a.u.sa, sizeof(struct sockaddr_in), &b),
			 -EAFNOSUPPORT);
	a.u.sa.sa_family = AF_UNIX;
	ck_assert_int_eq(addr_from_sockaddr(&a.u.sa, a.len, &b), -EAFNOSUPPORT);
}
END_TEST

START_TEST(netnames)
{
	struct addr a;

	addr_parse_ip("0.0.0.0", 0, &a);
	ck_assert_str_eq(addr_netname(IPPROTO_TCP, &a), "tcp4");
	ck_assert_str_eq(addr_netname(IPPROTO_UDP, &a), "udp4");
	addr_parse_ip("::", 0, &a);
	ck_assert_str_eq(addr_netname(IPPROTO_TCP, &a), "tcp6");
	ck_assert_str_eq(addr_netname(IPPROTO_SCTP, &a), "sctp6");
}
END_TEST

static Suite *addr_suite(void)
{
	Suite *s = suite_create("addr");
	TCase *parse = tcase_create("parse"), *fmt = tcase_create("format");

	tcase_add_test(parse, parse_ipv4);
	tcase_add_test(parse, parse_ipv6);
	tcase_add_test(parse, parse_bad_ip);
	tcase_add_test(parse, parse_port);
	tcase_add_test(fmt, equality_and_ports);
	tcase_add_test(fmt, from_sockaddr);
	tcase_add_test(fmt, netnames);
	suite_add_tcase(s, parse);
	suite_add_tcase(s, fmt);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(addr_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
