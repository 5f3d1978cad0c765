/*
 * ops/rnn_gates.h - the gate matrix-vector product of the recurrent kernels (gru.c, lstm.c), included by both.
 *
 * acc[j] = sum_i v[i] * w[j * k + i] for j < rows, in int32: every product is at most 2^14 in magnitude and
 * k <= 65535, so |acc| < 2^30 and the sum is exact in any order. The avx2 path widens 16 bytes at a time to int16
 * and adds pairs of products with pmaddwd (exact: |a*b + c*d| <= 2^15); the portable path is the plain loop. A
 * model's instruction-set path (m->isa, lnn_gemm.h) picks one; both give the same integers. Also the shape helper
 * both kernels' prepare steps use.
 */
#ifndef LNN_RNN_GATES_H
#define LNN_RNN_GATES_H

#include "lnn_gemm.h"
#include "lnn_sim_model.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(LNN_SIM_NO_SIMD)
#define LNN_RNN_AVX2 1
#include <immintrin.h>
#endif

typedef void (*lnn_rnn_matvec_fn)(const int8_t *v, int32_t k, const int8_t *w, int32_t rows, int32_t *acc);

static void lnn_rnn_matvec_portable(const int8_t *v, int32_t k, const int8_t *w, int32_t rows, int32_t *acc) {
    int32_t j, i;
    for (j = 0; j < rows; ++j) {
        const int8_t *wj = w + (int64_t)j * k;
        int32_t s = 0;
        for (i = 0; i < k; ++i) s += (int32_t)v[i] * wj[i];
        acc[j] = s;
    }
}

#ifdef LNN_RNN_AVX2
__attribute__((target("avx2"))) static void lnn_rnn_matvec_avx2(const int8_t *v, int32_t k, const int8_t *w,
                                                                int32_t rows, int32_t *acc) {
    int32_t j, i;
    for (j = 0; j < rows; ++j) {
        const int8_t *wj = w + (int64_t)j * k;
        __m256i s = _mm256_setzero_si256();
        __m128i t;
        int32_t r;
        for (i = 0; i + 16 <= k; i += 16) {
            const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(v + i)));
            const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(wj + i)));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(a, b));
        }
        t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        r = _mm_cvtsi128_si32(t);
        for (; i < k; ++i) r += (int32_t)v[i] * wj[i];
        acc[j] = r;
    }
}
#endif

static lnn_rnn_matvec_fn lnn_rnn_pick_matvec(int32_t isa) {
#ifdef LNN_RNN_AVX2
    if (isa != LNN_ISA_PORTABLE && __builtin_cpu_supports("avx2")) return lnn_rnn_matvec_avx2;
#endif
    (void)isa;
    return lnn_rnn_matvec_portable;
}

/* the sequence length of a batch-1 [T,1,C] / [1,T,C] tensor with last dimension c, or -1 */
static int64_t lnn_rnn_seq_len(const lnn_tensor *v, int64_t c) {
    if (v->rank != 3 || v->dims[2] != c) return -1;
    if (v->dims[1] == 1) return v->dims[0];
    if (v->dims[0] == 1) return v->dims[1];
    return -1;
}

#endif /* LNN_RNN_GATES_H */
