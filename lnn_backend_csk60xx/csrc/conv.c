/*
 * conv.c - Conv2dInt / Conv1dInt (as Conv2d with H = 1) and ConvTranspose2dInt, NCHW, int8.
 *
 *   acc[n, m, i, j] = b[m] + sum_{c in group(m), ky, kx} x[n, c, i*sh - pt + ky*dh, j*sw - pl + kx*dw] * w[m, c, ky, kx]
 *   y = RQ_out(acc, shift),  shift = n_x + n_w - n_o            (zero padding; bias added before the shift)
 *
 * Loop order: per output channel, per input channel and kernel tap, a row-wise multiply-add of one
 * weight into an int32 accumulator plane (vectorisable; the valid output range of every tap is
 * computed once, so the inner loop has no bounds tests). Input channels are taken in chunks of at
 * most LNN_ACC32_TERMS / (kh*kw) so that each int32 plane holds at most 2^16 products (see
 * lnn_sim_internal.h); chunk sums are added into an int64 plane.
 *
 * Convolutions with a long reduction (K = C/g * kh * kw >= LNN_COL_MIN_K, i.e. all but depthwise
 * and very thin ones) take the im2col path instead: the zero-padded input windows of one group
 * are copied once into a [Ho*Wo][K] int8 matrix, and every output is one contiguous dot product
 * of length K with the weight row [m][K] (same order c, ky, kx), four output channels at a time.
 */
#include "lnn_sim_internal.h"

#define LNN_COL_MIN_K 32

int64_t lnn_sim_conv_col_bytes(const lnn_sim_conv_params *p, int32_t cin_per_group, const lnn_sim_shape4 *out) {
    const int64_t k = (int64_t)cin_per_group * p->kh * p->kw;
    return k >= LNN_COL_MIN_K ? k * out->h * out->w : 0;
}

/* col[(oh*Wo + ow) * K + (c*kh + ky)*kw + kx] = x[c, oh*sh - pt + ky*dh, ow*sw - pl + kx*dw] or 0 */
static void im2col(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *xg, int32_t cin_g,
                   const lnn_sim_shape4 *out, int8_t *col) {
    const int64_t K = (int64_t)cin_g * p->kh * p->kw, hw_in = (int64_t)in->h * in->w;
    int64_t oh, ow;
    for (oh = 0; oh < out->h; ++oh) {
        for (ow = 0; ow < out->w; ++ow) {
            int8_t *row = col + (oh * out->w + ow) * K;
            int32_t c, ky, kx;
            for (c = 0; c < cin_g; ++c) {
                const int8_t *xc = xg + c * hw_in;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int64_t ih = oh * p->sh - p->pt + (int64_t)ky * p->dh;
                    const int ok_h = ih >= 0 && ih < in->h;
                    for (kx = 0; kx < p->kw; ++kx) {
                        const int64_t iw = ow * p->sw - p->pl + (int64_t)kx * p->dw;
                        *row++ = ok_h && iw >= 0 && iw < in->w ? xc[ih * in->w + iw] : 0;
                    }
                }
            }
        }
    }
}

/* exact dot product of two int8 vectors: int32 over chunks of LNN_ACC32_TERMS, summed in int64 */
static int64_t dot_s8(const int8_t *a, const int8_t *b, int64_t k) {
    int64_t acc = 0, k0;
    for (k0 = 0; k0 < k; k0 += LNN_ACC32_TERMS) {
        const int64_t k1 = k - k0 > LNN_ACC32_TERMS ? k0 + LNN_ACC32_TERMS : k;
        int32_t s = 0;
        int64_t i;
        for (i = k0; i < k1; ++i) s += (int32_t)a[i] * (int32_t)b[i];
        acc += s;
    }
    return acc;
}

static void conv_col(const lnn_sim_conv_params *p, int64_t K, int64_t P, int32_t m0, int32_t m1, const int8_t *col,
                     const int8_t *w, const int32_t *bias, void *y, int64_t ybase) {
    int32_t m = m0;
    int64_t q;
    if (K <= LNN_ACC32_TERMS) {
        for (; m + 4 <= m1; m += 4) { /* four output channels share each load of the window */
            const int8_t *w0 = w + (int64_t)m * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            for (q = 0; q < P; ++q) {
                const int8_t *cq = col + q * K;
                int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int64_t i;
                for (i = 0; i < K; ++i) {
                    const int32_t v = cq[i];
                    s0 += v * w0[i];
                    s1 += v * w1[i];
                    s2 += v * w2[i];
                    s3 += v * w3[i];
                }
                lnn_store(y, ybase + (int64_t)m * P + q, p->out_dtype, lnn_shr((int64_t)s0 + (bias ? bias[m] : 0), p->shift));
                lnn_store(y, ybase + (int64_t)(m + 1) * P + q, p->out_dtype,
                          lnn_shr((int64_t)s1 + (bias ? bias[m + 1] : 0), p->shift));
                lnn_store(y, ybase + (int64_t)(m + 2) * P + q, p->out_dtype,
                          lnn_shr((int64_t)s2 + (bias ? bias[m + 2] : 0), p->shift));
                lnn_store(y, ybase + (int64_t)(m + 3) * P + q, p->out_dtype,
                          lnn_shr((int64_t)s3 + (bias ? bias[m + 3] : 0), p->shift));
            }
        }
    }
    for (; m < m1; ++m) {
        const int8_t *wm = w + (int64_t)m * K;
        for (q = 0; q < P; ++q)
            lnn_store(y, ybase + (int64_t)m * P + q, p->out_dtype,
                      lnn_shr(dot_s8(wm, col + q * K, K) + (bias ? bias[m] : 0), p->shift));
    }
}

static void finish_plane(const int32_t *acc32, const int64_t *acc64, int64_t count, int64_t bias, int32_t shift,
                         int32_t dt, void *y, int64_t base) {
    int64_t i;
    if (acc64 != NULL) {
        for (i = 0; i < count; ++i) lnn_store(y, base + i, dt, lnn_shr(acc64[i] + bias, shift));
        return;
    }
    if (dt == LNN_SIM_DT_INT8) {
        int8_t *out = (int8_t *)y + base;
        for (i = 0; i < count; ++i) out[i] = (int8_t)lnn_sat(lnn_shr((int64_t)acc32[i] + bias, shift), -128, 127);
        return;
    }
    for (i = 0; i < count; ++i) lnn_store(y, base + i, dt, lnn_shr((int64_t)acc32[i] + bias, shift));
}

static void flush_chunk(const int32_t *acc32, int64_t *acc64, int64_t count, int first) {
    int64_t i;
    if (first) {
        for (i = 0; i < count; ++i) acc64[i] = acc32[i];
    } else {
        for (i = 0; i < count; ++i) acc64[i] += acc32[i];
    }
}

lnn_sim_status lnn_sim_conv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                 const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                 const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch) {
    const int32_t H = in->h, W = in->w, Ho = out->h, Wo = out->w;
    const int32_t cin_g = wshape->c, kk = p->kh * p->kw;
    const int32_t m_g = out->c / p->groups;
    const int64_t hw_in = (int64_t)H * W, hw_out = (int64_t)Ho * Wo;
    const int32_t chunk = kk >= LNN_ACC32_TERMS ? 1 : LNN_ACC32_TERMS / kk;
    const int pointwise = p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pt == 0 && p->pl == 0 &&
                          Ho == H && Wo == W;
    int32_t *acc = scratch->acc32;
    int32_t n, m;
    if (p->groups < 1 || cin_g * p->groups != in->c || m_g * p->groups != out->c || wshape->n != out->c)
        return LNN_SIM_E_SHAPE;
    if (lnn_sim_conv_col_bytes(p, cin_g, out) > 0) {
        const int64_t K = (int64_t)cin_g * kk;
        int32_t g;
        if (scratch->col == NULL) return LNN_SIM_E_ARG;
        for (n = 0; n < in->n; ++n) {
            for (g = 0; g < p->groups; ++g) {
                im2col(p, in, x + ((int64_t)n * in->c + (int64_t)g * cin_g) * hw_in, cin_g, out, scratch->col);
                conv_col(p, K, hw_out, g * m_g, (g + 1) * m_g, scratch->col, w, bias, y, (int64_t)n * out->c * hw_out);
            }
        }
        return LNN_SIM_OK;
    }
    for (n = 0; n < in->n; ++n) {
        for (m = 0; m < out->c; ++m) {
            const int32_t g = m / m_g;
            const int multi = cin_g > chunk;
            int32_t c0;
            for (c0 = 0; c0 < cin_g; c0 += chunk) {
                const int32_t c1 = cin_g - c0 > chunk ? c0 + chunk : cin_g;
                int32_t c;
                memset(acc, 0, (size_t)hw_out * sizeof(int32_t));
                for (c = c0; c < c1; ++c) {
                    const int8_t *xc = x + ((int64_t)n * in->c + (int64_t)g * cin_g + c) * hw_in;
                    const int8_t *wc = w + ((int64_t)m * cin_g + c) * kk;
                    int32_t ky, kx;
                    if (pointwise) {
                        const int32_t wv = wc[0];
                        int64_t i;
                        if (wv == 0) continue;
                        for (i = 0; i < hw_out; ++i) acc[i] += wv * (int32_t)xc[i];
                        continue;
                    }
                    for (ky = 0; ky < p->kh; ++ky) {
                        const int64_t offy = (int64_t)ky * p->dh - p->pt;
                        int64_t oh_lo = lnn_ceil_div(-offy, p->sh), oh_hi = lnn_floor_div(H - 1 - offy, p->sh), oh;
                        if (oh_lo < 0) oh_lo = 0;
                        if (oh_hi > Ho - 1) oh_hi = Ho - 1;
                        for (kx = 0; kx < p->kw; ++kx) {
                            const int32_t wv = wc[ky * p->kw + kx];
                            const int64_t offx = (int64_t)kx * p->dw - p->pl;
                            int64_t ow_lo = lnn_ceil_div(-offx, p->sw), ow_hi = lnn_floor_div(W - 1 - offx, p->sw);
                            if (wv == 0) continue;
                            if (ow_lo < 0) ow_lo = 0;
                            if (ow_hi > Wo - 1) ow_hi = Wo - 1;
                            if (ow_lo > ow_hi) continue;
                            for (oh = oh_lo; oh <= oh_hi; ++oh) {
                                const int8_t *xr = xc + (oh * p->sh + offy) * W + ow_lo * p->sw + offx;
                                int32_t *ar = acc + oh * Wo + ow_lo;
                                const int64_t len = ow_hi - ow_lo + 1;
                                int64_t j;
                                if (p->sw == 1) {
                                    for (j = 0; j < len; ++j) ar[j] += wv * (int32_t)xr[j];
                                } else {
                                    const int32_t sw = p->sw;
                                    for (j = 0; j < len; ++j) ar[j] += wv * (int32_t)xr[j * sw];
                                }
                            }
                        }
                    }
                }
                if (multi) flush_chunk(acc, scratch->acc64, hw_out, c0 == 0);
            }
            finish_plane(acc, multi ? scratch->acc64 : NULL, hw_out, bias ? bias[m] : 0, p->shift, p->out_dtype, y,
                         ((int64_t)n * out->c + m) * hw_out);
        }
    }
    return LNN_SIM_OK;
}

/* Transposed convolution, scatter form: input cell (ih, iw) of channel c adds x * w[c, m, ky, kx]
 * to output cell (ih*sh - pt + ky*dh, iw*sw - pl + kx*dw); cells outside the output are cropped.
 * Each output cell receives at most one product per (c, ky, kx), so the chunk bound holds. */
lnn_sim_status lnn_sim_deconv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                   const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                   const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch) {
    const int32_t H = in->h, W = in->w, Ho = out->h, Wo = out->w;
    const int32_t m_g = wshape->c, kk = p->kh * p->kw;
    const int32_t cin_g = in->c / p->groups;
    const int64_t hw_in = (int64_t)H * W, hw_out = (int64_t)Ho * Wo;
    const int32_t chunk = kk >= LNN_ACC32_TERMS ? 1 : LNN_ACC32_TERMS / kk;
    int32_t *acc = scratch->acc32;
    int32_t n, m;
    if (p->groups < 1 || cin_g * p->groups != in->c || m_g * p->groups != out->c || wshape->n != in->c)
        return LNN_SIM_E_SHAPE;
    for (n = 0; n < in->n; ++n) {
        for (m = 0; m < out->c; ++m) {
            const int32_t g = m / m_g, mm = m % m_g;
            const int multi = cin_g > chunk;
            int32_t c0;
            for (c0 = 0; c0 < cin_g; c0 += chunk) {
                const int32_t c1 = cin_g - c0 > chunk ? c0 + chunk : cin_g;
                int32_t c;
                memset(acc, 0, (size_t)hw_out * sizeof(int32_t));
                for (c = c0; c < c1; ++c) {
                    const int64_t ci = (int64_t)g * cin_g + c;
                    const int8_t *xc = x + ((int64_t)n * in->c + ci) * hw_in;
                    const int8_t *wc = w + (ci * m_g + mm) * kk;
                    int32_t ky, kx;
                    for (ky = 0; ky < p->kh; ++ky) {
                        for (kx = 0; kx < p->kw; ++kx) {
                            const int32_t wv = wc[ky * p->kw + kx];
                            const int64_t offy = (int64_t)ky * p->dh - p->pt, offx = (int64_t)kx * p->dw - p->pl;
                            int64_t iw_lo = lnn_ceil_div(-offx, p->sw), iw_hi = lnn_floor_div(Wo - 1 - offx, p->sw);
                            int64_t ih;
                            if (wv == 0) continue;
                            if (iw_lo < 0) iw_lo = 0;
                            if (iw_hi > W - 1) iw_hi = W - 1;
                            if (iw_lo > iw_hi) continue;
                            for (ih = 0; ih < H; ++ih) {
                                const int64_t oh = ih * p->sh + offy;
                                const int8_t *xr = xc + ih * W;
                                int32_t *ar;
                                int64_t iw;
                                if (oh < 0 || oh >= Ho) continue;
                                ar = acc + oh * Wo + offx;
                                for (iw = iw_lo; iw <= iw_hi; ++iw) ar[iw * p->sw] += wv * (int32_t)xr[iw];
                            }
                        }
                    }
                }
                if (multi) flush_chunk(acc, scratch->acc64, hw_out, c0 == 0);
            }
            finish_plane(acc, multi ? scratch->acc64 : NULL, hw_out, bias ? bias[m] : 0, p->shift, p->out_dtype, y,
                         ((int64_t)n * out->c + m) * hw_out);
        }
    }
    return LNN_SIM_OK;
}
