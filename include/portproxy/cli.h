/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_CLI_H
#define PORTPROXY_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "portproxy/addr.h"
#include "portproxy/log.h"
#include "portproxy/spec.h"

/* One published port: where to listen and where to forward. */
struct mapping {
	int proto;           /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP */
	struct addr host;    /* listen address; port 0 picks an ephemeral one */
	struct addr backend; /* the container's address */
	int listen_fd;       /* an adopted socket (-use-listen-fd), or -1 */
};

/* Everything the command line sets. Defaults keep docker-proxy's behaviour. */
struct config {
	struct mapping map;
	bool use_listen_fd;
	enum log_level log_level;
	enum log_target log_target;
	size_t pipe_size;            /* bytes asked of F_SETPIPE_SZ */
	unsigned max_pipes;          /* pipes in use at once; beyond, copy */
	uint64_t connect_timeout_ms; /* 0: the kernel's own (no timer) */
	uint64_t udp_timeout_ms;     /* idle expiry of a UDP flow */
	unsigned udp_max_flows;      /* flows at once; the least recent goes */
	struct port_spec *specs;     /* -p, then -P's -expose ports; map.backend's
				      * IP is the container's */
	size_t nspecs;
};

/* What cli_parse() asks the caller to do when it does not fail. */
enum cli_action { CLI_RUN, CLI_HELP, CLI_VERSION };

int cli_parse(int argc, char **argv, struct config *cfg, char *err, size_t errlen);
void cli_free(struct config *cfg);
void cli_usage(FILE *out);
int cli_parse_duration(const char *s, uint64_t *ms);
int cli_parse_size(const char *s, size_t *out);

#endif
