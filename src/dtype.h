/* Element types that cross layer boundaries (backend buffers, collectives). */
#ifndef AUTOSP_DTYPE_H
#define AUTOSP_DTYPE_H

#include <stddef.h>

typedef enum { DT_F32 = 0, DT_BF16, DT_F64, DT_I32, DT_U8 } dtype_t;

static inline size_t dtype_size(dtype_t t) {
    switch (t) {
    case DT_F32: return 4;
    case DT_BF16: return 2;
    case DT_F64: return 8;
    case DT_I32: return 4;
    case DT_U8: return 1;
    }
    return 0;
}

static inline const char *dtype_name(dtype_t t) {
    switch (t) {
    case DT_F32: return "fp32";
    case DT_BF16: return "bf16";
    case DT_F64: return "fp64";
    case DT_I32: return "int32";
    case DT_U8: return "uint8";
    }
    return "?";
}

#endif
