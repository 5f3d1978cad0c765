/*
 * lnn_gemm.h - the instruction-set paths of the simulator and the packed int8 GEMM kernels of the
 * convolutions and linear layers (gemm.c; not installed).
 *
 * A model picks one path when it loads (lnn_isa_select): the best the CPU has, or the one the environment
 * variable LNN_SIM_ISA names (portable, avx2, avx512vnni). Every path computes the same integers:
 *
 *   portable    plain C loops (every compiler and CPU);
 *   avx2        the convolutions' im2col dot products with pmaddwd on int16-widened operands (ops/conv.c);
 *   avx512vnni  convolutions and linear layers as packed u8 x s8 GEMM with vpdpbusd (this file).
 * Depthwise convolutions and iqAdd / iqSub are plain C compiled per path by target attributes (ops/conv.c,
 * ops/eltwise.c).
 *
 * vpdpbusd multiplies unsigned bytes by signed bytes, so the activations enter as u = x + 128 (x ^ 0x80)
 * and every output subtracts 128 * sum_k w[m, k], the weight sum packed with the weights at load time.
 * vpdpbusd and the int32 vector adds wrap modulo 2^32, and the true sum sum_k x*w has |sum| <= K * 2^14 <=
 * 2^30 for K <= LNN_ACC32_TERMS, so the wrapped sum minus the correction (also modulo 2^32) is that sum
 * exactly: the same int32 the portable loop forms. Bias, the half-up shift and the saturation follow in
 * int64 lanes (lnn_shr, lnn_sat), or, for an int8 output with a shift of 0..31 and |bias| + K * 2^14 < 2^31 - 2,
 * in int32 lanes, where every intermediate then equals the int64 one.
 */
#ifndef LNN_GEMM_H
#define LNN_GEMM_H

#include "lnn_sim_internal.h"

#define LNN_ISA_PORTABLE 0
#define LNN_ISA_AVX2 1
#define LNN_ISA_AVX512VNNI 2

/* the path for a model being loaded: LNN_SIM_ISA if set (an unknown name, or a path this CPU or build
 * lacks, is an error with a message), else the best available; -1 on error */
int32_t lnn_isa_select(char *msg, size_t n);
/* the paths this build and CPU can run, as a bit set (1 << LNN_ISA_*) */
int32_t lnn_isa_available(void);
const char *lnn_isa_name(int32_t isa);

/* packed weights of an [M][K] int8 matrix for the VNNI convolution: M rows of Kp = K rounded up to 4
 * bytes (zero padded) at offset 0, then M int32 corrections 128 * sum_k w[m, k] */
int64_t lnn_gemm_conv_packed_bytes(int32_t M, int64_t K);
void lnn_gemm_conv_pack(const int8_t *w, int32_t M, int64_t K, uint8_t *dst);
typedef struct {
    int32_t kh, kw, sh, sw, pt, pl, dh, dw;
} lnn_gemm_window;

/* bytes of the VNNI window matrix ([Kp / 4][Pp][4] u8, Pp = P rounded up to 16) and of what builds it (4 rows
 * of Pp, the zero-padded input planes of one group as u8) */
int64_t lnn_gemm_conv_col_bytes(const lnn_gemm_window *g, int32_t cin_g, int32_t Ho, int32_t Wo);

/* the VNNI window matrix of one group: col[(k / 4) * Pp * 4 + q * 4 + k % 4] = x[c, ih, iw] + 128 (or 128 at
 * padding), k = (c * kh + ky) * kw + kx, q = oh * Wo + ow */
void lnn_gemm_im2col_u8(const lnn_gemm_window *g, const int8_t *xg, int32_t cin_g, int32_t H, int32_t W,
                        int32_t Ho, int32_t Wo, uint8_t *col);

/* y[ybase + m * P + q] = SAT_dt(SHR(sum_k w[m, k] * x[k, q] + bias[m], shift)) for m0 <= m < m1, q < P, then
 * max(., 0) when relu (the fused ReLU); packed holds the whole [M][K] weight matrix (bias may be NULL) */
void lnn_gemm_conv_vnni(const uint8_t *packed, int32_t M, int64_t K, int32_t m0, int32_t m1, const uint8_t *col,
                        int64_t P, const int32_t *bias, int32_t shift, int32_t dt, int32_t relu, void *y,
                        int64_t ybase);

/* packed weights of a LinearInt [N][K] for VNNI: [ceil(N / 16)][Kp / 4][16][4] s8 (zero padded), then
 * ceil(N / 16) * 16 int32 corrections */
int64_t lnn_gemm_linear_packed_bytes(int32_t N, int64_t K);
void lnn_gemm_linear_pack(const int8_t *w, int32_t N, int64_t K, uint8_t *dst);
/* y[r, j] = SAT_dt(SHR(b[j] + sum_k x[r, k] * w[j, k], shift)); xu: Kp bytes of scratch */
void lnn_gemm_linear_vnni(const uint8_t *packed, int32_t N, int64_t K, const int8_t *x, int64_t rows,
                          const int32_t *bias, int32_t shift, int32_t dt, void *y, uint8_t *xu);

#endif /* LNN_GEMM_H */
