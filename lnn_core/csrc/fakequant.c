/* Fake-quantization kernels of lnn_core's training step (float32, CPU): the per-tensor (min, max) an observer
 * reads, and the chip's rounding SAT(R(x * 2^n)) / 2^n, in one pass each.
 *
 * They compute exactly what lnn_core/quant/functional.py computes with torch operations (its torch path is the
 * reference, and tests/test_kernels.py checks every bit of both): the rounding is floor(x * s + 0.5) with
 * s = 2^n, either in float32 (activations, the chip's Quant op) or in float64 (weights and biases: exact
 * half-up for every float32 input), then a clamp to [lo, hi] in float32 when the caller asks for it, then the
 * product with 1 / s in float32. Built with -ffp-contract=off: x * s + 0.5 is never fused (it would not change
 * the result while s is a power of two, but nothing here should depend on that argument).
 *
 * The caller chooses the instruction set per call (isa: LNN_Q_ISA_PORTABLE or LNN_Q_ISA_AVX2, the latter only where
 * lnn_q_isa_available() says so); nothing here keeps state.
 *
 * NaN: the bounds of a tensor holding a NaN are (NaN, NaN), as torch.aminmax gives; the rounding passes a NaN
 * through the clamp, as torch.clamp does. On x86 with GCC or Clang each kernel also has an AVX2 version; the
 * integers are the same on both paths. */
#include "fakequant.h"

#include <math.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LNN_Q_X86 1
#include <immintrin.h>
#endif

int32_t lnn_q_isa_available(void) {
#ifdef LNN_Q_X86
    return __builtin_cpu_supports("avx2") ? LNN_Q_ISA_AVX2 : LNN_Q_ISA_PORTABLE;
#else
    return LNN_Q_ISA_PORTABLE;
#endif
}

/* (min, max) of values seen one at a time; both NaN once a NaN was seen (torch.aminmax's answer) */
typedef struct {
    float lo, hi;
    int nan;
} range_f32;

static inline range_f32 range_empty(void) { return (range_f32){INFINITY, -INFINITY, 0}; }

static inline void range_add(range_f32 *r, float v) {
    r->lo = v < r->lo ? v : r->lo;
    r->hi = v > r->hi ? v : r->hi;
    r->nan |= v != v;
}

static inline void range_store(const range_f32 *r, float *out) {
    out[0] = r->nan ? NAN : r->lo;
    out[1] = r->nan ? NAN : r->hi;
}

static void bounds_portable(const float *x, int64_t n, float *out) {
    range_f32 r = range_empty();
    for (int64_t i = 0; i < n; i++) range_add(&r, x[i]);
    range_store(&r, out);
}

static inline float sat(float v, float lo, float hi) { /* a NaN stays NaN (both comparisons are false) */
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

static void round_portable(const float *x, float *out, float *q, int64_t n, float scale, float inv, float lo,
                           float hi, int32_t clamp) {
    for (int64_t i = 0; i < n; i++) {
        float v = floorf(x[i] * scale + 0.5f);
        if (clamp) {
            if (q) q[i] = v;
            v = sat(v, lo, hi);
        }
        out[i] = v * inv;
    }
}

static void round_exact_portable(const float *x, float *out, float *q, int64_t n, double scale, float inv,
                                 float lo, float hi, int32_t clamp) {
    for (int64_t i = 0; i < n; i++) {
        float v = (float)floor((double)x[i] * scale + 0.5);
        if (clamp) {
            if (q) q[i] = v;
            v = sat(v, lo, hi);
        }
        out[i] = v * inv;
    }
}

#ifdef LNN_Q_X86
__attribute__((target("avx2"))) static void bounds_avx2(const float *x, int64_t n, float *out) {
    __m256 lo0 = _mm256_set1_ps(INFINITY), hi0 = _mm256_set1_ps(-INFINITY), lo1 = lo0, hi1 = hi0;
    __m256 unordered = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        lo0 = _mm256_min_ps(lo0, a); /* a NaN in a is dropped here; `unordered` records it */
        hi0 = _mm256_max_ps(hi0, a);
        lo1 = _mm256_min_ps(lo1, b);
        hi1 = _mm256_max_ps(hi1, b);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    }
    float l[8], h[8];
    _mm256_storeu_ps(l, _mm256_min_ps(lo0, lo1));
    _mm256_storeu_ps(h, _mm256_max_ps(hi0, hi1));
    float lo = l[0], hi = h[0];
    int nan = _mm256_movemask_ps(unordered) != 0;
    for (int k = 1; k < 8; k++) {
        lo = l[k] < lo ? l[k] : lo;
        hi = h[k] > hi ? h[k] : hi;
    }
    for (; i < n; i++) {
        float v = x[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        nan |= v != v;
    }
    out[0] = nan ? NAN : lo;
    out[1] = nan ? NAN : hi;
}

/* _mm256_max_ps(a, b) is a > b ? a : b: with the bound first, a NaN in b comes out, as in sat() */
#define LNN_Q_SAT8(v, vlo, vhi) _mm256_min_ps(vhi, _mm256_max_ps(vlo, v))

__attribute__((target("avx2"))) static void round_avx2(const float *x, float *out, float *q, int64_t n, float scale,
                                                       float inv, float lo, float hi, int32_t clamp) {
    const __m256 s = _mm256_set1_ps(scale), half = _mm256_set1_ps(0.5f), vinv = _mm256_set1_ps(inv);
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), s), half));
        if (clamp) {
            if (q) _mm256_storeu_ps(q + i, v);
            v = LNN_Q_SAT8(v, vlo, vhi);
        }
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v, vinv));
    }
    round_portable(x + i, out + i, q ? q + i : q, n - i, scale, inv, lo, hi, clamp);
}

__attribute__((target("avx2"))) static void round_exact_avx2(const float *x, float *out, float *q, int64_t n,
                                                             double scale, float inv, float lo, float hi,
                                                             int32_t clamp) {
    const __m256d s = _mm256_set1_pd(scale), half = _mm256_set1_pd(0.5);
    const __m256 vinv = _mm256_set1_ps(inv), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(xv)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));
        a = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(a, s), half));
        b = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(b, s), half));
        __m256 v = _mm256_set_m128(_mm256_cvtpd_ps(b), _mm256_cvtpd_ps(a));
        if (clamp) {
            if (q) _mm256_storeu_ps(q + i, v);
            v = LNN_Q_SAT8(v, vlo, vhi);
        }
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v, vinv));
    }
    round_exact_portable(x + i, out + i, q ? q + i : q, n - i, scale, inv, lo, hi, clamp);
}
#endif

void lnn_q_bounds_f32(const float *x, int64_t n, float *out, int32_t isa) {
    (void)isa;
#ifdef LNN_Q_X86
    if (isa == LNN_Q_ISA_AVX2) {
        bounds_avx2(x, n, out);
        return;
    }
#endif
    bounds_portable(x, n, out);
}

void lnn_q_round_f32(const float *x, float *out, float *q, int64_t n, double scale, float inv, float lo, float hi,
                     int32_t clamp, int32_t exact, int32_t isa) {
    (void)isa;
#ifdef LNN_Q_X86
    if (isa == LNN_Q_ISA_AVX2) {
        if (exact)
            round_exact_avx2(x, out, q, n, scale, inv, lo, hi, clamp);
        else
            round_avx2(x, out, q, n, (float)scale, inv, lo, hi, clamp);
        return;
    }
#endif
    if (exact)
        round_exact_portable(x, out, q, n, scale, inv, lo, hi, clamp);
    else
        round_portable(x, out, q, n, (float)scale, inv, lo, hi, clamp);
}

/* BatchNorm folded into the weights and bias of the op before it, per output channel c of C (K weights each),
 * in float32 and in the order of the torch expression it replaces (lnn_core.quant.quantizers.fold_batch_norm):
 *   rstd = 1 / sqrt(var + eps); inv = rstd * gamma; wf = w * inv; bf = ((-mean) * inv + beta) + b * inv.
 * gamma, beta and b may be NULL (affine=False, no bias). aux receives 3 C values for the backward: rstd, inv and
 * b - mean (-mean without b); bounds receives (min, max) of wf, then of bf. */
void lnn_q_fold_f32(const float *w, const float *b, const float *mean, const float *var, float eps,
                    const float *gamma, const float *beta, int64_t C, int64_t K, float *wf, float *bf, float *aux,
                    float *bounds) {
    float *rstd = aux, *inv = aux + C, *bm = aux + 2 * C;
    range_f32 wr = range_empty(), br = range_empty();
    for (int64_t c = 0; c < C; c++) {
        float r = 1.0f / sqrtf(var[c] + eps);
        float s = gamma ? r * gamma[c] : r;
        float base = -mean[c] * s;
        if (beta) base = base + beta[c];
        rstd[c] = r;
        inv[c] = s;
        bm[c] = b ? b[c] - mean[c] : -mean[c];
        bf[c] = b ? base + b[c] * s : base;
        range_add(&br, bf[c]);
        const float *wc = w + c * K;
        float *oc = wf + c * K;
        for (int64_t k = 0; k < K; k++) {
            oc[k] = wc[k] * s;
            range_add(&wr, oc[k]);
        }
    }
    range_store(&wr, bounds);
    range_store(&br, bounds + 2);
}

/* The gradients of lnn_q_fold_f32 from those of wf (gwf) and bf (gbf), with its aux: gw = gwf * inv,
 * gb = gbf * inv, ggamma = (sum_k gwf * w + gbf * (b - mean)) * rstd, gbeta = gbf (any output may be NULL: not
 * wanted). The per-channel sums run in float64. */
void lnn_q_fold_backward_f32(const float *gwf, const float *gbf, const float *w, const float *aux, int64_t C,
                             int64_t K, float *gw, float *gb, float *ggamma, float *gbeta) {
    const float *rstd = aux, *inv = aux + C, *bm = aux + 2 * C;
    for (int64_t c = 0; c < C; c++) {
        const float *gc = gwf + c * K, *wc = w + c * K;
        const float s = inv[c];
        const float g = gbf ? gbf[c] : 0.0f;
        if (gw) {
            float *oc = gw + c * K;
            for (int64_t k = 0; k < K; k++) oc[k] = gc[k] * s;
        }
        if (gb) gb[c] = g * s;
        if (gbeta) gbeta[c] = g;
        if (ggamma) {
            double acc = (double)g * (double)bm[c];
            for (int64_t k = 0; k < K; k++) acc += (double)gc[k] * (double)wc[k];
            ggamma[c] = (float)(acc * (double)rstd[c]);
        }
    }
}

/* The straight-through gradient of a fake-quant, with the per-channel sums a bias gradient needs, in one pass:
 * out = g where lo < q < hi (strictly; lo, hi are the integer bounds widened by one, as torch's hardtanh_backward
 * takes them; a NaN in q lets its gradient through, as torch's scalar loop does), else 0; without q (nothing
 * saturated) out = g (out may be g). g is [outer, C, inner] (NCHW: inner = H W; rows of a linear layer: inner = 1); when sums is not NULL
 * it receives sum over outer and inner of out per channel (float32 partial sums of at most one inner block, added
 * in float64, then float32). */
static double ste_block_portable(const float *g, const float *q, float *out, int64_t inner, float lo, float hi) {
    float s = 0.0f;
    for (int64_t k = 0; k < inner; k++) {
        float v = g[k];
        if (q) {
            float t = q[k];
            v = (t <= lo || t >= hi) ? 0.0f : v;
        }
        out[k] = v;
        s += v;
    }
    return (double)s;
}

#ifdef LNN_Q_X86
__attribute__((target("avx2"))) static double ste_block_avx2(const float *g, const float *q, float *out,
                                                             int64_t inner, float lo, float hi) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= inner; k += 8) {
        __m256 v = _mm256_loadu_ps(g + k);
        if (q) {
            __m256 t = _mm256_loadu_ps(q + k);
            __m256 cut = _mm256_or_ps(_mm256_cmp_ps(t, vlo, _CMP_LE_OQ), _mm256_cmp_ps(t, vhi, _CMP_GE_OQ));
            v = _mm256_andnot_ps(cut, v);
        }
        _mm256_storeu_ps(out + k, v);
        acc = _mm256_add_ps(acc, v);
    }
    float a[8];
    _mm256_storeu_ps(a, acc);
    double s = ste_block_portable(g + k, q ? q + k : q, out + k, inner - k, lo, hi);
    for (int i = 0; i < 8; i++) s += (double)a[i];
    return s;
}
#endif

void lnn_q_ste_f32(const float *g, const float *q, float *out, int64_t outer, int64_t C, int64_t inner, float lo,
                   float hi, float *sums, int32_t isa) {
    double acc[LNN_Q_MAX_CHANNELS];
    const int with_sums = sums != 0 && C <= LNN_Q_MAX_CHANNELS;
    (void)isa;
    if (with_sums)
        for (int64_t c = 0; c < C; c++) acc[c] = 0.0;
    if (inner == 1) { /* rows of a linear layer: the channels run along the row */
        for (int64_t o = 0; o < outer; o++) {
            const float *gr = g + o * C, *qr = q ? q + o * C : q;
            float *outr = out + o * C;
            for (int64_t c = 0; c < C; c++) {
                float v = gr[c];
                if (qr) {
                    float t = qr[c];
                    v = (t <= lo || t >= hi) ? 0.0f : v;
                }
                outr[c] = v;
            }
            if (with_sums)
                for (int64_t c = 0; c < C; c++) acc[c] += (double)outr[c];
        }
        if (with_sums)
            for (int64_t c = 0; c < C; c++) sums[c] = (float)acc[c];
        return;
    }
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t c = 0; c < C; c++) {
            const int64_t base = (o * C + c) * inner;
            const float *qb = q ? q + base : q;
            double s;
#ifdef LNN_Q_X86
            if (isa == LNN_Q_ISA_AVX2 && inner >= 8)
                s = ste_block_avx2(g + base, qb, out + base, inner, lo, hi);
            else
#endif
                s = ste_block_portable(g + base, qb, out + base, inner, lo, hi);
            if (with_sums) acc[c] += s;
        }
    }
    if (with_sums)
        for (int64_t c = 0; c < C; c++) sums[c] = (float)acc[c];
}

/* iqAdd / iqSub in training: the (min, max) of the float32 sum x + sign y without forming it (the observer's
 * statistic), and the chip's sum t = R(x s) + sign R(y s) (each operand rounded in float32 as the fake-quant rounds
 * it), out = SAT(t) * inv, in one pass; t (when not NULL) receives the unclamped sums for the gradient's mask. */
static void sum_bounds_portable(const float *x, const float *y, int64_t n, int32_t sign, float *bounds) {
    range_f32 r = range_empty();
    for (int64_t i = 0; i < n; i++) range_add(&r, sign > 0 ? x[i] + y[i] : x[i] - y[i]);
    range_store(&r, bounds);
}

static void sum_round_portable(const float *x, const float *y, float *out, float *t, int64_t n, float scale,
                               float inv, int32_t sign, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) {
        float a = floorf(x[i] * scale + 0.5f), b = floorf(y[i] * scale + 0.5f);
        float v = sign > 0 ? a + b : a - b;
        if (t) t[i] = v;
        out[i] = sat(v, lo, hi) * inv;
    }
}

#ifdef LNN_Q_X86
__attribute__((target("avx2"))) static void sum_bounds_avx2(const float *x, const float *y, int64_t n,
                                                            int32_t sign, float *bounds) {
    __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY), un = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(y + i);
        __m256 v = sign > 0 ? _mm256_add_ps(a, b) : _mm256_sub_ps(a, b);
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        un = _mm256_or_ps(un, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float l[8], h[8], tail[2];
    _mm256_storeu_ps(l, lo);
    _mm256_storeu_ps(h, hi);
    sum_bounds_portable(x + i, y + i, n - i, sign, tail);
    int nan = _mm256_movemask_ps(un) != 0 || tail[0] != tail[0];
    float rl = tail[0], rh = tail[1];
    for (int k = 0; k < 8; k++) {
        rl = l[k] < rl ? l[k] : rl;
        rh = h[k] > rh ? h[k] : rh;
    }
    bounds[0] = nan ? NAN : rl;
    bounds[1] = nan ? NAN : rh;
}

__attribute__((target("avx2"))) static void sum_round_avx2(const float *x, const float *y, float *out, float *t,
                                                           int64_t n, float scale, float inv, int32_t sign, float lo,
                                                           float hi) {
    const __m256 s = _mm256_set1_ps(scale), half = _mm256_set1_ps(0.5f), vinv = _mm256_set1_ps(inv);
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), s), half));
        __m256 b = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(y + i), s), half));
        __m256 v = sign > 0 ? _mm256_add_ps(a, b) : _mm256_sub_ps(a, b);
        if (t) _mm256_storeu_ps(t + i, v);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(LNN_Q_SAT8(v, vlo, vhi), vinv));
    }
    sum_round_portable(x + i, y + i, out + i, t ? t + i : t, n - i, scale, inv, sign, lo, hi);
}
#endif

void lnn_q_sum_bounds_f32(const float *x, const float *y, int64_t n, int32_t sign, float *bounds, int32_t isa) {
    (void)isa;
#ifdef LNN_Q_X86
    if (isa == LNN_Q_ISA_AVX2) {
        sum_bounds_avx2(x, y, n, sign, bounds);
        return;
    }
#endif
    sum_bounds_portable(x, y, n, sign, bounds);
}

void lnn_q_sum_round_f32(const float *x, const float *y, float *out, float *t, int64_t n, float scale, float inv,
                         int32_t sign, float lo, float hi, int32_t isa) {
    (void)isa;
#ifdef LNN_Q_X86
    if (isa == LNN_Q_ISA_AVX2) {
        sum_round_avx2(x, y, out, t, n, scale, inv, sign, lo, hi);
        return;
    }
#endif
    sum_round_portable(x, y, out, t, n, scale, inv, sign, lo, hi);
}
