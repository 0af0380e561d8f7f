/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_ADDR_H
#define PORTPROXY_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* An IPv4 or IPv6 socket address with its length. */
struct addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in sin;
		struct sockaddr_in6 sin6;
		struct sockaddr_storage ss;
	} u;
	socklen_t len;
};

/* "[ffff:...:ffff]:65535" plus NUL, rounded up. */
#define ADDR_STRLEN 56

int addr_parse_ip(const char *s, uint16_t port, struct addr *out);
int addr_parse_port(const char *s, uint16_t *port);
int addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct addr *out);
uint16_t addr_port(const struct addr *a);
void addr_set_port(struct addr *a, uint16_t port);
bool addr_equal(const struct addr *a, const struct addr *b);
bool addr_is_any(const struct addr *a);
int addr_family(const struct addr *a);
const char *addr_format(const struct addr *a, char *buf, size_t len);
const char *addr_format_ip(const struct addr *a, char *buf, size_t len);
const char *addr_netname(int proto, const struct addr *a);
const char *addr_proto_name(int proto);

#endif
