// SPDX-License-Identifier: MIT
/*
 * loop.c - the event base every part of portproxy runs on, configured in
 * one place so that the binary and the tests run the same policy.
 */
#include "portproxy/loop.h"

#include <event2/event.h>

/*
 * After this many callbacks the loop polls for new events again. A relay
 * that used up its fairness budget re-arms itself with event_active(), and
 * libevent runs re-activated events in the same pass: without this cap, a
 * few busy connections could keep the loop from ever returning to
 * epoll_wait(), starving accepts, timers and signals (SIGTERM then took
 * seconds to act on with small pipes).
 */
#define LOOP_MAX_CALLBACKS 64

/**
 * loop_new() - an event base for portproxy
 *
 * Single-threaded (no locks), and it must offer edge-triggered O(1) events
 * (epoll): the relays add each socket once, edge-triggered, and change it
 * only while an output is full (see tcp_relay.c).
 * Return: the base, or NULL
 */
struct event_base *loop_new(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base;

	if (!ec)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
	event_config_require_features(ec, EV_FEATURE_ET | EV_FEATURE_O1);
	event_config_set_max_dispatch_interval(ec, NULL, LOOP_MAX_CALLBACKS, 0);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}
