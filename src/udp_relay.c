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
 *   2. group them by flow, each flow's datagrams in the order they came: a
 *      flow socket's batch is one group, the listener's mixes clients. A
 *      new client opens a flow here: its socket first and then, at the cap,
 *      the least recently used flow is closed for room. The flows of the
 *      batch are touched as they are met, so they are the last to go; if
 *      one goes all the same (a cap below the clients in one batch), its
 *      datagrams are sent before it is closed.
 *   3. send each group with one system call: UDP_SEGMENT (GSO) when it is
 *      equal-sized datagrams (the last may be shorter) that fit the path,
 *      else sendmmsg(). Touch the flow: traffic either way keeps it alive.
 *   4. return to the loop after one batch: the events are level-triggered,
 *      so a socket with more waiting fires again, after the others had
 *      their turn.
 * Memory is allocated per flow (in step 2), never per datagram. Nothing here
 * logs above trace: drops are counted, and a timer armed by the first drop
 * reports what the counters did, at most once per REPORT_SECS.
 *
 * What can go wrong with a datagram, and what happens:
 *   ICMP error     an unreachable backend (ECONNREFUSED: nothing listens
 *                  yet) is reported on the flow socket's next send or recv,
 *                  which consumes it. Counted, and the flow stays: the
 *                  error was about an earlier datagram, so a send that
 *                  reports it is tried again, at most ICMP_RETRIES times
 *                  per group; past that the datagram it stops at is dropped.
 *                  Only flow sockets are connected: the same errors on the
 *                  listener (ENETUNREACH, EACCES) are local refusals, below.
 *   full buffer    EAGAIN/ENOBUFS from sendmmsg(): the rest of the group is
 *                  dropped and counted. UDP has no backpressure; blocking
 *                  one flow's replies must not stall the listener for all
 *                  the others. A GSO send that finds no room falls back to
 *                  sendmmsg(), which may still place some of the group.
 *   other errors   that datagram is dropped and counted; the rest go on. A
 *                  GSO send the kernel turns down (no offload, a narrower
 *                  path) falls back to sendmmsg() and lowers the flow's GSO
 *                  size, so that the next group does not try in vain.
 *   kernel drops   what the kernel dropped at our own sockets (a receive
 *                  buffer full) is counted from SO_RXQ_OVFL.
 *
 * States of a flow:
 *   open     in the table and on the LRU list, its socket's EV_READ armed.
 *   closed   idle for the timeout, evicted at the cap, or the relay shuts
 *            down. Every ending goes through uflow_close(), which logs the
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
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
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
 * path: what a 1500-byte MTU leaves after the IP and UDP headers. */
#define GSO_MAX_BYTES    65000
#define GSO_DEFAULT_SEG4 1472 /* 1500 - 20 - 8 */
#define GSO_DEFAULT_SEG6 1452 /* 1500 - 40 - 8 */
/* Times a send that reports an earlier ICMP error is tried again, per group. */
#define ICMP_RETRIES 2
/* Socket buffers. Charged only while datagrams wait in them. */
#define LISTEN_BUF (4 << 20)
#define FLOW_BUF   (1 << 20)
/* Flows the expiry timer closes per run before yielding to traffic. */
#define EXPIRE_BUDGET 1024
/* Drops are reported (one warning) this long after the first one since the
 * last report: at most one line per REPORT_SECS, none while all is well. */
#define REPORT_SECS 10

/* Control room for a send: a pktinfo and a UDP_SEGMENT. */
union udp_ctl {
	char buf[SOCK_PKTINFO_SPACE + CMSG_SPACE(sizeof(uint16_t))];
	size_t align; /* a cmsghdr's; not the struct itself: it ends in a flexible array */
};

/* Control room for a received datagram: its pktinfo (both kinds, for an
 * IPv4 datagram on a dual-stack listener) and the socket's drop count. */
union udp_inctl {
	char buf[SOCK_PKTINFO_RECV_SPACE + SOCK_RXQ_OVFL_SPACE];
	size_t align;
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
	unsigned f_group;          /* its group in the listener batch + 1, or 0 */
	uint32_t f_rxq_drops;      /* its socket's SO_RXQ_OVFL count, as last seen */
	unsigned long long f_dgrams[SIDES];
	unsigned long long f_icmp;
};

/* One flow's datagrams in a listener batch: slots chained through s_next,
 * in the order they came. */
struct udp_group {
	struct flow *g_flow; /* NULL once sent */
	unsigned g_first;    /* its first slot */
	unsigned g_last;     /* its last slot, where the chain grows */
	unsigned g_n;
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
	struct mmsghdr s_in[UDP_BATCH];
	struct iovec s_iov[UDP_BATCH];
	struct sockaddr_storage s_from[UDP_BATCH];
	union udp_inctl s_inctl[UDP_BATCH];
	struct udp_group s_grp[UDP_BATCH];
	unsigned s_next[UDP_BATCH]; /* the next slot of the same group */
	struct mmsghdr s_out[UDP_BATCH];
	struct iovec s_oiov[UDP_BATCH]; /* the group being sent */
	union udp_ctl s_outctl;
};

static struct udp_scratch *scratch;

struct udp_relay {
	struct event_base *r_base;
	int r_fd; /* the listener */
	struct event *r_ev;
	struct event *r_timer;  /* expiry */
	struct event *r_report; /* the drop report, armed by a drop */
	bool r_report_armed;
	struct addr r_backend;
	struct addr r_bound; /* the listener's address, for a datagram without pktinfo */
	struct udp_relay_opts r_opts;
	size_t r_slot; /* bytes of a slot we use: UDP_SLOT */
	struct flow_table r_flows;
	unsigned long long r_next_id;
	uint32_t r_rxq_drops; /* the listener's SO_RXQ_OVFL count, as last seen */
	struct udp_relay_stats r_stats;
	struct udp_relay_stats r_reported; /* r_stats as of the last report */
	int r_err_send[SIDES];             /* the errno behind the last drop, for the report */
	int r_err_flow;
	int r_err_recv;

	struct udp_scratch *r_s; /* shared: see struct udp_scratch */
};

/**
 * now_ms() - the time for flow expiry, from the coarse monotonic clock
 * (a tick's precision, at a fraction of the precise clock's cost)
 *
 * Return: milliseconds since an arbitrary start
 */
static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Errors a connected UDP socket reports for an ICMP message it received.
 * Only flow sockets are connected: on the listener these are local
 * refusals (no route, a firewall), about the datagram being sent.
 */
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

/* Something was dropped: make sure a report follows, REPORT_SECS from now. */
static void relay_dropped(struct udp_relay *r)
{
	if (r->r_report_armed)
		return;
	r->r_report_armed = true;
	evtimer_add(r->r_report, &(struct timeval){ .tv_sec = REPORT_SECS });
}

/* Count what the kernel dropped at a socket: @mh, received on it, may carry
 * its drop count; @seen is the count as last seen (it wraps). */
static void rxq_account(struct udp_relay *r, const struct msghdr *mh, uint32_t *seen)
{
	uint32_t drops;

	if (!sock_rxq_ovfl(mh, &drops) || drops == *seen)
		return;
	r->r_stats.kernel_drops += (uint32_t)(drops - *seen);
	*seen = drops;
	relay_dropped(r);
}

/**
 * uflow_close() - end @f for @reason: out of the table, event freed, socket
 * closed. Frees @f: the caller must not touch it afterwards.
 */
static void uflow_close(struct flow *f, const char *reason)
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

static void uflow_read(evutil_socket_t fd, short what, void *arg);
static void relay_arm_expiry(struct udp_relay *r, uint64_t now);

/**
 * gso_default() - the UDP_SEGMENT size to try towards @a before anything is
 * known of the path: what a 1500-byte MTU leaves of a datagram
 *
 * An IPv4-mapped address (a client of a dual-stack listener) is IPv4 on the
 * wire.
 * Return: bytes
 */
static unsigned gso_default(const struct addr *a)
{
	if (addr_family(a) == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&a->u.sin6.sin6_addr))
		return GSO_DEFAULT_SEG6;
	return GSO_DEFAULT_SEG4;
}

/**
 * uflow_gso_max() - the largest UDP_SEGMENT size for sends on @fd, a socket
 * of @family connected to the backend
 *
 * Return: the path MTU less the IP and UDP headers; when the kernel does not
 *         tell, what a 1500-byte MTU leaves; 0 (no GSO) when the MTU leaves
 *         nothing
 */
static unsigned uflow_gso_max(int fd, int family)
{
	int mtu = 0;
	socklen_t len = sizeof(mtu);

	if (family == AF_INET6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &len)
			       : getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &len))
		return family == AF_INET6 ? GSO_DEFAULT_SEG6 : GSO_DEFAULT_SEG4;
	mtu -= family == AF_INET6 ? 48 : 28;
	return mtu > 0 ? (unsigned)mtu : 0;
}

/*
 * Try to send r_oiov[0..n) as one UDP_SEGMENT send: equal-sized datagrams
 * (the last may be shorter, never empty), which the kernel (or the NIC)
 * cuts apart again every gso_size bytes whatever the iovec boundaries, so
 * the slots go as they are, uncopied. One trip through the stack instead
 * of n.
 * Return: 1 when sent; 0 when the group does not qualify or the send failed
 *         in a way sendmmsg() may do better with (no room for it all at
 *         once, GSO turned down): the caller sends it the ordinary way; or
 *         -errno for an ICMP error on a flow socket (the caller tries again)
 */
static int send_gso(struct udp_relay *r, struct flow *f, enum side i, int fd,
		    const struct msghdr *tmpl, unsigned n)
{
	struct udp_scratch *s = r->r_s;
	size_t seg = s->s_oiov[0].iov_len;
	struct msghdr mh = *tmpl;
	struct cmsghdr *c;
	uint16_t gso;

	/* A gso_size of 0 means "no GSO" to the kernel: n empty datagrams
	 * would leave as one. */
	if (n < 2 || !seg || seg > f->f_gso_max[i] || seg * n > GSO_MAX_BYTES)
		return 0;
	for (unsigned k = 1; k < n; k++) {
		size_t len = s->s_oiov[k].iov_len;

		if (len != seg && (k != n - 1 || len > seg || len == 0))
			return 0;
	}
	mh.msg_iov = s->s_oiov;
	mh.msg_iovlen = n;
	memset(&s->s_outctl, 0, sizeof(s->s_outctl));
	if (tmpl->msg_controllen)
		memcpy(s->s_outctl.buf, tmpl->msg_control, tmpl->msg_controllen);
	mh.msg_control = s->s_outctl.buf;
	mh.msg_controllen = tmpl->msg_controllen + CMSG_SPACE(sizeof(gso));
	c = (struct cmsghdr *)(s->s_outctl.buf + tmpl->msg_controllen);
	c->cmsg_level = SOL_UDP;
	c->cmsg_type = UDP_SEGMENT;
	c->cmsg_len = CMSG_LEN(sizeof(gso));
	gso = (uint16_t)seg;
	memcpy(CMSG_DATA(c), &gso, sizeof(gso));
	for (;;) {
		int err;

		r->r_stats.sends[i]++;
		if (sendmsg(fd, &mh, MSG_DONTWAIT) >= 0)
			break;
		err = errno;
		if (err == EINTR)
			continue;
		if (i == SIDE_CLIENT && error_is_icmp(err))
			return -err;
		if (err == EIO || err == EOPNOTSUPP || err == ENOPROTOOPT)
			f->f_gso_max[i] = 0; /* no checksum offload on the way: no GSO */
		else if (err == EINVAL || err == EMSGSIZE)
			f->f_gso_max[i] = (unsigned)seg - 1; /* the path is narrower */
		/* EAGAIN, ENOBUFS: sendmmsg() may place some. Anything else:
		 * it will tell which datagram, if any, is at fault. */
		return 0;
	}
	r->r_stats.gso_sends++;
	return 1;
}

/**
 * uflow_send() - forward r_oiov[0..n), datagrams side @i sent on flow @f,
 * and record the traffic at @now
 *
 * Direction SIDE_CLIENT goes out of the flow's connected socket; direction
 * SIDE_BACKEND out of the listener, to the flow's client, from the address
 * the client sent to. What cannot go is dropped and counted (see the theory
 * of operation for which), and a report armed; nothing is logged.
 */
static void uflow_send(struct udp_relay *r, struct flow *f, enum side i, unsigned n, uint64_t now)
{
	struct udp_scratch *s = r->r_s;
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
				bytes += s->s_oiov[j].iov_len;
		}
		if (ret >= 0)
			break;
		/* A pending ICMP error, consumed by this send: count, again. */
		f->f_icmp++;
		r->r_stats.icmp_errors++;
		if (retries++ == ICMP_RETRIES)
			break;
	}
	for (unsigned j = k; j < n; j++) {
		struct msghdr *mh = &s->s_out[j].msg_hdr;

		*mh = tmpl;
		mh->msg_iov = &s->s_oiov[j];
		mh->msg_iovlen = 1;
	}
	while (k < n) {
		r->r_stats.sends[i]++;
		ret = sendmmsg(fd, s->s_out + k, n - k, MSG_DONTWAIT);
		if (ret > 0) {
			for (unsigned j = k; j < k + (unsigned)ret; j++)
				bytes += s->s_oiov[j].iov_len;
			k += (unsigned)ret;
			sent += (unsigned)ret;
			continue;
		}
		err = ret < 0 ? errno : EAGAIN;
		if (err == EINTR)
			continue;
		if (i == SIDE_CLIENT && error_is_icmp(err)) {
			f->f_icmp++;
			r->r_stats.icmp_errors++;
			if (retries++ < ICMP_RETRIES)
				continue;
		}
		if (err == EAGAIN || err == ENOBUFS)
			break;
		/* This datagram cannot go (too big for the path, a firewall, an
		 * address gone, an ICMP error past the retries): skip it, the
		 * others may. */
		k++;
	}
	r->r_stats.bytes[i] += bytes;
	r->r_stats.dgrams[i] += sent;
	f->f_dgrams[i] += sent;
	if (sent < n) {
		r->r_stats.dropped[i] += n - sent;
		r->r_err_send[i] = err;
		relay_dropped(r);
	}
}

/* Send group @g of the listener batch to its flow's backend, and take it
 * off the flow. */
static void group_send(struct udp_relay *r, unsigned g, uint64_t now)
{
	struct udp_scratch *s = r->r_s;
	struct udp_group *grp = &s->s_grp[g];
	struct flow *f = grp->g_flow;
	unsigned slot = grp->g_first;

	for (unsigned j = 0; j < grp->g_n; j++, slot = s->s_next[slot]) {
		s->s_oiov[j].iov_base = s->s_slots + (size_t)slot * UDP_SLOT;
		s->s_oiov[j].iov_len = s->s_in[slot].msg_len;
	}
	grp->g_flow = NULL;
	f->f_group = 0;
	uflow_send(r, f, SIDE_CLIENT, grp->g_n, now);
}

/*
 * Close the least recently used flow, which must exist, for @reason. If the
 * listener batch being grouped holds datagrams for it, they go first: they
 * came before the datagram that needs its room.
 */
static void relay_evict(struct udp_relay *r, const char *reason, uint64_t now)
{
	struct flow *f = (struct flow *)flow_table_oldest(&r->r_flows);

	if (f->f_group)
		group_send(r, f->f_group - 1, now);
	r->r_stats.evicted++;
	uflow_close(f, reason);
}

/* Make the flow socket. Out of descriptors (EMFILE, ENFILE) or of local
 * ports (EADDRNOTAVAIL), give up the oldest flow's and try once more.
 * Return: 0 with *fdp set, or -errno */
static int uflow_socket(struct udp_relay *r, int *fdp, uint64_t now)
{
	int ret = sock_connect(SOCK_DGRAM, IPPROTO_UDP, &r->r_backend, fdp);

	if ((ret == -EMFILE || ret == -ENFILE || ret == -EADDRNOTAVAIL) &&
	    flow_table_oldest(&r->r_flows)) {
		relay_evict(r,
			    ret == -EADDRNOTAVAIL ? "evicted: out of local ports"
						  : "evicted: out of descriptors",
			    now);
		ret = sock_connect(SOCK_DGRAM, IPPROTO_UDP, &r->r_backend, fdp);
	}
	return ret;
}

/**
 * uflow_open() - a new flow for @key, from @client to @local, most recently
 * used at @now
 *
 * All that can fail comes first; only then, at the cap, is the least
 * recently used flow closed for room: a flow that cannot be opened costs no
 * other flow its place.
 * Return: the flow, or NULL with errno set (the caller drops the datagram
 *         and counts it)
 */
static struct flow *uflow_open(struct udp_relay *r, const struct flow_key *key,
			       const struct addr *client, const struct addr *local, uint64_t now)
{
	struct flow *f = calloc(1, sizeof(*f));
	int ret;

	if (!f)
		return NULL;
	f->f_relay = r;
	ret = uflow_socket(r, &f->f_fd, now);
	if (ret < 0)
		goto fail_free;
	sock_set_buffers(f->f_fd, FLOW_BUF, FLOW_BUF);
	sock_rxq_ovfl_enable(f->f_fd); /* counting only: fine without */
	f->f_ev = event_new(r->r_base, f->f_fd, EV_READ | EV_PERSIST, uflow_read, f);
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
		f->f_gso_max[SIDE_CLIENT] = uflow_gso_max(f->f_fd, addr_family(&r->r_backend));
		f->f_gso_max[SIDE_BACKEND] = gso_default(client);
	}
	if (flow_table_victim(&r->r_flows))
		relay_evict(r, "evicted: least recently used at the flow cap", now);
	flow_table_insert(&r->r_flows, &f->f_node, now); /* room was made above */
	if (!evtimer_pending(r->r_timer, NULL))
		relay_arm_expiry(r, now);
	r->r_stats.flows++;
	r->r_stats.active++;
	if (log_on(LOG_LVL_DEBUG)) {
		char cl[ADDR_STRLEN], be[ADDR_STRLEN], lo[ADDR_STRLEN];

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
	errno = -ret;
	return NULL;
}

/* Point the receive headers at the slots and the control room, with
 * (listener) or without (flow) room for the sender's address. */
static void batch_prepare(struct udp_relay *r, bool listener)
{
	struct udp_scratch *s = r->r_s;

	for (unsigned k = 0; k < UDP_BATCH; k++) {
		struct msghdr *mh = &s->s_in[k].msg_hdr;

		s->s_iov[k].iov_base = s->s_slots + (size_t)k * UDP_SLOT;
		s->s_iov[k].iov_len = r->r_slot;
		mh->msg_iov = &s->s_iov[k];
		mh->msg_iovlen = 1;
		mh->msg_name = listener ? &s->s_from[k] : NULL;
		mh->msg_namelen = listener ? sizeof(s->s_from[k]) : 0;
		mh->msg_control = s->s_inctl[k].buf;
		mh->msg_controllen = sizeof(s->s_inctl[k].buf);
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

/* A receive failed with @err, not an ICMP error: count it for the report. */
static void recv_failed(struct udp_relay *r, int err)
{
	r->r_stats.recv_errors++;
	r->r_err_recv = err;
	relay_dropped(r);
}

/* The flow socket has replies (or an error): forward one batch to the client. */
static void uflow_read(evutil_socket_t fd, short what, void *arg)
{
	struct flow *f = arg;
	struct udp_relay *r = f->f_relay;
	struct udp_scratch *s = r->r_s;
	unsigned nout = 0;
	int n;

	(void)what;
	n = batch_recv(r, (int)fd, false);
	if (n <= 0) {
		if (n < 0 && error_is_icmp(-n)) {
			f->f_icmp++;
			r->r_stats.icmp_errors++;
		} else if (n < 0) {
			recv_failed(r, -n);
		}
		return;
	}
	rxq_account(r, &s->s_in[n - 1].msg_hdr, &f->f_rxq_drops);
	for (unsigned k = 0; k < (unsigned)n; k++) {
		const struct msghdr *mh = &s->s_in[k].msg_hdr;

		if (mh->msg_flags & MSG_CTRUNC) {
			r->r_stats.ctrunc++;
			relay_dropped(r);
		}
		if (mh->msg_flags & MSG_TRUNC) {
			r->r_stats.truncated[SIDE_BACKEND]++;
			relay_dropped(r);
			continue;
		}
		s->s_oiov[nout].iov_base = s->s_slots + (size_t)k * UDP_SLOT;
		s->s_oiov[nout].iov_len = s->s_in[k].msg_len;
		nout++;
	}
	if (nout)
		uflow_send(r, f, SIDE_BACKEND, nout, now_ms());
}

/* Append slot @k to group @g of the listener batch. */
static inline void group_add(struct udp_scratch *s, unsigned g, unsigned k)
{
	struct udp_group *grp = &s->s_grp[g];

	if (grp->g_n++)
		s->s_next[grp->g_last] = k;
	else
		grp->g_first = k;
	grp->g_last = k;
}

/*
 * The listener has datagrams: group one batch by flow (opening flows for new
 * clients), then send each flow's group with one call. Consecutive datagrams
 * of one client, the common case, cost one key comparison each.
 */
static void listener_read(evutil_socket_t fd, short what, void *arg)
{
	struct udp_relay *r = arg;
	struct udp_scratch *s = r->r_s;
	struct flow_key key, last;
	unsigned ngroups = 0, cur = UDP_BATCH; /* the group of @last; UDP_BATCH: none */
	uint64_t now;
	int n;

	(void)what;
	n = batch_recv(r, (int)fd, true);
	if (n <= 0) {
		if (n < 0)
			recv_failed(r, -n);
		return;
	}
	rxq_account(r, &s->s_in[n - 1].msg_hdr, &r->r_rxq_drops);
	now = now_ms();
	for (unsigned k = 0; k < (unsigned)n; k++) {
		struct msghdr *mh = &s->s_in[k].msg_hdr;
		struct addr client, local;
		struct flow *f;

		if (mh->msg_flags & MSG_CTRUNC) {
			r->r_stats.ctrunc++; /* its pktinfo may be missing: r_bound stands in */
			relay_dropped(r);
		}
		if (mh->msg_flags & MSG_TRUNC) {
			r->r_stats.truncated[SIDE_CLIENT]++;
			relay_dropped(r);
			continue;
		}
		if (addr_from_sockaddr(mh->msg_name, mh->msg_namelen, &client) < 0)
			continue;
		if (sock_pktinfo_local(mh, &local) < 0)
			local = r->r_bound;
		flow_table_key_make(&key, &client, &local);
		if (cur == UDP_BATCH || memcmp(&key, &last, sizeof(key))) {
			f = (struct flow *)flow_table_lookup(&r->r_flows, &key);
			if (!f && !(f = uflow_open(r, &key, &client, &local, now))) {
				r->r_stats.no_flow++;
				r->r_err_flow = errno;
				relay_dropped(r);
				cur = UDP_BATCH;
				continue;
			}
			if (!f->f_group) { /* first met in this batch */
				s->s_grp[ngroups] = (struct udp_group){ .g_flow = f };
				f->f_group = ++ngroups;
				flow_table_touch(&r->r_flows, &f->f_node, now);
			}
			cur = f->f_group - 1;
			last = key;
		}
		group_add(s, cur, k);
	}
	for (unsigned g = 0; g < ngroups; g++)
		if (s->s_grp[g].g_flow)
			group_send(r, g, now);
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
		struct flow_node *n =
			flow_table_expired(&r->r_flows, now, r->r_opts.idle_timeout_ms);

		if (!n)
			break;
		r->r_stats.expired++;
		uflow_close((struct flow *)n, "idle timeout");
	}
	/* With the budget spent, the next oldest is due already: the timer
	 * fires again right after the traffic waiting now has been served. */
	relay_arm_expiry(r, now);
}

/* Append a part to the report in @buf (@len bytes so far, @cap in all), a
 * comma first unless it is the first. Return: the new length, at most @cap - 1 */
static size_t __attribute__((format(printf, 4, 5)))
report_part(char *buf, size_t len, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (len)
		len += (size_t)snprintf(buf + len, cap - len, ", ");
	if (len >= cap)
		return cap - 1;
	va_start(ap, fmt);
	n = vsnprintf(buf + len, cap - len, fmt, ap);
	va_end(ap);
	len += n > 0 ? (size_t)n : 0;
	return len < cap ? len : cap - 1;
}

/*
 * The report timer, armed by the first drop since the last report: one
 * warning with what was lost since then, and why, so that the hot path
 * never logs and a flood of drops makes one line per REPORT_SECS.
 */
static void relay_report(evutil_socket_t fd, short what, void *arg)
{
	struct udp_relay *r = arg;
	const struct udp_relay_stats *now = &r->r_stats, *was = &r->r_reported;
	char line[512], lo[ADDR_STRLEN], be[ADDR_STRLEN];
	unsigned long long d;
	size_t len = 0;

	(void)fd;
	(void)what;
	r->r_report_armed = false;
	for (int i = 0; i < SIDES; i++) {
		if ((d = now->dropped[i] - was->dropped[i]))
			len = report_part(line, len, sizeof(line), "%llu not sent %s (%s)", d,
					  i == SIDE_CLIENT ? "client->backend" : "backend->client",
					  strerror(r->r_err_send[i]));
	}
	if ((d = now->no_flow - was->no_flow))
		len = report_part(line, len, sizeof(line), "%llu without a flow (%s)", d,
				  strerror(r->r_err_flow));
	if ((d = now->kernel_drops - was->kernel_drops))
		len = report_part(line, len, sizeof(line),
				  "%llu dropped by the kernel (receive buffer full)", d);
	if ((d = now->truncated[0] + now->truncated[1] - was->truncated[0] - was->truncated[1]))
		len = report_part(line, len, sizeof(line), "%llu truncated", d);
	if ((d = now->recv_errors - was->recv_errors))
		len = report_part(line, len, sizeof(line), "%llu receive errors (%s)", d,
				  strerror(r->r_err_recv));
	if ((d = now->ctrunc - was->ctrunc))
		len = report_part(line, len, sizeof(line), "%llu with control data cut", d);
	r->r_reported = r->r_stats;
	if (len)
		log_warn("udp %s -> %s: datagrams lost since the last report: %s",
			 addr_format(&r->r_bound, lo, sizeof(lo)),
			 addr_format(&r->r_backend, be, sizeof(be)), line);
}

/* Take a reference to the shared scratch, making it first. Return: NULL on ENOMEM */
static struct udp_scratch *scratch_get(void)
{
	if (!scratch) {
		scratch = calloc(1, sizeof(*scratch));
		if (!scratch)
			return NULL;
		scratch->s_slots = malloc((size_t)UDP_BATCH * UDP_SLOT);
		if (!scratch->s_slots) {
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
 * Enables pktinfo and the kernel's drop count on @fd and raises its
 * buffers. A flow is closed when it
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
	sock_rxq_ovfl_enable(fd); /* counting only: fine without */
	if ((ret = flow_table_init(&r->r_flows, opts->max_flows)) < 0)
		goto fail;
	r->r_s = scratch_get();
	ret = -ENOMEM;
	if (!r->r_s)
		goto fail_table;
	r->r_ev = event_new(base, fd, EV_READ | EV_PERSIST, listener_read, r);
	r->r_timer = evtimer_new(base, relay_expire, r);
	r->r_report = evtimer_new(base, relay_report, r);
	if (!r->r_ev || !r->r_timer || !r->r_report || event_add(r->r_ev, NULL) < 0)
		goto fail_events;
	return r;

fail_events:
	if (r->r_report)
		event_free(r->r_report);
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
		uflow_close((struct flow *)n, "shutting down");
	log_info("udp: %llu flows (%llu expired, %llu evicted); datagrams %llu in, %llu out; "
		 "dropped %llu in, %llu out; truncated %llu in, %llu out; %llu ICMP errors; "
		 "%llu without a flow; %llu dropped by the kernel",
		 r->r_stats.flows, r->r_stats.expired, r->r_stats.evicted,
		 r->r_stats.dgrams[SIDE_CLIENT], r->r_stats.dgrams[SIDE_BACKEND],
		 r->r_stats.dropped[SIDE_CLIENT], r->r_stats.dropped[SIDE_BACKEND],
		 r->r_stats.truncated[SIDE_CLIENT], r->r_stats.truncated[SIDE_BACKEND],
		 r->r_stats.icmp_errors, r->r_stats.no_flow, r->r_stats.kernel_drops);
	event_free(r->r_report);
	event_free(r->r_timer);
	event_free(r->r_ev);
	close(r->r_fd);
	scratch_put();
	flow_table_fini(&r->r_flows);
	free(r);
}

/**
 * udp_relay_stats() - copy the counters of @r into @st
 * Return: nothing; @st holds the counts since udp_relay_new()
 */
void udp_relay_stats(const struct udp_relay *r, struct udp_relay_stats *st)
{
	*st = r->r_stats;
}
