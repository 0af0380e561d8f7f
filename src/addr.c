// SPDX-License-Identifier: MIT
/*
 * addr.c - parse and format IP addresses and ports. Pure functions: no
 * sockets, no logging, no allocation.
 */
#include "portproxy/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/**
 * addr_parse_ip() - parse an IPv4 or IPv6 literal into @out with @port
 * @s: "192.0.2.1", "::1", or "[::1]"; no names, no zones
 *
 * Unlike docker-proxy, an unparsable address is an error, never "any".
 * Return: 0, or -EINVAL
 */
int addr_parse_ip(const char *s, uint16_t port, struct addr *out)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(s);

	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, s, &out->u.sin.sin_addr) == 1) {
		out->u.sin.sin_family = AF_INET;
		out->u.sin.sin_port = htons(port);
		out->len = sizeof(out->u.sin);
		return 0;
	}
	if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
		if (n - 2 >= sizeof(buf))
			return -EINVAL;
		memcpy(buf, s + 1, n - 2);
		buf[n - 2] = '\0';
		s = buf;
	}
	if (inet_pton(AF_INET6, s, &out->u.sin6.sin6_addr) == 1) {
		out->u.sin6.sin6_family = AF_INET6;
		out->u.sin6.sin6_port = htons(port);
		out->len = sizeof(out->u.sin6);
		return 0;
	}
	return -EINVAL;
}

/**
 * addr_parse_port() - parse a decimal port 0..65535
 *
 * Digits only: no sign, no spaces, no hex, at most five digits.
 * Return: 0, or -EINVAL (not a number) or -ERANGE (above 65535)
 */
int addr_parse_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;
	size_t i;

	if (!s[0])
		return -EINVAL;
	for (i = 0; s[i]; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		if (i >= 5)
			return -ERANGE;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return -ERANGE;
	*port = (uint16_t)v;
	return 0;
}

/**
 * addr_from_sockaddr() - copy an AF_INET or AF_INET6 address into @out
 * Return: 0, or -EAFNOSUPPORT for another family or a short length
 */
int addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct addr *out)
{
	memset(out, 0, sizeof(*out));
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
		out->len = sizeof(struct sockaddr_in);
	else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
		out->len = sizeof(struct sockaddr_in6);
	else
		return -EAFNOSUPPORT;
	memcpy(&out->u, sa, out->len);
	return 0;
}

uint16_t addr_port(const struct addr *a)
{
	return ntohs(a->u.sa.sa_family == AF_INET ? a->u.sin.sin_port : a->u.sin6.sin6_port);
}

void addr_set_port(struct addr *a, uint16_t port)
{
	if (a->u.sa.sa_family == AF_INET)
		a->u.sin.sin_port = htons(port);
	else
		a->u.sin6.sin6_port = htons(port);
}

int addr_family(const struct addr *a)
{
	return a->u.sa.sa_family;
}

/* Same family, address and port (IPv6 scope too). */
bool addr_equal(const struct addr *a, const struct addr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	if (a->u.sa.sa_family == AF_INET)
		return a->u.sin.sin_port == b->u.sin.sin_port &&
		       a->u.sin.sin_addr.s_addr == b->u.sin.sin_addr.s_addr;
	return a->u.sin6.sin6_port == b->u.sin6.sin6_port &&
	       a->u.sin6.sin6_scope_id == b->u.sin6.sin6_scope_id &&
	       !memcmp(&a->u.sin6.sin6_addr, &b->u.sin6.sin6_addr, sizeof(struct in6_addr));
}

/* True for 0.0.0.0 and ::. */
bool addr_is_any(const struct addr *a)
{
	if (a->u.sa.sa_family == AF_INET)
		return a->u.sin.sin_addr.s_addr == htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(&a->u.sin6.sin6_addr);
}

/**
 * addr_format_ip() - the address alone: "192.0.2.1" or "::1"
 * Return: @buf
 */
const char *addr_format_ip(const struct addr *a, char *buf, size_t len)
{
	const void *ip = a->u.sa.sa_family == AF_INET ? (const void *)&a->u.sin.sin_addr
						      : (const void *)&a->u.sin6.sin6_addr;

	if (!inet_ntop(a->u.sa.sa_family, ip, buf, (socklen_t)len))
		snprintf(buf, len, "?");
	return buf;
}

/**
 * addr_format() - "192.0.2.1:80" or "[::1]:80", as Go and docker print them
 * Return: @buf
 */
const char *addr_format(const struct addr *a, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	addr_format_ip(a, ip, sizeof(ip));
	if (a->u.sa.sa_family == AF_INET6)
		snprintf(buf, len, "[%s]:%u", ip, addr_port(a));
	else
		snprintf(buf, len, "%s:%u", ip, addr_port(a));
	return buf;
}

/**
 * addr_netname() - Go's network name for messages: "tcp4", "udp6", "sctp4"...
 */
const char *addr_netname(int proto, const struct addr *a)
{
	bool v6 = a->u.sa.sa_family == AF_INET6;

	switch (proto) {
	case IPPROTO_UDP:
		return v6 ? "udp6" : "udp4";
	case IPPROTO_SCTP:
		return v6 ? "sctp6" : "sctp4";
	default:
		return v6 ? "tcp6" : "tcp4";
	}
}

/**
 * addr_proto_name() - "tcp", "udp" or "sctp", as flags and specs write them
 */
const char *addr_proto_name(int proto)
{
	switch (proto) {
	case IPPROTO_UDP:
		return "udp";
	case IPPROTO_SCTP:
		return "sctp";
	default:
		return "tcp";
	}
}
