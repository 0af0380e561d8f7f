/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_FLOW_TABLE_H
#define PORTPROXY_FLOW_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "portproxy/addr.h"

/*
 * What tells one UDP flow from another: the client's address and port and
 * the local address it sent to. Fixed-size and zero-padded, so that it can
 * be hashed and compared as bytes. IPv4 addresses fill the first 4 bytes.
 */
struct flow_key {
	uint16_t fk_family;    /* AF_INET or AF_INET6 */
	uint16_t fk_port;      /* client port, network order */
	uint32_t fk_scope;     /* client's IPv6 scope id, else 0 */
	uint8_t fk_client[16]; /* client address */
	uint8_t fk_local[16];  /* the address the client sent to */
};

/*
 * A flow's place in the table. The owner embeds it (as the first member, or
 * finds its way back with container_of) and owns the memory: the table only
 * links nodes, it never allocates or frees one.
 */
struct flow_node {
	struct flow_key fn_key;
	struct flow_node *fn_hnext; /* hash chain */
	struct flow_node *fn_newer; /* LRU list, towards the most recent */
	struct flow_node *fn_older; /* LRU list, towards the least recent */
	uint64_t fn_used_ms;        /* last traffic in either direction */
	uint64_t fn_hash;
};

/*
 * A hash table of flows plus a list in order of last use. The buckets grow
 * with the number of flows (up to one per flow at the cap), so a small
 * table costs little; the hash is keyed with random bits so that a client
 * choosing its source ports cannot pile every flow into one chain.
 */
struct flow_table {
	struct flow_node **ft_buckets;
	uint64_t ft_mask; /* buckets - 1, a power of two less one */
	unsigned ft_count;
	unsigned ft_cap; /* most flows at once */
	struct flow_node *ft_newest;
	struct flow_node *ft_oldest;
	uint64_t ft_seed[2]; /* SipHash key */
};

int flow_table_init(struct flow_table *t, unsigned cap);
void flow_table_fini(struct flow_table *t);
void flow_table_key_make(struct flow_key *k, const struct addr *client, const struct addr *local);
struct flow_node *flow_table_lookup(const struct flow_table *t, const struct flow_key *k);
int flow_table_insert(struct flow_table *t, struct flow_node *n, uint64_t now_ms);
void flow_table_remove(struct flow_table *t, struct flow_node *n);
void flow_table_touch(struct flow_table *t, struct flow_node *n, uint64_t now_ms);
struct flow_node *flow_table_victim(const struct flow_table *t);
struct flow_node *flow_table_expired(const struct flow_table *t, uint64_t now_ms, uint64_t idle_ms);

/* Flows in the table. */
static inline unsigned flow_table_count(const struct flow_table *t)
{
	return t->ft_count;
}

/* The least recently used flow, or NULL when the table is empty. */
static inline struct flow_node *flow_table_oldest(const struct flow_table *t)
{
	return t->ft_oldest;
}

#endif
