// SPDX-License-Identifier: MIT
/*
 * log.c - one line per event, to stderr or syslog.
 *
 * dockerd starts its proxies with stderr on /dev/null, where lines are lost;
 * in that case (LOG_TO_AUTO) lines go to syslog, which journald collects
 * where there is one.
 */
#include "portproxy/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LVL_INFO;
static bool use_syslog;

static const char *const level_names[] = { "error", "warn", "info", "debug", "trace" };
static const int syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG, LOG_DEBUG };

/**
 * log_level_parse() - map a level name to its value
 * Return: 0, or -EINVAL for an unknown name
 */
int log_level_parse(const char *name, enum log_level *out)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (!strcmp(name, level_names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	if (!strcmp(name, "warning")) {
		*out = LOG_LVL_WARN;
		return 0;
	}
	return -EINVAL;
}

/**
 * log_target_parse() - map "auto", "stderr" or "syslog" to a target
 * Return: 0, or -EINVAL for an unknown name
 */
int log_target_parse(const char *name, enum log_target *out)
{
	if (!strcmp(name, "auto"))
		*out = LOG_TO_AUTO;
	else if (!strcmp(name, "stderr"))
		*out = LOG_TO_STDERR;
	else if (!strcmp(name, "syslog"))
		*out = LOG_TO_SYSLOG;
	else
		return -EINVAL;
	return 0;
}

/* True when fd 2 is closed or is /dev/null (character device 1:3). */
static bool stderr_is_lost(void)
{
	struct stat st;

	if (fstat(STDERR_FILENO, &st) < 0)
		return true;
	return S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3;
}

/**
 * log_init() - set the threshold and choose where lines go
 */
void log_init(enum log_level level, enum log_target target)
{
	log_threshold = level;
	use_syslog = target == LOG_TO_SYSLOG || (target == LOG_TO_AUTO && stderr_is_lost());
	if (use_syslog)
		openlog("portproxy", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

bool log_uses_syslog(void)
{
	return use_syslog;
}

static void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	char line[512];
	int saved = errno;

	vsnprintf(line, sizeof(line), fmt, ap);
	if (use_syslog) {
		syslog(syslog_prio[level], "%s", line);
	} else {
		struct timespec ts;
		struct tm tm;
		char stamp[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ldZ portproxy[%d] %s: %s\n", stamp, ts.tv_nsec / 1000000,
			(int)getpid(), level_names[level], line);
	}
	errno = saved;
}

/**
 * log_msg() - write one line at @level if the threshold lets it through
 *
 * Keeps errno, so callers may log between a failing call and its test.
 */
void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	if (!log_on(level))
		return;
	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/**
 * log_limited() - log at most once per @interval_s seconds for @rl
 *
 * The first line after a quiet spell says how many were held back.
 */
void log_limited(struct log_ratelimit *rl, int interval_s, enum log_level level, const char *fmt,
		 ...)
{
	long long now = now_ns();
	char line[448];
	va_list ap;

	if (!log_on(level))
		return;
	if (rl->last_ns && now - rl->last_ns < interval_s * 1000000000LL) {
		rl->suppressed++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (rl->suppressed)
		log_msg(level, "%s (%lu more like this held back)", line, rl->suppressed);
	else
		log_msg(level, "%s", line);
	rl->last_ns = now;
	rl->suppressed = 0;
}
