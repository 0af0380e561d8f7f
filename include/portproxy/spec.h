/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_SPEC_H
#define PORTPROXY_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portproxy/addr.h"

/*
 * One publish spec, as Docker's run reference writes them:
 *   -p [ip:][hostPort:]containerPort[/proto]   ports may be ranges "a-b"
 *   -expose port[-port][/proto]                with -P: random host ports
 */
struct port_spec {
	int ps_proto;           /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP */
	bool ps_has_ip;         /* else both 0.0.0.0 and :: */
	struct addr ps_ip;      /* port unused */
	uint16_t ps_host_first; /* 0 (and ps_host_last 0): a random free port */
	uint16_t ps_host_last;
	uint16_t ps_cont_first;
	uint16_t ps_cont_last;
	bool ps_if_unpublished; /* -P: skip container ports already published */
};

int spec_parse_publish(const char *s, struct port_spec *out, char *err, size_t errlen);
int spec_parse_expose(const char *s, struct port_spec *out, char *err, size_t errlen);
unsigned spec_ports(const struct port_spec *ps);

#endif
