/*
 * ops/softmax.c - SoftmaxInt, LogSoftmaxInt (spec/int8-seq-ops.md 2.4.4, 2.5.4; thinker venus/softmaxint.h,
 * venus/logsoftmaxint.h). NOT bit-verified against the vendor: the chip's core is the closed HiFi
 * vec_softmax32x32 / vec_logn_32x32; this file implements the model the spec states (int8-ops.md 3.23).
 *
 * x int8 at exponent n_x (0..25), rows of R = the last dimension (R <= 2048), y int8 at n_o. Per row:
 *
 *   x25 = SAT_32(x << (25 - n_x))                                   Q25
 *   d   = SAT_32(x25 - max x25) ;  t = SAT_32(R(d * 774541002 / 2^31))    log2-domain Q23 (<= 0)
 *   E   = (t >> 23) + 1 ;  f = (t & 0x7FFFFF) - 0x800000            f in [-1, 0) at Q23
 *   Y   = 57364 ; Y = R(Y * f / 2^23) + p for p in 446161, 2008107, 5813551, 8388575      2^f at Q23
 *   e   = trunc(Y * 2^E)                                            exp(d) at Q23
 *   S   = SAT_32(sum e) ;  k = nsa(S) - 8 ;  X = k < 0 ? S >> -k : SAT_32(S << k) ;  k = k + 1
 *   r   = 0xBB5000 - X ; twice: c = 2 (0x400000 - R(X r / 2^23)), r = r + R(r c / 2^23)
 *   r   = k < 0 ? r >> -k : SAT_32(r << k)
 *   y15 = SAT_32(R(r * e / 2^31))                                   Q15
 *   SoftmaxInt:    y = SAT_8(SHR(y15, 15 - n_o))                    n_o <= 15
 *   LogSoftmaxInt: l = y15 <= 0 ? -2^31 : min(0, R(ln(y15 / 2^15) * 2^25)) ; y = SAT_8(SHR(l, 25 - n_o))  n_o <= 25
 *
 * R(v) = floor(v + 0.5) (here exact integer rounding: (v + 2^(s-1)) >> s); >> is arithmetic (floor); nsa(S) is the
 * count of redundant sign bits of the int32 S. The log is libm's double log, rounded half up at Q25.
 * The scratch holds the row's e values (int64, R entries).
 */
#include "lnn_sim_model.h"

#include <math.h>

#define LNN_SM_ROW_MAX 2048
#define LNN_SM_NX_MAX 25
#define LNN_SM_Q 25

static int64_t lnn_sm_sat32(int64_t v) { return lnn_sat(v, INT32_MIN, INT32_MAX); }

/* floor(v / 2^s + 0.5), s >= 1 */
static int64_t lnn_sm_round(int64_t v, int32_t s) { return (v + ((int64_t)1 << (s - 1))) >> s; }

static int32_t lnn_sm_nsa(int64_t v) { /* 0 < v < 2^31: left shifts until bit 30 is set */
    int32_t k = 0;
    while (!(v & 0x40000000) && k < 31) {
        v <<= 1;
        ++k;
    }
    return k;
}

static const int64_t k_poly[5] = {57364, 446161, 2008107, 5813551, 8388575};

/* the Q15 probabilities of one row of Q25 values: y15[i] (int64), using e[] as scratch (R entries) */
static void lnn_sm_row(const int64_t *x25, int32_t row, int64_t *e, int64_t *y15) {
    int64_t mx = x25[0], s = 0, xn, r;
    int32_t i, j, k;
    for (i = 1; i < row; ++i)
        if (x25[i] > mx) mx = x25[i];
    for (i = 0; i < row; ++i) {
        const int64_t d = lnn_sm_sat32(x25[i] - mx);
        const int64_t t = lnn_sm_sat32(lnn_sm_round(d * 774541002, 31));
        const int64_t ex = (t >> 23) + 1;
        const int64_t f = (t & 0x7FFFFF) - 0x800000;
        int64_t y = k_poly[0];
        for (j = 1; j < 5; ++j) y = lnn_sm_round(y * f, 23) + k_poly[j];
        e[i] = ex >= 0 ? y << ex : (-ex >= 62 ? 0 : y >> -ex);
    }
    for (i = 0; i < row; ++i) s = lnn_sm_sat32(s + e[i]);
    k = lnn_sm_nsa(s) - 8;
    xn = k < 0 ? s >> -k : lnn_sm_sat32(s << k);
    k = k + 1;
    r = 0xBB5000 - xn;
    for (j = 0; j < 2; ++j) {
        const int64_t c = 2 * (0x400000 - lnn_sm_round(xn * r, 23));
        r = r + lnn_sm_round(r * c, 23);
    }
    r = k < 0 ? r >> -k : lnn_sm_sat32(r << k);
    for (i = 0; i < row; ++i) y15[i] = lnn_sm_sat32(lnn_sm_round(r * e[i], 31));
}

static int64_t lnn_sm_log_q25(int64_t s) {
    double l;
    if (s <= 0) return INT32_MIN;
    l = log((double)s / 32768.0) * 33554432.0;
    l = floor(l + 0.5);
    return l > 0.0 ? 0 : (int64_t)l;
}

/* rows x row int8 values at in_exponent -> int8 at out_exponent; scratch: 3 * row int64 entries */
lnn_sim_status lnn_sim_softmax_s8(int32_t in_exponent, int32_t out_exponent, int32_t log_form, int64_t rows,
                                  int32_t row, const int8_t *x, int8_t *y, int64_t *scratch) {
    const int32_t q = log_form ? LNN_SM_Q : 15;
    const int32_t shift = q - out_exponent;
    int64_t r0;
    int32_t i;
    int64_t *x25 = scratch, *e = scratch + row, *y15 = scratch + 2 * (int64_t)row;
    if (row < 1 || row > LNN_SM_ROW_MAX || rows < 0 || in_exponent < 0 || in_exponent > LNN_SM_NX_MAX || shift < 0)
        return LNN_SIM_E_ATTR;
    for (r0 = 0; r0 < rows; ++r0) {
        const int8_t *xr = x + r0 * row;
        int8_t *yr = y + r0 * row;
        for (i = 0; i < row; ++i) x25[i] = lnn_sm_sat32((int64_t)xr[i] * ((int64_t)1 << (LNN_SM_Q - in_exponent)));
        lnn_sm_row(x25, row, e, y15);
        for (i = 0; i < row; ++i) {
            const int64_t v = log_form ? lnn_sm_log_q25(y15[i]) : y15[i];
            yr[i] = (int8_t)lnn_sat(shift > 0 ? lnn_shr(v, shift) : v, INT8_MIN, INT8_MAX);
        }
    }
    return LNN_SIM_OK;
}

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_softmax(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                      size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const int log_form = op->type == LNN_SIM_OP_LOGSOFTMAX;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    int64_t row;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': %s takes no attributes", op->name, op->kernel->name);
    if (x->dtype != LNN_SIM_DT_INT8 || y->dtype != LNN_SIM_DT_INT8 || x->rank < 1 || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': %s needs an int8 input of rank >= 1 and writes int8 of its shape",
                        op->name, op->kernel->name);
    row = x->dims[x->rank - 1];
    if (row < 1 || row > LNN_SM_ROW_MAX)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': row length %lld is outside 1..%d", op->name, (long long)row,
                        LNN_SM_ROW_MAX);
    if (x->exponent < 0 || x->exponent > LNN_SM_NX_MAX)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': input exponent %d is outside 0..%d", op->name, (int)x->exponent,
                        LNN_SM_NX_MAX);
    if (y->exponent > (log_form ? LNN_SM_Q : 15) || (log_form ? LNN_SM_Q : 15) - y->exponent > 62)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent %d is above %d", op->name, (int)y->exponent,
                        log_form ? LNN_SM_Q : 15);
    op->rows = x->numel / row;
    op->k = (int32_t)row;
    need->acc = 3 * row;
    need->macs = lnn_mul_sat((uint64_t)x->numel, 12);
    return LNN_SIM_OK;
}

static lnn_sim_status run_softmax(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_softmax_s8(x->exponent, y->exponent, op->type == LNN_SIM_OP_LOGSOFTMAX, op->rows, op->k,
                              (const int8_t *)x->data, (int8_t *)y->data, m->acc64);
}

const lnn_op_kernel lnn_op_softmax = {"SoftmaxInt", 1, prepare_softmax, run_softmax, NULL};
const lnn_op_kernel lnn_op_logsoftmax = {"LogSoftmaxInt", 1, prepare_softmax, run_softmax, NULL};
