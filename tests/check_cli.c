// SPDX-License-Identifier: MIT
/* Unit tests for cli.c: docker-proxy's flags read the way Go reads them. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "portproxy/cli.h"

static struct config cfg;
static char err[256];

/* Parse a NULL-terminated list of words after "portproxy". */
static int parse(const char *first, ...)
{
	char *argv[64] = { "portproxy" };
	int argc = 1;
	va_list ap;

	va_start(ap, first);
	for (const char *w = first; w && argc < 63; w = va_arg(ap, const char *))
		argv[argc++] = (char *)w;
	va_end(ap);
	argv[argc] = NULL;
	err[0] = '\0';
	cli_free(&cfg);
	return cli_parse(argc, argv, &cfg, err, sizeof(err));
}

#define DOCKERD_ARGS                                                                               \
	"-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "8080", "-container-ip",             \
		"172.17.0.2", "-container-port", "80"

START_TEST(dockerd_command_line)
{
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(parse(DOCKERD_ARGS, NULL), CLI_RUN);
	ck_assert_int_eq(cfg.map.proto, IPPROTO_TCP);
	ck_assert_str_eq(addr_format(&cfg.map.host, buf, sizeof(buf)), "0.0.0.0:8080");
	ck_assert_str_eq(addr_format(&cfg.map.backend, buf, sizeof(buf)), "172.17.0.2:80");
	ck_assert(!cfg.use_listen_fd);
	ck_assert_int_eq(parse(DOCKERD_ARGS, "-use-listen-fd", NULL), CLI_RUN);
	ck_assert(cfg.use_listen_fd);
}
END_TEST

START_TEST(defaults)
{
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(parse("-host-port", "0", "-container-ip", "10.0.0.1", "-container-port",
			       "1", NULL),
			 CLI_RUN);
	ck_assert_int_eq(cfg.map.proto, IPPROTO_TCP);
	ck_assert_str_eq(addr_format(&cfg.map.host, buf, sizeof(buf)), "0.0.0.0:0");
	ck_assert_uint_eq(cfg.pipe_size, 1 << 20);
	ck_assert_uint_eq(cfg.udp_timeout_ms, 90000);
	ck_assert_uint_eq(cfg.connect_timeout_ms, 0);
	ck_assert_int_eq(cfg.log_level, LOG_LVL_INFO);
	ck_assert_int_eq(cfg.log_target, LOG_TO_AUTO);
}
END_TEST

START_TEST(go_flag_forms)
{
	char buf[ADDR_STRLEN];

	ck_assert_int_eq(parse("-host-port=81", "--container-ip", "::1", "--container-port=82",
			       "-proto=udp", "--host-ip=::", NULL),
			 CLI_RUN);
	ck_assert_int_eq(cfg.map.proto, IPPROTO_UDP);
	ck_assert_str_eq(addr_format(&cfg.map.host, buf, sizeof(buf)), "[::]:81");
	ck_assert_str_eq(addr_format(&cfg.map.backend, buf, sizeof(buf)), "[::1]:82");
	ck_assert_int_eq(parse(DOCKERD_ARGS, "-use-listen-fd=true", NULL), CLI_RUN);
	ck_assert(cfg.use_listen_fd);
	ck_assert_int_eq(parse(DOCKERD_ARGS, "--use-listen-fd=false", NULL), CLI_RUN);
	ck_assert(!cfg.use_listen_fd);
	ck_assert_int_eq(parse(DOCKERD_ARGS, "-use-listen-fd=maybe", NULL), -EINVAL);
}
END_TEST

START_TEST(mixed_families)
{
	ck_assert_int_eq(parse("-host-ip", "::1", "-host-port", "80", "-container-ip", "172.17.0.2",
			       "-container-port", "80", NULL),
			 CLI_RUN);
	ck_assert_int_eq(addr_family(&cfg.map.host), AF_INET6);
	ck_assert_int_eq(addr_family(&cfg.map.backend), AF_INET);
}
END_TEST

START_TEST(help_and_version)
{
	ck_assert_int_eq(parse("-h", NULL), CLI_HELP);
	ck_assert_int_eq(parse("-help", NULL), CLI_HELP);
	ck_assert_int_eq(parse("--help", NULL), CLI_HELP);
	ck_assert_int_eq(parse("-v", NULL), CLI_VERSION);
	ck_assert_int_eq(parse("-version", NULL), CLI_VERSION);
	ck_assert_int_eq(parse(DOCKERD_ARGS, "-v", NULL), CLI_VERSION);
}
END_TEST

START_TEST(unknown_flags)
{
	ck_assert_int_eq(parse("-bogus", NULL), -ENOENT);
	ck_assert_str_eq(err, "flag provided but not defined: -bogus");
	ck_assert_int_eq(parse("--bogus=1", NULL), -ENOENT);
	ck_assert_str_eq(err, "flag provided but not defined: -bogus");
	/* Go does not take abbreviations; getopt would. */
	ck_assert_int_eq(parse("-container-i", "1.2.3.4", NULL), -ENOENT);
	ck_assert_int_eq(parse("-host", "1.2.3.4", NULL), -ENOENT);
	ck_assert_int_eq(parse("-x", NULL), -ENOENT);
}
END_TEST

START_TEST(missing_values)
{
	ck_assert_int_eq(parse("-host-port", NULL), -EINVAL);
	ck_assert_str_eq(err, "flag needs an argument: -host-port");
	ck_assert_int_eq(parse("-host-port", "80", "-container-port", "80", NULL), -EINVAL);
	ck_assert_str_eq(err, "-container-ip is required");
	ck_assert_int_eq(parse("-host-port", "80", "-container-ip", "1.2.3.4", NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "-container-port"));
	ck_assert_int_eq(parse("-container-ip", "1.2.3.4", "-container-port", "80", NULL),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "-host-port"));
	/* With a socket passed in, the host port is only informational. */
	ck_assert_int_eq(parse("-container-ip", "1.2.3.4", "-container-port", "80",
			       "-use-listen-fd", NULL),
			 CLI_RUN);
}
END_TEST

START_TEST(bad_values)
{
	static const char *const bad[][2] = {
		{ "-host-port", "70000" },     { "-host-port", "abc" },
		{ "-host-port", "-1" },        { "-host-port", "+80" },
		{ "-host-port", "" },          { "-host-port", "0x50" },
		{ "-container-port", "0" },    { "-container-port", "65536" },
		{ "-host-ip", "1.2.3" },       { "-host-ip", "localhost" },
		{ "-host-ip", "" },            { "-container-ip", "example.com" },
		{ "-container-ip", "0.0.0.0" }, { "-proto", "icmp" },
		{ "-log-level", "loud" },      { "-log-target", "file" },
		{ "-pipe-size", "1k" },        { "-pipe-size", "12x" },
		{ "-max-pipes", "0" },         { "-udp-timeout", "90" },
		{ "-udp-timeout", "0" },       { "-udp-timeout", "1y" },
		{ "-connect-timeout", "-1s" }, { "-udp-max-flows", "many" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { "-host-ip",	"127.0.0.1", "-host-port",
				       "1",		"-container-ip", "127.0.0.2",
				       "-container-port", "2" };
		int ret = parse(argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], argv[6],
				argv[7], bad[i][0], bad[i][1], NULL);

		ck_assert_msg(ret == -EINVAL, "%s %s: want -EINVAL, got %d", bad[i][0], bad[i][1],
			      ret);
		ck_assert_msg(err[0] && !strchr(err, '\n'), "%s %s: one line, got \"%s\"", bad[i][0],
			      bad[i][1], err);
	}
}
END_TEST

START_TEST(stray_argument)
{
	ck_assert_int_eq(parse(DOCKERD_ARGS, "extra", NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "extra"));
}
END_TEST

START_TEST(extras)
{
	ck_assert_int_eq(parse(DOCKERD_ARGS, "-pipe-size", "256K", "-max-pipes", "8",
			       "-connect-timeout", "1.5s", "-udp-timeout", "1m30s",
			       "-udp-max-flows", "100", "-log-level", "debug", "-log-target",
			       "stderr", NULL),
			 CLI_RUN);
	ck_assert_uint_eq(cfg.pipe_size, 256 * 1024);
	ck_assert_uint_eq(cfg.max_pipes, 8);
	ck_assert_uint_eq(cfg.connect_timeout_ms, 1500);
	ck_assert_uint_eq(cfg.udp_timeout_ms, 90000);
	ck_assert_uint_eq(cfg.udp_max_flows, 100);
	ck_assert_int_eq(cfg.log_level, LOG_LVL_DEBUG);
	ck_assert_int_eq(cfg.log_target, LOG_TO_STDERR);
}
END_TEST

START_TEST(durations)
{
	static const struct {
		const char *s;
		uint64_t ms;
	} good[] = { { "0", 0 },      { "1s", 1000 },	{ "250ms", 250 }, { "1m30s", 90000 },
		     { "1h", 3600000 }, { "1.5s", 1500 }, { "2000us", 2 }, { "100us", 1 }, { "1ns", 1 },  { "90s", 90000 } };
	static const char *const bad[] = { "", "s", "1", "1x", "-1s", "1s2", " 1s" };
	uint64_t ms;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(cli_parse_duration(good[i].s, &ms) == 0, "%s", good[i].s);
		ck_assert_uint_eq(ms, good[i].ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(cli_parse_duration(bad[i], &ms) < 0, "\"%s\" accepted", bad[i]);
}
END_TEST

START_TEST(publish_specs)
{
	ck_assert_int_eq(parse("-container-ip", "198.51.100.2", "-p", "8080:80", "--publish",
			       "[::1]::53/udp", "-p=1000-1002:2000-2002", NULL),
			 CLI_RUN);
	ck_assert_uint_eq(cfg.nspecs, 3);
	ck_assert_uint_eq(cfg.specs[0].ps_host_first, 8080);
	ck_assert_int_eq(cfg.specs[1].ps_proto, IPPROTO_UDP);
	ck_assert_uint_eq(cfg.specs[2].ps_cont_last, 2002);
	ck_assert_int_eq(addr_family(&cfg.map.backend), AF_INET);
}
END_TEST

START_TEST(publish_all_with_expose)
{
	ck_assert_int_eq(parse("-P", "-expose", "80", "-container-ip", "::1", "-expose",
			       "7000-7002/udp", "-p", "22", NULL),
			 CLI_RUN);
	ck_assert_uint_eq(cfg.nspecs, 3);
	ck_assert_uint_eq(cfg.specs[0].ps_cont_first, 22); /* -p first, then exposes in order */
	ck_assert_uint_eq(cfg.specs[1].ps_cont_first, 80);
	ck_assert_uint_eq(cfg.specs[2].ps_cont_first, 7000);
	ck_assert_uint_eq(cfg.specs[2].ps_host_first, 0);
}
END_TEST

START_TEST(publish_refused)
{
	ck_assert_int_eq(parse("-container-ip", "10.0.0.2", "-p", "80", "-host-port", "1", NULL),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "-host-port cannot be mixed"));
	ck_assert_int_eq(parse("-proto", "udp", "-container-ip", "10.0.0.2", "-p", "80", NULL),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "-proto cannot be mixed"));
	ck_assert_int_eq(parse("-container-ip", "10.0.0.2", "-expose", "80", NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "only with -P"));
	ck_assert_int_eq(parse("-container-ip", "10.0.0.2", "-P", NULL), -EINVAL);
	ck_assert_int_eq(parse("-container-ip", "10.0.0.2", "-p", "80-82:80-81", NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "\"80-82:80-81\""));
	ck_assert_int_eq(parse("-container-ip", "10.0.0.2", "-p", "70000", NULL), -EINVAL);
	ck_assert_int_eq(parse("-container-ip", "nope", "-p", "80", NULL), -EINVAL);
	ck_assert_int_eq(parse("-p", "80", NULL), -EINVAL);
	ck_assert_str_eq(err, "-container-ip is required");
}
END_TEST

static void teardown(void)
{
	cli_free(&cfg);
}

static Suite *cli_suite(void)
{
	Suite *s = suite_create("cli");
	TCase *ok = tcase_create("accepted"), *bad = tcase_create("refused");

	tcase_add_test(ok, dockerd_command_line);
	tcase_add_test(ok, defaults);
	tcase_add_test(ok, go_flag_forms);
	tcase_add_test(ok, mixed_families);
	tcase_add_test(ok, help_and_version);
	tcase_add_test(ok, extras);
	tcase_add_test(ok, durations);
	tcase_add_test(ok, publish_specs);
	tcase_add_test(ok, publish_all_with_expose);
	tcase_add_test(bad, publish_refused);
	tcase_add_checked_fixture(ok, NULL, teardown);
	tcase_add_checked_fixture(bad, NULL, teardown);
	tcase_add_test(bad, unknown_flags);
	tcase_add_test(bad, missing_values);
	tcase_add_test(bad, bad_values);
	tcase_add_test(bad, stray_argument);
	suite_add_tcase(s, ok);
	suite_add_tcase(s, bad);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(cli_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
