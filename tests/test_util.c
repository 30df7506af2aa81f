/* asp_write_atomic: a reader sees the old file or the new one, never half of
 * either, and a failed write leaves nothing behind. asp_map_file: mapping,
 * empty files, and the messages for what is not a file. asp_mkdir_p and
 * asp_fsync_dir. */
#include <check.h>
#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"
#include "testutil.h"

static char dir[64];

static int fill_text(FILE *f, void *ctx, char *err, size_t errlen) {
    return fputs((const char *)ctx, f) < 0 ? -1 : 0;
}

static int fill_fails(FILE *f, void *ctx, char *err, size_t errlen) {
    fputs("half of a file", f);
    return asp_errf(err, errlen, "the content could not be made (%s)", (const char *)ctx);
}

static int entries(void) {
    int n = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void slurp(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
}

START_TEST(t_write_atomic) {
    snprintf(dir, sizeof dir, "/tmp/asp_test_util.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128], err[512], buf[64];
    snprintf(path, sizeof path, "%s/file.txt", dir);

    ck_assert_int_eq(asp_write_atomic(path, fill_text, "first", err, sizeof err), 0);
    slurp(path, buf, sizeof buf);
    ck_assert_str_eq(buf, "first");
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0644);
    ck_assert_int_eq(entries(), 1);

    /* a failing fill: its message comes back, the old file is intact, no temporary */
    ck_assert_int_eq(asp_write_atomic(path, fill_fails, "disk on fire", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "could not be made (disk on fire)") != NULL, "%s", err);
    slurp(path, buf, sizeof buf);
    ck_assert_str_eq(buf, "first");
    ck_assert_int_eq(entries(), 1);

    ck_assert_int_eq(asp_write_atomic(path, fill_text, "second", err, sizeof err), 0);
    slurp(path, buf, sizeof buf);
    ck_assert_str_eq(buf, "second");
    ck_assert_int_eq(entries(), 1);

    /* a folder that does not exist */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/file", dir);
    ck_assert_int_eq(asp_write_atomic(missing, fill_text, "x", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "cannot create a temporary file next to it") && strstr(err, "no/such/file"), "%s", err);

    unlink(path);
    rmdir(dir);
}
END_TEST


START_TEST(t_map_file) {
    char d[64], path[128], empty[128], err[512];
    snprintf(d, sizeof d, "/tmp/asp_test_map.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    snprintf(path, sizeof path, "%s/data", d);
    snprintf(empty, sizeof empty, "%s/empty", d);
    ck_assert_int_eq(asp_write_atomic(path, fill_text, "mapped bytes", err, sizeof err), 0);
    ck_assert_int_eq(asp_write_atomic(empty, fill_text, "", err, sizeof err), 0);
    void *m;
    size_t n;
    ck_assert_int_eq(asp_map_file(path, "thing", "hint", &m, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, 12);
    ck_assert_int_eq(memcmp(m, "mapped bytes", 12), 0);
    munmap(m, n);
    ck_assert_int_eq(asp_map_file(empty, "thing", "hint", &m, &n, err, sizeof err), 0);
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(asp_map_file(d, "thing", "give a file", &m, &n, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "is a folder, not a regular file (thing expected); give a file") != NULL, "%s", err);
    /* a FIFO is refused at once, not waited on (open would block for a writer) */
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", d);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    double t0 = test_now();
    ck_assert_int_eq(asp_map_file(fifo, "thing", "give a file", &m, &n, err, sizeof err), -1);
    ck_assert(test_now() - t0 < 0.5);
    ck_assert_msg(strstr(err, "is a FIFO (named pipe), not a regular file (thing expected)") != NULL, "%s", err);
    ck_assert_int_eq(asp_open_regular("/dev/null", "thing", "hint", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "/dev/null: is a device, not a regular file") != NULL, "%s", err);
    unlink(fifo);
    snprintf(path, sizeof path, "%s/missing", d);
    ck_assert_int_eq(asp_map_file(path, "thing", "make one", &m, &n, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "cannot open thing") && strstr(err, "make one"), "%s", err);
    snprintf(path, sizeof path, "%s/data", d);
    unlink(path);
    unlink(empty);
    rmdir(d);
}
END_TEST

START_TEST(t_mkdir_p) {
    char d[64], deep[256], file[256];
    ck_assert_ptr_nonnull(test_mkdtemp(d, sizeof d, "asp_test_mkdir"));
    snprintf(deep, sizeof deep, "%s/a/b/c", d);
    ck_assert_int_eq(asp_mkdir_p(deep), 0);
    struct stat st;
    ck_assert(stat(deep, &st) == 0 && S_ISDIR(st.st_mode));
    ck_assert_int_eq(asp_mkdir_p(deep), 0);             /* already there */
    ck_assert_int_eq(asp_fsync_dir(deep), 0);
    /* a file in the way */
    snprintf(file, sizeof file, "%s/a/f", d);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(deep, sizeof deep, "%s/a/f/x", d);
    ck_assert_int_eq(asp_mkdir_p(deep), -1);
    ck_assert_int_eq(asp_fsync_dir(file), -1);
    /* longer than a path can be */
    char *huge = malloc(8192);
    memset(huge, 'x', 8191);
    huge[0] = '/';
    huge[8191] = 0;
    errno = 0;
    ck_assert_int_eq(asp_mkdir_p(huge), -1);
    ck_assert_int_eq(errno, ENAMETOOLONG);
    free(huge);
    ck_assert_int_eq(test_rmtree(d), 0);
}
END_TEST

/* ASP_* values: strict numbers against a reference built from the text's
 * characters, random strings of digits, signs, dots, letters and blanks. */
START_TEST(t_env_strict) {
    char err[512];
    long l;
    double d;
    ck_assert_int_eq(asp_parse_env_long("ASP_X", "42", 0, 100, &l, err, sizeof err), 0);
    ck_assert_int_eq(l, 42);
    const char *bad_long[] = {"", "abc", "4x", " 4", "+4", "4 ", "0x10", "101", "-1", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_long / sizeof *bad_long; i++) {
        ck_assert_msg(asp_parse_env_long("ASP_X", bad_long[i], 0, 100, &l, err, sizeof err) == -1, "'%s'", bad_long[i]);
        ck_assert_msg(strstr(err, "ASP_X") && strstr(err, bad_long[i]), "%s", err);
    }
    const char *bad_double[] = {"", "ten", "inf", "nan", "1e999", "0x1p3", " 1", "1,5", "-2"};
    for (size_t i = 0; i < sizeof bad_double / sizeof *bad_double; i++)
        ck_assert_msg(asp_parse_env_double("ASP_Y", bad_double[i], 0, 1e9, &d, err, sizeof err) == -1, "'%s'",
                      bad_double[i]);
    ck_assert_int_eq(asp_parse_env_double("ASP_Y", "2.5e1", 0, 1e9, &d, err, sizeof err), 0);
    ck_assert(d == 25.0);
    /* random texts: accepted exactly when the text is a plain decimal integer in range */
    srand(5);
    const char alphabet[] = "0123456789-+. ex";
    for (int t = 0; t < 20000; t++) {
        char s[8];
        int n = 1 + rand() % 6;
        for (int i = 0; i < n; i++) s[i] = alphabet[rand() % (int)(sizeof alphabet - 1)];
        s[n] = 0;
        int digits_only = 1, start = s[0] == '-';
        for (int i = start; i < n; i++) digits_only &= s[i] >= '0' && s[i] <= '9';
        digits_only &= n > start;
        long want = digits_only ? atol(s) : 0;
        int ok = digits_only && want >= -500 && want <= 500;
        int got = asp_parse_env_long("ASP_Z", s, -500, 500, &l, err, sizeof err) == 0;
        ck_assert_msg(got == ok, "'%s': accepted %d, reference %d", s, got, ok);
        if (ok) ck_assert_int_eq(l, want);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("atomic write");
    tcase_add_test(tc, t_write_atomic);
    tcase_add_test(tc, t_map_file);
    tcase_add_test(tc, t_mkdir_p);
    tcase_add_test(tc, t_env_strict);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
