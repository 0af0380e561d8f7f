/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_PUBLISH_H
#define PORTPROXY_PUBLISH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "portproxy/addr.h"
#include "portproxy/spec.h"

/* One bound host socket and where its traffic goes. */
struct binding {
	int b_proto;
	int b_fd;              /* bound (and, for streams, listening) */
	struct addr b_host;    /* as bound, with the port the kernel has */
	struct addr b_backend; /* container ip and port */
};

struct binding_set {
	struct binding *bs_v;
	size_t bs_n, bs_cap;
};

/* The range random host ports come from: the kernel's ephemeral range. */
struct port_range {
	uint16_t pr_first, pr_last;
};

int publish_ephemeral_range(const char *path, struct port_range *out);
int publish_bind(const struct port_spec *specs, size_t n, const struct addr *container_ip,
		 const struct port_range *random_range, struct binding_set *out, char *err,
		 size_t errlen);
int publish_add(struct binding_set *set, const struct binding *b);
void publish_sort(struct binding_set *set);
void publish_report(const struct binding_set *set, FILE *out);
void publish_close(struct binding_set *set);

#endif
