/*
 * lnn_sim_internal.h - arithmetic helpers shared by the kernels and the runtime (not installed).
 *
 * SHR and SAT are written once here; every kernel requantizes through lnn_rq().
 */
#ifndef LNN_SIM_INTERNAL_H
#define LNN_SIM_INTERNAL_H

#include "lnn_sim.h"

#include <stdint.h>
#include <string.h>

/* The half-up shift below relies on arithmetic right shift of negative values, which every
 * compiler we build with (gcc, clang, MSVC) implements; refuse to build where it does not hold. */
#if ((-1) >> 1) != -1
#error "lnn_sim needs arithmetic right shift of negative integers"
#endif

/* Accumulator bound: |x| <= 2^7 and |w| <= 2^7, so |x * w| <= 2^14; a sum of at most
 * LNN_ACC32_TERMS = 2^16 such products stays within 2^30 < 2^31 and fits int32 exactly.
 * Longer sums are split into chunks of at most LNN_ACC32_TERMS terms, each added into int64. */
#define LNN_ACC32_TERMS 65536
#if LNN_SIM_MAX_WINDOW_AREA > LNN_ACC32_TERMS
#error "a conv window's products must fit one int32 accumulator plane"
#endif

static inline int64_t lnn_floor_div(int64_t a, int64_t b) { /* b > 0 */
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static inline int64_t lnn_ceil_div(int64_t a, int64_t b) { /* b > 0 */
    return -lnn_floor_div(-a, b);
}

/* SHR(v, s): s > 0: floor(v / 2^s + 0.5); s = 0: v; s < 0: v * 2^-s, saturated to int64 (the
 * result is saturated to a narrower type afterwards, so the clamp never shows). */
static inline int64_t lnn_shr(int64_t v, int32_t s) {
    if (s > 0) {
        if (s >= 64) return 0; /* |v| < 2^63 <= 2^(s-1): v / 2^s lies in [-0.5, 0.5) */
        return ((v >> (s - 1)) + 1) >> 1;
    }
    if (s == 0 || v == 0) return v;
    if (s <= -63) return v > 0 ? INT64_MAX : INT64_MIN;
    {
        int64_t lim = INT64_MAX >> (-s);
        if (v > lim) return INT64_MAX;
        if (v < -lim) return INT64_MIN;
        return v * ((int64_t)1 << (-s));
    }
}

static inline int64_t lnn_sat(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline int64_t lnn_dtype_min(int32_t dt) {
    switch (dt) {
    case LNN_SIM_DT_INT8: return INT8_MIN;
    case LNN_SIM_DT_UINT8: return 0;
    case LNN_SIM_DT_INT16: return INT16_MIN;
    case LNN_SIM_DT_INT32: return INT32_MIN;
    default: return INT64_MIN;
    }
}

static inline int64_t lnn_dtype_max(int32_t dt) {
    switch (dt) {
    case LNN_SIM_DT_INT8: return INT8_MAX;
    case LNN_SIM_DT_UINT8: return UINT8_MAX;
    case LNN_SIM_DT_INT16: return INT16_MAX;
    case LNN_SIM_DT_INT32: return INT32_MAX;
    default: return INT64_MAX;
    }
}

static inline int32_t lnn_dtype_size(int32_t dt) {
    switch (dt) {
    case LNN_SIM_DT_FLOAT32: return 4;
    case LNN_SIM_DT_INT8: return 1;
    case LNN_SIM_DT_UINT8: return 1;
    case LNN_SIM_DT_INT16: return 2;
    case LNN_SIM_DT_INT32: return 4;
    case LNN_SIM_DT_INT64: return 8;
    default: return 0;
    }
}

/* Store SAT_dt(v) at element i of an int8/int16/int32 buffer. */
static inline void lnn_store(void *y, int64_t i, int32_t dt, int64_t v) {
    v = lnn_sat(v, lnn_dtype_min(dt), lnn_dtype_max(dt));
    switch (dt) {
    case LNN_SIM_DT_INT8: ((int8_t *)y)[i] = (int8_t)v; break;
    case LNN_SIM_DT_INT16: ((int16_t *)y)[i] = (int16_t)v; break;
    default: ((int32_t *)y)[i] = (int32_t)v; break;
    }
}

static inline int64_t lnn_load(const void *x, int64_t i, int32_t dt) {
    switch (dt) {
    case LNN_SIM_DT_INT8: return ((const int8_t *)x)[i];
    case LNN_SIM_DT_UINT8: return ((const uint8_t *)x)[i];
    case LNN_SIM_DT_INT16: return ((const int16_t *)x)[i];
    default: return ((const int32_t *)x)[i];
    }
}

static inline int lnn_is_int_out(int32_t dt) {
    return dt == LNN_SIM_DT_INT8 || dt == LNN_SIM_DT_INT16 || dt == LNN_SIM_DT_INT32;
}

#endif /* LNN_SIM_INTERNAL_H */
