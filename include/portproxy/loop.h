/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_LOOP_H
#define PORTPROXY_LOOP_H

struct event_base;

struct event_base *loop_new(void);

#endif
