/* Token shards (round trip, every malformed-file message) and the loader
 * (shifted targets across SP slices, padding, DP order, shuffle, epochs). */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "exec/exec.h"
#include "io/data.h"
#include "testutil.h"
#include "util.h"

static char tmpdir[256];
static char errbuf[1024];

static void setup_dir(void) { ck_assert_ptr_nonnull(test_mkdtemp(tmpdir, sizeof tmpdir, "asp_test_data")); }

static void teardown_dir(void) { ck_assert_int_eq(test_rmtree(tmpdir), 0); }

static const char *tpath(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

static int count_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* tokens[i] = (i * 7 + 3) % vocab: distinct neighbours, easy to predict */
static uint32_t *make_tokens(int64_t n, uint32_t vocab) {
    uint32_t *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = (uint32_t)((i * 7 + 3) % vocab);
    return t;
}

static void write_raw(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (n) ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

static void read_raw(const char *path, unsigned char **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(*n);
    ck_assert_uint_eq(fread(*buf, 1, *n, f), *n);
    fclose(f);
}

/* write a valid shard, let `edit` damage its bytes, expect shard_open to fail with `needle` */
static void expect_open_error(unsigned char *bytes, size_t n, int64_t vocab_limit, const char *needle) {
    const char *p = tpath("bad.tok");
    write_raw(p, bytes, n);
    shard_t s;
    errbuf[0] = 0;
    ck_assert_int_eq(shard_open(&s, p, vocab_limit, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, needle) != NULL, "message \"%s\" lacks \"%s\"", errbuf, needle);
    ck_assert_msg(strstr(errbuf, p) != NULL, "message \"%s\" does not name the file", errbuf);
}

START_TEST(test_round_trip) {
    int64_t n = 1000;
    uint32_t *t = make_tokens(n, 256);
    const char *p = tpath("a.tok");
    ck_assert_int_eq(shard_write(p, t, n, 256, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(count_files(), 1);     /* no temporary left behind */
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_size, SHARD_HEADER_BYTES + 4 * n);
    shard_t s;
    ck_assert_msg(shard_open(&s, p, 256, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    ck_assert_int_eq(s.n_tokens, n);
    ck_assert_uint_eq(s.vocab_size, 256);
    ck_assert_int_eq(memcmp(s.tokens, t, (size_t)n * 4), 0);
    shard_close(&s);
    /* header bytes are the documented little-endian layout */
    unsigned char *b;
    size_t bn;
    read_raw(p, &b, &bn);
    ck_assert_int_eq(memcmp(b, "ASPTOKS1", 8), 0);
    ck_assert_int_eq(b[8], 1);
    ck_assert_int_eq(b[12], 4);
    ck_assert_int_eq(b[16] | b[17] << 8, 1000);
    ck_assert_int_eq(b[24] | b[25] << 8, 256);
    for (int i = 28; i < 64; i++) ck_assert_int_eq(b[i], 0);
    free(b);
    /* overwrite replaces atomically */
    t[0] = 9;
    ck_assert_int_eq(shard_write(p, t, n, 256, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(shard_open(&s, p, 0, errbuf, sizeof errbuf), 0);
    ck_assert_uint_eq(s.tokens[0], 9);
    shard_close(&s);
    free(t);
}
END_TEST

START_TEST(test_write_errors) {
    uint32_t t[4] = {1, 2, 300, 4};
    const char *p = tpath("w.tok");
    ck_assert_int_eq(shard_write(p, t, 4, 256, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, "token 300 at index 2") != NULL, "%s", errbuf);
    ck_assert_int_eq(count_files(), 0);     /* nothing written, not even a temporary */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/missing/x.tok", tmpdir);
    t[2] = 3;
    ck_assert_int_eq(shard_write(nodir, t, 4, 256, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, "cannot create a temporary file") != NULL, "%s", errbuf);
}
END_TEST

START_TEST(test_bad_files) {
    int64_t n = 100;
    uint32_t *t = make_tokens(n, 100);     /* ids < 100, recorded vocab 200 */
    char good[512];
    snprintf(good, sizeof good, "%s", tpath("good.tok"));
    ck_assert_int_eq(shard_write(good, t, n, 200, errbuf, sizeof errbuf), 0);
    unsigned char *b;
    size_t bn;
    read_raw(good, &b, &bn);
    unsigned char *c = malloc(bn);

    memcpy(c, b, bn); c[0] = 'X';
    expect_open_error(c, bn, 0, "not a token shard");
    memcpy(c, b, bn); c[8] = 9;
    expect_open_error(c, bn, 0, "format version 9, this build reads versions 1 (plain) and 2 (with a target mask)");
    memcpy(c, b, bn); c[12] = 2;
    expect_open_error(c, bn, 0, "tokens of 2 bytes");
    expect_open_error(b, bn - 10, 0,
                      "truncated: header says 100 tokens (464 bytes) but the file has 454 bytes; "
                      "re-create it with scripts/text_to_shard.py");
    expect_open_error(b, 40, 0, "truncated");
    expect_open_error(b, 0, 0, "empty file");
    memcpy(c, b, bn); c[16] = 1;        /* n_tokens = 1 with a matching file size */
    expect_open_error(c, 64 + 4, 0, "only 1 token(s); a sample needs at least 2");
    /* a token beyond the model's vocabulary: index, value and limit named */
    memcpy(c, b, bn);
    ((uint32_t *)(c + 64))[37] = 150;
    expect_open_error(c, bn, 128, "token 150 at index 37 is >= the model vocab_size 128");
    /* a token beyond the recorded vocabulary */
    memcpy(c, b, bn);
    ((uint32_t *)(c + 64))[5] = 250;
    expect_open_error(c, bn, 0, "token 250 at index 5 is >= the vocab_size 200 recorded in the header");
    /* header flags beyond the EOS bit, an EOS id the flags do not record, padding that is not zero */
    memcpy(c, b, bn); c[28] = 2;
    expect_open_error(c, bn, 0, "header flags 0x00000002 set bits this build does not know");
    memcpy(c, b, bn); c[32] = 7;
    expect_open_error(c, bn, 0, "header byte 32 is 0x07, but it is the EOS id of a shard that records none");
    memcpy(c, b, bn); c[36] = 1;
    expect_open_error(c, bn, 0, "header byte 36 is 0x01, but it is padding (bytes 36-63) and must be zero");
    memcpy(c, b, bn); c[63] = 0xff;
    expect_open_error(c, bn, 0, "header byte 63 is 0xff");
    /* a FIFO or a folder as data.path: refused without blocking */
    const char *fifo = tpath("pipe.tok");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    {
        shard_t s;
        double t0 = test_now();
        ck_assert_int_eq(shard_open(&s, fifo, 0, errbuf, sizeof errbuf), -1);
        ck_assert(test_now() - t0 < 0.5);
        ck_assert_msg(strstr(errbuf, "is a FIFO (named pipe), not a regular file") != NULL, "%s", errbuf);
        unlink(fifo);
    }
    /* missing file */
    shard_t s;
    ck_assert_int_eq(shard_open(&s, tpath("nope.tok"), 0, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, "cannot open token shard") != NULL, "%s", errbuf);
    /* the limit is inclusive of every id below it */
    ck_assert_int_eq(shard_open(&s, good, 200, errbuf, sizeof errbuf), 0);
    shard_close(&s);
    free(c);
    free(b);
    free(t);
}
END_TEST

/* Shard of n tokens t[i] = i % vocab with vocab large enough to be unique. */
static void open_counting_shard(shard_t *s, int64_t n) {
    uint32_t *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = (uint32_t)i;
    const char *p = tpath("count.tok");
    ck_assert_int_eq(shard_write(p, t, n, (uint32_t)n, errbuf, sizeof errbuf), 0);
    ck_assert_msg(shard_open(s, p, 0, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    free(t);
}

START_TEST(test_sp_slices) {
    shard_t s;
    open_counting_shard(&s, 500);
    int64_t lens[] = {12, 13, 7, 1};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int64_t S = lens[li];
        /* reference: P = 1, no padding */
        loader_t l1;
        ck_assert_int_eq(loader_init(&l1, &s, S, 0, 0, 1, 0, 1, 1, 42, errbuf, sizeof errbuf), 0);
        ck_assert_int_eq(l1.seq_local, S);
        int32_t rt[16], rg[16], rp[16];
        for (int step = 0; step < 3; step++) {
            ck_assert_int_eq(loader_next(&l1, rt, rg, rp), S);
            for (int64_t t = 0; t < S; t++) {
                ck_assert_int_eq(rg[t], rt[t] + 1);     /* targets = inputs shifted by one */
                ck_assert_int_eq(rp[t], t);
            }
            for (int P = 1; P <= 4; P++) {
                int64_t pad = asp_ceil_div(S, P) * P;
                int32_t ct[16], cg[16], cp[16];
                for (int r = 0; r < P; r++) {
                    loader_t l;
                    ck_assert_int_eq(loader_init(&l, &s, S, 0, r, P, 0, 1, 1, 42, errbuf, sizeof errbuf), 0);
                    ck_assert_int_eq(l.seq_pad, pad);
                    ck_assert_int_eq(l.seq_local, pad / P);
                    int32_t t[16], g[16], p[16];
                    int64_t valid = 0;
                    for (int k = 0; k <= step; k++) valid = loader_next(&l, t, g, p);
                    ck_assert_int_eq(valid, S);       /* whole-sample count on every SP rank */
                    memcpy(ct + r * l.seq_local, t, (size_t)l.seq_local * 4);
                    memcpy(cg + r * l.seq_local, g, (size_t)l.seq_local * 4);
                    memcpy(cp + r * l.seq_local, p, (size_t)l.seq_local * 4);
                    loader_free(&l);
                }
                for (int64_t t = 0; t < pad; t++) {
                    ck_assert_int_eq(cp[t], t);       /* global positions */
                    if (t < S) {
                        ck_assert_int_eq(ct[t], rt[t]);
                        ck_assert_int_eq(cg[t], rg[t]);
                    } else {                          /* padding masked */
                        ck_assert_int_eq(ct[t], 0);
                        ck_assert_int_eq(cg[t], -1);
                    }
                }
            }
        }
        loader_free(&l1);
    }
    /* explicit padding beyond the minimum */
    loader_t l;
    ck_assert_int_eq(loader_init(&l, &s, 10, 16, 1, 2, 0, 1, 0, 0, errbuf, sizeof errbuf), 0);
    int32_t t[8], g[8], p[8];
    ck_assert_int_eq(loader_next(&l, t, g, p), 10);
    ck_assert_int_eq(p[0], 8);
    ck_assert_int_eq(t[0], 8);
    ck_assert_int_eq(g[1], 10);
    ck_assert_int_eq(g[2], -1);
    loader_free(&l);
    ck_assert_int_eq(loader_init(&l, &s, 10, 15, 0, 2, 0, 1, 0, 0, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, "multiple of the SP size 2") != NULL, "%s", errbuf);
    shard_close(&s);
}
END_TEST

START_TEST(test_dp_order) {
    shard_t s;
    int64_t S = 4;
    open_counting_shard(&s, 41);            /* 10 samples */
    for (int dp = 1; dp <= 3; dp++) {
        loader_t ref, l[3];
        ck_assert_int_eq(loader_init(&ref, &s, S, 0, 0, 1, 0, 1, 1, 7, errbuf, sizeof errbuf), 0);
        for (int q = 0; q < dp; q++)
            ck_assert_int_eq(loader_init(&l[q], &s, S, 0, 0, 1, q, dp, 1, 7, errbuf, sizeof errbuf), 0);
        /* one epoch of steps: the dp ranks together consume the reference stream in order */
        int steps = (int)(10 / dp);
        for (int st = 0; st < steps; st++) {
            int first[3];
            for (int q = 0; q < dp; q++) {
                int32_t t[4], g[4], p[4], rt[4], rg[4], rp[4];
                loader_next(&l[q], t, g, p);
                loader_next(&ref, rt, rg, rp);
                ck_assert_int_eq(t[0], rt[0]);   /* b-th sample of the step goes to rank b % dp */
                first[q] = t[0];
                for (int k = 0; k < q; k++) ck_assert_int_ne(first[k], first[q]);
            }
        }
        for (int q = 0; q < dp; q++) {
            ck_assert_int_eq(l[q].epoch, 0);
            ck_assert_int_eq(l[q].cursor, steps * dp);
            loader_free(&l[q]);
        }
        loader_free(&ref);
    }
    /* too few samples for the DP ranks */
    loader_t l;
    ck_assert_int_eq(loader_init(&l, &s, 20, 0, 0, 1, 0, 3, 1, 7, errbuf, sizeof errbuf), -1);
    ck_assert_msg(strstr(errbuf, "need at least 61 tokens") != NULL, "%s", errbuf);
    shard_close(&s);
}
END_TEST

/* first tokens of the samples of one epoch (sample index = token / S) */
static void epoch_order(loader_t *l, int64_t *out) {
    int32_t t[8], g[8], p[8];
    for (int64_t i = 0; i < l->n_samples; i++) {
        loader_next(l, t, g, p);
        out[i] = t[0] / l->seq_len;
    }
}

START_TEST(test_shuffle_epochs) {
    shard_t s;
    int64_t S = 5, N = 40;
    open_counting_shard(&s, N * S + 3);
    loader_t a, b, c, off;
    ck_assert_int_eq(loader_init(&a, &s, S, 0, 0, 1, 0, 1, 1, 1234, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(loader_init(&b, &s, S, 0, 0, 1, 0, 1, 1, 1234, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(loader_init(&c, &s, S, 0, 0, 1, 0, 1, 1, 99, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(loader_init(&off, &s, S, 0, 0, 1, 0, 1, 0, 1234, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(a.n_samples, N);
    int64_t a0[40], a1[40], b0[40], c0[40], o0[40];
    epoch_order(&a, a0);
    epoch_order(&b, b0);
    epoch_order(&c, c0);
    epoch_order(&off, o0);
    ck_assert_int_eq(memcmp(a0, b0, sizeof a0), 0);      /* same seed: same order */
    ck_assert_int_ne(memcmp(a0, c0, sizeof a0), 0);      /* other seed: other order */
    int seen[40] = {0}, identity = 1;
    for (int i = 0; i < N; i++) {
        seen[a0[i]]++;
        ck_assert_int_eq(o0[i], i);                      /* shuffle off: identity */
        if (a0[i] != i) identity = 0;
    }
    ck_assert(!identity);
    for (int i = 0; i < N; i++) ck_assert_int_eq(seen[i], 1);  /* a permutation */
    ck_assert_int_eq(a.epoch, 0);
    ck_assert_int_eq(a.cursor, N);
    epoch_order(&a, a1);                                  /* wraps into epoch 1 */
    ck_assert_int_eq(a.epoch, 1);
    ck_assert_int_ne(memcmp(a0, a1, sizeof a0), 0);
    /* resuming at (epoch 1, cursor 7) rebuilds that epoch's order */
    loader_t r;
    ck_assert_int_eq(loader_init(&r, &s, S, 0, 0, 1, 0, 1, 1, 1234, errbuf, sizeof errbuf), 0);
    r.epoch = 1;
    r.cursor = 7;
    int32_t t[8], g[8], p[8];
    loader_next(&r, t, g, p);
    ck_assert_int_eq(t[0] / S, a1[7]);
    loader_free(&a);
    loader_free(&b);
    loader_free(&c);
    loader_free(&off);
    loader_free(&r);
    shard_close(&s);
}
END_TEST

START_TEST(test_epoch_wrap_dp) {
    shard_t s;
    int64_t S = 3;
    open_counting_shard(&s, 7 * S + 1);     /* 7 samples, 3 DP ranks: 6 per epoch */
    loader_t l[3];
    for (int q = 0; q < 3; q++)
        ck_assert_int_eq(loader_init(&l[q], &s, S, 0, 0, 1, q, 3, 0, 0, errbuf, sizeof errbuf), 0);
    int32_t t[4], g[4], p[4];
    int64_t expect[] = {0, 1, 2, 3, 4, 5, /* sample 6 skipped */ 0, 1, 2};
    for (int st = 0; st < 3; st++)
        for (int q = 0; q < 3; q++) {
            loader_next(&l[q], t, g, p);
            ck_assert_int_eq(t[0] / S, expect[st * 3 + q]);
            ck_assert_int_eq(l[q].epoch, st < 2 ? 0 : 1);
        }
    for (int q = 0; q < 3; q++) loader_free(&l[q]);
    shard_close(&s);
}
END_TEST

/* the Python writer and the C reader agree on the format */
START_TEST(test_python_writer) {
    const char *top = getenv("top_srcdir");
    char script[1024], cmd[4096], txt[600], tok[600], val[600];
    snprintf(script, sizeof script, "%s/scripts/text_to_shard.py", top ? top : ".");
    if (access(script, R_OK) != 0 || system("python3 -c 'pass' >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_python_writer: no python3 or %s; not checked\n", script);
        return;
    }
    const char *text = "In the beginning was the Word.\nAnd the Word was with God.\n";  /* 59 bytes */
    size_t len = strlen(text);
    snprintf(txt, sizeof txt, "%s", tpath("t.txt"));
    snprintf(tok, sizeof tok, "%s", tpath("t.tok"));
    snprintf(val, sizeof val, "%s", tpath("t_val.tok"));
    write_raw(txt, text, len);
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s' '%s' --val '%s' --val-fraction 0.2 >/dev/null", script, txt, tok, val);
    ck_assert_int_eq(system(cmd), 0);
    shard_t a, b;
    ck_assert_msg(shard_open(&a, tok, 256, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    ck_assert_msg(shard_open(&b, val, 256, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    size_t nval = len / 5;                       /* int(59 * 0.2) = 11 */
    ck_assert_int_eq(a.n_tokens, (int64_t)(len - nval));
    ck_assert_int_eq(b.n_tokens, (int64_t)nval);
    ck_assert_uint_eq(a.vocab_size, 256);
    for (int64_t i = 0; i < a.n_tokens; i++) ck_assert_uint_eq(a.tokens[i], (unsigned char)text[i]);
    for (int64_t i = 0; i < b.n_tokens; i++) ck_assert_uint_eq(b.tokens[i], (unsigned char)text[a.n_tokens + i]);
    shard_close(&a);
    shard_close(&b);
    ck_assert_int_eq(count_files(), 3);          /* no temporaries left */
}
END_TEST

/* Packed documents: token 3 ends a document. Sample 0 (S = 10, padded to
 * 12 for 4 SP ranks) holds documents [0,3) [3,5) [5,6) [6,10) and padding
 * [10,12); sample 1 has no EOS. Every rank gets its slice of positions
 * (restarting per document), tokens and targets (the EOS input's masked),
 * and the same whole-sample document starts and valid count. */
START_TEST(test_documents) {
    const uint32_t E = 3;
    uint32_t t[21] = {5, 6, E, 7, E, E, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22};
    const char *p = tpath("docs.tok");
    ck_assert_int_eq(shard_write_eos(p, t, 21, 256, E, errbuf, sizeof errbuf), 0);
    shard_t sh;
    ck_assert_int_eq(shard_open(&sh, p, 256, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(sh.eos_token_id, E);
    uint32_t vocab = 0;
    int64_t eos = 0;
    ck_assert_int_eq(shard_peek(p, &vocab, &eos, errbuf, sizeof errbuf), 0);
    ck_assert_uint_eq(vocab, 256);
    ck_assert_int_eq(eos, E);

    const int32_t want_start[12] = {0, 0, 0, 3, 3, 5, 6, 6, 6, 6, 10, 10};
    const int32_t want_pos[12] = {0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1};
    const int32_t want_tok[12] = {5, 6, 3, 7, 3, 3, 8, 9, 10, 11, 0, 0};
    const int32_t want_tgt[12] = {6, 3, -1, 3, -1, -1, 9, 10, 11, 12, -1, -1};
    for (int r = 0; r < 4; r++) {
        loader_t l;
        ck_assert_int_eq(loader_init(&l, &sh, 10, 0, r, 4, 0, 1, 0, 1, errbuf, sizeof errbuf), 0);
        ck_assert_int_eq(l.seq_pad, 12);
        loader_set_documents(&l, E);
        int32_t tok[3], tgt[3], pos[3], start[12];
        double sq = 0;
        ck_assert_int_eq(loader_next_docs(&l, tok, tgt, pos, start, &sq), 7);
        ck_assert(sq == 9 + 4 + 1 + 16);
        for (int i = 0; i < 12; i++) ck_assert_int_eq(start[i], want_start[i]);
        for (int i = 0; i < 3; i++) {
            ck_assert_int_eq(pos[i], want_pos[3 * r + i]);
            ck_assert_int_eq(tok[i], want_tok[3 * r + i]);
            ck_assert_int_eq(tgt[i], want_tgt[3 * r + i]);
        }
        /* sample 1: no EOS, one document over all of S; padding its own */
        ck_assert_int_eq(loader_next_docs(&l, tok, tgt, pos, start, &sq), 10);
        ck_assert(sq == 100);
        for (int i = 0; i < 12; i++) ck_assert_int_eq(start[i], i < 10 ? 0 : 10);
        for (int i = 0; i < 3; i++) {
            int g = 3 * r + i;
            ck_assert_int_eq(pos[i], g < 10 ? g : g - 10);
            ck_assert_int_eq(tgt[i], g < 10 ? (int32_t)t[10 + g + 1] : -1);
        }
        loader_free(&l);
    }
    int32_t cu[13];
    int64_t max_len = 0;
    ck_assert_int_eq(docs_from_starts(want_start, 12, cu, &max_len), 5);
    const int32_t want_cu[6] = {0, 3, 5, 6, 10, 12};
    for (int i = 0; i < 6; i++) ck_assert_int_eq(cu[i], want_cu[i]);
    ck_assert_int_eq(max_len, 4);
    shard_close(&sh);

    /* a shard without a recorded EOS, and an EOS id the vocabulary lacks */
    ck_assert_int_eq(shard_write(p, t, 21, 256, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(shard_peek(p, &vocab, &eos, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(eos, -1);
    ck_assert_int_eq(shard_write_eos(p, t, 21, 256, 256, errbuf, sizeof errbuf), -1);
    ck_assert_ptr_nonnull(strstr(errbuf, "EOS id 256"));
    ck_assert_int_eq(shard_peek(tpath("none.tok"), &vocab, &eos, errbuf, sizeof errbuf), -1);
    ck_assert_ptr_nonnull(strstr(errbuf, "none.tok"));
}
END_TEST

/* Target masks (version 2): random tokens and a random mask, every SP size
 * 1-4 with and without documents; each rank's targets and the whole
 * sample's valid count against a reference computed from the raw arrays. */
static void masked_reference(const uint32_t *t, const uint8_t *is_target, int64_t base, int64_t S, int64_t eos,
                             int32_t *want_tgt, int64_t *want_valid) {
    *want_valid = 0;
    for (int64_t p = 0; p < S; p++) {
        int keep = is_target[base + p + 1] && !(eos >= 0 && t[base + p] == (uint32_t)eos);
        want_tgt[p] = keep ? (int32_t)t[base + p + 1] : -1;
        *want_valid += keep;
    }
}

START_TEST(test_target_mask) {
    const int64_t n = 203, S = 13;
    const uint32_t V = 50, E = 7;
    uint32_t t[203];
    uint8_t m[203];
    uint64_t x = 0x1234567;
    for (int64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (uint32_t)(x >> 33) % V;
        m[i] = (uint8_t)((x >> 20) % 3 != 0);
    }
    const char *p = tpath("masked.tok");
    ck_assert_msg(shard_write_masked(p, t, m, n, V, E, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    shard_t sh;
    ck_assert_msg(shard_open(&sh, p, V, errbuf, sizeof errbuf) == 0, "%s", errbuf);
    ck_assert_ptr_nonnull(sh.target_mask);
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        count += m[i];
        ck_assert_int_eq(shard_is_target(&sh, i), m[i]);
    }
    ck_assert_int_eq(sh.n_targets, count);
    for (int docs = 0; docs < 2; docs++)
        for (int P = 1; P <= 4; P++)
            for (int r = 0; r < P; r++) {
                loader_t l;
                ck_assert_int_eq(loader_init(&l, &sh, S, 0, r, P, 0, 1, 0, 1, errbuf, sizeof errbuf), 0);
                loader_set_documents(&l, docs ? (int64_t)E : -1);
                int32_t tok[16], tgt[16], pos[16], want[16];
                for (int64_t smp = 0; smp < l.n_samples; smp++) {
                    int64_t want_valid;
                    masked_reference(t, m, smp * S, S, docs ? (int64_t)E : -1, want, &want_valid);
                    ck_assert_int_eq(loader_next(&l, tok, tgt, pos), want_valid);
                    for (int64_t i = 0; i < l.seq_local; i++) {
                        int64_t g = r * l.seq_local + i;
                        ck_assert_int_eq(tgt[i], g < S ? want[g] : -1);
                        ck_assert_int_eq(tok[i], g < S ? (int32_t)t[smp * S + g] : 0);
                    }
                }
                loader_free(&l);
            }
    shard_close(&sh);

    /* a mask that damages: bits past n, no target at all, a short mask, an unknown version */
    unsigned char *b;
    size_t nb;
    read_raw(p, &b, &nb);
    ck_assert_uint_eq(nb, 64 + 4 * (size_t)n + (size_t)(n + 7) / 8);
    b[nb - 1] |= 0x80;   /* 203 = 25 * 8 + 3: bit 7 of the last byte is past the tokens */
    expect_open_error(b, nb, V, "sets bits past the 203 tokens");
    memset(b + 64 + 4 * n, 0, (size_t)(n + 7) / 8);
    expect_open_error(b, nb, V, "marks no token as a target");
    expect_open_error(b, nb - 1, V, "tokens and their target mask");
    b[8] = 3;
    expect_open_error(b, nb, V, "version 3, this build reads versions 1 (plain) and 2");
    free(b);
    /* a plain shard has no mask and all its tokens are targets */
    ck_assert_int_eq(shard_write(p, t, n, V, errbuf, sizeof errbuf), 0);
    ck_assert_int_eq(shard_open(&sh, p, V, errbuf, sizeof errbuf), 0);
    ck_assert_ptr_null(sh.target_mask);
    ck_assert_int_eq(sh.n_targets, n);
    shard_close(&sh);
}
END_TEST

static Suite *data_suite(void) {
    Suite *su = suite_create("data");
    TCase *tc = tcase_create("shard");
    tcase_add_checked_fixture(tc, setup_dir, teardown_dir);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_write_errors);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_python_writer);
    suite_add_tcase(su, tc);
    tc = tcase_create("loader");
    tcase_add_checked_fixture(tc, setup_dir, teardown_dir);
    tcase_add_test(tc, test_sp_slices);
    tcase_add_test(tc, test_dp_order);
    tcase_add_test(tc, test_shuffle_epochs);
    tcase_add_test(tc, test_epoch_wrap_dp);
    tcase_add_test(tc, test_documents);
    tcase_add_test(tc, test_target_mask);
    suite_add_tcase(su, tc);
    return su;
}

int main(void) {
    SRunner *sr = srunner_create(data_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
