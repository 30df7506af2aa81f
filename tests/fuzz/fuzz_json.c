/* The strict JSON reader on raw bytes: refused or accepted, never a crash,
 * leak or undefined behaviour; an accepted document is walked whole. */
#include <stddef.h>
#include <stdint.h>

#include "io/json.h"

static size_t walk(json_doc_t *j, const yaml_node_t *n, int depth) {
    size_t count = 1;
    if (depth > JSON_MAX_DEPTH + 1) __builtin_trap();   /* the limit held */
    for (size_t i = 0; i < json_size(n); i++) {
        yaml_node_t *v = NULL;
        if (json_is_object(n)) {
            if (!json_member(j, n, i, &v)) __builtin_trap();   /* keys are strings */
        } else {
            v = json_at(j, n, i);
        }
        if (!v) __builtin_trap();
        count += walk(j, v, depth + 1);
    }
    int64_t x;
    uint64_t u;
    double d;
    int b;
    (void)json_int(n, &x), (void)json_uint(n, &u), (void)json_number(n, &d), (void)json_bool(n, &b);
    (void)json_kind(n);
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    for (int flags = 0; flags < 2; flags++) {
        json_doc_t j;
        if (json_parse_flags(&j, (const char *)data, size, "fuzz", flags, err, sizeof err) == 0) {
            walk(&j, j.root, 0);
            json_free(&j);
        }
    }
    return 0;
}
