/* SPDX-License-Identifier: MIT */
#ifndef PORTPROXY_LOG_H
#define PORTPROXY_LOG_H

#include <stdbool.h>

/* Levels in increasing verbosity; the names are what -log-level takes. */
enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG, LOG_LVL_TRACE };

/* Where lines go: stderr, syslog, or syslog only when stderr is /dev/null. */
enum log_target { LOG_TO_AUTO, LOG_TO_STDERR, LOG_TO_SYSLOG };

extern enum log_level log_threshold;

int log_level_parse(const char *name, enum log_level *out);
int log_target_parse(const char *name, enum log_target *out);
void log_init(enum log_level level, enum log_target target);
bool log_uses_syslog(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A warning that repeats under load (EMFILE, drops): at most one line per
 * @interval_s seconds per call site, with the count of what was held back. */
struct log_ratelimit {
	long long last_ns;
	unsigned long suppressed;
};
void log_limited(struct log_ratelimit *rl, int interval_s, enum log_level level, const char *fmt,
		 ...) __attribute__((format(printf, 4, 5)));

/* The level check is inline so that disabled debug/trace lines cost one compare. */
#define log_on(lvl)    ((lvl) <= log_threshold)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)                                       \
	do {                                                \
		if (log_on(LOG_LVL_INFO))                   \
			log_msg(LOG_LVL_INFO, __VA_ARGS__); \
	} while (0)
#define log_debug(...)                                       \
	do {                                                 \
		if (log_on(LOG_LVL_DEBUG))                   \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__); \
	} while (0)
#define log_trace(...)                                       \
	do {                                                 \
		if (log_on(LOG_LVL_TRACE))                   \
			log_msg(LOG_LVL_TRACE, __VA_ARGS__); \
	} while (0)

#endif
