/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_TCP_RELAY_H
#define PORTPROXY_TCP_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "portproxy/addr.h"

struct event_base;
struct pipe_pool;
struct tcp_relay;

struct tcp_relay_opts {
	struct pipe_pool *pipes;     /* shared; max_in_use 0 means copy only */
	size_t pipe_size;            /* bytes one splice() asks for */
	uint64_t connect_timeout_ms; /* 0: none of our own */
};

struct tcp_relay_stats {
	unsigned long long accepted; /* connections handed to the relay */
	unsigned long long refused;  /* backend connect failed: client reset */
	unsigned long long closed;   /* ended with both sides shut down cleanly */
	unsigned long long aborted;  /* ended by an error or a reset */
	unsigned long long copied;   /* directions that fell back to copying */
	unsigned long long bytes[2]; /* client->backend, backend->client */
	unsigned active;
};

struct tcp_relay *tcp_relay_new(struct event_base *base, const struct addr *backend,
				const struct tcp_relay_opts *opts);
void tcp_relay_free(struct tcp_relay *r);
void tcp_relay_accept(int fd, const struct addr *peer, void *relay);
int tcp_relay_join(struct tcp_relay *r, int client_fd, int backend_fd);
void tcp_relay_stats(const struct tcp_relay *r, struct tcp_relay_stats *st);

#endif
