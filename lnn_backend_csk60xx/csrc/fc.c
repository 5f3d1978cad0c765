/*
 * fc.c - LinearInt and BatchNorm2dInt.
 *
 *   LinearInt:      y[r, j] = RQ_out(b[j] + sum_k x[r, k] * w[j, k], shift),  shift = n_x + n_w - n_o
 *   BatchNorm2dInt: y[n, c, i] = RQ_out(x[n, c, i] * a[c] + b[c], shift)
 *
 * Dot products run in int32 over chunks of LNN_ACC32_TERMS terms (exact, see lnn_sim_internal.h)
 * and are summed in int64.
 */
#include "lnn_sim_internal.h"

lnn_sim_status lnn_sim_linear_s8(const lnn_sim_linear_params *p, int64_t rows, int32_t k, int32_t n,
                                 const int8_t *x, const int8_t *w, const int32_t *bias, void *y) {
    int64_t r;
    int32_t j;
    if (rows < 0 || k < 1 || n < 1 || !lnn_is_int_out(p->out_dtype)) return LNN_SIM_E_SHAPE;
    for (r = 0; r < rows; ++r) {
        const int8_t *xr = x + r * k;
        for (j = 0; j < n; ++j) {
            const int8_t *wr = w + (int64_t)j * k;
            int64_t acc = bias ? bias[j] : 0;
            int32_t k0;
            for (k0 = 0; k0 < k; k0 += LNN_ACC32_TERMS) {
                const int32_t k1 = k - k0 > LNN_ACC32_TERMS ? k0 + LNN_ACC32_TERMS : k;
                int32_t s = 0, i;
                for (i = k0; i < k1; ++i) s += (int32_t)xr[i] * (int32_t)wr[i];
                acc += s;
            }
            lnn_store(y, r * n + j, p->out_dtype, lnn_shr(acc, p->shift));
        }
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_batchnorm2d_s8(const lnn_sim_linear_params *p, const lnn_sim_shape4 *shape,
                                      const int8_t *x, const int8_t *a, const int32_t *b, void *y) {
    const int64_t hw = (int64_t)shape->h * shape->w;
    int64_t n, c, i;
    if (!lnn_is_int_out(p->out_dtype)) return LNN_SIM_E_SHAPE;
    for (n = 0; n < shape->n; ++n) {
        for (c = 0; c < shape->c; ++c) {
            const int64_t base = (n * shape->c + c) * hw;
            for (i = 0; i < hw; ++i)
                lnn_store(y, base + i, p->out_dtype, lnn_shr((int64_t)x[base + i] * a[c] + b[c], p->shift));
        }
    }
    return LNN_SIM_OK;
}
