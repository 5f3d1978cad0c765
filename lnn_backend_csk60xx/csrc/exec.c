/*
 * exec.c - execution of a loaded model ("Eval") and the accessors of the public runtime API.
 *
 * Every op was prepared and validated by the loader; an op runs through its registration
 * (op->kernel->run, see registry.c and ops/), so nothing here knows op types.
 */
#include "lnn_sim_model.h"

lnn_sim_status lnn_sim_invoke_op(lnn_sim_model *m, int32_t i, char *msg, size_t n) {
    char reason[LNN_SIM_MAX_MSG];
    const lnn_op *op;
    lnn_sim_status st;
    if (msg != NULL && n > 0) msg[0] = '\0';
    if (m == NULL || i < 0 || i >= m->n_ops) return LNN_FAIL(LNN_SIM_E_ARG, "op index %d out of range", i);
    if (i == 0) m->col_op = -1; /* a new run: inputs may differ */
    op = &m->ops[i];
    reason[0] = '\0';
    st = op->kernel->run(m, op, reason, sizeof reason);
    if (st == LNN_SIM_OK) return LNN_SIM_OK;
    reason[sizeof reason - 1] = '\0';
    if (reason[0] != '\0') return LNN_FAIL(st, "%s", reason);
    return LNN_FAIL(st, "op '%s' (%s) failed with status %d", op->name, op->kernel->name, (int)st);
}

lnn_sim_status lnn_sim_invoke(lnn_sim_model *m, char *msg, size_t n) {
    int32_t i;
    if (m == NULL) return LNN_FAIL(LNN_SIM_E_ARG, "NULL model");
    m->col_op = -1;
    for (i = 0; i < m->n_ops; ++i) {
        const lnn_sim_status st = lnn_sim_invoke_op(m, i, msg, n);
        if (st != LNN_SIM_OK) return st;
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_run_rows(lnn_sim_model *m, int64_t rows, const uint8_t *const *inputs, uint8_t *const *outputs,
                                int64_t *failed_row, char *msg, size_t n) {
    int64_t r;
    int32_t i;
    if (msg != NULL && n > 0) msg[0] = '\0';
    if (failed_row != NULL) *failed_row = -1;
    if (m == NULL || rows < 0 || (rows > 0 && (inputs == NULL || outputs == NULL)))
        return LNN_FAIL(LNN_SIM_E_ARG, "NULL model or buffers, or a negative row count");
    for (r = 0; r < rows; ++r) {
        lnn_sim_status st;
        for (i = 0; i < m->n_inputs; ++i) {
            const lnn_tensor *t = &m->tensors[m->inputs[i]];
            if (t->region == LNN_SIM_REGION_FLASH) return LNN_FAIL(LNN_SIM_E_ARG, "graph input '%s' is a constant", t->name);
            memcpy(t->data, inputs[i] + (size_t)r * t->size, t->size);
        }
        st = lnn_sim_invoke(m, msg, n);
        if (st != LNN_SIM_OK) {
            if (failed_row != NULL) *failed_row = r;
            return st;
        }
        for (i = 0; i < m->n_outputs; ++i) {
            const lnn_tensor *t = &m->tensors[m->outputs[i]];
            memcpy(outputs[i] + (size_t)r * t->size, t->data, t->size);
        }
    }
    return LNN_SIM_OK;
}

/* ---- accessors ------------------------------------------------------------------------------- */

const char *lnn_sim_isa(const lnn_sim_model *m) { return m ? lnn_isa_name(m->isa) : NULL; }
int32_t lnn_sim_isa_available(void) { return lnn_isa_available(); }
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

int32_t lnn_sim_op_type(const lnn_sim_model *m, int32_t i) { return m && i >= 0 && i < m->n_ops ? m->ops[i].type : 0; }

lnn_sim_status lnn_sim_op_inputs(const lnn_sim_model *m, int32_t i, int32_t *indices, int32_t max, int32_t *count) {
    int32_t k;
    if (m == NULL || count == NULL || i < 0 || i >= m->n_ops || (indices == NULL && max > 0)) return LNN_SIM_E_ARG;
    *count = m->ops[i].n_in;
    for (k = 0; k < m->ops[i].n_in && k < max; ++k) indices[k] = m->ops[i].in[k];
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
