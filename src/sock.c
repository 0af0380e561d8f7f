// SPDX-License-Identifier: MIT
/*
 * sock.c - non-blocking socket helpers. A leaf library in the manner of
 * redis' anet.c: it never logs, it returns -errno and, where the caller
 * needs to say which step failed, names the step in @op ("bind", "listen").
 * Every descriptor it makes is non-blocking and close-on-exec.
 */
#include "portproxy/sock.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <linux/sctp.h>

static int set_int(int fd, int level, int name, int v)
{
	return setsockopt(fd, level, name, &v, sizeof(v)) < 0 ? -errno : 0;
}

/**
 * sock_listen() - make a bound socket, listening if @type is SOCK_STREAM
 * @type: SOCK_STREAM or SOCK_DGRAM
 * @proto: IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP
 * @a: where to bind; an IPv6 address gets IPV6_V6ONLY, so that a proxy for
 *     "::" and one for "0.0.0.0" can share a port as dockerd expects
 * @op: set to the step that failed
 *
 * Stream sockets get SO_REUSEADDR so a restarted proxy can rebind while its
 * old connections sit in TIME_WAIT; never SO_REUSEPORT, which would let two
 * proxies share a port silently.
 * Return: the descriptor, or -errno
 */
int sock_listen(int type, int proto, const struct addr *a, const char **op)
{
	int fd, ret;

	*op = "socket";
	fd = socket(addr_family(a), type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return -errno;
	*op = "setsockopt";
	if (type == SOCK_STREAM && (ret = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)) < 0)
		goto fail;
	if (addr_family(a) == AF_INET6 && (ret = set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1)) < 0)
		goto fail;
	*op = "bind";
	if (bind(fd, &a->u.sa, a->len) < 0) {
		ret = -errno;
		goto fail;
	}
	*op = "listen";
	if (type == SOCK_STREAM && listen(fd, SOCK_BACKLOG) < 0) {
		ret = -errno;
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return ret;
}

/**
 * sock_adopt() - check that @fd is a socket we can serve on, and prepare it
 *
 * For a stream socket it must already listen (dockerd binds and listens
 * before passing it); we listen again to raise the backlog. For datagrams
 * it must be bound. Sets O_NONBLOCK and FD_CLOEXEC. Does not close @fd.
 * Return: 0, or -errno: -ENOTSOCK, -EPROTOTYPE (wrong type or protocol),
 *         -EINVAL (not listening or not bound), -EAFNOSUPPORT (not IP)
 */
int sock_adopt(int fd, int type, int proto, const char **op)
{
	int v;
	socklen_t len = sizeof(v);
	struct addr local;

	*op = "getsockopt";
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0)
		return -errno;
	if (v != type)
		return -EPROTOTYPE;
	len = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) == 0 && v != proto)
		return -EPROTOTYPE;
	if (sock_local(fd, &local) < 0)
		return -EAFNOSUPPORT;
	if (type == SOCK_STREAM) {
		len = sizeof(v);
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0)
			return -errno;
		if (!v)
			return -EINVAL;
		*op = "listen";
		if (listen(fd, SOCK_BACKLOG) < 0)
			return -errno;
	} else if (addr_port(&local) == 0) {
		return -EINVAL;
	}
	*op = "fcntl";
	if ((v = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, v | O_NONBLOCK) < 0)
		return -errno;
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

/**
 * sock_connect() - start a non-blocking connect to @to
 * @type: SOCK_STREAM or SOCK_DGRAM
 * @proto: IPPROTO_TCP (or 0 with SOCK_STREAM), IPPROTO_UDP, IPPROTO_SCTP
 * @fdp: set to the new socket when the return is 0 or -EINPROGRESS
 *
 * The socket is tuned for its protocol before connect(), which matters for
 * SCTP: the INIT chunk that connect() sends carries the stream counts. TCP
 * gets sock_tune_tcp(), SCTP sock_tune_sctp(), UDP nothing.
 * Return: 0 when connected at once, -EINPROGRESS when the caller must wait
 *         for writability and then read sock_error(), or another -errno
 *         (the socket is then closed)
 */
int sock_connect(int type, int proto, const struct addr *to, int *fdp)
{
	int fd, ret;

	fd = socket(addr_family(to), type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return -errno;
	if (proto == IPPROTO_SCTP) {
		if ((ret = sock_tune_sctp(fd)) < 0)
			goto fail;
	} else if (type == SOCK_STREAM && (proto == 0 || proto == IPPROTO_TCP)) {
		sock_tune_tcp(fd);
	}
	if (connect(fd, &to->u.sa, to->len) == 0) {
		*fdp = fd;
		return 0;
	}
	ret = -errno;
	if (ret == -EINPROGRESS) {
		*fdp = fd;
		return ret;
	}
fail:
	close(fd);
	return ret;
}

/**
 * sock_error() - the pending error on @fd (SO_ERROR), which clears it
 * Return: 0 or -errno
 */
int sock_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	return -err;
}

/**
 * sock_local() - the local address of @fd
 * Return: 0, or -errno
 */
int sock_local(int fd, struct addr *out)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	return addr_from_sockaddr((struct sockaddr *)&ss, len, out);
}

/**
 * sock_tune_tcp() - the options every relayed TCP socket gets
 *
 * TCP_NODELAY: we forward what arrives as it arrives; Nagle on top of the
 * peer's own would add 40 ms stalls to request/response traffic.
 * Keepalive 15 s idle, 15 s interval: what Go sets for docker-proxy, so a
 * vanished peer does not pin a connection forever. Failures are harmless.
 */
void sock_tune_tcp(int fd)
{
	set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
	set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 15);
	set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 15);
}

/**
 * sock_tune_sctp() - the options every relayed SCTP socket gets, and the
 * listener too (an accepted association is set up from it)
 *
 * SCTP_RECVRCVINFO: recvmsg() tells the stream and PPID of each message,
 * which the relay must pass on. SCTP_NODELAY: forward each message as it
 * comes, no bundling delay (failure harmless). SCTP_INITMSG: offer and
 * accept the most streams SCTP has, so that a client's stream number also
 * exists on the backend association.
 * Return: 0, or the -errno of the first option that failed
 */
int sock_tune_sctp(int fd)
{
	struct sctp_initmsg im = { .sinit_num_ostreams = 0xffff, .sinit_max_instreams = 0xffff };
	int ret;

	if ((ret = set_int(fd, IPPROTO_SCTP, SCTP_RECVRCVINFO, 1)) < 0)
		return ret;
	set_int(fd, IPPROTO_SCTP, SCTP_NODELAY, 1);
	if (setsockopt(fd, IPPROTO_SCTP, SCTP_INITMSG, &im, sizeof(im)) < 0)
		return -errno;
	return 0;
}

/**
 * sock_reset_close() - close @fd with an RST instead of a FIN
 *
 * SO_LINGER {1, 0} makes close() abort the connection: what a client sees
 * from kernel NAT when the backend refuses or resets.
 */
void sock_reset_close(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/**
 * sock_set_buffers() - raise the kernel's receive and send buffers of @fd
 * @rcvbuf: bytes, or 0 to leave the receive buffer alone
 * @sndbuf: bytes, or 0 to leave the send buffer alone
 *
 * A UDP relay loses datagrams when a burst outruns its receive buffer, and
 * the default (net.core.rmem_default, 208 KiB) holds only a few large
 * datagrams. The *FORCE variants pass net.core.rmem_max/wmem_max, as dockerd's
 * root may; without CAP_NET_ADMIN we get what the limits allow. Memory is
 * charged only while datagrams wait, so a large buffer costs nothing idle.
 * Return: 0, or the -errno of the last failure (the caller may ignore it)
 */
int sock_set_buffers(int fd, int rcvbuf, int sndbuf)
{
	int ret = 0;

	if (rcvbuf > 0 && set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf) < 0)
		ret = set_int(fd, SOL_SOCKET, SO_RCVBUF, rcvbuf);
	if (sndbuf > 0 && set_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, sndbuf) < 0)
		ret = set_int(fd, SOL_SOCKET, SO_SNDBUF, sndbuf);
	return ret;
}

/**
 * sock_pktinfo_enable() - have recvmsg() on @fd say which local address
 * each datagram was sent to: IP_PKTINFO on an IPv4 socket; on an IPv6 one
 * IPV6_RECVPKTINFO and IP_PKTINFO both
 *
 * For the IPv4 clients of a dual-stack socket the kernel's IPV6_PKTINFO
 * holds the datagram's header destination, which for a broadcast is no
 * address a reply may come from; IP_PKTINFO's ipi_spec_dst is (see
 * sock_pktinfo_local()). IP_PKTINFO on an IPv6 socket is best effort: without
 * it only broadcasts to a dual-stack socket go unanswered.
 * Receive buffers need SOCK_PKTINFO_RECV_SPACE bytes of control room.
 * Return: 0, or -errno
 */
int sock_pktinfo_enable(int fd)
{
	int family;
	socklen_t len = sizeof(family);

	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0)
		return -errno;
	if (family == AF_INET6) {
		int ret = set_int(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);

		if (ret == 0)
			set_int(fd, IPPROTO_IP, IP_PKTINFO, 1);
		return ret;
	}
	return set_int(fd, IPPROTO_IP, IP_PKTINFO, 1);
}

/**
 * sock_pktinfo_local() - the local address a received datagram was sent to
 * @mh: as recvmsg() filled it in, on a socket with sock_pktinfo_enable()
 * @local: set to that address, port 0; an IPv6 link-local one carries the
 *         arrival interface as its scope
 *
 * This is the address a reply must come from: a client with a connected
 * socket drops datagrams from any other. For IPv4 it is the kernel's
 * ipi_spec_dst, the destination for a unicast datagram and a local address
 * of the arrival interface for a broadcast one (a broadcast address cannot
 * be a source). An IPv4 datagram on a dual-stack socket carries both
 * IPV6_PKTINFO (its header destination, IPv4-mapped) and IP_PKTINFO: the
 * latter's ipi_spec_dst wins, IPv4-mapped, so the family stays the socket's.
 * An IPv6 multicast destination gives the unspecified address: the kernel
 * then picks the source, as without pktinfo.
 * Return: 0, or -ENOENT when @mh carries no pktinfo
 */
int sock_pktinfo_local(const struct msghdr *mh, struct addr *local)
{
	struct in_pktinfo pi4;
	struct in6_pktinfo pi6;
	bool have4 = false, have6 = false;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
		    c->cmsg_len >= CMSG_LEN(sizeof(pi4))) {
			memcpy(&pi4, CMSG_DATA(c), sizeof(pi4));
			have4 = true;
		} else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
			   c->cmsg_len >= CMSG_LEN(sizeof(pi6))) {
			memcpy(&pi6, CMSG_DATA(c), sizeof(pi6));
			have6 = true;
		}
	}
	memset(local, 0, sizeof(*local));
	if (have6 && !(have4 && IN6_IS_ADDR_V4MAPPED(&pi6.ipi6_addr))) {
		local->u.sin6.sin6_family = AF_INET6;
		if (!IN6_IS_ADDR_MULTICAST(&pi6.ipi6_addr))
			local->u.sin6.sin6_addr = pi6.ipi6_addr;
		if (IN6_IS_ADDR_LINKLOCAL(&pi6.ipi6_addr))
			local->u.sin6.sin6_scope_id = pi6.ipi6_ifindex;
		local->len = sizeof(local->u.sin6);
		return 0;
	}
	if (have4 && have6) { /* IPv4 on a dual-stack socket: ::ffff:spec_dst */
		local->u.sin6.sin6_family = AF_INET6;
		local->u.sin6.sin6_addr.s6_addr[10] = 0xff;
		local->u.sin6.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&local->u.sin6.sin6_addr.s6_addr[12], &pi4.ipi_spec_dst, 4);
		local->len = sizeof(local->u.sin6);
		return 0;
	}
	if (have4) {
		local->u.sin.sin_family = AF_INET;
		local->u.sin.sin_addr = pi4.ipi_spec_dst;
		local->len = sizeof(local->u.sin);
		return 0;
	}
	return -ENOENT;
}

/**
 * sock_rxq_ovfl_enable() - have recvmsg() on @fd report how many datagrams
 * the kernel has dropped at this socket (SO_RXQ_OVFL): a full receive
 * buffer is where a UDP relay loses datagrams, and it is invisible otherwise
 *
 * Receive buffers need SOCK_RXQ_OVFL_SPACE bytes of control room.
 * Return: 0, or -errno
 */
int sock_rxq_ovfl_enable(int fd)
{
	return set_int(fd, SOL_SOCKET, SO_RXQ_OVFL, 1);
}

/**
 * sock_rxq_ovfl() - the drop count a received datagram carries
 * @mh: as recvmsg() filled it in, on a socket with sock_rxq_ovfl_enable()
 * @drops: set to the socket's drops so far (a wrapping 32-bit count) when
 *         the kernel sent it; it sends none while the count is 0
 *
 * Return: whether @mh carried the count
 */
bool sock_rxq_ovfl(const struct msghdr *mh, uint32_t *drops)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
		    c->cmsg_len >= CMSG_LEN(sizeof(*drops))) {
			memcpy(drops, CMSG_DATA(c), sizeof(*drops));
			return true;
		}
	}
	return false;
}

/**
 * sock_pktinfo_put() - write the control message that makes sendmsg() use
 * @src as the source address (the port stays the socket's)
 * @buf: control buffer, suitably aligned, at least SOCK_PKTINFO_SPACE bytes
 *
 * IPv4 sets ipi_spec_dst and no interface, so routing picks the way out. An
 * IPv6 source that is IPv4-mapped works on a dual-stack socket sending to an
 * IPv4-mapped client. A link-local @src pins its scope as the interface.
 * Return: the bytes of @buf used (msg_controllen), or 0 if @len is too small
 */
size_t sock_pktinfo_put(void *buf, size_t len, const struct addr *src)
{
	struct msghdr mh = { .msg_control = buf, .msg_controllen = len };
	struct cmsghdr *c;

	if (len < SOCK_PKTINFO_SPACE)
		return 0;
	memset(buf, 0, SOCK_PKTINFO_SPACE);
	c = CMSG_FIRSTHDR(&mh);
	if (addr_family(src) == AF_INET) {
		struct in_pktinfo pi = { .ipi_spec_dst = src->u.sin.sin_addr };

		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	} else {
		struct in6_pktinfo pi = { .ipi6_addr = src->u.sin6.sin6_addr,
					  .ipi6_ifindex = src->u.sin6.sin6_scope_id };

		c->cmsg_level = IPPROTO_IPV6;
		c->cmsg_type = IPV6_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	}
}
