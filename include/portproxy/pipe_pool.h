/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_PIPE_POOL_H
#define PORTPROXY_PIPE_POOL_H

#include <stddef.h>

struct pipe_pool;

struct pipe_pool *pipe_pool_new(size_t size, unsigned max_in_use);
void pipe_pool_free(struct pipe_pool *pool);
int pipe_pool_get(struct pipe_pool *pool, int fds[2]);
void pipe_pool_put(struct pipe_pool *pool, int fds[2], size_t pending);
unsigned pipe_pool_in_use(const struct pipe_pool *pool);
unsigned pipe_pool_idle(const struct pipe_pool *pool);

#endif
