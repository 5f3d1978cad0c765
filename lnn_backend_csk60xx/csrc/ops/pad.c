/*
 * ops/pad.c - iqPad, constant zero padding of the two spatial axes of a 4-D tensor (spec/int8-ops.md 3.31;
 * thinker venus/iqpad.h).
 *
 *   y[n, c, h + top, w + left] = x[n, c, h, w];   every other element of y is 0
 *
 * Zero is exact at every scale, so dtype and exponent pass through; no arithmetic. Attributes: top, left,
 * bottom, right (each >= 0). The vendor kernel also has reflect/edge modes and works in HWC through a
 * workspace; lnn writes only the constant-zero form, which the layout does not change.
 */
#include "lnn_sim_model.h"

#include <string.h>

lnn_sim_status lnn_sim_pad2d(int64_t planes, int32_t h, int32_t w, int32_t top, int32_t left, int32_t bottom,
                             int32_t right, int32_t elem_size, const void *x, void *y) {
    const int64_t ho = (int64_t)h + top + bottom, wo = (int64_t)w + left + right;
    const uint8_t *xs = (const uint8_t *)x;
    uint8_t *ys = (uint8_t *)y;
    int64_t p, r;
    if (planes < 0 || h < 0 || w < 0 || top < 0 || left < 0 || bottom < 0 || right < 0 || elem_size < 1 ||
        x == NULL || y == NULL)
        return LNN_SIM_E_ARG;
    memset(ys, 0, (size_t)(planes * ho * wo * elem_size));
    for (p = 0; p < planes; ++p)
        for (r = 0; r < h; ++r)
            memcpy(ys + ((p * ho + r + top) * wo + left) * elem_size, xs + (p * h + r) * (int64_t)w * elem_size,
                   (size_t)w * (size_t)elem_size);
    return LNN_SIM_OK;
}

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_pad(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg, size_t n) {
    const lnn_tensor *x, *y;
    int32_t d;
    if (op->n_in != 1 || op->in[0] < 0 || op->n_attrs != 4)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': iqPad needs one input and four pads (top, left, bottom, right)",
                        op->name);
    x = LNN_IN(m, op, 0);
    y = LNN_OUT(m, op, 0);
    if (x->rank != 4 || y->rank != 4 || y->dtype != x->dtype || y->exponent != x->exponent)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': iqPad pads a 4-D tensor and keeps its dtype and scale", op->name);
    for (d = 0; d < 4; ++d)
        if (op->attrs[d] < 0)
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': pad %d is %d, negative", op->name, (int)d, (int)op->attrs[d]);
    if (y->dims[0] != x->dims[0] || y->dims[1] != x->dims[1] ||
        (int64_t)y->dims[2] != (int64_t)x->dims[2] + op->attrs[0] + op->attrs[2] ||
        (int64_t)y->dims[3] != (int64_t)x->dims[3] + op->attrs[1] + op->attrs[3])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output %dx%dx%dx%d is not the input %dx%dx%dx%d padded by "
                        "(%d, %d, %d, %d)", op->name, (int)y->dims[0], (int)y->dims[1], (int)y->dims[2],
                        (int)y->dims[3], (int)x->dims[0], (int)x->dims[1], (int)x->dims[2], (int)x->dims[3],
                        (int)op->attrs[0], (int)op->attrs[1], (int)op->attrs[2], (int)op->attrs[3]);
    need->macs = 0;
    return LNN_SIM_OK;
}

static lnn_sim_status run_pad(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *x = LNN_IN(m, op, 0), *y = LNN_OUT(m, op, 0);
    (void)msg, (void)n;
    return lnn_sim_pad2d((int64_t)x->dims[0] * x->dims[1], x->dims[2], x->dims[3], op->attrs[0], op->attrs[1],
                         op->attrs[2], op->attrs[3], lnn_dtype_size(x->dtype), x->data, y->data);
}

const lnn_op_kernel lnn_op_pad = {"iqPad", 1, prepare_pad, run_pad, NULL};
