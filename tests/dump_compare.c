/* Compare two gradient dumps (autosp-train --dump-grads) tensor by tensor.
 *
 *   dump_compare CONFIG REF OTHER TOL [SECTION.KEY=VALUE ...]
 *
 * Fails (exit 1) when any step's loss differs by more than TOL (relative) or
 * any parameter's gradient has ||other - ref|| / ||ref|| > TOL. CONFIG gives
 * (with the runs' model overrides) the parameter table so the report names
 * tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "model/model.h"
#include "train.h"

typedef struct {
    int64_t n, steps;
    double *loss;
    float *grad;
} dump_t;

static int load(const char *path, dump_t *d) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "dump_compare: cannot open %s\n", path); return -1; }
    char magic[8];
    int ok = fread(magic, 1, 8, f) == 8 && !memcmp(magic, DUMP_MAGIC, 8) && fread(&d->n, 8, 1, f) == 1 &&
             fread(&d->steps, 8, 1, f) == 1 && d->n > 0 && d->steps > 0;
    if (ok) {
        d->loss = malloc((size_t)d->steps * sizeof(double));
        d->grad = malloc((size_t)d->n * sizeof(float));
        ok = d->loss && d->grad && fread(d->loss, sizeof(double), (size_t)d->steps, f) == (size_t)d->steps &&
             fread(d->grad, sizeof(float), (size_t)d->n, f) == (size_t)d->n;
    }
    fclose(f);
    if (!ok) fprintf(stderr, "dump_compare: %s is not a complete gradient dump\n", path);
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: dump_compare CONFIG REF OTHER TOL [SECTION.KEY=VALUE ...]\n");
        return 2;
    }
    double tol = atof(argv[4]);
    char err[2048];
    config_t cfg;
    if (config_load(&cfg, argv[1], argv + 5, argc - 5, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 2; }
    model_t m;
    if (model_build(&m, &cfg.model, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 2; }
    dump_t a, b;
    if (load(argv[2], &a) || load(argv[3], &b)) return 1;
    if (a.n != b.n || a.n != (int64_t)m.n_params) {
        fprintf(stderr, "dump_compare: parameter counts differ (%lld, %lld, model %zu)\n", (long long)a.n,
                (long long)b.n, m.n_params);
        return 1;
    }
    int fail = 0;
    int64_t steps = a.steps < b.steps ? a.steps : b.steps;
    if (a.steps != b.steps) { fprintf(stderr, "dump_compare: step counts differ\n"); fail = 1; }
    for (int64_t s = 0; s < steps; s++) {
        double rel = fabs(a.loss[s] - b.loss[s]) / fabs(a.loss[s]);
        printf("loss step %lld: %.7f vs %.7f (rel %.2e)\n", (long long)s + 1, a.loss[s], b.loss[s], rel);
        if (!(rel <= tol)) fail = 1;
    }
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < m.nparams; i++) {
        const param_t *p = &m.params[i];
        double num = 0, den = 0;
        for (size_t j = 0; j < p->numel; j++) {
            double x = a.grad[p->offset + j], y = b.grad[p->offset + j];
            num += (x - y) * (x - y);
            den += x * x;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(den > 0)) { printf("gradient of %s is zero in the reference\n", p->name); fail = 1; }
        if (!(rel <= worst)) { worst = rel; worst_name = p->name; }
        if (!(rel <= tol)) { printf("gradient %s: relative error %.3e > %.1e\n", p->name, rel, tol); fail = 1; }
    }
    printf("worst gradient relative error %.3e (%s), tolerance %.1e: %s\n", worst, worst > 0 ? worst_name : "all tensors equal", tol,
           fail ? "FAIL" : "ok");
    free(a.loss); free(a.grad); free(b.loss); free(b.grad);
    model_free(&m);
    return fail;
}
