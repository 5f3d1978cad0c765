/*
 * exec.c - per-op preparation (validation against the tensors, TFLM "Prepare") and execution
 * ("Eval") of a loaded model, plus the accessors of the public runtime API.
 *
 * lnn_prepare_op() is called by the loader for every op before anything runs: it checks the
 * attribute vector, dtypes, ranks and every output dimension against the inputs, so that the
 * kernels can index their buffers without further bounds tests.
 */
#include "lnn_sim_model.h"

#include <stdarg.h>
#include <stdio.h>

#define DIM_LIMIT 4096 /* kernel, stride, pad and dilation values accepted by the simulator */

static lnn_sim_status fail(char *msg, size_t n, lnn_sim_status code, const char *fmt, ...) {
    if (msg != NULL && n > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, n, fmt, ap);
        va_end(ap);
    }
    return code;
}

static const char *const k_op_names[LNN_SIM_NUM_OP_TYPES] = {
    "?",       "Quant",          "Dequant",      "Requant", "Conv2dInt", "Conv1dInt", "ConvTranspose2dInt",
    "LinearInt", "BatchNorm2dInt", "AvgPool2dInt", "MaxPool", "Relu",      "Clip",      "iqAdd",
    "iqSub",   "iqMul",          "iqCat",        "Reshape", "Flatten",   "Transpose", "Squeeze",
    "Unsqueeze", "Slice",        "External"};

static int same_dims(const lnn_tensor *a, const lnn_tensor *b) {
    int32_t d;
    if (a->rank != b->rank) return 0;
    for (d = 0; d < a->rank; ++d)
        if (a->dims[d] != b->dims[d]) return 0;
    return 1;
}

static int is_int(int32_t dt) { return lnn_is_int_out(dt); }
static int in_range(int32_t v, int32_t lo, int32_t hi) { return v >= lo && v <= hi; }

/* window output size along one axis (ONNX convention, see passes.py); -1 when the kernel does not fit */
static int64_t window_out(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1, int64_t d, int ceil_mode) {
    const int64_t span = in + p0 + p1 - d * (k - 1) - 1;
    int64_t out;
    if (span < 0) return -1;
    out = (ceil_mode ? lnn_ceil_div(span, s) : span / s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p0) out -= 1;
    return out;
}

#define FAIL(code, ...) return fail(msg, n, code, __VA_ARGS__)

static lnn_sim_status prep_conv(const struct lnn_sim_model *m, lnn_op *op, int64_t *scratch, int64_t *col, char *msg,
                                size_t n) {
    const int deconv = op->type == LNN_SIM_OP_DECONV2D, conv1d = op->type == LNN_SIM_OP_CONV1D;
    const int32_t rank = conv1d ? 3 : 4, want_attrs = deconv ? 13 : 11; /* + 1 optional: fused activation */
    const int32_t *a = op->attrs;
    const lnn_tensor *x, *w, *b = NULL, *y;
    int32_t i;
    int64_t ho, wo;
    if (op->n_in < 2 || op->n_in > 3 || op->in[0] < 0 || op->in[1] < 0) FAIL(LNN_SIM_E_OP, "op '%s': needs x, w and an optional bias", op->name);
    x = &m->tensors[op->in[0]];
    w = &m->tensors[op->in[1]];
    y = &m->tensors[op->out[0]];
    if (op->n_in == 3 && op->in[2] >= 0) b = &m->tensors[op->in[2]];
    if (op->n_attrs != want_attrs && op->n_attrs != want_attrs + 1)
        FAIL(LNN_SIM_E_ATTR, "op '%s': %d attributes, expected %d or %d", op->name, op->n_attrs, want_attrs,
             want_attrs + 1);
    op->act = op->n_attrs > want_attrs ? a[want_attrs] : LNN_SIM_ACT_NONE;
    if (op->act != LNN_SIM_ACT_NONE && op->act != LNN_SIM_ACT_RELU)
        FAIL(LNN_SIM_E_ATTR, "op '%s': activation %d is not supported (0 none, 1 relu)", op->name, op->act);
    for (i = 0; i < 11; ++i) {
        const int32_t lo = (i >= 4 && i < 8) ? 0 : 1;
        if (!in_range(a[i], lo, i == 10 ? 65536 : DIM_LIMIT))
            FAIL(LNN_SIM_E_ATTR, "op '%s': attribute %d = %d is out of range", op->name, i, a[i]);
    }
    if (deconv && (!in_range(a[11], 0, DIM_LIMIT) || !in_range(a[12], 0, DIM_LIMIT)))
        FAIL(LNN_SIM_E_ATTR, "op '%s': output_padding (%d, %d) out of range", op->name, a[11], a[12]);
    if ((int64_t)a[0] * a[1] > LNN_ACC32_TERMS) FAIL(LNN_SIM_E_ATTR, "op '%s': kernel %dx%d is too large", op->name, a[0], a[1]);
    if (conv1d && (a[0] != 1 || a[2] != 1 || a[4] != 0 || a[6] != 0 || a[8] != 1))
        FAIL(LNN_SIM_E_ATTR, "op '%s': Conv1dInt needs kh = sh = dh = 1 and no H padding", op->name);
    if (x->dtype != LNN_SIM_DT_INT8 || w->dtype != LNN_SIM_DT_INT8 || !is_int(y->dtype) || x->rank != rank ||
        w->rank != rank || y->rank != rank || !(w->flags & LNN_SIM_TF_CONST))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 x and constant int8 w of rank %d and an integer output", op->name, rank);
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1];
    op->s_in.h = conv1d ? 1 : x->dims[2]; op->s_in.w = x->dims[rank - 1];
    op->s_w.n = w->dims[0]; op->s_w.c = w->dims[1];
    op->s_w.h = conv1d ? 1 : w->dims[2]; op->s_w.w = w->dims[rank - 1];
    op->s_out.n = y->dims[0]; op->s_out.c = y->dims[1];
    op->s_out.h = conv1d ? 1 : y->dims[2]; op->s_out.w = y->dims[rank - 1];
    if (op->s_w.h != a[0] || op->s_w.w != a[1] || op->s_out.n != op->s_in.n)
        FAIL(LNN_SIM_E_SHAPE, "op '%s': weight or batch does not match the kernel", op->name);
    if (deconv) {
        if (op->s_w.n != op->s_in.c || op->s_in.c % a[10] != 0 || (int64_t)op->s_w.c * a[10] != op->s_out.c)
            FAIL(LNN_SIM_E_SHAPE, "op '%s': weight [%d, %d] does not fit %d -> %d channels in %d groups", op->name,
                 op->s_w.n, op->s_w.c, op->s_in.c, op->s_out.c, a[10]);
        ho = ((int64_t)op->s_in.h - 1) * a[2] - a[4] - a[6] + (int64_t)a[8] * (a[0] - 1) + 1 + a[11];
        wo = ((int64_t)op->s_in.w - 1) * a[3] - a[5] - a[7] + (int64_t)a[9] * (a[1] - 1) + 1 + a[12];
    } else {
        if (op->s_w.n != op->s_out.c || (int64_t)op->s_w.c * a[10] != op->s_in.c || op->s_out.c % a[10] != 0)
            FAIL(LNN_SIM_E_SHAPE, "op '%s': weight [%d, %d] does not fit %d -> %d channels in %d groups", op->name,
                 op->s_w.n, op->s_w.c, op->s_in.c, op->s_out.c, a[10]);
        ho = window_out(op->s_in.h, a[0], a[2], a[4], a[6], a[8], 0);
        wo = window_out(op->s_in.w, a[1], a[3], a[5], a[7], a[9], 0);
    }
    if (ho != op->s_out.h || wo != op->s_out.w)
        FAIL(LNN_SIM_E_SHAPE, "op '%s': output is %dx%d, the geometry gives %lldx%lld", op->name, op->s_out.h,
             op->s_out.w, (long long)ho, (long long)wo);
    if (b != NULL && (b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != op->s_out.c ||
                      !(b->flags & LNN_SIM_TF_CONST)))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': bias must be a constant int32 vector of %d", op->name, op->s_out.c);
    op->p.conv.kh = a[0]; op->p.conv.kw = a[1]; op->p.conv.sh = a[2]; op->p.conv.sw = a[3];
    op->p.conv.pt = a[4]; op->p.conv.pl = a[5]; op->p.conv.dh = a[8]; op->p.conv.dw = a[9];
    op->p.conv.groups = a[10];
    op->p.conv.shift = x->exponent + w->exponent - y->exponent;
    op->p.conv.out_dtype = y->dtype;
    *scratch = (int64_t)op->s_out.h * op->s_out.w;
    *col = deconv ? 0 : lnn_sim_conv_col_bytes(&op->p.conv, op->s_w.c, &op->s_out);
    return LNN_SIM_OK;
}

static lnn_sim_status prep_linear(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x, *w, *b = NULL, *y;
    int32_t d;
    if (op->n_in < 2 || op->n_in > 3 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        FAIL(LNN_SIM_E_OP, "op '%s': needs x, w, an optional bias and no attributes", op->name);
    x = &m->tensors[op->in[0]];
    w = &m->tensors[op->in[1]];
    y = &m->tensors[op->out[0]];
    if (op->n_in == 3 && op->in[2] >= 0) b = &m->tensors[op->in[2]];
    if (x->dtype != LNN_SIM_DT_INT8 || w->dtype != LNN_SIM_DT_INT8 || !(w->flags & LNN_SIM_TF_CONST) ||
        !is_int(y->dtype) || x->rank < 1 || w->rank != 2 || y->rank != x->rank || w->dims[1] != x->dims[x->rank - 1])
        FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 x [..., K], constant int8 w [N, K], integer y", op->name);
    for (d = 0; d + 1 < x->rank; ++d)
        if (x->dims[d] != y->dims[d]) FAIL(LNN_SIM_E_SHAPE, "op '%s': leading dimensions differ", op->name);
    if (y->dims[y->rank - 1] != w->dims[0]) FAIL(LNN_SIM_E_SHAPE, "op '%s': output features differ from w", op->name);
    if (b != NULL && (b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != w->dims[0] ||
                      !(b->flags & LNN_SIM_TF_CONST)))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': bias must be a constant int32 vector of %d", op->name, w->dims[0]);
    op->k = w->dims[1];
    op->n = w->dims[0];
    op->rows = x->numel / op->k;
    op->p.lin.shift = x->exponent + w->exponent - y->exponent;
    op->p.lin.out_dtype = y->dtype;
    return LNN_SIM_OK;
}

static lnn_sim_status prep_batchnorm(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x, *a, *b, *y;
    if (op->n_in != 3 || op->in[0] < 0 || op->in[1] < 0 || op->in[2] < 0 || op->n_attrs != 0)
        FAIL(LNN_SIM_E_OP, "op '%s': needs x, a, b and no attributes", op->name);
    x = &m->tensors[op->in[0]];
    a = &m->tensors[op->in[1]];
    b = &m->tensors[op->in[2]];
    y = &m->tensors[op->out[0]];
    if (x->dtype != LNN_SIM_DT_INT8 || x->rank != 4 || !same_dims(x, y) || !is_int(y->dtype) ||
        a->dtype != LNN_SIM_DT_INT8 || a->rank != 1 || a->dims[0] != x->dims[1] || !(a->flags & LNN_SIM_TF_CONST) ||
        b->dtype != LNN_SIM_DT_INT32 || b->rank != 1 || b->dims[0] != x->dims[1] || !(b->flags & LNN_SIM_TF_CONST))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 NCHW x, constant int8 a [C] and int32 b [C]", op->name);
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1]; op->s_in.h = x->dims[2]; op->s_in.w = x->dims[3];
    op->p.lin.shift = x->exponent + a->exponent - y->exponent;
    op->p.lin.out_dtype = y->dtype;
    return LNN_SIM_OK;
}

static lnn_sim_status prep_pool(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const int avg = op->type == LNN_SIM_OP_AVGPOOL2D;
    const int32_t *a = op->attrs;
    const lnn_tensor *x, *y;
    int32_t i;
    int64_t ho, wo;
    if (op->n_in != 1 || op->in[0] < 0 || op->n_attrs != (avg ? 9 : 11))
        FAIL(LNN_SIM_E_OP, "op '%s': needs one input and %d attributes", op->name, avg ? 9 : 11);
    x = &m->tensors[op->in[0]];
    y = &m->tensors[op->out[0]];
    for (i = 0; i < 8; ++i)
        if (!in_range(a[i], i >= 4 ? 0 : 1, DIM_LIMIT))
            FAIL(LNN_SIM_E_ATTR, "op '%s': attribute %d = %d is out of range", op->name, i, a[i]);
    if (!in_range(a[8], 0, avg ? 0 : 1)) FAIL(LNN_SIM_E_ATTR, "op '%s': ceil_mode %d is not supported", op->name, a[8]);
    if (!avg && (!in_range(a[9], 1, DIM_LIMIT) || !in_range(a[10], 1, DIM_LIMIT)))
        FAIL(LNN_SIM_E_ATTR, "op '%s': dilation out of range", op->name);
    if ((int64_t)a[0] * a[1] > LNN_ACC32_TERMS) FAIL(LNN_SIM_E_ATTR, "op '%s': window too large", op->name);
    if (x->rank != 4 || y->rank != 4 || x->dims[0] != y->dims[0] || x->dims[1] != y->dims[1] || !is_int(x->dtype) ||
        !is_int(y->dtype) || (avg && x->dtype != LNN_SIM_DT_INT8) || (!avg && (y->dtype != x->dtype || y->exponent != x->exponent)))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': input/output dtypes or shapes do not fit", op->name);
    op->p.pool.kh = a[0]; op->p.pool.kw = a[1]; op->p.pool.sh = a[2]; op->p.pool.sw = a[3];
    op->p.pool.pt = a[4]; op->p.pool.pl = a[5];
    op->p.pool.dh = avg ? 1 : a[9];
    op->p.pool.dw = avg ? 1 : a[10];
    ho = window_out(x->dims[2], a[0], a[2], a[4], a[6], op->p.pool.dh, a[8]);
    wo = window_out(x->dims[3], a[1], a[3], a[5], a[7], op->p.pool.dw, a[8]);
    if (ho != y->dims[2] || wo != y->dims[3])
        FAIL(LNN_SIM_E_SHAPE, "op '%s': output is %dx%d, the geometry gives %lldx%lld", op->name, y->dims[2], y->dims[3],
             (long long)ho, (long long)wo);
    op->p.pool.shift_up = avg ? y->exponent - x->exponent : 0;
    if (avg && !in_range(op->p.pool.shift_up, -32, 32))
        FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent differs from the input's by more than 32", op->name);
    op->p.pool.out_dtype = y->dtype;
    op->s_in.n = x->dims[0]; op->s_in.c = x->dims[1]; op->s_in.h = x->dims[2]; op->s_in.w = x->dims[3];
    op->s_out.n = y->dims[0]; op->s_out.c = y->dims[1]; op->s_out.h = y->dims[2]; op->s_out.w = y->dims[3];
    return LNN_SIM_OK;
}

static lnn_sim_status prep_unary(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x, *y;
    if (op->n_in != 1 || op->in[0] < 0) FAIL(LNN_SIM_E_OP, "op '%s': needs exactly one input", op->name);
    x = &m->tensors[op->in[0]];
    y = &m->tensors[op->out[0]];
    switch (op->type) {
    case LNN_SIM_OP_QUANT:
        if (op->n_attrs != 0 || x->dtype != LNN_SIM_DT_FLOAT32 || y->dtype != LNN_SIM_DT_INT8 || !same_dims(x, y))
            FAIL(LNN_SIM_E_SHAPE, "op '%s': Quant maps float32 to int8 of the same shape", op->name);
        return LNN_SIM_OK;
    case LNN_SIM_OP_DEQUANT:
        if (op->n_attrs != 0 || !(is_int(x->dtype) || x->dtype == LNN_SIM_DT_UINT8) ||
            y->dtype != LNN_SIM_DT_FLOAT32 || !same_dims(x, y))
            FAIL(LNN_SIM_E_SHAPE, "op '%s': Dequant maps an integer tensor to float32 of the same shape", op->name);
        return LNN_SIM_OK;
    case LNN_SIM_OP_REQUANT:
        if (op->n_attrs != 0 || x->dtype != LNN_SIM_DT_INT8 || !is_int(y->dtype) || !same_dims(x, y))
            FAIL(LNN_SIM_E_SHAPE, "op '%s': Requant maps int8 to int8/16/32 of the same shape", op->name);
        op->p.rq.shift = x->exponent - y->exponent;
        op->p.rq.out_dtype = y->dtype;
        return LNN_SIM_OK;
    case LNN_SIM_OP_RELU:
    case LNN_SIM_OP_CLIP:
        if (!is_int(x->dtype) || y->dtype != x->dtype || y->exponent != x->exponent || !same_dims(x, y))
            FAIL(LNN_SIM_E_SHAPE, "op '%s': input and output must match in dtype, scale and shape", op->name);
        if (op->type == LNN_SIM_OP_RELU) {
            if (op->n_attrs != 0) FAIL(LNN_SIM_E_ATTR, "op '%s': Relu has no attributes", op->name);
            op->p.clip.lo = 0;
            op->p.clip.hi = lnn_dtype_max(x->dtype);
        } else {
            if (op->n_attrs != 2 || op->attrs[0] > op->attrs[1] || op->attrs[0] < lnn_dtype_min(x->dtype) ||
                op->attrs[1] > lnn_dtype_max(x->dtype))
                FAIL(LNN_SIM_E_ATTR, "op '%s': Clip needs lo <= hi within the dtype range", op->name);
            op->p.clip.lo = op->attrs[0];
            op->p.clip.hi = op->attrs[1];
        }
        return LNN_SIM_OK;
    case LNN_SIM_OP_TRANSPOSE: {
        int32_t seen[LNN_SIM_MAX_RANK] = {0, 0, 0, 0, 0, 0}, d;
        if (op->n_attrs != x->rank || y->rank != x->rank || y->dtype != x->dtype || y->exponent != x->exponent ||
            x->rank < 1)
            FAIL(LNN_SIM_E_SHAPE, "op '%s': Transpose needs one perm entry per axis and a matching output", op->name);
        for (d = 0; d < x->rank; ++d) {
            const int32_t p = op->attrs[d];
            if (p < 0 || p >= x->rank || seen[p]++) FAIL(LNN_SIM_E_ATTR, "op '%s': perm is not a permutation", op->name);
            if (y->dims[d] != x->dims[p]) FAIL(LNN_SIM_E_SHAPE, "op '%s': output dimension %d differs", op->name, d);
        }
        return LNN_SIM_OK;
    }
    default: /* reshape-like: same bytes, new shape */
        if (op->n_attrs != 0 || y->dtype != x->dtype || y->numel != x->numel || y->exponent != x->exponent)
            FAIL(LNN_SIM_E_SHAPE, "op '%s': a reshape keeps dtype, scale and element count", op->name);
        return LNN_SIM_OK;
    }
}

static lnn_sim_status prep_binary(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x, *yy, *o;
    if (op->n_in != 2 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        FAIL(LNN_SIM_E_OP, "op '%s': needs two inputs and no attributes", op->name);
    x = &m->tensors[op->in[0]];
    yy = &m->tensors[op->in[1]];
    o = &m->tensors[op->out[0]];
    if (x->dtype != LNN_SIM_DT_INT8 || yy->dtype != LNN_SIM_DT_INT8 || o->dtype != LNN_SIM_DT_INT8 || !same_dims(x, o))
        FAIL(LNN_SIM_E_SHAPE, "op '%s': needs int8 operands and an int8 output shaped like x", op->name);
    op->p.elt.op = op->type;
    op->p.elt.y_inner = 1;
    op->p.elt.y_period = x->numel;
    if (op->type == LNN_SIM_OP_MUL) {
        op->p.elt.shift_x = x->exponent + yy->exponent - o->exponent;
        op->p.elt.shift_y = 0;
        if (same_dims(x, yy)) return LNN_SIM_OK;
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
        FAIL(LNN_SIM_E_SHAPE, "op '%s': y must match x, be [N, C, 1, 1] or a scalar", op->name);
    }
    if (!same_dims(x, yy)) FAIL(LNN_SIM_E_SHAPE, "op '%s': operands must have equal shapes", op->name);
    op->p.elt.shift_x = x->exponent - o->exponent;
    op->p.elt.shift_y = yy->exponent - o->exponent;
    return LNN_SIM_OK;
}

static lnn_sim_status prep_cat(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *o = &m->tensors[op->out[0]];
    int32_t axis, i, d;
    int64_t sum = 0;
    if (op->n_attrs != 1 || !is_int(o->dtype) || o->rank < 1)
        FAIL(LNN_SIM_E_OP, "op '%s': iqCat needs one attribute (axis) and an integer output", op->name);
    axis = op->attrs[0];
    if (axis < 0 || axis >= o->rank) FAIL(LNN_SIM_E_ATTR, "op '%s': axis %d out of range", op->name, axis);
    for (i = 0; i < op->n_in; ++i) {
        const lnn_tensor *x;
        if (op->in[i] < 0) FAIL(LNN_SIM_E_OP, "op '%s': input %d is missing", op->name, i);
        x = &m->tensors[op->in[i]];
        if (x->dtype != o->dtype || x->rank != o->rank) FAIL(LNN_SIM_E_SHAPE, "op '%s': input %d must be of the output's dtype and rank %d", op->name, i, o->rank);
        /* int8 inputs are rescaled to the output exponent; wider ones are copied, so they must share it */
        if (o->dtype != LNN_SIM_DT_INT8 && x->exponent != o->exponent)
            FAIL(LNN_SIM_E_SHAPE, "op '%s': int16/int32 input %d must have the output's exponent", op->name, i);
        for (d = 0; d < o->rank; ++d)
            if (d != axis && x->dims[d] != o->dims[d]) FAIL(LNN_SIM_E_SHAPE, "op '%s': input %d differs off the axis", op->name, i);
        sum += x->dims[axis];
    }
    if (sum != o->dims[axis]) FAIL(LNN_SIM_E_SHAPE, "op '%s': inputs add up to %lld along the axis, output has %d", op->name, (long long)sum, o->dims[axis]);
    op->p.cat.axis = axis;
    op->p.cat.outer = 1;
    op->p.cat.inner = 1;
    for (d = 0; d < axis; ++d) op->p.cat.outer *= o->dims[d];
    for (d = axis + 1; d < o->rank; ++d) op->p.cat.inner *= o->dims[d];
    return LNN_SIM_OK;
}

static lnn_sim_status prep_slice(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x, *y;
    int32_t d;
    if (op->n_in != 1 || op->in[0] < 0) FAIL(LNN_SIM_E_OP, "op '%s': Slice needs exactly one input", op->name);
    x = &m->tensors[op->in[0]];
    y = &m->tensors[op->out[0]];
    if (x->rank < 1 || y->rank != x->rank || y->dtype != x->dtype || y->exponent != x->exponent ||
        op->n_attrs != 2 * x->rank)
        FAIL(LNN_SIM_E_SHAPE, "op '%s': Slice keeps rank, dtype and scale and takes a start and a step per axis",
             op->name);
    for (d = 0; d < x->rank; ++d) {
        const int32_t start = op->attrs[2 * d], step = op->attrs[2 * d + 1];
        if (start < 0 || step < 1 || (int64_t)start + (int64_t)(y->dims[d] - 1) * step >= x->dims[d])
            FAIL(LNN_SIM_E_ATTR, "op '%s': axis %d: start %d, step %d and %d outputs leave the input (%d)", op->name,
                 d, start, step, y->dims[d], x->dims[d]);
    }
    return LNN_SIM_OK;
}

static lnn_sim_status prep_external(const struct lnn_sim_model *m, lnn_op *op, char *msg, size_t n) {
    int32_t i;
    if (op->n_attrs != 2 || op->attrs[0] < 0 || (uint32_t)op->attrs[0] >= m->strings_size || op->attrs[1] < 0 ||
        (uint32_t)op->attrs[1] >= m->strings_size)
        FAIL(LNN_SIM_E_ATTR, "op '%s': an external op needs two string references (op type, attributes)", op->name);
    op->p.ext.op_type = m->strings + op->attrs[0];
    op->p.ext.attrs_json = m->strings + op->attrs[1];
    if (op->p.ext.op_type[0] == '\0') FAIL(LNN_SIM_E_ATTR, "op '%s': external op type is empty", op->name);
    for (i = 0; i < op->n_in; ++i)
        if (op->in[i] < 0) FAIL(LNN_SIM_E_OP, "op '%s': input %d of an external op is missing", op->name, i);
    return LNN_SIM_OK;
}

lnn_sim_status lnn_prepare_op(const struct lnn_sim_model *m, lnn_op *op, int64_t *scratch, int64_t *col, char *msg,
                              size_t n) {
    int32_t i;
    for (i = 0; i < op->n_out; ++i) {
        const lnn_tensor *y;
        if (op->out[i] < 0) FAIL(LNN_SIM_E_OP, "op '%s': output %d is missing", op->name, i);
        y = &m->tensors[op->out[i]];
        if (y->region == LNN_SIM_REGION_FLASH || (y->flags & LNN_SIM_TF_INPUT))
            FAIL(LNN_SIM_E_OP, "op '%s': writes '%s', a constant or graph input", op->name, y->name);
    }
    *scratch = 0;
    *col = 0;
    switch (op->type) {
    case LNN_SIM_OP_CONV2D:
    case LNN_SIM_OP_CONV1D:
    case LNN_SIM_OP_DECONV2D: return prep_conv(m, op, scratch, col, msg, n);
    case LNN_SIM_OP_LINEAR: return prep_linear(m, op, msg, n);
    case LNN_SIM_OP_BATCHNORM2D: return prep_batchnorm(m, op, msg, n);
    case LNN_SIM_OP_AVGPOOL2D:
    case LNN_SIM_OP_MAXPOOL2D: return prep_pool(m, op, msg, n);
    case LNN_SIM_OP_ADD:
    case LNN_SIM_OP_SUB:
    case LNN_SIM_OP_MUL: return prep_binary(m, op, msg, n);
    case LNN_SIM_OP_CAT: return prep_cat(m, op, msg, n);
    case LNN_SIM_OP_SLICE: return prep_slice(m, op, msg, n);
    case LNN_SIM_OP_EXTERNAL: return prep_external(m, op, msg, n);
    default: return prep_unary(m, op, msg, n);
    }
}

/* ---- execution ------------------------------------------------------------------------------- */

/* The window matrix built for op `prev` serves op `op` when both read the same tensor with the same geometry
 * (one image, one group: what the split pass produces). */
static int same_windows(const lnn_sim_model *m, const lnn_op *op) {
    const lnn_op *prev;
    if (m->col_op < 0 || m->col_tensor != op->in[0]) return 0;
    prev = &m->ops[m->col_op];
    return prev->type == op->type && op->s_in.n == 1 && op->p.conv.groups == 1 && prev->p.conv.groups == 1 &&
           prev->s_w.c == op->s_w.c && prev->s_out.h == op->s_out.h && prev->s_out.w == op->s_out.w &&
           prev->p.conv.kh == op->p.conv.kh && prev->p.conv.kw == op->p.conv.kw && prev->p.conv.sh == op->p.conv.sh &&
           prev->p.conv.sw == op->p.conv.sw && prev->p.conv.pt == op->p.conv.pt && prev->p.conv.pl == op->p.conv.pl &&
           prev->p.conv.dh == op->p.conv.dh && prev->p.conv.dw == op->p.conv.dw;
}

static lnn_sim_status run_op(lnn_sim_model *m, const lnn_op *op) {
    const lnn_tensor *x = &m->tensors[op->in[0]];
    lnn_tensor *y = &m->tensors[op->out[0]];
    const lnn_tensor *w = op->n_in > 1 && op->in[1] >= 0 ? &m->tensors[op->in[1]] : NULL;
    const int32_t *bias = op->n_in > 2 && op->in[2] >= 0 ? (const int32_t *)m->tensors[op->in[2]].data : NULL;
    lnn_sim_scratch scratch;
    scratch.acc32 = m->acc32;
    scratch.acc64 = m->acc64;
    scratch.col = m->col;
    scratch.col_ready = 0;
    switch (op->type) {
    case LNN_SIM_OP_QUANT: return lnn_sim_quant_s8(y->exponent, x->numel, (const float *)x->data, (int8_t *)y->data);
    case LNN_SIM_OP_DEQUANT: return lnn_sim_dequant_s8(x->exponent, x->dtype, x->numel, x->data, (float *)y->data);
    case LNN_SIM_OP_REQUANT:
        return lnn_sim_rescale_s8(op->p.rq.shift, op->p.rq.out_dtype, x->numel, (const int8_t *)x->data, y->data);
    case LNN_SIM_OP_CONV2D:
    case LNN_SIM_OP_CONV1D:
    case LNN_SIM_OP_DECONV2D: {
        const int uses_col = op->type != LNN_SIM_OP_DECONV2D && lnn_sim_conv_col_bytes(&op->p.conv, op->s_w.c, &op->s_out) > 0;
        lnn_sim_status st;
        if (uses_col) {
            scratch.col_ready = same_windows(m, op);
            m->col_op = (int32_t)(op - m->ops);
            m->col_tensor = op->in[0];
        }
        st =
            op->type == LNN_SIM_OP_DECONV2D
                ? lnn_sim_deconv2d_s8(&op->p.conv, &op->s_in, (const int8_t *)x->data, &op->s_w,
                                      (const int8_t *)w->data, bias, &op->s_out, y->data, &scratch)
                : lnn_sim_conv2d_s8(&op->p.conv, &op->s_in, (const int8_t *)x->data, &op->s_w,
                                    (const int8_t *)w->data, bias, &op->s_out, y->data, &scratch);
        /* the fused ReLU acts on the requantized integers, exactly as a separate Relu op would */
        if (st != LNN_SIM_OK || op->act == LNN_SIM_ACT_NONE) return st;
        return lnn_sim_clip(y->dtype, 0, lnn_dtype_max(y->dtype), y->numel, y->data, y->data);
    }
    case LNN_SIM_OP_LINEAR:
        return lnn_sim_linear_s8(&op->p.lin, op->rows, op->k, op->n, (const int8_t *)x->data, (const int8_t *)w->data,
                                 bias, y->data);
    case LNN_SIM_OP_BATCHNORM2D:
        return lnn_sim_batchnorm2d_s8(&op->p.lin, &op->s_in, (const int8_t *)x->data, (const int8_t *)w->data, bias,
                                      y->data);
    case LNN_SIM_OP_AVGPOOL2D:
        return lnn_sim_avgpool2d_s8(&op->p.pool, &op->s_in, (const int8_t *)x->data, &op->s_out, y->data);
    case LNN_SIM_OP_MAXPOOL2D: return lnn_sim_maxpool2d_s8(&op->p.pool, x->dtype, &op->s_in, x->data, &op->s_out, y->data);
    case LNN_SIM_OP_RELU:
    case LNN_SIM_OP_CLIP: return lnn_sim_clip(x->dtype, op->p.clip.lo, op->p.clip.hi, x->numel, x->data, y->data);
    case LNN_SIM_OP_ADD:
    case LNN_SIM_OP_SUB:
    case LNN_SIM_OP_MUL:
        return lnn_sim_eltwise_s8(&op->p.elt, x->numel, (const int8_t *)x->data, (const int8_t *)w->data,
                                  (int8_t *)y->data);
    case LNN_SIM_OP_CAT: {
        int64_t o, pos = 0;
        int32_t i;
        const int32_t axis = op->p.cat.axis, esize = lnn_dtype_size(y->dtype);
        for (o = 0; o < op->p.cat.outer; ++o) {
            for (i = 0; i < op->n_in; ++i) {
                const lnn_tensor *xi = &m->tensors[op->in[i]];
                const int64_t block = (int64_t)xi->dims[axis] * op->p.cat.inner;
                const uint8_t *src = xi->data + o * block * esize;
                uint8_t *dst = y->data + pos * esize;
                pos += block;
                if (src == dst && xi->exponent == y->exponent) continue; /* planned in place: nothing to move */
                if (y->dtype == LNN_SIM_DT_INT8)
                    lnn_sim_rescale_s8(xi->exponent - y->exponent, LNN_SIM_DT_INT8, block, (const int8_t *)src, dst);
                else
                    memmove(dst, src, (size_t)(block * esize));
            }
        }
        return LNN_SIM_OK;
    }
    case LNN_SIM_OP_SLICE: {
        int32_t starts[LNN_SIM_MAX_RANK], steps[LNN_SIM_MAX_RANK], d;
        for (d = 0; d < x->rank; ++d) {
            starts[d] = op->attrs[2 * d];
            steps[d] = op->attrs[2 * d + 1];
        }
        return lnn_sim_slice(x->rank, x->dims, y->dims, starts, steps, lnn_dtype_size(x->dtype), x->data, y->data);
    }
    case LNN_SIM_OP_TRANSPOSE:
        return lnn_sim_transpose(x->rank, x->dims, op->attrs, lnn_dtype_size(x->dtype), x->data, y->data);
    default: /* reshape-like: the planner normally aliases the output onto the input */
        if (y->data != x->data) memmove(y->data, x->data, x->size);
        return LNN_SIM_OK;
    }
}

static lnn_sim_status run_external(lnn_sim_model *m, int32_t i, char *msg, size_t n) {
    const lnn_op *op = &m->ops[i];
    char reason[LNN_SIM_MAX_MSG];
    lnn_sim_status st;
    if (m->external == NULL)
        FAIL(LNN_SIM_E_EXTERNAL, "op '%s' (%s) is an external op and no kernel is attached", op->name,
             op->p.ext.op_type);
    reason[0] = '\0';
    st = m->external(m->external_user, m, i, reason, sizeof reason);
    reason[sizeof reason - 1] = '\0';
    if (st != LNN_SIM_OK)
        FAIL(LNN_SIM_E_EXTERNAL, "op '%s' (%s) failed: %s", op->name, op->p.ext.op_type,
             reason[0] ? reason : "the kernel returned an error");
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_invoke_op(lnn_sim_model *m, int32_t i, char *msg, size_t n) {
    lnn_sim_status st;
    if (msg != NULL && n > 0) msg[0] = '\0';
    if (m == NULL || i < 0 || i >= m->n_ops) FAIL(LNN_SIM_E_ARG, "op index %d out of range", i);
    if (i == 0) m->col_op = -1; /* a new run: inputs may differ */
    if (m->ops[i].type == LNN_SIM_OP_EXTERNAL) return run_external(m, i, msg, n);
    st = run_op(m, &m->ops[i]);
    if (st != LNN_SIM_OK)
        FAIL(st, "op '%s' (%s) failed with status %d", m->ops[i].name, k_op_names[m->ops[i].type], (int)st);
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_invoke(lnn_sim_model *m, char *msg, size_t n) {
    int32_t i;
    if (m == NULL) FAIL(LNN_SIM_E_ARG, "NULL model");
    m->col_op = -1;
    for (i = 0; i < m->n_ops; ++i) {
        const lnn_sim_status st = lnn_sim_invoke_op(m, i, msg, n);
        if (st != LNN_SIM_OK) return st;
    }
    return LNN_SIM_OK;
}

/* ---- accessors ------------------------------------------------------------------------------- */

int32_t lnn_sim_num_tensors(const lnn_sim_model *m) { return m ? m->n_tensors : 0; }
int32_t lnn_sim_num_ops(const lnn_sim_model *m) { return m ? m->n_ops : 0; }
int32_t lnn_sim_num_inputs(const lnn_sim_model *m) { return m ? m->n_inputs : 0; }
int32_t lnn_sim_num_outputs(const lnn_sim_model *m) { return m ? m->n_outputs : 0; }
int32_t lnn_sim_input_index(const lnn_sim_model *m, int32_t i) {
    return m && i >= 0 && i < m->n_inputs ? m->inputs[i] : -1;
}
int32_t lnn_sim_output_index(const lnn_sim_model *m, int32_t i) {
    return m && i >= 0 && i < m->n_outputs ? m->outputs[i] : -1;
}
uint32_t lnn_sim_region_size(const lnn_sim_model *m, int32_t r) {
    return m && r >= 0 && r < LNN_SIM_NUM_REGIONS ? (r == LNN_SIM_REGION_FLASH ? m->weights_size : m->region_size[r]) : 0;
}
const char *lnn_sim_op_name(const lnn_sim_model *m, int32_t i) { return m && i >= 0 && i < m->n_ops ? m->ops[i].name : NULL; }

lnn_sim_status lnn_sim_tensor_info(const lnn_sim_model *m, int32_t t, lnn_sim_tensor_desc *out) {
    const lnn_tensor *x;
    if (m == NULL || out == NULL || t < 0 || t >= m->n_tensors) return LNN_SIM_E_ARG;
    x = &m->tensors[t];
    out->name = x->name;
    out->dtype = x->dtype;
    out->rank = x->rank;
    out->region = x->region;
    out->flags = x->flags;
    out->exponent = x->exponent;
    memcpy(out->dims, x->dims, sizeof out->dims);
    out->offset = x->offset;
    out->size = x->size;
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_set_external(lnn_sim_model *m, lnn_sim_external_fn fn, void *user) {
    if (m == NULL) return LNN_SIM_E_ARG;
    m->external = fn;
    m->external_user = user;
    return LNN_SIM_OK;
}

int32_t lnn_sim_op_type(const lnn_sim_model *m, int32_t i) { return m && i >= 0 && i < m->n_ops ? m->ops[i].type : 0; }

lnn_sim_status lnn_sim_op_inputs(const lnn_sim_model *m, int32_t i, int32_t *indices, int32_t max, int32_t *count) {
    int32_t k;
    if (m == NULL || count == NULL || i < 0 || i >= m->n_ops || (indices == NULL && max > 0)) return LNN_SIM_E_ARG;
    *count = m->ops[i].n_in;
    for (k = 0; k < m->ops[i].n_in && k < max; ++k) indices[k] = m->ops[i].in[k];
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_op_external(const lnn_sim_model *m, int32_t i, const char **op_type, const char **attrs_json) {
    if (m == NULL || op_type == NULL || attrs_json == NULL || i < 0 || i >= m->n_ops ||
        m->ops[i].type != LNN_SIM_OP_EXTERNAL)
        return LNN_SIM_E_ARG;
    *op_type = m->ops[i].p.ext.op_type;
    *attrs_json = m->ops[i].p.ext.attrs_json;
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_op_outputs(const lnn_sim_model *m, int32_t i, int32_t *indices, int32_t max, int32_t *count) {
    int32_t k;
    if (m == NULL || count == NULL || i < 0 || i >= m->n_ops || (indices == NULL && max > 0)) return LNN_SIM_E_ARG;
    *count = m->ops[i].n_out;
    for (k = 0; k < m->ops[i].n_out && k < max; ++k) indices[k] = m->ops[i].out[k];
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_set_tensor(lnn_sim_model *m, int32_t t, const void *data, size_t nbytes) {
    if (m == NULL || data == NULL || t < 0 || t >= m->n_tensors) return LNN_SIM_E_ARG;
    if (m->tensors[t].region == LNN_SIM_REGION_FLASH) return LNN_SIM_E_ARG;
    if (nbytes != m->tensors[t].size) return LNN_SIM_E_INPUT;
    memcpy(m->tensors[t].data, data, nbytes);
    m->col_op = -1; /* the bytes under a cached window matrix may have changed */
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_get_tensor(const lnn_sim_model *m, int32_t t, void *data, size_t nbytes) {
    if (m == NULL || data == NULL || t < 0 || t >= m->n_tensors) return LNN_SIM_E_ARG;
    if (nbytes != m->tensors[t].size) return LNN_SIM_E_INPUT;
    memcpy(data, m->tensors[t].data, nbytes);
    return LNN_SIM_OK;
}
