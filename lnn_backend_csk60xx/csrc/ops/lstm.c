/*
 * ops/lstm.c - LSTMInt (spec/int8-seq-ops.md 2.1.4; thinker venus/lstmint.h), one sequence, either direction.
 *
 * Inputs x int8 [T,1,D] / [1,T,D] at n_i, w_ih int8 [4H,D] at n_iw, w_hh int8 [4H,H] at n_hw (PyTorch layout,
 * gates i, f, g, o), b_ih int32 [4H] at n_i + n_iw, b_hh int32 [4H] at n_o + n_hw, then optionally lengths (int32
 * [1], integers) and h0 int8 [1,1,H] at n_o with c0 int16 [1,1,H] Q7. Outputs y int8 [T,1,H] / [1,T,H] at n_o,
 * h_n int8 [1,1,H] at n_o and c_n int16 [1,1,H] Q7: the state lives in h_n / c_n, as on the chip. Attribute 0:
 * 1 runs t = L-1..0 (go_forward = 0). Per step (L = lengths[0] or T):
 *
 *   gi = Q11(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw),  gh = Q11(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw)
 *        Q11(v, q) = SAT_32(v << (11 - q)) for q < 11, SAT_32(SHR(v, q - 11)) otherwise
 *   G = SAT_16(gi + gh); i, f, o = sig8(G_i, G_f, G_o); g = tanh8(G_g)                       Q7
 *   p = f * c + i * g;  c = SAT_16(SHR(p, 7));  h = SAT_8(SHR(o * tanh8(SAT_16(SHR(p, 3))), 14 - n_o))
 *
 * Rows of y at and after L are zeros. The loader accepts the chip's shift contract only (n_o <= 14, left
 * alignment shifts <= 30) and batch 1. Scratch: gi and gh, 8H int64 entries (the chip's 40H bytes), and 4H int32
 * dot products.
 */
#include "lnn_sim_model.h"
#include "rnn_gates.h"

#define LNN_LSTM_Q 11

static int64_t sat(int64_t v, int bits) {
    const int64_t hi = ((int64_t)1 << (bits - 1)) - 1;
    return lnn_sat(v, -hi - 1, hi);
}


/* the Q11 alignment of a gate sum at exponent q, both directions */
static int64_t q11(int64_t v, int32_t q) {
    return q < LNN_LSTM_Q ? sat(v * ((int64_t)1 << (LNN_LSTM_Q - q)), 32) : sat(lnn_shr(v, q - LNN_LSTM_Q), 32);
}

/* gates[j] = Q11(SAT_32(SAT_32(v . W[j,:]) + b[j]), q) for j < rows (v . W[j,:] exact in int32, see rnn_gates.h;
 * acc: rows int32 of scratch) */
static void gate_rows(lnn_rnn_matvec_fn matvec, const int8_t *v, int32_t k, const int8_t *w, const int32_t *b,
                      int32_t rows, int32_t q, int64_t *gates, int32_t *acc) {
    int32_t j;
    matvec(v, k, w, rows, acc);
    for (j = 0; j < rows; ++j) gates[j] = q11(sat((int64_t)acc[j] + b[j], 32), q);
}

lnn_sim_status lnn_sim_lstm_s8(int32_t n_i, int32_t n_iw, int32_t n_hw, int32_t n_o, int64_t steps, int64_t length,
                               int32_t reverse, int32_t d, int32_t h, const int8_t *x, const int8_t *w_ih,
                               const int8_t *w_hh, const int32_t *b_ih, const int32_t *b_hh, const int8_t *h0,
                               const int16_t *c0, int8_t *y, int8_t *h_n, int16_t *c_n, int32_t isa, int64_t *scratch,
                               int32_t *acc) {
    const int32_t q_i = n_i + n_iw, q_h = n_o + n_hw, s_o = 14 - n_o;
    const lnn_rnn_matvec_fn matvec = lnn_rnn_pick_matvec(isa);
    int64_t *gi = scratch, *gh = scratch + 4 * (int64_t)h, s, t;
    /* after the dot products, acc (16h bytes) holds the activations' int16 inputs and int8 outputs (15h bytes) */
    int16_t *g16 = (int16_t *)(void *)acc, *p16 = g16 + 4 * h;
    int8_t *a8 = (int8_t *)(p16 + h), *tau = a8 + 4 * h;
    int32_t j;
    if (LNN_LSTM_Q - q_i > 30 || LNN_LSTM_Q - q_h > 30 || q_i - LNN_LSTM_Q > 62 || q_h - LNN_LSTM_Q > 62 ||
        s_o < 0 || s_o > 62 || steps < 0 || length < 0 || length > steps || d < 1 || h < 1)
        return LNN_SIM_E_ATTR;
    for (j = 0; j < h; ++j) {
        h_n[j] = h0 ? h0[j] : 0;
        c_n[j] = c0 ? c0[j] : 0;
    }
    for (s = 0; s < length; ++s) {
        t = reverse ? length - 1 - s : s;
        gate_rows(matvec, x + t * d, d, w_ih, b_ih, 4 * h, q_i, gi, acc);
        gate_rows(matvec, h_n, h, w_hh, b_hh, 4 * h, q_h, gh, acc);
        for (j = 0; j < 4 * h; ++j) g16[j] = (int16_t)sat(gi[j] + gh[j], 16);
        (void)lnn_sim_activation_s16(LNN_SIM_OP_SIGMOID, LNN_LSTM_Q, 2 * h, g16, a8); /* i, f */
        (void)lnn_sim_activation_s16(LNN_SIM_OP_TANH, LNN_LSTM_Q, h, g16 + 2 * h, a8 + 2 * h); /* g */
        (void)lnn_sim_activation_s16(LNN_SIM_OP_SIGMOID, LNN_LSTM_Q, h, g16 + 3 * h, a8 + 3 * h); /* o */
        for (j = 0; j < h; ++j) {
            const int64_t p = (int64_t)a8[h + j] * c_n[j] + (int64_t)a8[j] * a8[2 * h + j];
            p16[j] = (int16_t)sat(lnn_shr(p, 3), 16);
            c_n[j] = (int16_t)sat(lnn_shr(p, 7), 16);
        }
        (void)lnn_sim_activation_s16(LNN_SIM_OP_TANH, LNN_LSTM_Q, h, p16, tau);
        for (j = 0; j < h; ++j) h_n[j] = (int8_t)sat(lnn_shr((int64_t)a8[3 * h + j] * tau[j], s_o), 8);
        for (j = 0; j < h; ++j) y[t * h + j] = h_n[j];
    }
    for (t = length * h; t < steps * h; ++t) y[t] = 0;
    return LNN_SIM_OK;
}

/* ---- registration --------------------------------------------------------------------------------- */

static lnn_sim_status prepare_lstm(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *x, *wi, *wh, *bi, *bh, *y, *hn, *cn;
    int64_t h, d, steps;
    int32_t q_i, q_h;
    int i;
    if ((op->n_in != 5 && op->n_in != 6 && op->n_in != 8) || op->n_attrs != 1 || op->attrs[0] < 0 ||
        op->attrs[0] > 1)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': LSTMInt needs x, w_ih, w_hh, b_ih, b_hh[, lengths[, h0, c0]] and "
                        "one attribute (1: reverse)", op->name);
    for (i = 0; i < op->n_in; ++i)
        if (op->in[i] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': LSTMInt input %d is missing", op->name, i);
    x = LNN_IN(m, op, 0), wi = LNN_IN(m, op, 1), wh = LNN_IN(m, op, 2), bi = LNN_IN(m, op, 3), bh = LNN_IN(m, op, 4);
    y = LNN_OUT(m, op, 0), hn = LNN_OUT(m, op, 1), cn = LNN_OUT(m, op, 2);
    h = wh->rank == 2 ? wh->dims[1] : 0;
    d = x->rank == 3 ? x->dims[2] : 0;
    steps = lnn_rnn_seq_len(x, d);
    if (x->dtype != LNN_SIM_DT_INT8 || steps < 1 || h < 1 || h > 65535 || d > 65535 ||
        wi->dtype != LNN_SIM_DT_INT8 || wi->rank != 2 || wi->dims[0] != 4 * h || wi->dims[1] != d ||
        wh->dtype != LNN_SIM_DT_INT8 || wh->dims[0] != 4 * h || !(wi->flags & LNN_SIM_TF_CONST) ||
        !(wh->flags & LNN_SIM_TF_CONST) || bi->dtype != LNN_SIM_DT_INT32 || bi->rank != 1 || bi->dims[0] != 4 * h ||
        bh->dtype != LNN_SIM_DT_INT32 || bh->rank != 1 || bh->dims[0] != 4 * h || !(bi->flags & LNN_SIM_TF_CONST) ||
        !(bh->flags & LNN_SIM_TF_CONST) || y->dtype != LNN_SIM_DT_INT8 || lnn_rnn_seq_len(y, h) != steps ||
        y->dims[0] != x->dims[0] || hn->dtype != LNN_SIM_DT_INT8 || hn->numel != h || hn->rank != 3 ||
        cn->dtype != LNN_SIM_DT_INT16 || cn->numel != h || cn->rank != 3)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': LSTMInt needs int8 x [T,1,D] or [1,T,D], constant int8 w_ih "
                        "[4H,D] and w_hh [4H,H], constant int32 b_ih and b_hh [4H], and writes int8 y [T,1,H] / "
                        "[1,T,H], int8 h_n and int16 c_n [1,1,H]", op->name);
    if (op->n_in > 5) {
        const lnn_tensor *ln = LNN_IN(m, op, 5);
        if (ln->dtype != LNN_SIM_DT_INT32 || ln->numel != 1 || ln->exponent != 0)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': LSTMInt lengths must be one int32 integer", op->name);
    }
    if (op->n_in > 6) {
        const lnn_tensor *h0 = LNN_IN(m, op, 6), *c0 = LNN_IN(m, op, 7);
        if (h0->dtype != LNN_SIM_DT_INT8 || h0->numel != h || c0->dtype != LNN_SIM_DT_INT16 || c0->numel != h)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': LSTMInt h0 must be int8 [1,1,H] and c0 int16 [1,1,H]",
                            op->name);
        if (h0->exponent != y->exponent || c0->exponent != 7)
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': LSTMInt h0 exponent %d must be n_o (%d) and c0's %d must be 7",
                            op->name, (int)h0->exponent, (int)y->exponent, (int)c0->exponent);
    }
    q_i = x->exponent + wi->exponent, q_h = y->exponent + wh->exponent;
    if (LNN_LSTM_Q - q_i > 30 || LNN_LSTM_Q - q_h > 30 || q_i - LNN_LSTM_Q > 62 || q_h - LNN_LSTM_Q > 62 ||
        y->exponent > 14 || 14 - y->exponent > 62 || hn->exponent != y->exponent || cn->exponent != 7)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': exponents n_i %d + n_iw %d and n_o %d + n_hw %d must be at least "
                        "-19, n_o at most 14, h_n at n_o and c_n at 7 (the chip's shift contract)", op->name,
                        (int)x->exponent, (int)wi->exponent, (int)y->exponent, (int)wh->exponent);
    if (bi->exponent != q_i || bh->exponent != q_h)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': b_ih's exponent %d is not n_i + n_iw (%d) or b_hh's %d not n_o + "
                        "n_hw (%d)", op->name, (int)bi->exponent, (int)q_i, (int)bh->exponent, (int)q_h);
    op->rows = steps;
    op->k = (int32_t)d;
    op->n = (int32_t)h;
    need->acc = 8 * h;
    need->macs = lnn_mul_sat((uint64_t)steps, (uint64_t)(4 * h * (d + h) + 12 * h));
    return LNN_SIM_OK;
}

static lnn_sim_status run_lstm(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *wi = LNN_IN(m, op, 1), *wh = LNN_IN(m, op, 2), *bi = LNN_IN(m, op, 3),
                     *bh = LNN_IN(m, op, 4), *y = LNN_OUT(m, op, 0);
    int64_t length = op->rows;
    if (op->n_in > 5) {
        length = *(const int32_t *)LNN_IN(m, op, 5)->data;
        if (length < 0 || length > op->rows)
            return LNN_FAIL(LNN_SIM_E_INPUT, "op '%s' (LSTMInt): lengths[0] = %lld is outside 0..%lld (the sequence "
                            "length)", op->name, (long long)length, (long long)op->rows);
    }
    return lnn_sim_lstm_s8(x->exponent, wi->exponent, wh->exponent, y->exponent, op->rows, length, op->attrs[0],
                           op->k, op->n, (const int8_t *)x->data, (const int8_t *)wi->data, (const int8_t *)wh->data,
                           (const int32_t *)bi->data, (const int32_t *)bh->data,
                           op->n_in > 6 ? (const int8_t *)LNN_IN(m, op, 6)->data : NULL,
                           op->n_in > 6 ? (const int16_t *)LNN_IN(m, op, 7)->data : NULL, (int8_t *)y->data,
                           (int8_t *)LNN_OUT(m, op, 1)->data, (int16_t *)LNN_OUT(m, op, 2)->data, m->isa,
                           m->acc64, m->acc32);
}

const lnn_op_kernel lnn_op_lstm = {"LSTMInt", 3, prepare_lstm, run_lstm, NULL};
