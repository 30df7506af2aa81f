/* The table of config keys, shared by config_keys.c (the table itself, the
 * sections and the defaults) and config.c (parsing, --set, validation,
 * --help and the YAML writer, which all walk it). Private to those two. */
#ifndef AUTOSP_CONFIG_KEYS_H
#define AUTOSP_CONFIG_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef enum {
    KT_INT,        /* int64_t or int (size says which), bounds ilo..ihi */
    KT_SEED,       /* uint64_t, any non-negative integer */
    KT_FLOAT,      /* double, bounds flo..fhi (open ends by flag) */
    KT_BOOL,       /* int 0/1, true|false */
    KT_STR,        /* char[size]; ilo = 1 means it must not be empty */
    KT_ARCH,       /* char[size]; a supported model family */
    KT_SAC,        /* sac_policy_t */
    KT_DEVICE,     /* device_kind_t */
    KT_SP,         /* int64_t; positive integer or auto (stored as 0) */
    KT_AUTO,       /* int; integer in ilo..ihi or auto (stored as -1) */
    KT_TRI,        /* int; true (1), false (0) or auto (-1) */
    KT_ROPE,       /* rope_scaling_t: a mapping, or null for plain RoPE */
    KT_ROPE_TYPE,  /* rope_scaling.rope_type: llama3 (no field: it enables scaling) */
} key_type_t;

typedef struct {
    const char *section;
    const char *name;          /* rope_scaling sub-keys are "rope_scaling.<sub>" */
    key_type_t type;
    size_t off, size;
    int64_t ilo, ihi;
    double flo, fhi;
    int flo_open, fhi_open;
    int even;                  /* integer must be even (head_dim: RoPE rotates pairs) */
    const char *expect;        /* NULL: derived from type and bounds */
    const char *default_text;  /* NULL: printed from config_defaults() */
    const char *help;
} cfg_key_t;
typedef struct {
    const char *name, *help;
} cfg_section_t;

extern const cfg_key_t cfg_keys[];
extern const int cfg_nkeys;
extern const cfg_section_t cfg_sections[];
extern const int cfg_nsections;

#define CFG_N_ARCH 1
#define CFG_N_SAC 3
#define CFG_N_DEVICE 3
extern const char *const cfg_arch_names[CFG_N_ARCH];
extern const char *const cfg_sac_names[CFG_N_SAC];
extern const char *const cfg_device_names[CFG_N_DEVICE];
/* Llama 3.1 values, used when rope_scaling is switched on without all its keys. */
extern const rope_scaling_t cfg_rope_llama3_defaults;

#endif
