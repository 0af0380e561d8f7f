// SPDX-License-Identifier: MIT
/*
 * sctp_relay.c - relay SCTP associations between clients and the container,
 * message by message, as docker-proxy does.
 *
 * Theory of operation
 * -------------------
 * One-to-one style sockets (SOCK_STREAM, IPPROTO_SCTP): the listener
 * accepts an association as TCP's would accept a connection (listener.c
 * serves both), and each gets its own association to the backend. Unlike
 * TCP, SCTP carries messages, each on a stream with a payload protocol
 * identifier (PPID): a message is read whole (recvmsg() until MSG_EOR) with
 * its SCTP_RCVINFO, and sent on with the same stream, PPID and unordered
 * flag in an SCTP_SNDINFO. The backend association asks for as many
 * streams as SCTP allows, so that any stream the client uses exists there.
 *
 * Direction i carries what side i sends: messages read from fd[i], written
 * to fd[!i]. Each direction holds at most one message in its buffer, and
 * holds a buffer only while it has a message in hand: an idle association
 * holds none (as the TCP relay holds no pipe). The pump of direction i:
 *   1. a message waiting: send it. EAGAIN means fd[!i] is full: stop
 *      reading fd[i] (its read event is removed) and wait for fd[!i] to be
 *      writable (its write event is added). Once sent, the reverse.
 *   2. read from fd[i]: a piece of a message is appended; with MSG_EOR the
 *      message is complete. A message larger than SCTP_MSG_MAX is sent on
 *      in pieces of that size (Linux has no explicit-EOR sending), as
 *      docker-proxy does with any message above its 64 KiB buffer. EAGAIN
 *      with nothing in hand: the buffer is freed.
 *   3. at most PUMP_ROUNDS messages per wakeup; the events are
 *      level-triggered, so what waits is taken on the next turn.
 *
 * States of an association pair:
 *   CONNECTING  the backend connect is in flight; only its write event is
 *               armed. Refused, unreachable: the client gets an ABORT.
 *   RELAYING    both read events armed; write events only while blocked.
 *   SHUTTING    side i shut down (recv() returns 0) and what it sent has
 *               been passed on: shutdown(fd[!i], SHUT_WR) starts a graceful
 *               SHUTDOWN towards side !i, which still delivers what is in
 *               flight to it. SCTP has no half-closed state: side i accepts
 *               no more data, so what side !i still sends is read and
 *               discarded (counted) until its association ends too.
 *               (Closing fd[!i] at once, with messages unread in it, would
 *               send an ABORT instead, and lose what was in flight.)
 *   closed      both sides shut down: both sockets closed, nothing unread.
 *   aborted     any error: both sockets closed with an ABORT (SO_LINGER 0).
 * Every ending goes through sconn_close(), which logs the reason at debug.
 */
#include "portproxy/sctp_relay.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/sctp.h>

#include "portproxy/log.h"
#include "portproxy/sock.h"

enum side { SIDE_CLIENT, SIDE_BACKEND, SIDES };

/* A message buffer starts at SCTP_MSG_INIT and grows to SCTP_MSG_MAX. */
#define SCTP_MSG_INIT (64 * 1024)
#define SCTP_MSG_MAX  (1024 * 1024)
/* Messages per direction per wakeup before yielding. */
#define PUMP_ROUNDS 16

/* One direction: a message read from fd[i] on its way to fd[!i]. */
struct sdir {
	char *d_buf;
	size_t d_cap;
	size_t d_len;               /* bytes of the message so far */
	struct sctp_sndinfo d_info; /* how to send it: stream, PPID, flags */
	bool d_ready;               /* complete (or a full piece): to be sent */
	bool d_partial;             /* the last piece read did not end a message */
	bool d_blocked;             /* fd[!i] was full: fd[i]'s read event is off */
	bool d_eof;                 /* fd[i] shut down */
	bool d_shut;                /* so fd[!i] was shut down for writing */
	bool d_discard;             /* fd[!i] shut down: what fd[i] sends is dropped */
};

struct sconn {
	struct sctp_relay *c_relay;
	struct sconn *c_prev, *c_next;
	unsigned long long c_id;
	int c_fd[SIDES];
	struct event *c_rev[SIDES]; /* level-triggered EV_READ */
	struct event *c_wev[SIDES]; /* EV_WRITE: connect, or a blocked direction */
	struct sdir c_dir[SIDES];
	bool c_connected;
	unsigned long long c_msgs[SIDES];
	struct addr c_peer;
};

struct sctp_relay {
	struct event_base *r_base;
	struct addr r_backend;
	struct sconn *r_conns;
	unsigned long long r_next_id;
	struct sctp_relay_stats r_stats;
	struct log_ratelimit r_refused_warn;
};

static void sconn_read(evutil_socket_t fd, short what, void *arg);
static void sconn_write(evutil_socket_t fd, short what, void *arg);

/**
 * sconn_close() - end @c, once, for @reason; @err is 0 or the -errno behind it
 * @abort: close with an SCTP ABORT rather than a graceful shutdown
 *
 * Frees @c: the caller must not touch it afterwards.
 */
static void sconn_close(struct sconn *c, bool abort, const char *reason, int err)
{
	struct sctp_relay *r = c->c_relay;

	if (log_on(LOG_LVL_DEBUG)) {
		char peer[ADDR_STRLEN], be[ADDR_STRLEN];

		log_debug("sctp %s -> %s #%llu: %s%s%s (%llu messages in, %llu out)",
			  addr_format(&c->c_peer, peer, sizeof(peer)),
			  addr_format(&r->r_backend, be, sizeof(be)), c->c_id, reason,
			  err ? ": " : "", err ? strerror(-err) : "", c->c_msgs[SIDE_CLIENT],
			  c->c_msgs[SIDE_BACKEND]);
	}
	for (int i = 0; i < SIDES; i++) {
		if (c->c_rev[i])
			event_free(c->c_rev[i]);
		if (c->c_wev[i])
			event_free(c->c_wev[i]);
		if (c->c_fd[i] >= 0) {
			if (abort)
				sock_reset_close(c->c_fd[i]);
			else
				close(c->c_fd[i]);
		}
		free(c->c_dir[i].d_buf);
	}
	if (abort)
		r->r_stats.aborted++;
	else
		r->r_stats.closed++;
	r->r_stats.active--;
	if (c->c_prev)
		c->c_prev->c_next = c->c_next;
	else
		r->r_conns = c->c_next;
	if (c->c_next)
		c->c_next->c_prev = c->c_prev;
	free(c);
}

/* Send the message of direction @i. Return: 0 sent, -EAGAIN blocked, -errno */
static int sdir_send(struct sconn *c, enum side i)
{
	struct sdir *d = &c->c_dir[i];
	union {
		char buf[CMSG_SPACE(sizeof(struct sctp_sndinfo))];
		size_t align; /* a cmsghdr's */
	} ctl;
	struct iovec iov = { d->d_buf, d->d_len };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	ssize_t n;

	memset(&ctl, 0, sizeof(ctl));
	cm->cmsg_level = IPPROTO_SCTP;
	cm->cmsg_type = SCTP_SNDINFO;
	cm->cmsg_len = CMSG_LEN(sizeof(d->d_info));
	memcpy(CMSG_DATA(cm), &d->d_info, sizeof(d->d_info));
	do
		n = sendmsg(c->c_fd[!i], &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* A one-to-one SCTP socket takes a message whole or not at all. */
	d->d_len = 0;
	d->d_ready = false;
	c->c_msgs[i]++;
	c->c_relay->r_stats.msgs[i]++;
	return 0;
}

/*
 * Read from fd[i] into the message of direction @i, taking a buffer first
 * if it holds none. In discard mode the piece is counted and dropped.
 * Return: bytes, 0 at EOF, or -errno (-EAGAIN: nothing waiting)
 */
static ssize_t sdir_recv(struct sconn *c, enum side i)
{
	struct sdir *d = &c->c_dir[i];
	union {
		char buf[CMSG_SPACE(sizeof(struct sctp_rcvinfo)) + 64];
		size_t align; /* a cmsghdr's */
	} ctl;
	struct iovec iov;
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf) };
	ssize_t n;

	if (!d->d_buf) {
		d->d_buf = malloc(SCTP_MSG_INIT);
		if (!d->d_buf)
			return -ENOMEM;
		d->d_cap = SCTP_MSG_INIT;
	}
	iov = (struct iovec){ d->d_buf + d->d_len, d->d_cap - d->d_len };
	do
		n = recvmsg(c->c_fd[i], &mh, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return n < 0 ? -errno : 0;
	if (mh.msg_flags & MSG_NOTIFICATION)
		return n; /* not subscribed to any, but never forward one */
	if (d->d_discard) {
		if (mh.msg_flags & MSG_EOR)
			c->c_relay->r_stats.discarded[i]++;
		return n;
	}
	if (!d->d_partial) { /* a new message: how to send it on */
		struct cmsghdr *cm;

		memset(&d->d_info, 0, sizeof(d->d_info));
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			struct sctp_rcvinfo ri;

			if (cm->cmsg_level != IPPROTO_SCTP || cm->cmsg_type != SCTP_RCVINFO ||
			    cm->cmsg_len < CMSG_LEN(sizeof(ri)))
				continue;
			memcpy(&ri, CMSG_DATA(cm), sizeof(ri));
			d->d_info.snd_sid = ri.rcv_sid;
			d->d_info.snd_ppid = ri.rcv_ppid; /* opaque: kept in network order */
			d->d_info.snd_flags = ri.rcv_flags & SCTP_UNORDERED;
		}
	}
	d->d_len += (size_t)n;
	d->d_partial = !(mh.msg_flags & MSG_EOR);
	if (!d->d_partial) {
		d->d_ready = true;
	} else if (d->d_len == d->d_cap) {
		char *bigger = d->d_cap < SCTP_MSG_MAX ? realloc(d->d_buf, d->d_cap * 2) : NULL;

		if (bigger) {
			d->d_buf = bigger;
			d->d_cap *= 2;
		} else {
			d->d_ready = true; /* too large to hold: on it goes, in pieces */
			c->c_relay->r_stats.split[i]++;
		}
	}
	return n;
}

/* Stop reading fd[i] until fd[!i] can take the waiting message, or resume. */
static void sdir_block(struct sconn *c, enum side i, bool blocked)
{
	struct sdir *d = &c->c_dir[i];

	if (d->d_blocked == blocked)
		return;
	d->d_blocked = blocked;
	if (blocked) {
		event_del(c->c_rev[i]);
		event_add(c->c_wev[!i], NULL);
	} else {
		event_del(c->c_wev[!i]);
		event_add(c->c_rev[i], NULL);
	}
}

/**
 * sdir_pump() - move what direction @i can move now (see the theory above)
 * Return: 0 when waiting for an event, 1 when fd[i] has shut down and all
 *         it sent has been passed on, or -errno (abort)
 */
static int sdir_pump(struct sconn *c, enum side i)
{
	struct sdir *d = &c->c_dir[i];

	for (unsigned round = 0; round < PUMP_ROUNDS; round++) {
		ssize_t n;

		if (!d->d_discard && (d->d_ready || (d->d_eof && d->d_len))) {
			int ret = sdir_send(c, i);

			if (ret == -EAGAIN) {
				sdir_block(c, i, true);
				return 0;
			}
			if (ret < 0)
				return ret;
			sdir_block(c, i, false);
		}
		if (d->d_eof)
			return 1;
		n = sdir_recv(c, i);
		if (n == 0 || (n == -ENOTCONN && d->d_discard)) {
			d->d_eof = true; /* ENOTCONN: the shutdown we began is over */
		} else if (n == -EAGAIN) {
			if (!d->d_len) { /* idle: hold no buffer */
				free(d->d_buf);
				d->d_buf = NULL;
				d->d_cap = 0;
			}
			return 0;
		} else if (n < 0) {
			return (int)n;
		}
	}
	return 0;
}

/*
 * Side @i has shut down and all it sent has been passed on: pass the
 * shutdown on to side !i, gracefully (SHUTDOWN, not ABORT), and from now on
 * discard what side !i sends: side i takes no more. Return: 0, or -errno
 */
static int sconn_shut(struct sconn *c, enum side i)
{
	struct sdir *o = &c->c_dir[!i];

	c->c_dir[i].d_shut = true;
	event_del(c->c_rev[i]); /* fd[i] stays readable (EOF) for good */
	if (shutdown(c->c_fd[!i], SHUT_WR) < 0)
		return -errno;
	o->d_discard = true;
	o->d_len = 0;
	o->d_ready = false;
	o->d_partial = false;
	sdir_block(c, (enum side) !i, false); /* nothing waits for fd[i] any more */
	return 0;
}

/* Pump both directions; close when both sides have shut down. May free @c. */
static void sconn_pump(struct sconn *c)
{
	for (int i = 0; i < SIDES; i++) {
		int ret = sdir_pump(c, (enum side)i);

		if (ret == 1 && c->c_dir[!i].d_eof) {
			sconn_close(c, false, "both sides shut down", 0);
			return;
		}
		if (ret == 1 && !c->c_dir[i].d_shut)
			ret = sconn_shut(c, (enum side)i);
		if (ret < 0) {
			sconn_close(c, true,
				    i == SIDE_CLIENT ? "aborted relaying client->backend"
						     : "aborted relaying backend->client",
				    ret);
			return;
		}
	}
}

static void sconn_read(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *c = arg;

	(void)what;
	(void)fd;
	sconn_pump(c);
}

/* fd became writable: the backend's connect finished, or a blocked output
 * has room again. May free @c. */
static void sconn_write(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *c = arg;
	struct sctp_relay *r = c->c_relay;
	int err;

	(void)what;
	if (c->c_connected) {
		sconn_pump(c);
		return;
	}
	err = sock_error((int)fd);
	if (err < 0) {
		char be[ADDR_STRLEN];

		r->r_stats.refused++;
		log_limited(&r->r_refused_warn, 10, LOG_LVL_WARN, "sctp connect %s: %s",
			    addr_format(&r->r_backend, be, sizeof(be)), strerror(-err));
		sconn_close(c, true, "connect to backend failed", err);
		return;
	}
	c->c_connected = true;
	event_del(c->c_wev[SIDE_BACKEND]);
	for (int i = 0; i < SIDES; i++) {
		if (event_add(c->c_rev[i], NULL) < 0) {
			sconn_close(c, true, "out of memory", -ENOMEM);
			return;
		}
	}
}

/**
 * sctp_relay_accept() - relay a new client association to the backend
 * @fd: the accepted socket, non-blocking; ownership passes to the relay
 *
 * A listener_accept_fn. Starts the backend connect; the client's messages
 * wait in its socket until the backend has answered. If the backend cannot
 * be reached, the client's association is aborted.
 */
void sctp_relay_accept(int fd, const struct addr *peer, void *relay)
{
	struct sctp_relay *r = relay;
	struct sconn *c = calloc(1, sizeof(*c));
	int ret = -ENOMEM;

	if (!c) {
		sock_reset_close(fd);
		return;
	}
	c->c_relay = r;
	c->c_id = ++r->r_next_id;
	c->c_fd[SIDE_CLIENT] = fd;
	c->c_fd[SIDE_BACKEND] = -1;
	if (peer)
		c->c_peer = *peer;
	c->c_next = r->r_conns;
	if (r->r_conns)
		r->r_conns->c_prev = c;
	r->r_conns = c;
	r->r_stats.accepted++;
	r->r_stats.active++;

	sock_tune_sctp(fd); /* inherited from the listener; in case it was not */
	/* sock_connect() tunes the socket before connect(): the INIT chunk
	 * carries the stream counts. The buffers come with the first message. */
	ret = sock_connect(SOCK_STREAM, IPPROTO_SCTP, &r->r_backend, &c->c_fd[SIDE_BACKEND]);
	if (ret < 0 && ret != -EINPROGRESS) {
		r->r_stats.refused++;
		sconn_close(c, true, "connect to backend failed", ret);
		return;
	}
	ret = -ENOMEM;
	for (int i = 0; i < SIDES; i++) {
		c->c_rev[i] = event_new(r->r_base, c->c_fd[i], EV_READ | EV_PERSIST, sconn_read, c);
		c->c_wev[i] =
			event_new(r->r_base, c->c_fd[i], EV_WRITE | EV_PERSIST, sconn_write, c);
		if (!c->c_rev[i] || !c->c_wev[i])
			goto fail;
	}
	/* Connected at once or not: the first writability says how it went. */
	if (event_add(c->c_wev[SIDE_BACKEND], NULL) < 0)
		goto fail;
	return;
fail:
	sconn_close(c, true, "out of memory", ret);
}

/**
 * sctp_relay_new() - a relay forwarding to @backend
 * Return: the relay, or NULL with errno set
 */
struct sctp_relay *sctp_relay_new(struct event_base *base, const struct addr *backend)
{
	struct sctp_relay *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->r_base = base;
	r->r_backend = *backend;
	return r;
}

/**
 * sctp_relay_free() - close every association gracefully and free @r
 */
void sctp_relay_free(struct sctp_relay *r)
{
	if (!r)
		return;
	while (r->r_conns)
		sconn_close(r->r_conns, false, "shutting down", 0);
	free(r);
}

/**
 * sctp_relay_stats() - copy the counters of @r into @st
 * Return: nothing; @st holds the counts since sctp_relay_new()
 */
void sctp_relay_stats(const struct sctp_relay *r, struct sctp_relay_stats *st)
{
	*st = r->r_stats;
}
