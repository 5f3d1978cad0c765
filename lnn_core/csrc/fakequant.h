/* lnn_core's fake-quantization kernels (fakequant.c); src/lnn_core/quant/_kernels_build.py hands these
 * declarations to cffi as they are. */
#ifndef LNN_FAKEQUANT_H
#define LNN_FAKEQUANT_H

#include <stdint.h>

#define LNN_Q_ISA_PORTABLE 0
#define LNN_Q_ISA_AVX2 1

/* the best instruction set this CPU runs (LNN_Q_ISA_*) */
int32_t lnn_q_isa_available(void);
/* out[0], out[1] = min, max of x[0..n) (n >= 1); both NaN when any element is NaN */
void lnn_q_bounds_f32(const float *x, int64_t n, float *out, int32_t isa);
/* out = SAT(floor(x * scale + 0.5f)) * inv in float32 (scale a power of two, taken as float), or with exact set
 * floor((double)x * scale + 0.5) in float64 (exact half-up) rounded to float32; SAT (to [lo, hi]) only when clamp is
 * set, and then q (when not NULL) receives the unclamped integers. out may be x. */
void lnn_q_round_f32(const float *x, float *out, float *q, int64_t n, double scale, float inv, float lo, float hi,
                     int32_t clamp, int32_t exact, int32_t isa);
/* BatchNorm folded into the op's weights (C output channels of K weights) and bias, as the torch expression does */
void lnn_q_fold_f32(const float *w, const float *b, const float *mean, const float *var, float eps,
                    const float *gamma, const float *beta, int64_t C, int64_t K, float *wf, float *bf, float *aux,
                    float *bounds);
/* its gradients (any output may be NULL; gbf NULL: no gradient reached the bias) */
void lnn_q_fold_backward_f32(const float *gwf, const float *gbf, const float *w, const float *aux, int64_t C,
                             int64_t K, float *gw, float *gb, float *ggamma, float *gbeta);
/* the straight-through gradient (q NULL: none saturated) and the per-channel sums of it (sums NULL: not wanted;
 * at most LNN_Q_MAX_CHANNELS channels) */
#define LNN_Q_MAX_CHANNELS 4096
void lnn_q_ste_f32(const float *g, const float *q, float *out, int64_t outer, int64_t C, int64_t inner, float lo,
                   float hi, float *sums, int32_t isa);
/* iqAdd / iqSub in training: the bounds of x + sign y, and the chip's sum of the rounded operands, saturated */
void lnn_q_sum_bounds_f32(const float *x, const float *y, int64_t n, int32_t sign, float *bounds, int32_t isa);
void lnn_q_sum_round_f32(const float *x, const float *y, float *out, float *t, int64_t n, float scale, float inv,
                         int32_t sign, float lo, float hi, int32_t isa);

#endif
