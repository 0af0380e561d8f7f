// SPDX-License-Identifier: MIT
/*
 * udp_relay.c - relay UDP datagrams between clients and the container.
 *
 * Theory of operation
 * -------------------
 * Every client gets a flow: its own socket, connect()ed to the backend, so
 * the backend sees one stable source port per client and the kernel sorts
 * the backend's replies onto the right flow for us. A flow is known by its
 * key: the client's address and port and the local address the client sent
 * to (the listener may be bound to a wildcard and reached through several
 * addresses). The listener reports that local address with each datagram
 * (IP_PKTINFO / IPV6_RECVPKTINFO), and every reply is sent with it as the
 * source (a pktinfo control message, built once per flow): a client whose
 * socket is connected drops datagrams from any other address.
 *
 * Two directions, indexed like the TCP relay's sides: direction i carries
 * what side i sends. SIDE_CLIENT: listener -> flow socket. SIDE_BACKEND:
 * flow socket -> listener, addressed to the flow's client.
 *
 * The hot path, for either direction:
 *   1. recvmmsg() up to UDP_BATCH datagrams into the slots (scratch shared
 *      by the whole process and allocated once, see struct udp_scratch;
 *      64 KiB per slot: the largest datagram fits, and a datagram that does
 *      not is MSG_TRUNC: dropped and counted, never forwarded cut).
 *   2. sort them into runs of one flow (the listener's batch mixes clients;
 *      a new client opens a flow here, evicting the least recently used one
 *      at the cap).
 *   3. send each run with one system call: UDP_SEGMENT (GSO) when it is
 *      equal-sized datagrams that fit the path, else sendmmsg(). Touch the
 *      flow: traffic either way keeps it alive.
 *   4. return to the loop after one batch: the events are level-triggered,
 *      so a socket with more waiting fires again, after the others had
 *      their turn. Nothing here allocates or logs above trace.
 *
 * What can go wrong with a datagram, and what happens:
 *   ICMP error     an unreachable backend (ECONNREFUSED: nothing listens
 *                  yet) is reported on the flow socket's next send or
 *                  recv. Counted, and the flow stays: the error was about
 *                  an earlier datagram, so a send that reports it is tried
 *                  again, and forwards once the backend listens.
 *   full buffer    EAGAIN/ENOBUFS: the rest of the run is dropped and
 *                  counted. UDP has no backpressure; blocking one flow's
 *                  replies must not stall the listener for all the others.
 *   other errors   that datagram is dropped and counted; the rest go on.
 *
 * States of a flow:
 *   open     in the table and on the LRU list, its socket's EV_READ armed.
 *   closed   idle for the timeout, evicted at the cap, or the relay shuts
 *            down. Every ending goes through flow_close(), which logs the
 *            reason at debug.
 * Expiry needs no timer per flow: one timer is armed for the deadline of
 * the least recently used flow (the LRU list's tail) and, when it fires,
 * closes what has expired from that end and re-arms for the next. Touching
 * a flow is a few pointer writes, not a timer operation.
 */
#include "portproxy/udp_relay.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "portproxy/flow_table.h"
#include "portproxy/log.h"
#include "portproxy/sock.h"

enum side { SIDE_CLIENT, SIDE_BACKEND, SIDES };

/* Datagrams per recvmmsg() and per send. */
#define UDP_BATCH 32
/* A slot holds any UDP payload: 65507 bytes over IPv4, 65527 over IPv6. */
#define UDP_SLOT 65536
/* UDP_SEGMENT: the most payload one send may carry (the kernel's limit is
 * 64 KiB less headers), and the segment size we try before we know the
 * path (a client behind a 1500-byte Ethernet). */
#define GSO_MAX_BYTES	65000
#define GSO_DEFAULT_SEG 1472
/* Socket buffers. Charged only while datagrams wait in them. */
#define LISTEN_BUF (4 << 20)
#define FLOW_BUF   (1 << 20)
/* Flows the expiry timer closes per run before yielding to traffic. */
#define EXPIRE_BUDGET 1024

/* Room for a pktinfo and a UDP_SEGMENT control message. */
union udp_ctl {
	char buf[SOCK_PKTINFO_SPACE + CMSG_SPACE(sizeof(uint16_t))];
	size_t align; /* a cmsghdr's; not the struct itself: it ends in a flexible array */
};

struct flow {
	struct flow_node f_node; /* first: a node of the table is a flow */
	struct udp_relay *f_relay;
	unsigned long long f_id;
	int f_fd; /* connected to the backend */
	struct event *f_ev;
	struct addr f_client;
	struct addr f_local; /* where the client sent to; replies come from there */
	size_t f_ctllen;     /* pktinfo for replies: 0 when the kernel may choose */
	union udp_ctl f_ctl;
	unsigned f_gso_max[SIDES]; /* largest UDP_SEGMENT size to try; 0: none */
	unsigned long long f_dgrams[SIDES];
	unsigned long long f_icmp;
};

/*
 * Buffers and message headers for one batch. A callback uses them from its
 * recvmmsg() to its last send and keeps nothing in them afterwards, and one
 * callback runs at a time (one thread, one event loop), so every flow of
 * every relay in the process shares one set: a process serving many UDP
 * ports holds 2 MiB of slots, not 2 MiB per port.
 */
struct udp_scratch {
	unsigned s_users; /* relays holding it */
	char *s_slots;    /* UDP_BATCH slots of UDP_SLOT bytes */
	char *s_gso;      /* one run laid end to end, for UDP_SEGMENT */
	struct mmsghdr s_in[UDP_BATCH];
	struct iovec s_iov[UDP_BATCH];
	struct sockaddr_storage s_from[UDP_BATCH];
	union udp_ctl s_inctl[UDP_BATCH];
	struct mmsghdr s_out[UDP_BATCH];
	struct iovec s_oiov[UDP_BATCH];
	union udp_ctl s_outctl;
};

static struct udp_scratch *scratch;

struct udp_relay {
	struct event_base *r_base;
	int r_fd; /* the listener */
	struct event *r_ev;
	struct event *r_timer;
	struct addr r_backend;
	struct addr r_bound; /* the listener's address, for a datagram without pktinfo */
	struct udp_relay_opts r_opts;
	size_t r_slot; /* bytes of a slot we use: UDP_SLOT */
	struct flow_table r_flows;
	unsigned long long r_next_id;
	struct udp_relay_stats r_stats;
	struct log_ratelimit r_warn_flow, r_warn_send, r_warn_recv;

	struct udp_scratch *r_s; /* shared: see struct udp_scratch */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Errors a connected UDP socket reports for an ICMP message it received. */
static bool error_is_icmp(int err)
{
	switch (err) {
	case ECONNREFUSED:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EHOSTDOWN:
	case ENONET:
	case EPROTO:
	case EACCES: /* administratively prohibited */
		return true;
	default:
		return false;
	}
}

/**
 * flow_close() - end @f for @reason: out of the table, event freed, socket
 * closed. Frees @f: the caller must not touch it afterwards.
 */
static void flow_close(struct flow *f, const char *reason)
{
	struct udp_relay *r = f->f_relay;

	if (log_on(LOG_LVL_DEBUG)) {
		char cl[ADDR_STRLEN], be[ADDR_STRLEN];

		log_debug("udp %s -> %s #%llu: %s (%llu datagrams in, %llu out, %llu ICMP errors)",
			  addr_format(&f->f_client, cl, sizeof(cl)),
			  addr_format(&r->r_backend, be, sizeof(be)), f->f_id, reason,
			  f->f_dgrams[SIDE_CLIENT], f->f_dgrams[SIDE_BACKEND], f->f_icmp);
	}
	flow_table_remove(&r->r_flows, &f->f_node);
	event_free(f->f_ev);
	close(f->f_fd);
	free(f);
	r->r_stats.active--;
}

static void flow_read(evutil_socket_t fd, short what, void *arg);
static void relay_arm_expiry(struct udp_relay *r, uint64_t now);

/* The path MTU of connected @fd less the IP and UDP headers, or a guess. */
static unsigned flow_gso_max(int fd, int family)
{
	int mtu = 0;
	socklen_t len = sizeof(mtu);

	if (family == AF_INET6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &len)
			       : getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &len))
		return GSO_DEFAULT_SEG;
	mtu -= family == AF_INET6 ? 48 : 28;
	return mtu > 0 ? (unsigned)mtu : 0;
}

/* Make the flow socket; on EMFILE/ENFILE give up the oldest flow's
 * descriptor and try once more. Return: 0 with *fdp set, or -errno */
static int flow_socket(struct udp_relay *r, int *fdp)
{
	int ret = sock_connect(SOCK_DGRAM, IPPROTO_UDP, &r->r_backend, fdp);

	if ((ret == -EMFILE || ret == -ENFILE) && flow_table_oldest(&r->r_flows)) {
		r->r_stats.evicted++;
		flow_close((struct flow *)flow_table_oldest(&r->r_flows),
			   "evicted: out of descriptors");
		ret = sock_connect(SOCK_DGRAM, IPPROTO_UDP, &r->r_backend, fdp);
	}
	return ret;
}

/**
 * flow_open() - a new flow for @key, from @client to @local, most recently
 * used at @now; the least recently used flow is closed first at the cap
 *
 * Return: the flow, or NULL (the caller drops the datagram; we warn,
 *         rate-limited)
 */
static struct flow *flow_open(struct udp_relay *r, const struct flow_key *key,
			      const struct addr *client, const struct addr *local, uint64_t now)
{
	struct flow_node *victim = flow_table_victim(&r->r_flows);
	char cl[ADDR_STRLEN], be[ADDR_STRLEN];
	struct flow *f;
	int ret;

	if (victim) {
		r->r_stats.evicted++;
		flow_close((struct flow *)victim, "evicted: least recently used at the flow cap");
	}
	f = calloc(1, sizeof(*f));
	if (!f) {
		ret = -ENOMEM;
		goto fail;
	}
	f->f_relay = r;
	ret = flow_socket(r, &f->f_fd);
	if (ret < 0)
		goto fail_free;
	sock_set_buffers(f->f_fd, FLOW_BUF, FLOW_BUF);
	f->f_ev = event_new(r->r_base, f->f_fd, EV_READ | EV_PERSIST, flow_read, f);
	if (!f->f_ev || event_add(f->f_ev, NULL) < 0) {
		ret = -ENOMEM;
		goto fail_close;
	}
	f->f_id = ++r->r_next_id;
	f->f_node.fn_key = *key;
	f->f_client = *client;
	f->f_local = *local;
	if (!addr_is_any(local))
		f->f_ctllen = sock_pktinfo_put(f->f_ctl.buf, SOCK_PKTINFO_SPACE, local);
	if (!r->r_opts.no_gso) {
		f->f_gso_max[SIDE_CLIENT] = flow_gso_max(f->f_fd, addr_family(&r->r_backend));
		f->f_gso_max[SIDE_BACKEND] = GSO_DEFAULT_SEG;
	}
	flow_table_insert(&r->r_flows, &f->f_node, now); /* room was made above */
	if (!evtimer_pending(r->r_timer, NULL))
		relay_arm_expiry(r, now);
	r->r_stats.flows++;
	r->r_stats.active++;
	if (log_on(LOG_LVL_DEBUG)) {
		char lo[ADDR_STRLEN];

		log_debug("udp %s -> %s #%llu: new flow (to %s)",
			  addr_format(client, cl, sizeof(cl)),
			  addr_format(&r->r_backend, be, sizeof(be)), f->f_id,
			  addr_format_ip(local, lo, sizeof(lo)));
	}
	return f;

fail_close:
	if (f->f_ev)
		event_free(f->f_ev);
	close(f->f_fd);
fail_free:
	free(f);
fail:
	log_limited(&r->r_warn_flow, 10, LOG_LVL_WARN,
		    "udp %s -> %s: cannot open a flow, datagram dropped: %s",
		    addr_format(client, cl, sizeof(cl)), addr_format(&r->r_backend, be, sizeof(be)),
		    strerror(-ret));
	return NULL;
}

/*
 * Try to send r_out[0..n) as one UDP_SEGMENT send: equal-sized datagrams
 * (the last may be shorter) laid end to end, which the kernel (or the NIC)
 * cuts apart again. One trip through the stack instead of n.
 * Return: 1 when sent; 0 when this run does not qualify or the kernel
 *         turned it down (the caller sends it the ordinary way); or -errno
 *         for a full buffer (EAGAIN, ENOBUFS) or an ICMP error
 */
static int send_gso(struct udp_relay *r, struct flow *f, enum side i, int fd, struct msghdr *tmpl,
		    unsigned n)
{
	size_t seg = r->r_s->s_oiov[0].iov_len, total = 0;
	struct msghdr mh = *tmpl;
	struct cmsghdr *c;
	struct iovec iov;
	uint16_t gso;

	if (n < 2 || seg > f->f_gso_max[i] || seg * n > GSO_MAX_BYTES)
		return 0;
	for (unsigned k = 0; k < n; k++) {
		size_t len = r->r_s->s_oiov[k].iov_len;

		if (len != seg && (k != n - 1 || len > seg || len == 0))
			return 0;
		memcpy(r->r_s->s_gso + total, r->r_s->s_oiov[k].iov_base, len);
		total += len;
	}
	iov = (struct iovec){ .iov_base = r->r_s->s_gso, .iov_len = total };
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	memset(&r->r_s->s_outctl, 0, sizeof(r->r_s->s_outctl));
	if (tmpl->msg_controllen)
		memcpy(r->r_s->s_outctl.buf, tmpl->msg_control, tmpl->msg_controllen);
	mh.msg_control = r->r_s->s_outctl.buf;
	mh.msg_controllen = tmpl->msg_controllen + CMSG_SPACE(sizeof(gso));
	c = (struct cmsghdr *)(r->r_s->s_outctl.buf + tmpl->msg_controllen);
	c->cmsg_level = SOL_UDP;
	c->cmsg_type = UDP_SEGMENT;
	c->cmsg_len = CMSG_LEN(sizeof(gso));
	gso = (uint16_t)seg;
	memcpy(CMSG_DATA(c), &gso, sizeof(gso));
	while (sendmsg(fd, &mh, MSG_DONTWAIT) < 0) {
		int err = errno;

		if (err == EINTR)
			continue;
		if (err == EAGAIN || err == ENOBUFS || error_is_icmp(err))
			return -err;
		if (err == EIO || err == EOPNOTSUPP || err == ENOPROTOOPT)
			f->f_gso_max[i] = 0; /* no checksum offload on the way: no GSO */
		else if (err == EINVAL || err == EMSGSIZE)
			f->f_gso_max[i] = (unsigned)seg - 1; /* the path is narrower */
		/* The ordinary way will tell which datagram, if any, is at fault. */
		return 0;
	}
	r->r_stats.gso_sends++;
	return 1;
}

/**
 * flow_send() - forward r_out[0..n), datagrams side @i sent on flow @f,
 * and record the traffic at @now
 *
 * Direction SIDE_CLIENT goes out of the flow's connected socket; direction
 * SIDE_BACKEND out of the listener, to the flow's client, from the address
 * the client sent to. Drops are counted, and warned about rate-limited;
 * see the theory of operation for which.
 */
static void flow_send(struct udp_relay *r, struct flow *f, enum side i, unsigned n, uint64_t now)
{
	int fd = i == SIDE_CLIENT ? f->f_fd : r->r_fd;
	struct msghdr tmpl = { 0 };
	unsigned k = 0, sent = 0, retries = 0;
	unsigned long long bytes = 0;
	int ret, err = 0;

	if (i == SIDE_BACKEND) {
		tmpl.msg_name = &f->f_client.u;
		tmpl.msg_namelen = f->f_client.len;
		tmpl.msg_control = f->f_ctllen ? f->f_ctl.buf : NULL;
		tmpl.msg_controllen = f->f_ctllen;
	}
	flow_table_touch(&r->r_flows, &f->f_node, now);

	while (f->f_gso_max[i]) {
		ret = send_gso(r, f, i, fd, &tmpl, n);
		if (ret == 1) {
			k = sent = n;
			for (unsigned j = 0; j < n; j++)
				bytes += r->r_s->s_oiov[j].iov_len;
			break;
		}
		if (ret == 0)
			break;
		err = -ret;
		if (!error_is_icmp(err) || retries++) {
			k = n; /* EAGAIN, ENOBUFS: the whole run is lost */
			break;
		}
		/* A pending ICMP error, consumed by this send: count, and again. */
		f->f_icmp++;
		r->r_stats.icmp_errors++;
	}
	for (unsigned j = k; j < n; j++) {
		struct msghdr *mh = &r->r_s->s_out[j].msg_hdr;

		*mh = tmpl;
		mh->msg_iov = &r->r_s->s_oiov[j];
		mh->msg_iovlen = 1;
	}
	while (k < n) {
		ret = sendmmsg(fd, r->r_s->s_out + k, n - k, MSG_DONTWAIT);
		if (ret > 0) {
			for (unsigned j = k; j < k + (unsigned)ret; j++)
				bytes += r->r_s->s_oiov[j].iov_len;
			k += (unsigned)ret;
			sent += (unsigned)ret;
			continue;
		}
		err = ret < 0 ? errno : EAGAIN;
		if (err == EINTR)
			continue;
		if (error_is_icmp(err) && retries++ < 2) {
			f->f_icmp++;
			r->r_stats.icmp_errors++;
			continue;
		}
		if (err == EAGAIN || err == ENOBUFS)
			break;
		/* This datagram cannot go (too big for the path, a firewall, an
		 * address gone): skip it, the others may. */
		k++;
	}
	r->r_stats.bytes[i] += bytes;
	r->r_stats.dgrams[i] += sent;
	f->f_dgrams[i] += sent;
	if (sent < n) {
		r->r_stats.dropped[i] += n - sent;
		log_limited(&r->r_warn_send, 10, LOG_LVL_WARN,
			    "udp %s: %u of %u datagrams dropped: %s",
			    i == SIDE_CLIENT ? "client->backend" : "backend->client", n - sent, n,
			    strerror(err));
	}
}

/* Point the receive headers at the slots, with (listener) or without
 * (flow) room for the sender's address and the pktinfo. */
static void batch_prepare(struct udp_relay *r, bool listener)
{
	for (unsigned k = 0; k < UDP_BATCH; k++) {
		struct msghdr *mh = &r->r_s->s_in[k].msg_hdr;

		r->r_s->s_iov[k].iov_base = r->r_s->s_slots + k * UDP_SLOT;
		r->r_s->s_iov[k].iov_len = r->r_slot;
		mh->msg_iov = &r->r_s->s_iov[k];
		mh->msg_iovlen = 1;
		mh->msg_name = listener ? &r->r_s->s_from[k] : NULL;
		mh->msg_namelen = listener ? sizeof(r->r_s->s_from[k]) : 0;
		mh->msg_control = listener ? r->r_s->s_inctl[k].buf : NULL;
		mh->msg_controllen = listener ? sizeof(r->r_s->s_inctl[k].buf) : 0;
		mh->msg_flags = 0;
	}
}

/*
 * One recvmmsg() into the slots. Return: datagrams, 0 when none are
 * waiting, or -errno
 */
static int batch_recv(struct udp_relay *r, int fd, bool listener)
{
	int n;

	batch_prepare(r, listener);
	do
		n = recvmmsg(fd, r->r_s->s_in, UDP_BATCH, MSG_DONTWAIT, NULL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	return n;
}

/* Queue slot @k, @len bytes, as the next datagram of the run in r_out. */
static inline void run_add(struct udp_relay *r, unsigned *nout, unsigned k, size_t len)
{
	r->r_s->s_oiov[*nout].iov_base = r->r_s->s_slots + k * UDP_SLOT;
	r->r_s->s_oiov[*nout].iov_len = len;
	(*nout)++;
}

/* The flow socket has replies (or an error): forward one batch to the client. */
static void flow_read(evutil_socket_t fd, short what, void *arg)
{
	struct flow *f = arg;
	struct udp_relay *r = f->f_relay;
	unsigned nout = 0;
	int n;

	(void)what;
	n = batch_recv(r, (int)fd, false);
	if (n <= 0) {
		if (n < 0 && error_is_icmp(-n)) {
			f->f_icmp++;
			r->r_stats.icmp_errors++;
		} else if (n < 0) {
			log_limited(&r->r_warn_recv, 10, LOG_LVL_WARN, "udp flow #%llu: recv: %s",
				    f->f_id, strerror(-n));
		}
		return;
	}
	for (int k = 0; k < n; k++) {
		if (r->r_s->s_in[k].msg_hdr.msg_flags & MSG_TRUNC) {
			r->r_stats.truncated[SIDE_BACKEND]++;
			continue;
		}
		run_add(r, &nout, (unsigned)k, r->r_s->s_in[k].msg_len);
	}
	if (nout)
		flow_send(r, f, SIDE_BACKEND, nout, now_ms());
}

/* The listener has datagrams: forward one batch, each to its client's flow. */
static void listener_read(evutil_socket_t fd, short what, void *arg)
{
	struct udp_relay *r = arg;
	struct flow *run = NULL; /* the flow of the datagrams queued in r_out */
	struct flow_key key;
	unsigned nout = 0;
	uint64_t now;
	int n;

	(void)what;
	n = batch_recv(r, (int)fd, true);
	if (n <= 0) {
		if (n < 0)
			log_limited(&r->r_warn_recv, 10, LOG_LVL_WARN, "udp listener: recv: %s",
				    strerror(-n));
		return;
	}
	now = now_ms();
	for (int k = 0; k < n; k++) {
		struct msghdr *mh = &r->r_s->s_in[k].msg_hdr;
		struct addr client, local;

		if (mh->msg_flags & MSG_TRUNC) {
			r->r_stats.truncated[SIDE_CLIENT]++;
			continue;
		}
		if (addr_from_sockaddr(mh->msg_name, mh->msg_namelen, &client) < 0)
			continue;
		if (sock_pktinfo_local(mh, &local) < 0)
			local = r->r_bound;
		flow_key_make(&key, &client, &local);
		if (!run || memcmp(&run->f_node.fn_key, &key, sizeof(key))) {
			/* Another client: send what we have before a new flow
			 * might evict the one it belongs to. */
			if (nout)
				flow_send(r, run, SIDE_CLIENT, nout, now);
			nout = 0;
			run = (struct flow *)flow_table_lookup(&r->r_flows, &key);
			if (!run)
				run = flow_open(r, &key, &client, &local, now);
			if (!run) {
				r->r_stats.no_flow++;
				continue;
			}
		}
		run_add(r, &nout, (unsigned)k, r->r_s->s_in[k].msg_len);
	}
	if (nout)
		flow_send(r, run, SIDE_CLIENT, nout, now);
}

/*
 * Arm the expiry timer for when the least recently used flow would expire,
 * or leave it off when there is no flow: an idle proxy never wakes up, a
 * busy one about once per timeout (the oldest flow is usually fresh again
 * by then, and the timer just moves on to the next deadline).
 */
static void relay_arm_expiry(struct udp_relay *r, uint64_t now)
{
	struct flow_node *n = flow_table_oldest(&r->r_flows);
	uint64_t due, wait;
	struct timeval tv;

	if (!n)
		return;
	due = n->fn_used_ms + r->r_opts.idle_timeout_ms;
	/* +1 ms: the coarse clock may lag the loop's timer by a tick. */
	wait = due > now ? due - now + 1 : 0;
	tv = (struct timeval){ (time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000 };
	evtimer_add(r->r_timer, &tv);
}

/* The expiry timer: close the flows idle for the timeout, oldest first. */
static void relay_expire(evutil_socket_t fd, short what, void *arg)
{
	struct udp_relay *r = arg;
	uint64_t now = now_ms();

	(void)fd;
	(void)what;
	for (unsigned budget = EXPIRE_BUDGET; budget; budget--) {
		struct flow_node *n = flow_table_expired(&r->r_flows, now, r->r_opts.idle_timeout_ms);

		if (!n)
			break;
		r->r_stats.expired++;
		flow_close((struct flow *)n, "idle timeout");
	}
	/* With the budget spent, the next oldest is due already: the timer
	 * fires again right after the traffic waiting now has been served. */
	relay_arm_expiry(r, now);
}

/* Take a reference to the shared scratch, making it first. Return: NULL on ENOMEM */
static struct udp_scratch *scratch_get(void)
{
	if (!scratch) {
		scratch = calloc(1, sizeof(*scratch));
		if (!scratch)
			return NULL;
		scratch->s_slots = malloc((size_t)UDP_BATCH * UDP_SLOT);
		scratch->s_gso = malloc(UDP_SLOT);
		if (!scratch->s_slots || !scratch->s_gso) {
			free(scratch->s_slots);
			free(scratch->s_gso);
			free(scratch);
			scratch = NULL;
			return NULL;
		}
	}
	scratch->s_users++;
	return scratch;
}

static void scratch_put(void)
{
	if (--scratch->s_users)
		return;
	free(scratch->s_gso);
	free(scratch->s_slots);
	free(scratch);
	scratch = NULL;
}

/**
 * udp_relay_new() - relay datagrams arriving on @fd to @backend
 * @fd: a bound UDP socket, non-blocking; the relay takes ownership on
 *      success (udp_relay_free() closes it), the caller keeps it on failure
 * @opts: idle timeout (above 0) and flow cap (at least 1)
 *
 * Enables pktinfo on @fd and raises its buffers. A flow is closed when it
 * has been idle for the timeout (to the millisecond, give or take a tick of
 * the coarse clock). @opts->slot_size below the largest datagram is for
 * tests of truncation only.
 * Return: the relay, or NULL with errno set
 */
struct udp_relay *udp_relay_new(struct event_base *base, int fd, const struct addr *backend,
				const struct udp_relay_opts *opts)
{
	struct udp_relay *r;
	int ret;

	if (!opts->idle_timeout_ms || !opts->max_flows) {
		errno = EINVAL;
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->r_base = base;
	r->r_fd = fd;
	r->r_backend = *backend;
	r->r_opts = *opts;
	r->r_slot = opts->slot_size && opts->slot_size < UDP_SLOT ? opts->slot_size : UDP_SLOT;
	if ((ret = sock_local(fd, &r->r_bound)) < 0 || (ret = sock_pktinfo_enable(fd)) < 0)
		goto fail;
	sock_set_buffers(fd, LISTEN_BUF, LISTEN_BUF);
	if ((ret = flow_table_init(&r->r_flows, opts->max_flows)) < 0)
		goto fail;
	r->r_s = scratch_get();
	ret = -ENOMEM;
	if (!r->r_s)
		goto fail_table;
	r->r_ev = event_new(base, fd, EV_READ | EV_PERSIST, listener_read, r);
	r->r_timer = evtimer_new(base, relay_expire, r);
	if (!r->r_ev || !r->r_timer || event_add(r->r_ev, NULL) < 0)
		goto fail_events;
	return r;

fail_events:
	if (r->r_timer)
		event_free(r->r_timer);
	if (r->r_ev)
		event_free(r->r_ev);
	scratch_put();
fail_table:
	flow_table_fini(&r->r_flows);
fail:
	free(r);
	errno = -ret;
	return NULL;
}

/**
 * udp_relay_free() - close every flow and the listener, and free @r
 */
void udp_relay_free(struct udp_relay *r)
{
	struct flow_node *n;

	if (!r)
		return;
	while ((n = flow_table_oldest(&r->r_flows)))
		flow_close((struct flow *)n, "shutting down");
	log_info("udp: %llu flows (%llu expired, %llu evicted); datagrams %llu in, %llu out; "
		 "dropped %llu in, %llu out; truncated %llu in, %llu out; %llu ICMP errors",
		 r->r_stats.flows, r->r_stats.expired, r->r_stats.evicted,
		 r->r_stats.dgrams[SIDE_CLIENT], r->r_stats.dgrams[SIDE_BACKEND],
		 r->r_stats.dropped[SIDE_CLIENT], r->r_stats.dropped[SIDE_BACKEND],
		 r->r_stats.truncated[SIDE_CLIENT], r->r_stats.truncated[SIDE_BACKEND],
		 r->r_stats.icmp_errors);
	event_free(r->r_timer);
	event_free(r->r_ev);
	close(r->r_fd);
	scratch_put();
	flow_table_fini(&r->r_flows);
	free(r);
}

void udp_relay_stats(const struct udp_relay *r, struct udp_relay_stats *st)
{
	*st = r->r_stats;
}
