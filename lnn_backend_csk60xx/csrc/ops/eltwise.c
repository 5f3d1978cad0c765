/*
 * ops/eltwise.c - element-wise integer ops: Relu, Clip, iqAdd, iqSub, iqMul.
 *
 *   iqAdd: y = SAT_8(SHR(x, n_x - n_o) + SHR(y, n_y - n_o))   (each operand rescaled separately)
 *          A left shift (n_o > n_x) is at most LNN_SIM_MAX_LEFT_SHIFT: |SHR(x, s)| <= 2^7 * 2^32 = 2^39, so the sum
 *          of two is exact in int64 (a larger shift would saturate both operands and overflow the sum).
 *   iqSub: y = SAT_8(SHR(x, n_x - n_o) - SHR(y, n_y - n_o))   (intended semantics, spec 3.15)
 *   iqMul: y = SAT_8(SHR(x * y, n_x + n_y - n_o))
 *   Relu / Clip: y = min(max(q, lo), hi) on int8/int16/int32 (Relu: lo = 0, hi = the dtype's maximum)
 */
#include "lnn_sim_model.h"

/* SHR(v, s) for |v| <= 2^14 and s >= -16 as branch-free int32 arithmetic with loop-invariant shift counts, so
 * that the loops below vectorise: s > 0: ((v >> (s - 1)) + 1) >> 1 (half-up); s = 0: v; s < 0: v * 2^-s, at most
 * 2^30 in magnitude (int8 operands: |v| <= 2^7; products of two: |v| <= 2^14), so a sum of two stays in int32.
 * For s > 17 the result is 0 for such v, as for s = 17, so the count is capped there. */
typedef struct {
    int32_t l, r1, add, r2;
} lnn_shr32;

static lnn_shr32 shr32_of(int32_t s) {
    lnn_shr32 k = {0, 0, 0, 0};
    if (s > 0) {
        k.r1 = (s > 17 ? 17 : s) - 1;
        k.add = 1;
        k.r2 = 1;
    } else if (s < 0) {
        k.l = -s;
    }
    return k;
}

static inline int32_t shr32(int32_t v, lnn_shr32 k) {
    return (((int32_t)((uint32_t)v << k.l) >> k.r1) + k.add) >> k.r2;
}

static inline int8_t sat8(int32_t v) { return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v)); }

/* the int32 form of iqAdd (sub = 0) / iqSub (sub = 1) on same-shaped operands; compiled for the baseline CPU and,
 * by target attributes, for AVX2 and AVX-512BW (the model's instruction-set path picks one; same integers) */
#if defined(__GNUC__) || defined(__clang__)
#define LNN_ELT_INLINE inline __attribute__((always_inline))
#else
#define LNN_ELT_INLINE inline
#endif
static LNN_ELT_INLINE void addsub32_impl(int sub, lnn_shr32 kx, lnn_shr32 ky, int64_t count, const int8_t *x,
                                         const int8_t *y, int8_t *out) {
    int64_t i;
    if (sub) {
        for (i = 0; i < count; ++i) out[i] = sat8(shr32(x[i], kx) - shr32(y[i], ky));
    } else {
        for (i = 0; i < count; ++i) out[i] = sat8(shr32(x[i], kx) + shr32(y[i], ky));
    }
}
typedef void (*addsub32_fn)(int sub, lnn_shr32 kx, lnn_shr32 ky, int64_t count, const int8_t *x, const int8_t *y,
                            int8_t *out);
static void addsub32_c(int sub, lnn_shr32 kx, lnn_shr32 ky, int64_t count, const int8_t *x, const int8_t *y,
                       int8_t *out) {
    addsub32_impl(sub, kx, ky, count, x, y, out);
}
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(LNN_SIM_NO_SIMD)
#define LNN_ELT_X86 1
__attribute__((target("avx2"))) static void addsub32_avx2(int sub, lnn_shr32 kx, lnn_shr32 ky, int64_t count,
                                                          const int8_t *x, const int8_t *y, int8_t *out) {
    addsub32_impl(sub, kx, ky, count, x, y, out);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void addsub32_avx512(
    int sub, lnn_shr32 kx, lnn_shr32 ky, int64_t count, const int8_t *x, const int8_t *y, int8_t *out) {
    addsub32_impl(sub, kx, ky, count, x, y, out);
}
#endif

static lnn_sim_status eltwise_s8(const lnn_sim_eltwise_params *p, int64_t count, const int8_t *x, const int8_t *y,
                                 int8_t *out, int32_t isa) {
    int64_t i;
    const int same = p->y_inner == 1 && p->y_period == count;
    if (p->y_inner < 1 || p->y_period < 1) return LNN_SIM_E_ATTR;
    if (p->op != LNN_SIM_OP_MUL && (p->shift_x < -LNN_SIM_MAX_LEFT_SHIFT || p->shift_y < -LNN_SIM_MAX_LEFT_SHIFT))
        return LNN_SIM_E_ATTR;
    if (p->op != LNN_SIM_OP_MUL && p->shift_x >= -16 && p->shift_y >= -16) { /* the int32 form (exact here) */
        addsub32_fn f = addsub32_c;
#ifdef LNN_ELT_X86
        if (isa == LNN_ISA_AVX512VNNI) f = addsub32_avx512; /* the path exists only where the CPU has AVX-512BW */
        if (isa == LNN_ISA_AVX2) f = addsub32_avx2;
#endif
        (void)isa;
        f(p->op == LNN_SIM_OP_SUB, shr32_of(p->shift_x), shr32_of(p->shift_y), count, x, y, out);
        return LNN_SIM_OK;
    }
    if (p->op == LNN_SIM_OP_MUL && same && p->shift_x >= -16) {
        const lnn_shr32 k = shr32_of(p->shift_x);
        for (i = 0; i < count; ++i) out[i] = sat8(shr32((int32_t)x[i] * y[i], k));
        return LNN_SIM_OK;
    }
    switch (p->op) {
    case LNN_SIM_OP_ADD:
        if (p->shift_x == 0 && p->shift_y == 0) {
            for (i = 0; i < count; ++i) out[i] = (int8_t)lnn_sat((int32_t)x[i] + y[i], -128, 127);
        } else {
            for (i = 0; i < count; ++i)
                out[i] = (int8_t)lnn_sat(lnn_shr(x[i], p->shift_x) + lnn_shr(y[i], p->shift_y), -128, 127);
        }
        return LNN_SIM_OK;
    case LNN_SIM_OP_SUB:
        for (i = 0; i < count; ++i)
            out[i] = (int8_t)lnn_sat(lnn_shr(x[i], p->shift_x) - lnn_shr(y[i], p->shift_y), -128, 127);
        return LNN_SIM_OK;
    case LNN_SIM_OP_MUL:
        if (same) {
            for (i = 0; i < count; ++i) out[i] = (int8_t)lnn_sat(lnn_shr((int64_t)x[i] * y[i], p->shift_x), -128, 127);
        } else {
            for (i = 0; i < count; ++i) {
                const int64_t yv = y[(i / p->y_inner) % p->y_period];
                out[i] = (int8_t)lnn_sat(lnn_shr((int64_t)x[i] * yv, p->shift_x), -128, 127);
            }
        }
        return LNN_SIM_OK;
    default:
        return LNN_SIM_E_ATTR;
    }
}

lnn_sim_status lnn_sim_eltwise_s8(const lnn_sim_eltwise_params *p, int64_t count, const int8_t *x,
                                  const int8_t *y, int8_t *out) {
    return eltwise_s8(p, count, x, y, out, LNN_ISA_PORTABLE);
}

lnn_sim_status lnn_sim_clip(int32_t dtype, int64_t lo, int64_t hi, int64_t count, const void *x, void *y) {
    int64_t i;
    if (!lnn_is_int_out(dtype)) return LNN_SIM_E_SHAPE;
    if (dtype == LNN_SIM_DT_INT8) {
        const int8_t *xs = (const int8_t *)x;
        int8_t *ys = (int8_t *)y;
        const int8_t l = (int8_t)lnn_sat(lo, -128, 127), h = (int8_t)lnn_sat(hi, -128, 127);
        for (i = 0; i < count; ++i) ys[i] = xs[i] < l ? l : (xs[i] > h ? h : xs[i]);
        return LNN_SIM_OK;
    }
    for (i = 0; i < count; ++i) lnn_store(y, i, dtype, lnn_sat(lnn_load(x, i, dtype), lo, hi));
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

static lnn_sim_status prepare_clip_like(const lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    if (st != LNN_SIM_OK) return st;
    if (!lnn_is_int_out(x->dtype) || y->dtype != x->dtype || y->exponent != x->exponent || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': input and output must match in dtype, scale and shape", op->name);
    return LNN_SIM_OK;
}

static lnn_sim_status prepare_relu(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                   size_t n) {
    const lnn_sim_status st = prepare_clip_like(m, op, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0) return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': Relu has no attributes", op->name);
    op->p.clip.lo = 0;
    op->p.clip.hi = lnn_dtype_max(LNN_IN(m, op, 0)->dtype);
    return LNN_SIM_OK;
}

/* attributes: lo, hi (integers at the input's scale) */
static lnn_sim_status prepare_clip(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                   size_t n) {
    const lnn_sim_status st = prepare_clip_like(m, op, msg, n);
    int32_t dt;
    (void)need;
    if (st != LNN_SIM_OK) return st;
    dt = LNN_IN(m, op, 0)->dtype;
    if (op->n_attrs != 2 || op->attrs[0] > op->attrs[1] || op->attrs[0] < lnn_dtype_min(dt) ||
        op->attrs[1] > lnn_dtype_max(dt))
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': Clip needs lo <= hi within the dtype range", op->name);
    op->p.clip.lo = op->attrs[0];
    op->p.clip.hi = op->attrs[1];
    return LNN_SIM_OK;
}

static lnn_sim_status run_clip(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_clip(x->dtype, op->p.clip.lo, op->p.clip.hi, x->numel, x->data, y->data);
}

static lnn_sim_status prepare_binary(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                     size_t n) {
    const lnn_tensor *x, *yy, *o;
    (void)need;
    if (op->n_in != 2 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs two inputs and no attributes", op->name);
    x = LNN_IN(m, op, 0);
    yy = LNN_IN(m, op, 1);
    o = LNN_OUT(m, op, 0);
    if (x->dtype != LNN_SIM_DT_INT8 || yy->dtype != LNN_SIM_DT_INT8 || o->dtype != LNN_SIM_DT_INT8 ||
        !lnn_same_dims(x, o))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 operands and an int8 output shaped like x", op->name);
    op->p.elt.op = op->type;
    op->p.elt.y_inner = 1;
    op->p.elt.y_period = x->numel;
    if (op->type == LNN_SIM_OP_MUL) {
        op->p.elt.shift_x = x->exponent + yy->exponent - o->exponent;
        op->p.elt.shift_y = 0;
        if (lnn_same_dims(x, yy)) return LNN_SIM_OK;
        if (yy->numel == 1) {
            op->p.elt.y_period = 1;
            return LNN_SIM_OK;
        }
        if (x->rank == 4 && yy->rank == 4 && yy->dims[0] == x->dims[0] && yy->dims[1] == x->dims[1] &&
            yy->dims[2] == 1 && yy->dims[3] == 1) {
            op->p.elt.y_inner = (int64_t)x->dims[2] * x->dims[3];
            op->p.elt.y_period = (int64_t)x->dims[0] * x->dims[1];
            return LNN_SIM_OK;
        }
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': y must match x, be [N, C, 1, 1] or a scalar", op->name);
    }
    if (!lnn_same_dims(x, yy)) return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': operands must have equal shapes", op->name);
    op->p.elt.shift_x = x->exponent - o->exponent;
    op->p.elt.shift_y = yy->exponent - o->exponent;
    if (op->p.elt.shift_x < -LNN_SIM_MAX_LEFT_SHIFT || op->p.elt.shift_y < -LNN_SIM_MAX_LEFT_SHIFT)
        return LNN_FAIL(LNN_SIM_E_ATTR,
                        "op '%s': output exponent %d exceeds the operands' (%d, %d) by more than %d (limit: n_o - n_x "
                        "and n_o - n_y <= %d, so that the rescaled operands add exactly)",
                        op->name, o->exponent, x->exponent, yy->exponent, LNN_SIM_MAX_LEFT_SHIFT,
                        LNN_SIM_MAX_LEFT_SHIFT);
    return LNN_SIM_OK;
}

static lnn_sim_status run_binary(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *yy = LNN_IN(m, op, 1), *o = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return eltwise_s8(&op->p.elt, x->numel, (const int8_t *)x->data, (const int8_t *)yy->data, (int8_t *)o->data,
                      m->isa);
}

const lnn_op_kernel lnn_op_relu = {"Relu", 1, prepare_relu, run_clip};
const lnn_op_kernel lnn_op_clip = {"Clip", 1, prepare_clip, run_clip};
const lnn_op_kernel lnn_op_add = {"iqAdd", 1, prepare_binary, run_binary};
const lnn_op_kernel lnn_op_sub = {"iqSub", 1, prepare_binary, run_binary};
const lnn_op_kernel lnn_op_mul = {"iqMul", 1, prepare_binary, run_binary};
