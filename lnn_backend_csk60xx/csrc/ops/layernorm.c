/*
 * ops/layernorm.c - LayerNormInt (spec/int8-seq-ops.md 2.3.4; thinker venus/layernormint.h).
 *
 * x int8 at exponent n_x, gamma int16 [T] at n_g, beta int32 [T] at 10 + n_g, y int8 at n_o. The row length T
 * is len(gamma): the last dimension of x, or the product of the last two. Per row:
 *
 *   s1 = sum x ;  s2 = sum x^2
 *   q_eps = floor(f32(f32(f32(1e-5f * 2^(2 n_x)) * T) * T) + 0.5)      (eps is fixed on the chip)
 *   D = wrap32(T * s2) - wrap32(s1 * s1) + q_eps                        (the chip forms the products in int32)
 *   D >= 1: k = floor(msb(D) / 2), t = D shifted to [256, 1023] (truncating), r = rsqrt_q14(t), sh = k + 5
 *   D == 0: r = rsqrt_q14(256), sh = 4
 *   u = SAT_16(SHR(SAT_32(SAT_32(T * x) - s1) * r, sh))                  (the normalized value, Q10)
 *   y = SAT_8(LSHR(u * gamma + beta, 10 + n_g - n_o))                   (exact in int64, one saturation)
 *
 * rsqrt_q14(t) = min(32767, floor(2^14 / sqrt(t / 1024))) is the chip's 768-entry table; it equals
 * isqrt(floor(2^38 / t)), computed here with integers.
 *
 * The loader accepts only the contract the chip is exact on (spec 2.3.5, 6.4): 4 <= T <= 362 (T < 4: the kernel's
 * scratch buffers alias; T > 362: T * sum x^2 or (sum x)^2 can wrap int32 and give a negative D, an out-of-bounds
 * table read), 0 <= n_x <= 15 (the kernel forms 1 << 2 n_x as a C int), n_o <= 10 + n_g (the shift is unsigned).
 * lnn_sim_layernorm_s8 itself emulates the int32 wrap and refuses a row whose D is negative or >= 2^48.
 */
#include "lnn_sim_model.h"

#include <math.h>

#define LNN_LN_T_MIN 4      /* scratch aliasing below */
#define LNN_LN_T_MAX 362    /* T * T * 128^2 < 2^31: no int32 wrap for any int8 row */
#define LNN_LN_NX_MAX 15    /* 1 << 2 n_x as a C int */
#define LNN_LN_Q 10         /* the normalized value's format */

/* isqrt(floor(2^38 / t)) = floor(2^14 / sqrt(t / 1024)), capped at 32767 (t in [256, 1023]) */
static int64_t lnn_ln_rsqrt(int64_t t) {
    const uint64_t v = ((uint64_t)1 << 38) / (uint64_t)t;
    uint64_t lo = 0, hi = (uint64_t)1 << 20;
    while (hi - lo > 1) {
        const uint64_t mid = (lo + hi) / 2;
        if (mid * mid <= v) lo = mid;
        else hi = mid;
    }
    return lo > 32767 ? 32767 : (int64_t)lo;
}

static int64_t lnn_wrap32(int64_t v) { return (int64_t)(int32_t)(uint32_t)(uint64_t)v; }

static int32_t lnn_msb(int64_t v) { /* v >= 1 */
    int32_t b = 0;
    while (v >> (b + 1)) ++b;
    return b;
}

lnn_sim_status lnn_sim_layernorm_s8(int32_t in_exponent, int32_t gamma_exponent, int32_t out_exponent, int64_t rows,
                                    int32_t row, const int8_t *x, const int16_t *gamma, const int32_t *beta,
                                    int8_t *y) {
    const int32_t shift = LNN_LN_Q + gamma_exponent - out_exponent;
    float fe;
    int64_t q_eps, r0;
    if (row < 1 || rows < 0 || in_exponent < 0 || in_exponent > LNN_LN_NX_MAX || shift < 0 || shift > 62)
        return LNN_SIM_E_ATTR;
    fe = 1e-5f * (float)(1 << (2 * in_exponent));
    fe = fe * (float)row;
    fe = fe * (float)row;
    q_eps = (int64_t)floor((double)fe + 0.5);
    for (r0 = 0; r0 < rows; ++r0) {
        const int8_t *xr = x + r0 * row;
        int8_t *yr = y + r0 * row;
        int64_t s1 = 0, s2 = 0, d, r, i;
        int32_t sh;
        for (i = 0; i < row; ++i) {
            s1 += xr[i];
            s2 += (int64_t)xr[i] * xr[i];
        }
        d = lnn_wrap32((int64_t)row * s2) - lnn_wrap32(s1 * s1) + q_eps;
        if (d < 0 || d >= ((int64_t)1 << 48)) return LNN_SIM_E_LIMIT;
        if (d == 0) {
            r = lnn_ln_rsqrt(256);
            sh = 4;
        } else {
            const int32_t k = lnn_msb(d) / 2;
            const int64_t t = 2 * k >= 8 ? d >> (2 * k - 8) : d << (8 - 2 * k);
            r = lnn_ln_rsqrt(t);
            sh = k + 5;
        }
        for (i = 0; i < row; ++i) {
            const int64_t num = lnn_sat(lnn_sat((int64_t)row * xr[i], INT32_MIN, INT32_MAX) - s1, INT32_MIN,
                                        INT32_MAX);
            const int64_t u = lnn_sat(lnn_shr(num * r, sh), INT16_MIN, INT16_MAX);
            const int64_t acc = u * gamma[i] + beta[i];
            yr[i] = (int8_t)lnn_sat(shift > 0 ? lnn_shr(acc, shift) : acc, INT8_MIN, INT8_MAX);
        }
    }
    return LNN_SIM_OK;
}

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_layernorm(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                        size_t n) {
    const lnn_tensor *x, *g, *b, *y;
    int64_t row, last;
    if (op->n_in != 3 || op->in[0] < 0 || op->in[1] < 0 || op->in[2] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': LayerNormInt needs x, gamma, beta and no attributes", op->name);
    x = LNN_IN(m, op, 0);
    g = LNN_IN(m, op, 1);
    b = LNN_IN(m, op, 2);
    y = LNN_OUT(m, op, 0);
    if (x->dtype != LNN_SIM_DT_INT8 || x->rank < 3 || y->dtype != LNN_SIM_DT_INT8 || !lnn_same_dims(x, y) ||
        g->dtype != LNN_SIM_DT_INT16 || g->rank != 1 || !(g->flags & LNN_SIM_TF_CONST) ||
        b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != g->dims[0] || !(b->flags & LNN_SIM_TF_CONST))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': LayerNormInt needs int8 x of rank >= 3, constant int16 gamma [T] "
                        "and int32 beta [T], and writes int8 of x's shape", op->name);
    row = g->dims[0];
    last = x->dims[x->rank - 1];
    if (row != last && row != last * x->dims[x->rank - 2])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': gamma has %lld entries, not the last dimension (%lld) or the "
                        "product of the last two", op->name, (long long)row, (long long)last);
    if (row < LNN_LN_T_MIN || row > LNN_LN_T_MAX)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': row length %lld is outside %d..%d (the kernel's scratch aliases "
                        "below; int32 sums can wrap above)", op->name, (long long)row, LNN_LN_T_MIN, LNN_LN_T_MAX);
    if (x->exponent < 0 || x->exponent > LNN_LN_NX_MAX)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': input exponent %d is outside 0..%d", op->name, (int)x->exponent,
                        LNN_LN_NX_MAX);
    if (g->exponent < -LNN_SIM_MAX_EXPONENT || g->exponent > LNN_SIM_MAX_EXPONENT ||
        b->exponent != LNN_LN_Q + g->exponent)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': beta's exponent %d is not 10 + gamma's (%d)", op->name,
                        (int)b->exponent, (int)g->exponent);
    if (y->exponent > LNN_LN_Q + g->exponent || LNN_LN_Q + g->exponent - y->exponent > 62)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent %d is above 10 + gamma's exponent (%d)", op->name,
                        (int)y->exponent, (int)g->exponent);
    op->rows = x->numel / row;
    op->k = (int32_t)row;
    need->macs = lnn_mul_sat((uint64_t)x->numel, 3);
    return LNN_SIM_OK;
}

static lnn_sim_status run_layernorm(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *g = LNN_IN(m, op, 1), *b = LNN_IN(m, op, 2), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_layernorm_s8(x->exponent, g->exponent, y->exponent, op->rows, op->k, (const int8_t *)x->data,
                                (const int16_t *)g->data, (const int32_t *)b->data, (int8_t *)y->data);
}

const lnn_op_kernel lnn_op_layernorm = {"LayerNormInt", 1, prepare_layernorm, run_layernorm, NULL};
