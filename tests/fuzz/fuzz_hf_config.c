/* A Hugging Face config.json from raw bytes: hf_read_config refuses it with
 * a message naming the file, or fills a model config that validates. */
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "fuzz_common.h"
#include "io/hf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write("config.json", data, size);
    config_t c;
    config_defaults(&c);
    char err[4096];
    if (hf_read_config(fuzz_folder(), &c.model, err, sizeof err) != 0) {
        if (!strstr(err, "config.json")) __builtin_trap();
        return 0;
    }
    return 0;
}
