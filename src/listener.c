// SPDX-License-Identifier: MIT
/*
 * listener.c - accept connections on a listening TCP socket.
 *
 * Our own loop rather than libevent's evconnlistener, which spins on EMFILE
 * when no error callback stops it and forces a backlog of 128. The accept
 * event is level-triggered: after a bounded batch we return to the loop and
 * are called again if more wait, so one busy port cannot starve the relays.
 *
 * When the process runs out of descriptors (or the kernel out of memory),
 * the event is disabled and a 100 ms timer re-enables it, as OpenBSD's
 * relayd does. Clients meanwhile wait in the backlog instead of being
 * dropped, and the proxy does not spin.
 */
#include "portproxy/listener.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portproxy/log.h"

/* Connections taken per wakeup before yielding to the loop. */
#define ACCEPT_BATCH 32

static const struct timeval backoff_delay = { 0, 100 * 1000 };

struct listener {
	int l_fd;
	struct event *l_ev;
	struct event *l_timer;
	listener_accept_fn l_cb;
	void *l_arg;
	unsigned long l_backoffs;
	struct log_ratelimit l_warn;
};

/* accept(2) lists these as errors of the new connection, not of the socket. */
static bool accept_error_transient(int err)
{
	switch (err) {
	case EINTR:
	case ECONNABORTED:
	case EPROTO:
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
	case ENONET:
	case EHOSTUNREACH:
	case EOPNOTSUPP:
	case ENETUNREACH:
	case EPERM: /* a firewall rule refused it */
		return true;
	default:
		return false;
	}
}

static void listener_backoff(struct listener *l, int err)
{
	event_del(l->l_ev);
	evtimer_add(l->l_timer, &backoff_delay);
	l->l_backoffs++;
	log_limited(&l->l_warn, 10, LOG_LVL_WARN,
		    "accept: %s; pausing new connections for 100 ms (they wait in the backlog)",
		    strerror(err));
}

static void listener_resume(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)fd;
	(void)what;
	event_add(l->l_ev, NULL);
}

static void listener_accept(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)what;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		struct addr peer;
		int cfd, err;

		cfd = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd >= 0) {
			if (addr_from_sockaddr((struct sockaddr *)&ss, len, &peer) < 0)
				memset(&peer, 0, sizeof(peer));
			l->l_cb(cfd, &peer, l->l_arg);
			continue;
		}
		err = errno;
		if (err == EAGAIN)
			return;
		if (accept_error_transient(err))
			continue;
		/* EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything unforeseen:
		 * never spin on it, never die of it. */
		listener_backoff(l, err);
		return;
	}
}

/**
 * listener_new() - serve the listening socket @fd, calling @cb per connection
 *
 * Takes ownership of @fd on success (listener_free() closes it); on failure
 * the caller still owns it.
 * Return: the listener, or NULL with errno set
 */
struct listener *listener_new(struct event_base *base, int fd, listener_accept_fn cb, void *arg)
{
	struct listener *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->l_fd = fd;
	l->l_cb = cb;
	l->l_arg = arg;
	l->l_ev = event_new(base, fd, EV_READ | EV_PERSIST, listener_accept, l);
	l->l_timer = evtimer_new(base, listener_resume, l);
	if (!l->l_ev || !l->l_timer || event_add(l->l_ev, NULL) < 0)
		goto fail;
	return l;
fail:
	if (l->l_timer)
		event_free(l->l_timer);
	if (l->l_ev)
		event_free(l->l_ev);
	free(l);
	errno = ENOMEM;
	return NULL;
}

/**
 * listener_free() - stop accepting and close the socket
 */
void listener_free(struct listener *l)
{
	if (!l)
		return;
	event_free(l->l_timer);
	event_free(l->l_ev);
	close(l->l_fd);
	free(l);
}

/* How often accept ran out of resources and paused (for tests and stats). */
unsigned long listener_backoffs(const struct listener *l)
{
	return l->l_backoffs;
}
