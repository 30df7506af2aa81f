/* The run folder's lock: one run per io.run_dir (docs/checkpoints.md). */
#ifndef AUTOSP_RUNLOCK_H
#define AUTOSP_RUNLOCK_H

#include <stddef.h>

/* Take RUN_DIR/lock for this process until it exits.
 * A lock held by a live run is refused with its process and host; one left
 * by a dead process is taken over with a warning. The folder must exist.
 * Returns 0, or -1 with a message. */
int runlock_acquire(const char *run_dir, char *err, size_t errlen);

/* The holder a lock file's text names ("pid PID\nhost HOST\n"): 0, or -1
 * when the text names none (free, or not a lock). */
int runlock_parse(const char *text, long *pid, char *host, size_t hostlen);

#endif
