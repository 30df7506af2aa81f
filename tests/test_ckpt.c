/* Checkpoint building blocks: the CRC-32C against its published check value
 * and a bit-at-a-time reference, and incremental use; the config keys of
 * checkpointing (defaults and bounds). The save/resume paths run end to end
 * in test_ckpt_resume.sh and test_ckpt_fault.sh. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/ckpt.h"
#include "config.h"
#include "testutil.h"

/* one bit at a time, straight from the definition (reflected 0x82F63B78) */
static uint32_t crc_bitwise(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

START_TEST(test_crc_check_value) {
    /* the standard check value of CRC-32C */
    ck_assert_uint_eq(ckpt_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(ckpt_crc32c(0, "", 0), 0);
}
END_TEST

START_TEST(test_crc_matches_reference_and_streams) {
    trng_t r = {42};
    size_t n = 100003;
    uint8_t *buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)trng_next(&r);
    uint32_t whole = ckpt_crc32c(0, buf, n);
    ck_assert_uint_eq(whole, crc_bitwise(buf, n));
    /* split at odd places: the writer checksums chunk by chunk */
    uint32_t c = 0;
    size_t cuts[] = {0, 1, 7, 8, 13, 4096, 50001, n};
    for (int i = 0; i + 1 < (int)(sizeof cuts / sizeof cuts[0]); i++)
        c = ckpt_crc32c(c, buf + cuts[i], cuts[i + 1] - cuts[i]);
    ck_assert_uint_eq(c, whole);
    buf[777] ^= 0x10;   /* one flipped bit changes it */
    ck_assert_uint_ne(ckpt_crc32c(0, buf, n), whole);
    free(buf);
}
END_TEST

static int try_set(const char *set, char *err, size_t len) {
    char path[] = "/tmp/test_ckpt.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("model:\n  hidden_size: 64\n", f);
    fclose(f);
    config_t cfg;
    char *sets[1] = {(char *)set};
    int rc = config_load(&cfg, path, sets, 1, err, len);
    unlink(path);
    return rc;
}

START_TEST(test_config_keys) {
    config_t cfg;
    config_defaults(&cfg);
    ck_assert_str_eq(cfg.io.resume, "auto");
    ck_assert_int_eq(cfg.io.save_every, 0);
    ck_assert_int_eq(cfg.io.keep_last, 3);
    char err[1024];
    ck_assert_int_eq(try_set("io.save_every=100", err, sizeof err), 0);
    ck_assert_int_eq(try_set("io.resume=never", err, sizeof err), 0);
    ck_assert_int_eq(try_set("io.keep_last=0", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "io.keep_last"));
    ck_assert_int_eq(try_set("io.save_every=-1", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "io.save_every"));
    ck_assert_int_eq(try_set("io.resume=", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "auto, never or a checkpoint folder"));
    /* a memory figure whose bytes overflow (1e308 GiB) or beyond any machine is refused */
    ck_assert_int_eq(try_set("checkpointing.memory_budget_gib=1e308", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "checkpointing.memory_budget_gib"));
    ck_assert_int_eq(try_set("checkpointing.host_budget_gib=2e6", err, sizeof err), -1);
    ck_assert_int_eq(try_set("checkpointing.host_budget_gib=1048576", err, sizeof err), 0);
}
END_TEST

/* Retention against a reference that sorts: must-keeps (unusable, the one
 * just written, the newest that loads), then the usable rest ordered by
 * (this lineage first, newest first), cut at keep_last. Random folders. */
static int by_rank(const void *a, const void *b) {
    const ckpt_entry_t *x = a, *y = b;
    if (x->own != y->own) return y->own - x->own;
    return x->step < y->step ? 1 : x->step > y->step ? -1 : 0;
}

START_TEST(test_retain_reference) {
    srand(20);
    for (int trial = 0; trial < 20000; trial++) {
        int n = rand() % 9;
        ckpt_entry_t en[8], ref[8];
        int64_t written = -1;
        int newest = -1;
        for (int i = 0; i < n && i < 8; i++) {   /* newest first, distinct steps */
            en[i].step = (int64_t)(100 - 3 * i - rand() % 3);
            en[i].usable = rand() % 5 != 0;
            en[i].own = rand() % 2;
            en[i].keep = -1;
        }
        if (n > 8) n = 8;
        for (int i = 0; i < n; i++)
            if (en[i].usable && en[i].own && written < 0 && rand() % 2) written = en[i].step;
        for (int i = 0; i < n && newest < 0; i++)
            if (en[i].usable && rand() % 3) newest = i;
        int64_t keep_last = 1 + rand() % 4;
        memcpy(ref, en, sizeof en);
        ckpt_retain(en, n, written, newest, keep_last);
        /* the reference */
        ckpt_entry_t rest[8];
        int nr = 0;
        int64_t kept = 0;
        for (int i = 0; i < n; i++) {
            int must = !ref[i].usable || (ref[i].own && ref[i].step == written) || i == newest;
            ref[i].keep = must;
            kept += must && ref[i].usable;
            if (!must) rest[nr++] = ref[i];
        }
        qsort(rest, (size_t)nr, sizeof rest[0], by_rank);
        for (int j = 0; j < nr && kept < keep_last; j++, kept++)
            for (int i = 0; i < n; i++)
                if (ref[i].step == rest[j].step) ref[i].keep = 1;
        for (int i = 0; i < n; i++)
            ck_assert_msg(en[i].keep == ref[i].keep, "trial %d: step %lld (usable %d own %d) keep %d, reference %d",
                          trial, (long long)en[i].step, en[i].usable, en[i].own, en[i].keep, ref[i].keep);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("ckpt");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_crc_check_value);
    tcase_add_test(tc, test_crc_matches_reference_and_streams);
    tcase_add_test(tc, test_config_keys);
    tcase_add_test(tc, test_retain_reference);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
