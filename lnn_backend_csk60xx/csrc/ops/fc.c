/*
 * ops/fc.c - LinearInt.
 *
 *   LinearInt: y[r, j] = RQ_out(b[j] + sum_k x[r, k] * w[j, k], shift),  shift = n_x + n_w - n_o
 *
 * Dot products run in int32 over chunks of LNN_ACC32_TERMS terms (exact, see lnn_sim_internal.h)
 * and are summed in int64. On the avx512vnni path (lnn_gemm.h) the weights are packed at load time and
 * every row is a u8 x s8 GEMV (K <= LNN_ACC32_TERMS).
 */
#include "lnn_sim_model.h"

#include <stdlib.h>

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

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_linear(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                     size_t n) {
    const lnn_tensor *x, *w, *b = NULL, *y;
    int32_t d;
    if (op->n_in < 2 || op->n_in > 3 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs x, w, an optional bias and no attributes", op->name);
    x = LNN_IN(m, op, 0);
    w = LNN_IN(m, op, 1);
    y = LNN_OUT(m, op, 0);
    if (op->n_in == 3 && op->in[2] >= 0) b = LNN_IN(m, op, 2);
    if (x->dtype != LNN_SIM_DT_INT8 || w->dtype != LNN_SIM_DT_INT8 || !(w->flags & LNN_SIM_TF_CONST) ||
        !lnn_is_int_out(y->dtype) || x->rank < 1 || w->rank != 2 || y->rank != x->rank ||
        w->dims[1] != x->dims[x->rank - 1])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 x [..., K], constant int8 w [N, K], integer y",
                        op->name);
    for (d = 0; d + 1 < x->rank; ++d)
        if (x->dims[d] != y->dims[d]) return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': leading dimensions differ", op->name);
    if (y->dims[y->rank - 1] != w->dims[0])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output features differ from w", op->name);
    if (b != NULL && (b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != w->dims[0] ||
                      !(b->flags & LNN_SIM_TF_CONST)))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': bias must be a constant int32 vector of %d", op->name,
                        w->dims[0]);
    op->k = w->dims[1];
    op->n = w->dims[0];
    op->rows = x->numel / op->k;
    need->macs = lnn_mul_sat((uint64_t)y->numel, (uint64_t)op->k);
    op->p.lin.shift = x->exponent + w->exponent - y->exponent;
    op->p.lin.out_dtype = y->dtype;
    if (m->isa == LNN_ISA_AVX512VNNI && op->k <= LNN_ACC32_TERMS && w->region == LNN_SIM_REGION_FLASH) {
        const int64_t bytes = lnn_gemm_linear_packed_bytes(op->n, op->k);
        op->packed = (uint8_t *)malloc((size_t)bytes);
        if (op->packed == NULL)
            return LNN_FAIL(LNN_SIM_E_NOMEM, "op '%s': out of memory for %lld bytes of packed weights", op->name,
                            (long long)bytes);
        lnn_gemm_linear_pack((const int8_t *)(m->weights + w->offset), op->n, op->k, op->packed);
        need->col = ((int64_t)op->k + 3) & ~(int64_t)3; /* one row of x + 128 */
    }
    return LNN_SIM_OK;
}

static lnn_sim_status run_linear(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *w = LNN_IN(m, op, 1), *y = LNN_OUT(m, op, 0);
    const int32_t *bias = op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)LNN_IN(m, op, 2)->data : NULL;
    (void)msg, (void)n;
    if (op->packed != NULL) {
        m->col_op = -1; /* the scratch no longer holds a conv's window matrix */
        lnn_gemm_linear_vnni(op->packed, op->n, op->k, (const int8_t *)x->data, op->rows, bias, op->p.lin.shift,
                             op->p.lin.out_dtype, y->data, (uint8_t *)m->col);
        return LNN_SIM_OK;
    }
    return lnn_sim_linear_s8(&op->p.lin, op->rows, op->k, op->n, (const int8_t *)x->data, (const int8_t *)w->data,
                             bias, y->data);
}

const lnn_op_kernel lnn_op_linear = {"LinearInt", 1, prepare_linear, run_linear};
