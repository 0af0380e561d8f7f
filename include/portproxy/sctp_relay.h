/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_SCTP_RELAY_H
#define PORTPROXY_SCTP_RELAY_H

#include "portproxy/addr.h"

struct event_base;
struct sctp_relay;

struct sctp_relay_stats {
	unsigned long long accepted;     /* associations handed to the relay */
	unsigned long long refused;      /* backend unreachable: client aborted */
	unsigned long long closed;       /* ended by a shutdown from either side */
	unsigned long long aborted;      /* ended by an error or an abort */
	unsigned long long msgs[2];      /* messages client->backend, backend->client */
	unsigned long long split[2];     /* messages too large to forward whole */
	unsigned long long discarded[2]; /* sent after the other side shut down */
	unsigned active;
};

struct sctp_relay *sctp_relay_new(struct event_base *base, const struct addr *backend);
void sctp_relay_free(struct sctp_relay *r);
void sctp_relay_accept(int fd, const struct addr *peer, void *relay);
void sctp_relay_stats(const struct sctp_relay *r, struct sctp_relay_stats *st);

#endif
