/* JSON through libyaml's document API (see json.h). */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static int parser_message(const yaml_parser_t *ps, const char *what, char *err, size_t errlen) {
    const char *problem = ps->problem ? ps->problem : "unknown problem";
    if (ps->context)
        return asp_errf(err, errlen, "%s: malformed JSON: %s %s (line %zu, column %zu); the file is damaged "
                        "or not JSON", what, problem, ps->context, ps->problem_mark.line + 1,
                        ps->problem_mark.column + 1);
    return asp_errf(err, errlen, "%s: malformed JSON: %s (line %zu, column %zu); the file is damaged or not JSON",
                    what, problem, ps->problem_mark.line + 1, ps->problem_mark.column + 1);
}

int json_parse(json_doc_t *j, const char *text, size_t len, const char *what, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) i++;
    /* JSON values at the top are objects or arrays here; anything else (YAML
     * block syntax, a bare scalar, a NUL) is not what these files hold. */
    if (i == len)
        return asp_errf(err, errlen, "%s: empty where a JSON object was expected; the file is damaged", what);
    if (text[i] != '{' && text[i] != '[')
        return asp_errf(err, errlen, "%s: expected a JSON object starting with '{', found byte 0x%02x at offset %zu; "
                        "the file is damaged or not JSON", what, (unsigned char)text[i], i);
    if (memchr(text, 0, len))
        return asp_errf(err, errlen, "%s: contains a NUL byte; JSON text cannot, the file is damaged", what);
    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps))
        return asp_errf(err, errlen, "%s: cannot initialise the JSON parser (out of memory)", what);
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
    yaml_parser_set_encoding(&ps, YAML_UTF8_ENCODING);
    int rc = -1;
    if (!yaml_parser_load(&ps, &j->doc)) {
        parser_message(&ps, what, err, errlen);
        goto out;
    }
    j->loaded = 1;
    j->root = yaml_document_get_root_node(&j->doc);
    if (!j->root) {
        asp_errf(err, errlen, "%s: empty where a JSON object was expected; the file is damaged", what);
        goto out;
    }
    yaml_document_t extra;
    if (!yaml_parser_load(&ps, &extra)) {
        parser_message(&ps, what, err, errlen);
        goto out;
    }
    int more = yaml_document_get_root_node(&extra) != NULL;
    yaml_document_delete(&extra);
    if (more) {
        asp_errf(err, errlen, "%s: text after the JSON value; the file is damaged", what);
        goto out;
    }
    rc = 0;
out:
    yaml_parser_delete(&ps);
    if (rc) json_free(j);
    return rc;
}

int json_parse_file(json_doc_t *j, const char *path, size_t max_bytes, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    FILE *f = fopen(path, "rb");
    if (!f) return asp_errf(err, errlen, "%s: cannot open: %s; check the path", path, strerror(errno));
    char *buf = malloc(max_bytes + 1);
    if (!buf) {
        fclose(f);
        return asp_errf(err, errlen, "%s: out of memory reading it", path);
    }
    size_t n = fread(buf, 1, max_bytes + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) rc = asp_errf(err, errlen, "%s: read error; check the file", path);
    else if (n > max_bytes)
        rc = asp_errf(err, errlen, "%s: larger than %zu bytes, too large for a JSON metadata file; is it the right "
                      "file?", path, max_bytes);
    else rc = json_parse(j, buf, n, path, err, errlen);
    free(buf);
    return rc;
}

void json_free(json_doc_t *j) {
    if (j->loaded) yaml_document_delete(&j->doc);
    j->loaded = 0;
    j->root = NULL;
}

int json_is_string(const yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE &&
           (n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE ||
            n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE);
}

static int is_plain(const yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE && !json_is_string(n);
}

int json_is_null(const yaml_node_t *n) { return is_plain(n) && !strcmp(json_text(n), "null"); }

const char *json_text(const yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : "";
}

const char *json_kind(const yaml_node_t *n) {
    if (!n) return "nothing";
    if (n->type == YAML_MAPPING_NODE) return "an object";
    if (n->type == YAML_SEQUENCE_NODE) return "an array";
    if (json_is_string(n)) return "a string";
    const char *t = json_text(n);
    if (!strcmp(t, "null")) return "null";
    if (!strcmp(t, "true") || !strcmp(t, "false")) return "a boolean";
    return "a number";
}

yaml_node_t *json_get(json_doc_t *j, const yaml_node_t *obj, const char *key) {
    if (!json_is_object(obj)) return NULL;
    for (yaml_node_pair_t *p = obj->data.mapping.pairs.start; p < obj->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(&j->doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp(json_text(k), key))
            return yaml_document_get_node(&j->doc, p->value);
    }
    return NULL;
}

size_t json_size(const yaml_node_t *n) {
    if (json_is_object(n)) return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (json_is_array(n)) return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    return 0;
}

yaml_node_t *json_at(json_doc_t *j, const yaml_node_t *arr, size_t i) {
    if (!json_is_array(arr) || i >= json_size(arr)) return NULL;
    return yaml_document_get_node(&j->doc, arr->data.sequence.items.start[i]);
}

const char *json_member(json_doc_t *j, const yaml_node_t *obj, size_t i, yaml_node_t **value) {
    *value = NULL;
    if (!json_is_object(obj) || i >= json_size(obj)) return NULL;
    yaml_node_pair_t *p = obj->data.mapping.pairs.start + i;
    yaml_node_t *k = yaml_document_get_node(&j->doc, p->key);
    *value = yaml_document_get_node(&j->doc, p->value);
    if (!k || k->type != YAML_SCALAR_NODE) return NULL;   /* a non-scalar key: not JSON */
    return json_text(k);
}

/* Digits with an optional leading minus: the JSON integer form. */
static int int_text(const char *s, int allow_minus) {
    if (allow_minus && *s == '-') s++;
    if (!*s) return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return 0;
    return 1;
}

int json_int(const yaml_node_t *n, int64_t *out) {
    if (!is_plain(n) || !int_text(json_text(n), 1)) return -1;
    errno = 0;
    long long v = strtoll(json_text(n), NULL, 10);
    if (errno == ERANGE) return -1;
    *out = (int64_t)v;
    return 0;
}

int json_uint(const yaml_node_t *n, uint64_t *out) {
    if (!is_plain(n) || !int_text(json_text(n), 0)) return -1;
    errno = 0;
    unsigned long long v = strtoull(json_text(n), NULL, 10);
    if (errno == ERANGE) return -1;
    *out = (uint64_t)v;
    return 0;
}

int json_number(const yaml_node_t *n, double *out) {
    if (!is_plain(n)) return -1;
    const char *s = json_text(n);
    int digits = 0;
    for (const char *q = s; *q; q++) {
        if (*q >= '0' && *q <= '9') digits++;
        else if (!strchr("+-.eE", *q)) return -1;   /* no nan, inf or hex floats */
    }
    if (!digits) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || !isfinite(v) || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

int json_bool(const yaml_node_t *n, int *out) {
    if (!is_plain(n)) return -1;
    if (!strcmp(json_text(n), "true")) { *out = 1; return 0; }
    if (!strcmp(json_text(n), "false")) { *out = 0; return 0; }
    return -1;
}
