/* JSON through libyaml's document API (see json.h). */
#include "io/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* A strict RFC 8259 reader that builds the libyaml document the accessors
 * below walk: every JSON input here is untrusted (downloaded weights, files
 * of other tools), and YAML is a superset that takes comments, single quotes,
 * anchors, tags and more. Nesting deeper than JSON_MAX_DEPTH is refused as it
 * is met, so no input costs more than one pass over its bytes. */
typedef struct {
    const unsigned char *s;
    size_t n, i;
    json_doc_t *j;
    int flags;
    size_t nodes;
    const char *what;
    char *err;
    size_t errlen;
    char *buf;          /* decoded string */
    size_t buf_len, buf_cap;
} jp_t;

static int jp_fail(jp_t *p, size_t at, const char *fmt, ...) ASP_PRINTF(3, 4);
static int jp_fail(jp_t *p, size_t at, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line = 1, col = 1;
    for (size_t k = 0; k < at && k < p->n; k++) {
        if (p->s[k] == '\n') line++, col = 1;
        else col++;
    }
    asp_errf(p->err, p->errlen, "%s: malformed JSON: %s (line %zu, column %zu); the file is damaged or not JSON",
             p->what, msg, line, col);
    return 0;
}

static void jp_ws(jp_t *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int jp_put(jp_t *p, const void *b, size_t k) {
    if (p->buf_len + k + 1 > p->buf_cap) {
        size_t cap = p->buf_cap ? p->buf_cap : 64;
        while (cap < p->buf_len + k + 1) cap *= 2;
        char *g = realloc(p->buf, cap);
        if (!g) return -1;
        p->buf = g;
        p->buf_cap = cap;
    }
    memcpy(p->buf + p->buf_len, b, k);
    p->buf_len += k;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no
 * overlong forms, no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t k = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!k || k > n) return 0;
    for (size_t q = 1; q < k; q++)
        if ((s[q] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;   /* overlong */
    if (c == 0xED && s[1] > 0x9F) return 0;   /* surrogate */
    if (c == 0xF0 && s[1] < 0x90) return 0;   /* overlong */
    if (c == 0xF4 && s[1] > 0x8F) return 0;   /* above U+10FFFF */
    return k;
}

static int hex4(const unsigned char *s, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                               : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16u;
        if (d > 15) return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* A string at p->i (the opening quote), decoded into p->buf. 1 ok, 0 error. */
static int jp_string(jp_t *p) {
    size_t open = p->i++;
    p->buf_len = 0;
    for (;;) {
        if (p->i >= p->n) return jp_fail(p, open, "string not closed");
        unsigned c = p->s[p->i];
        if (c == '"') { p->i++; break; }
        if (c < 0x20) return jp_fail(p, p->i, "control character 0x%02x inside a string (write it as \\u%04x)", c, c);
        if (c != '\\') {
            size_t k = utf8_len(p->s + p->i, p->n - p->i);
            if (!k) return jp_fail(p, p->i, "invalid UTF-8 byte 0x%02x in a string", c);
            if (jp_put(p, p->s + p->i, k)) return jp_fail(p, p->i, "out of memory");
            p->i += k;
            continue;
        }
        if (p->i + 1 >= p->n) return jp_fail(p, open, "string not closed");
        unsigned e = p->s[p->i + 1];
        const char *simple = strchr("\"\\/bfnrt", (int)e);
        if (e && simple) {
            static const char out[] = "\"\\/\b\f\n\r\t";
            if (jp_put(p, &out[simple - "\"\\/bfnrt"], 1)) return jp_fail(p, p->i, "out of memory");
            p->i += 2;
            continue;
        }
        if (e != 'u') return jp_fail(p, p->i, "escape '\\%c' is not JSON (JSON has \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                                     e >= 0x20 && e < 0x7f ? (int)e : '?');
        unsigned u, lo;
        if (p->i + 6 > p->n || hex4(p->s + p->i + 2, &u)) return jp_fail(p, p->i, "\\u needs four hex digits");
        size_t at = p->i;
        p->i += 6;
        if (u >= 0xDC00 && u <= 0xDFFF) return jp_fail(p, at, "lone low surrogate \\u%04x", u);
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (p->i + 6 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' || hex4(p->s + p->i + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return jp_fail(p, at, "high surrogate \\u%04x without its low half", u);
            p->i += 6;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (u == 0) return jp_fail(p, at, "\\u0000 (a NUL character) in a string; names and values here cannot hold it");
        unsigned char b[4];
        size_t k;
        if (u < 0x80) b[0] = (unsigned char)u, k = 1;
        else if (u < 0x800) b[0] = (unsigned char)(0xC0 | u >> 6), b[1] = (unsigned char)(0x80 | (u & 0x3F)), k = 2;
        else if (u < 0x10000)
            b[0] = (unsigned char)(0xE0 | u >> 12), b[1] = (unsigned char)(0x80 | ((u >> 6) & 0x3F)),
            b[2] = (unsigned char)(0x80 | (u & 0x3F)), k = 3;
        else
            b[0] = (unsigned char)(0xF0 | u >> 18), b[1] = (unsigned char)(0x80 | ((u >> 12) & 0x3F)),
            b[2] = (unsigned char)(0x80 | ((u >> 6) & 0x3F)), b[3] = (unsigned char)(0x80 | (u & 0x3F)), k = 4;
        if (jp_put(p, b, k)) return jp_fail(p, at, "out of memory");
    }
    if (jp_put(p, "", 1)) return jp_fail(p, open, "out of memory");
    p->buf_len--;
    return 1;
}

static int jp_node(jp_t *p, size_t at, int id) {
    if (!id) return jp_fail(p, at, "out of memory");
    if (++p->nodes > JSON_MAX_NODES)
        return jp_fail(p, at, "more than %d values, too many for a metadata file", JSON_MAX_NODES);
    return id;
}

static int jp_scalar(jp_t *p, size_t at, const char *text, size_t len, yaml_scalar_style_t style) {
    return jp_node(p, at, yaml_document_add_scalar(&p->j->doc, NULL, (yaml_char_t *)text, (int)len, style));
}

/* A number, true, false or null at p->i: a plain scalar. */
static int jp_plain(jp_t *p) {
    size_t b = p->i;
    const unsigned char *s = p->s;
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t k = strlen(words[w]);
        if (p->n - b >= k && !memcmp(s + b, words[w], k)) {
            p->i += k;
            return jp_scalar(p, b, words[w], k, YAML_PLAIN_SCALAR_STYLE);
        }
    }
    size_t i = b;
    if (i < p->n && s[i] == '-') i++;
    if (i < p->n && s[i] == '0') i++;
    else if (i < p->n && s[i] >= '1' && s[i] <= '9') while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    else if (i < p->n && (s[i] == '\'' || s[i] == '#' || s[i] == '&' || s[i] == '*' || s[i] == '!'))
        return jp_fail(p, i, "'%c' is not JSON (no single quotes, comments, anchors, aliases or tags)", s[i]);
    else return jp_fail(p, i, "expected a value (object, array, string, number, true, false or null)");
    if (i < p->n && s[i] == '.') {
        size_t d = ++i;
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return jp_fail(p, i, "a digit must follow the decimal point");
    }
    if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
        size_t d = i;
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return jp_fail(p, i, "an exponent needs digits");
    }
    if (i < p->n && ((s[i] >= '0' && s[i] <= '9') || s[i] == 'x' || s[i] == 'X'))
        return jp_fail(p, b, "number with a leading zero or in hex; JSON numbers are decimal");
    p->i = i;
    return jp_scalar(p, b, (const char *)s + b, i - b, YAML_PLAIN_SCALAR_STYLE);
}

typedef struct {
    int key, value;
    const char *name;   /* the key's text, in the document */
    size_t at;
} jp_pair_t;

static int cmp_pair(const void *a, const void *b) {
    const jp_pair_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->key < y->key ? -1 : 1;
}

static int jp_value(jp_t *p, int depth);

static int jp_object(jp_t *p, int depth) {
    size_t open = p->i++;
    int id = jp_node(p, open, yaml_document_add_mapping(&p->j->doc, NULL, YAML_FLOW_MAPPING_STYLE));
    if (!id) return 0;
    jp_pair_t *pairs = NULL;
    size_t np = 0, cap = 0;
    int ok = 0;
    jp_ws(p);
    if (p->i < p->n && p->s[p->i] == '}') {
        p->i++;
        return id;
    }
    for (;;) {
        jp_ws(p);
        if (p->i >= p->n) { jp_fail(p, open, "object not closed"); goto out; }
        if (p->s[p->i] != '"') {
            jp_fail(p, p->i, p->s[p->i] == '}' ? "trailing comma before '}'" : "expected a key in double quotes");
            goto out;
        }
        size_t at = p->i;
        if (!jp_string(p)) goto out;
        int key = jp_scalar(p, at, p->buf, p->buf_len, YAML_DOUBLE_QUOTED_SCALAR_STYLE);
        if (!key) goto out;
        jp_ws(p);
        if (p->i >= p->n || p->s[p->i] != ':') { jp_fail(p, p->i, "expected ':' after a key"); goto out; }
        p->i++;
        int value = jp_value(p, depth + 1);
        if (!value) goto out;
        if (np == cap) {
            cap = cap ? 2 * cap : 8;
            jp_pair_t *g = realloc(pairs, cap * sizeof *g);
            if (!g) { jp_fail(p, at, "out of memory"); goto out; }
            pairs = g;
        }
        pairs[np++] = (jp_pair_t){key, value, NULL, at};
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
        if (p->i < p->n && p->s[p->i] == '}') { p->i++; break; }
        jp_fail(p, p->i, p->i < p->n ? "expected ',' or '}' in an object" : "object not closed");
        goto out;
    }
    /* duplicate keys: refused, or the last one kept (JSON_LAST_KEY_WINS) */
    for (size_t k = 0; k < np; k++) pairs[k].name = json_text(yaml_document_get_node(&p->j->doc, pairs[k].key));
    jp_pair_t *sorted = malloc(np * sizeof *sorted);
    if (!sorted) { jp_fail(p, open, "out of memory"); goto out; }
    memcpy(sorted, pairs, np * sizeof *sorted);
    qsort(sorted, np, sizeof *sorted, cmp_pair);
    for (size_t k = 1; k < np; k++) {
        if (strcmp(sorted[k].name, sorted[k - 1].name)) continue;
        if (!(p->flags & JSON_LAST_KEY_WINS)) {
            char kb[80];
            snprintf(kb, sizeof kb, "%s", sorted[k].name);
            jp_fail(p, sorted[k].at, "key \"%s\" given twice in one object", kb);
            free(sorted);
            goto out;
        }
        for (size_t q = 0; q < np; q++)   /* drop the earlier one */
            if (pairs[q].key == sorted[k - 1].key) pairs[q].key = 0;
    }
    free(sorted);
    for (size_t k = 0; k < np; k++)
        if (pairs[k].key && !yaml_document_append_mapping_pair(&p->j->doc, id, pairs[k].key, pairs[k].value)) {
            jp_fail(p, open, "out of memory");
            goto out;
        }
    ok = 1;
out:
    free(pairs);
    return ok ? id : 0;
}

static int jp_array(jp_t *p, int depth) {
    size_t open = p->i++;
    int id = jp_node(p, open, yaml_document_add_sequence(&p->j->doc, NULL, YAML_FLOW_SEQUENCE_STYLE));
    if (!id) return 0;
    jp_ws(p);
    if (p->i < p->n && p->s[p->i] == ']') {
        p->i++;
        return id;
    }
    for (;;) {
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == ']') return jp_fail(p, p->i, "trailing comma before ']'");
        int item = jp_value(p, depth + 1);
        if (!item) return 0;
        if (!yaml_document_append_sequence_item(&p->j->doc, id, item)) return jp_fail(p, open, "out of memory");
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
        if (p->i < p->n && p->s[p->i] == ']') { p->i++; return id; }
        return jp_fail(p, p->i, p->i < p->n ? "expected ',' or ']' in an array" : "array not closed");
    }
}

static int jp_value(jp_t *p, int depth) {
    jp_ws(p);
    if (p->i >= p->n) return jp_fail(p, p->i, "text ends where a value was expected");
    unsigned c = p->s[p->i];
    if ((c == '{' || c == '[') && depth >= JSON_MAX_DEPTH)
        return jp_fail(p, p->i, "nested deeper than %d levels", JSON_MAX_DEPTH);
    if (c == '{') return jp_object(p, depth);
    if (c == '[') return jp_array(p, depth);
    if (c == '"') {
        size_t at = p->i;
        if (!jp_string(p)) return 0;
        return jp_scalar(p, at, p->buf, p->buf_len, YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    }
    return jp_plain(p);
}

int json_parse_flags(json_doc_t *j, const char *text, size_t len, const char *what, int flags, char *err,
                     size_t errlen) {
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
    if (len > (size_t)INT32_MAX)
        return asp_errf(err, errlen, "%s: %zu bytes, too large for a JSON metadata file", what, len);
    if (!yaml_document_initialize(&j->doc, NULL, NULL, NULL, 1, 1))
        return asp_errf(err, errlen, "%s: out of memory", what);
    j->loaded = 1;
    jp_t p = {.s = (const unsigned char *)text, .n = len, .j = j, .flags = flags, .what = what, .err = err,
              .errlen = errlen};
    int root = jp_value(&p, 0);
    if (root) {
        jp_ws(&p);
        if (p.i < p.n) root = jp_fail(&p, p.i, "text after the JSON value");
    }
    free(p.buf);
    if (!root) {
        json_free(j);
        return -1;
    }
    j->root = yaml_document_get_root_node(&j->doc);
    return 0;
}

int json_parse(json_doc_t *j, const char *text, size_t len, const char *what, char *err, size_t errlen) {
    return json_parse_flags(j, text, len, what, 0, err, errlen);
}

int json_parse_file(json_doc_t *j, const char *path, size_t max_bytes, int flags, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    int fd = asp_open_regular(path, "JSON file", "check the path", err, errlen);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return asp_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    }
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
    else rc = json_parse_flags(j, buf, n, path, flags, err, errlen);
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
