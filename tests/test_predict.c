/* The step-time predictor and the card profile reader: the built-ins
 * parse and round-trip, every refusal names its line and key, the rates
 * interpolate as the format says, attention's seconds match the FLOP count
 * computed here, and predictions are monotone: more S, more recompute or
 * more attention pieces never predict less time. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan/predict.h"
#include "plan_fixtures.h"

static void load_builtin(card_profile_t *p, const char *card) {
    char err[512];
    const char *t = profile_builtin_text(card);
    ck_assert_ptr_nonnull(t);
    ck_assert_msg(profile_parse(p, t, strlen(t), card, err, sizeof err) == 0, "%s", err);
}

START_TEST(test_builtins_parse_and_round_trip) {
    const char *cards[] = {"h100", "h200"};
    for (int i = 0; i < 2; i++) {
        card_profile_t p, q;
        load_builtin(&p, cards[i]);
        ck_assert_str_eq(p.card, cards[i]);
        ck_assert(p.peak_tflops == 989);
        ck_assert(p.gemm.n >= 3 && p.attn_fwd.n >= 2 && p.attn_bwd.n >= 2);
        char buf[8192];
        FILE *f = fmemopen(buf, sizeof buf, "w");
        profile_write(&p, f);
        fclose(f);
        char err[512];
        ck_assert_msg(profile_parse(&q, buf, strlen(buf), "written", err, sizeof err) == 0, "%s", err);
        for (double x = 1e8; x < 1e14; x *= 3.7)
            ck_assert(fabs(profile_gemm_flops_per_s(&q, x) / profile_gemm_flops_per_s(&p, x) - 1) < 1e-5);
        for (double s = 1024; s < 1e6; s *= 2.3)
            for (int hd = 64; hd <= 128; hd += 64)
                for (int b = 0; b <= 1; b++)
                    ck_assert(fabs(profile_attn_flops_per_s(&q, b, 0, s, hd) / profile_attn_flops_per_s(&p, b, 0, s, hd) -
                                   1) < 1e-5);
        ck_assert(q.h2d_bytes_per_s == p.h2d_bytes_per_s && q.host_adamw_per_s == p.host_adamw_per_s);
    }
    card_profile_t p;
    char err[512];
    ck_assert_int_eq(profile_select(&p, "h300", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "h300") && strstr(err, "h100, h200"), "%s", err);
}
END_TEST

#define HEAD "autosp-card-profile 1\n"
#define REST "peak_tflops 989\ngemm 1e9 100\nattn_fwd 1024 64 100\nattn_bwd 1024 64 90\nmemory_gbs 3000\n" \
             "pcie_h2d_gbs 50\npcie_d2h_gbs 50\nhost_adamw_gparams 1\n"

START_TEST(test_refusals) {
    static const struct { const char *text, *want[2]; } cases[] = {
        {"", {"x:1:", "first line must be"}},
        {"# only a comment\n\n", {"x:2:", "empty"}},
        {"card h100\n", {"x:1:", "not a card profile"}},
        {"autosp-card-profile 2\n" REST, {"x:1:", "version '2'"}},
        {HEAD REST "bogus 1\n", {"x:10: bogus:", "unknown key"}},
        {HEAD REST "peak_tflops 900\n", {"x:10: peak_tflops:", "given twice"}},
        {HEAD REST "gemm 1e9 50\n", {"x:10: gemm:", "second row"}},
        {HEAD REST "gemm 1e10\n", {"x:10: gemm:", "expects 2 numbers"}},
        {HEAD REST "gemm 1e10 abc\n", {"x:10: gemm:", "not a number"}},
        {HEAD REST "gemm 1e10 nan\n", {"x:10: gemm:", "not a number"}},
        {HEAD REST "gemm 1e10 -5\n", {"x:10: gemm:", "outside"}},
        {HEAD REST "gemm 1e10 5 6\n", {"x:10: gemm:", "unexpected '6'"}},
        {HEAD REST "attn_fwd 1000.5 64 3\n", {"x:10: attn_fwd:", "whole number"}},
        {HEAD REST "all_to_all_gbs 0 100\n", {"x:10: all_to_all_gbs:", "outside"}},
        {HEAD REST "card h1/00\n", {"x:10: card:", "character"}},
        {HEAD REST "card a b\n", {"x:10: card:", "unexpected 'b'"}},
        {HEAD "peak_tflops 989\n", {"x: gemm: missing", "every profile"}},
        {HEAD REST "autosp-card-profile 1\n", {"x:10:", "appears twice"}},
        {HEAD REST "memory_gbs 1\x01\n", {"x:10:", "not text"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        card_profile_t p;
        char err[1024] = "";
        ck_assert_msg(profile_parse(&p, cases[i].text, strlen(cases[i].text), "x", err, sizeof err) == -1,
                      "case %zu accepted", i);
        for (int k = 0; k < 2; k++)
            ck_assert_msg(strstr(err, cases[i].want[k]), "case %zu: '%s' lacks '%s'", i, err, cases[i].want[k]);
    }
    /* limits: too many rows, a long line, a NUL, too many bytes */
    char big[PROFILE_MAX_BYTES + 64];
    size_t n = (size_t)snprintf(big, sizeof big, HEAD REST);
    for (int i = 0; i < PROFILE_MAX_POINTS; i++) n += (size_t)snprintf(big + n, sizeof big - n, "gemm %d 10\n", 2 + i);
    card_profile_t p;
    char err[1024];
    ck_assert_int_eq(profile_parse(&p, big, n, "x", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "gemm: more than"), "%s", err);
    memset(big, ' ', sizeof big);
    memcpy(big, HEAD, strlen(HEAD));
    ck_assert_int_eq(profile_parse(&p, big, PROFILE_MAX_LINE + 40, "x", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "x:2: a line of"), "%s", err);
    ck_assert_int_eq(profile_parse(&p, HEAD "card\0x\n", strlen(HEAD) + 7, "x", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "x:2: a NUL"), "%s", err);
    ck_assert_int_eq(profile_parse(&p, big, PROFILE_MAX_BYTES + 1, "x", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "more than the"), "%s", err);
    ck_assert_int_eq(profile_load(&p, "/nonexistent/profile.txt", err, sizeof err), -1);
    ck_assert_msg(strstr(err, "/nonexistent/profile.txt") && strstr(err, "--calibrate"), "%s", err);
}
END_TEST

/* Log-linear interpolation against the formula, on random points. */
START_TEST(test_interpolation) {
    srand(7);
    for (int trial = 0; trial < 50; trial++) {
        char text[2048];
        double x0 = 1 + rand() % 1000, x1 = x0 * (1.5 + rand() % 100), y0 = 1 + rand() % 900, y1 = 1 + rand() % 900;
        snprintf(text, sizeof text, HEAD REST "gemm %.0f %.0f\ngemm %.0f %.0f\n", x1 * 1e9, y1, x0 * 1e9, y0);
        card_profile_t p;
        char err[512];
        ck_assert_msg(profile_parse(&p, text, strlen(text), "x", err, sizeof err) == 0, "%s", err);
        double x = x0 * pow(x1 / x0, (double)(rand() % 1000) / 1000.0);
        double want = y0 + (y1 - y0) * log(x / x0) / log(x1 / x0);
        double got = profile_gemm_flops_per_s(&p, x * 1e9) / 1e12;
        ck_assert_msg(fabs(got - want) < 1e-9 * (want + 1), "at %g: %g != %g", x, got, want);
        ck_assert(profile_gemm_flops_per_s(&p, x1 * 1e12) == y1 * 1e12);   /* clamped above */
    }
}
END_TEST

/* Attention's seconds: causal FLOPs 2 n len H hd (x2.5 backward) over the
 * profile's rate, plus the fixed cost per piece; monotone in n, pieces. */
START_TEST(test_attention_units) {
    card_profile_t p;
    load_builtin(&p, "h100");
    srand(11);
    for (int trial = 0; trial < 200; trial++) {
        double n = 1024.0 * (1 + rand() % 512), H = 1 + rand() % 64, hd = rand() % 2 ? 64 : 128;
        int bwd = rand() % 2, pieces = 1 + rand() % 16;
        double doc = rand() % 3 ? 0 : 512.0 * (1 + rand() % 64);
        double len = doc > 0 && doc < n ? doc : n;
        double want = 2.0 * n * len * H * hd * (bwd ? 2.5 : 1.0) / profile_attn_flops_per_s(&p, bwd, doc > 0, len, (int)hd) +
                      pieces * p.attn_piece_s;
        double got = predict_attention_s(&p, n, H, hd, doc, pieces, bwd);
        ck_assert_msg(fabs(got / want - 1) < 1e-12, "%g != %g", got, want);
        ck_assert(predict_attention_s(&p, n * 1.5, H, hd, doc, pieces, bwd) >= got);
        ck_assert(predict_attention_s(&p, n, H, hd, doc, pieces + 1, bwd) > got);
    }
    /* the measured anchor: 1B's attention at 64K, 37.7 ms forward, 106 ms backward (H100) */
    ck_assert(fabs(predict_attention_s(&p, 65536, 32, 64, 0, 1, 0) - 37.7e-3) < 1e-3);
    ck_assert(fabs(predict_attention_s(&p, 65536, 32, 64, 0, 1, 1) - 106e-3) < 2e-3);
}
END_TEST

static void predict_at(int model, int64_t S, sac_policy_t policy, double budget, step_prediction_t *o, plan_t *pl) {
    const model_t *m = get_model(model);
    config_t c = make_cfg(m, S, 1, 1, policy);
    plan_target_t t = bf16_target(budget);
    t.grad_bytes = 4;
    t.attention_scratch_bytes = attn_scratch;
    char err[512];
    int rc = plan_compile(pl, &c, m, 1, &t, err, sizeof err);
    ck_assert_msg(rc == 0, "S %lld: %s", (long long)S, err);
    card_profile_t p;
    load_builtin(&p, "h100");
    plan_predict(pl, &p, 0, o);
}

START_TEST(test_monotone_and_units) {
    static plan_t pl;
    step_prediction_t prev = {0}, o;
    for (int64_t S = 8192; S <= 262144; S += 8192 * (1 + S / 65536)) {
        predict_at(M_1B, S, SAC_AUTO, 79.0 * GiB, &o, &pl);
        ck_assert_msg(o.step_s >= prev.step_s, "S %lld predicts %g s, less than %g", (long long)S, o.step_s, prev.step_s);
        double sum = 0;
        for (int k = 0; k < PRED__COUNT; k++) {
            ck_assert(o.s[k] >= 0);
            sum += o.s[k];
        }
        ck_assert(fabs(sum - o.step_s) < 1e-9 * sum);
        /* tokens/s and MFU against the FLOP count of plan.c (bench/README.md) */
        ck_assert(fabs(o.tokens_per_s * o.step_s / (double)S - 1) < 1e-12);
        double mfu = plan_flops_per_token(pl.model, S) * (double)S / o.step_s / 989e12;
        ck_assert_msg(fabs(o.mfu / mfu - 1) < 1e-9, "mfu %g != %g", o.mfu, mfu);
        prev = o;
    }
    /* more recompute never predicts less: full against save_all at the same S */
    step_prediction_t save, full;
    for (int64_t S = 4096; S <= 65536; S *= 4) {
        predict_at(M_1B, S, SAC_SAVE_ALL, 0, &save, &pl);
        predict_at(M_1B, S, SAC_FULL, 0, &full, &pl);
        ck_assert(save.s[PRED_RECOMPUTE] == 0 && full.s[PRED_RECOMPUTE] > 0);
        ck_assert(full.step_s > save.step_s);
        /* the same GEMMs (tiles of the recomputed MLP may make their calls smaller, never faster) */
        ck_assert(full.s[PRED_GEMM] >= save.s[PRED_GEMM] * (1 - 1e-12));
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("predict");
    TCase *tc = tcase_create("predict");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_builtins_parse_and_round_trip);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_interpolation);
    tcase_add_test(tc, test_attention_units);
    tcase_add_test(tc, test_monotone_and_units);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
