/*
 * ops/bmm.c - BmmInt (spec/int8-seq-ops.md 2.9.4, int8-ops.md 3.27; thinker venus/bmmint.h, mat_mul_q7_int8).
 *
 * x int8 [B, M, K] (or [M, K]) at n_x, y int8 [B, K, N] (or [K, N]) at n_y, z int8 [B, M, N] at n_o, equal ranks 2
 * or 3 and equal batches. Per batch: z_b = SAT_8(SHR(x_b @ y_b, n_x + n_y - n_o)), the products summed exactly in
 * int64, one saturation. The chip splits the left matrix into row blocks above 64 KB; that does not change the result.
 * The loader refuses n_o > n_x + n_y (the shift is unsigned on the chip).
 */
#include "lnn_sim_model.h"

lnn_sim_status lnn_sim_bmm_s8(int32_t shift, int64_t batch, int32_t m, int32_t k, int32_t n, const int8_t *x,
                              const int8_t *y, int8_t *z) {
    int64_t b, i, j, t;
    if (shift < 0 || shift > 62 || batch < 0 || m < 0 || k < 0 || n < 0) return LNN_SIM_E_ATTR;
    for (b = 0; b < batch; ++b) {
        const int8_t *xb = x + b * m * k, *yb = y + b * k * n;
        int8_t *zb = z + b * m * n;
        for (i = 0; i < m; ++i)
            for (j = 0; j < n; ++j) {
                int64_t acc = 0;
                for (t = 0; t < k; ++t) acc += (int64_t)xb[i * k + t] * yb[t * n + j];
                zb[i * n + j] = (int8_t)lnn_sat(shift > 0 ? lnn_shr(acc, shift) : acc, INT8_MIN, INT8_MAX);
            }
    }
    return LNN_SIM_OK;
}

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_bmm(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *x, *y, *z;
    int32_t r;
    int64_t shift;
    if (op->n_in != 2 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': BmmInt needs two inputs and no attributes", op->name);
    x = LNN_IN(m, op, 0);
    y = LNN_IN(m, op, 1);
    z = LNN_OUT(m, op, 0);
    r = x->rank;
    if (x->dtype != LNN_SIM_DT_INT8 || y->dtype != LNN_SIM_DT_INT8 || z->dtype != LNN_SIM_DT_INT8 ||
        (r != 2 && r != 3) || y->rank != r || z->rank != r)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': BmmInt needs int8 operands of equal rank 2 or 3 and writes int8",
                        op->name);
    if (x->dims[r - 1] != y->dims[r - 2] || (r == 3 && (x->dims[0] != y->dims[0] || z->dims[0] != x->dims[0])) ||
        z->dims[r - 2] != x->dims[r - 2] || z->dims[r - 1] != y->dims[r - 1])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': BmmInt operands [B, M, K] x [B, K, N] -> [B, M, N] do not match",
                        op->name);
    shift = (int64_t)x->exponent + y->exponent - z->exponent;
    if (shift < 0 || shift > 62)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent %d is above n_x + n_y = %d", op->name,
                        (int)z->exponent, (int)(x->exponent + y->exponent));
    op->rows = r == 3 ? x->dims[0] : 1;
    op->k = (int32_t)x->dims[r - 1];
    op->n = (int32_t)y->dims[r - 1];
    op->p.lin.shift = (int32_t)shift; /* a matrix product: the linear params */
    op->p.lin.out_dtype = LNN_SIM_DT_INT8;
    need->macs = lnn_mul_sat((uint64_t)z->numel, (uint64_t)op->k);
    return LNN_SIM_OK;
}

static lnn_sim_status run_bmm(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_IN(m, op, 1), *z = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_bmm_s8(op->p.lin.shift, op->rows, (int32_t)x->dims[x->rank - 2], op->k, op->n,
                          (const int8_t *)x->data, (const int8_t *)y->data, (int8_t *)z->data);
}

const lnn_op_kernel lnn_op_bmm = {"BmmInt", 1, prepare_bmm, run_bmm, NULL};
