// SPDX-License-Identifier: MIT
/*
 * main.c - the command line, the parent's protocol, signals and the event
 * loop. No socket code of its own: that lives in sock.c and the relays.
 *
 * The parent's protocol (what dockerd expects of docker-proxy): fd 3, when
 * open, is the write end of a pipe. Once listening we write "0\n" in one
 * write() and close it; on failure "1\n" and the message, and exit 1.
 */
#include <errno.h>
#include <stdarg.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "portproxy/cli.h"
#include "portproxy/listener.h"
#include "portproxy/log.h"
#include "portproxy/loop.h"
#include "portproxy/pipe_pool.h"
#include "portproxy/publish.h"
#include "portproxy/sctp_relay.h"
#include "portproxy/sock.h"
#include "portproxy/tcp_relay.h"
#include "portproxy/udp_relay.h"
#include "version.h"

#define PARENT_FD 3
#define LISTEN_FD 4

/* One bound socket being served, and what serves it. */
struct service {
	struct tcp_relay *sv_tcp;
	struct listener *sv_listener;
	struct udp_relay *sv_udp;
	struct sctp_relay *sv_sctp;
};

struct proxy {
	struct config cfg;
	struct event_base *base;
	struct event *sig[2];
	struct pipe_pool *pipes;
	struct binding_set bindings;
	struct service *svc; /* one per binding */
	int parent_fd;       /* fd 3 until the handshake, else -1 */
	struct stdout_report {
		char *sr_buf;
		size_t sr_len, sr_off;
		int sr_fd;
		struct event *sr_ev;
	} out;
};

/*
 * fd 3 is the parent's pipe only if it is a pipe (or socket): a shell may
 * leak some other descriptor there, and we must not write into a file.
 */
static int take_parent_fd(void)
{
	struct stat st;

	if (fstat(PARENT_FD, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return -1;
	fcntl(PARENT_FD, F_SETFD, FD_CLOEXEC);
	return PARENT_FD;
}

/* Tell the parent how start-up went: "0\n", or "1\n" and @msg, in one write. */
static void report(struct proxy *p, const char *msg)
{
	char buf[600];
	int n;

	if (p->parent_fd < 0)
		return;
	n = snprintf(buf, sizeof(buf), "%s%s", msg ? "1\n" : "0\n", msg ? msg : "");
	if (n >= (int)sizeof(buf))
		n = sizeof(buf) - 1;
	while (write(p->parent_fd, buf, (size_t)n) < 0 && errno == EINTR)
		;
	close(p->parent_fd);
	p->parent_fd = -1;
}

/* Go-style error text: strerror() with a lower-case first letter. */
static const char *errtext(int err, char *buf, size_t len)
{
	snprintf(buf, len, "%s", strerror(err));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

/* Start-up failed: tell the parent and stderr, then exit 1. */
__attribute__((noreturn, format(printf, 2, 3))) static void die(struct proxy *p, const char *fmt,
								...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_error("%s", msg);
	report(p, msg);
	exit(1);
}

/* Go raises the soft descriptor limit to the hard one for docker-proxy; so do we. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct proxy *p = arg;

	(void)what;
	log_info("%s: shutting down", strsignal((int)sig));
	event_base_loopbreak(p->base);
}

/* Go-style error text for sock_adopt()'s refusals. */
static const char *adopt_error(int err, char *buf, size_t len)
{
	switch (err) {
	case -EINVAL:
		return "socket is not listening (or not bound)";
	case -EPROTOTYPE:
		return "wrong socket type";
	case -EAFNOSUPPORT:
		return "wrong address family";
	default:
		return errtext(-err, buf, len);
	}
}

/*
 * The classic single mapping: bind -host-ip:-host-port, or adopt the socket
 * dockerd passed as fd 4. Exits through die() on failure.
 */
static void bind_classic(struct proxy *p)
{
	struct mapping *m = &p->cfg.map;
	int type = m->proto == IPPROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;
	struct binding b = { .b_proto = m->proto, .b_backend = m->backend };
	char where[ADDR_STRLEN], eb[128];
	const char *op;
	int fd, ret;

	if (p->cfg.use_listen_fd) {
		struct addr local;

		fd = LISTEN_FD;
		ret = sock_adopt(fd, type, m->proto, &op);
		if (ret == 0 && sock_local(fd, &local) == 0 &&
		    addr_family(&local) != addr_family(&m->host))
			ret = -EAFNOSUPPORT;
		if (ret < 0)
			die(p, "listen fd %d: not a usable %s socket for -host-ip %s: %s", fd,
			    addr_netname(m->proto, &m->host),
			    addr_format_ip(&m->host, where, sizeof(where)),
			    adopt_error(ret, eb, sizeof(eb)));
	} else {
		fd = sock_listen(type, m->proto, &m->host, &op);
		if (fd < 0)
			die(p, "listen %s %s: %s: %s%s", addr_netname(m->proto, &m->host),
			    addr_format(&m->host, where, sizeof(where)), op,
			    errtext(-fd, eb, sizeof(eb)),
			    fd == -EPROTONOSUPPORT ? " (this kernel has no SCTP)" : "");
	}
	b.b_fd = fd;
	sock_local(fd, &b.b_host);
	if (publish_add(&p->bindings, &b) < 0)
		die(p, "out of memory");
}

/* Bind every -p / -P mapping, all or nothing. Exits through die() on failure. */
static void bind_specs(struct proxy *p)
{
	struct port_range eph;
	char err[300];

	publish_ephemeral_range("/proc/sys/net/ipv4/ip_local_port_range", &eph);
	if (publish_bind(p->cfg.specs, p->cfg.nspecs, &p->cfg.map.backend, &eph, &p->bindings, err,
			 sizeof(err)) < 0)
		die(p, "%s", err);
	publish_sort(&p->bindings);
}

/* Serve binding @b with @sv. Exits through die() on failure. */
static void start_service(struct proxy *p, struct binding *b, struct service *sv)
{
	struct tcp_relay_opts opts = {
		.pipes = p->pipes,
		.pipe_size = p->cfg.pipe_size,
		.connect_timeout_ms = p->cfg.connect_timeout_ms,
	};
	char where[ADDR_STRLEN];

	void *relay = NULL;
	listener_accept_fn accept_fn = NULL;
	int err = ENOMEM;

	switch (b->b_proto) {
	case IPPROTO_TCP:
		/* Accepted sockets inherit TCP_NODELAY and keepalive from the
		 * listener: set once here, not twice per connection. */
		sock_tune_tcp(b->b_fd);
		relay = sv->sv_tcp = tcp_relay_new(p->base, &b->b_backend, &opts);
		accept_fn = tcp_relay_accept;
		break;
	case IPPROTO_SCTP:
		sock_tune_sctp(b->b_fd); /* the streams its associations offer */
		relay = sv->sv_sctp = sctp_relay_new(p->base, &b->b_backend);
		accept_fn = sctp_relay_accept;
		break;
	case IPPROTO_UDP: {
		struct udp_relay_opts uo = {
			.idle_timeout_ms = p->cfg.udp_timeout_ms,
			.max_flows = p->cfg.udp_max_flows,
		};

		relay = sv->sv_udp = udp_relay_new(p->base, b->b_fd, &b->b_backend, &uo);
		err = errno;
		break;
	}
	}
	/* Stream protocols accept through a listener; UDP's relay reads the socket. */
	if (relay && accept_fn &&
	    !(sv->sv_listener = listener_new(p->base, b->b_fd, accept_fn, relay)))
		relay = NULL;
	if (!relay) {
		char eb[128];

		die(p, "listen %s %s: %s", addr_netname(b->b_proto, &b->b_host),
		    addr_format(&b->b_host, where, sizeof(where)), errtext(err, eb, sizeof(eb)));
	}
	b->b_fd = -1; /* the listener or the relay owns it now */
}

/* The start-up line: the version and the mapping (or how many there are). */
static void log_start(const struct proxy *p)
{
	const struct binding *b = &p->bindings.bs_v[0];
	char host[ADDR_STRLEN], be[ADDR_STRLEN];

	if (p->bindings.bs_n == 1) {
		log_info("portproxy %s: %s %s -> %s", PORTPROXY_VERSION,
			 addr_proto_name(b->b_proto), addr_format(&b->b_host, host, sizeof(host)),
			 addr_format(&b->b_backend, be, sizeof(be)));
		return;
	}
	log_info("portproxy %s: %zu mappings to %s", PORTPROXY_VERSION, p->bindings.bs_n,
		 addr_format_ip(&b->b_backend, be, sizeof(be)));
	for (size_t i = 0; i < p->bindings.bs_n; i++) {
		b = &p->bindings.bs_v[i];
		log_debug("%s %s -> %s", addr_proto_name(b->b_proto),
			  addr_format(&b->b_host, host, sizeof(host)),
			  addr_format(&b->b_backend, be, sizeof(be)));
	}
}

/* Write what stdout takes now; Return: true when done (sent, or dropped). */
static bool stdout_report_write(struct stdout_report *sr)
{
	while (sr->sr_off < sr->sr_len) {
		ssize_t n = write(sr->sr_fd, sr->sr_buf + sr->sr_off, sr->sr_len - sr->sr_off);

		if (n > 0)
			sr->sr_off += (size_t)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else
			return n < 0 && errno == EAGAIN ? false : true; /* EPIPE: nobody reads */
	}
	return true;
}

/*
 * Done with the report: close stdout (onto /dev/null), so that a script
 * reading it (`portproxy -p ... | while read line`) sees its end.
 */
static void stdout_report_free(struct stdout_report *sr)
{
	int null;

	if (!sr->sr_buf)
		return;
	if (sr->sr_ev)
		event_free(sr->sr_ev);
	if (sr->sr_fd > STDOUT_FILENO)
		close(sr->sr_fd);
	free(sr->sr_buf);
	memset(sr, 0, sizeof(*sr));
	null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDOUT_FILENO);
		close(null);
	}
}

static void stdout_report_ready(evutil_socket_t fd, short what, void *arg)
{
	struct stdout_report *sr = arg;

	(void)fd;
	(void)what;
	if (stdout_report_write(sr))
		stdout_report_free(sr);
}

/*
 * The mappings, on stdout, once fd 3 has said "0". A parent may read fd 3
 * first and stdout later; a report larger than a pipe must then not block
 * the loop (nor SIGTERM). So a pipe gets a non-blocking description of its
 * own (reopened through /proc, which leaves the parent's flags alone) and
 * whatever does not fit at once is written from the loop.
 */
static void stdout_report_start(struct proxy *p)
{
	struct stdout_report *sr = &p->out;
	FILE *f = open_memstream(&sr->sr_buf, &sr->sr_len);
	struct stat st;

	if (!f)
		return;
	publish_report(&p->bindings, f);
	fclose(f);
	sr->sr_fd = STDOUT_FILENO;
	if (fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode)) {
		int fd = open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC);

		if (fd >= 0)
			sr->sr_fd = fd;
	}
	if (stdout_report_write(sr))
		goto done;
	sr->sr_ev = event_new(p->base, sr->sr_fd, EV_WRITE | EV_PERSIST, stdout_report_ready, sr);
	if (sr->sr_ev && event_add(sr->sr_ev, NULL) == 0)
		return;
done:
	stdout_report_free(sr);
}

static void proxy_free(struct proxy *p)
{
	stdout_report_free(&p->out);
	for (size_t i = 0; p->svc && i < p->bindings.bs_n; i++) {
		listener_free(p->svc[i].sv_listener);
		tcp_relay_free(p->svc[i].sv_tcp);
		udp_relay_free(p->svc[i].sv_udp);
		sctp_relay_free(p->svc[i].sv_sctp);
	}
	free(p->svc);
	publish_close(&p->bindings);
	pipe_pool_free(p->pipes);
	for (int i = 0; i < 2; i++)
		if (p->sig[i])
			event_free(p->sig[i]);
	if (p->base)
		event_base_free(p->base);
	cli_free(&p->cfg);
}

int main(int argc, char **argv)
{
	struct proxy p = { .parent_fd = take_parent_fd() };
	sigset_t stop;
	char err[256];
	int ret;

	/* A SIGTERM during start-up (dockerd gives up, or dies) must still end in
	 * a clean exit 0: hold it until the event loop's handler is in place. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	sigprocmask(SIG_BLOCK, &stop, NULL);

	ret = cli_parse(argc, argv, &p.cfg, err, sizeof(err));
	if (ret == CLI_HELP || ret == CLI_VERSION) {
		if (ret == CLI_HELP)
			cli_usage(stdout);
		else
			printf("portproxy version %s\n", PORTPROXY_VERSION);
		cli_free(&p.cfg);
		return 0;
	}
	if (ret < 0) {
		cli_free(&p.cfg);
		fprintf(stderr, "portproxy: %s\n", err);
		if (ret == -ENOENT)
			cli_usage(stderr);
		else
			fprintf(stderr, "Run 'portproxy -h' for usage.\n");
		report(&p, err);
		return 2;
	}
	log_init(p.cfg.log_level, p.cfg.log_target);
	signal(SIGPIPE, SIG_IGN); /* splice() has no MSG_NOSIGNAL */
	raise_nofile();

	p.base = loop_new();
	if (!p.base)
		die(&p, "event loop: no edge-triggered O(1) backend (epoll) available");
	for (int i = 0; i < 2; i++) {
		p.sig[i] = evsignal_new(p.base, i ? SIGTERM : SIGINT, on_signal, &p);
		if (!p.sig[i] || event_add(p.sig[i], NULL) < 0)
			die(&p, "event loop: cannot handle signals");
	}
	sigprocmask(SIG_UNBLOCK, &stop, NULL);

	if (p.cfg.nspecs)
		bind_specs(&p);
	else
		bind_classic(&p);
	p.pipes = pipe_pool_new(p.cfg.pipe_size, p.cfg.max_pipes);
	p.svc = calloc(p.bindings.bs_n, sizeof(*p.svc));
	if (!p.pipes || !p.svc)
		die(&p, "out of memory");
	for (size_t i = 0; i < p.bindings.bs_n; i++)
		start_service(&p, &p.bindings.bs_v[i], &p.svc[i]);

	log_start(&p);
	report(&p, NULL);
	if (p.cfg.nspecs)
		stdout_report_start(&p);

	event_base_dispatch(p.base);
	/* Freeing the signal events restores the default action: a second
	 * SIGTERM (dockerd's parent-death signal comes once per dying thread)
	 * would then kill us mid-teardown instead of letting us exit 0. */
	sigprocmask(SIG_BLOCK, &stop, NULL);
	proxy_free(&p);
	return 0;
}
