/*
 * registry.c - the op resolver: model.bin op code -> registration (lnn_op_kernel).
 *
 * This table is the only place that lists op codes. Each family file in ops/ defines the registrations
 * of its ops (name, output count, prepare, run); adding an op is one entry here plus its family file.
 * The loader refuses a code that has no entry, so a file written for a newer simulator fails to load
 * instead of running something else.
 */
#include "lnn_sim_model.h"

#include <stdarg.h>
#include <stdio.h>

/* ops/quant.c */
extern const lnn_op_kernel lnn_op_quant, lnn_op_dequant, lnn_op_requant;
/* ops/conv.c */
extern const lnn_op_kernel lnn_op_conv2d, lnn_op_conv1d, lnn_op_deconv2d;
/* ops/fc.c */
extern const lnn_op_kernel lnn_op_linear;
/* ops/norm.c */
extern const lnn_op_kernel lnn_op_batchnorm2d;
/* ops/pool.c */
extern const lnn_op_kernel lnn_op_avgpool2d, lnn_op_maxpool2d;
/* ops/eltwise.c */
extern const lnn_op_kernel lnn_op_relu, lnn_op_clip, lnn_op_add, lnn_op_sub, lnn_op_mul;
/* ops/shape.c */
extern const lnn_op_kernel lnn_op_cat, lnn_op_reshape, lnn_op_flatten, lnn_op_transpose, lnn_op_squeeze,
    lnn_op_unsqueeze, lnn_op_slice;
/* ops/activation.c */
extern const lnn_op_kernel lnn_op_sigmoid, lnn_op_tanh;
/* ops/layernorm.c */
extern const lnn_op_kernel lnn_op_layernorm;
/* ops/softmax.c */
extern const lnn_op_kernel lnn_op_softmax, lnn_op_logsoftmax;
/* ops/bmm.c */
extern const lnn_op_kernel lnn_op_bmm;
/* ops/gather.c */
extern const lnn_op_kernel lnn_op_gather;
/* ops/lstm.c */
extern const lnn_op_kernel lnn_op_lstm;
/* ops/gru.c */
extern const lnn_op_kernel lnn_op_gru;
/* ops/pad.c */
extern const lnn_op_kernel lnn_op_pad;
/* ops/external.c */
extern const lnn_op_kernel lnn_op_external;

static const struct {
    int32_t code;
    const lnn_op_kernel *kernel;
} k_registry[] = {
    {LNN_SIM_OP_QUANT, &lnn_op_quant},
    {LNN_SIM_OP_DEQUANT, &lnn_op_dequant},
    {LNN_SIM_OP_REQUANT, &lnn_op_requant},
    {LNN_SIM_OP_CONV2D, &lnn_op_conv2d},
    {LNN_SIM_OP_CONV1D, &lnn_op_conv1d},
    {LNN_SIM_OP_DECONV2D, &lnn_op_deconv2d},
    {LNN_SIM_OP_LINEAR, &lnn_op_linear},
    {LNN_SIM_OP_BATCHNORM2D, &lnn_op_batchnorm2d},
    {LNN_SIM_OP_AVGPOOL2D, &lnn_op_avgpool2d},
    {LNN_SIM_OP_MAXPOOL2D, &lnn_op_maxpool2d},
    {LNN_SIM_OP_RELU, &lnn_op_relu},
    {LNN_SIM_OP_CLIP, &lnn_op_clip},
    {LNN_SIM_OP_ADD, &lnn_op_add},
    {LNN_SIM_OP_SUB, &lnn_op_sub},
    {LNN_SIM_OP_MUL, &lnn_op_mul},
    {LNN_SIM_OP_CAT, &lnn_op_cat},
    {LNN_SIM_OP_RESHAPE, &lnn_op_reshape},
    {LNN_SIM_OP_FLATTEN, &lnn_op_flatten},
    {LNN_SIM_OP_TRANSPOSE, &lnn_op_transpose},
    {LNN_SIM_OP_SQUEEZE, &lnn_op_squeeze},
    {LNN_SIM_OP_UNSQUEEZE, &lnn_op_unsqueeze},
    {LNN_SIM_OP_SLICE, &lnn_op_slice},
    {LNN_SIM_OP_EXTERNAL, &lnn_op_external},
    {LNN_SIM_OP_SIGMOID, &lnn_op_sigmoid},
    {LNN_SIM_OP_TANH, &lnn_op_tanh},
    {LNN_SIM_OP_LAYERNORM, &lnn_op_layernorm},
    {LNN_SIM_OP_SOFTMAX, &lnn_op_softmax},
    {LNN_SIM_OP_LOGSOFTMAX, &lnn_op_logsoftmax},
    {LNN_SIM_OP_BMM, &lnn_op_bmm},
    {LNN_SIM_OP_GATHER, &lnn_op_gather},
    {LNN_SIM_OP_LSTM, &lnn_op_lstm},
    {LNN_SIM_OP_GRU, &lnn_op_gru},
    {LNN_SIM_OP_PAD, &lnn_op_pad},
};

const lnn_op_kernel *lnn_find_kernel(int32_t code) {
    size_t i;
    for (i = 0; i < sizeof k_registry / sizeof k_registry[0]; ++i)
        if (k_registry[i].code == code) return k_registry[i].kernel;
    return NULL;
}

lnn_sim_status lnn_fail(char *msg, size_t n, lnn_sim_status code, const char *fmt, ...) {
    if (msg != NULL && n > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, n, fmt, ap);
        va_end(ap);
    }
    return code;
}
