/* Training kernel of the chip's LayerNormInt (layernorm.c); src/lnn_ops_builtin/_kernels_build.py hands these
 * declarations to cffi as they are. */
#ifndef LNN_OPS_LAYERNORM_H
#define LNN_OPS_LAYERNORM_H

#include <stdint.h>

/* the longest row the kernel takes (the chip's rows are at most 362) */
#define LNN_LN_MAX_ROW 1024

/* rows x t float32 values x at the scale 2^n_x (scale_x), requantized by scale_s = 2^-s when requant is set; the
 * 768-entry rsqrt table; gamma_q, beta_q (t float32 values each) -> y (float32) and bounds = (min, max) of y; t at
 * most LNN_LN_MAX_ROW. isa: 0 portable C, 1 AVX2 (only where the CPU has it). Returns 0, or 1 when x holds an
 * infinity or NaN (nothing useful written), 2 for a row length out of range. */
int32_t lnn_ln_chip_f32(const float *x, int64_t rows, int64_t t, float scale_x, float scale_s, int32_t requant,
                        int64_t q_eps, const int32_t *table, const float *gamma, const float *beta, float *y,
                        float *bounds, int32_t isa);

#endif
