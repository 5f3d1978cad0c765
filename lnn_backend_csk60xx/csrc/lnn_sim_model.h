/*
 * lnn_sim_model.h - the in-memory model shared by loader.c and exec.c (not installed).
 */
#ifndef LNN_SIM_MODEL_H
#define LNN_SIM_MODEL_H

#include "lnn_sim_internal.h"

typedef struct {
    const char *name;
    int32_t dtype, rank, region, flags, exponent;
    int32_t dims[LNN_SIM_MAX_RANK];
    uint32_t offset, size;
    int64_t numel;
    uint8_t *data; /* region arena + offset, or the weight bytes inside the image */
} lnn_tensor;

typedef struct {
    int32_t type;
    const char *name;
    int32_t n_in, n_out;
    const int32_t *in;  /* tensor indices, -1 = omitted optional input */
    const int32_t *out;
    int32_t n_attrs;
    int32_t attrs[LNN_SIM_MAX_ATTRS];
    /* prepared at load time */
    lnn_sim_shape4 s_in, s_w, s_out;
    union {
        lnn_sim_conv_params conv;
        lnn_sim_linear_params lin;
        lnn_sim_pool_params pool;
        lnn_sim_eltwise_params elt;
        struct {
            int32_t shift, out_dtype;
        } rq;
        struct {
            int64_t lo, hi;
        } clip;
        struct {
            int32_t axis;
            int64_t outer, inner;
        } cat;
        struct {
            const char *op_type, *attrs_json;
        } ext;
    } p;
    int32_t act; /* LNN_SIM_ACT_*: fused activation of conv ops */
    int64_t rows;
    int32_t k, n;
} lnn_op;

struct lnn_sim_model {
    uint8_t *image; /* the loaded file: "flash" */
    size_t image_size;
    const char *strings;
    uint32_t strings_size;
    const uint8_t *weights;
    uint32_t weights_size;
    int32_t n_tensors, n_ops, n_io, n_inputs, n_outputs;
    lnn_tensor *tensors;
    lnn_op *ops;
    int32_t *io;
    int32_t inputs[LNN_SIM_MAX_GRAPH_IO], outputs[LNN_SIM_MAX_GRAPH_IO];
    uint32_t region_size[LNN_SIM_NUM_REGIONS];
    uint8_t *arena[LNN_SIM_NUM_REGIONS];
    int32_t *acc32;
    int64_t *acc64;
    int8_t *col;
    lnn_sim_external_fn external; /* callback running LNN_SIM_OP_EXTERNAL ops (NULL: none attached) */
    void *external_user;
    /* what the im2col scratch holds: the window matrix of tensor col_tensor for op col_op's geometry
     * (col_op < 0: nothing reusable). Consecutive conv pieces of one split op read the same tensor with
     * the same geometry and reuse it; setting a tensor or starting a run forgets it. */
    int32_t col_op, col_tensor;
};

/* exec.c: validate one op against its tensors and fill its prepared fields; returns the scratch
 * it needs: accumulator plane entries (*scratch) and im2col bytes (*col). */
lnn_sim_status lnn_prepare_op(const struct lnn_sim_model *m, lnn_op *op, int64_t *scratch, int64_t *col, char *msg,
                              size_t n);

#endif /* LNN_SIM_MODEL_H */
