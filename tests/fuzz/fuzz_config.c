/* A config file from raw bytes: config_load refuses it with one message or
 * accepts a config that validates and writes back as YAML that loads to the
 * same sections. */
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("fuzz.yaml", data, size);
    config_t c, r;
    char err[4096];
    if (config_load(&c, path, NULL, 0, err, sizeof err) != 0) {
        if (!err[0] || strchr(err, '\n')) __builtin_trap();   /* one message, one line */
        return 0;
    }
    if (config_validate(&c, err, sizeof err) != 0) __builtin_trap();
    char out[512];
    snprintf(out, sizeof out, "%s/written.yaml", fuzz_folder());
    if (config_write_yaml(&c, out, err, sizeof err) == 0) {
        if (config_load(&r, out, NULL, 0, err, sizeof err) != 0) __builtin_trap();   /* what it writes, it reads */
        if (memcmp(&r.model, &c.model, sizeof c.model) || memcmp(&r.train, &c.train, sizeof c.train))
            __builtin_trap();
    }
    return 0;
}
