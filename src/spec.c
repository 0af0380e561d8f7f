// SPDX-License-Identifier: MIT
/*
 * spec.c - parse the publish forms of Docker's run reference. Pure: no
 * sockets, no logging.
 *
 *   ip:hostPort:containerPort | ip::containerPort | hostPort:containerPort
 *   | containerPort, each with an optional /tcp, /udp or /sctp, IPv6 host
 *   IPs in brackets, and ranges "first-last" on either side:
 *   - both ranges of one length: mapped port by port;
 *   - a host range and one container port: the first free host port;
 *   - no host port: a random free port from the ephemeral range.
 * A bad spec gets one line naming the rule it breaks.
 */
#include "portproxy/spec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

__attribute__((format(printf, 4, 5))) static int bad(const char *spec, char *err, size_t errlen,
						     const char *fmt, ...)
{
	char why[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "invalid publish spec \"%s\": %s", spec, why);
	return -EINVAL;
}

/* "80" or "8000-8010" (@len bytes of @s) into [first, last]. Return: 0 or -EINVAL */
static int parse_range(const char *s, size_t len, uint16_t *first, uint16_t *last)
{
	char buf[16];
	char *dash;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	dash = strchr(buf, '-');
	if (dash)
		*dash = '\0';
	if (addr_parse_port(buf, first) < 0 || *first == 0)
		return -EINVAL;
	*last = *first;
	if (dash && (addr_parse_port(dash + 1, last) < 0 || *last < *first))
		return -EINVAL;
	return 0;
}

/* Strip "/proto" from the end of @s: sets @proto and the length before it. */
static int parse_proto(const char *s, size_t *len, int *proto)
{
	const char *slash = strrchr(s, '/');

	*proto = IPPROTO_TCP;
	*len = strlen(s);
	if (!slash)
		return 0;
	*len = (size_t)(slash - s);
	/* As Docker: any case, and an empty protocol is tcp. */
	if (!slash[1] || !strcasecmp(slash + 1, "tcp"))
		*proto = IPPROTO_TCP;
	else if (!strcasecmp(slash + 1, "udp"))
		*proto = IPPROTO_UDP;
	else if (!strcasecmp(slash + 1, "sctp"))
		*proto = IPPROTO_SCTP;
	else
		return -EINVAL;
	return 0;
}

static int check_ports(const char *spec, const char *what, const char *s, size_t len,
		       uint16_t *first, uint16_t *last, char *err, size_t errlen)
{
	if (len == 0)
		return bad(spec, err, errlen, "the %s port is empty", what);
	if (parse_range(s, len, first, last) < 0)
		return bad(spec, err, errlen,
			   "the %s port \"%.*s\" is not a port 1-65535 or a range first-last", what,
			   (int)len, s);
	return 0;
}

/**
 * spec_parse_publish() - parse one -p value into @out
 * @err: one line naming the spec and the rule it breaks, on failure
 * Return: 0, or -EINVAL
 */
int spec_parse_publish(const char *s, struct port_spec *out, char *err, size_t errlen)
{
	char ipbuf[64];
	const char *ports = s, *colon;
	size_t len, iplen = 0;
	bool has_ip = false;

	memset(out, 0, sizeof(*out));
	if (parse_proto(s, &len, &out->ps_proto) < 0)
		return bad(s, err, errlen, "the protocol must be tcp, udp or sctp");
	if (len == 0)
		return bad(s, err, errlen, "no container port");

	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);

		if (!close || close + 1 >= s + len || close[1] != ':' ||
		    !memchr(close + 2, ':', (size_t)(s + len - close - 2)))
			return bad(s, err, errlen,
				   "an IPv6 host IP in brackets must be followed by "
				   ":hostPort:containerPort or ::containerPort");
		iplen = (size_t)(close + 1 - s);
		ports = close + 2;
		has_ip = true;
	} else {
		const char *last = memrchr(s, ':', len);
		const char *first = memchr(s, ':', len);

		if (first && last != first) {
			/* ip:hostPort:containerPort, the IP before the second-last colon. */
			const char *mid = memrchr(s, ':', (size_t)(last - s));

			if (mid != first)
				return bad(s, err, errlen,
					   "too many colons (an IPv6 address goes in brackets)");
			iplen = (size_t)(first - s);
			ports = first + 1;
			has_ip = true;
		}
	}
	if (has_ip) {
		if (iplen == 0)
			return bad(s, err, errlen, "the host IP is empty");
		if (iplen >= sizeof(ipbuf))
			return bad(s, err, errlen, "the host IP is too long");
		memcpy(ipbuf, s, iplen);
		ipbuf[iplen] = '\0';
		if (addr_parse_ip(ipbuf, 0, &out->ps_ip) < 0 ||
		    (s[0] != '[' && addr_family(&out->ps_ip) == AF_INET6))
			return bad(s, err, errlen, "the host IP \"%s\" is not an IP address%s",
				   ipbuf,
				   s[0] != '[' && strchr(ipbuf, ':') ? " (IPv6 goes in brackets)"
								     : "");
		out->ps_has_ip = true;
		if (addr_family(&out->ps_ip) == AF_INET6 &&
		    IN6_IS_ADDR_V4MAPPED(&out->ps_ip.u.sin6.sin6_addr)) {
			/* [::ffff:a.b.c.d] is an IPv4 address, as Go parses it; an
			 * IPv6-only socket could not bind it. */
			char v4[INET_ADDRSTRLEN];

			inet_ntop(AF_INET, &out->ps_ip.u.sin6.sin6_addr.s6_addr[12], v4,
				  sizeof(v4));
			addr_parse_ip(v4, 0, &out->ps_ip);
		}
	}

	len -= (size_t)(ports - s);
	colon = memchr(ports, ':', len);
	if (colon) {
		size_t hlen = (size_t)(colon - ports);

		if (hlen == 0 && !has_ip)
			return bad(s, err, errlen,
				   "the host port is empty (write containerPort alone for a random "
				   "one)");
		/* Host port 0, as Docker reads it, is a random one. */
		if (hlen && !(hlen == 1 && ports[0] == '0') &&
		    check_ports(s, "host", ports, hlen, &out->ps_host_first, &out->ps_host_last,
				err, errlen) < 0)
			return -EINVAL;
		len -= hlen + 1;
		ports = colon + 1;
	}
	if (check_ports(s, "container", ports, len, &out->ps_cont_first, &out->ps_cont_last, err,
			errlen) < 0)
		return -EINVAL;
	if (out->ps_host_first && out->ps_cont_last != out->ps_cont_first &&
	    out->ps_host_last - out->ps_host_first != out->ps_cont_last - out->ps_cont_first)
		return bad(s, err, errlen,
			   "a container port range needs a host range of the same length");
	return 0;
}

/**
 * spec_parse_expose() - parse one -expose value: port[-port][/proto]
 *
 * The result publishes every port of the range on a random host port, as
 * `docker run -P` does with EXPOSE.
 * Return: 0, or -EINVAL
 */
int spec_parse_expose(const char *s, struct port_spec *out, char *err, size_t errlen)
{
	size_t len;

	memset(out, 0, sizeof(*out));
	if (parse_proto(s, &len, &out->ps_proto) < 0)
		return bad(s, err, errlen, "the protocol must be tcp, udp or sctp");
	if (parse_range(s, len, &out->ps_cont_first, &out->ps_cont_last) < 0) {
		snprintf(err, errlen,
			 "invalid expose spec \"%s\": want port or first-last, with /tcp, /udp or "
			 "/sctp",
			 s);
		return -EINVAL;
	}
	/* Docker keeps exposed ports in a set, and -P leaves out those with a
	 * binding of their own. */
	out->ps_if_unpublished = true;
	return 0;
}

/* How many container ports @ps publishes. */
unsigned spec_ports(const struct port_spec *ps)
{
	return (unsigned)(ps->ps_cont_last - ps->ps_cont_first) + 1;
}
