// SPDX-License-Identifier: MIT
/*
 * publish.c - turn publish specs into bound host sockets.
 *
 * All or nothing: a spec that cannot be bound (port busy, range exhausted)
 * closes everything bound so far and names the spec and the reason, so that
 * a failed start leaves no port taken.
 *
 * A spec without a host IP publishes on 0.0.0.0 and on :: (IPv6-only), on
 * the same port, as Docker does; where the host has no IPv6 the :: half is
 * left out. Random ports start at a random point of the ephemeral range and
 * go up from there, so that a range of exposed ports lands close together.
 */
#include "portproxy/publish.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "portproxy/sock.h"

/* Docker's fallback when the kernel's range cannot be read. */
static const struct port_range fallback_range = { 49153, 65535 };

/**
 * publish_ephemeral_range() - read ip_local_port_range from @path
 *
 * Falls back to 49153-65535 when the file is missing or odd.
 * Return: 0 when read from the file, -ENOENT when the fallback is used
 */
int publish_ephemeral_range(const char *path, struct port_range *out)
{
	FILE *f = fopen(path, "re");
	unsigned lo, hi;
	int ok = 0;

	if (f) {
		ok = fscanf(f, "%u %u", &lo, &hi) == 2 && lo >= 1 && lo <= hi && hi <= 65535;
		fclose(f);
	}
	if (!ok) {
		*out = fallback_range;
		return -ENOENT;
	}
	out->pr_first = (uint16_t)lo;
	out->pr_last = (uint16_t)hi;
	return 0;
}

/**
 * publish_add() - append a copy of @b to @set
 * Return: 0, or -ENOMEM
 */
int publish_add(struct binding_set *set, const struct binding *b)
{
	if (set->bs_n == set->bs_cap) {
		size_t cap = set->bs_cap ? set->bs_cap * 2 : 8;
		struct binding *v = realloc(set->bs_v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		set->bs_v = v;
		set->bs_cap = cap;
	}
	set->bs_v[set->bs_n++] = *b;
	return 0;
}

/* Close the bindings from @from on and forget them. */
static void truncate_set(struct binding_set *set, size_t from)
{
	while (set->bs_n > from) {
		set->bs_n--;
		if (set->bs_v[set->bs_n].b_fd >= 0)
			close(set->bs_v[set->bs_n].b_fd);
	}
}

/**
 * publish_close() - close every socket in @set and free it
 */
void publish_close(struct binding_set *set)
{
	truncate_set(set, 0);
	free(set->bs_v);
	memset(set, 0, sizeof(*set));
}

/* The host addresses of @ps: its IP, or 0.0.0.0 and ::. */
static unsigned host_ips(const struct port_spec *ps, struct addr ips[2])
{
	if (ps->ps_has_ip) {
		ips[0] = ps->ps_ip;
		return 1;
	}
	addr_parse_ip("0.0.0.0", 0, &ips[0]);
	addr_parse_ip("::", 0, &ips[1]);
	return 2;
}

/*
 * Bind @port (0: let the kernel choose, for the first address; the others
 * follow it) on every host address of @ps, forwarding to @backend.
 * Return: 0, or -errno with @op and @failed saying what failed
 */
static int bind_all(struct binding_set *set, const struct port_spec *ps, uint16_t port,
		    const struct addr *backend, const char **op, struct addr *failed)
{
	int type = ps->ps_proto == IPPROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;
	struct addr ips[2];
	unsigned n = host_ips(ps, ips);
	size_t mark = set->bs_n;

	for (unsigned i = 0; i < n; i++) {
		struct binding b = { .b_proto = ps->ps_proto, .b_backend = *backend };
		int fd;

		addr_set_port(&ips[i], port);
		fd = sock_listen(type, ps->ps_proto, &ips[i], op);
		if (fd == -EAFNOSUPPORT && !ps->ps_has_ip && i > 0)
			continue; /* no IPv6 on this host: 0.0.0.0 alone, as Docker does */
		if (fd < 0) {
			*failed = ips[i];
			truncate_set(set, mark);
			return fd;
		}
		b.b_fd = fd;
		sock_local(fd, &b.b_host);
		port = addr_port(&b.b_host);
		if (publish_add(set, &b) < 0) {
			close(fd);
			truncate_set(set, mark);
			*op = "bind";
			return -ENOMEM;
		}
	}
	return 0;
}

static bool busy(int err)
{
	return err == -EADDRINUSE || err == -EACCES;
}

__attribute__((format(printf, 4, 5))) static void fail(const char *spec, char *err, size_t errlen,
						       const char *fmt, ...)
{
	char why[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "publish %s: %s", spec, why);
}

static void describe(char *buf, size_t len, const struct port_spec *ps)
{
	char ip[ADDR_STRLEN] = "";
	int n = 0;

	if (ps->ps_has_ip)
		n = snprintf(buf, len, addr_family(&ps->ps_ip) == AF_INET6 ? "[%s]:" : "%s:",
			     addr_format_ip(&ps->ps_ip, ip, sizeof(ip)));
	if (ps->ps_host_first == ps->ps_host_last && ps->ps_host_first)
		n += snprintf(buf + n, len - (size_t)n, "%u:", ps->ps_host_first);
	else if (ps->ps_host_first)
		n += snprintf(buf + n, len - (size_t)n, "%u-%u:", ps->ps_host_first,
			      ps->ps_host_last);
	else if (ps->ps_has_ip)
		n += snprintf(buf + n, len - (size_t)n, ":");
	if (ps->ps_cont_first == ps->ps_cont_last)
		n += snprintf(buf + n, len - (size_t)n, "%u", ps->ps_cont_first);
	else
		n += snprintf(buf + n, len - (size_t)n, "%u-%u", ps->ps_cont_first,
			      ps->ps_cont_last);
	snprintf(buf + n, len - (size_t)n, "/%s", addr_proto_name(ps->ps_proto));
}

static void bind_error(const char *spec, int ret, const char *op, const struct addr *where,
		       int proto, char *err, size_t errlen)
{
	char host[ADDR_STRLEN], why[96];

	snprintf(why, sizeof(why), "%s", strerror(-ret));
	if (why[0] >= 'A' && why[0] <= 'Z')
		why[0] = (char)(why[0] - 'A' + 'a');
	fail(spec, err, errlen, "listen %s %s: %s: %s", addr_netname(proto, where),
	     addr_format(where, host, sizeof(host)), op, why);
}

/* Is host port range of @ps mapped port by port onto its container range? */
static bool one_to_one(const struct port_spec *ps)
{
	return ps->ps_host_first &&
	       (unsigned)(ps->ps_host_last - ps->ps_host_first) + 1 == spec_ports(ps);
}

/*
 * Bind container port @cport of @ps on the first free port of its host
 * range, or of @rr starting at *@next (random ports). Return: 0 or -errno
 */
static int bind_first_free(struct binding_set *set, const struct port_spec *ps,
			   const struct addr *backend, const struct port_range *rr, unsigned *next,
			   const char **op, struct addr *where)
{
	unsigned first = ps->ps_host_first ? ps->ps_host_first : rr->pr_first;
	unsigned last = ps->ps_host_first ? ps->ps_host_last : rr->pr_last;
	unsigned count = last - first + 1, start = ps->ps_host_first ? 0 : *next % count;

	for (unsigned t = 0; t < count; t++) {
		unsigned slot = (start + t) % count;
		int ret = bind_all(set, ps, (uint16_t)(first + slot), backend, op, where);

		if (ret == 0) {
			if (!ps->ps_host_first)
				*next = slot + 1; /* random ports go on from here */
			return 0;
		}
		if (!busy(ret))
			return ret;
	}
	return -ENOSPC;
}

/* Has @set a binding of @proto to container port @port already? */
static bool published(const struct binding_set *set, int proto, uint16_t port)
{
	for (size_t i = 0; i < set->bs_n; i++)
		if (set->bs_v[i].b_proto == proto && addr_port(&set->bs_v[i].b_backend) == port)
			return true;
	return false;
}

/**
 * publish_bind() - bind every port that @specs publish, forwarding to
 * @container_ip; random ports come from @random_range
 * @out: receives the bindings (appended); on failure left as it was
 * @err: on failure, one line naming the spec and the reason
 *
 * Return: 0, or -errno (-EADDRINUSE for a busy port, -ENOSPC for a range
 *         with no free port)
 */
int publish_bind(const struct port_spec *specs, size_t n, const struct addr *container_ip,
		 const struct port_range *random_range, struct binding_set *out, char *err,
		 size_t errlen)
{
	size_t mark = out->bs_n;
	unsigned next = 0;

	if (getrandom(&next, sizeof(next), GRND_NONBLOCK) != sizeof(next))
		next = (unsigned)getpid();

	for (size_t s = 0; s < n; s++) {
		const struct port_spec *ps = &specs[s];
		struct addr backend = *container_ip, where;
		const char *op = "bind";
		char spec[96];
		int ret = 0;

		for (unsigned k = 0; k < spec_ports(ps) && ret == 0; k++) {
			addr_set_port(&backend, (uint16_t)(ps->ps_cont_first + k));
			if (ps->ps_if_unpublished &&
			    published(out, ps->ps_proto, addr_port(&backend)))
				continue;
			if (one_to_one(ps))
				ret = bind_all(out, ps, (uint16_t)(ps->ps_host_first + k), &backend,
					       &op, &where);
			else
				ret = bind_first_free(out, ps, &backend, random_range, &next, &op,
						      &where);
		}
		if (ret == 0)
			continue;
		truncate_set(out, mark);
		describe(spec, sizeof(spec), ps);
		if (ret == -ENOSPC && ps->ps_host_first)
			fail(spec, err, errlen, "no free port in host range %u-%u",
			     ps->ps_host_first, ps->ps_host_last);
		else if (ret == -ENOSPC)
			fail(spec, err, errlen, "no free port in the ephemeral range %u-%u",
			     random_range->pr_first, random_range->pr_last);
		else
			bind_error(spec, ret, op, &where, ps->ps_proto, err, errlen);
		return ret;
	}
	return 0;
}

/* "80/tcp -> 0.0.0.0:32768": a binding as `docker port` prints it. */
static void binding_line(const struct binding *b, char *buf, size_t len)
{
	char host[ADDR_STRLEN];

	snprintf(buf, len, "%u/%s -> %s", addr_port(&b->b_backend), addr_proto_name(b->b_proto),
		 addr_format(&b->b_host, host, sizeof(host)));
}

/*
 * The "natural" order `docker port` sorts its lines in: text compares byte by
 * byte, but a run of digits compares as a number and sorts before any other
 * character; of equal numbers the one with fewer leading zeros goes first.
 */
static int natural_cmp(const char *a, const char *b)
{
	while (*a && *b) {
		bool da = isdigit((unsigned char)*a), db = isdigit((unsigned char)*b);
		const char *za, *zb;
		size_t la, lb;
		int c;

		if (da != db)
			return da ? -1 : 1;
		if (!da) {
			if (*a != *b)
				return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
			a++;
			b++;
			continue;
		}
		for (za = a; *za == '0'; za++)
			;
		for (zb = b; *zb == '0'; zb++)
			;
		for (la = 0; isdigit((unsigned char)za[la]); la++)
			;
		for (lb = 0; isdigit((unsigned char)zb[lb]); lb++)
			;
		if (la != lb)
			return la < lb ? -1 : 1;
		if ((c = memcmp(za, zb, la)))
			return c < 0 ? -1 : 1;
		if (za - a != zb - b)
			return za - a < zb - b ? -1 : 1;
		a = za + la;
		b = zb + lb;
	}
	return *a ? 1 : *b ? -1 : 0;
}

struct sort_entry {
	char se_line[ADDR_STRLEN + 16];
	struct binding se_b;
};

static int sort_entry_cmp(const void *pa, const void *pb)
{
	return natural_cmp(((const struct sort_entry *)pa)->se_line,
			   ((const struct sort_entry *)pb)->se_line);
}

/**
 * publish_sort() - order @set as `docker port` prints it: its lines in
 * natural order
 */
void publish_sort(struct binding_set *set)
{
	struct sort_entry *v;

	if (set->bs_n < 2 || !(v = calloc(set->bs_n, sizeof(*v))))
		return;
	for (size_t i = 0; i < set->bs_n; i++) {
		v[i].se_b = set->bs_v[i];
		binding_line(&v[i].se_b, v[i].se_line, sizeof(v[i].se_line));
	}
	qsort(v, set->bs_n, sizeof(*v), sort_entry_cmp);
	for (size_t i = 0; i < set->bs_n; i++)
		set->bs_v[i] = v[i].se_b;
	free(v);
}

/**
 * publish_report() - one line per binding in `docker port` format:
 * "80/tcp -> 0.0.0.0:32768", "80/tcp -> [::]:32768"
 */
void publish_report(const struct binding_set *set, FILE *out)
{
	for (size_t i = 0; i < set->bs_n; i++) {
		char line[ADDR_STRLEN + 16];

		binding_line(&set->bs_v[i], line, sizeof(line));
		fprintf(out, "%s\n", line);
	}
	fflush(out);
}
