/*
 * ops/gru.c - GRUInt (spec/int8-seq-ops.md 2.2.4; thinker venus/gruint.h), one sequence.
 *
 * x int8 [T,1,D] or [1,T,D] at n_i, w_ih int8 [3H,D] at n_iw, w_hh int8 [3H,H] at n_hw (PyTorch layout, gates
 * r, z, n), b_ih int32 [3H] at n_i + n_iw, b_hh int32 [3H] at n_o + n_hw, then optionally lengths (int32 [1],
 * integers) and h0 int8 [1,1,H] at n_o; outputs y int8 [T,1,H] / [1,T,H] at n_o and h_n int8 [1,1,H] at n_o (the
 * hidden state lives in it, as on the chip). Optional attribute 0: 1 runs t = L-1..0 (go_forward = 0). From h0
 * (or zeros), for the first L = lengths[0] (or T) steps; rows of y at and after L are zeros. The initial state,
 * lengths and the reverse direction are lnn's: the vendor kernel reads none of them (the pack rules warn). Per step:
 *
 *   gi = SAT_32(SHR(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw - 11))        Q11
 *   gh = SAT_32(SHR(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw - 11))
 *   r = sig8(SAT_16(gi_r + gh_r)), z = sig8(SAT_16(gi_z + gh_z))                   Q7
 *   n = tanh8(SAT_16(gi_n + SAT_32(SHR(r * gh_n, 7))))                             Q7
 *   h = SAT_8(SHR(SAT_16(z * SAT_8(SHR(h, 1))) + SAT_16((128 - z) * n), 14 - n_o))
 *
 * sig8 / tanh8 are the Q11 -> Q7 activations of ops/activation.c. The chip's Luna routines do no scaling for a
 * negative shift (spec 1.1): the loader accepts the right-shift range only (n_i + n_iw >= 11, n_o + n_hw >= 11,
 * n_o <= 14) and batch 1 (the chip addresses x batch-major whatever batch_first says). Scratch: gi and gh, 6H
 * int64 entries (the chip's 24H bytes), and 3H int32 dot products.
 */
#include "lnn_sim_model.h"
#include "rnn_gates.h"

#define LNN_GRU_Q 11

static int64_t sat(int64_t v, int bits) {
    const int64_t hi = ((int64_t)1 << (bits - 1)) - 1;
    return lnn_sat(v, -hi - 1, hi);
}


/* gates[j] = SAT_32(SHR(SAT_32(SAT_32(v . W[j,:]) + b[j]), s)) for j < rows (v . W[j,:] exact in int32, see
 * rnn_gates.h; acc: rows int32 of scratch) */
static void gate_rows(lnn_rnn_matvec_fn matvec, const int8_t *v, int32_t k, const int8_t *w, const int32_t *b,
                      int32_t rows, int32_t s, int64_t *gates, int32_t *acc) {
    int32_t j;
    matvec(v, k, w, rows, acc);
    for (j = 0; j < rows; ++j) gates[j] = sat(lnn_shr(sat((int64_t)acc[j] + b[j], 32), s), 32);
}

lnn_sim_status lnn_sim_gru_s8(int32_t n_i, int32_t n_iw, int32_t n_hw, int32_t n_o, int64_t steps, int64_t length,
                              int32_t reverse, int32_t d, int32_t h, const int8_t *x, const int8_t *w_ih,
                              const int8_t *w_hh, const int32_t *b_ih, const int32_t *b_hh, const int8_t *h0,
                              int8_t *y, int8_t *h_n, int32_t isa, int64_t *scratch, int32_t *acc) {
    const int32_t s_i = n_i + n_iw - LNN_GRU_Q, s_h = n_o + n_hw - LNN_GRU_Q, s_o = 14 - n_o;
    const lnn_rnn_matvec_fn matvec = lnn_rnn_pick_matvec(isa);
    int64_t *gi = scratch, *gh = scratch + 3 * (int64_t)h, s, t;
    /* after the dot products, acc (12h bytes) holds the activations' int16 inputs and int8 outputs (9h bytes) */
    int16_t *g16 = (int16_t *)(void *)acc, *n16 = g16 + 2 * h;
    int8_t *a8 = (int8_t *)(n16 + h), *n8 = a8 + 2 * h;
    int32_t j;
    if (s_i < 0 || s_h < 0 || s_o < 0 || s_i > 62 || s_h > 62 || s_o > 62 || steps < 0 || length < 0 ||
        length > steps || d < 1 || h < 1)
        return LNN_SIM_E_ATTR;
    for (j = 0; j < h; ++j) h_n[j] = h0 ? h0[j] : 0;
    for (s = 0; s < length; ++s) {
        t = reverse ? length - 1 - s : s;
        gate_rows(matvec, x + t * d, d, w_ih, b_ih, 3 * h, s_i, gi, acc);
        gate_rows(matvec, h_n, h, w_hh, b_hh, 3 * h, s_h, gh, acc);
        for (j = 0; j < 2 * h; ++j) g16[j] = (int16_t)sat(gi[j] + gh[j], 16);
        (void)lnn_sim_activation_s16(LNN_SIM_OP_SIGMOID, LNN_GRU_Q, 2 * h, g16, a8); /* r, z */
        for (j = 0; j < h; ++j) /* n's input: gi_n + SAT_32(SHR(r * gh_n, 7)) */
            n16[j] = (int16_t)sat(gi[2 * h + j] + sat(lnn_shr(a8[j] * gh[2 * h + j], 7), 32), 16);
        (void)lnn_sim_activation_s16(LNN_SIM_OP_TANH, LNN_GRU_Q, h, n16, n8);
        for (j = 0; j < h; ++j) {
            const int64_t z = a8[h + j], h7 = sat(lnn_shr(h_n[j], 1), 8);
            h_n[j] = (int8_t)sat(lnn_shr(sat(z * h7, 16) + sat((128 - z) * n8[j], 16), s_o), 8);
        }
        for (j = 0; j < h; ++j) y[t * h + j] = h_n[j];
    }
    for (t = length * h; t < steps * h; ++t) y[t] = 0;
    return LNN_SIM_OK;
}

/* ---- registration --------------------------------------------------------------------------------- */

static lnn_sim_status prepare_gru(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *x, *wi, *wh, *bi, *bh, *y, *hn;
    int64_t h, d, steps;
    int i;
    if (op->n_in < 5 || op->n_in > 7 || op->n_attrs > 1 ||
        (op->n_attrs == 1 && (op->attrs[0] < 0 || op->attrs[0] > 1)))
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': GRUInt needs x, w_ih, w_hh, b_ih, b_hh[, lengths[, h0]] and at most "
                        "one attribute (1: reverse)", op->name);
    for (i = 0; i < op->n_in; ++i)
        if (op->in[i] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': GRUInt input %d is missing", op->name, i);
    x = LNN_IN(m, op, 0), wi = LNN_IN(m, op, 1), wh = LNN_IN(m, op, 2), bi = LNN_IN(m, op, 3), bh = LNN_IN(m, op, 4);
    y = LNN_OUT(m, op, 0), hn = LNN_OUT(m, op, 1);
    h = wh->rank == 2 ? wh->dims[1] : 0;
    d = x->rank == 3 ? x->dims[2] : 0;
    steps = lnn_rnn_seq_len(x, d);
    if (x->dtype != LNN_SIM_DT_INT8 || steps < 1 || h < 1 || h > 65535 || d > 65535 ||
        wi->dtype != LNN_SIM_DT_INT8 || wi->rank != 2 || wi->dims[0] != 3 * h || wi->dims[1] != d ||
        wh->dtype != LNN_SIM_DT_INT8 || wh->dims[0] != 3 * h || !(wi->flags & LNN_SIM_TF_CONST) ||
        !(wh->flags & LNN_SIM_TF_CONST) || bi->dtype != LNN_SIM_DT_INT32 || bi->rank != 1 || bi->dims[0] != 3 * h ||
        bh->dtype != LNN_SIM_DT_INT32 || bh->rank != 1 || bh->dims[0] != 3 * h || !(bi->flags & LNN_SIM_TF_CONST) ||
        !(bh->flags & LNN_SIM_TF_CONST) || y->dtype != LNN_SIM_DT_INT8 || lnn_rnn_seq_len(y, h) != steps ||
        y->dims[0] != x->dims[0] || hn->dtype != LNN_SIM_DT_INT8 || hn->numel != h || hn->rank != 3)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': GRUInt needs int8 x [T,1,D] or [1,T,D], constant int8 w_ih "
                        "[3H,D] and w_hh [3H,H], constant int32 b_ih and b_hh [3H], and writes int8 y [T,1,H] / "
                        "[1,T,H] and h_n [1,1,H]", op->name);
    if (x->exponent + wi->exponent < LNN_GRU_Q || y->exponent + wh->exponent < LNN_GRU_Q || y->exponent > 14 ||
        x->exponent + wi->exponent - LNN_GRU_Q > 62 || y->exponent + wh->exponent - LNN_GRU_Q > 62 ||
        14 - y->exponent > 62 || hn->exponent != y->exponent)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': exponents n_i %d + n_iw %d and n_o %d + n_hw %d must be at least "
                        "11, n_o at most 14, h_n at n_o (the chip's Q11 alignment only shifts right)", op->name,
                        (int)x->exponent, (int)wi->exponent, (int)y->exponent, (int)wh->exponent);
    if (bi->exponent != x->exponent + wi->exponent || bh->exponent != y->exponent + wh->exponent)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': b_ih's exponent %d is not n_i + n_iw (%d) or b_hh's %d not n_o + "
                        "n_hw (%d)", op->name, (int)bi->exponent, (int)(x->exponent + wi->exponent),
                        (int)bh->exponent, (int)(y->exponent + wh->exponent));
    if (op->n_in > 5) {
        const lnn_tensor *ln = LNN_IN(m, op, 5);
        if (ln->dtype != LNN_SIM_DT_INT32 || ln->numel != 1 || ln->exponent != 0)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': GRUInt lengths must be one int32 integer", op->name);
    }
    if (op->n_in > 6) {
        const lnn_tensor *h0 = LNN_IN(m, op, 6);
        if (h0->dtype != LNN_SIM_DT_INT8 || h0->numel != h || h0->exponent != y->exponent)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': GRUInt h0 must be int8 [1,1,H] at n_o (%d), not exponent %d",
                            op->name, (int)y->exponent, (int)h0->exponent);
    }
    op->rows = steps;
    op->k = (int32_t)d;
    op->n = (int32_t)h;
    need->acc = 6 * h;
    need->macs = lnn_mul_sat((uint64_t)steps, (uint64_t)(3 * h * (d + h) + 8 * h));
    return LNN_SIM_OK;
}

static lnn_sim_status run_gru(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *wi = LNN_IN(m, op, 1), *wh = LNN_IN(m, op, 2), *bi = LNN_IN(m, op, 3),
                     *bh = LNN_IN(m, op, 4), *y = LNN_OUT(m, op, 0), *hn = LNN_OUT(m, op, 1);
    int64_t length = op->rows;
    if (op->n_in > 5) {
        length = *(const int32_t *)LNN_IN(m, op, 5)->data;
        if (length < 0 || length > op->rows)
            return LNN_FAIL(LNN_SIM_E_INPUT, "op '%s' (GRUInt): lengths[0] = %lld is outside 0..%lld (the sequence "
                            "length)", op->name, (long long)length, (long long)op->rows);
    }
    return lnn_sim_gru_s8(x->exponent, wi->exponent, wh->exponent, y->exponent, op->rows, length,
                          op->n_attrs ? op->attrs[0] : 0, op->k, op->n, (const int8_t *)x->data,
                          (const int8_t *)wi->data, (const int8_t *)wh->data, (const int32_t *)bi->data,
                          (const int32_t *)bh->data, op->n_in > 6 ? (const int8_t *)LNN_IN(m, op, 6)->data : NULL,
                          (int8_t *)y->data, (int8_t *)hn->data, m->isa, m->acc64, m->acc32);
}

const lnn_op_kernel lnn_op_gru = {"GRUInt", 2, prepare_gru, run_gru, NULL};
