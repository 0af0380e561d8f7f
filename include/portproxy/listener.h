/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_LISTENER_H
#define PORTPROXY_LISTENER_H

#include "portproxy/addr.h"

struct event_base;
struct listener;

/* Called for each accepted connection; takes ownership of @fd. */
typedef void (*listener_accept_fn)(int fd, const struct addr *peer, void *arg);

struct listener *listener_new(struct event_base *base, int fd, listener_accept_fn cb, void *arg);
void listener_free(struct listener *l);
unsigned long listener_backoffs(const struct listener *l);

#endif
