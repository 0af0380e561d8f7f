// SPDX-License-Identifier: MIT
/*
 * fuzz_addr.c - libFuzzer target for address and port parsing (addr.c).
 *
 * The input is read three ways:
 *   1. as text (up to the first NUL or newline) given to addr_parse_port(), checked
 *      against a plain reference reading of the same rules (digits only,
 *      at most five, value 0..65535; -EINVAL for a non-digit or nothing,
 *      -ERANGE for too many digits or too large);
 *   2. as text given to addr_parse_ip(), checked against inet_pton() (IPv4,
 *      IPv6, IPv6 in brackets, nothing else), then round-tripped:
 *      addr_format_ip() and addr_format() ("ip:port", "[ip]:port") must
 *      parse back to the same address and port, fit ADDR_STRLEN, and stay
 *      within a buffer of any smaller size;
 *   3. as raw bytes given to addr_from_sockaddr() with a length taken from
 *      the input: only AF_INET/AF_INET6 of full length are accepted, and an
 *      accepted address formats and parses back to itself (scope and flow
 *      label aside, which the text form does not carry).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* addr_parse_port()'s rules, written the obvious way. */
static int ref_parse_port(const char *s, uint16_t *port)
{
	size_t n = strlen(s), i;
	unsigned long v = 0;

	if (n == 0)
		return -EINVAL;
	/* The parser stops at the sixth character: a non-digit among the first
	 * six is "not a number", six digits or more is "too large". */
	for (i = 0; i < n && i < 6; i++)
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
	if (n > 5)
		return -ERANGE;
	for (i = 0; i < n; i++)
		v = v * 10 + (unsigned long)(s[i] - '0');
	if (v > 65535)
		return -ERANGE;
	*port = (uint16_t)v;
	return 0;
}

/* Whether inet_pton() takes @s as IPv4, IPv6, or IPv6 in brackets. */
static int ref_family(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];
	size_t n = strlen(s);
	char *inner;
	int ok;

	if (inet_pton(AF_INET, s, buf) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, s, buf) == 1)
		return AF_INET6;
	if (n < 2 || s[0] != '[' || s[n - 1] != ']')
		return 0;
	inner = fuzz_strndup((const unsigned char *)s + 1, n - 2);
	ok = inet_pton(AF_INET6, inner, buf) == 1;
	free(inner);
	return ok ? AF_INET6 : 0;
}

/* Parse "ip:port" or "[ip]:port" as addr_format() writes it. */
static void parse_formatted(const char *text, struct addr *out)
{
	const char *colon = strrchr(text, ':');
	char *ip;
	uint16_t port;

	FUZZ_CHECK(colon != NULL, "no port in \"%s\"", text);
	FUZZ_CHECK(addr_parse_port(colon + 1, &port) == 0, "bad port in \"%s\"", text);
	ip = fuzz_strndup((const unsigned char *)text, (size_t)(colon - text));
	FUZZ_CHECK(addr_parse_ip(ip, port, out) == 0, "\"%s\" from addr_format() does not parse",
		   text);
	FUZZ_CHECK((addr_family(out) == AF_INET6) == (ip[0] == '['),
		   "\"%s\": IPv6 must be bracketed, IPv4 not", text);
	free(ip);
}

/* Format @a into buffers of every size up to ADDR_STRLEN (exact-size heap
 * buffers: ASan sees a write past the end), then round-trip it. */
static void check_format(const struct addr *a)
{
	char full[ADDR_STRLEN], ipbuf[ADDR_STRLEN];
	struct addr back;

	FUZZ_CHECK(addr_format(a, full, sizeof(full)) == full,
		   "addr_format returns another buffer");
	FUZZ_CHECK(strlen(full) < ADDR_STRLEN - 1, "\"%s\" fills ADDR_STRLEN", full);
	for (size_t len = 1; len < ADDR_STRLEN; len += 7) {
		char *small = malloc(len);

		if (!small)
			abort();
		addr_format(a, small, len);
		FUZZ_CHECK(strnlen(small, len) < len, "addr_format overran %zu bytes", len);
		addr_format_ip(a, small, len);
		FUZZ_CHECK(strnlen(small, len) < len, "addr_format_ip overran %zu bytes", len);
		free(small);
	}
	parse_formatted(full, &back);
	FUZZ_CHECK(addr_equal(a, &back), "\"%s\" parses to another address", full);
	FUZZ_CHECK(addr_port(&back) == addr_port(a), "\"%s\": port changed", full);

	addr_format_ip(a, ipbuf, sizeof(ipbuf));
	FUZZ_CHECK(addr_parse_ip(ipbuf, addr_port(a), &back) == 0,
		   "\"%s\" from addr_format_ip() does not parse", ipbuf);
	FUZZ_CHECK(addr_equal(a, &back), "\"%s\" parses to another address", ipbuf);
	FUZZ_CHECK(addr_is_any(a) == addr_is_any(&back), "addr_is_any differs for \"%s\"", ipbuf);
	FUZZ_CHECK(addr_netname(IPPROTO_UDP, a) && addr_proto_name(IPPROTO_SCTP), "no name");
}

static void fuzz_text(const char *s, uint16_t port)
{
	struct addr a, b;
	uint16_t p = 0, rp = 0;
	int ret, ref;

	ret = addr_parse_port(s, &p);
	ref = ref_parse_port(s, &rp);
	FUZZ_CHECK(ret == ref, "addr_parse_port(\"%s\") = %d, want %d", s, ret, ref);
	FUZZ_CHECK(ret < 0 || p == rp, "addr_parse_port(\"%s\") = %u, want %u", s, p, rp);

	ret = addr_parse_ip(s, port, &a);
	ref = ref_family(s);
	FUZZ_CHECK((ret == 0) == (ref != 0), "addr_parse_ip(\"%s\") = %d, inet_pton says %d", s,
		   ret, ref);
	if (ret < 0) {
		FUZZ_CHECK(ret == -EINVAL, "addr_parse_ip(\"%s\") = %d", s, ret);
		return;
	}
	FUZZ_CHECK(addr_family(&a) == ref, "\"%s\": family %d, want %d", s, addr_family(&a), ref);
	FUZZ_CHECK(a.len == (ref == AF_INET ? sizeof(struct sockaddr_in)
					    : sizeof(struct sockaddr_in6)),
		   "\"%s\": length %u", s, (unsigned)a.len);
	FUZZ_CHECK(addr_port(&a) == port, "\"%s\": port %u, want %u", s, addr_port(&a), port);
	addr_set_port(&a, (uint16_t)(port ^ 0x5a5a));
	FUZZ_CHECK(addr_port(&a) == (uint16_t)(port ^ 0x5a5a), "addr_set_port");
	check_format(&a);
	FUZZ_CHECK(addr_from_sockaddr(&a.u.sa, a.len, &b) == 0 && addr_equal(&a, &b),
		   "addr_from_sockaddr of a parsed address");
}

static void fuzz_sockaddr(const uint8_t *data, size_t size)
{
	struct sockaddr_storage ss;
	struct addr a;
	socklen_t len;
	int ret;

	if (size < 2)
		return;
	len = data[0] % (sizeof(ss) + 1);
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, data + 1, size - 1 < sizeof(ss) ? size - 1 : sizeof(ss));
	ret = addr_from_sockaddr((struct sockaddr *)&ss, len, &a);
	if (ss.ss_family == AF_INET && len >= sizeof(struct sockaddr_in))
		FUZZ_CHECK(ret == 0 && a.len == sizeof(struct sockaddr_in), "AF_INET refused");
	else if (ss.ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
		FUZZ_CHECK(ret == 0 && a.len == sizeof(struct sockaddr_in6), "AF_INET6 refused");
	else
		FUZZ_CHECK(ret == -EAFNOSUPPORT, "family %d length %u accepted", ss.ss_family,
			   (unsigned)len);
	if (ret < 0)
		return;
	FUZZ_CHECK(addr_equal(&a, &a), "an address differs from itself");
	if (addr_family(&a) == AF_INET6) {
		/* The text form carries neither scope nor flow label. */
		a.u.sin6.sin6_scope_id = 0;
		a.u.sin6.sin6_flowinfo = 0;
	}
	check_format(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fuzz_strndup(data, fuzz_line_len(data, size));
	uint16_t port = size >= 2 ? (uint16_t)(data[size - 2] << 8 | data[size - 1]) : 0;

	fuzz_text(s, port);
	free(s);
	fuzz_sockaddr(data, size);
	return 0;
}
