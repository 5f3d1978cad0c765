/*
 * pool.c - AvgPool2dInt and MaxPool, NCHW.
 *
 * AvgPool2dInt (count_include_pad, area A = kh * kw even where the window covers padding):
 *   s = sum of the window (padding counts as 0), d = n_o - n_x,
 *   y = SAT_out(floor(s * 2^d / A + 0.5)), computed exactly as
 *       d >= 0: floor((2 * s * 2^d + A) / (2A));   d < 0: floor((2 * s + A * 2^-d) / (2 * A * 2^-d)).
 *   For a power-of-two A and d = 0 this is RQ_8(s, log2 A), the chip's shift path.
 * MaxPool: the maximum of the window cells inside the input (padding never wins).
 */
#include "lnn_sim_internal.h"

lnn_sim_status lnn_sim_avgpool2d_s8(const lnn_sim_pool_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                    const lnn_sim_shape4 *out, void *y) {
    const int64_t area = (int64_t)p->kh * p->kw;
    const int64_t hw_in = (int64_t)in->h * in->w;
    int64_t den, nc, oh, ow;
    if (p->shift_up > 32 || p->shift_up < -32 || area < 1 || !lnn_is_int_out(p->out_dtype)) return LNN_SIM_E_ATTR;
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
