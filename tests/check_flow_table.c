// SPDX-License-Identifier: MIT
/* Unit tests for flow_table.c: keys, lookup, LRU order, expiry, eviction. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portproxy/flow_table.h"

static struct flow_table t;

static void setup(void)
{
	ck_assert_int_eq(flow_table_init(&t, 8), 0);
}

static void teardown(void)
{
	flow_table_fini(&t);
}

/* A node for client 10.0.0.<host>:<port> -> 192.0.2.1. */
static void node_v4(struct flow_node *n, unsigned host, uint16_t port)
{
	struct addr client, local;
	char ip[32];

	snprintf(ip, sizeof(ip), "10.0.%u.%u", host / 256, host % 256);
	memset(n, 0, sizeof(*n));
	ck_assert_int_eq(addr_parse_ip(ip, port, &client), 0);
	ck_assert_int_eq(addr_parse_ip("192.0.2.1", 53, &local), 0);
	flow_table_key_make(&n->fn_key, &client, &local);
}

START_TEST(key_fields)
{
	struct addr c1, c2, l1, l2;
	struct flow_key a, b;

	addr_parse_ip("10.0.0.1", 1000, &c1);
	addr_parse_ip("192.0.2.1", 53, &l1);
	flow_table_key_make(&a, &c1, &l1);
	/* The local port does not count: it is the listener's, always. */
	addr_parse_ip("192.0.2.1", 54, &l2);
	flow_table_key_make(&b, &c1, &l2);
	ck_assert_mem_eq(&a, &b, sizeof(a));
	/* The client port does. */
	addr_parse_ip("10.0.0.1", 1001, &c2);
	flow_table_key_make(&b, &c2, &l1);
	ck_assert(memcmp(&a, &b, sizeof(a)) != 0);
	/* So does the local address (a wildcard listener reached two ways). */
	addr_parse_ip("192.0.2.2", 53, &l2);
	flow_table_key_make(&b, &c1, &l2);
	ck_assert(memcmp(&a, &b, sizeof(a)) != 0);
	/* And the family: ::ffff:10.0.0.1 is not 10.0.0.1. */
	addr_parse_ip("::ffff:10.0.0.1", 1000, &c2);
	addr_parse_ip("::ffff:192.0.2.1", 53, &l2);
	flow_table_key_make(&b, &c2, &l2);
	ck_assert(memcmp(&a, &b, sizeof(a)) != 0);
	/* An IPv6 client's scope tells link-local twins apart. */
	addr_parse_ip("fe80::1", 1000, &c1);
	addr_parse_ip("fe80::2", 53, &l1);
	c2 = c1;
	c1.u.sin6.sin6_scope_id = 2;
	c2.u.sin6.sin6_scope_id = 3;
	flow_table_key_make(&a, &c1, &l1);
	flow_table_key_make(&b, &c2, &l1);
	ck_assert(memcmp(&a, &b, sizeof(a)) != 0);
}
END_TEST

START_TEST(insert_lookup_remove)
{
	struct flow_node n[3], probe;

	for (int i = 0; i < 3; i++) {
		node_v4(&n[i], 1, (uint16_t)(1000 + i));
		ck_assert_ptr_null(flow_table_lookup(&t, &n[i].fn_key));
		ck_assert_int_eq(flow_table_insert(&t, &n[i], 100), 0);
	}
	ck_assert_uint_eq(flow_table_count(&t), 3);
	for (int i = 0; i < 3; i++) {
		node_v4(&probe, 1, (uint16_t)(1000 + i));
		ck_assert_ptr_eq(flow_table_lookup(&t, &probe.fn_key), &n[i]);
	}
	node_v4(&probe, 2, 1000);
	ck_assert_ptr_null(flow_table_lookup(&t, &probe.fn_key));

	flow_table_remove(&t, &n[1]);
	ck_assert_uint_eq(flow_table_count(&t), 2);
	ck_assert_ptr_null(flow_table_lookup(&t, &n[1].fn_key));
	ck_assert_ptr_eq(flow_table_lookup(&t, &n[0].fn_key), &n[0]);
	ck_assert_ptr_eq(flow_table_lookup(&t, &n[2].fn_key), &n[2]);
	flow_table_remove(&t, &n[0]);
	flow_table_remove(&t, &n[2]);
	ck_assert_uint_eq(flow_table_count(&t), 0);
	ck_assert_ptr_null(flow_table_oldest(&t));
}
END_TEST

START_TEST(lru_order_and_touch)
{
	struct flow_node n[4];

	for (int i = 0; i < 4; i++) {
		node_v4(&n[i], 1, (uint16_t)(2000 + i));
		ck_assert_int_eq(flow_table_insert(&t, &n[i], (uint64_t)i), 0);
	}
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[0]);
	flow_table_touch(&t, &n[0], 10);
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[1]);
	flow_table_touch(&t, &n[2], 11);
	flow_table_touch(&t, &n[2], 12); /* already the newest */
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[1]);
	flow_table_remove(&t, &n[1]);
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[3]);
	flow_table_remove(&t, &n[3]);
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[0]);
	flow_table_remove(&t, &n[0]);
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[2]);
	ck_assert_ptr_eq(t.ft_newest, &n[2]);
	flow_table_remove(&t, &n[2]);
	ck_assert_ptr_null(t.ft_newest);
}
END_TEST

START_TEST(expiry_oldest_first)
{
	struct flow_node n[3], *e;
	unsigned closed = 0;

	node_v4(&n[0], 1, 1);
	node_v4(&n[1], 1, 2);
	node_v4(&n[2], 1, 3);
	flow_table_insert(&t, &n[0], 1000);
	flow_table_insert(&t, &n[1], 1000);
	flow_table_insert(&t, &n[2], 1000);
	flow_table_touch(&t, &n[0], 1500); /* traffic keeps n[0] alive */
	ck_assert_ptr_null(flow_table_expired(&t, 1999, 1000));
	while ((e = flow_table_expired(&t, 2000, 1000))) {
		ck_assert(e == &n[1] || e == &n[2]);
		flow_table_remove(&t, e);
		ck_assert_uint_le(++closed, 2);
	}
	ck_assert_uint_eq(closed, 2);
	ck_assert_ptr_eq(flow_table_oldest(&t), &n[0]);
	ck_assert_ptr_null(flow_table_expired(&t, 2499, 1000));
	ck_assert_ptr_eq(flow_table_expired(&t, 2500, 1000), &n[0]);
	/* A clock that went backwards expires nothing. */
	ck_assert_ptr_null(flow_table_expired(&t, 10, 1000));
	flow_table_remove(&t, &n[0]);
}
END_TEST

START_TEST(eviction_at_cap)
{
	struct flow_node n[9];

	for (int i = 0; i < 8; i++) {
		node_v4(&n[i], 7, (uint16_t)(3000 + i));
		ck_assert_ptr_null(flow_table_victim(&t));
		ck_assert_int_eq(flow_table_insert(&t, &n[i], (uint64_t)i), 0);
	}
	node_v4(&n[8], 7, 3008);
	/* Full: inserting is refused until room is made. */
	ck_assert_int_eq(flow_table_insert(&t, &n[8], 9), -ENOSPC);
	ck_assert_uint_eq(flow_table_count(&t), 8);
	ck_assert_ptr_eq(flow_table_victim(&t), &n[0]);
	flow_table_touch(&t, &n[0], 20); /* used again: no longer the victim */
	ck_assert_ptr_eq(flow_table_victim(&t), &n[1]);
	flow_table_remove(&t, flow_table_victim(&t));
	ck_assert_ptr_null(flow_table_victim(&t));
	ck_assert_int_eq(flow_table_insert(&t, &n[8], 21), 0);
	ck_assert_ptr_eq(flow_table_lookup(&t, &n[8].fn_key), &n[8]);
	ck_assert_ptr_null(flow_table_lookup(&t, &n[1].fn_key));
	ck_assert_ptr_eq(flow_table_victim(&t), &n[2]);
	for (int i = 0; i < 9; i++)
		if (i != 1)
			flow_table_remove(&t, &n[i]);
	ck_assert_uint_eq(flow_table_count(&t), 0);
}
END_TEST

/* Many flows: the buckets grow, every flow stays findable, and a flood of
 * one client's ports evicts in order of last use. */
START_TEST(grow_and_churn)
{
	enum { CAP = 5000, TOTAL = 20000 };
	struct flow_table big;
	struct flow_node *n = calloc(TOTAL, sizeof(*n)), probe;

	ck_assert_ptr_nonnull(n);
	ck_assert_int_eq(flow_table_init(&big, CAP), 0);
	for (unsigned i = 0; i < TOTAL; i++) {
		struct flow_node *v = flow_table_victim(&big);

		if (v) {
			/* Evicted in insertion order: i - CAP is the oldest. */
			ck_assert_ptr_eq(v, &n[i - CAP]);
			flow_table_remove(&big, v);
		}
		node_v4(&n[i], 3 + i / 60000, (uint16_t)(i % 60000 + 1));
		ck_assert_int_eq(flow_table_insert(&big, &n[i], i), 0);
	}
	ck_assert_uint_eq(flow_table_count(&big), CAP);
	ck_assert_uint_ge(big.ft_mask + 1, 4096); /* grew from 64 */
	ck_assert_uint_le(big.ft_mask + 1, 8192); /* no further than the cap needs */
	for (unsigned i = 0; i < TOTAL; i++) {
		node_v4(&probe, 3 + i / 60000, (uint16_t)(i % 60000 + 1));
		if (i < TOTAL - CAP)
			ck_assert_ptr_null(flow_table_lookup(&big, &probe.fn_key));
		else
			ck_assert_ptr_eq(flow_table_lookup(&big, &probe.fn_key), &n[i]);
	}
	flow_table_fini(&big);
	free(n);
}
END_TEST

START_TEST(init_rejects_zero_cap)
{
	struct flow_table z;

	ck_assert_int_eq(flow_table_init(&z, 0), -EINVAL);
	ck_assert_int_eq(flow_table_init(&z, 1), 0);
	ck_assert_uint_eq(z.ft_mask + 1, 1);
	flow_table_fini(&z);
}
END_TEST

static Suite *flow_table_suite(void)
{
	Suite *s = suite_create("flow_table");
	TCase *keys = tcase_create("keys"), *table = tcase_create("table");
	TCase *lru = tcase_create("lru");

	tcase_add_test(keys, key_fields);
	tcase_add_checked_fixture(table, setup, teardown);
	tcase_add_test(table, insert_lookup_remove);
	tcase_add_test(table, init_rejects_zero_cap);
	tcase_add_checked_fixture(lru, setup, teardown);
	tcase_add_test(lru, lru_order_and_touch);
	tcase_add_test(lru, expiry_oldest_first);
	tcase_add_test(lru, eviction_at_cap);
	tcase_add_test(lru, grow_and_churn);
	suite_add_tcase(s, keys);
	suite_add_tcase(s, table);
	suite_add_tcase(s, lru);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(flow_table_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
