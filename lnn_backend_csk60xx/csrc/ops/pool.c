/*
 * ops/pool.c - AvgPool2dInt and MaxPool, NCHW: reference kernels and registrations.
 *
 * AvgPool2dInt (count_include_pad, area A = kh * kw even where the window covers padding):
 *   s = sum of the window (padding counts as 0), d = n_o - n_x,
 *   y = SAT_out(floor(s * 2^d / A + 0.5)), computed exactly as
 *       d >= 0: floor((2 * s * 2^d + A) / (2A));   d < 0: floor((2 * s + A * 2^-d) / (2 * A * 2^-d)).
 *   For a power-of-two A and d = 0 this is RQ_8(s, log2 A), the chip's shift path.
 * MaxPool: the maximum of the window cells inside the input (padding never wins).
 */
#include "lnn_sim_model.h"

lnn_sim_status lnn_sim_avgpool2d_s8(const lnn_sim_pool_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                    const lnn_sim_shape4 *out, void *y) {
    const int64_t area = (int64_t)p->kh * p->kw;
    const int64_t hw_in = (int64_t)in->h * in->w;
    int64_t den, nc, oh, ow;
    if (p->shift_up > LNN_SIM_MAX_POOL_SHIFT || p->shift_up < -LNN_SIM_MAX_POOL_SHIFT || area < 1 || !lnn_is_int_out(p->out_dtype)) return LNN_SIM_E_ATTR;
    den = p->shift_up >= 0 ? 2 * area : 2 * area * ((int64_t)1 << -p->shift_up);
    for (nc = 0; nc < (int64_t)in->n * in->c; ++nc) {
        const int8_t *xc = x + nc * hw_in;
        for (oh = 0; oh < out->h; ++oh) {
            const int64_t h0 = oh * p->sh - p->pt;
            for (ow = 0; ow < out->w; ++ow) {
                const int64_t w0 = ow * p->sw - p->pl;
                int64_t s = 0, ky, kx, num;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int64_t ih = h0 + ky * p->dh;
                    if (ih < 0 || ih >= in->h) continue;
                    for (kx = 0; kx < p->kw; ++kx) {
                        const int64_t iw = w0 + kx * p->dw;
                        if (iw >= 0 && iw < in->w) s += xc[ih * in->w + iw];
                    }
                }
                num = p->shift_up >= 0 ? 2 * s * ((int64_t)1 << p->shift_up) + area : 2 * s + den / 2;
                lnn_store(y, (nc * out->h + oh) * out->w + ow, p->out_dtype, lnn_floor_div(num, den));
            }
        }
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_maxpool2d_s8(const lnn_sim_pool_params *p, int32_t dtype, const lnn_sim_shape4 *in,
                                    const void *x, const lnn_sim_shape4 *out, void *y) {
    const int64_t hw_in = (int64_t)in->h * in->w;
    int64_t nc, oh, ow;
    if (!lnn_is_int_out(dtype)) return LNN_SIM_E_SHAPE;
    for (nc = 0; nc < (int64_t)in->n * in->c; ++nc) {
        for (oh = 0; oh < out->h; ++oh) {
            const int64_t h0 = oh * p->sh - p->pt;
            for (ow = 0; ow < out->w; ++ow) {
                const int64_t w0 = ow * p->sw - p->pl;
                int64_t best = lnn_dtype_min(dtype), ky, kx;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int64_t ih = h0 + ky * p->dh;
                    if (ih < 0 || ih >= in->h) continue;
                    for (kx = 0; kx < p->kw; ++kx) {
                        const int64_t iw = w0 + kx * p->dw;
                        if (iw >= 0 && iw < in->w) {
                            const int64_t v = lnn_load(x, nc * hw_in + ih * in->w + iw, dtype);
                            if (v > best) best = v;
                        }
                    }
                }
                lnn_store(y, (nc * out->h + oh) * out->w + ow, dtype, best);
            }
        }
    }
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

/* attributes: kh, kw, sh, sw, pt, pl, pb, pr, ceil_mode [, dh, dw for MaxPool] */
static lnn_sim_status prepare_pool(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                   size_t n) {
    const int avg = op->type == LNN_SIM_OP_AVGPOOL2D;
    const int32_t *a = op->attrs;
    const lnn_tensor *x, *y;
    int32_t i;
    int64_t ho, wo;
    if (op->n_in != 1 || op->in[0] < 0 || op->n_attrs != (avg ? 9 : 11))
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs one input and %d attributes", op->name, avg ? 9 : 11);
    x = LNN_IN(m, op, 0);
    y = LNN_OUT(m, op, 0);
    for (i = 0; i < 8; ++i)
        if (!lnn_in_range(a[i], i >= 4 ? 0 : 1, LNN_DIM_LIMIT))
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': attribute %d = %d is out of range", op->name, i, a[i]);
    if (!lnn_in_range(a[8], 0, avg ? 0 : 1))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': ceil_mode %d is not supported", op->name, a[8]);
    if (!avg && (!lnn_in_range(a[9], 1, LNN_DIM_LIMIT) || !lnn_in_range(a[10], 1, LNN_DIM_LIMIT)))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': dilation out of range", op->name);
    if ((int64_t)a[0] * a[1] > LNN_SIM_MAX_WINDOW_AREA)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': window too large", op->name);
    if (x->rank != 4 || y->rank != 4 || x->dims[0] != y->dims[0] || x->dims[1] != y->dims[1] ||
        !lnn_is_int_out(x->dtype) || !lnn_is_int_out(y->dtype) || (avg && x->dtype != LNN_SIM_DT_INT8) ||
        (!avg && (y->dtype != x->dtype || y->exponent != x->exponent)))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': input/output dtypes or shapes do not fit", op->name);
    op->p.pool.kh = a[0]; op->p.pool.kw = a[1]; op->p.pool.sh = a[2]; op->p.pool.sw = a[3];
    op->p.pool.pt = a[4]; op->p.pool.pl = a[5];
    op->p.pool.dh = avg ? 1 : a[9];
    op->p.pool.dw = avg ? 1 : a[10];
    ho = lnn_window_out(x->dims[2], a[0], a[2], a[4], a[6], op->p.pool.dh, a[8]);
    wo = lnn_window_out(x->dims[3], a[1], a[3], a[5], a[7], op->p.pool.dw, a[8]);
    if (ho != y->dims[2] || wo != y->dims[3])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output is %dx%d, the geometry gives %lldx%lld", op->name,
                        y->dims[2], y->dims[3], (long long)ho, (long long)wo);
    op->p.pool.shift_up = avg ? y->exponent - x->exponent : 0;
    if (avg && !lnn_in_range(op->p.pool.shift_up, -LNN_SIM_MAX_POOL_SHIFT, LNN_SIM_MAX_POOL_SHIFT))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent differs from the input's by more than %d",
                        op->name, LNN_SIM_MAX_POOL_SHIFT);
    need->macs = lnn_mul_sat((uint64_t)y->numel, (uint64_t)a[0] * (uint64_t)a[1]); /* window cells */
    op->p.pool.out_dtype = y->dtype;
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1]; op->s_in.h = x->dims[2]; op->s_in.w = x->dims[3];
    op->s_out.n = y->dims[0]; op->s_out.c = y->dims[1]; op->s_out.h = y->dims[2]; op->s_out.w = y->dims[3];
    return LNN_SIM_OK;
}

static lnn_sim_status run_avgpool(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_avgpool2d_s8(&op->p.pool, &op->s_in, (const int8_t *)x->data, &op->s_out, y->data);
}

static lnn_sim_status run_maxpool(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_maxpool2d_s8(&op->p.pool, x->dtype, &op->s_in, x->data, &op->s_out, y->data);
}

const lnn_op_kernel lnn_op_avgpool2d = {"AvgPool2dInt", 1, prepare_pool, run_avgpool};
const lnn_op_kernel lnn_op_maxpool2d = {"MaxPool", 1, prepare_pool, run_maxpool};
