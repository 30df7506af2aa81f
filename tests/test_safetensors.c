/* safetensors reader and writer: round trips in every dtype, sharded
 * checkpoints, and malformed files, each refused with a message that names
 * the problem (never a crash: this program also runs under AddressSanitizer
 * and UBSan). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "testutil.h"

static char dir[256];

static void setup(void) { ck_assert_ptr_nonnull(test_mkdtemp(dir, sizeof dir, "st-test")); }

static void teardown(void) { ck_assert_int_eq(test_rmtree(dir), 0); }

/* A file of an 8-byte length (as given), header text, then `data` bytes. */
static const char *write_raw(const char *name, uint64_t hlen, const char *header, size_t data) {
    static char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(b, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data; i++) fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

static const char *write_hdr(const char *header, size_t data) {
    return write_raw("t.safetensors", strlen(header), header, data);
}

/* Opening must fail with a message containing every `want` fragment. */
static void expect_error(const char *path, const char *want1, const char *want2) {
    st_file_t f;
    char err[2048] = "";
    int rc = st_open(&f, path, err, sizeof err);
    ck_assert_msg(rc == -1, "accepted a malformed file (wanted '%s')", want1);
    ck_assert_msg(strstr(err, want1) != NULL, "message '%s' lacks '%s'", err, want1);
    if (want2) ck_assert_msg(strstr(err, want2) != NULL, "message '%s' lacks '%s'", err, want2);
    ck_assert_msg(strstr(err, path) != NULL, "message '%s' does not name the file", err);
}

static void roundtrip(st_dtype_t dt, double tol) {
    trng_t r = {(uint64_t)dt + 7};
    float a[6 * 5], b[7], c0[1];
    trng_fill(&r, a, 30, 1.0);
    trng_fill(&r, b, 7, 100.0);
    st_write_tensor_t t[3] = {{"w.a", 2, {6, 5}, a}, {"b \"quoted\\\"", 1, {7}, b}, {"empty", 2, {0, 3}, c0}};
    char path[400], err[1024];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    ck_assert_msg(st_write(path, t, 3, dt, err, sizeof err) == 0, "%s", err);
    st_file_t f;
    ck_assert_msg(st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(f.ntensors, 3);
    ck_assert_uint_eq((size_t)(f.data - (const unsigned char *)f.map) % 8, 0);   /* padded header */
    for (int i = 0; i < 3; i++) {
        const st_tensor_t *x = st_find(&f, t[i].name);
        ck_assert_ptr_nonnull(x);
        ck_assert_int_eq(x->dtype, dt);
        ck_assert_int_eq(x->ndim, t[i].ndim);
        for (int d = 0; d < x->ndim; d++) ck_assert_int_eq(x->shape[d], t[i].shape[d]);
        float out[30];
        st_read_f32(&f, x, out);
        for (size_t k = 0; k < x->numel; k++) {
            double want = t[i].data[k];
            ck_assert_msg(fabs(out[k] - want) <= tol * fabs(want), "%s[%zu]: %g vs %g", t[i].name, k, out[k], want);
        }
    }
    ck_assert_ptr_null(st_find(&f, "absent"));
    st_close(&f);
}

START_TEST(test_roundtrip_f32) { roundtrip(ST_F32, 0); }
END_TEST
START_TEST(test_roundtrip_bf16) { roundtrip(ST_BF16, 1.0 / 256); }
END_TEST
START_TEST(test_roundtrip_f16) { roundtrip(ST_F16, 1.0 / 1024); }
END_TEST

START_TEST(test_conversions) {
    /* exact values, rounding to nearest even, specials */
    ck_assert_float_eq(st_bf16_to_f32(st_f32_to_bf16(1.5f)), 1.5f);
    ck_assert_uint_eq(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);          /* tie -> even */
    ck_assert_uint_eq(st_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    ck_assert_float_eq(st_f16_to_f32(st_f32_to_f16(-2.75f)), -2.75f);
    ck_assert_uint_eq(st_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(st_f32_to_f16(65520.0f), 0x7c00);                  /* overflows to inf */
    ck_assert_uint_eq(st_f32_to_f16(0x1p-24f), 0x0001);                  /* smallest subnormal */
    ck_assert_float_eq(st_f16_to_f32(0x0001), 0x1p-24f);
    ck_assert_float_eq(st_f16_to_f32(0x03ff), 0x3ffp-24f);
    ck_assert(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(st_f16_to_f32(st_f32_to_f16(NAN))));
    for (uint32_t h = 0; h < 0x7c00; h++)      /* every finite half survives f16 -> f32 -> f16 */
        ck_assert_uint_eq(st_f32_to_f16(st_f16_to_f32((uint16_t)h)), h);
}
END_TEST

START_TEST(test_reads_foreign_layout) {
    /* compact header without padding (odd length: unaligned data), metadata,
     * data not in name order */
    const char *h = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"__metadata__\":{\"format\":\"pt\"},"
                    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]}}";
    char path[400];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(h);
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(n >> (8 * i));
    fwrite(lenb, 1, 8, f);
    fwrite(h, 1, n, f);
    unsigned char data[8] = {0, 0, 0x40, 0x40, 0x80, 0x3f, 0x00, 0xc0};  /* 3.0f; bf16 1.0, -2.0 */
    fwrite(data, 1, 8, f);
    fclose(f);
    st_file_t s;
    char err[1024];
    ck_assert_msg(st_open(&s, path, err, sizeof err) == 0, "%s", err);
    float out[2];
    st_read_f32(&s, st_find(&s, "b"), out);
    ck_assert_float_eq(out[0], 3.0f);
    st_read_f32(&s, st_find(&s, "a"), out);
    ck_assert_float_eq(out[0], 1.0f);
    ck_assert_float_eq(out[1], -2.0f);
    st_close(&s);
}
END_TEST

#define T1(x) "{\"t\":" x "}"
#define OK_ENTRY "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

START_TEST(test_malformed) {
    const char *p;
    /* length field */
    p = write_raw("short.safetensors", 0, "", 0);
    ck_assert_int_eq(truncate(p, 5), 0);
    expect_error(p, "shorter than the 8-byte header length", NULL);
    expect_error(write_raw("long.safetensors", 1000, "{}", 0), "header length 1000 is longer than the rest", NULL);
    expect_error(write_raw("huge.safetensors", (uint64_t)1 << 62, "{}", 0), "above the", "limit");
    expect_error(write_raw("max.safetensors", UINT64_MAX, "{}", 0), "above the", NULL);
    expect_error(write_raw("zero.safetensors", 0, "", 16), "empty where a JSON object was expected", NULL);
    /* JSON syntax and type */
    expect_error(write_hdr("{\"t\":{\"dtype\":\"F32\",", 0), "malformed JSON", NULL);
    expect_error(write_hdr("{\"t\": [1, 2}", 0), "malformed JSON", NULL);
    expect_error(write_hdr("t: {dtype: F32}", 0), "expected a JSON object", NULL);
    expect_error(write_hdr("[1, 2, 3]", 0), "the header is an array", NULL);
    expect_error(write_hdr("{} {}", 0), "malformed JSON", NULL);
    expect_error(write_raw("nul.safetensors", 4, "{}\0}", 0), "", NULL);
    expect_error(write_hdr("{\"t\": 5}", 0), "tensor 't': expected an object", NULL);
    expect_error(write_hdr("{[1]: 5}", 0), "expected a key in double quotes", NULL);
    expect_error(write_hdr("{\"__metadata__\": [1]}", 0), "__metadata__", "object of strings");
    expect_error(write_hdr("{\"__metadata__\": {\"a\": 1}}", 0), "__metadata__\" entry 'a' must be a string", NULL);
    /* missing and unknown keys */
    expect_error(write_hdr(T1("{\"shape\":[2],\"data_offsets\":[0,8]}"), 8), "tensor 't': missing key 'dtype'", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"data_offsets\":[0,8]}"), 8), "missing key 'shape'", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2]}"), 8), "missing key 'data_offsets'", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}"), 8),
                 "unknown key 'x'", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"), 8),
                 "key \"dtype\" given twice", NULL);
    /* dtypes */
    expect_error(write_hdr(T1("{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}"), 8),
                 "tensor 't': dtype F64 is not supported", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}"), 8), "dtype I64", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,8]}"), 8), "unknown dtype 'Q4'",
                 NULL);
    expect_error(write_hdr(T1("{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}"), 8), "dtype must be a string",
                 NULL);
    /* shapes */
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}"), 8),
                 "shape[0] is -2, negative", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}"), 8),
                 "shape[0] must be an integer", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}"), 8),
                 "shape[0] must be an integer", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}"), 8),
                 "shape[0] must be an integer", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}"), 8),
                 "more elements than fit", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}"), 8),
                 "need", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}"), 8),
                 "9 dimensions", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":5,\"data_offsets\":[0,4]}"), 8), "shape must be an array",
                 NULL);
    /* offsets */
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"), 4),
                 "reach past the end of the data", "truncated");
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}"), 8), "end before they begin",
                 NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}"), 12),
                 "hold 12 bytes", "need 2 elements x 4 bytes");
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,7]}"), 8),
                 "data_offsets[0] must be a non-negative integer", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}"), 8),
                 "data_offsets must be an array [begin, end]", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}"), 8),
                 "reach past the end", NULL);
    expect_error(write_hdr(T1("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551616]}"), 8),
                 "data_offsets[1] must be a non-negative integer", NULL);
    /* overlap and duplicates */
    expect_error(write_hdr("{\"a\":" OK_ENTRY ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                 "tensors 'a' [0, 8) and 'b' [4, 12) overlap", NULL);
    expect_error(write_hdr("{\"a\":" OK_ENTRY ",\"a\":" OK_ENTRY "}", 8), "key \"a\" given twice", NULL);
    expect_error(write_hdr("{\"\":" OK_ENTRY "}", 8), "empty name", NULL);
    /* a file that is not there, and a folder */
    char path[400];
    snprintf(path, sizeof path, "%s/absent.safetensors", dir);
    expect_error(path, "cannot open", NULL);
    expect_error(dir, "not a regular file", NULL);
}
END_TEST

/* What the reference parser (the safetensors package) refuses is refused:
 * YAML that is not JSON, gaps in the data and bytes after it. */
START_TEST(test_strict) {
    struct { const char *h; size_t data; const char *want; } cases[] = {
        {"{'t':" OK_ENTRY "}", 8, "expected a key in double quotes"},
        {"{\"t\":{'dtype':\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "expected a key"},
        {"{\"t\":{\"dtype\":'F32',\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "no single quotes"},
        {"{# comment\n\"t\":" OK_ENTRY "}", 8, "expected a key"},
        {"{\"t\":" OK_ENTRY "} # comment", 8, "text after the JSON value"},
        {"{\"t\":&a " OK_ENTRY ",\"u\":*a}", 8, "anchors"},
        {"{\"t\":{\"dtype\":!!str F32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tags"},
        {"{\"t\":{\"dtype\":\"F\\x332\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "escape '\\x' is not JSON"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2,],\"data_offsets\":[0,8]}}", 8, "trailing comma before ']'"},
        {"{\"t\":" OK_ENTRY ",}", 8, "trailing comma before '}'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, "leading zero"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[0x2],\"data_offsets\":[0,8]}}", 8, "hex"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[+2],\"data_offsets\":[0,8]}}", 8, "expected a value"},
        {"{\"t\":{\"dtype\":\"F3\\u00002\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "NUL"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}\xff", 8, "text after"},
        {"{\"t\xc0\xaf\":" OK_ENTRY "}", 8, "invalid UTF-8"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9, "1 bytes after the last tensor"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "a gap of 4 bytes"},
        {"{\"a\":" OK_ENTRY ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16,
         "gap of 4 bytes"},
        {"{\"a\":" OK_ENTRY ",\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, "overlap"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_error(write_hdr(cases[i].h, cases[i].data), cases[i].want, NULL);
    /* still accepted: white space and an empty tensor on a boundary, escapes JSON has */
    const char *ok = " {\"a\" : " OK_ENTRY " , \"\\u00e9\\/\\\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}\t\n  ";
    st_file_t f;
    char err[2048];
    ck_assert_msg(st_open(&f, write_hdr(ok, 8), err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_nonnull(st_find(&f, "\xc3\xa9/\""));
    st_close(&f);
}
END_TEST

/* A header nested 100,000 deep is refused at once, not after minutes. */
START_TEST(test_deep_nesting_fast) {
    size_t depth = 100000;
    char *h = malloc(2 * depth + 16);
    size_t k = 0;
    h[k++] = '{';
    memcpy(h + k, "\"t\":", 4), k += 4;
    for (size_t i = 0; i < depth; i++) h[k++] = '[';
    for (size_t i = 0; i < depth; i++) h[k++] = ']';
    h[k++] = '}';
    h[k] = 0;
    const char *p = write_hdr(h, 0);
    free(h);
    double t0 = test_now();
    expect_error(p, "nested deeper than 64 levels", NULL);
    ck_assert_msg(test_now() - t0 < 0.5, "took %.2f s", test_now() - t0);
    /* 64 levels are fine for the parser (the entry is then refused for its type) */
    char h2[512];
    k = 0;
    k += (size_t)snprintf(h2, sizeof h2, "{\"__metadata__\":{\"a\":\"b\"},\"t\":");
    for (int i = 0; i < 63; i++) h2[k++] = '[';
    for (int i = 0; i < 63; i++) h2[k++] = ']';
    h2[k++] = '}';
    h2[k] = 0;
    expect_error(write_hdr(h2, 0), "tensor 't': expected an object", NULL);
}
END_TEST

/* A FIFO given as a weights file is refused without waiting for a writer. */
START_TEST(test_fifo_refused) {
    char path[400];
    snprintf(path, sizeof path, "%s/pipe.safetensors", dir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    double t0 = test_now();
    expect_error(path, "a FIFO", "not a regular file");
    ck_assert(test_now() - t0 < 0.5);
}
END_TEST

/* Every prefix of a valid file and random byte flips: refused or accepted,
 * never a crash (this is what the sanitizer build is for). */
START_TEST(test_fuzz) {
    float a[12];
    trng_t r = {99};
    trng_fill(&r, a, 12, 1.0);
    st_write_tensor_t t[2] = {{"x", 2, {3, 2}, a}, {"y", 1, {6}, a + 6}};
    char path[400], bad[400], err[2048];
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    ck_assert_msg(st_write(path, t, 2, ST_BF16, err, sizeof err) == 0, "%s", err);
    FILE *f = fopen(path, "rb");
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int refused = 0;
    for (size_t cut = 0; cut < n; cut++) {
        FILE *g = fopen(bad, "wb");
        fwrite(buf, 1, cut, g);
        fclose(g);
        st_file_t s;
        if (st_open(&s, bad, err, sizeof err) == 0) st_close(&s);
        else refused++;
    }
    ck_assert_int_eq(refused, (int)n);   /* every truncation is refused */
    for (int it = 0; it < 3000; it++) {
        unsigned char m[4096];
        memcpy(m, buf, n);
        int flips = 1 + (int)(trng_next(&r) % 4);
        for (int k = 0; k < flips; k++) m[trng_next(&r) % n] = (unsigned char)trng_next(&r);
        FILE *g = fopen(bad, "wb");
        fwrite(m, 1, n, g);
        fclose(g);
        st_file_t s;
        if (st_open(&s, bad, err, sizeof err) == 0) {
            float out[6];
            for (int i = 0; i < s.ntensors; i++)
                if (s.tensors[i].numel <= 6) st_read_f32(&s, &s.tensors[i], out);
            st_close(&s);
        } else {
            ck_assert_msg(strstr(err, bad) != NULL, "message '%s' does not name the file", err);
        }
    }
}
END_TEST

static void write_text(const char *name, const char *text) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

START_TEST(test_sharded) {
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    st_write_tensor_t t1[1] = {{"a", 2, {2, 2}, a}}, t2[1] = {{"b", 1, {2}, b}};
    char path[400], err[2048];
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    ck_assert(st_write(path, t1, 1, ST_F32, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    ck_assert(st_write(path, t2, 1, ST_BF16, err, sizeof err) == 0);
    write_text("model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 20}, \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", "
               "\"b\": \"model-00002-of-00002.safetensors\"}}");
    st_checkpoint_t c;
    ck_assert_msg(st_checkpoint_open(&c, dir, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.nfiles, 2);
    const st_file_t *f;
    const st_tensor_t *t = st_checkpoint_find(&c, "b", &f);
    ck_assert_ptr_nonnull(t);
    float out[2];
    st_read_f32(f, t, out);
    ck_assert_float_eq(out[1], 6.0f);
    ck_assert_ptr_nonnull(st_checkpoint_find(&c, "a", &f));
    ck_assert_ptr_null(st_checkpoint_find(&c, "c", &f));
    st_checkpoint_close(&c);

    /* broken indexes */
    st_write_tensor_t t3[2] = {{"a", 2, {2, 2}, a}, {"b", 1, {2}, b}};
    snprintf(path, sizeof path, "%s/both.safetensors", dir);
    ck_assert(st_write(path, t3, 2, ST_F32, err, sizeof err) == 0);
    struct { const char *json, *want; } cases[] = {
        {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\"}}",
         "tensor 'b' is mapped to"},
        {"{\"weight_map\": {\"a\": \"both.safetensors\"}}", "tensor 'b' of"},
        {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"both.safetensors\"}}",
         "tensor 'a' is in both"},
        {"{\"weight_map\": {\"a\": \"missing.safetensors\", \"b\": \"model-00002-of-00002.safetensors\"}}",
         "cannot open"},
        {"{\"weight_map\": {\"a\": \"../x.safetensors\"}}", "outside the checkpoint folder"},
        {"{\"weight_map\": {\"a\": 3}}", "must name a file as a string"},
        {"{\"weight_map\": {}}", "weight_map\" is empty"},
        {"{\"metadata\": {}}", "expected an object with a \"weight_map\""},
        {"{\"weight_map\": {\"a\": \"x\",}", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text("model.safetensors.index.json", cases[i].json);
        int rc = st_checkpoint_open(&c, dir, err, sizeof err);
        ck_assert_msg(rc == -1, "index %zu accepted", i);
        ck_assert_msg(strstr(err, cases[i].want) != NULL, "index %zu: '%s' lacks '%s'", i, err, cases[i].want);
    }
    /* no weights at all */
    char sub[400];
    snprintf(sub, sizeof sub, "%s/empty", dir);
    mkdir(sub, 0755);
    ck_assert_int_eq(st_checkpoint_open(&c, sub, err, sizeof err), -1);
    ck_assert(strstr(err, "neither model.safetensors nor") != NULL);
}
END_TEST

/* Under AddressSanitizer, leaks fail the test too (the reader frees every
 * path, including each error path). Unused in the plain build. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=1"; }

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_roundtrip_f32);
    tcase_add_test(tc, test_roundtrip_bf16);
    tcase_add_test(tc, test_roundtrip_f16);
    tcase_add_test(tc, test_conversions);
    tcase_add_test(tc, test_reads_foreign_layout);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_strict);
    tcase_add_test(tc, test_deep_nesting_fast);
    tcase_add_test(tc, test_fifo_refused);
    tcase_add_test(tc, test_fuzz);
    tcase_add_test(tc, test_sharded);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
