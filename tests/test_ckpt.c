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
}
END_TEST

int main(void) {
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("ckpt");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_crc_check_value);
    tcase_add_test(tc, test_crc_matches_reference_and_streams);
    tcase_add_test(tc, test_config_keys);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
