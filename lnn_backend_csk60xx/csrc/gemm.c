/*
 * gemm.c - instruction-set selection and the packed u8 x s8 GEMM kernels (AVX-512 VNNI) of the convolutions
 * and linear layers; see lnn_gemm.h for the arithmetic and why it is exact.
 *
 * Convolution: the window matrix holds four consecutive k of one position in one 32-bit lane ([K/4][P][4]),
 * so one 64-byte load covers 16 output positions; each weight quadruple w[m, 4i..4i+3] is broadcast. A block
 * of 8 output channels x 32 positions keeps 16 accumulators in registers. The requantization (bias, half-up
 * shift, saturation) runs on 8 int64 lanes at a time and stores the 16 outputs of an accumulator with one
 * masked saturating narrow (vpmovsq*), straight into the NCHW output rows.
 * Linear: the weights are packed 16 output features to a vector ([N/16][K/4][16][4]); each activation
 * quadruple is broadcast.
 */
#include "lnn_gemm.h"
#include "lnn_sim_model.h"

#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(LNN_SIM_NO_SIMD)
#define LNN_HAVE_VNNI 1
#define LNN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#include <immintrin.h>
#endif
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(LNN_SIM_NO_SIMD)
#define LNN_HAVE_AVX2 1
#endif

static const char *const k_isa_names[] = {"portable", "avx2", "avx512vnni"};

const char *lnn_isa_name(int32_t isa) { return isa >= 0 && isa <= LNN_ISA_AVX512VNNI ? k_isa_names[isa] : "?"; }

int32_t lnn_isa_available(void) {
    int32_t set = 1 << LNN_ISA_PORTABLE;
#ifdef LNN_HAVE_AVX2
    if (__builtin_cpu_supports("avx2")) set |= 1 << LNN_ISA_AVX2;
#endif
#ifdef LNN_HAVE_VNNI
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        set |= 1 << LNN_ISA_AVX512VNNI;
#endif
    return set;
}

int32_t lnn_isa_select(char *msg, size_t n) {
    const char *want = getenv("LNN_SIM_ISA");
    const int32_t set = lnn_isa_available();
    int32_t isa;
    if (want == NULL || want[0] == '\0') {
        for (isa = LNN_ISA_AVX512VNNI; isa > 0; --isa)
            if (set & (1 << isa)) break;
        return isa;
    }
    for (isa = 0; isa <= LNN_ISA_AVX512VNNI; ++isa) {
        if (strcmp(want, k_isa_names[isa]) != 0) continue;
        if (set & (1 << isa)) return isa;
        lnn_fail(msg, n, LNN_SIM_E_ARG, "LNN_SIM_ISA=%s: this CPU or build cannot run that path (it has%s%s%s)",
                 want, " portable", set & (1 << LNN_ISA_AVX2) ? ", avx2" : "",
                 set & (1 << LNN_ISA_AVX512VNNI) ? ", avx512vnni" : "");
        return -1;
    }
    lnn_fail(msg, n, LNN_SIM_E_ARG, "LNN_SIM_ISA=%.40s is not a path of the simulator (portable, avx2, avx512vnni)",
             want);
    return -1;
}

static int64_t round4(int64_t k) { return (k + 3) & ~(int64_t)3; }
static int64_t round16(int64_t p) { return (p + 15) & ~(int64_t)15; }

int64_t lnn_gemm_conv_packed_bytes(int32_t M, int64_t K) { return (int64_t)M * (round4(K) + 4); }

void lnn_gemm_conv_pack(const int8_t *w, int32_t M, int64_t K, uint8_t *dst) {
    const int64_t Kp = round4(K);
    int32_t *corr = (int32_t *)(void *)(dst + (int64_t)M * Kp);
    int32_t m;
    memset(dst, 0, (size_t)((int64_t)M * Kp));
    for (m = 0; m < M; ++m) {
        int64_t k, sum = 0;
        for (k = 0; k < K; ++k) {
            dst[m * Kp + k] = (uint8_t)w[m * K + k];
            sum += w[m * K + k];
        }
        corr[m] = (int32_t)(uint32_t)(128u * (uint32_t)sum); /* modulo 2^32, like the accumulators */
    }
}

/* the input extent the windows cover: (Ho - 1) * sh + (kh - 1) * dh + 1 rows, likewise columns */
static int64_t plane_h(const lnn_gemm_window *g, int32_t Ho) { return (int64_t)(Ho - 1) * g->sh + (int64_t)(g->kh - 1) * g->dh + 1; }
static int64_t plane_w(const lnn_gemm_window *g, int32_t Wo) { return (int64_t)(Wo - 1) * g->sw + (int64_t)(g->kw - 1) * g->dw + 1; }

/* the planes are stored as sw column phases of ceil(width / sw) bytes each (below) */
static int64_t phase_w(const lnn_gemm_window *g, int32_t Wo) { return (plane_w(g, Wo) + g->sw - 1) / g->sw; }

int64_t lnn_gemm_conv_col_bytes(const lnn_gemm_window *g, int32_t cin_g, int32_t Ho, int32_t Wo) {
    const int64_t K = (int64_t)cin_g * g->kh * g->kw, Pp = round16((int64_t)Ho * Wo);
    return (round4(K) + 4) * Pp + (int64_t)cin_g * g->sw * plane_h(g, Ho) * phase_w(g, Wo);
}

#ifdef LNN_HAVE_VNNI
/* the padded planes, column phase by column phase: plane[(c * sw + ph) * Hp + r][t] = x[c, r - pt, t * sw + ph - pl] +
 * 128, or 128 outside the input, t < Wq = ceil(Wp / sw). A window row (c, ky, kx) of output row oh is then the Wo
 * contiguous bytes at plane[(c * sw + (kx * dw) % sw) * Hp + oh * sh + ky * dh][(kx * dw) / sw] for every stride. */
static void pad_planes(const lnn_gemm_window *g, const int8_t *xg, int32_t cin_g, int32_t H, int32_t W, int32_t Ho,
                       int32_t Wo, uint8_t *plane) {
    const int64_t Hp = plane_h(g, Ho), Wq = phase_w(g, Wo), sw = g->sw, pl = g->pl;
    int64_t c, r, s, ph;
    for (c = 0; c < cin_g; ++c) {
        for (ph = 0; ph < sw; ++ph) {
            for (r = 0; r < Hp; ++r) {
                const int64_t ih = r - g->pt;
                uint8_t *d = plane + ((c * sw + ph) * Hp + r) * Wq;
                const int8_t *xr = xg + (c * H + ih) * W + ph - pl; /* input column of t: t * sw + ph - pl */
                if (ih < 0 || ih >= H) {
                    memset(d, 128, (size_t)Wq);
                    continue;
                }
                for (s = 0; s < Wq && s * sw + ph - pl < 0; ++s) d[s] = 128;
                if (sw == 1) {
                    for (; s < Wq && s + ph - pl < W; ++s) d[s] = (uint8_t)(xr[s] ^ 0x80);
                } else {
                    for (; s < Wq && s * sw + ph - pl < W; ++s) d[s] = (uint8_t)(xr[s * sw] ^ 0x80);
                }
                for (; s < Wq; ++s) d[s] = 128;
            }
        }
    }
}
#endif

int64_t lnn_gemm_linear_packed_bytes(int32_t N, int64_t K) {
    const int64_t nb = ((int64_t)N + 15) / 16;
    return nb * 16 * (round4(K) + 4);
}

void lnn_gemm_linear_pack(const int8_t *w, int32_t N, int64_t K, uint8_t *dst) {
    const int64_t nb = ((int64_t)N + 15) / 16, Kp = round4(K), K4 = Kp / 4;
    int32_t *corr = (int32_t *)(void *)(dst + nb * 16 * Kp);
    int64_t j, k;
    memset(dst, 0, (size_t)(nb * 16 * Kp));
    for (j = 0; j < nb * 16; ++j) corr[j] = 0;
    for (j = 0; j < N; ++j) {
        int64_t sum = 0;
        for (k = 0; k < K; ++k) {
            dst[((j / 16) * K4 + k / 4) * 64 + (j % 16) * 4 + k % 4] = (uint8_t)w[j * K + k];
            sum += w[j * K + k];
        }
        corr[j] = (int32_t)(uint32_t)(128u * (uint32_t)sum);
    }
}

#ifdef LNN_HAVE_VNNI
/* SHR(v, shift) with v = acc + bias in int64 lanes, saturated to dt, the first cnt of 16 lanes stored at y[i] */
LNN_VNNI static inline void rq_store16(__m512i acc, __m512i blo, __m512i bhi, int32_t shift, int32_t dt, int32_t relu,
                                       void *y, int64_t i, int32_t cnt) {
    __m512i lo = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc)), blo);
    __m512i hi = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc, 1)), bhi);
    const __mmask8 mlo = (__mmask8)(cnt >= 8 ? 0xFF : (1u << cnt) - 1u);
    const __mmask8 mhi = (__mmask8)(cnt >= 16 ? 0xFF : cnt > 8 ? (1u << (cnt - 8)) - 1u : 0u);
    if (shift > 0) {
        const __m128i c = _mm_cvtsi32_si128(shift - 1); /* counts over 63 fill with the sign: SHR gives 0 */
        const __m512i one = _mm512_set1_epi64(1);
        lo = _mm512_srai_epi64(_mm512_add_epi64(_mm512_sra_epi64(lo, c), one), 1);
        hi = _mm512_srai_epi64(_mm512_add_epi64(_mm512_sra_epi64(hi, c), one), 1);
    } else if (shift < 0) { /* left shifts: rare, scalar */
        int64_t v[16];
        int32_t j;
        _mm512_storeu_si512((void *)v, lo);
        _mm512_storeu_si512((void *)(v + 8), hi);
        for (j = 0; j < cnt; ++j) {
            const int64_t r = lnn_sat(lnn_shr(v[j], shift), lnn_dtype_min(dt), lnn_dtype_max(dt));
            lnn_store(y, i + j, dt, relu && r < 0 ? 0 : r);
        }
        return;
    }
    if (relu) { /* the fused ReLU: max(SAT(v), 0) = SAT(max(v, 0)) */
        lo = _mm512_max_epi64(lo, _mm512_setzero_si512());
        hi = _mm512_max_epi64(hi, _mm512_setzero_si512());
    }
    switch (dt) {
    case LNN_SIM_DT_INT8:
        _mm512_mask_cvtsepi64_storeu_epi8((int8_t *)y + i, mlo, lo);
        if (mhi) _mm512_mask_cvtsepi64_storeu_epi8((int8_t *)y + i + 8, mhi, hi);
        break;
    case LNN_SIM_DT_INT16:
        _mm512_mask_cvtsepi64_storeu_epi16((int16_t *)y + i, mlo, lo);
        if (mhi) _mm512_mask_cvtsepi64_storeu_epi16((int16_t *)y + i + 8, mhi, hi);
        break;
    default:
        _mm512_mask_cvtsepi64_storeu_epi32((int32_t *)y + i, mlo, lo);
        if (mhi) _mm512_mask_cvtsepi64_storeu_epi32((int32_t *)y + i + 8, mhi, hi);
        break;
    }
}

/* int8 outputs in int32 lanes: v = acc + bias, ((v >> (shift - 1)) + 1) >> 1 for shift 1..31 (v for 0), clamped at
 * 0 for the fused ReLU, narrowed with signed saturation. Exact when |bias| + |acc| < 2^31 - 2 (the caller checks
 * |bias| + K * 2^14 against it): then v and the shifted values are the int64 formulas' values. */
LNN_VNNI static inline void rq_store16_s8(__m512i acc, __m512i b32, int32_t shift, int32_t relu, int8_t *y,
                                          int32_t cnt) {
    __m512i v = _mm512_add_epi32(acc, b32);
    const __mmask16 mk = (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1u);
    if (shift > 0)
        v = _mm512_srai_epi32(_mm512_add_epi32(_mm512_sra_epi32(v, _mm_cvtsi32_si128(shift - 1)), _mm512_set1_epi32(1)),
                              1);
    if (relu) v = _mm512_max_epi32(v, _mm512_setzero_si512());
    _mm512_mask_cvtsepi32_storeu_epi8(y, mk, v);
}

/* the window matrix: for each k / 4, the plane rows of its four k (see pad_planes; every stride reads contiguous
 * bytes) interleaved into one [Pp][4] slab; the Pp zero bytes after the matrix stand in for padding k */
LNN_VNNI void lnn_gemm_im2col_u8(const lnn_gemm_window *g, const int8_t *xg, int32_t cin_g, int32_t H, int32_t W,
                                 int32_t Ho, int32_t Wo, uint8_t *col) {
    const int64_t K = (int64_t)cin_g * g->kh * g->kw, Kp = round4(K), Pp = round16((int64_t)Ho * Wo);
    uint8_t *rows = col + Kp * Pp, *plane = rows + 4 * Pp;
    int64_t k4;
    int32_t j;
    pad_planes(g, xg, cin_g, H, W, Ho, Wo, plane);
    { /* interleave straight from the planes' rows, 16 positions at a time (masked at a row's end) */
        const int64_t Hp = plane_h(g, Ho), Wq = phase_w(g, Wo), kk = (int64_t)g->kh * g->kw, P = (int64_t)Ho * Wo;
        memset(rows, 0, (size_t)Pp); /* the source of padding k (zero weights): Wo <= Pp zero bytes */
        for (k4 = 0; k4 < Kp / 4; ++k4) {
            uint8_t *dst = col + k4 * Pp * 4;
            const uint8_t *src[4];
            int64_t pitch[4], oh, ow;
            for (j = 0; j < 4; ++j) {
                const int64_t k = 4 * k4 + j, c = k / kk, r = k % kk, ky = r / g->kw, kx = r % g->kw;
                const int64_t off = kx * g->dw;
                src[j] = k < K ? plane + ((c * g->sw + off % g->sw) * Hp + ky * g->dh) * Wq + off / g->sw : rows;
                pitch[j] = k < K ? (int64_t)g->sh * Wq : 0;
            }
            for (oh = 0; oh < Ho; ++oh) {
                for (ow = 0; ow < Wo; ow += 16) {
                    const int64_t left = Wo - ow, cnt = left < 16 ? left : 16;
                    const __mmask16 m16 = (__mmask16)(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1u);
                    const __mmask64 m64 = cnt == 16 ? ~(__mmask64)0 : (((__mmask64)1 << (4 * cnt)) - 1);
                    const __m128i a = _mm_maskz_loadu_epi8(m16, src[0] + oh * pitch[0] + ow);
                    const __m128i b = _mm_maskz_loadu_epi8(m16, src[1] + oh * pitch[1] + ow);
                    const __m128i c = _mm_maskz_loadu_epi8(m16, src[2] + oh * pitch[2] + ow);
                    const __m128i d = _mm_maskz_loadu_epi8(m16, src[3] + oh * pitch[3] + ow);
                    const __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
                    const __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
                    __m512i z = _mm512_castsi128_si512(_mm_unpacklo_epi16(ab0, cd0));
                    z = _mm512_inserti32x4(z, _mm_unpackhi_epi16(ab0, cd0), 1);
                    z = _mm512_inserti32x4(z, _mm_unpacklo_epi16(ab1, cd1), 2);
                    z = _mm512_inserti32x4(z, _mm_unpackhi_epi16(ab1, cd1), 3);
                    _mm512_mask_storeu_epi8(dst + (oh * Wo + ow) * 4, m64, z);
                }
            }
            memset(dst + P * 4, 0, (size_t)((Pp - P) * 4));
        }
    }
}

#define LNN_MB 8 /* output channels per block */

/* one block of nm <= LNN_MB channels (rows wr) x NV * 16 positions starting at q */
#define LNN_CONV_BLOCK(NV)                                                                                           \
    do {                                                                                                             \
        __m512i a[LNN_MB][NV];                                                                                       \
        const uint8_t *cp = col + q * 4;                                                                             \
        int32_t j, v;                                                                                                \
        int64_t k4;                                                                                                  \
        for (j = 0; j < LNN_MB; ++j)                                                                                 \
            for (v = 0; v < NV; ++v) a[j][v] = _mm512_setzero_si512();                                               \
        for (k4 = 0; k4 < K4; ++k4, cp += Pp * 4) {                                                                  \
            __m512i xv[NV];                                                                                          \
            for (v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512((const void *)(cp + 64 * v));                        \
            for (j = 0; j < LNN_MB; ++j) {                                                                           \
                const __m512i wv = _mm512_set1_epi32(wr[j][k4]);                                                     \
                for (v = 0; v < NV; ++v) a[j][v] = _mm512_dpbusd_epi32(a[j][v], xv[v], wv);                          \
            }                                                                                                        \
        }                                                                                                            \
        for (j = 0; j < nm; ++j) {                                                                                   \
            const int64_t bj = bias ? bias[m + j] : 0;                                                               \
            const __m512i b = _mm512_set1_epi64(bj), cr = _mm512_set1_epi32(corr[m + j]);                          \
            const int fast = s8 && (bj < 0 ? -bj : bj) + K * 16384 <= (int64_t)INT32_MAX - 2;                        \
            for (v = 0; v < NV; ++v) {                                                                               \
                const int64_t q0 = q + 16 * v;                                                                       \
                const int32_t cnt = P - q0 >= 16 ? 16 : (int32_t)(P - q0);                                           \
                if (q0 >= P) break;                                                                                  \
                if (fast)                                                                                            \
                    rq_store16_s8(_mm512_sub_epi32(a[j][v], cr), _mm512_set1_epi32((int32_t)bj), shift, relu,        \
                                  (int8_t *)y + ybase + (int64_t)(m + j) * P + q0, cnt);                             \
                else                                                                                                 \
                    rq_store16(_mm512_sub_epi32(a[j][v], cr), b, b, shift, dt, relu, y,                              \
                               ybase + (int64_t)(m + j) * P + q0, cnt);                                              \
            }                                                                                                        \
        }                                                                                                            \
    } while (0)

LNN_VNNI void lnn_gemm_conv_vnni(const uint8_t *packed, int32_t M, int64_t K, int32_t m0, int32_t m1,
                                 const uint8_t *col, int64_t P, const int32_t *bias, int32_t shift, int32_t dt,
                                 int32_t relu, void *y, int64_t ybase) {
    const int64_t Kp = round4(K), K4 = Kp / 4, Pp = round16(P);
    const int s8 = dt == LNN_SIM_DT_INT8 && shift >= 0 && shift <= 31;
    const int32_t *corr = (const int32_t *)(const void *)(packed + (int64_t)M * Kp);
    int64_t q;
    for (q = 0; q < Pp; q += 32) { /* positions outer: a block's windows stay in cache across the channel blocks */
        int32_t m;
        for (m = m0; m < m1; m += LNN_MB) {
            const int32_t nm = m1 - m < LNN_MB ? m1 - m : LNN_MB;
            const int32_t *wr[LNN_MB];
            int32_t j;
            for (j = 0; j < LNN_MB; ++j) /* a short block repeats row m (computed, not stored) */
                wr[j] = (const int32_t *)(const void *)(packed + (int64_t)(m + (j < nm ? j : 0)) * Kp);
            if (q + 32 <= Pp)
                LNN_CONV_BLOCK(2);
            else
                LNN_CONV_BLOCK(1);
        }
    }
}
#undef LNN_CONV_BLOCK

LNN_VNNI void lnn_gemm_linear_vnni(const uint8_t *packed, int32_t N, int64_t K, const int8_t *x, int64_t rows,
                                   const int32_t *bias, int32_t shift, int32_t dt, void *y, uint8_t *xu) {
    const int64_t nb = ((int64_t)N + 15) / 16, Kp = round4(K), K4 = Kp / 4;
    const int32_t *corr = (const int32_t *)(const void *)(packed + nb * 16 * Kp);
    const int32_t *xq = (const int32_t *)(const void *)xu;
    int64_t r, b, k;
    for (r = 0; r < rows; ++r) {
        const int8_t *xr = x + r * K;
        for (k = 0; k < K; ++k) xu[k] = (uint8_t)(xr[k] ^ 0x80);
        for (; k < Kp; ++k) xu[k] = 0;
        for (b = 0; b < nb; ++b) {
            const uint8_t *wp = packed + b * K4 * 64;
            const int32_t cnt = N - b * 16 >= 16 ? 16 : (int32_t)(N - b * 16);
            const __mmask16 mk = (__mmask16)(cnt >= 16 ? 0xFFFF : (1u << cnt) - 1u);
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, bv;
            int64_t k4 = 0;
            for (; k4 + 4 <= K4; k4 += 4) { /* four independent chains */
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(xq[k4]), _mm512_loadu_si512(wp + k4 * 64));
                a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(xq[k4 + 1]), _mm512_loadu_si512(wp + k4 * 64 + 64));
                a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(xq[k4 + 2]), _mm512_loadu_si512(wp + k4 * 64 + 128));
                a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(xq[k4 + 3]), _mm512_loadu_si512(wp + k4 * 64 + 192));
            }
            for (; k4 < K4; ++k4)
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(xq[k4]), _mm512_loadu_si512(wp + k4 * 64));
            a0 = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
            a0 = _mm512_sub_epi32(a0, _mm512_loadu_si512((const void *)(corr + b * 16)));
            bv = bias ? _mm512_maskz_loadu_epi32(mk, bias + b * 16) : _mm512_setzero_si512();
            rq_store16(a0, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(bv)),
                       _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(bv, 1)), shift, dt, 0, y, r * N + b * 16, cnt);
        }
    }
}
#else
void lnn_gemm_im2col_u8(const lnn_gemm_window *g, const int8_t *xg, int32_t cin_g, int32_t H, int32_t W, int32_t Ho,
                        int32_t Wo, uint8_t *col) {
    (void)g, (void)xg, (void)cin_g, (void)H, (void)W, (void)Ho, (void)Wo, (void)col;
}
void lnn_gemm_conv_vnni(const uint8_t *packed, int32_t M, int64_t K, int32_t m0, int32_t m1, const uint8_t *col,
                        int64_t P, const int32_t *bias, int32_t shift, int32_t dt, int32_t relu, void *y, int64_t ybase) {
    (void)packed, (void)M, (void)K, (void)m0, (void)m1, (void)col, (void)P, (void)bias, (void)shift, (void)dt, (void)relu;
    (void)y, (void)ybase; /* never selected: lnn_isa_available() does not offer the path in this build */
}
void lnn_gemm_linear_vnni(const uint8_t *packed, int32_t N, int64_t K, const int8_t *x, int64_t rows,
                          const int32_t *bias, int32_t shift, int32_t dt, void *y, uint8_t *xu) {
    (void)packed, (void)N, (void)K, (void)x, (void)rows, (void)bias, (void)shift, (void)dt, (void)y, (void)xu;
}
#endif
