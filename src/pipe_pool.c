// SPDX-License-Identifier: MIT
/*
 * pipe_pool.c - the pipes that splice() moves data through.
 *
 * A relay direction takes a pipe only while it moves data and gives it back
 * when the pipe is empty, so an idle connection holds none. Returned pipes
 * wait on a small stack for the next taker: making a pipe and sizing it
 * costs three syscalls, and at 1 MiB the kernel's slot array is 17.5 KiB.
 * Only empty pipes go back on the stack; one that still holds data (a
 * connection aborted mid-transfer) is closed, since its bytes belong to a
 * connection that is gone.
 */
#include "portproxy/pipe_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* Idle pipes kept for reuse; beyond this they are closed. */
#define PIPE_POOL_IDLE_MAX 32

struct pipe_pool {
	size_t pp_size;
	unsigned pp_max;    /* pipes in use at once */
	unsigned pp_in_use; /* handed out and not returned */
	unsigned pp_nidle;
	int pp_idle[PIPE_POOL_IDLE_MAX][2];
};

/**
 * pipe_pool_new() - a pool of pipes of @size bytes, at most @max_in_use lent
 * Return: the pool, or NULL with errno set
 */
struct pipe_pool *pipe_pool_new(size_t size, unsigned max_in_use)
{
	struct pipe_pool *pool = calloc(1, sizeof(*pool));

	if (!pool)
		return NULL;
	pool->pp_size = size;
	pool->pp_max = max_in_use;
	return pool;
}

/**
 * pipe_pool_free() - close the idle pipes and free @pool
 *
 * Pipes still lent out stay open: their holders close them.
 */
void pipe_pool_free(struct pipe_pool *pool)
{
	if (!pool)
		return;
	while (pool->pp_nidle--) {
		close(pool->pp_idle[pool->pp_nidle][0]);
		close(pool->pp_idle[pool->pp_nidle][1]);
	}
	free(pool);
}

/**
 * pipe_pool_get() - lend an empty pipe: @fds[0] to read, @fds[1] to write
 *
 * Both ends are non-blocking and close-on-exec. A failed F_SETPIPE_SZ is not
 * an error: the pipe keeps the size the kernel allows (unprivileged users
 * past pipe-user-pages-soft get small pipes), and splice() copes with any.
 * Return: 0; -ENOSPC at the in-use cap; -errno from pipe2() (EMFILE...)
 */
int pipe_pool_get(struct pipe_pool *pool, int fds[2])
{
	if (pool->pp_in_use >= pool->pp_max)
		return -ENOSPC;
	if (pool->pp_nidle) {
		pool->pp_nidle--;
		fds[0] = pool->pp_idle[pool->pp_nidle][0];
		fds[1] = pool->pp_idle[pool->pp_nidle][1];
	} else {
		int p[2]; /* @fds stays as it was on failure, whatever pipe2() does */

		if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
			return -errno;
		fcntl(p[0], F_SETPIPE_SZ, (int)pool->pp_size);
		fds[0] = p[0];
		fds[1] = p[1];
	}
	pool->pp_in_use++;
	return 0;
}

/**
 * pipe_pool_put() - give back a lent pipe holding @pending bytes
 *
 * Sets @fds to -1: the caller no longer owns them.
 */
void pipe_pool_put(struct pipe_pool *pool, int fds[2], size_t pending)
{
	pool->pp_in_use--;
	if (!pending && pool->pp_nidle < PIPE_POOL_IDLE_MAX) {
		pool->pp_idle[pool->pp_nidle][0] = fds[0];
		pool->pp_idle[pool->pp_nidle][1] = fds[1];
		pool->pp_nidle++;
	} else {
		close(fds[0]);
		close(fds[1]);
	}
	fds[0] = fds[1] = -1;
}

unsigned pipe_pool_in_use(const struct pipe_pool *pool)
{
	return pool->pp_in_use;
}

unsigned pipe_pool_idle(const struct pipe_pool *pool)
{
	return pool->pp_nidle;
}
