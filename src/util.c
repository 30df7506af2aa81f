#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void (*asp_abort_hook)(int code) = NULL;
int asp_msg_rank = -1;

static void vmsg(const char *kind, const char *fmt, va_list ap) {
    char line[4096];
    vsnprintf(line, sizeof line, fmt, ap);
    if (asp_msg_rank >= 0)
        fprintf(stderr, "autosp-train[rank %d]: %s%s\n", asp_msg_rank, kind, line);
    else
        fprintf(stderr, "autosp-train: %s%s\n", kind, line);
    fflush(stderr);
}

void asp_die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmsg("error: ", fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (asp_abort_hook) asp_abort_hook(code);
    exit(code);
}

void asp_info(const char *fmt, ...) {
    if (asp_msg_rank > 0) return;
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
}

void asp_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmsg("warning: ", fmt, ap);
    va_end(ap);
}

void *asp_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) asp_die(ASP_EXIT_FAILURE, "out of host memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *asp_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) asp_die(ASP_EXIT_FAILURE, "out of host memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

double asp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double g_start;
void asp_mark_start(void) { g_start = asp_now(); }
double asp_since_start(void) { return g_start > 0 ? asp_now() - g_start : 0; }

int asp_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const char *asp_fmt_bytes(char *buf, size_t len, double bytes) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) { bytes /= 1024.0; u++; }
    if (u == 0) snprintf(buf, len, "%.0f %s", bytes, unit[u]);
    else snprintf(buf, len, "%.2f %s", bytes, unit[u]);
    return buf;
}

int asp_write_atomic(const char *path, int (*fill)(FILE *f, void *ctx, char *err, size_t errlen), void *ctx,
                     char *err, size_t errlen) {
    size_t plen = strlen(path);
    char *tmp = asp_malloc(plen + 16, "temporary path");
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return asp_errf(err, errlen, "%s: cannot create a temporary file next to it: %s; check that the folder "
                        "exists and is writable", path, strerror(e));
    }
    FILE *f = fchmod(fd, 0644) == 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(tmp);
        return asp_errf(err, errlen, "%s: cannot write: %s", path, strerror(e));
    }
    if (err && errlen) err[0] = 0;
    errno = 0;
    int e = 0, filled = fill(f, ctx, err, errlen);
    if (filled != 0 || ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0) e = errno ? errno : EIO;
    if (fclose(f) != 0 && !e) e = errno ? errno : EIO;
    if (!e && rename(tmp, path) != 0) e = errno;
    if (e) {
        unlink(tmp);
        free(tmp);
        if (filled != 0 && err && errlen && err[0]) return -1; /* fill said why */
        return asp_errf(err, errlen, "%s: cannot write: %s; nothing was written (check free space and "
                        "permissions)", path, strerror(e));
    }
    free(tmp);
    /* the rename is durable only once the folder is synced */
    char *dir = asp_malloc(plen + 2, "folder path");
    memcpy(dir, path, plen + 1);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    asp_fsync_dir(dir);
    free(dir);
    return 0;
}

int asp_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int asp_mkdir_p(const char *path) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *q = buf + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
        *q = '/';
    }
    return mkdir(buf, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

int asp_open_regular(const char *path, const char *what, const char *hint, char *err, size_t errlen) {
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer, and a
     * device may block too; fstat then says what the file is. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return asp_errf(err, errlen, "%s: cannot open %s: %s; %s", path, what, strerror(errno), hint);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return asp_errf(err, errlen, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        const char *kind = S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
                         : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : S_ISSOCK(st.st_mode) ? "a socket"
                         : "not a regular file";
        return asp_errf(err, errlen, "%s: is %s, not a regular file (%s expected); %s", path, kind, what, hint);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return asp_errf(err, errlen, "%s: cannot read %s: %s", path, what, strerror(e));
    }
    return fd;
}

int asp_map_file(const char *path, const char *what, const char *hint, void **map, size_t *bytes, char *err,
                 size_t errlen) {
    *map = NULL;
    *bytes = 0;
    int fd = asp_open_regular(path, what, hint, err, errlen);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return asp_errf(err, errlen, "%s: cannot stat: %s", path, strerror(e));
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        return 0;
    }
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED) return asp_errf(err, errlen, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
    *map = m;
    *bytes = size;
    return 0;
}

/* ------------------------------------------------------------------ ASP_* variables */

int asp_parse_env_long(const char *name, const char *text, long lo, long hi, long *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    /* strtol skips leading blanks and takes "+5": digits only, an optional '-' */
    int digits = (text[0] >= '0' && text[0] <= '9') || (text[0] == '-' && text[1] >= '0' && text[1] <= '9');
    if (!digits || errno || *end || v < lo || v > hi)
        return asp_errf(err, errlen, "environment variable %s='%s' is not a whole number from %ld to %ld; fix or "
                        "unset it", name, text, lo, hi);
    *out = v;
    return 0;
}

int asp_parse_env_double(const char *name, const char *text, double lo, double hi, double *out, char *err,
                         size_t errlen) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    /* strtod also reads "inf", "nan", hex and leading blanks: plain decimals only */
    int plain = text[0] && strspn(text, "0123456789.-+eE") == strlen(text);
    if (!plain || end == text || *end || errno == ERANGE || !isfinite(v) || v < lo || v > hi)
        return asp_errf(err, errlen, "environment variable %s='%s' is not a number from %g to %g; fix or unset it",
                        name, text, lo, hi);
    *out = v;
    return 0;
}

long asp_env_long(const char *name, long dflt, long lo, long hi) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char err[512];
    long v;
    if (asp_parse_env_long(name, s, lo, hi, &v, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
    return v;
}

double asp_env_double(const char *name, double dflt, double lo, double hi) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char err[512];
    double v;
    if (asp_parse_env_double(name, s, lo, hi, &v, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
    return v;
}

int asp_env_flag(const char *name) { return (int)asp_env_long(name, 0, 0, 1); }
