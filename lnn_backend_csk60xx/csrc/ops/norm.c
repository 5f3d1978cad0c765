/*
 * ops/norm.c - BatchNorm2dInt.
 *
 *   BatchNorm2dInt: y[n, c, i] = RQ_out(x[n, c, i] * a[c] + b[c], shift),  shift = n_x + n_a - n_o
 *
 * |x * a| <= 2^14 and |b| < 2^31, so the sum is exact in int64.
 */
#include "lnn_sim_model.h"

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

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_batchnorm(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                        size_t n) {
    const lnn_tensor *x, *a, *b, *y;
    (void)need;
    if (op->n_in != 3 || op->in[0] < 0 || op->in[1] < 0 || op->in[2] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs x, a, b and no attributes", op->name);
    x = LNN_IN(m, op, 0);
    a = LNN_IN(m, op, 1);
    b = LNN_IN(m, op, 2);
    y = LNN_OUT(m, op, 0);
    if (x->dtype != LNN_SIM_DT_INT8 || x->rank != 4 || !lnn_same_dims(x, y) || !lnn_is_int_out(y->dtype) ||
        a->dtype != LNN_SIM_DT_INT8 || a->rank != 1 || a->dims[0] != x->dims[1] || !(a->flags & LNN_SIM_TF_CONST) ||
        b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != x->dims[1] || !(b->flags & LNN_SIM_TF_CONST))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 NCHW x, constant int8 a [C] and int32 b [C]",
                        op->name);
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1]; op->s_in.h = x->dims[2]; op->s_in.w = x->dims[3];
    op->p.lin.shift = x->exponent + a->exponent - y->exponent;
    op->p.lin.out_dtype = y->dtype;
    return LNN_SIM_OK;
}

static lnn_sim_status run_batchnorm(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *a = LNN_IN(m, op, 1), *b = LNN_IN(m, op, 2), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_batchnorm2d_s8(&op->p.lin, &op->s_in, (const int8_t *)x->data, (const int8_t *)a->data,
                                  (const int32_t *)b->data, y->data);
}

const lnn_op_kernel lnn_op_batchnorm2d = {"BatchNorm2dInt", 1, prepare_batchnorm, run_batchnorm};
