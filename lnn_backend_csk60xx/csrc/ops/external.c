/*
 * ops/external.c - ops contributed by plugins (LNN_SIM_OP_EXTERNAL): the op record carries string
 * references of the op type and of its attributes as JSON; the op has 1..LNN_SIM_MAX_OP_OUTPUTS outputs.
 * The host attaches one callback (lnn_sim_set_external) that runs every external op: it reads the inputs
 * and writes each output at its planned offset through the public tensor API.
 */
#include "lnn_sim_model.h"

/* The attribute JSON is parsed by the host: bound its length and how deeply its arrays and objects nest (a
 * recursive parser would otherwise exhaust its stack on a hostile file). Brackets inside JSON strings do not count. */
static lnn_sim_status check_attr_json(const lnn_op *op, const char *text, uint32_t room, char *msg, size_t n) {
    int64_t depth = 0, deepest = 0;
    uint32_t i;
    int in_string = 0;
    for (i = 0; i < room && text[i] != '\0'; ++i) {
        const char c = text[i];
        if (i >= LNN_SIM_MAX_ATTR_JSON_BYTES)
            return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': attribute JSON is longer than %u bytes", op->name,
                            LNN_SIM_MAX_ATTR_JSON_BYTES);
        if (in_string) {
            if (c == '\\' && text[i + 1] != '\0')
                ++i; /* skip the escaped character (text[i] is not the section's final NUL, so i + 1 < room) */
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest) deepest = depth;
            if (deepest > LNN_SIM_MAX_ATTR_JSON_DEPTH)
                return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': attribute JSON nests arrays/objects deeper than %d levels",
                                op->name, LNN_SIM_MAX_ATTR_JSON_DEPTH);
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return LNN_SIM_OK;
}

/* attributes: string reference of the op type, string reference of the attributes (JSON) */
static lnn_sim_status prepare_external(const lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need, char *msg,
                                       size_t n) {
    int32_t i;
    lnn_sim_status st;
    (void)need;
    if (op->n_attrs != 2 || op->attrs[0] < 0 || (uint32_t)op->attrs[0] >= m->strings_size || op->attrs[1] < 0 ||
        (uint32_t)op->attrs[1] >= m->strings_size)
        return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': an external op needs two string references (op type, attributes)",
                        op->name);
    op->p.ext.op_type = m->strings + op->attrs[0];
    op->p.ext.attrs_json = m->strings + op->attrs[1];
    if (op->p.ext.op_type[0] == '\0') return LNN_FAIL(LNN_SIM_E_ATTR, "op '%s': external op type is empty", op->name);
    st = check_attr_json(op, op->p.ext.attrs_json, m->strings_size - (uint32_t)op->attrs[1], msg, n);
    if (st != LNN_SIM_OK) return st;
    for (i = 0; i < op->n_in; ++i)
        if (op->in[i] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': input %d of an external op is missing", op->name, i);
    return LNN_SIM_OK;
}

static lnn_sim_status run_external(lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    char reason[LNN_SIM_MAX_MSG];
    lnn_sim_status st;
    if (m->external == NULL)
        return LNN_FAIL(LNN_SIM_E_EXTERNAL, "op '%s' (%s) is an external op and no kernel is attached", op->name,
                        op->p.ext.op_type);
    reason[0] = '\0';
    st = m->external(m->external_user, m, (int32_t)(op - m->ops), reason, sizeof reason);
    reason[sizeof reason - 1] = '\0';
    if (st != LNN_SIM_OK)
        return LNN_FAIL(LNN_SIM_E_EXTERNAL, "op '%s' (%s) failed: %s", op->name, op->p.ext.op_type,
                        reason[0] ? reason : "the kernel returned an error");
    return LNN_SIM_OK;
}

/* The host reads every input (copies) before it writes any output. An output placed exactly on an input is the
 * plan's alias of an op declared to pass its input through; any other shared bytes change. */
static int32_t share_external(const lnn_sim_model *m, const lnn_op *op, int32_t input, int32_t output) {
    const lnn_tensor *x = LNN_IN(m, op, input), *y = LNN_OUT(m, op, output);
    return x->region == y->region && x->offset == y->offset && x->size == y->size ? LNN_SHARE_KEEP : LNN_SHARE_READ;
}

const lnn_op_kernel lnn_op_external = {"External", 0, prepare_external, run_external, share_external};

lnn_sim_status lnn_sim_set_external(lnn_sim_model *m, lnn_sim_external_fn fn, void *user) {
    if (m == NULL) return LNN_SIM_E_ARG;
    m->external = fn;
    m->external_user = user;
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_op_external(const lnn_sim_model *m, int32_t i, const char **op_type, const char **attrs_json) {
    if (m == NULL || op_type == NULL || attrs_json == NULL || i < 0 || i >= m->n_ops ||
        m->ops[i].kernel != &lnn_op_external)
        return LNN_SIM_E_ARG;
    *op_type = m->ops[i].p.ext.op_type;
    *attrs_json = m->ops[i].p.ext.attrs_json;
    return LNN_SIM_OK;
}
