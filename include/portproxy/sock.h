/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_SOCK_H
#define PORTPROXY_SOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "portproxy/addr.h"

/* The listen() backlog we ask for; the kernel caps it at net.core.somaxconn. */
#define SOCK_BACKLOG 4096

int sock_listen(int type, int proto, const struct addr *a, const char **op);
int sock_adopt(int fd, int type, int proto, const char **op);
int sock_connect(int type, int proto, const struct addr *to, int *fdp);
int sock_error(int fd);
int sock_local(int fd, struct addr *out);
void sock_tune_tcp(int fd);
int sock_tune_sctp(int fd);
void sock_reset_close(int fd);

/* Room for the one pktinfo control message sock_pktinfo_put() writes. */
#define SOCK_PKTINFO_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
/* Room for what sock_pktinfo_enable() makes recvmsg() report: an IPv4
 * datagram on a dual-stack socket brings both IPV6_PKTINFO and IP_PKTINFO. */
#define SOCK_PKTINFO_RECV_SPACE \
	(CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo)))
/* Room for what sock_rxq_ovfl_enable() makes recvmsg() report. */
#define SOCK_RXQ_OVFL_SPACE CMSG_SPACE(sizeof(uint32_t))

int sock_set_buffers(int fd, int rcvbuf, int sndbuf);
int sock_pktinfo_enable(int fd);
int sock_pktinfo_local(const struct msghdr *mh, struct addr *local);
size_t sock_pktinfo_put(void *buf, size_t len, const struct addr *src);
int sock_rxq_ovfl_enable(int fd);
bool sock_rxq_ovfl(const struct msghdr *mh, uint32_t *drops);

#endif
