/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_UDP_RELAY_H
#define PORTPROXY_UDP_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portproxy/addr.h"

struct event_base;
struct udp_relay;

struct udp_relay_opts {
	uint64_t idle_timeout_ms; /* forget a flow after this long without traffic */
	unsigned max_flows;       /* flows at once; the least recently used goes */
	bool no_gso;              /* never UDP_SEGMENT (tests, measurements) */
	size_t slot_size;         /* 0: room for the largest datagram; less only in tests */
};

/* Counters since udp_relay_new(); index [i] is the direction side i sends:
 * [0] client->backend, [1] backend->client. */
struct udp_relay_stats {
	unsigned long long dgrams[2];    /* datagrams forwarded */
	unsigned long long bytes[2];     /* their payload bytes */
	unsigned long long dropped[2];   /* not forwarded: a send failed */
	unsigned long long truncated[2]; /* larger than a slot: dropped, never cut */
	unsigned long long sends[2];     /* send system calls made (sendmsg, sendmmsg) */
	unsigned long long gso_sends;    /* sends that carried several datagrams */
	unsigned long long icmp_errors;  /* ICMP errors (refused, unreachable) on flows */
	unsigned long long no_flow;      /* dropped: no flow socket could be made */
	unsigned long long kernel_drops; /* dropped by the kernel: our sockets' buffers full */
	unsigned long long recv_errors;  /* receive calls that failed, ICMP errors aside */
	unsigned long long ctrunc;       /* datagrams whose control data did not fit */
	unsigned long long flows;        /* flows opened */
	unsigned long long expired;      /* flows closed for being idle */
	unsigned long long evicted;      /* flows closed to make room at the cap */
	unsigned active;                 /* flows open now */
};

struct udp_relay *udp_relay_new(struct event_base *base, int fd, const struct addr *backend,
				const struct udp_relay_opts *opts);
void udp_relay_free(struct udp_relay *r);
void udp_relay_stats(const struct udp_relay *r, struct udp_relay_stats *st);

#endif
