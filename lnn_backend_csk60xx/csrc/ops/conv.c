/*
 * ops/conv.c - Conv2dInt / Conv1dInt (as Conv2d with H = 1) and ConvTranspose2dInt, NCHW, int8: the
 * reference kernels, and the prepare/run registrations of the three ops.
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
 * of length K with the weight row [m][K] (same order c, ky, kx), four output channels by two output
 * positions at a time (dot42). The window matrix and each block of four weight rows are held as int16
 * (the int8 values, widened once), so that the inner loop only loads and multiplies. On x86 with GCC or
 * Clang an AVX2 version of dot42 is chosen at run time when the CPU has AVX2: pmaddwd gives the exact
 * int32 sum of two products (|x*w| <= 2^14); each int32 lane then sums at most K/16 such pairs, so
 * every partial sum stays below 2^30 for K <= LNN_ACC32_TERMS, the same bound as the portable loop.
 * Both versions give identical integers.
 */
#include "lnn_sim_model.h"

#include <stdlib.h>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(LNN_SIM_NO_SIMD)
#define LNN_X86_AVX2 1
#include <immintrin.h>
#endif

#define LNN_COL_MIN_K 32
#define LNN_COL_BLOCK 4 /* output channels per block of widened weights */

/* The im2col scratch: the [P][K] window matrix and one block of LNN_COL_BLOCK weight rows, both widened
 * to int16 so that the dot products read them without conversion. */
int64_t lnn_sim_conv_col_bytes(const lnn_sim_conv_params *p, int32_t cin_per_group, const lnn_sim_shape4 *out) {
    const int64_t k = (int64_t)cin_per_group * p->kh * p->kw;
    return k >= LNN_COL_MIN_K ? (int64_t)sizeof(int16_t) * k * ((int64_t)out->h * out->w + LNN_COL_BLOCK) : 0;
}

/* col[(oh*Wo + ow) * K + (c*kh + ky)*kw + kx] = x[c, oh*sh - pt + ky*dh, ow*sw - pl + kx*dw] or 0 */
static void im2col(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *xg, int32_t cin_g,
                   const lnn_sim_shape4 *out, int16_t *col) {
    const int64_t K = (int64_t)cin_g * p->kh * p->kw, hw_in = (int64_t)in->h * in->w;
    int64_t oh, ow;
    for (oh = 0; oh < out->h; ++oh) {
        const int64_t ih0 = oh * p->sh - p->pt;
        const int rows_inside = ih0 >= 0 && ih0 + (int64_t)(p->kh - 1) * p->dh < in->h;
        for (ow = 0; ow < out->w; ++ow) {
            int16_t *row = col + (oh * out->w + ow) * K;
            const int64_t iw0 = ow * p->sw - p->pl;
            int32_t c, ky, kx;
            if (rows_inside && iw0 >= 0 && iw0 + (int64_t)(p->kw - 1) * p->dw < in->w) {
                /* the whole window lies inside the input: no padding to test for */
                for (c = 0; c < cin_g; ++c) {
                    const int8_t *xw = xg + c * hw_in + ih0 * in->w + iw0;
                    for (ky = 0; ky < p->kh; ++ky) {
                        const int8_t *xr = xw + (int64_t)ky * p->dh * in->w;
                        for (kx = 0; kx < p->kw; ++kx) *row++ = xr[(int64_t)kx * p->dw];
                    }
                }
                continue;
            }
            for (c = 0; c < cin_g; ++c) {
                const int8_t *xc = xg + c * hw_in;
                for (ky = 0; ky < p->kh; ++ky) {
                    const int64_t ih = ih0 + (int64_t)ky * p->dh;
                    const int ok_h = ih >= 0 && ih < in->h;
                    for (kx = 0; kx < p->kw; ++kx) {
                        const int64_t iw = iw0 + (int64_t)kx * p->dw;
                        *row++ = (int16_t)(ok_h && iw >= 0 && iw < in->w ? xc[ih * in->w + iw] : 0);
                    }
                }
            }
        }
    }
}

/* exact dot product of int16 windows (int8 values) with int8 weights: int32 over chunks of
 * LNN_ACC32_TERMS terms, summed in int64 (the path for K > LNN_ACC32_TERMS) */
static int64_t dot_long(const int8_t *w, const int16_t *c, int64_t k) {
    int64_t acc = 0, k0;
    for (k0 = 0; k0 < k; k0 += LNN_ACC32_TERMS) {
        const int64_t k1 = k - k0 > LNN_ACC32_TERMS ? k0 + LNN_ACC32_TERMS : k;
        int32_t s = 0;
        int64_t i;
        for (i = k0; i < k1; ++i) s += (int32_t)w[i] * (int32_t)c[i];
        acc += s;
    }
    return acc;
}

/* s[2j + p] = sum_i w[j][i] * c_p[i] for j < 4, p < 2; k <= LNN_ACC32_TERMS (exact in int32).
 * All operands are int8 values held in int16. */
typedef void (*dot42_fn)(const int16_t *c0, const int16_t *c1, const int16_t *w, int64_t k, int32_t *s);

static void dot42_c(const int16_t *c0, const int16_t *c1, const int16_t *w, int64_t k, int32_t *s) {
    const int16_t *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
    int64_t i;
    for (i = 0; i < k; ++i) {
        const int32_t x0 = c0[i], x1 = c1[i];
        s00 += x0 * w0[i];
        s01 += x1 * w0[i];
        s10 += x0 * w1[i];
        s11 += x1 * w1[i];
        s20 += x0 * w2[i];
        s21 += x1 * w2[i];
        s30 += x0 * w3[i];
        s31 += x1 * w3[i];
    }
    s[0] = s00; s[1] = s01; s[2] = s10; s[3] = s11; s[4] = s20; s[5] = s21; s[6] = s30; s[7] = s31;
}

#ifdef LNN_X86_AVX2
__attribute__((target("avx2"))) static int32_t hsum_avx2(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    return _mm_cvtsi128_si32(t);
}

#define LNN_LOAD16(ptr) _mm256_loadu_si256((const __m256i *)(const void *)(ptr))
#define LNN_MAC(acc, a, b) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))

__attribute__((target("avx2"))) static void dot42_avx2(const int16_t *c0, const int16_t *c1, const int16_t *w,
                                                       int64_t k, int32_t *s) {
    const int16_t *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m256i x0 = LNN_LOAD16(c0 + i), x1 = LNN_LOAD16(c1 + i);
        __m256i v = LNN_LOAD16(w0 + i);
        LNN_MAC(a00, v, x0);
        LNN_MAC(a01, v, x1);
        v = LNN_LOAD16(w1 + i);
        LNN_MAC(a10, v, x0);
        LNN_MAC(a11, v, x1);
        v = LNN_LOAD16(w2 + i);
        LNN_MAC(a20, v, x0);
        LNN_MAC(a21, v, x1);
        v = LNN_LOAD16(w3 + i);
        LNN_MAC(a30, v, x0);
        LNN_MAC(a31, v, x1);
    }
    s[0] = hsum_avx2(a00); s[1] = hsum_avx2(a01); s[2] = hsum_avx2(a10); s[3] = hsum_avx2(a11);
    s[4] = hsum_avx2(a20); s[5] = hsum_avx2(a21); s[6] = hsum_avx2(a30); s[7] = hsum_avx2(a31);
    for (; i < k; ++i) {
        const int32_t x0 = c0[i], x1 = c1[i];
        s[0] += x0 * w0[i];
        s[1] += x1 * w0[i];
        s[2] += x0 * w1[i];
        s[3] += x1 * w1[i];
        s[4] += x0 * w2[i];
        s[5] += x1 * w2[i];
        s[6] += x0 * w3[i];
        s[7] += x1 * w3[i];
    }
}
#undef LNN_LOAD16
#undef LNN_MAC
#endif

static dot42_fn pick_dot42(int32_t isa) {
#ifdef LNN_X86_AVX2
    if (isa != LNN_ISA_PORTABLE && __builtin_cpu_supports("avx2")) return dot42_avx2;
#endif
    (void)isa;
    return dot42_c;
}

static void store_rq(const lnn_sim_conv_params *p, void *y, int64_t i, int64_t acc, const int32_t *bias, int32_t m) {
    lnn_store(y, i, p->out_dtype, lnn_shr(acc + (bias ? bias[m] : 0), p->shift));
}

/* Output channels m0..m1-1 from the window matrix col ([P][K], int16). wbuf holds LNN_COL_BLOCK * K int16. */
static void conv_col(const lnn_sim_conv_params *p, int32_t isa, int64_t K, int64_t P, int32_t m0, int32_t m1, const int16_t *col,
                     const int8_t *w, const int32_t *bias, void *y, int64_t ybase, int16_t *wbuf) {
    int32_t m = m0;
    int64_t q, i;
    if (K <= LNN_ACC32_TERMS) {
        const dot42_fn dot = pick_dot42(isa);
        for (; m < m1; m += LNN_COL_BLOCK) { /* four output channels share each load of two windows */
            const int32_t nm = m1 - m < LNN_COL_BLOCK ? m1 - m : LNN_COL_BLOCK;
            int32_t s[2 * LNN_COL_BLOCK], j;
            for (j = 0; j < LNN_COL_BLOCK; ++j) { /* widen the block once; a short block repeats row m */
                const int8_t *wr = w + (int64_t)(m + (j < nm ? j : 0)) * K;
                for (i = 0; i < K; ++i) wbuf[j * K + i] = wr[i];
            }
            for (q = 0; q < P; q += 2) {
                const int two = q + 1 < P;
                dot(col + q * K, col + (two ? q + 1 : q) * K, wbuf, K, s);
                for (j = 0; j < nm; ++j) {
                    store_rq(p, y, ybase + (int64_t)(m + j) * P + q, s[2 * j], bias, m + j);
                    if (two) store_rq(p, y, ybase + (int64_t)(m + j) * P + q + 1, s[2 * j + 1], bias, m + j);
                }
            }
        }
        return;
    }
    for (; m < m1; ++m) {
        const int8_t *wm = w + (int64_t)m * K;
        for (q = 0; q < P; ++q) store_rq(p, y, ybase + (int64_t)m * P + q, dot_long(wm, col + q * K, K), bias, m);
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

static lnn_sim_status conv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch, int32_t isa) {
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
                int16_t *col = (int16_t *)(void *)scratch->col;
                if (!(scratch->col_ready && in->n == 1 && p->groups == 1))
                    im2col(p, in, x + ((int64_t)n * in->c + (int64_t)g * cin_g) * hw_in, cin_g, out, col);
                conv_col(p, isa, K, hw_out, g * m_g, (g + 1) * m_g, col, w, bias, y, (int64_t)n * out->c * hw_out,
                         col + K * hw_out);
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

/* the public kernel (raw weights): the int16 im2col path with AVX2 where the CPU has it */
lnn_sim_status lnn_sim_conv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                 const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                 const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch) {
    return conv2d_s8(p, in, x, wshape, w, bias, out, y, scratch, LNN_ISA_AVX2);
}

/* ---- depthwise: one input channel per group ----------------------------------------------------------
 *
 * Every output channel m reads input channel m / (C_out / groups) alone, K = kh * kw taps. The input plane is
 * copied once into zero-padded int16 phase planes (below), so that no tap needs a bounds test and every tap is
 * one long contiguous multiply-add into the int32 accumulators. The requantization of an int8 output with a shift of
 * 0..31 runs in int32 lanes when |bias| + K * 2^14 leaves room (the sum then fits int32 exactly, and the half-up
 * shift and the clamp, with the fused ReLU's lower bound 0, are the int64 formulas' values); otherwise it
 * takes lnn_shr / lnn_store per element. The loops are plain C, compiled three times: for the baseline CPU
 * and, by the target attributes, for AVX2 and AVX-512BW, chosen by the model's instruction-set path; the
 * integers are the same by construction. */

#if defined(__GNUC__) || defined(__clang__)
#define LNN_ALWAYS_INLINE inline __attribute__((always_inline))
#define LNN_RESTRICT __restrict__
#else
#define LNN_ALWAYS_INLINE inline
#define LNN_RESTRICT
#endif

typedef struct {
    int32_t H, W, Ho, Wo, Hp, Wp;
    int32_t kh, kw, sh, sw, pt, pl, dh, dw;
    int32_t shift, dt, relu;
} dw_geom;

static dw_geom dw_geometry(const lnn_op *op) {
    const lnn_sim_conv_params *p = &op->p.conv;
    dw_geom g;
    int64_t need;
    g.H = op->s_in.h; g.W = op->s_in.w; g.Ho = op->s_out.h; g.Wo = op->s_out.w;
    g.kh = p->kh; g.kw = p->kw; g.sh = p->sh; g.sw = p->sw; g.pt = p->pt; g.pl = p->pl; g.dh = p->dh; g.dw = p->dw;
    g.shift = p->shift; g.dt = p->out_dtype; g.relu = op->act == LNN_SIM_ACT_RELU;
    need = ((int64_t)g.Ho - 1) * g.sh + ((int64_t)g.kh - 1) * g.dh + 1; /* rows the windows reach */
    g.Hp = (int32_t)(need > (int64_t)g.H + g.pt ? need : (int64_t)g.H + g.pt);
    need = ((int64_t)g.Wo - 1) * g.sw + ((int64_t)g.kw - 1) * g.dw + 1;
    g.Wp = (int32_t)(need > (int64_t)g.W + g.pl ? need : (int64_t)g.W + g.pl);
    return g;
}

/* The zero-padded input [Hp][Wp] is stored as sh * sw phase planes [Hq][Wq] (Hq = ceil(Hp / sh), Wq = ceil(Wp /
 * sw)): padded cell (i, j) lies in plane (i % sh) * sw + j % sw at (i / sh, j / sw). A tap (ky, kx) then reads, for
 * output (oh, ow), cell (oh + ky * dh / sh, ow + kx * dw / sw) of plane ((ky * dh) % sh) * sw + (kx * dw) % sw: with
 * the accumulators at q = oh * Wq + ow, one contiguous loop over q < Ho * Wq per tap (columns ow >= Wo are computed
 * and dropped; their reads may run past a plane, into the zeroed tail). */
static int64_t dw_phase_h(const dw_geom *g) { return ((int64_t)g->Hp + g->sh - 1) / g->sh; }
static int64_t dw_phase_w(const dw_geom *g) { return ((int64_t)g->Wp + g->sw - 1) / g->sw; }
static int64_t dw_plane_elems(const dw_geom *g) {
    return (int64_t)g->sh * g->sw * dw_phase_h(g) * dw_phase_w(g) + dw_phase_w(g) + (int64_t)g->kw * g->dw + 1;
}
static int64_t dw_acc_elems(const dw_geom *g) { return (int64_t)g->Ho * dw_phase_w(g); }
static int64_t dw_col_bytes(const dw_geom *g) { return 2 * dw_plane_elems(g) + 4 * dw_acc_elems(g) + 64; }

static int depthwise(const lnn_op *op) {
    return op->type != LNN_SIM_OP_DECONV2D && op->s_w.c == 1 && op->s_in.c == op->p.conv.groups;
}

/* one output channel: xc the input plane [H][W], w its kh * kw taps, y the output plane [Ho][Wo] */
static LNN_ALWAYS_INLINE void dw_channel_impl(const dw_geom *g, const int8_t *xc, const int8_t *w, int64_t bias,
                                              void *y, int16_t *xp, int32_t *acc) {
    /* the geometry in locals: the stores below may alias *g as far as the compiler knows (-fno-strict-aliasing),
     * and loop bounds read through g would stop the vectoriser */
    const int64_t H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw;
    const int64_t dh = g->dh, dw = g->dw, pt = g->pt, pl = g->pl, K = kh * kw;
    const int64_t Hq = dw_phase_h(g), Wq = dw_phase_w(g), PL = Hq * Wq, n = Ho * Wq;
    const int32_t shift = g->shift, dt = g->dt, relu = g->relu;
    int64_t i, j, r, oh, ky, kx;
    memset(xp, 0, (size_t)dw_plane_elems(g) * sizeof(int16_t));
    for (i = 0; i < H; ++i) {
        const int64_t pr = i + pt;
        int16_t *row = xp + (pr % sh) * sw * PL + (pr / sh) * Wq;
        if (sw == 1) {
            const int8_t *LNN_RESTRICT src = xc + i * W;
            int16_t *LNN_RESTRICT dst = row + pl;
            for (j = 0; j < W; ++j) dst[j] = src[j];
            continue;
        }
        for (r = 0; r < sw; ++r) { /* padded column t * sw + r = input column t * sw + r - pl */
            const int64_t t0 = r >= pl ? 0 : (pl - r + sw - 1) / sw;
            const int8_t *src = xc + i * W + r - pl;
            int16_t *dst = row + r * PL;
            int64_t t;
            for (t = t0; t < Wq && t * sw + r - pl < W; ++t) dst[t] = src[t * sw];
        }
    }
    /* the taps three at a time (a missing third takes weight 0), the first three writing the accumulators */
    for (ky = 0; ky < kh * kw; ky += 3) {
        const int16_t *src[3];
        int32_t wv[3];
        int32_t *LNN_RESTRICT a = acc;
        for (kx = 0; kx < 3; ++kx) {
            const int64_t t = ky + kx < K ? ky + kx : ky, oy = t / kw * dh, ox = t % kw * dw;
            src[kx] = xp + ((oy % sh) * sw + ox % sw) * PL + (oy / sh) * Wq + ox / sw;
            wv[kx] = ky + kx < K ? w[t] : 0;
        }
        {
            const int16_t *LNN_RESTRICT s0 = src[0], *LNN_RESTRICT s1 = src[1], *LNN_RESTRICT s2 = src[2];
            const int32_t w0 = wv[0], w1 = wv[1], w2 = wv[2];
            if (ky == 0) {
                for (i = 0; i < n; ++i) a[i] = w0 * (int32_t)s0[i] + w1 * (int32_t)s1[i] + w2 * (int32_t)s2[i];
            } else {
                for (i = 0; i < n; ++i) a[i] += w0 * (int32_t)s0[i] + w1 * (int32_t)s1[i] + w2 * (int32_t)s2[i];
            }
        }
    }
    if (dt == LNN_SIM_DT_INT8 && shift >= 0 && shift <= 31 && (bias < 0 ? -bias : bias) + K * 16384 <= INT32_MAX - 2) {
        /* over the flattened rows into the int16 plane's bytes (read no more), then Wo bytes per output row */
        const int32_t b = (int32_t)bias, lo = relu ? 0 : -128, s1 = shift > 0 ? shift - 1 : 0, up = shift > 0;
        const int32_t *LNN_RESTRICT a = acc;
        int8_t *LNN_RESTRICT q = (int8_t *)xp;
        for (i = 0; i < n; ++i) { /* shift 0: v + b; else ((v + b) >> (s - 1) + 1) >> 1 */
            int32_t v = a[i] + b;
            v = ((v >> s1) + up) >> up;
            q[i] = (int8_t)(v < lo ? lo : (v > 127 ? 127 : v));
        }
        for (oh = 0; oh < Ho; ++oh) memcpy((int8_t *)y + oh * Wo, q + oh * Wq, (size_t)Wo);
        return;
    }
    for (oh = 0; oh < Ho; ++oh) {
        const int32_t *a = acc + oh * Wq;
        for (j = 0; j < Wo; ++j) {
            int64_t v = lnn_sat(lnn_shr((int64_t)a[j] + bias, shift), lnn_dtype_min(dt), lnn_dtype_max(dt));
            if (relu && v < 0) v = 0;
            lnn_store(y, oh * Wo + j, dt, v);
        }
    }
}

typedef void (*dw_channel_fn)(const dw_geom *g, const int8_t *xc, const int8_t *w, int64_t bias, void *y,
                              int16_t *xp, int32_t *acc);

static void dw_channel_c(const dw_geom *g, const int8_t *xc, const int8_t *w, int64_t bias, void *y, int16_t *xp,
                         int32_t *acc) {
    dw_channel_impl(g, xc, w, bias, y, xp, acc);
}

#ifdef LNN_X86_AVX2
__attribute__((target("avx2"))) static void dw_channel_avx2(const dw_geom *g, const int8_t *xc, const int8_t *w,
                                                            int64_t bias, void *y, int16_t *xp, int32_t *acc) {
    dw_channel_impl(g, xc, w, bias, y, xp, acc);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dw_channel_avx512(
    const dw_geom *g, const int8_t *xc, const int8_t *w, int64_t bias, void *y, int16_t *xp, int32_t *acc) {
    dw_channel_impl(g, xc, w, bias, y, xp, acc);
}
#endif

static dw_channel_fn pick_dw(int32_t isa) {
#ifdef LNN_X86_AVX2
    if (isa == LNN_ISA_AVX512VNNI) return dw_channel_avx512; /* the path exists only where the CPU has AVX-512BW */
    if (isa == LNN_ISA_AVX2) return dw_channel_avx2;
#endif
    (void)isa;
    return dw_channel_c;
}

/* Small output planes (at most LNN_DWC_MAX_PLANE positions, one channel per group, at least 16 channels) run
 * across channels instead: the zero-padded input as [Hp][Wp][C] int16 and the taps as [K][C] int16, so that every
 * tap of every output position is one contiguous multiply-add over the channels into int32 accumulators [C], and
 * the requantization (per-channel bias; int32 lanes when every channel's |bias| + K * 2^14 leaves room) runs over
 * the channels too. Same integers as dw_channel_impl. */
#define LNN_DWC_MAX_PLANE 64

static int dw_across(const lnn_op *op) {
    return op->s_out.c == op->s_in.c && op->s_in.c >= 16 && (int64_t)op->s_out.h * op->s_out.w <= LNN_DWC_MAX_PLANE;
}

static int64_t dwc_col_bytes(const dw_geom *g, int64_t C) {
    return 2 * ((int64_t)g->Hp * g->Wp * C + (int64_t)g->kh * g->kw * C) + 9 * C + 4 * 64;
}

static LNN_ALWAYS_INLINE void dwc_impl(const dw_geom *g, int64_t C, const int8_t *x, const int8_t *w,
                                       const int32_t *bias, void *y, int16_t *xp, int16_t *wt, int32_t *acc,
                                       int32_t *bb, int8_t *tmp, int fast) {
    const int64_t H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, Wp = g->Wp, kh = g->kh, kw = g->kw, sh = g->sh;
    const int64_t sw = g->sw, dh = g->dh, dw = g->dw, pt = g->pt, pl = g->pl, K = kh * kw, P = Ho * Wo;
    const int32_t shift = g->shift, dt = g->dt, relu = g->relu;
    const int32_t lo = relu ? 0 : -128, s1 = shift > 0 ? shift - 1 : 0, up = shift > 0;
    int64_t c, i, j, k, oh, ow;
    memset(xp, 0, (size_t)(g->Hp * Wp * C) * sizeof(int16_t));
    for (c = 0; c < C; ++c) {
        for (i = 0; i < H; ++i) {
            const int8_t *src = x + (c * H + i) * W;
            int16_t *dst = xp + ((i + pt) * Wp + pl) * C + c;
            for (j = 0; j < W; ++j) dst[j * C] = src[j];
        }
        for (k = 0; k < K; ++k) wt[k * C + c] = w[c * K + k];
        bb[c] = bias != NULL ? bias[c] : 0;
    }
    for (oh = 0; oh < Ho; ++oh)
        for (ow = 0; ow < Wo; ++ow) {
            const int64_t q = oh * Wo + ow;
            int64_t ky, kx;
            for (c = 0; c < C; ++c) acc[c] = 0;
            for (ky = 0; ky < kh; ++ky)
                for (kx = 0; kx < kw; ++kx) {
                    const int16_t *src = xp + ((oh * sh + ky * dh) * Wp + ow * sw + kx * dw) * C;
                    const int16_t *wk = wt + (ky * kw + kx) * C;
                    for (c = 0; c < C; ++c) acc[c] += (int32_t)wk[c] * (int32_t)src[c];
                }
            if (fast) {
                for (c = 0; c < C; ++c) {
                    int32_t v = acc[c] + bb[c];
                    v = ((v >> s1) + up) >> up;
                    tmp[c] = (int8_t)(v < lo ? lo : (v > 127 ? 127 : v));
                }
                for (c = 0; c < C; ++c) ((int8_t *)y)[c * P + q] = tmp[c];
                continue;
            }
            for (c = 0; c < C; ++c) {
                int64_t v = lnn_sat(lnn_shr((int64_t)acc[c] + bb[c], shift), lnn_dtype_min(dt), lnn_dtype_max(dt));
                if (relu && v < 0) v = 0;
                lnn_store(y, c * P + q, dt, v);
            }
        }
}

typedef void (*dwc_fn)(const dw_geom *g, int64_t C, const int8_t *x, const int8_t *w, const int32_t *bias, void *y,
                       int16_t *xp, int16_t *wt, int32_t *acc, int32_t *bb, int8_t *tmp, int fast);

static void dwc_c(const dw_geom *g, int64_t C, const int8_t *x, const int8_t *w, const int32_t *bias, void *y,
                  int16_t *xp, int16_t *wt, int32_t *acc, int32_t *bb, int8_t *tmp, int fast) {
    dwc_impl(g, C, x, w, bias, y, xp, wt, acc, bb, tmp, fast);
}

#ifdef LNN_X86_AVX2
__attribute__((target("avx2"))) static void dwc_avx2(const dw_geom *g, int64_t C, const int8_t *x, const int8_t *w,
                                                     const int32_t *bias, void *y, int16_t *xp, int16_t *wt,
                                                     int32_t *acc, int32_t *bb, int8_t *tmp, int fast) {
    dwc_impl(g, C, x, w, bias, y, xp, wt, acc, bb, tmp, fast);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dwc_avx512(
    const dw_geom *g, int64_t C, const int8_t *x, const int8_t *w, const int32_t *bias, void *y, int16_t *xp,
    int16_t *wt, int32_t *acc, int32_t *bb, int8_t *tmp, int fast) {
    dwc_impl(g, C, x, w, bias, y, xp, wt, acc, bb, tmp, fast);
}
#endif

static lnn_sim_status run_conv_dw_across(lnn_sim_model *m, const lnn_op *op) {
    const dw_geom g = dw_geometry(op);
    const int8_t *x = (const int8_t *)LNN_IN(m, op, 0)->data, *w = (const int8_t *)LNN_IN(m, op, 1)->data;
    const int32_t *bias = op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)LNN_IN(m, op, 2)->data : NULL;
    lnn_tensor *y = LNN_OUT(m, op, 0);
    const int64_t C = op->s_out.c, K = (int64_t)g.kh * g.kw, hw_in = (int64_t)g.H * g.W;
    const int64_t plane = (int64_t)g.Ho * g.Wo * lnn_dtype_size(y->dtype);
    uint8_t *at = (uint8_t *)m->col;
    int16_t *xp, *wt;
    int32_t *acc, *bb;
    int8_t *tmp;
    int fast = g.dt == LNN_SIM_DT_INT8 && g.shift >= 0 && g.shift <= 31;
    dwc_fn f = dwc_c;
    int64_t c, b;
#define LNN_TAKE(ptr, type, count) (ptr = (type *)(void *)at, at += (((int64_t)(count) * sizeof(type) + 63) & ~(int64_t)63))
    LNN_TAKE(xp, int16_t, (int64_t)g.Hp * g.Wp * C);
    LNN_TAKE(wt, int16_t, K * C);
    LNN_TAKE(acc, int32_t, C);
    LNN_TAKE(bb, int32_t, C);
    LNN_TAKE(tmp, int8_t, C);
#undef LNN_TAKE
    for (c = 0; c < C && fast; ++c) {
        const int64_t bv = bias != NULL ? bias[c] : 0;
        if ((bv < 0 ? -bv : bv) + K * 16384 > INT32_MAX - 2) fast = 0;
    }
#ifdef LNN_X86_AVX2
    if (m->isa == LNN_ISA_AVX512VNNI) f = dwc_avx512; /* the path exists only where the CPU has AVX-512BW */
    if (m->isa == LNN_ISA_AVX2) f = dwc_avx2;
#endif
    for (b = 0; b < op->s_in.n; ++b)
        f(&g, C, x + b * C * hw_in, w, bias, y->data + b * C * plane, xp, wt, acc, bb, tmp, fast);
    return LNN_SIM_OK;
}

/* a depthwise convolution with the fused ReLU applied (the caller skips fused_activation) */
static lnn_sim_status run_conv_dw(lnn_sim_model *m, const lnn_op *op) {
    const dw_geom g = dw_geometry(op);
    const dw_channel_fn channel = pick_dw(m->isa);
    const int8_t *x = (const int8_t *)LNN_IN(m, op, 0)->data, *w = (const int8_t *)LNN_IN(m, op, 1)->data;
    const int32_t *bias = op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)LNN_IN(m, op, 2)->data : NULL;
    lnn_tensor *y = LNN_OUT(m, op, 0);
    const int32_t C = op->s_out.c, mult = C / op->p.conv.groups, size = lnn_dtype_size(y->dtype);
    const int64_t hw_in = (int64_t)g.H * g.W, hw_out = (int64_t)g.Ho * g.Wo, K = (int64_t)g.kh * g.kw;
    int16_t *xp = (int16_t *)(void *)m->col;
    int32_t *acc = (int32_t *)(void *)(m->col + ((2 * dw_plane_elems(&g) + 63) & ~(int64_t)63));
    int32_t b, c;
    if (dw_across(op)) return run_conv_dw_across(m, op);
    for (b = 0; b < op->s_in.n; ++b)
        for (c = 0; c < C; ++c)
            channel(&g, x + ((int64_t)b * op->s_in.c + c / mult) * hw_in, w + (int64_t)c * K, bias ? bias[c] : 0,
                    y->data + (((int64_t)b * C + c) * hw_out) * size, xp, acc);
    return LNN_SIM_OK;
}

/* The AVX-512 VNNI path (lnn_gemm.h): a window matrix of u8 and weights packed at load time. */
static int vnni_conv(const lnn_sim_model *m, const lnn_op *op, int deconv) {
    const int64_t K = (int64_t)op->s_w.c * op->s_w.h * op->s_w.w;
    return m->isa == LNN_ISA_AVX512VNNI && !deconv && K >= 4 && K <= LNN_ACC32_TERMS &&
           op->s_out.c / op->p.conv.groups >= 4 && !depthwise(op);
}

static lnn_sim_status run_conv_vnni(lnn_sim_model *m, const lnn_op *op, int col_ready) {
    const lnn_sim_conv_params *p = &op->p.conv;
    const lnn_tensor *x = LNN_IN(m, op, 0);
    lnn_tensor *y = LNN_OUT(m, op, 0);
    const int32_t cin_g = op->s_w.c, m_g = op->s_out.c / p->groups;
    const int64_t K = (int64_t)cin_g * p->kh * p->kw, P = (int64_t)op->s_out.h * op->s_out.w;
    const int64_t hw_in = (int64_t)op->s_in.h * op->s_in.w;
    const lnn_gemm_window g = {p->kh, p->kw, p->sh, p->sw, p->pt, p->pl, p->dh, p->dw};
    const int32_t *bias = op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)LNN_IN(m, op, 2)->data : NULL;
    uint8_t *col = (uint8_t *)m->col;
    int32_t b, gi;
    for (b = 0; b < op->s_in.n; ++b) {
        for (gi = 0; gi < p->groups; ++gi) {
            if (!(col_ready && op->s_in.n == 1 && p->groups == 1))
                lnn_gemm_im2col_u8(&g, (const int8_t *)x->data + ((int64_t)b * op->s_in.c + (int64_t)gi * cin_g) * hw_in,
                                   cin_g, op->s_in.h, op->s_in.w, op->s_out.h, op->s_out.w, col);
            lnn_gemm_conv_vnni(op->packed, op->s_out.c, K, gi * m_g, (gi + 1) * m_g, col, P, bias, p->shift,
                               p->out_dtype, op->act == LNN_SIM_ACT_RELU, y->data, (int64_t)b * op->s_out.c * P);
        }
    }
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

/* attributes: kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups [, output_padding h, w for deconv]
 * [, fused activation] */
static lnn_sim_status prepare_conv(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                   size_t n) {
    const int deconv = op->type == LNN_SIM_OP_DECONV2D, conv1d = op->type == LNN_SIM_OP_CONV1D;
    const int32_t rank = conv1d ? 3 : 4, want_attrs = deconv ? 13 : 11; /* + 1 optional: fused activation */
    const int32_t *a = op->attrs;
    const lnn_tensor *x, *w, *b = NULL, *y;
    int32_t i;
    int64_t ho, wo;
    if (op->n_in < 2 || op->n_in > 3 || op->in[0] < 0 || op->in[1] < 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs x, w and an optional bias", op->name);
    x = LNN_IN(m, op, 0);
    w = LNN_IN(m, op, 1);
    y = LNN_OUT(m, op, 0);
    if (op->n_in == 3 && op->in[2] >= 0) b = LNN_IN(m, op, 2);
    if (op->n_attrs != want_attrs && op->n_attrs != want_attrs + 1)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': %d attributes, expected %d or %d", op->name, op->n_attrs,
                        want_attrs, want_attrs + 1);
    op->act = op->n_attrs > want_attrs ? a[want_attrs] : LNN_SIM_ACT_NONE;
    if (op->act != LNN_SIM_ACT_NONE && op->act != LNN_SIM_ACT_RELU)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': activation %d is not supported (0 none, 1 relu)", op->name,
                        op->act);
    for (i = 0; i < 11; ++i) {
        const int32_t lo = (i >= 4 && i < 8) ? 0 : 1;
        if (!lnn_in_range(a[i], lo, i == 10 ? LNN_SIM_MAX_GROUPS : LNN_DIM_LIMIT))
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': attribute %d = %d is out of range", op->name, i, a[i]);
    }
    if (deconv && (!lnn_in_range(a[11], 0, LNN_DIM_LIMIT) || !lnn_in_range(a[12], 0, LNN_DIM_LIMIT)))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output_padding (%d, %d) out of range", op->name, a[11], a[12]);
    if ((int64_t)a[0] * a[1] > LNN_SIM_MAX_WINDOW_AREA)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': kernel %dx%d is too large", op->name, a[0], a[1]);
    if (conv1d && (a[0] != 1 || a[2] != 1 || a[4] != 0 || a[6] != 0 || a[8] != 1))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': Conv1dInt needs kh = sh = dh = 1 and no H padding", op->name);
    if (x->dtype != LNN_SIM_DT_INT8 || w->dtype != LNN_SIM_DT_INT8 || !lnn_is_int_out(y->dtype) ||
        x->rank != rank || w->rank != rank || y->rank != rank || !(w->flags & LNN_SIM_TF_CONST))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 x and constant int8 w of rank %d and an integer output",
                        op->name, rank);
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1];
    op->s_in.h = conv1d ? 1 : x->dims[2]; op->s_in.w = x->dims[rank - 1];
    op->s_w.n = w->dims[0]; op->s_w.c = w->dims[1];
    op->s_w.h = conv1d ? 1 : w->dims[2]; op->s_w.w = w->dims[rank - 1];
    op->s_out.n = y->dims[0]; op->s_out.c = y->dims[1];
    op->s_out.h = conv1d ? 1 : y->dims[2]; op->s_out.w = y->dims[rank - 1];
    if (op->s_w.h != a[0] || op->s_w.w != a[1] || op->s_out.n != op->s_in.n)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': weight or batch does not match the kernel", op->name);
    if (deconv) {
        if (op->s_w.n != op->s_in.c || op->s_in.c % a[10] != 0 || (int64_t)op->s_w.c * a[10] != op->s_out.c)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': weight [%d, %d] does not fit %d -> %d channels in %d groups",
                            op->name, op->s_w.n, op->s_w.c, op->s_in.c, op->s_out.c, a[10]);
        ho = ((int64_t)op->s_in.h - 1) * a[2] - a[4] - a[6] + (int64_t)a[8] * (a[0] - 1) + 1 + a[11];
        wo = ((int64_t)op->s_in.w - 1) * a[3] - a[5] - a[7] + (int64_t)a[9] * (a[1] - 1) + 1 + a[12];
    } else {
        if (op->s_w.n != op->s_out.c || (int64_t)op->s_w.c * a[10] != op->s_in.c || op->s_out.c % a[10] != 0)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': weight [%d, %d] does not fit %d -> %d channels in %d groups",
                            op->name, op->s_w.n, op->s_w.c, op->s_in.c, op->s_out.c, a[10]);
        ho = lnn_window_out(op->s_in.h, a[0], a[2], a[4], a[6], a[8], 0);
        wo = lnn_window_out(op->s_in.w, a[1], a[3], a[5], a[7], a[9], 0);
    }
    if (ho != op->s_out.h || wo != op->s_out.w)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output is %dx%d, the geometry gives %lldx%lld", op->name,
                        op->s_out.h, op->s_out.w, (long long)ho, (long long)wo);
    if (b != NULL && (b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != op->s_out.c ||
                      !(b->flags & LNN_SIM_TF_CONST)))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': bias must be a constant int32 vector of %d", op->name,
                        op->s_out.c);
    op->p.conv.kh = a[0]; op->p.conv.kw = a[1]; op->p.conv.sh = a[2]; op->p.conv.sw = a[3];
    op->p.conv.pt = a[4]; op->p.conv.pl = a[5]; op->p.conv.dh = a[8]; op->p.conv.dw = a[9];
    op->p.conv.groups = a[10];
    op->p.conv.shift = x->exponent + w->exponent - y->exponent;
    op->p.conv.out_dtype = y->dtype;
    need->acc = (int64_t)op->s_out.h * op->s_out.w;
    need->col = deconv ? 0 : lnn_sim_conv_col_bytes(&op->p.conv, op->s_w.c, &op->s_out);
    if (depthwise(op)) {
        const dw_geom g = dw_geometry(op);
        need->col = dw_across(op) ? dwc_col_bytes(&g, op->s_out.c) : dw_col_bytes(&g);
    }
    if (vnni_conv(m, op, deconv) && w->region == LNN_SIM_REGION_FLASH) {
        const int64_t K = (int64_t)op->s_w.c * a[0] * a[1];
        const int64_t bytes = lnn_gemm_conv_packed_bytes(op->s_out.c, K);
        const lnn_gemm_window g = {a[0], a[1], a[2], a[3], a[4], a[5], a[8], a[9]};
        const int64_t col = lnn_gemm_conv_col_bytes(&g, op->s_w.c, op->s_out.h, op->s_out.w);
        op->packed = (uint8_t *)malloc((size_t)bytes);
        if (op->packed == NULL)
            return LNN_FAIL(LNN_SIM_E_NOMEM, "op '%s': out of memory for %lld bytes of packed weights", op->name,
                            (long long)bytes);
        lnn_gemm_conv_pack((const int8_t *)(m->weights + w->offset), op->s_out.c, K, op->packed);
        if (col > need->col) need->col = col;
    }
    /* every output (conv) or input (deconv scatter) element takes C_in/g (C_out/g) * kh * kw products */
    need->macs = lnn_mul_sat(lnn_mul_sat((uint64_t)(deconv ? x->numel : y->numel), (uint64_t)op->s_w.c),
                             (uint64_t)a[0] * (uint64_t)a[1]);
    return LNN_SIM_OK;
}

/* The window matrix built for op `prev` serves op `op` when both read the same tensor with the same geometry
 * (one image, one group: what the split pass produces). */
static int same_windows(const lnn_sim_model *m, const lnn_op *op) {
    const lnn_op *prev;
    if (m->col_op < 0 || m->col_tensor != op->in[0]) return 0;
    prev = &m->ops[m->col_op];
    return prev->type == op->type && (prev->packed == NULL) == (op->packed == NULL) && op->s_in.n == 1 && op->p.conv.groups == 1 && prev->p.conv.groups == 1 &&
           prev->s_w.c == op->s_w.c && prev->s_out.h == op->s_out.h && prev->s_out.w == op->s_out.w &&
           prev->p.conv.kh == op->p.conv.kh && prev->p.conv.kw == op->p.conv.kw && prev->p.conv.sh == op->p.conv.sh &&
           prev->p.conv.sw == op->p.conv.sw && prev->p.conv.pt == op->p.conv.pt && prev->p.conv.pl == op->p.conv.pl &&
           prev->p.conv.dh == op->p.conv.dh && prev->p.conv.dw == op->p.conv.dw;
}

static lnn_sim_scratch model_scratch(const lnn_sim_model *m) {
    lnn_sim_scratch s;
    s.acc32 = m->acc32;
    s.acc64 = m->acc64;
    s.col = m->col;
    s.col_ready = 0;
    return s;
}

static const int32_t *op_bias(const lnn_sim_model *m, const lnn_op *op) {
    return op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)LNN_IN(m, op, 2)->data : NULL;
}

/* the fused ReLU acts on the requantized integers, exactly as a separate Relu op would */
static lnn_sim_status fused_activation(const lnn_op *op, lnn_tensor *y) {
    if (op->act == LNN_SIM_ACT_NONE) return LNN_SIM_OK;
    return lnn_sim_clip(y->dtype, 0, lnn_dtype_max(y->dtype), y->numel, y->data, y->data);
}

static lnn_sim_status run_conv(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *w = LNN_IN(m, op, 1);
    lnn_tensor *y = LNN_OUT(m, op, 0);
    lnn_sim_scratch scratch = model_scratch(m);
    lnn_sim_status st;
    (void)msg, (void)n;
    if (depthwise(op)) {
        m->col_op = -1; /* the scratch no longer holds a window matrix */
        return run_conv_dw(m, op);
    }
    if (op->packed != NULL || lnn_sim_conv_col_bytes(&op->p.conv, op->s_w.c, &op->s_out) > 0) {
        scratch.col_ready = same_windows(m, op);
        m->col_op = (int32_t)(op - m->ops);
        m->col_tensor = op->in[0];
    }
    if (op->packed != NULL)
        return run_conv_vnni(m, op, scratch.col_ready); /* the ReLU fused into the requantization */
    else
        st = conv2d_s8(&op->p.conv, &op->s_in, (const int8_t *)x->data, &op->s_w, (const int8_t *)w->data,
                       op_bias(m, op), &op->s_out, y->data, &scratch, m->isa);
    return st != LNN_SIM_OK ? st : fused_activation(op, y);
}

static lnn_sim_status run_deconv(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *w = LNN_IN(m, op, 1);
    lnn_tensor *y = LNN_OUT(m, op, 0);
    const lnn_sim_scratch scratch = model_scratch(m);
    lnn_sim_status st;
    (void)msg, (void)n;
    st = lnn_sim_deconv2d_s8(&op->p.conv, &op->s_in, (const int8_t *)x->data, &op->s_w, (const int8_t *)w->data,
                             op_bias(m, op), &op->s_out, y->data, &scratch);
    return st != LNN_SIM_OK ? st : fused_activation(op, y);
}

const lnn_op_kernel lnn_op_conv2d = {"Conv2dInt", 1, prepare_conv, run_conv};
const lnn_op_kernel lnn_op_conv1d = {"Conv1dInt", 1, prepare_conv, run_conv};
const lnn_op_kernel lnn_op_deconv2d = {"ConvTranspose2dInt", 1, prepare_conv, run_deconv};
