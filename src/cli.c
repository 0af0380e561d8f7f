// SPDX-License-Identifier: MIT
/*
 * cli.c - the command line, docker-proxy's exactly, read the way Go's flag
 * package reads it: "-x v", "-x=v", "--x", "--x=v"; booleans as "-x" or
 * "-x=true"; parsing stops at the first non-flag word. getopt_long_only()
 * does the tokenising; we add what it does differently from Go: it accepts
 * unambiguous abbreviations ("-container-i"), which Go does not, so every
 * match is checked against the word actually typed.
 */
#include "portproxy/cli.h"
#include "portproxy/spec.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum opt {
	OPT_PROTO = 256,
	OPT_HOST_IP,
	OPT_HOST_PORT,
	OPT_CONTAINER_IP,
	OPT_CONTAINER_PORT,
	OPT_USE_LISTEN_FD,
	OPT_LOG_LEVEL,
	OPT_LOG_TARGET,
	OPT_PIPE_SIZE,
	OPT_MAX_PIPES,
	OPT_CONNECT_TIMEOUT,
	OPT_UDP_TIMEOUT,
	OPT_UDP_MAX_FLOWS,
	OPT_PUBLISH,
	OPT_PUBLISH_ALL,
	OPT_EXPOSE,
	OPT_HELP,
	OPT_VERSION,
};

static const struct option options[] = {
	{ "proto", required_argument, NULL, OPT_PROTO },
	{ "host-ip", required_argument, NULL, OPT_HOST_IP },
	{ "host-port", required_argument, NULL, OPT_HOST_PORT },
	{ "container-ip", required_argument, NULL, OPT_CONTAINER_IP },
	{ "container-port", required_argument, NULL, OPT_CONTAINER_PORT },
	{ "use-listen-fd", optional_argument, NULL, OPT_USE_LISTEN_FD },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "log-target", required_argument, NULL, OPT_LOG_TARGET },
	{ "pipe-size", required_argument, NULL, OPT_PIPE_SIZE },
	{ "max-pipes", required_argument, NULL, OPT_MAX_PIPES },
	{ "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
	{ "udp-timeout", required_argument, NULL, OPT_UDP_TIMEOUT },
	{ "udp-max-flows", required_argument, NULL, OPT_UDP_MAX_FLOWS },
	{ "p", required_argument, NULL, OPT_PUBLISH },
	{ "publish", required_argument, NULL, OPT_PUBLISH },
	{ "P", optional_argument, NULL, OPT_PUBLISH_ALL },
	{ "publish-all", optional_argument, NULL, OPT_PUBLISH_ALL },
	{ "expose", required_argument, NULL, OPT_EXPOSE },
	{ "h", optional_argument, NULL, OPT_HELP },
	{ "help", optional_argument, NULL, OPT_HELP },
	{ "v", optional_argument, NULL, OPT_VERSION },
	{ "version", optional_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/**
 * cli_usage() - the flags, one per line, as -h prints them
 */
void cli_usage(FILE *out)
{
	fputs("Usage: portproxy [flags]\n"
	      "Forward one published port to a container, as docker-proxy does.\n"
	      "\n"
	      "  -proto tcp|udp|sctp      protocol to proxy (default tcp)\n"
	      "  -host-ip IP              address to listen on (default 0.0.0.0)\n"
	      "  -host-port PORT          port to listen on; 0 picks a free one\n"
	      "  -container-ip IP         address to forward to (required)\n"
	      "  -container-port PORT     port to forward to (required)\n"
	      "  -use-listen-fd           serve on the bound socket passed as fd 4\n"
	      "  -log-level LEVEL         error, warn, info (default), debug or trace\n"
	      "  -log-target WHERE        auto (default: syslog when stderr is /dev/null),\n"
	      "                           stderr or syslog\n"
	      "  -pipe-size BYTES         splice pipe size, K/M suffixes (default 1M)\n"
	      "  -max-pipes N             pipes in use at once, beyond that copy (default 4096)\n"
	      "  -connect-timeout DUR     give up connecting to the container after DUR\n"
	      "                           (e.g. 5s; default 0: the kernel's own timeout)\n"
	      "  -udp-timeout DUR         forget an idle UDP flow after DUR (default 90s)\n"
	      "  -udp-max-flows N         UDP flows at once; the least recent goes (default 4096)\n"
	      "\n"
	      "Several mappings from one process, in docker run's words (instead of\n"
	      "-proto, -host-ip, -host-port, -container-port and -use-listen-fd):\n"
	      "  -p SPEC                  publish [ip:][hostPort:]containerPort[/proto];\n"
	      "                           ports may be ranges first-last; repeatable\n"
	      "  -P                       publish every -expose port on a random port\n"
	      "  -expose PORT[-PORT][/proto]  a port for -P; repeatable\n"
	      "  Once listening, the mappings are printed on stdout as docker port does.\n"
	      "\n"
	      "  -h, -help                print this help\n"
	      "  -v, -version             print the version\n"
	      "\n"
	      "Flags may be written -flag value, -flag=value, --flag or --flag=value.\n"
	      "fd 3, when open, receives \"0\\n\" once listening or \"1\\n\" and the error.\n",
	      out);
}

/* Set @err and return -EINVAL, for one-line errors. */
__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
						      ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Go's strconv.ParseBool, which the flag package uses for booleans. */
static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "1", "t", "T", "true", "TRUE", "True" };
	static const char *const no[] = { "0", "f", "F", "false", "FALSE", "False" };

	for (unsigned i = 0; i < 6; i++) {
		if (!strcmp(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcmp(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;

	if (s[0] < '0' || s[0] > '9')
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 10);
	if (*end)
		return -EINVAL;
	if (errno || *out > max)
		return -ERANGE;
	return 0;
}

/**
 * cli_parse_duration() - a Go duration ("90s", "1m30s", "250ms", "0") in ms
 *
 * Fractions are allowed ("1.5s"); a bare number other than 0 is not, as in Go.
 * Return: 0, or -EINVAL
 */
int cli_parse_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char *unit;
		double ms;
	} units[] = { { "ns", 1e-6 }, { "us", 1e-3 }, { "\xc2\xb5s", 1e-3 }, { "ms", 1 },
		      { "s", 1e3 },   { "m", 60e3 },  { "h", 3600e3 } };
	double total = 0;

	if (!strcmp(s, "0")) {
		*ms = 0;
		return 0;
	}
	if (!*s)
		return -EINVAL;
	while (*s) {
		char *end;
		double v;
		size_t best = 0, blen = 0;

		if ((*s < '0' || *s > '9') && *s != '.')
			return -EINVAL;
		v = strtod(s, &end);
		if (end == s)
			return -EINVAL;
		s = end;
		for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
			size_t n = strlen(units[i].unit);

			if (!strncmp(s, units[i].unit, n) && n > blen) {
				best = i;
				blen = n;
			}
		}
		if (!blen)
			return -EINVAL;
		total += v * units[best].ms;
		s += blen;
	}
	if (total > 1e15)
		return -EINVAL;
	/* Round to the nearest millisecond, but never a non-zero duration to 0. */
	*ms = total > 0 && total < 1 ? 1 : (uint64_t)(total + 0.5);
	return 0;
}

/**
 * cli_parse_size() - bytes with an optional K, M or G suffix (powers of 1024)
 * Return: 0, or -EINVAL
 */
int cli_parse_size(const char *s, size_t *out)
{
	unsigned long long v;
	char *end;
	int shift = 0;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1] && strcmp(end + 1, "iB") && strcmp(end + 1, "B"))
		return -EINVAL;
	if (v > (1ULL << 40) >> shift)
		return -EINVAL;
	*out = (size_t)(v << shift);
	return 0;
}

/* The flag name as typed in @word: "--host-port=1" -> "host-port" (length). */
static size_t typed_name(const char *word, const char **name)
{
	word += word[1] == '-' ? 2 : 1;
	*name = word;
	return strcspn(word, "=");
}

/* The index of the option named exactly @name (@len bytes), or -1. */
static int find_option(const char *name, size_t len)
{
	for (int i = 0; options[i].name; i++)
		if (strlen(options[i].name) == len && !strncmp(options[i].name, name, len))
			return i;
	return -1;
}

static void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->map.proto = IPPROTO_TCP;
	cfg->map.listen_fd = -1;
	cfg->log_level = LOG_LVL_INFO;
	cfg->log_target = LOG_TO_AUTO;
	cfg->pipe_size = 1 << 20;
	cfg->max_pipes = 4096;
	cfg->udp_timeout_ms = 90 * 1000;
	cfg->udp_max_flows = 4096;
}

/**
 * cli_free() - free what cli_parse() allocated in @cfg
 */
void cli_free(struct config *cfg)
{
	free(cfg->specs);
	cfg->specs = NULL;
	cfg->nspecs = 0;
}

/* What the flags say beyond @cfg, for cli_parse() to check as a whole. */
struct flags {
	const char *host_ip, *container_ip;
	long host_port, container_port; /* -1: not given */
	enum cli_action action;
	const char *classic;       /* a single-mapping flag that was given */
	bool publish_all;          /* -P */
	struct port_spec *exposed; /* -expose, in order */
	size_t nexpose;
};

/* Read every flag into @cfg and @f. Return: 0, -ENOENT or -EINVAL (@err set) */
static int parse_flags(int argc, char **argv, struct config *cfg, struct flags *f, char *err,
		       size_t errlen)
{
	unsigned long long n;
	int c, idx;

	optind = 0; /* full reset, so that tests may call us again */
	opterr = 0;
	for (;;) {
		int word = optind ? optind : 1;
		const char *name;
		size_t len;
		bool b;

		idx = -1;
		c = getopt_long_only(argc, argv, "+:", options, &idx);
		if (c == -1)
			break;
		len = typed_name(argv[word], &name);
		if (c == ':' && idx < 0) /* glibc leaves the index unset here */
			idx = find_option(name, len);
		if (c == '?' || idx < 0 || strlen(options[idx].name) != len ||
		    strncmp(options[idx].name, name, len)) {
			fail(err, errlen, "flag provided but not defined: -%.*s", (int)len, name);
			return -ENOENT;
		}
		if (c == ':')
			return fail(err, errlen, "flag needs an argument: -%s", options[idx].name);

		switch (c) {
		case OPT_PROTO:
		case OPT_HOST_IP:
		case OPT_HOST_PORT:
		case OPT_CONTAINER_PORT:
		case OPT_USE_LISTEN_FD:
			f->classic = options[idx].name;
			break;
		}
		switch (c) {
		case OPT_PROTO:
			if (!strcmp(optarg, "tcp"))
				cfg->map.proto = IPPROTO_TCP;
			else if (!strcmp(optarg, "udp"))
				cfg->map.proto = IPPROTO_UDP;
			else if (!strcmp(optarg, "sctp"))
				cfg->map.proto = IPPROTO_SCTP;
			else
				return fail(err, errlen,
					    "invalid value \"%s\" for flag -proto: want tcp, udp "
					    "or sctp",
					    optarg);
			break;
		case OPT_HOST_IP:
			f->host_ip = optarg;
			break;
		case OPT_CONTAINER_IP:
			f->container_ip = optarg;
			break;
		case OPT_HOST_PORT:
		case OPT_CONTAINER_PORT: {
			uint16_t port;

			if (addr_parse_port(optarg, &port) < 0)
				return fail(
					err, errlen,
					"invalid value \"%s\" for flag -%s: want a port 0-65535",
					optarg, options[idx].name);
			*(c == OPT_HOST_PORT ? &f->host_port : &f->container_port) = port;
			break;
		}
		case OPT_USE_LISTEN_FD:
			if (optarg && parse_bool(optarg, &b) < 0)
				return fail(err, errlen,
					    "invalid boolean value \"%s\" for -use-listen-fd",
					    optarg);
			cfg->use_listen_fd = optarg ? b : true;
			break;
		case OPT_LOG_LEVEL:
			if (log_level_parse(optarg, &cfg->log_level) < 0)
				return fail(err, errlen,
					    "invalid value \"%s\" for flag -log-level: want error, "
					    "warn, info, debug or trace",
					    optarg);
			break;
		case OPT_LOG_TARGET:
			if (log_target_parse(optarg, &cfg->log_target) < 0)
				return fail(err, errlen,
					    "invalid value \"%s\" for flag -log-target: want auto, "
					    "stderr or syslog",
					    optarg);
			break;
		case OPT_PIPE_SIZE:
			if (cli_parse_size(optarg, &cfg->pipe_size) < 0 || cfg->pipe_size < 4096 ||
			    cfg->pipe_size > (1u << 30))
				return fail(
					err, errlen,
					"invalid value \"%s\" for flag -pipe-size: want 4K to 1G",
					optarg);
			break;
		case OPT_MAX_PIPES:
		case OPT_UDP_MAX_FLOWS:
			if (parse_uint(optarg, 1u << 24, &n) < 0 || n == 0)
				return fail(err, errlen,
					    "invalid value \"%s\" for flag -%s: want a number 1-%u",
					    optarg, options[idx].name, 1u << 24);
			*(c == OPT_MAX_PIPES ? &cfg->max_pipes : &cfg->udp_max_flows) = (unsigned)n;
			break;
		case OPT_CONNECT_TIMEOUT:
		case OPT_UDP_TIMEOUT: {
			uint64_t *ms = c == OPT_UDP_TIMEOUT ? &cfg->udp_timeout_ms
							    : &cfg->connect_timeout_ms;

			if (cli_parse_duration(optarg, ms) < 0)
				return fail(err, errlen,
					    "invalid value \"%s\" for flag -%s: want a duration "
					    "such as 30s or 1m30s",
					    optarg, options[idx].name);
			if (c == OPT_UDP_TIMEOUT && *ms == 0)
				return fail(err, errlen, "-udp-timeout must be above zero");
			break;
		}
		case OPT_PUBLISH:
			if (spec_parse_publish(optarg, &cfg->specs[cfg->nspecs], err, errlen) < 0)
				return -EINVAL;
			cfg->nspecs++;
			break;
		case OPT_EXPOSE:
			if (spec_parse_expose(optarg, &f->exposed[f->nexpose], err, errlen) < 0)
				return -EINVAL;
			f->nexpose++;
			break;
		case OPT_PUBLISH_ALL:
			if (optarg && parse_bool(optarg, &b) < 0)
				return fail(err, errlen, "invalid boolean value \"%s\" for -P",
					    optarg);
			f->publish_all = optarg ? b : true;
			break;
		case OPT_HELP:
		case OPT_VERSION:
			if (optarg && (parse_bool(optarg, &b) < 0 || !b))
				break;
			if (f->action == CLI_RUN)
				f->action = c == OPT_HELP ? CLI_HELP : CLI_VERSION;
			break;
		}
	}
	return 0;
}

/**
 * cli_parse() - read the command line into @cfg
 * @err: receives one line (no newline) when the return is negative
 *
 * The caller frees @cfg with cli_free(), whatever the return.
 * Return: CLI_RUN, CLI_HELP or CLI_VERSION; -ENOENT for an unknown flag,
 *         -EINVAL for a bad or missing value (the caller prints @err and
 *         exits 2, as Go's flag package does)
 */
int cli_parse(int argc, char **argv, struct config *cfg, char *err, size_t errlen)
{
	struct flags f = { .host_ip = "0.0.0.0", .host_port = -1, .container_port = -1 };
	int ret;

	config_defaults(cfg);
	/* Each -p or -expose takes a word of its own, so argc bounds both. */
	cfg->specs = calloc((size_t)argc, sizeof(*cfg->specs));
	f.exposed = calloc((size_t)argc, sizeof(*f.exposed));
	if (!cfg->specs || !f.exposed) {
		free(f.exposed);
		return fail(err, errlen, "out of memory");
	}
	ret = parse_flags(argc, argv, cfg, &f, err, errlen);
	/* -P's ports go after the -p ones, which take precedence. */
	memcpy(&cfg->specs[cfg->nspecs], f.exposed, f.nexpose * sizeof(*f.exposed));
	cfg->nspecs += f.nexpose;
	free(f.exposed);
	if (ret < 0)
		return ret;

	if (f.action != CLI_RUN)
		return f.action;
	if (optind < argc)
		return fail(err, errlen, "unexpected argument \"%s\": every value needs its flag",
			    argv[optind]);
	if (!f.container_ip)
		return fail(err, errlen, "-container-ip is required");
	if (f.nexpose && !f.publish_all)
		return fail(err, errlen, "-expose publishes only with -P");
	if (f.publish_all && !f.nexpose)
		return fail(err, errlen, "-P publishes the -expose ports, and there are none");
	if (addr_parse_ip(f.container_ip, 0, &cfg->map.backend) < 0)
		return fail(err, errlen,
			    "invalid value \"%s\" for flag -container-ip: not an IP address",
			    f.container_ip);
	if (addr_is_any(&cfg->map.backend))
		return fail(err, errlen, "-container-ip %s is not a destination", f.container_ip);
	if (cfg->nspecs) {
		if (f.classic)
			return fail(err, errlen,
				    "-%s cannot be mixed with -p or -P: give every mapping as -p",
				    f.classic);
		return CLI_RUN;
	}
	if (f.container_port < 1)
		return fail(err, errlen, "-container-port is required and must be 1-65535");
	addr_set_port(&cfg->map.backend, (uint16_t)f.container_port);
	if (f.host_port < 0 && !cfg->use_listen_fd)
		return fail(err, errlen, "-host-port is required (0 picks a free port)");
	if (addr_parse_ip(f.host_ip, (uint16_t)(f.host_port < 0 ? 0 : f.host_port),
			  &cfg->map.host) < 0)
		return fail(err, errlen,
			    "invalid value \"%s\" for flag -host-ip: not an IP address", f.host_ip);
	return CLI_RUN;
}
