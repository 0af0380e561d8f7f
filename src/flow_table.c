// SPDX-License-Identifier: MIT
/*
 * flow_table.c - the UDP relay's flows, by key and by last use.
 *
 * A chained hash table finds a flow by its key in O(1); a doubly linked
 * list keeps the flows in order of last use, newest first, so that the
 * least recently used one (to evict at the cap, or to expire when idle) is
 * always at the tail. Touching a flow moves it to the head: a few pointer
 * writes per batch of datagrams.
 *
 * No sockets, no logging, no clock: the caller passes the time. Nodes are
 * embedded in the caller's flows; the table allocates only its buckets,
 * which double as the flows grow (at most to one bucket per flow at the cap)
 * and are never shrunk.
 */
#include "portproxy/flow_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct flow_key) == 40, "flow_key must have no padding");

/* Buckets to start with; the table doubles from here as flows arrive. */
#define FLOW_BUCKETS_MIN 64

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                   \
	do {                       \
		v0 += v1;          \
		v1 = ROTL(v1, 13); \
		v1 ^= v0;          \
		v0 = ROTL(v0, 32); \
		v2 += v3;          \
		v3 = ROTL(v3, 16); \
		v3 ^= v2;          \
		v0 += v3;          \
		v3 = ROTL(v3, 21); \
		v3 ^= v0;          \
		v2 += v1;          \
		v1 = ROTL(v1, 17); \
		v1 ^= v2;          \
		v2 = ROTL(v2, 32); \
	} while (0)

/**
 * flow_hash() - SipHash-1-3 of the flow key @k (five 64-bit words), keyed
 * with @seed
 *
 * A keyed hash because the client picks its port: with a plain one a flood
 * crafted to collide would turn every lookup into a walk of the whole table.
 * Return: the hash; its low bits pick the bucket
 */
static uint64_t flow_hash(const uint64_t seed[2], const struct flow_key *k)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ seed[0];
	uint64_t v1 = 0x646f72616e646f6dULL ^ seed[1];
	uint64_t v2 = 0x6c7967656e657261ULL ^ seed[0];
	uint64_t v3 = 0x7465646279746573ULL ^ seed[1];
	uint64_t m[sizeof(*k) / 8];

	memcpy(m, k, sizeof(m));
	for (size_t i = 0; i < sizeof(m) / 8; i++) {
		v3 ^= m[i];
		SIPROUND;
		v0 ^= m[i];
	}
	m[0] = (uint64_t)sizeof(*k) << 56;
	v3 ^= m[0];
	SIPROUND;
	v0 ^= m[0];
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static void flow_seed(uint64_t seed[2])
{
	struct timespec ts;

	if (getrandom(seed, 2 * sizeof(seed[0]), GRND_NONBLOCK) == 2 * sizeof(seed[0]))
		return;
	/* No entropy yet (early boot): a weaker seed still beats none. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	seed[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
	seed[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4fULL ^ (uint64_t)(uintptr_t)seed;
}

/**
 * flow_table_init() - an empty table for at most @cap flows
 * @cap: at least 1
 *
 * Return: 0, or -ENOMEM, or -EINVAL for a zero @cap
 */
int flow_table_init(struct flow_table *t, unsigned cap)
{
	uint64_t n = FLOW_BUCKETS_MIN;

	memset(t, 0, sizeof(*t));
	if (!cap)
		return -EINVAL;
	while (n / 2 >= cap)
		n /= 2;
	t->ft_buckets = calloc(n, sizeof(*t->ft_buckets));
	if (!t->ft_buckets)
		return -ENOMEM;
	t->ft_mask = n - 1;
	t->ft_cap = cap;
	flow_seed(t->ft_seed);
	return 0;
}

/**
 * flow_table_fini() - free the buckets; the nodes still linked stay the
 * caller's to free (remove them first, or free them by other means)
 */
void flow_table_fini(struct flow_table *t)
{
	free(t->ft_buckets);
	t->ft_buckets = NULL;
	t->ft_count = 0;
	t->ft_newest = t->ft_oldest = NULL;
}

/**
 * flow_table_key_make() - the key of the flow from @client to @local
 * @local: the address the client sent to; only its IP counts (its port is
 *         the listener's, the same for every flow)
 *
 * Both addresses must be of one family (an IPv4 client of a dual-stack
 * socket comes as an IPv4-mapped IPv6 address, and so does its local one).
 */
void flow_table_key_make(struct flow_key *k, const struct addr *client, const struct addr *local)
{
	memset(k, 0, sizeof(*k));
	k->fk_family = (uint16_t)addr_family(client);
	if (k->fk_family == AF_INET) {
		k->fk_port = client->u.sin.sin_port;
		memcpy(k->fk_client, &client->u.sin.sin_addr, 4);
		if (addr_family(local) == AF_INET)
			memcpy(k->fk_local, &local->u.sin.sin_addr, 4);
	} else {
		k->fk_port = client->u.sin6.sin6_port;
		k->fk_scope = client->u.sin6.sin6_scope_id;
		memcpy(k->fk_client, &client->u.sin6.sin6_addr, 16);
		if (addr_family(local) == AF_INET6)
			memcpy(k->fk_local, &local->u.sin6.sin6_addr, 16);
	}
}

/**
 * flow_table_lookup() - the flow with key @k
 * Return: the node, or NULL when there is none
 */
struct flow_node *flow_table_lookup(const struct flow_table *t, const struct flow_key *k)
{
	uint64_t h = flow_hash(t->ft_seed, k);
	struct flow_node *n;

	for (n = t->ft_buckets[h & t->ft_mask]; n; n = n->fn_hnext)
		if (n->fn_hash == h && !memcmp(&n->fn_key, k, sizeof(*k)))
			return n;
	return NULL;
}

/*
 * Double the buckets, up to one per flow at the cap. A failed allocation
 * is not an error: the chains just grow longer.
 */
static void flow_table_grow(struct flow_table *t)
{
	uint64_t n = (t->ft_mask + 1) * 2;
	struct flow_node **b;

	if (t->ft_mask + 1 >= t->ft_cap)
		return;
	b = calloc(n, sizeof(*b));
	if (!b)
		return;
	for (uint64_t i = 0; i <= t->ft_mask; i++) {
		struct flow_node *node = t->ft_buckets[i], *next;

		for (; node; node = next) {
			next = node->fn_hnext;
			node->fn_hnext = b[node->fn_hash & (n - 1)];
			b[node->fn_hash & (n - 1)] = node;
		}
	}
	free(t->ft_buckets);
	t->ft_buckets = b;
	t->ft_mask = n - 1;
}

/**
 * flow_table_insert() - link @n, whose fn_key the caller has set, as the
 * most recently used flow
 *
 * The caller makes room first (flow_table_victim()) and makes sure the key
 * is not in the table yet (flow_table_lookup()).
 * Return: 0, or -ENOSPC when the table holds its cap already
 */
int flow_table_insert(struct flow_table *t, struct flow_node *n, uint64_t now_ms)
{
	struct flow_node **b;

	if (t->ft_count >= t->ft_cap)
		return -ENOSPC;
	if (t->ft_count > t->ft_mask)
		flow_table_grow(t);
	n->fn_hash = flow_hash(t->ft_seed, &n->fn_key);
	b = &t->ft_buckets[n->fn_hash & t->ft_mask];
	n->fn_hnext = *b;
	*b = n;
	n->fn_used_ms = now_ms;
	n->fn_newer = NULL;
	n->fn_older = t->ft_newest;
	if (t->ft_newest)
		t->ft_newest->fn_newer = n;
	else
		t->ft_oldest = n;
	t->ft_newest = n;
	t->ft_count++;
	return 0;
}

/* Take @n off the LRU list. */
static void lru_unlink(struct flow_table *t, struct flow_node *n)
{
	if (n->fn_newer)
		n->fn_newer->fn_older = n->fn_older;
	else
		t->ft_newest = n->fn_older;
	if (n->fn_older)
		n->fn_older->fn_newer = n->fn_newer;
	else
		t->ft_oldest = n->fn_newer;
	n->fn_newer = n->fn_older = NULL;
}

/**
 * flow_table_remove() - unlink @n, which must be in @t; the caller still
 * owns it
 */
void flow_table_remove(struct flow_table *t, struct flow_node *n)
{
	struct flow_node **pp = &t->ft_buckets[n->fn_hash & t->ft_mask];

	while (*pp && *pp != n)
		pp = &(*pp)->fn_hnext;
	if (*pp)
		*pp = n->fn_hnext;
	n->fn_hnext = NULL;
	lru_unlink(t, n);
	t->ft_count--;
}

/**
 * flow_table_touch() - record traffic on @n at @now_ms: it becomes the most
 * recently used flow
 */
void flow_table_touch(struct flow_table *t, struct flow_node *n, uint64_t now_ms)
{
	n->fn_used_ms = now_ms;
	if (t->ft_newest == n)
		return;
	lru_unlink(t, n);
	n->fn_older = t->ft_newest;
	t->ft_newest->fn_newer = n;
	t->ft_newest = n;
}

/**
 * flow_table_victim() - the flow to evict before another may be inserted
 * Return: the least recently used flow when the table is at its cap, else
 *         NULL (there is room)
 */
struct flow_node *flow_table_victim(const struct flow_table *t)
{
	return t->ft_count >= t->ft_cap ? t->ft_oldest : NULL;
}

/**
 * flow_table_expired() - the least recently used flow, if it has been idle
 * for @idle_ms or more at @now_ms
 *
 * Call it in a loop, removing what it returns, to expire every idle flow:
 * the list is in order of last use, so the first fresh flow ends the scan.
 * Return: the node, or NULL
 */
struct flow_node *flow_table_expired(const struct flow_table *t, uint64_t now_ms, uint64_t idle_ms)
{
	struct flow_node *n = t->ft_oldest;

	if (n && now_ms >= n->fn_used_ms && now_ms - n->fn_used_ms >= idle_ms)
		return n;
	return NULL;
}
