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
#include "portproxy/pipe_pool.h"
#include "portproxy/sock.h"
#include "portproxy/tcp_relay.h"
#include "version.h"

#define PARENT_FD 3
#define LISTEN_FD 4

struct proxy {
	struct config cfg;
	struct event_base *base;
	struct event *sig[2];
	struct pipe_pool *pipes;
	struct tcp_relay *tcp;
	struct listener *listener;
	int parent_fd; /* fd 3 until the handshake, else -1 */
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

static struct event_base *make_base(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base;

	if (!ec)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
	event_config_require_features(ec, EV_FEATURE_ET | EV_FEATURE_O1);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}

/* Bind (or adopt fd 4) and start accepting. Exits through die() on failure. */
static void start_tcp(struct proxy *p)
{
	struct mapping *m = &p->cfg.map;
	struct tcp_relay_opts opts = {
		.pipe_size = p->cfg.pipe_size,
		.connect_timeout_ms = p->cfg.connect_timeout_ms,
	};
	char where[ADDR_STRLEN], eb[128];
	const char *op;
	int fd, ret;

	if (p->cfg.use_listen_fd) {
		struct addr local;

		fd = LISTEN_FD;
		ret = sock_adopt(fd, SOCK_STREAM, IPPROTO_TCP, &op);
		if (ret == 0 && sock_local(fd, &local) == 0 &&
		    addr_family(&local) != addr_family(&m->host))
			ret = -EAFNOSUPPORT;
		if (ret < 0)
			die(p, "listen fd %d: not a listening %s socket for -host-ip %s: %s", fd,
			    addr_netname(IPPROTO_TCP, &m->host), addr_format_ip(&m->host, where, sizeof(where)),
			    ret == -EINVAL ? "socket is not listening"
			    : ret == -EPROTOTYPE ? "wrong socket type"
			    : ret == -EAFNOSUPPORT ? "wrong address family"
						   : errtext(-ret, eb, sizeof(eb)));
		sock_local(fd, &m->host);
	} else {
		fd = sock_listen(SOCK_STREAM, IPPROTO_TCP, &m->host, &op);
		if (fd < 0)
			die(p, "listen %s %s: %s: %s", addr_netname(IPPROTO_TCP, &m->host),
			    addr_format(&m->host, where, sizeof(where)), op,
			    errtext(-fd, eb, sizeof(eb)));
		sock_local(fd, &m->host);
	}
	m->listen_fd = fd;
	p->pipes = pipe_pool_new(p->cfg.pipe_size, p->cfg.max_pipes);
	opts.pipes = p->pipes;
	p->tcp = p->pipes ? tcp_relay_new(p->base, &m->backend, &opts) : NULL;
	p->listener = p->tcp ? listener_new(p->base, fd, tcp_relay_accept, p->tcp) : NULL;
	if (!p->listener)
		die(p, "listen %s %s: out of memory", addr_netname(IPPROTO_TCP, &m->host),
		    addr_format(&m->host, where, sizeof(where)));
}

static void proxy_free(struct proxy *p)
{
	listener_free(p->listener);
	tcp_relay_free(p->tcp);
	pipe_pool_free(p->pipes);
	for (int i = 0; i < 2; i++)
		if (p->sig[i])
			event_free(p->sig[i]);
	if (p->base)
		event_base_free(p->base);
}

int main(int argc, char **argv)
{
	struct proxy p = { .parent_fd = take_parent_fd() };
	struct mapping *m = &p.cfg.map;
	char err[256], host[ADDR_STRLEN], be[ADDR_STRLEN];
	int ret;

	ret = cli_parse(argc, argv, &p.cfg, err, sizeof(err));
	if (ret == CLI_HELP) {
		cli_usage(stdout);
		return 0;
	}
	if (ret == CLI_VERSION) {
		printf("portproxy version %s\n", PORTPROXY_VERSION);
		return 0;
	}
	if (ret < 0) {
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

	p.base = make_base();
	if (!p.base)
		die(&p, "event loop: no edge-triggered O(1) backend (epoll) available");
	for (int i = 0; i < 2; i++) {
		p.sig[i] = evsignal_new(p.base, i ? SIGTERM : SIGINT, on_signal, &p);
		if (!p.sig[i] || event_add(p.sig[i], NULL) < 0)
			die(&p, "event loop: cannot handle signals");
	}

	switch (m->proto) {
	case IPPROTO_TCP:
		start_tcp(&p);
		break;
	default:
		die(&p, "listen %s %s: -proto %s is not supported yet",
		    addr_netname(m->proto, &m->host), addr_format(&m->host, host, sizeof(host)),
		    addr_proto_name(m->proto));
	}

	log_info("portproxy %s: %s %s -> %s", PORTPROXY_VERSION, addr_proto_name(m->proto),
		 addr_format(&m->host, host, sizeof(host)), addr_format(&m->backend, be, sizeof(be)));
	report(&p, NULL);

	event_base_dispatch(p.base);
	proxy_free(&p);
	return 0;
}
