/* Small host utilities shared by every layer: fatal errors, checked allocation,
 * timing. Nothing here knows about models, plans or devices. */
#ifndef AUTOSP_UTIL_H
#define AUTOSP_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define ASP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ASP_NORETURN __attribute__((noreturn))
#else
#define ASP_PRINTF(a, b)
#define ASP_NORETURN
#endif

/* Exit codes: 1 runtime failure, 2 bad input (config, arguments, data), 75
 * stopped early by a signal at a step boundary with its checkpoint written:
 * the same command resumes (EX_TEMPFAIL of sysexits.h, "try again later"). */
enum { ASP_EXIT_FAILURE = 1, ASP_EXIT_USAGE = 2, ASP_EXIT_STOPPED = 75 };

/* Print "autosp-train: <message>" (prefixed by the rank when running with
 * several) to stderr and exit with `code`. Under MPI the whole job is aborted,
 * so no rank is left waiting in a collective. */
void asp_die(int code, const char *fmt, ...) ASP_PRINTF(2, 3) ASP_NORETURN;

/* Hook used by asp_die to abort all ranks; parallel/ installs it. */
extern void (*asp_abort_hook)(int code);
/* Rank prefix for messages; parallel/ sets it when world size > 1. */
extern int asp_msg_rank;

/* Informational line on stderr (rank 0 only unless `all_ranks`). */
void asp_info(const char *fmt, ...) ASP_PRINTF(1, 2);
void asp_warn(const char *fmt, ...) ASP_PRINTF(1, 2);

void *asp_malloc(size_t bytes, const char *what);   /* dies with `what` on failure */
void *asp_calloc(size_t n, size_t size, const char *what);

/* Monotonic wall clock in seconds. */
double asp_now(void);
/* seconds since asp_mark_start(), which main calls first thing */
void asp_mark_start(void);
double asp_since_start(void);

/* snprintf into a fixed buffer; returns -1 (and sets errbuf) on truncation. */
int asp_errf(char *err, size_t errlen, const char *fmt, ...) ASP_PRINTF(3, 4);

/* Write `path` so that a reader sees the old file or the new one, never half
 * of either: `fill` writes the content into a temporary file in the same
 * folder, which is flushed, fsynced, made readable (0644) and renamed over
 * `path`; then the folder is fsynced. `fill` returns 0, or -1 (with its own
 * message in err, or errno set). On failure nothing is left behind and -1
 * comes back with a message naming `path` and saying what to check. */
int asp_write_atomic(const char *path, int (*fill)(FILE *f, void *ctx, char *err, size_t errlen), void *ctx,
                     char *err, size_t errlen);

/* mkdir -p: create `path` and any missing parents (0777 before umask).
 * Returns 0 (also when it exists), or -1 with errno set (ENAMETOOLONG for
 * a path longer than PATH_MAX). */
int asp_mkdir_p(const char *path);

/* fsync a folder, so that renames and new entries in it are durable.
 * Returns 0, or -1 with errno set. */
int asp_fsync_dir(const char *dir);

/* Open a regular file read-only; anything else (a folder, FIFO, device,
 * socket) is refused without blocking, naming what it is. `what` and `hint`
 * as for asp_map_file. Returns the descriptor (O_CLOEXEC), or -1 with a
 * message. */
int asp_open_regular(const char *path, const char *what, const char *hint, char *err, size_t errlen);

/* Map a regular file read-only. `what` names it in messages ("token shard"),
 * `hint` ends them ("create it with ..."). An empty file maps to *map = NULL, *bytes = 0 (callers say
 * what an empty file means for them). Returns 0, or -1 with a message.
 * Release with munmap(*map, *bytes) when *map is not NULL. */
int asp_map_file(const char *path, const char *what, const char *hint, void **map, size_t *bytes, char *err,
                 size_t errlen);

/* ASP_* environment variables, parsed strictly: unset or empty gives `dflt`;
 * anything but a whole number (long) or a finite number (double) in
 * [lo, hi] ends the run with exit status 2, naming the variable, its value
 * and the range. A flag is 0 or 1. */
long asp_env_long(const char *name, long dflt, long lo, long hi);
double asp_env_double(const char *name, double dflt, double lo, double hi);
int asp_env_flag(const char *name);
/* The parsers behind them (no environment, no exit): 0 and *out, or -1 with
 * a message naming `name`. */
int asp_parse_env_long(const char *name, const char *text, long lo, long hi, long *out, char *err, size_t errlen);
int asp_parse_env_double(const char *name, const char *text, double lo, double hi, double *out, char *err,
                         size_t errlen);

/* Human-readable byte count ("12.3 GiB") into buf. */
const char *asp_fmt_bytes(char *buf, size_t len, double bytes);

/* The largest memory figure (GiB) a config key or flag accepts: 1 PiB. A
 * larger one is a typo, and its byte count may overflow to infinity. */
#define ASP_MEMORY_GIB_MAX 1048576.0

static inline size_t asp_align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
static inline int64_t asp_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif
