/* JSON documents (safetensors headers, Hugging Face config.json and index
 * files): a strict RFC 8259 reader (UTF-8, no comments, single quotes,
 * anchors, tags, trailing commas or escapes beyond JSON's) that builds a
 * libyaml document, and helpers that read JSON types from it (a quoted
 * scalar is a string, a plain one a number, true, false or null).
 * Nesting is limited to JSON_MAX_DEPTH and the value count to JSON_MAX_NODES,
 * both enforced while reading. */
#ifndef AUTOSP_JSON_H
#define AUTOSP_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

typedef struct {
    yaml_document_t doc;
    yaml_node_t *root;
    int loaded;
} json_doc_t;

#define JSON_MAX_DEPTH 64
#define JSON_MAX_NODES (1 << 22)
/* A key given twice in one object keeps its last value (as Python's json and
 * transformers do) instead of being refused. */
#define JSON_LAST_KEY_WINS 1

/* Parse `len` bytes (need not be NUL-terminated). `what` names the source in
 * messages ("model.safetensors: header"). The text must be one JSON object or
 * array (white space around it allowed). A key given twice in an object is
 * refused. Returns 0, or -1 with a message that says where the text is wrong. */
int json_parse(json_doc_t *j, const char *text, size_t len, const char *what, char *err, size_t errlen);
int json_parse_flags(json_doc_t *j, const char *text, size_t len, const char *what, int flags, char *err,
                     size_t errlen);
/* Read a whole regular file (at most max_bytes) and parse it. */
int json_parse_file(json_doc_t *j, const char *path, size_t max_bytes, int flags, char *err, size_t errlen);
void json_free(json_doc_t *j);

static inline int json_is_object(const yaml_node_t *n) { return n && n->type == YAML_MAPPING_NODE; }
static inline int json_is_array(const yaml_node_t *n) { return n && n->type == YAML_SEQUENCE_NODE; }
/* A quoted scalar: a JSON string. */
int json_is_string(const yaml_node_t *n);
/* A plain scalar equal to null. */
int json_is_null(const yaml_node_t *n);
/* Text of a scalar ("" for others). */
const char *json_text(const yaml_node_t *n);
/* What a node is, for messages: "an object", "an array", "a string", "a number", ... */
const char *json_kind(const yaml_node_t *n);

/* Value of `key` in object `obj`, NULL if absent (or obj not an object). */
yaml_node_t *json_get(json_doc_t *j, const yaml_node_t *obj, const char *key);
/* Number of members (object) or elements (array). */
size_t json_size(const yaml_node_t *n);
yaml_node_t *json_at(json_doc_t *j, const yaml_node_t *arr, size_t i);
/* i-th member of an object: its key text and value node. */
const char *json_member(json_doc_t *j, const yaml_node_t *obj, size_t i, yaml_node_t **value);

/* Typed reads: 0 ok, -1 wrong type or out of range. */
int json_int(const yaml_node_t *n, int64_t *out);       /* plain integer without fraction or exponent */
int json_uint(const yaml_node_t *n, uint64_t *out);     /* non-negative integer up to 2^64-1 */
int json_number(const yaml_node_t *n, double *out);     /* any finite JSON number */
int json_bool(const yaml_node_t *n, int *out);          /* true | false */

#endif
