/* The training forward of the chip's LayerNormInt (spec/int8-seq-ops.md 2.3.4) in one pass per row, float32 in and
 * out: what lnn_ops_builtin/layernorm.py computes with torch and numpy operations (QLayerNorm._int_input,
 * normalize_f64, row_factors and _ChipLayerNormQuant's value), bit for bit; tests/test_layernorm_kernel.py checks
 * both against each other. Per row of t values:
 *
 *   q   = SAT_8(floor(x * 2^n_x + 0.5))           in float32, as the fake-quant of the input
 *   q   = SAT_8(floor(q * 2^-s + 0.5)) if s > 0   (an input finer than the kernel's largest exponent, requantized)
 *   S1  = sum q, S2 = sum q^2                     (integers)
 *   D   = max(wrap32(t S2) - wrap32(S1^2) + eps, 0), normalized to [256, 1023] by an even shift 2k, the rsqrt
 *         table's entry r and the shift sh (k + 5; D = 0: the first entry and 4)
 *   u   = SAT_16(floor(q (t r 2^-sh) + (0.5 - S1 r 2^-sh)))  in float64, exact
 *   y   = float32(u (gamma_q 2^-10) + beta_q)     in float64, one rounding in the sum and one to float32
 *
 * and the (min, max) of y for the output quantizer. Rows of at most LNN_LN_MAX_ROW (1024) values: the integer sums
 * are exact and T q - S1 needs no saturation. An input holding an infinity or NaN is refused (return 1: the caller
 * takes the torch path, whose integers for it are whatever its float-to-integer conversions give). Built with
 * -ffp-contract=off: no product is fused into a sum. The AVX2 version computes the same values 8 (4) at a time. */
#include "layernorm.h"

#include <math.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LNN_LN_X86 1
#include <immintrin.h>
#endif

static inline float sat8(float v) { /* the inputs here are finite integers */
    return v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
}

static inline int64_t wrap32(int64_t v) { return ((v + ((int64_t)1 << 31)) & 0xFFFFFFFFLL) - ((int64_t)1 << 31); }

static int32_t leading_bit(int64_t d) { /* floor(log2(d)) for d >= 1 */
    int32_t e = 0;
    while (d >> (e + 1)) e++;
    return e;
}

/* The per-row factors from the integer sums (row_factors in layernorm.py): a = t r 2^-sh, c = 0.5 - S1 r 2^-sh. */
static void row_factors(int64_t s1, int64_t s2, int64_t t, int64_t q_eps, const int32_t *table, double *a,
                        double *c) {
    int64_t d = wrap32(t * s2) - wrap32(s1 * s1) + q_eps;
    if (d < 0) d = 0;
    int64_t rs, sh;
    if (d == 0) {
        rs = table[0];
        sh = 4;
    } else {
        int64_t k = leading_bit(d) >> 1;
        int64_t norm = 2 * k >= 8 ? d >> (2 * k - 8) : d << (8 - 2 * k);
        norm = norm < 256 ? 256 : (norm > 1023 ? 1023 : norm);
        rs = table[norm - 256];
        sh = k + 5;
    }
    const double f = ldexp((double)rs, (int)-sh); /* r 2^-sh, exact */
    *a = f * (double)t;
    *c = 0.5 - (double)s1 * f;
}

static inline double sat16(double u) { return u < -32768.0 ? -32768.0 : (u > 32767.0 ? 32767.0 : u); }

/* one element of the int8 input (a finite x) */
static inline float int_input(float x, float scale_x, float scale_s, int32_t requant) {
    float v = sat8(floorf(x * scale_x + 0.5f));
    return requant ? sat8(floorf(v * scale_s + 0.5f)) : v;
}

/* the int8 inputs q[j0..t) of one row and their sums added to s1, s2; 1 when an input is not finite */
static int int_inputs(const float *xr, int64_t j0, int64_t t, float scale_x, float scale_s, int32_t requant, float *q,
                      int64_t *s1, int64_t *s2) {
    for (int64_t j = j0; j < t; j++) {
        if (!isfinite(xr[j])) return 1;
        q[j] = int_input(xr[j], scale_x, scale_s, requant);
        int64_t iv = (int64_t)q[j];
        *s1 += iv;
        *s2 += iv * iv;
    }
    return 0;
}

/* one element of the output from its int8 input and the row's factors */
static inline float chip_value(float q, double a, double c, double gs, double bs) {
    return (float)(sat16(floor((double)q * a + c)) * gs + bs);
}

static int32_t ln_portable(const float *x, int64_t rows, int64_t t, float scale_x, float scale_s, int32_t requant,
                           int64_t q_eps, const int32_t *table, const double *gs, const double *bs, float *y,
                           float *bounds) {
    float q[LNN_LN_MAX_ROW];
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * t;
        int64_t s1 = 0, s2 = 0;
        if (int_inputs(xr, 0, t, scale_x, scale_s, requant, q, &s1, &s2)) return 1;
        double a, c;
        row_factors(s1, s2, t, q_eps, table, &a, &c);
        float *yr = y + r * t;
        for (int64_t j = 0; j < t; j++) {
            float o = chip_value(q[j], a, c, gs[j], bs[j]);
            yr[j] = o;
            lo = o < lo ? o : lo;
            hi = o > hi ? o : hi;
            nan |= o != o;
        }
    }
    bounds[0] = nan ? NAN : lo;
    bounds[1] = nan ? NAN : hi;
    return 0;
}

#ifdef LNN_LN_X86
__attribute__((target("avx2"))) static int32_t ln_avx2(const float *x, int64_t rows, int64_t t, float scale_x,
                                                       float scale_s, int32_t requant, int64_t q_eps,
                                                       const int32_t *table, const double *gs, const double *bs,
                                                       float *y, float *bounds) {
    float q[LNN_LN_MAX_ROW];
    const __m256 sx = _mm256_set1_ps(scale_x), ss = _mm256_set1_ps(scale_s), half = _mm256_set1_ps(0.5f);
    const __m256 qlo = _mm256_set1_ps(-128.0f), qhi = _mm256_set1_ps(127.0f), inf = _mm256_set1_ps(INFINITY);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256d ulo = _mm256_set1_pd(-32768.0), uhi = _mm256_set1_pd(32767.0);
    __m128 vlo = _mm_set1_ps(INFINITY), vhi = _mm_set1_ps(-INFINITY), vun = _mm_setzero_ps();
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * t;
        __m256i a1 = _mm256_setzero_si256(), a2 = _mm256_setzero_si256();
        __m256 bad = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= t; j += 8) {
            __m256 xv = _mm256_loadu_ps(xr + j);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(xv, absmask), inf, _CMP_NLT_UQ)); /* inf or NaN */
            __m256 v = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(xv, sx), half));
            v = _mm256_min_ps(_mm256_max_ps(v, qlo), qhi);
            if (requant) {
                v = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(v, ss), half));
                v = _mm256_min_ps(_mm256_max_ps(v, qlo), qhi);
            }
            _mm256_storeu_ps(q + j, v);
            __m256i iv = _mm256_cvtps_epi32(v); /* integers: exact */
            a1 = _mm256_add_epi32(a1, iv);
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(iv, iv)); /* per lane <= 128 * 2^14: no overflow */
        }
        if (_mm256_movemask_ps(bad)) return 1;
        int32_t l1[8], l2[8];
        _mm256_storeu_si256((__m256i *)l1, a1);
        _mm256_storeu_si256((__m256i *)l2, a2);
        int64_t s1 = 0, s2 = 0;
        for (int k = 0; k < 8; k++) {
            s1 += l1[k];
            s2 += l2[k];
        }
        if (int_inputs(xr, j, t, scale_x, scale_s, requant, q, &s1, &s2)) return 1;
        double a, c;
        row_factors(s1, s2, t, q_eps, table, &a, &c);
        const __m256d va = _mm256_set1_pd(a), vc = _mm256_set1_pd(c);
        float *yr = y + r * t;
        for (j = 0; j + 4 <= t; j += 4) {
            __m256d u = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(q + j)), va), vc));
            u = _mm256_min_pd(_mm256_max_pd(u, ulo), uhi);
            __m128 o = _mm256_cvtpd_ps(_mm256_add_pd(_mm256_mul_pd(u, _mm256_loadu_pd(gs + j)), _mm256_loadu_pd(bs + j)));
            _mm_storeu_ps(yr + j, o);
            vlo = _mm_min_ps(vlo, o);
            vhi = _mm_max_ps(vhi, o);
            vun = _mm_or_ps(vun, _mm_cmpunord_ps(o, o));
        }
        for (; j < t; j++) {
            float o = chip_value(q[j], a, c, gs[j], bs[j]);
            yr[j] = o;
            lo = o < lo ? o : lo;
            hi = o > hi ? o : hi;
            nan |= o != o;
        }
    }
    float l[4], h[4];
    _mm_storeu_ps(l, vlo);
    _mm_storeu_ps(h, vhi);
    for (int k = 0; k < 4; k++) {
        lo = l[k] < lo ? l[k] : lo;
        hi = h[k] > hi ? h[k] : hi;
    }
    nan |= _mm_movemask_ps(vun) != 0;
    bounds[0] = nan ? NAN : lo;
    bounds[1] = nan ? NAN : hi;
    return 0;
}
#endif

int32_t lnn_ln_chip_f32(const float *x, int64_t rows, int64_t t, float scale_x, float scale_s, int32_t requant,
                        int64_t q_eps, const int32_t *table, const float *gamma, const float *beta, float *y,
                        float *bounds, int32_t isa) {
    double gs[LNN_LN_MAX_ROW], bs[LNN_LN_MAX_ROW];
    if (t < 1 || t > LNN_LN_MAX_ROW) return 2;
    for (int64_t j = 0; j < t; j++) {
        gs[j] = (double)gamma[j] * 0.0009765625; /* gamma_q 2^-10, exact */
        bs[j] = (double)beta[j];
    }
#ifdef LNN_LN_X86
    if (isa == 1) return ln_avx2(x, rows, t, scale_x, scale_s, requant, q_eps, table, gs, bs, y, bounds);
#endif
    (void)isa;
    return ln_portable(x, rows, t, scale_x, scale_s, requant, q_eps, table, gs, bs, y, bounds);
}
