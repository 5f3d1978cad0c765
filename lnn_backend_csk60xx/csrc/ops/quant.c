/*
 * ops/quant.c - the float/integer boundary and rescaling: Quant, Dequant, Requant.
 *
 *   Quant:   q = SAT_8(floorf(2^n * x + 0.5f)) in float32 (2^n * x is exact; NaN maps to 0)
 *   Dequant: y = q * 2^-n in float32
 *   Requant (and iqCat's per-input rescale, lnn_sim_rescale_s8): y = SAT_out(SHR(q, n_in - n_out))
 */
#include "lnn_sim_model.h"

#include <math.h>

/* ---- reference kernels ------------------------------------------------------------------------- */

lnn_sim_status lnn_sim_quant_s8(int32_t exponent, int64_t count, const float *x, int8_t *y) {
    const float scale = ldexpf(1.0f, exponent);
    int64_t i;
    for (i = 0; i < count; ++i) {
        const float t = scale * x[i];
        const float v = floorf(t + 0.5f);
        if (v != v) {
            y[i] = 0;
        } else {
            y[i] = (int8_t)(v >= 127.0f ? 127 : (v <= -128.0f ? -128 : (int32_t)v));
        }
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_dequant_s8(int32_t exponent, int32_t in_dtype, int64_t count, const void *x, float *y) {
    const float scale = ldexpf(1.0f, -exponent);
    int64_t i;
    if (!lnn_is_int_out(in_dtype) && in_dtype != LNN_SIM_DT_UINT8) return LNN_SIM_E_SHAPE;
    for (i = 0; i < count; ++i) y[i] = (float)lnn_load(x, i, in_dtype) * scale;
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_rescale_s8(int32_t shift, int32_t out_dtype, int64_t count, const int8_t *x, void *y) {
    int64_t i;
    if (!lnn_is_int_out(out_dtype)) return LNN_SIM_E_SHAPE;
    for (i = 0; i < count; ++i) lnn_store(y, i, out_dtype, lnn_shr(x[i], shift));
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

static lnn_sim_status prepare_quant(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0 || x->dtype != LNN_SIM_DT_FLOAT32 || y->dtype != LNN_SIM_DT_INT8 || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': Quant maps float32 to int8 of the same shape", op->name);
    return LNN_SIM_OK;
}

static lnn_sim_status run_quant(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_quant_s8(y->exponent, x->numel, (const float *)x->data, (int8_t *)y->data);
}

static lnn_sim_status prepare_dequant(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                      size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0 || !(lnn_is_int_out(x->dtype) || x->dtype == LNN_SIM_DT_UINT8) ||
        y->dtype != LNN_SIM_DT_FLOAT32 || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': Dequant maps an integer tensor to float32 of the same shape",
                        op->name);
    return LNN_SIM_OK;
}

static lnn_sim_status run_dequant(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_dequant_s8(x->exponent, x->dtype, x->numel, x->data, (float *)y->data);
}

static lnn_sim_status prepare_requant(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                      size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0 || x->dtype != LNN_SIM_DT_INT8 || !lnn_is_int_out(y->dtype) || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': Requant maps int8 to int8/16/32 of the same shape", op->name);
    op->p.rq.shift = x->exponent - y->exponent;
    op->p.rq.out_dtype = y->dtype;
    return LNN_SIM_OK;
}

static lnn_sim_status run_requant(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_rescale_s8(op->p.rq.shift, op->p.rq.out_dtype, x->numel, (const int8_t *)x->data, y->data);
}

const lnn_op_kernel lnn_op_quant = {"Quant", 1, prepare_quant, run_quant};
const lnn_op_kernel lnn_op_dequant = {"Dequant", 1, prepare_dequant, run_dequant};
const lnn_op_kernel lnn_op_requant = {"Requant", 1, prepare_requant, run_requant};
