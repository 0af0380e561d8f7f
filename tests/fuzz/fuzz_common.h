/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.h - what the libFuzzer targets share: an assertion that
 * survives NDEBUG and says which invariant broke, and the invariants of a
 * parsed publish spec (fuzz_spec checks them on every spec it parses,
 * fuzz_cli on every spec that cli_parse() collects).
 */
#ifndef PORTPROXY_FUZZ_COMMON_H
#define PORTPROXY_FUZZ_COMMON_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portproxy/addr.h"
#include "portproxy/spec.h"

/* abort() (libFuzzer saves the input as a crash) with the broken invariant. */
#define FUZZ_CHECK(cond, ...)                                                                \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, \
				#cond);                                                      \
			fprintf(stderr, __VA_ARGS__);                                        \
			fputc('\n', stderr);                                                 \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* A heap copy of @len bytes of @data plus a NUL, sized exactly so that ASan
 * catches a read one past the terminator. */
static inline char *fuzz_strndup(const unsigned char *data, size_t len)
{
	char *s = malloc(len + 1);

	if (!s)
		abort();
	memcpy(s, data, len);
	s[len] = '\0';
	return s;
}

/* Length of the first line of the input: up to a NUL or a newline, so that
 * seed files are plain text files ending in a newline. */
static inline size_t fuzz_line_len(const unsigned char *data, size_t size)
{
	size_t n = 0;

	while (n < size && data[n] != '\0' && data[n] != '\n')
		n++;
	return n;
}

/* An error message from a parser: terminated inside the buffer, one line. */
static inline void fuzz_check_err(const char *err, size_t errlen, const char *input)
{
	size_t n = strnlen(err, errlen);

	FUZZ_CHECK(n < errlen, "error message not terminated within %zu bytes (input \"%s\")",
		   errlen, input);
	FUZZ_CHECK(errlen < 2 || n > 0, "empty error message for \"%s\"", input);
	/* The parsers quote the input, which may hold anything but what the
	 * callers split words on; only a newline of their own would break
	 * "one line", so only check inputs without one. */
	if (!strchr(input, '\n'))
		FUZZ_CHECK(!memchr(err, '\n', n), "multi-line error message: \"%s\"", err);
}

static inline bool fuzz_proto_ok(int proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* What every successfully parsed spec must satisfy (see spec.h). @expose:
 * it came from spec_parse_expose(), so it has neither IP nor host ports. */
static inline void fuzz_check_spec(const struct port_spec *ps, bool expose, const char *input)
{
	unsigned cont_len = (unsigned)ps->ps_cont_last - ps->ps_cont_first;
	unsigned host_len = (unsigned)ps->ps_host_last - ps->ps_host_first;

	FUZZ_CHECK(fuzz_proto_ok(ps->ps_proto), "proto %d for \"%s\"", ps->ps_proto, input);
	FUZZ_CHECK(ps->ps_cont_first >= 1, "container port 0 for \"%s\"", input);
	FUZZ_CHECK(ps->ps_cont_first <= ps->ps_cont_last, "container range %u-%u for \"%s\"",
		   ps->ps_cont_first, ps->ps_cont_last, input);
	FUZZ_CHECK((ps->ps_host_first == 0) == (ps->ps_host_last == 0),
		   "host range %u-%u half random for \"%s\"", ps->ps_host_first, ps->ps_host_last,
		   input);
	FUZZ_CHECK(ps->ps_host_first <= ps->ps_host_last, "host range %u-%u for \"%s\"",
		   ps->ps_host_first, ps->ps_host_last, input);
	/* Ranges map port by port, or a host range serves one container port. */
	if (ps->ps_host_first && cont_len)
		FUZZ_CHECK(host_len == cont_len,
			   "host range %u-%u vs container range %u-%u for \"%s\"",
			   ps->ps_host_first, ps->ps_host_last, ps->ps_cont_first, ps->ps_cont_last,
			   input);
	FUZZ_CHECK(spec_ports(ps) == cont_len + 1 && spec_ports(ps) <= 65535,
		   "spec_ports %u for \"%s\"", spec_ports(ps), input);
	if (ps->ps_has_ip)
		FUZZ_CHECK(addr_family(&ps->ps_ip) == AF_INET ||
				   addr_family(&ps->ps_ip) == AF_INET6,
			   "IP of family %d for \"%s\"", addr_family(&ps->ps_ip), input);
	if (expose)
		FUZZ_CHECK(!ps->ps_has_ip && !ps->ps_host_first, "expose with a host part: \"%s\"",
			   input);
}

/* Field by field (struct assignment need not copy padding). */
static inline bool fuzz_spec_equal(const struct port_spec *a, const struct port_spec *b)
{
	return a->ps_proto == b->ps_proto && a->ps_has_ip == b->ps_has_ip &&
	       (!a->ps_has_ip || addr_equal(&a->ps_ip, &b->ps_ip)) &&
	       a->ps_host_first == b->ps_host_first && a->ps_host_last == b->ps_host_last &&
	       a->ps_cont_first == b->ps_cont_first && a->ps_cont_last == b->ps_cont_last;
}

#endif
