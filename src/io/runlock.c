/* One run per run folder (docs/checkpoints.md, "The run folder"): the lead
 * rank holds RUN_DIR/lock for the whole run, an fcntl write lock on a file
 * that names the holder ("pid PID\nhost HOST\n"). The kernel (and NFSv4's
 * lock manager) drops the lock when the holder dies, however it dies; the
 * text names a live holder to the user, and lets a launch on the same host
 * tell a live holder from a dead one where the file system does not share
 * locks. At a clean exit the text is emptied: an empty file is a free lock. */
#include "io/runlock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static int held_fd = -1;

int runlock_parse(const char *text, long *pid, char *host, size_t hostlen) {
    *pid = 0;
    host[0] = 0;
    long p;
    char h[256];
    if (sscanf(text, "pid %ld\nhost %255s", &p, h) != 2 || p <= 0) return -1;
    *pid = p;
    snprintf(host, hostlen, "%s", h);
    return 0;
}

static void this_host(char *buf, size_t len) {
    if (gethostname(buf, len) != 0 || !buf[0]) snprintf(buf, len, "unknown-host");
    buf[len - 1] = 0;
    for (char *p = buf; *p; p++)   /* one word: the text is parsed back */
        if (*p == ' ' || *p == '\n') *p = '_';
}

static void release(void) {
    if (held_fd < 0) return;
    /* emptied, not removed: a launch that opened the file before a removal
     * would lock an orphan while the next one creates a new file */
    if (ftruncate(held_fd, 0) != 0) {}
    close(held_fd);
    held_fd = -1;
}

/* The holder the file names: 1 when it is a live process of this host other
 * than us (or on another host, which cannot be checked), 0 when dead or none. */
static int named_holder_alive(const char *text, const char *me, long *pid, char *host, size_t hostlen) {
    if (runlock_parse(text, pid, host, hostlen) != 0) return 0;
    if (strcmp(host, me) != 0) return -1;   /* unknown: another host */
    if (*pid == (long)getpid()) return 0;
    return kill((pid_t)*pid, 0) == 0 || errno == EPERM;
}

int runlock_acquire(const char *run_dir, char *err, size_t errlen) {
    if (held_fd >= 0) return 0;
    char path[4200], text[512] = "", me[256], host[256];
    if ((size_t)snprintf(path, sizeof path, "%s/lock", run_dir) >= sizeof path)
        return asp_errf(err, errlen, "%s: path too long; use a shorter io.run_dir", run_dir);
    this_host(me, sizeof me);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return asp_errf(err, errlen, "cannot open the run folder's lock %s: %s; check that io.run_dir is writable",
                        path, strerror(errno));
    ssize_t got = pread(fd, text, sizeof text - 1, 0);
    text[got > 0 ? got : 0] = 0;
    long pid;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        if (e != EACCES && e != EAGAIN)
            return asp_errf(err, errlen, "cannot lock %s: %s; the file system of io.run_dir may not support locks",
                            path, strerror(e));
        runlock_parse(text, &pid, host, sizeof host);
        return asp_errf(err, errlen, "%s is in use by another run (process %ld on %s, per %s); wait for it to end, "
                        "stop it, or give this run another io.run_dir", run_dir, pid, host[0] ? host : "?", path);
    }
    int alive = named_holder_alive(text, me, &pid, host, sizeof host);
    if (alive > 0) {   /* the lock was free, but its holder lives: locks are not shared here */
        close(fd);
        return asp_errf(err, errlen, "%s is in use by another run (process %ld on this host, per %s); wait for it "
                        "to end, stop it, or give this run another io.run_dir", run_dir, pid, path);
    }
    if (alive < 0 || (pid > 0 && alive == 0))
        asp_warn("%s was left by process %ld on %s, which %s; taking it over", path, pid, host,
                 alive < 0 ? "holds no lock on it (ended, or its file system does not share locks across hosts)"
                           : "no longer runs");
    int n = snprintf(text, sizeof text, "pid %ld\nhost %s\n", (long)getpid(), me);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return asp_errf(err, errlen, "cannot write %s: %s; check free space in io.run_dir", path, strerror(e));
    }
    held_fd = fd;
    atexit(release);
    return 0;
}

