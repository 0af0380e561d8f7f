// SPDX-License-Identifier: MIT
/*
 * fuzz_cli.c - libFuzzer target for the command line parser (cli.c).
 *
 * The input is split on NUL and newline bytes into words (a trailing
 * newline does not make an empty last word, so seed files are plain text
 * with one word per line); argv is
 * "portproxy" followed by those words (at most MAX_WORDS), each in its own
 * exact-size heap block so that ASan catches a read past any of them.
 * cli_parse() runs twice on the same argv (it must reset getopt's state
 * and give the same answer), then cli_free(). What must hold:
 *   - the return is CLI_RUN, CLI_HELP, CLI_VERSION, -ENOENT or -EINVAL, and
 *     an error comes with a one-line message that fits @err;
 *   - argv is not modified (dockerd's argv is shown by ps; and glibc's
 *     getopt would permute it were the "+" dropped from the optstring);
 *   - CLI_RUN yields a usable configuration: a backend of a known family
 *     that is not a wildcard; for a classic mapping a port 1..65535 and a
 *     host address; sizes, caps and timeouts inside their documented ranges;
 *   - the specs are exactly the -p values in order, then the -expose values
 *     in order, each equal to what spec_parse_publish()/spec_parse_expose()
 *     make of that value alone (argv is walked here with Go's flag rules to
 *     find them), and each keeps fuzz_check_spec()'s invariants;
 *   - cli_parse_duration() and cli_parse_size(), given every word, stay in
 *     their ranges (1e15 ms, 1 TiB) and read plain numbers as strtoull does.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "portproxy/cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WORDS 48
#define ERRLEN	  256

/* Flags that take a value: "-x v" or "-x=v". The others take one only as "-x=v". */
static const char *const valued[] = {
	"proto",       "host-ip",	"host-port", "container-ip", "container-port",
	"log-level",   "log-target",	"pipe-size", "max-pipes",    "connect-timeout",
	"udp-timeout", "udp-max-flows", "p",	     "publish",	     "expose",
};

static bool is_valued(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(valued) / sizeof(valued[0]); i++)
		if (strlen(valued[i]) == len && !strncmp(valued[i], name, len))
			return true;
	return false;
}

static bool named(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && !strncmp(name, want, len);
}

/*
 * Walk an argv that cli_parse() accepted, the way Go's flag package does,
 * and check cfg->specs against each -p, then each -expose, value parsed on
 * its own.
 */
static void check_specs(int argc, char **argv, const struct config *cfg)
{
	const char *pub[MAX_WORDS], *exp[MAX_WORDS];
	size_t np = 0, ne = 0;
	char err[ERRLEN];

	for (int i = 1; i < argc; i++) {
		const char *w = argv[i], *name, *value = NULL;
		size_t len;

		if (w[0] != '-' || w[1] == '\0' || !strcmp(w, "--"))
			break;
		name = w + (w[1] == '-' ? 2 : 1);
		len = strcspn(name, "=");
		if (name[len] == '=')
			value = name + len + 1;
		else if (is_valued(name, len) && i + 1 < argc)
			value = argv[++i];
		if (named(name, len, "p") || named(name, len, "publish"))
			pub[np++] = value;
		else if (named(name, len, "expose"))
			exp[ne++] = value;
	}
	FUZZ_CHECK(cfg->nspecs == np + ne, "%zu specs from %zu -p and %zu -expose", cfg->nspecs, np,
		   ne);
	for (size_t k = 0; k < cfg->nspecs; k++) {
		bool is_exp = k >= np;
		const char *v = is_exp ? exp[k - np] : pub[k];
		struct port_spec want;
		int ret = is_exp ? spec_parse_expose(v, &want, err, sizeof(err))
				 : spec_parse_publish(v, &want, err, sizeof(err));

		FUZZ_CHECK(v && ret == 0, "spec %zu (\"%s\") was accepted by cli_parse only", k,
			   v ? v : "(null)");
		fuzz_check_spec(&cfg->specs[k], is_exp, v);
		FUZZ_CHECK(fuzz_spec_equal(&cfg->specs[k], &want),
			   "spec %zu is not %s \"%s\" (container %u-%u, want %u-%u)", k,
			   is_exp ? "-expose" : "-p", v, cfg->specs[k].ps_cont_first,
			   cfg->specs[k].ps_cont_last, want.ps_cont_first, want.ps_cont_last);
	}
}

static void check_config(int argc, char **argv, const struct config *cfg)
{
	const struct mapping *m = &cfg->map;
	int bfam = addr_family(&m->backend);

	FUZZ_CHECK(fuzz_proto_ok(m->proto), "proto %d", m->proto);
	FUZZ_CHECK(bfam == AF_INET || bfam == AF_INET6, "backend family %d", bfam);
	FUZZ_CHECK(!addr_is_any(&m->backend), "wildcard backend accepted");
	FUZZ_CHECK(m->listen_fd == -1, "listen_fd %d set by the parser", m->listen_fd);
	FUZZ_CHECK(cfg->pipe_size >= 4096 && cfg->pipe_size <= (1u << 30), "pipe size %zu",
		   cfg->pipe_size);
	FUZZ_CHECK(cfg->max_pipes >= 1 && cfg->max_pipes <= (1u << 24), "max pipes %u",
		   cfg->max_pipes);
	FUZZ_CHECK(cfg->udp_max_flows >= 1 && cfg->udp_max_flows <= (1u << 24), "udp flows %u",
		   cfg->udp_max_flows);
	FUZZ_CHECK(cfg->udp_timeout_ms > 0 && cfg->udp_timeout_ms <= 1000000000000000ull,
		   "udp timeout %llu ms", (unsigned long long)cfg->udp_timeout_ms);
	FUZZ_CHECK(cfg->connect_timeout_ms <= 1000000000000000ull, "connect timeout %llu ms",
		   (unsigned long long)cfg->connect_timeout_ms);
	FUZZ_CHECK(cfg->log_level >= LOG_LVL_ERROR && cfg->log_level <= LOG_LVL_TRACE,
		   "log level %d", cfg->log_level);
	FUZZ_CHECK(cfg->nspecs <= (size_t)argc, "%zu specs from %d words", cfg->nspecs, argc);
	if (cfg->nspecs) {
		check_specs(argc, argv, cfg);
		return;
	}
	FUZZ_CHECK(addr_port(&m->backend) >= 1, "backend port 0");
	FUZZ_CHECK(addr_family(&m->host) == AF_INET || addr_family(&m->host) == AF_INET6,
		   "host family %d", addr_family(&m->host));
}

/* Go's flag package would accept these as they are read here, too. */
static void check_value_parsers(const char *w)
{
	unsigned long long ref;
	uint64_t ms;
	size_t sz;
	char *end;

	if (cli_parse_duration(w, &ms) == 0)
		FUZZ_CHECK(ms <= 1000000000000000ull, "duration \"%s\" = %llu ms", w,
			   (unsigned long long)ms);
	if (cli_parse_size(w, &sz) == 0) {
		FUZZ_CHECK(sz <= (1ull << 40), "size \"%s\" = %zu", w, sz);
		if (w[0] >= '0' && w[0] <= '9' && w[strspn(w, "0123456789")] == '\0') {
			errno = 0;
			ref = strtoull(w, &end, 10);
			FUZZ_CHECK(!errno && ref == sz, "size \"%s\" = %zu, strtoull %llu", w, sz,
				   ref);
		}
	}
}

static int parse_once(int argc, char **argv, struct config *cfg, char *err)
{
	int ret;

	err[0] = '\0';
	ret = cli_parse(argc, argv, cfg, err, ERRLEN);
	FUZZ_CHECK(ret == CLI_RUN || ret == CLI_HELP || ret == CLI_VERSION || ret == -ENOENT ||
			   ret == -EINVAL,
		   "cli_parse returned %d", ret);
	if (ret < 0)
		fuzz_check_err(err, ERRLEN, "");
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[MAX_WORDS + 2], *copy[MAX_WORDS + 2];
	char *err = malloc(ERRLEN), *err2 = malloc(ERRLEN);
	struct config cfg, cfg2;
	int argc = 1, ret, ret2;
	size_t start = 0;

	if (!err || !err2)
		abort();
	argv[0] = fuzz_strndup((const uint8_t *)"portproxy", 9);
	copy[0] = fuzz_strndup((const uint8_t *)"portproxy", 9);
	for (size_t i = 0; i <= size && argc <= MAX_WORDS; i++) {
		if (i < size && data[i] != '\0' && data[i] != '\n')
			continue;
		if (i == size && start == size)
			break; /* no empty last word for a trailing newline */
		argv[argc] = fuzz_strndup(data + start, i - start);
		copy[argc] = fuzz_strndup(data + start, i - start);
		argc++;
		start = i + 1;
	}
	argv[argc] = copy[argc] = NULL;

	ret = parse_once(argc, argv, &cfg, err);
	for (int i = 0; i < argc; i++)
		FUZZ_CHECK(!strcmp(argv[i], copy[i]), "argv[%d] changed: \"%s\" -> \"%s\"", i,
			   copy[i], argv[i]);
	if (ret == CLI_RUN)
		check_config(argc, argv, &cfg);

	/* Again, on a config full of garbage: it must not depend on either. */
	memset(&cfg2, 0xa5, sizeof(cfg2));
	ret2 = parse_once(argc, argv, &cfg2, err2);
	FUZZ_CHECK(ret == ret2, "cli_parse returned %d, then %d", ret, ret2);
	if (ret < 0)
		FUZZ_CHECK(!strcmp(err, err2), "errors differ: \"%s\" vs \"%s\"", err, err2);
	if (ret == CLI_RUN) {
		FUZZ_CHECK(cfg.nspecs == cfg2.nspecs && cfg.map.proto == cfg2.map.proto &&
				   addr_equal(&cfg.map.backend, &cfg2.map.backend) &&
				   (cfg.nspecs || addr_equal(&cfg.map.host, &cfg2.map.host)) &&
				   cfg.use_listen_fd == cfg2.use_listen_fd &&
				   cfg.pipe_size == cfg2.pipe_size &&
				   cfg.udp_timeout_ms == cfg2.udp_timeout_ms,
			   "two parses of the same argv differ");
		for (size_t k = 0; k < cfg.nspecs; k++)
			FUZZ_CHECK(fuzz_spec_equal(&cfg.specs[k], &cfg2.specs[k]),
				   "spec %zu differs", k);
	}
	cli_free(&cfg2);
	cli_free(&cfg);

	for (int i = 1; i < argc; i++)
		check_value_parsers(argv[i]);
	for (int i = 0; i < argc; i++) {
		free(argv[i]);
		free(copy[i]);
	}
	free(err2);
	free(err);
	return 0;
}
