// SPDX-License-Identifier: MIT
/*
 * tcp_relay.c - relay TCP connections between clients and the container.
 *
 * Theory of operation
 * -------------------
 * A connection has two sides, SIDE_CLIENT and SIDE_BACKEND, and two
 * directions: direction i carries what side i sends to side !i. Everything
 * is written once, in terms of i and !i.
 *
 * Each direction moves bytes through a carrier: a pipe borrowed from the
 * pool (splice() socket -> pipe -> socket, no copy to user space) or, when
 * no pipe can be had, a user buffer (recv/send). A direction holds a carrier
 * only while it has bytes in flight, so an idle connection holds neither.
 *
 * The pump of direction i, in order:
 *   1. flush: splice the pipe out to fd[!i] until it is empty. EAGAIN means
 *      fd[!i] is full: stop, and stop watching fd[i]'s input until the
 *      EV_WRITE edge on fd[!i] calls us back (a sender that keeps sending
 *      would otherwise wake us once per segment for nothing).
 *   2. at EOF of fd[i] with an empty pipe: shutdown(fd[!i], SHUT_WR). Only
 *      now: a FIN must never overtake data.
 *   3. fill: splice fd[i] into the (empty) pipe. We only ever read into an
 *      empty pipe, because socket->pipe EAGAIN means "socket empty" or "pipe
 *      full" and an empty pipe rules out the second. 0 means EOF.
 *   4. repeat, at most PUMP_ROUNDS times, then yield to other connections
 *      and re-arm ourselves with event_active() (edge-triggered events would
 *      not fire again for data already waiting).
 *
 * States of a connection:
 *   CONNECTING  backend connect in flight; only the backend's event is
 *               armed. Refused, unreachable or timed out: the client gets
 *               an RST, as kernel NAT would give it.
 *   RELAYING    both events armed, edge-triggered, EV_READ|EV_WRITE, added
 *               once: no epoll_ctl per transfer. Only a full output
 *               changes them (fd[i] loses EV_READ until fd[!i] drains).
 *   half-closed one direction has seen EOF and shut its output; the other
 *               runs on.
 *   closed      both directions shut: close both sockets (FIN already sent).
 *   aborted     any error other than EAGAIN/EINTR, including a peer's RST:
 *               both sockets are closed with an RST (a reset is passed on
 *               as a reset, never turned into a FIN).
 * Every ending goes through conn_close(), which logs the reason.
 */
#include "portproxy/tcp_relay.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portproxy/log.h"
#include "portproxy/pipe_pool.h"
#include "portproxy/sock.h"

enum side { SIDE_CLIENT, SIDE_BACKEND, SIDES };

/* Fill/flush rounds per direction per wakeup before yielding. */
#define PUMP_ROUNDS 8
/* The copy fallback's buffer, allocated only while a direction uses it. */
#define COPY_BUF_SIZE (256 * 1024)

/* One direction: bytes read from fd[i], on their way to fd[!i]. */
struct dir {
	int d_pipe[2];    /* borrowed pipe, or -1 */
	char *d_buf;      /* copy fallback, or NULL */
	size_t d_off;     /* copy fallback: start of pending bytes in d_buf */
	size_t d_pending; /* bytes read and not yet written */
	bool d_readable;  /* fd[i] may have data: no EAGAIN since the last edge */
	bool d_eof;       /* fd[i] sent FIN */
	bool d_shut;      /* fd[!i] shut down for writing */
	bool d_paused;    /* fd[!i] is full: not listening for fd[i]'s input */
};

struct conn {
	struct tcp_relay *c_relay;
	LIST_ENTRY(conn) c_link;       /* in r_conns */
	TAILQ_ENTRY(conn) c_wait_link; /* in r_waiting, while c_waiting */
	unsigned long long c_id;
	int c_fd[SIDES];
	struct event *c_ev[SIDES];
	struct dir c_dir[SIDES];
	bool c_connected;
	bool c_waiting; /* no descriptor for the backend socket yet */
	unsigned long long c_bytes[SIDES];
	struct addr c_peer;
};

struct tcp_relay {
	struct event_base *r_base;
	struct addr r_backend;
	struct tcp_relay_opts r_opts;
	LIST_HEAD(, conn) r_conns;
	TAILQ_HEAD(, conn) r_waiting; /* no descriptor for the backend yet, oldest first */
	unsigned long long r_next_id;
	struct tcp_relay_stats r_stats;
	struct event *r_retry; /* retries connects that ran out of descriptors */
	struct log_ratelimit r_refused_warn;
	struct log_ratelimit r_nofd_warn;
};

static void conn_event(evutil_socket_t fd, short what, void *arg);

/* How long a client whose backend socket could not be made waits to retry. */
static const struct timeval retry_delay = { 0, 100 * 1000 };

/**
 * conn_close() - end @c, once, for @reason; @err is 0 or the -errno behind it
 * @reset: close with an RST (abort) rather than a FIN
 *
 * Frees @c: the caller must not touch it afterwards.
 */
static void conn_close(struct conn *c, bool reset, const char *reason, int err)
{
	struct tcp_relay *r = c->c_relay;

	if (log_on(LOG_LVL_DEBUG)) {
		char peer[ADDR_STRLEN], be[ADDR_STRLEN];

		log_debug("tcp %s -> %s #%llu: %s%s%s (%llu bytes in, %llu out)",
			  addr_format(&c->c_peer, peer, sizeof(peer)),
			  addr_format(&r->r_backend, be, sizeof(be)), c->c_id, reason,
			  err ? ": " : "", err ? strerror(-err) : "", c->c_bytes[SIDE_CLIENT],
			  c->c_bytes[SIDE_BACKEND]);
	}
	for (int i = 0; i < SIDES; i++) {
		struct dir *d = &c->c_dir[i];

		if (c->c_ev[i])
			event_free(c->c_ev[i]);
		if (c->c_fd[i] >= 0) {
			if (reset)
				sock_reset_close(c->c_fd[i]);
			else
				close(c->c_fd[i]);
		}
		if (d->d_pipe[0] >= 0)
			pipe_pool_put(r->r_opts.pipes, d->d_pipe, d->d_pending);
		free(d->d_buf);
	}
	if (c->c_waiting) {
		TAILQ_REMOVE(&r->r_waiting, c, c_wait_link);
	}
	if (reset)
		r->r_stats.aborted++;
	else
		r->r_stats.closed++;
	r->r_stats.active--;
	LIST_REMOVE(c, c_link);
	free(c);
}

/* Give back the carrier of an empty direction, so idle connections hold none. */
static void dir_release(struct tcp_relay *r, struct dir *d)
{
	if (d->d_pending)
		return;
	if (d->d_pipe[0] >= 0)
		pipe_pool_put(r->r_opts.pipes, d->d_pipe, 0);
	if (d->d_buf) {
		free(d->d_buf);
		d->d_buf = NULL;
	}
}

/* Borrow a pipe, or failing that allocate a copy buffer. Return: 0 or -ENOMEM */
static int dir_acquire(struct tcp_relay *r, struct dir *d)
{
	if (d->d_pipe[0] >= 0 || d->d_buf)
		return 0;
	if (pipe_pool_get(r->r_opts.pipes, d->d_pipe) == 0)
		return 0;
	d->d_buf = malloc(COPY_BUF_SIZE);
	if (!d->d_buf)
		return -ENOMEM;
	d->d_off = 0;
	r->r_stats.copied++;
	return 0;
}

/* Read from @in into the empty carrier. Return: bytes, 0 at EOF, or -errno */
static ssize_t dir_fill(struct tcp_relay *r, struct dir *d, int in)
{
	ssize_t n;

	if (d->d_pipe[0] >= 0)
		n = splice(in, NULL, d->d_pipe[1], NULL, r->r_opts.pipe_size, SPLICE_F_NONBLOCK);
	else
		n = recv(in, d->d_buf, COPY_BUF_SIZE, MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	d->d_off = 0;
	return n;
}

/* Write pending bytes to @out. Return: bytes written, or -errno */
static ssize_t dir_flush(struct dir *d, int out)
{
	ssize_t n;

	if (d->d_pipe[0] >= 0)
		n = splice(d->d_pipe[0], NULL, out, NULL, d->d_pending, SPLICE_F_NONBLOCK);
	else
		n = send(out, d->d_buf + d->d_off, d->d_pending, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	d->d_off += (size_t)n;
	return n;
}

/**
 * conn_listen_input() - watch direction @i's input (fd[i]) or stop watching it
 *
 * While direction i's output is full, every segment arriving on fd[i] would
 * wake us for nothing until fd[!i] drains, so its input is not watched.
 * fd[i]'s EV_WRITE (the other direction's output) stays armed either way.
 * Re-adding the event drops an activation still queued for it; that is safe
 * because adding an edge-triggered event reports the socket's current
 * readiness again, and a pump that yields re-arms itself after this.
 *
 * Return: 0, or -ENOMEM (the event could not be added)
 */
static int conn_listen_input(struct conn *c, enum side i, bool on)
{
	short what = EV_WRITE | EV_PERSIST | EV_ET | (on ? EV_READ : 0);

	if (c->c_dir[i].d_paused == !on)
		return 0;
	c->c_dir[i].d_paused = !on;
	event_del(c->c_ev[i]);
	event_assign(c->c_ev[i], c->c_relay->r_base, c->c_fd[i], what, conn_event, c);
	return event_add(c->c_ev[i], NULL) < 0 ? -ENOMEM : 0;
}

/**
 * dir_pump() - move what direction @i can move now (see the theory above)
 *
 * Return: 0 when waiting for an event, 1 when it yielded with work left,
 *         or -errno (the connection must be aborted)
 */
static int dir_pump(struct conn *c, enum side i)
{
	struct tcp_relay *r = c->c_relay;
	struct dir *d = &c->c_dir[i];
	int in = c->c_fd[i], out = c->c_fd[!i];
	ssize_t n;
	int ret;

	for (unsigned round = 0;; round++) {
		while (d->d_pending) {
			n = dir_flush(d, out);
			if (n > 0) {
				d->d_pending -= (size_t)n;
				c->c_bytes[i] += (size_t)n;
				r->r_stats.bytes[i] += (size_t)n;
			} else if (n == -EAGAIN) {
				/* backpressure: fd[!i]'s EV_WRITE resumes us */
				return conn_listen_input(c, i, false);
			} else if (n != -EINTR) {
				return n < 0 ? (int)n : -EPIPE;
			}
		}
		if (d->d_eof) {
			if (!d->d_shut) {
				dir_release(r, d);
				shutdown(out, SHUT_WR);
				d->d_shut = true;
			}
			return 0;
		}
		if (!d->d_readable) {
			dir_release(r, d);
			return 0;
		}
		if (round == PUMP_ROUNDS)
			return 1;
		if ((ret = dir_acquire(r, d)) < 0)
			return ret;
		n = dir_fill(r, d, in);
		if (n > 0) {
			d->d_pending = (size_t)n;
		} else if (n == 0) {
			d->d_eof = true;
			d->d_readable = false;
		} else if (n == -EAGAIN) {
			d->d_readable = false;
		} else if (n != -EINTR) {
			return (int)n;
		}
	}
}

/* Pump both directions; close when both are done. May free @c. */
static void conn_pump(struct conn *c)
{
	bool more = false;

	for (int i = 0; i < SIDES; i++) {
		int ret = dir_pump(c, (enum side)i);

		if (ret < 0) {
			conn_close(c, true,
				   i == SIDE_CLIENT ? "aborted relaying client->backend"
						    : "aborted relaying backend->client",
				   ret);
			return;
		}
		more |= ret > 0;
	}
	if (c->c_dir[SIDE_CLIENT].d_shut && c->c_dir[SIDE_BACKEND].d_shut) {
		conn_close(c, false, "closed", 0);
		return;
	}
	/* Edge-triggered: nothing else would call us back for data already
	 * waiting, so queue ourselves behind the other ready connections. */
	if (more)
		event_active(c->c_ev[SIDE_CLIENT], 0, 0);
}

/* The backend's connect finished (or timed out). May free @c. */
static void conn_connected(struct conn *c, short what)
{
	struct tcp_relay *r = c->c_relay;
	int err;

	if (what & EV_TIMEOUT) {
		r->r_stats.refused++;
		conn_close(c, true, "connect to backend timed out", -ETIMEDOUT);
		return;
	}
	/* A failed connect raises EPOLLERR, which libevent reports as EV_READ
	 * too; writable alone means connected, and saves a getsockopt(). */
	err = what & EV_READ ? sock_error(c->c_fd[SIDE_BACKEND]) : 0;
	if (err < 0) {
		char be[ADDR_STRLEN];

		r->r_stats.refused++;
		log_limited(&r->r_refused_warn, 10, LOG_LVL_WARN, "tcp connect %s: %s",
			    addr_format(&r->r_backend, be, sizeof(be)), strerror(-err));
		conn_close(c, true, "connect to backend failed", err);
		return;
	}
	if (!(what & EV_WRITE))
		return;
	c->c_connected = true;
	if (r->r_opts.connect_timeout_ms)
		event_remove_timer(c->c_ev[SIDE_BACKEND]);
	/* Added edge-triggered now, a client that has already sent fires at once. */
	c->c_ev[SIDE_CLIENT] = event_new(r->r_base, c->c_fd[SIDE_CLIENT],
					 EV_READ | EV_WRITE | EV_PERSIST | EV_ET, conn_event, c);
	if (!c->c_ev[SIDE_CLIENT] || event_add(c->c_ev[SIDE_CLIENT], NULL) < 0) {
		conn_close(c, true, "out of memory", -ENOMEM);
		return;
	}
	c->c_dir[SIDE_BACKEND].d_readable = what & EV_READ;
	conn_pump(c);
}

static void conn_event(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	enum side s = fd == c->c_fd[SIDE_CLIENT] ? SIDE_CLIENT : SIDE_BACKEND;

	if (!c->c_connected) {
		conn_connected(c, what);
		return;
	}
	if (what & EV_READ)
		c->c_dir[s].d_readable = true;
	if ((what & EV_WRITE) && conn_listen_input(c, (enum side) !s, true) < 0) {
		conn_close(c, true, "out of memory", -ENOMEM);
		return;
	}
	conn_pump(c);
}

/* A connection for @client_fd, linked into @r. Return: NULL on ENOMEM */
static struct conn *conn_new(struct tcp_relay *r, int client_fd, const struct addr *peer)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->c_relay = r;
	c->c_id = ++r->r_next_id;
	c->c_fd[SIDE_CLIENT] = client_fd;
	c->c_fd[SIDE_BACKEND] = -1;
	for (int i = 0; i < SIDES; i++)
		c->c_dir[i].d_pipe[0] = c->c_dir[i].d_pipe[1] = -1;
	if (peer)
		c->c_peer = *peer;
	LIST_INSERT_HEAD(&r->r_conns, c, c_link);
	r->r_stats.accepted++;
	r->r_stats.active++;
	return c;
}

/* Arm the backend's event; with @timeout_ms, also a connect timeout. */
static int conn_arm_backend(struct conn *c, uint64_t timeout_ms)
{
	struct timeval tv = { (time_t)(timeout_ms / 1000),
			      (suseconds_t)(timeout_ms % 1000) * 1000 };

	c->c_ev[SIDE_BACKEND] = event_new(c->c_relay->r_base, c->c_fd[SIDE_BACKEND],
					  EV_READ | EV_WRITE | EV_PERSIST | EV_ET, conn_event, c);
	if (!c->c_ev[SIDE_BACKEND])
		return -ENOMEM;
	return event_add(c->c_ev[SIDE_BACKEND], timeout_ms ? &tv : NULL) < 0 ? -ENOMEM : 0;
}

/* Queue @c, whose backend socket could not be made, behind the others waiting. */
static void conn_wait(struct conn *c)
{
	struct tcp_relay *r = c->c_relay;

	c->c_waiting = true;
	TAILQ_INSERT_TAIL(&r->r_waiting, c, c_wait_link);
	if (!evtimer_pending(r->r_retry, NULL))
		evtimer_add(r->r_retry, &retry_delay);
}

/*
 * Start the backend connect of @c. Out of descriptors, @c waits (the client
 * sees a slow connect, as from a full backlog, not a reset) and the retry
 * timer tries again. May free @c.
 *
 * Return: true when @c waits for a descriptor (and still exists)
 */
static bool conn_connect(struct conn *c)
{
	struct tcp_relay *r = c->c_relay;
	int ret = sock_connect(SOCK_STREAM, 0, &r->r_backend, &c->c_fd[SIDE_BACKEND]);

	if (ret == -EMFILE || ret == -ENFILE || ret == -ENOBUFS || ret == -ENOMEM) {
		if (!c->c_waiting)
			conn_wait(c);
		else if (!evtimer_pending(r->r_retry, NULL))
			evtimer_add(r->r_retry, &retry_delay);
		log_limited(&r->r_nofd_warn, 10, LOG_LVL_WARN,
			    "tcp: no socket for the backend: %s; clients wait", strerror(-ret));
		return true;
	}
	if (c->c_waiting) {
		TAILQ_REMOVE(&r->r_waiting, c, c_wait_link);
		c->c_waiting = false;
	}
	if (ret < 0 && ret != -EINPROGRESS) {
		r->r_stats.refused++;
		conn_close(c, true, "connect to backend failed", ret);
		return false;
	}
	if ((ret = conn_arm_backend(c, r->r_opts.connect_timeout_ms)) < 0)
		conn_close(c, true, "out of memory", ret);
	return false;
}

/* The retry timer: connect the clients that waited for a descriptor. */
static void relay_retry(evutil_socket_t fd, short what, void *arg)
{
	struct tcp_relay *r = arg;
	struct conn *c;

	(void)fd;
	(void)what;
	while ((c = TAILQ_FIRST(&r->r_waiting)))
		if (conn_connect(c))
			return; /* still out: it and the rest wait for the next round */
}

/**
 * tcp_relay_accept() - relay a new client connection to the backend
 * @fd: the accepted socket, non-blocking; ownership passes to the relay
 *
 * A listener_accept_fn. Starts the backend connect; the client's data waits
 * in its socket until the backend has answered. If the backend cannot be
 * reached, the client is reset.
 */
void tcp_relay_accept(int fd, const struct addr *peer, void *relay)
{
	struct tcp_relay *r = relay;
	struct conn *c;

	/* No sock_tune_tcp(fd): accepted sockets inherit it from the listener. */
	c = conn_new(r, fd, peer);
	if (!c) {
		sock_reset_close(fd);
		return;
	}
	if (!TAILQ_EMPTY(&r->r_waiting)) {
		conn_wait(c); /* others already wait for a descriptor: queue behind them */
		return;
	}
	conn_connect(c);
}

/**
 * tcp_relay_join() - relay between two sockets that are already connected
 *
 * For tests and for callers that connect by themselves. Takes ownership of
 * both descriptors, also on failure. They must be non-blocking.
 * Return: 0, or -ENOMEM
 */
int tcp_relay_join(struct tcp_relay *r, int client_fd, int backend_fd)
{
	struct conn *c = conn_new(r, client_fd, NULL);
	int ret;

	if (!c) {
		close(client_fd);
		close(backend_fd);
		return -ENOMEM;
	}
	c->c_fd[SIDE_BACKEND] = backend_fd;
	if ((ret = conn_arm_backend(c, 0)) < 0) {
		conn_close(c, true, "out of memory", ret);
		return ret;
	}
	return 0;
}

/**
 * tcp_relay_new() - a relay forwarding to @backend
 *
 * @opts->pipes stays owned by the caller and must outlive the relay.
 * Return: the relay, or NULL with errno set
 */
struct tcp_relay *tcp_relay_new(struct event_base *base, const struct addr *backend,
				const struct tcp_relay_opts *opts)
{
	struct tcp_relay *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->r_base = base;
	r->r_backend = *backend;
	r->r_opts = *opts;
	LIST_INIT(&r->r_conns);
	TAILQ_INIT(&r->r_waiting);
	r->r_retry = evtimer_new(base, relay_retry, r);
	if (!r->r_retry) {
		free(r);
		errno = ENOMEM;
		return NULL;
	}
	return r;
}

/**
 * tcp_relay_free() - close every connection (with a FIN where it is clean)
 * and free @r
 */
void tcp_relay_free(struct tcp_relay *r)
{
	if (!r)
		return;
	/* A connection with bytes in flight ends with a reset: a FIN would make
	 * a cut-off stream look complete. An idle one closes cleanly. */
	while (!LIST_EMPTY(&r->r_conns)) {
		struct conn *c = LIST_FIRST(&r->r_conns);
		bool in_flight =
			c->c_dir[SIDE_CLIENT].d_pending || c->c_dir[SIDE_BACKEND].d_pending;

		conn_close(c, in_flight, "shutting down", 0);
	}
	event_free(r->r_retry);
	free(r);
}

void tcp_relay_stats(const struct tcp_relay *r, struct tcp_relay_stats *st)
{
	*st = r->r_stats;
}
