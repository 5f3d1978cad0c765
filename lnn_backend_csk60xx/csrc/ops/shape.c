/*
 * ops/shape.c - data movement without arithmetic (dtype and scale unchanged), plus iqCat's per-input
 * rescale: iqCat, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Slice.
 *
 *   Reshape / Flatten / Squeeze / Unsqueeze: the same bytes seen with another shape (the planner normally
 *       places the output on the input, so nothing moves)
 *   Transpose: y = x permuted by perm
 *   Slice: y[i...] = x[start + i * step ...]
 *   iqCat: inputs joined along axis; int8 inputs are rescaled to the output exponent,
 *       y = SAT_8(SHR(x_i, n_i - n_o)); int16/int32 inputs share the output's exponent and are copied
 */
#include "lnn_sim_model.h"

lnn_sim_status lnn_sim_transpose(int32_t rank, const int32_t *dims, const int32_t *perm, int32_t elem_size,
                                 const void *x, void *y) {
    int64_t in_stride[LNN_SIM_MAX_RANK], out_dims[LNN_SIM_MAX_RANK], step[LNN_SIM_MAX_RANK], idx[LNN_SIM_MAX_RANK];
    int64_t total = 1, i, src = 0;
    int32_t d;
    const uint8_t *xs = (const uint8_t *)x;
    uint8_t *ys = (uint8_t *)y;
    if (rank < 1 || rank > LNN_SIM_MAX_RANK || elem_size < 1) return LNN_SIM_E_SHAPE;
    in_stride[rank - 1] = 1;
    for (d = rank - 2; d >= 0; --d) in_stride[d] = in_stride[d + 1] * dims[d + 1];
    for (d = 0; d < rank; ++d) {
        out_dims[d] = dims[perm[d]];
        step[d] = in_stride[perm[d]];
        idx[d] = 0;
        total *= out_dims[d];
    }
    for (i = 0; i < total; ++i) {
        memcpy(ys + i * elem_size, xs + src * elem_size, (size_t)elem_size);
        for (d = rank - 1; d >= 0; --d) { /* odometer over the output index */
            src += step[d];
            if (++idx[d] < out_dims[d]) break;
            src -= step[d] * out_dims[d];
            idx[d] = 0;
        }
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_slice(int32_t rank, const int32_t *in_dims, const int32_t *out_dims, const int32_t *starts,
                             const int32_t *steps, int32_t elem_size, const void *x, void *y) {
    int64_t in_stride[LNN_SIM_MAX_RANK], idx[LNN_SIM_MAX_RANK], rows = 1, r, src;
    int32_t d;
    const uint8_t *xs = (const uint8_t *)x;
    uint8_t *ys = (uint8_t *)y;
    const int32_t last = rank - 1;
    if (rank < 1 || rank > LNN_SIM_MAX_RANK || elem_size < 1) return LNN_SIM_E_SHAPE;
    in_stride[last] = 1;
    for (d = last - 1; d >= 0; --d) in_stride[d] = in_stride[d + 1] * in_dims[d + 1];
    src = 0;
    for (d = 0; d < rank; ++d) {
        idx[d] = 0;
        src += (int64_t)starts[d] * in_stride[d];
        if (d < last) rows *= out_dims[d];
    }
    /* one run along the last axis per output row; an odometer walks the leading axes */
    for (r = 0; r < rows; ++r) {
        uint8_t *dst = ys + r * (int64_t)out_dims[last] * elem_size;
        if (steps[last] == 1) {
            memcpy(dst, xs + src * elem_size, (size_t)out_dims[last] * (size_t)elem_size);
        } else {
            int64_t j;
            for (j = 0; j < out_dims[last]; ++j)
                memcpy(dst + j * elem_size, xs + (src + j * steps[last]) * elem_size, (size_t)elem_size);
        }
        for (d = last - 1; d >= 0; --d) {
            src += steps[d] * in_stride[d];
            if (++idx[d] < out_dims[d]) break;
            src -= (int64_t)steps[d] * in_stride[d] * out_dims[d];
            idx[d] = 0;
        }
    }
    return LNN_SIM_OK;
}

/* ---- registrations ------------------------------------------------------------------------------- */

/* Reshape, Flatten, Squeeze, Unsqueeze: the output shape comes from its tensor record */
static lnn_sim_status prepare_reshape(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                      size_t n) {
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != 0 || y->dtype != x->dtype || y->numel != x->numel || y->exponent != x->exponent)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': a reshape keeps dtype, scale and element count", op->name);
    return LNN_SIM_OK;
}

/* the planner puts a reshape's output on its input: the same bytes, nothing moves; elsewhere memmove copies */
static int32_t share_reshape(const lnn_sim_model *m, const lnn_op *op, int32_t input, int32_t output) {
    const lnn_tensor *x = LNN_IN(m, op, input), *y = LNN_OUT(m, op, output);
    return x->region == y->region && x->offset == y->offset ? LNN_SHARE_KEEP : LNN_SHARE_READ;
}

static lnn_sim_status run_reshape(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    if (y->data != x->data) memmove(y->data, x->data, x->size);
    return LNN_SIM_OK;
}

/* attributes: perm (one entry per axis) */
static lnn_sim_status prepare_transpose(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                        size_t n) {
    int32_t seen[LNN_SIM_MAX_RANK] = {0, 0, 0, 0, 0, 0}, d;
    const lnn_tensor *x = NULL, *y = NULL;
    const lnn_sim_status st = lnn_unary(m, op, &x, &y, msg, n);
    (void)need;
    if (st != LNN_SIM_OK) return st;
    if (op->n_attrs != x->rank || y->rank != x->rank || y->dtype != x->dtype || y->exponent != x->exponent ||
        x->rank < 1)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': Transpose needs one perm entry per axis and a matching output",
                        op->name);
    for (d = 0; d < x->rank; ++d) {
        const int32_t p = op->attrs[d];
        if (p < 0 || p >= x->rank || seen[p]++)
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': perm is not a permutation", op->name);
        if (y->dims[d] != x->dims[p])
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output dimension %d differs", op->name, d);
    }
    return LNN_SIM_OK;
}

static lnn_sim_status run_transpose(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_transpose(x->rank, x->dims, op->attrs, lnn_dtype_size(x->dtype), x->data, y->data);
}

/* attributes: per axis start, step (output dims from its tensor record) */
static lnn_sim_status prepare_slice(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                    size_t n) {
    const lnn_tensor *x, *y;
    int32_t d;
    (void)need;
    if (op->n_in != 1 || op->in[0] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': Slice needs exactly one input", op->name);
    x = LNN_IN(m, op, 0);
    y = LNN_OUT(m, op, 0);
    if (x->rank < 1 || y->rank != x->rank || y->dtype != x->dtype || y->exponent != x->exponent ||
        op->n_attrs != 2 * x->rank)
        return LNN_FAIL(LNN_SIM_E_SHAPE,
                        "op '%s': Slice keeps rank, dtype and scale and takes a start and a step per axis", op->name);
    for (d = 0; d < x->rank; ++d) {
        const int32_t start = op->attrs[2 * d], step = op->attrs[2 * d + 1];
        if (start < 0 || step < 1 || (int64_t)start + (int64_t)(y->dims[d] - 1) * step >= x->dims[d])
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': axis %d: start %d, step %d and %d outputs leave the input (%d)",
                            op->name, d, start, step, y->dims[d], x->dims[d]);
    }
    return LNN_SIM_OK;
}

static lnn_sim_status run_slice(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    int32_t starts[LNN_SIM_MAX_RANK], steps[LNN_SIM_MAX_RANK], d;
    (void)msg, (void)n;
    for (d = 0; d < x->rank; ++d) {
        starts[d] = op->attrs[2 * d];
        steps[d] = op->attrs[2 * d + 1];
    }
    return lnn_sim_slice(x->rank, x->dims, y->dims, starts, steps, lnn_dtype_size(x->dtype), x->data, y->data);
}

/* attributes: axis (non-negative) */
static lnn_sim_status prepare_cat(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *o = LNN_OUT(m, op, 0);
    int32_t axis, i, d;
    int64_t sum = 0;
    (void)need;
    if (op->n_attrs != 1 || !lnn_is_int_out(o->dtype) || o->rank < 1)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': iqCat needs one attribute (axis) and an integer output", op->name);
    axis = op->attrs[0];
    if (axis < 0 || axis >= o->rank) return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': axis %d out of range", op->name, axis);
    for (i = 0; i < op->n_in; ++i) {
        const lnn_tensor *x;
        if (op->in[i] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': input %d is missing", op->name, i);
        x = LNN_IN(m, op, i);
        if (x->dtype != o->dtype || x->rank != o->rank)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': input %d must be of the output's dtype and rank %d", op->name, i,
                            o->rank);
        /* int8 inputs are rescaled to the output exponent; wider ones are copied, so they must share it */
        if (o->dtype != LNN_SIM_DT_INT8 && x->exponent != o->exponent)
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': int16/int32 input %d must have the output's exponent", op->name,
                            i);
        for (d = 0; d < o->rank; ++d)
            if (d != axis && x->dims[d] != o->dims[d])
                return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': input %d differs off the axis", op->name, i);
        sum += x->dims[axis];
    }
    if (sum != o->dims[axis])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': inputs add up to %lld along the axis, output has %d", op->name,
                        (long long)sum, o->dims[axis]);
    op->p.cat.axis = axis;
    op->p.cat.outer = 1;
    op->p.cat.inner = 1;
    for (d = 0; d < axis; ++d) op->p.cat.outer *= o->dims[d];
    for (d = axis + 1; d < o->rank; ++d) op->p.cat.inner *= o->dims[d];
    return LNN_SIM_OK;
}

/* An in-place join: an input that already lies where run_cat puts it (one outer block, its bytes at its position
 * inside the output) is not moved when it has the output's exponent, so it keeps its bytes; an int8 input with
 * another exponent is rescaled element by element in place, which reads each byte before writing it. Any other
 * input that shares bytes with the output would be overwritten while it is being read. */
static int32_t share_cat(const lnn_sim_model *m, const lnn_op *op, int32_t input, int32_t output) {
    const lnn_tensor *y = LNN_OUT(m, op, output), *x = LNN_IN(m, op, input);
    const int64_t esize = lnn_dtype_size(y->dtype);
    int64_t pos = 0;
    int32_t i;
    if (op->p.cat.outer != 1 || x->region != y->region) return LNN_SHARE_NONE;
    for (i = 0; i < input; ++i) pos += (int64_t)LNN_IN(m, op, i)->dims[op->p.cat.axis] * op->p.cat.inner;
    if ((int64_t)x->offset != (int64_t)y->offset + pos * esize) return LNN_SHARE_NONE;
    return x->exponent == y->exponent ? LNN_SHARE_KEEP : LNN_SHARE_READ;
}

static lnn_sim_status run_cat(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    lnn_tensor *y = LNN_OUT(m, op, 0);
    const int32_t axis = op->p.cat.axis, esize = lnn_dtype_size(y->dtype);
    int64_t o, pos = 0;
    int32_t i;
    (void)msg, (void)n;
    for (o = 0; o < op->p.cat.outer; ++o) {
        for (i = 0; i < op->n_in; ++i) {
            const lnn_tensor *xi = LNN_IN(m, op, i);
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

const lnn_op_kernel lnn_op_cat = {"iqCat", 1, prepare_cat, run_cat, share_cat};
const lnn_op_kernel lnn_op_reshape = {"Reshape", 1, prepare_reshape, run_reshape, share_reshape};
const lnn_op_kernel lnn_op_flatten = {"Flatten", 1, prepare_reshape, run_reshape, share_reshape};
const lnn_op_kernel lnn_op_squeeze = {"Squeeze", 1, prepare_reshape, run_reshape, share_reshape};
const lnn_op_kernel lnn_op_unsqueeze = {"Unsqueeze", 1, prepare_reshape, run_reshape, share_reshape};
const lnn_op_kernel lnn_op_transpose = {"Transpose", 1, prepare_transpose, run_transpose};
const lnn_op_kernel lnn_op_slice = {"Slice", 1, prepare_slice, run_slice};
