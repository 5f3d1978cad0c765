/*
 * ops/activation.c - the Venus activation kernels on int16 input: iqSigmoid and iqTanh (spec/int8-seq-ops.md
 * 1.3 and 2.6.4; thinker venus/iqsigmoid.h, venus/iqtanh.h).
 *
 *   t = n_x > 11 ? SAT_16(SHR(x, n_x - 11)) : x          (the int16 input brought to Q11; n_x >= 11 required)
 *   iqSigmoid: y = SAT_8(SHR(SAT_16(sig15(t)), 8))       (int8, Q7: output exponent 7)
 *   iqTanh:    y = SAT_8(SHR(SAT_16(tanh15(t)), 8))
 *
 * sig15 / tanh15 are the 16-segment piecewise-linear functions of luna_sigmoid / luna_tanh (Q11 in, Q15 out),
 * with the segment tables of spec 1.3. The products are formed in int64 and floored (arithmetic shift).
 *
 * The chip feeds an input below Q11 to the PWL unscaled (iqSigmoid) or leaves it unchanged (iqTanh), and writes
 * Q7 whatever the output scale says: the loader refuses n_x < 11 and an output exponent other than 7 instead of
 * emulating either. iqTanh on the chip rescales its input in place when n_x != 11; here the input is left as it
 * is (lnn's graphs give that int16 tensor one consumer, the Requant -> iqTanh pair).
 */
#include "lnn_sim_model.h"

#define LNN_ACT_Q 11     /* the PWL's input format */
#define LNN_ACT_OUT_EXP 7 /* the int8 output format */

static const int32_t k_sig_b[16] = {971, 1699, 2347, 2974, 3614, 4291, 5026, 5861,
                                    6831, 7864, 8987, 10375, 11594, 13168, 14730, 32768};
static const int32_t k_sig_k[16] = {32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113,
                                    10881, 27353, 16611, 9242, 4618, 20670, 8610, 693};
static const int32_t k_sig_sh[16] = {13, 13, 13, 13, 13, 14, 14, 14, 14, 16, 16, 16, 16, 19, 19, 19};
static const int32_t k_sig_c0[16] = {16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249,
                                     27121, 28807, 30096, 31107, 31839, 32199, 32502, 32724};
static const int32_t k_sig_c1[16] = {16384, 16047, 15304, 14209, 12814, 11183, 9388, 7519,
                                     5647, 3961, 2672, 1661, 929, 569, 266, 44};

static const int32_t k_tanh_b[16] = {512, 888, 1226, 1558, 1899, 2264, 2670, 3146,
                                     3734, 4297, 4761, 5466, 6151, 7193, 8093, 32768};
static const int32_t k_tanh_k[16] = {32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765,
                                     8599, 19497, 12047, 7324, 3373, 26820, 5531, 337};
static const int32_t k_tanh_sh[16] = {11, 11, 11, 11, 11, 12, 12, 12, 12, 14, 14, 14, 14, 18, 18, 18};
static const int32_t k_tanh_c[16] = {0, 778, 2417, 4851, 7922, 11474, 15334, 19335,
                                     23303, 26699, 28653, 30026, 31344, 31981, 32565, 32725};

/* the smallest segment s with a <= b[s] (a <= 32768 = b[15]) */
static int32_t lnn_segment(const int32_t *b, int32_t a) {
    int32_t s = 0;
    while (s < 15 && a > b[s]) ++s;
    return s;
}

/* sig15(t): Q11 -> Q15; floor(K * t / 2^sh) with t signed, then the segment's offset for the sign of t */
static int64_t lnn_sig15(int32_t t) {
    const int32_t a = t < 0 ? -t : t;
    const int32_t s = lnn_segment(k_sig_b, a);
    return (((int64_t)k_sig_k[s] * t) >> k_sig_sh[s]) + (t >= 0 ? k_sig_c0[s] : k_sig_c1[s]);
}

/* tanh15(t): Q11 -> Q15; a = |t| (32767 for -32768), not exactly odd */
static int64_t lnn_tanh15(int32_t t) {
    const int32_t a = t == -32768 ? 32767 : (t < 0 ? -t : t);
    const int32_t s = lnn_segment(k_tanh_b, a);
    if (t >= 0) return (((int64_t)k_tanh_k[s] * a) >> k_tanh_sh[s]) + k_tanh_c[s];
    return ((-(int64_t)k_tanh_k[s] * a) >> k_tanh_sh[s]) - k_tanh_c[s];
}

lnn_sim_status lnn_sim_activation_s16(int32_t op, int32_t in_exponent, int64_t count, const int16_t *x, int8_t *y) {
    const int32_t s = in_exponent - LNN_ACT_Q;
    int64_t i;
    if (s < 0 || in_exponent > LNN_SIM_MAX_EXPONENT) return LNN_SIM_E_ATTR;
    if (op != LNN_SIM_OP_SIGMOID && op != LNN_SIM_OP_TANH) return LNN_SIM_E_ATTR;
    for (i = 0; i < count; ++i) {
        const int32_t t = s > 0 ? (int32_t)lnn_sat(lnn_shr(x[i], s), INT16_MIN, INT16_MAX) : (int32_t)x[i];
        const int64_t y15 = lnn_sat(op == LNN_SIM_OP_SIGMOID ? lnn_sig15(t) : lnn_tanh15(t), INT16_MIN, INT16_MAX);
        y[i] = (int8_t)lnn_sat(lnn_shr(y15, 8), INT8_MIN, INT8_MAX);
    }
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

static lnn_sim_status prepare_activation(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                         size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0 || x->dtype != LNN_SIM_DT_INT16 || y->dtype != LNN_SIM_DT_INT8 || !lnn_same_dims(x, y))
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': %s maps int16 to int8 of the same shape", op->name,
                        op->kernel->name);
    if (x->exponent < LNN_ACT_Q || x->exponent > LNN_SIM_MAX_EXPONENT)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': input exponent %d is below %d (the kernel reads Q11 and only "
                        "shifts right)", op->name, (int)x->exponent, LNN_ACT_Q);
    if (y->exponent != LNN_ACT_OUT_EXP)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent %d is not %d (the kernel writes Q7)", op->name,
                        (int)y->exponent, LNN_ACT_OUT_EXP);
    return LNN_SIM_OK;
}

static lnn_sim_status run_sigmoid(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_activation_s16(LNN_SIM_OP_SIGMOID, x->exponent, x->numel, (const int16_t *)x->data,
                                  (int8_t *)y->data);
}

static lnn_sim_status run_tanh(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_activation_s16(LNN_SIM_OP_TANH, x->exponent, x->numel, (const int16_t *)x->data,
                                  (int8_t *)y->data);
}

const lnn_op_kernel lnn_op_sigmoid = {"iqSigmoid", 1, prepare_activation, run_sigmoid, NULL};
const lnn_op_kernel lnn_op_tanh = {"iqTanh", 1, prepare_activation, run_tanh, NULL};
