/*
 * eltwise.c - element-wise kernels: iqAdd, iqSub, iqMul, Quant, Dequant, Requant/rescale, Relu/Clip,
 * and Transpose.
 *
 *   iqAdd: y = SAT_8(SHR(x, n_x - n_o) + SHR(y, n_y - n_o))   (each operand rescaled separately)
 *   iqSub: y = SAT_8(SHR(x, n_x - n_o) - SHR(y, n_y - n_o))   (intended semantics, spec 3.15)
 *   iqMul: y = SAT_8(SHR(x * y, n_x + n_y - n_o))
 *   Quant: q = SAT_8(floorf(2^n * x + 0.5f)) in float32 (2^n * x is exact; NaN maps to 0)
 *   Dequant: y = q * 2^-n in float32
 *   rescale (Requant, iqCat inputs): y = SAT_out(SHR(q, n_in - n_out))
 *   Slice: y[i...] = x[start + i * step ...] (pure data movement; dtype and scale unchanged)
 */
#include "lnn_sim_internal.h"

#include <math.h>

lnn_sim_status lnn_sim_eltwise_s8(const lnn_sim_eltwise_params *p, int64_t count, const int8_t *x,
                                  const int8_t *y, int8_t *out) {
    int64_t i;
    const int same = p->y_inner == 1 && p->y_period == count;
    if (p->y_inner < 1 || p->y_period < 1) return LNN_SIM_E_ATTR;
    switch (p->op) {
    case LNN_SIM_OP_ADD:
        if (p->shift_x == 0 && p->shift_y == 0) {
            for (i = 0; i < count; ++i) out[i] = (int8_t)lnn_sat((int32_t)x[i] + y[i], -128, 127);
        } else {
            for (i = 0; i < count; ++i)
                out[i] = (int8_t)lnn_sat(lnn_shr(x[i], p->shift_x) + lnn_shr(y[i], p->shift_y), -128, 127);
        }
        return LNN_SIM_OK;
    case LNN_SIM_OP_SUB:
        for (i = 0; i < count; ++i)
            out[i] = (int8_t)lnn_sat(lnn_shr(x[i], p->shift_x) - lnn_shr(y[i], p->shift_y), -128, 127);
        return LNN_SIM_OK;
    case LNN_SIM_OP_MUL:
        if (same) {
            for (i = 0; i < count; ++i) out[i] = (int8_t)lnn_sat(lnn_shr((int64_t)x[i] * y[i], p->shift_x), -128, 127);
        } else {
            for (i = 0; i < count; ++i) {
                const int64_t yv = y[(i / p->y_inner) % p->y_period];
                out[i] = (int8_t)lnn_sat(lnn_shr((int64_t)x[i] * yv, p->shift_x), -128, 127);
            }
        }
        return LNN_SIM_OK;
    default:
        return LNN_SIM_E_ATTR;
    }
}

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

lnn_sim_status lnn_sim_clip(int32_t dtype, int64_t lo, int64_t hi, int64_t count, const void *x, void *y) {
    int64_t i;
    if (!lnn_is_int_out(dtype)) return LNN_SIM_E_SHAPE;
    if (dtype == LNN_SIM_DT_INT8) {
        const int8_t *xs = (const int8_t *)x;
        int8_t *ys = (int8_t *)y;
        const int8_t l = (int8_t)lnn_sat(lo, -128, 127), h = (int8_t)lnn_sat(hi, -128, 127);
        for (i = 0; i < count; ++i) ys[i] = xs[i] < l ? l : (xs[i] > h ? h : xs[i]);
        return LNN_SIM_OK;
    }
    for (i = 0; i < count; ++i) lnn_store(y, i, dtype, lnn_sat(lnn_load(x, i, dtype), lo, hi));
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_transpose(int32_t rank, const int32_t *dims, const int32_t *perm, int32_t elem_size,
                                 const void *x, void *y) {
    int64_t in_stride[LNN_SIM_MAX_RANK], out_dims[LNN_SIM_MAX_RANK], step[LNN_SIM_MAX_RANK], idx[LNN_SIM_MAX_RANK];
    int64_t total = 1, i, src = 0;
    int32_t d;
    const uint8_t *xs = (const uint8_t *)x;
    uint8_t *ys = (uint8_t *)y;
    if (rank < 1 || rank > LNN_SIM_MAX_RANK || elem_size < 1) return LNN_SIM_E_SHAPE;
    in_stride[rank - 1] = 1;
    for (d = rank - 2; d >= 0; --d) in_stride[d] = in_stride[d + 1] * dims[d + 1];
    for (d = 0; d < rank; ++d) {
        out_dims[d] = dims[perm[d]];
        step[d] = in_stride[perm[d]];
        idx[d] = 0;
        total *= out_dims[d];
    }
    for (i = 0; i < total; ++i) {
        memcpy(ys + i * elem_size, xs + src * elem_size, (size_t)elem_size);
        for (d = rank - 1; d >= 0; --d) { /* odometer over the output index */
            src += step[d];
            if (++idx[d] < out_dims[d]) break;
            src -= step[d] * out_dims[d];
            idx[d] = 0;
        }
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_slice(int32_t rank, const int32_t *in_dims, const int32_t *out_dims, const int32_t *starts,
                             const int32_t *steps, int32_t elem_size, const void *x, void *y) {
    int64_t in_stride[LNN_SIM_MAX_RANK], idx[LNN_SIM_MAX_RANK], rows = 1, r, src;
    int32_t d;
    const uint8_t *xs = (const uint8_t *)x;
    uint8_t *ys = (uint8_t *)y;
    const int32_t last = rank - 1;
    if (rank < 1 || rank > LNN_SIM_MAX_RANK || elem_size < 1) return LNN_SIM_E_SHAPE;
    in_stride[last] = 1;
    for (d = last - 1; d >= 0; --d) in_stride[d] = in_stride[d + 1] * in_dims[d + 1];
    src = 0;
    for (d = 0; d < rank; ++d) {
        idx[d] = 0;
        src += (int64_t)starts[d] * in_stride[d];
        if (d < last) rows *= out_dims[d];
    }
    /* one run along the last axis per output row; an odometer walks the leading axes */
    for (r = 0; r < rows; ++r) {
        uint8_t *dst = ys + r * (int64_t)out_dims[last] * elem_size;
        if (steps[last] == 1) {
            memcpy(dst, xs + src * elem_size, (size_t)out_dims[last] * (size_t)elem_size);
        } else {
            int64_t j;
            for (j = 0; j < out_dims[last]; ++j)
                memcpy(dst + j * elem_size, xs + (src + j * steps[last]) * elem_size, (size_t)elem_size);
        }
        for (d = last - 1; d >= 0; --d) {
            src += steps[d] * in_stride[d];
            if (++idx[d] < out_dims[d]) break;
            src -= (int64_t)steps[d] * in_stride[d] * out_dims[d];
            idx[d] = 0;
        }
    }
    return LNN_SIM_OK;
}
