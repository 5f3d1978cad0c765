/*
 * ops/gather.c - Gather, the embedding lookup (spec/int8-seq-ops.md 2.8.4; thinker venus/gather.h).
 *
 *   y[j, :] = table[idx[j], :]      table int8 [V, E] (a constant), idx int32 of any shape, y int8 idx.shape + [E]
 *
 * A byte copy of E bytes per index, no arithmetic; the output exponent is the table's (n_o = n_w). The vendor
 * kernel reads any index without a bound check (-1 is the last row, anything else outside 0..V-1 reads out of
 * bounds) and narrows int64 indices into a heap copy at every call: here the packer narrows int64 indices to
 * int32 once (int32 at exponent 0 in model.bin: integers as they are), and an index outside 0..V-1 stops the run
 * with LNN_SIM_E_INPUT naming the op, the position and the value (torch refuses those indices too, -1 included).
 */
#include "lnn_sim_model.h"

#include <string.h>

lnn_sim_status lnn_sim_gather_s8(int64_t rows, int32_t cols, const int8_t *table, int64_t count, const int32_t *idx,
                                 int8_t *y, int64_t *bad) {
    int64_t j;
    if (rows < 1 || cols < 1 || count < 0 || table == NULL || idx == NULL || y == NULL) return LNN_SIM_E_ARG;
    for (j = 0; j < count; ++j) {
        const int64_t r = idx[j];
        if (r < 0 || r >= rows) {
            if (bad != NULL) *bad = j;
            return LNN_SIM_E_INPUT;
        }
        memcpy(y + j * cols, table + r * cols, (size_t)cols);
    }
    return LNN_SIM_OK;
}

/* ---- registration -------------------------------------------------------------------------------- */

static lnn_sim_status prepare_gather(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                     size_t n) {
    const lnn_tensor *t, *idx, *y;
    int32_t d;
    if (op->n_in != 2 || op->in[0] < 0 || op->in[1] < 0 || op->n_attrs != 0)
        return LNN_FAIL(LNN_SIM_E_OP, "op '%s': Gather needs a table and indices and no attributes", op->name);
    t = LNN_IN(m, op, 0);
    idx = LNN_IN(m, op, 1);
    y = LNN_OUT(m, op, 0);
    if (t->dtype != LNN_SIM_DT_INT8 || t->rank != 2 || !(t->flags & LNN_SIM_TF_CONST) ||
        idx->dtype != LNN_SIM_DT_INT32 || idx->exponent != 0 || y->dtype != LNN_SIM_DT_INT8 ||
        y->rank != idx->rank + 1)
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': Gather needs a constant int8 table [V, E] and int32 indices at "
                        "exponent 0, and writes int8 of the indices' shape + [E]", op->name);
    for (d = 0; d < idx->rank; ++d)
        if (y->dims[d] != idx->dims[d])
            return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output dimension %d is %d, the indices' is %d", op->name, d,
                            (int)y->dims[d], (int)idx->dims[d]);
    if (y->dims[idx->rank] != t->dims[1])
        return LNN_FAIL(LNN_SIM_E_SHAPE, "op '%s': output rows have %d values, the table's %d", op->name,
                        (int)y->dims[idx->rank], (int)t->dims[1]);
    if (y->exponent != t->exponent)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': output exponent %d is not the table's (%d): Gather copies bytes",
                        op->name, (int)y->exponent, (int)t->exponent);
    op->rows = t->dims[0];
    op->k = t->dims[1];
    need->macs = 0;
    return LNN_SIM_OK;
}

static lnn_sim_status run_gather(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    const lnn_tensor *t = LNN_IN(m, op, 0), *idx = LNN_IN(m, op, 1), *y = LNN_OUT(m, op, 0);
    int64_t bad = -1;
    const lnn_sim_status st = lnn_sim_gather_s8(op->rows, op->k, (const int8_t *)t->data, idx->numel,
                                                (const int32_t *)idx->data, (int8_t *)y->data, &bad);
    if (st == LNN_SIM_E_INPUT)
        return LNN_FAIL(st, "op '%s' (Gather): index %d at position %lld of '%s' is outside 0..%lld (the table's rows)",
                        op->name, (int)((const int32_t *)idx->data)[bad], (long long)bad, idx->name,
                        (long long)(op->rows - 1));
    return st;
}

const lnn_op_kernel lnn_op_gather = {"Gather", 1, prepare_gather, run_gather, NULL};
