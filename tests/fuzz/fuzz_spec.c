// SPDX-License-Identifier: MIT
/*
 * fuzz_spec.c - libFuzzer target for the publish spec parser (spec.c).
 *
 * The input, up to its first NUL or newline, is one -p value and one -expose value.
 * Besides "no crash, no out-of-bounds access, no undefined behaviour"
 * (ASan, UBSan), every result must keep these promises:
 *   - success: the invariants of fuzz_check_spec() (a known protocol,
 *     container ports 1..65535 with first <= last, host ports both set or
 *     both 0 and first <= last, a host range as long as a container range,
 *     an IP of a known family), and the spec printed back in canonical form
 *     ("[ip:]host:cont/proto") parses to the same spec: the parser reads
 *     what it claims to have read;
 *   - failure: -EINVAL and a one-line message that fits @err, also when
 *     @err is tiny (truncation never writes past it);
 *   - a string without a colon means the same to -p and to -expose;
 *   - the parse is deterministic and does not depend on @errlen.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ERRLEN 256

/* The canonical text of @ps: "[ip:]host:cont/proto", ranges as "a-b". */
static void spec_print(const struct port_spec *ps, char *buf, size_t len)
{
	char ip[ADDR_STRLEN], host[16] = "", cont[16];
	int n = 0;

	if (ps->ps_host_first == ps->ps_host_last)
		snprintf(host, sizeof(host), "%u", ps->ps_host_first);
	else
		snprintf(host, sizeof(host), "%u-%u", ps->ps_host_first, ps->ps_host_last);
	if (ps->ps_cont_first == ps->ps_cont_last)
		snprintf(cont, sizeof(cont), "%u", ps->ps_cont_first);
	else
		snprintf(cont, sizeof(cont), "%u-%u", ps->ps_cont_first, ps->ps_cont_last);
	if (ps->ps_has_ip) {
		addr_format_ip(&ps->ps_ip, ip, sizeof(ip));
		n = snprintf(buf, len, addr_family(&ps->ps_ip) == AF_INET6 ? "[%s]:" : "%s:", ip);
	}
	snprintf(buf + n, len - (size_t)n, "%s%s%s/%s", ps->ps_host_first ? host : "",
		 ps->ps_host_first || ps->ps_has_ip ? ":" : "", cont,
		 addr_proto_name(ps->ps_proto));
}

/* Parse @s with @fn into @out, once with a roomy and once with a tiny error
 * buffer (heap, exact size: ASan sees any write past it); both must agree. */
static int parse_twice(int (*fn)(const char *, struct port_spec *, char *, size_t), const char *s,
		       struct port_spec *out, size_t tiny)
{
	char *err = malloc(ERRLEN), *small = malloc(tiny);
	struct port_spec again;
	int ret, ret2;

	if (!err || !small)
		abort();
	ret = fn(s, out, err, ERRLEN);
	FUZZ_CHECK(ret == 0 || ret == -EINVAL, "return %d for \"%s\"", ret, s);
	if (ret < 0)
		fuzz_check_err(err, ERRLEN, s);
	ret2 = fn(s, &again, small, tiny);
	FUZZ_CHECK(ret2 == ret, "return %d, then %d with errlen %zu, for \"%s\"", ret, ret2, tiny,
		   s);
	if (ret2 < 0)
		FUZZ_CHECK(strnlen(small, tiny) < tiny, "error not terminated within %zu bytes",
			   tiny);
	else
		FUZZ_CHECK(fuzz_spec_equal(out, &again), "two parses of \"%s\" differ", s);
	free(small);
	free(err);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct port_spec pub, exp, back;
	char canon[128], err[ERRLEN];
	size_t tiny = 1 + (size ? data[0] % 16 : 0);
	char *s = fuzz_strndup(data, fuzz_line_len(data, size));
	int rp, re;

	rp = parse_twice(spec_parse_publish, s, &pub, tiny);
	if (rp == 0) {
		fuzz_check_spec(&pub, false, s);
		spec_print(&pub, canon, sizeof(canon));
		FUZZ_CHECK(spec_parse_publish(canon, &back, err, sizeof(err)) == 0,
			   "\"%s\" parsed, its canonical form \"%s\" does not: %s", s, canon, err);
		FUZZ_CHECK(fuzz_spec_equal(&pub, &back),
			   "\"%s\" and its canonical form \"%s\" differ", s, canon);
	}

	re = parse_twice(spec_parse_expose, s, &exp, tiny);
	if (re == 0) {
		fuzz_check_spec(&exp, true, s);
		spec_print(&exp, canon, sizeof(canon));
		FUZZ_CHECK(spec_parse_expose(canon, &back, err, sizeof(err)) == 0,
			   "\"%s\" parsed, its canonical form \"%s\" does not: %s", s, canon, err);
		FUZZ_CHECK(fuzz_spec_equal(&exp, &back),
			   "\"%s\" and its canonical form \"%s\" differ", s, canon);
	}

	/* "80", "80-90/udp": a bare container port reads the same either way. */
	if (!strchr(s, ':')) {
		FUZZ_CHECK(rp == re, "-p \"%s\" returns %d, -expose %d", s, rp, re);
		if (rp == 0)
			FUZZ_CHECK(fuzz_spec_equal(&pub, &exp),
				   "-p and -expose read \"%s\" differently", s);
	}
	free(s);
	return 0;
}
