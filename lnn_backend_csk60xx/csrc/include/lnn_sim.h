/*
 * lnn_sim.h - the one public header of the lnn CSK60xx (VENUS) int8 simulator.
 *
 * Two layers:
 *   1. Reference kernels: pure functions lnn_sim_<op>_s8(params, shapes, pointers) returning a
 *      status. No state, no allocation; scratch memory is passed in by the caller.
 *   2. The model runtime: lnn_sim_load() validates a model.bin image completely (every count,
 *      index, offset, size and attribute against the file length and the memory plan, and the
 *      schedule: every op reads only what an earlier op wrote and nothing overwrote since) before
 *      anything runs, allocates one arena per memory region at the planned size, and places
 *      every activation tensor at its planned offset. Weights are read in place from the loaded
 *      image ("flash").
 *
 * Arithmetic (spec/int8-ops.md section 1.2), on exact int64 values:
 *   SHR(v, s) = floor(v / 2^s + 0.5) for s > 0 (ties toward +inf), v for s = 0, v * 2^-s for s < 0
 *   SAT_b(v)  = clamp(v, -2^(b-1), 2^(b-1) - 1)
 *   RQ_b(v,s) = SAT_b(SHR(v, s))      -- the one requantizer; saturation happens once, at the output
 *
 * C99. The model.bin layout is documented in the package README ("model.bin format").
 */
#ifndef LNN_SIM_H
#define LNN_SIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------ */
typedef int32_t lnn_sim_status;
#define LNN_SIM_OK 0
#define LNN_SIM_E_ARG 1          /* bad argument from the caller (NULL, index out of range)    */
#define LNN_SIM_E_NOMEM 2        /* an arena could not be allocated                            */
#define LNN_SIM_E_TRUNCATED 3    /* the image is shorter than its header or a section claims   */
#define LNN_SIM_E_MAGIC 4        /* not a model.bin image                                       */
#define LNN_SIM_E_VERSION 5      /* unsupported format version or header size                  */
#define LNN_SIM_E_TARGET 6       /* written for another target                                 */
#define LNN_SIM_E_CRC 7          /* payload CRC32 mismatch                                      */
#define LNN_SIM_E_SECTION 8      /* section table invalid (missing, repeated, out of bounds)   */
#define LNN_SIM_E_STRING 9       /* string reference out of bounds or unterminated             */
#define LNN_SIM_E_TENSOR 10      /* tensor record invalid (dtype, rank, dims, size, placement) */
#define LNN_SIM_E_OP 11          /* op record invalid (unknown type, input/output counts/indices) */
#define LNN_SIM_E_ATTR 12        /* op attribute invalid                                        */
#define LNN_SIM_E_SHAPE 13       /* tensor shapes/dtypes do not fit the op                     */
#define LNN_SIM_E_PLAN 14        /* memory plan invalid (region size, tensor outside its arena) */
#define LNN_SIM_E_LIMIT 15       /* a simulator limit (LNN_SIM_MAX_*) is exceeded              */
#define LNN_SIM_E_INPUT 16       /* run-time input does not match the model                    */
#define LNN_SIM_E_EXTERNAL 17    /* an external op has no kernel attached, or its kernel failed */
#define LNN_SIM_E_SCHEDULE 18    /* an op reads a tensor that no earlier op wrote, or that was overwritten since */
#define LNN_SIM_E_WORK 19        /* the model's MAC count exceeds the caller's limit (lnn_sim_load_ex max_macs) */

/* ---- limits -------------------------------------------------------------------------------- */
#define LNN_SIM_MAX_RANK 6
#define LNN_SIM_MAX_ATTRS 16
#define LNN_SIM_MAX_TENSORS 65536
#define LNN_SIM_MAX_OPS 65536
#define LNN_SIM_MAX_OP_INPUTS 64
#define LNN_SIM_MAX_OP_OUTPUTS 8 /* built-in ops write one output; external ops 1..8 */
#define LNN_SIM_MAX_GRAPH_IO 64
#define LNN_SIM_MAX_REGION_BYTES (256u * 1024u * 1024u)
#define LNN_SIM_MAX_TENSOR_BYTES (256u * 1024u * 1024u)
#define LNN_SIM_MAX_SCRATCH_BYTES (256u * 1024u * 1024u)
#define LNN_SIM_MAX_EXPONENT 64  /* |exponent| of any tensor */
#define LNN_SIM_MAX_LEFT_SHIFT 32 /* iqAdd/iqSub: n_o - n_x and n_o - n_y at most this (each rescaled operand
                                   * then stays below 2^39, so their sum is exact in int64) */
#define LNN_SIM_MAX_POOL_SHIFT 32 /* AvgPool2dInt: |n_o - n_x| at most this */
#define LNN_SIM_MAX_WINDOW 4096  /* kernel, stride, pad, dilation and output_padding values of conv and pool ops */
#define LNN_SIM_MAX_WINDOW_AREA 65536 /* kh * kw of a conv or pool window */
#define LNN_SIM_MAX_GROUPS 65536 /* conv groups */
#define LNN_SIM_MAX_ATTR_JSON_BYTES (1u << 20) /* an external op's attribute JSON, without its NUL */
#define LNN_SIM_MAX_ATTR_JSON_DEPTH 32 /* nesting of JSON arrays and objects in it (the outer object counts 1) */
/* The loader counts each op's work in MACs: multiply-accumulates of conv, linear and batchnorm ops, window cells
 * of pools, and one per element every op reads or writes. lnn_sim_load refuses a model whose total exceeds this
 * default (about 10x a ResNet-50 at 224x224, 4.1 G MACs); lnn_sim_load_ex takes another limit. */
#define LNN_SIM_DEFAULT_MAX_MACS 40000000000ull
#define LNN_SIM_MAX_MSG 512      /* error message buffer the caller should provide */

/* ---- model.bin constants --------------------------------------------------------------------- */
#define LNN_SIM_FORMAT_VERSION 1
#define LNN_SIM_HEADER_BYTES 64
#define LNN_SIM_TARGET_CSK60XX 0x6000
#define LNN_SIM_ALIGN 64
#define LNN_SIM_NO_EXPONENT (-2147483647 - 1)

/* sections */
#define LNN_SIM_SEC_STRINGS 1
#define LNN_SIM_SEC_TENSORS 2
#define LNN_SIM_SEC_OPS 3
#define LNN_SIM_SEC_IOIDX 4
#define LNN_SIM_SEC_WEIGHTS 5
#define LNN_SIM_SEC_PLAN 6
#define LNN_SIM_SEC_GRAPH 7
#define LNN_SIM_NUM_SECTIONS 7
#define LNN_SIM_SECTION_ENTRY_BYTES 16
#define LNN_SIM_TENSOR_RECORD_BYTES 48
#define LNN_SIM_OP_RECORD_BYTES 96
#define LNN_SIM_PLAN_RECORD_BYTES 16

/* memory regions (the chip toolchain's memory classes) */
#define LNN_SIM_REGION_FLASH 0
#define LNN_SIM_REGION_PSRAM 1
#define LNN_SIM_REGION_SHARE 2
#define LNN_SIM_NUM_REGIONS 3

/* tensor dtypes */
#define LNN_SIM_DT_FLOAT32 1
#define LNN_SIM_DT_INT8 2
#define LNN_SIM_DT_UINT8 3
#define LNN_SIM_DT_INT16 4
#define LNN_SIM_DT_INT32 5
#define LNN_SIM_DT_INT64 6

/* tensor flags */
#define LNN_SIM_TF_INPUT 1
#define LNN_SIM_TF_OUTPUT 2
#define LNN_SIM_TF_CONST 4

/* op types (attribute vectors are listed in the README). The loader refuses a code this simulator has no
 * registration for (csrc/registry.c). */
#define LNN_SIM_OP_QUANT 1
#define LNN_SIM_OP_DEQUANT 2
#define LNN_SIM_OP_REQUANT 3
#define LNN_SIM_OP_CONV2D 4
#define LNN_SIM_OP_CONV1D 5
#define LNN_SIM_OP_DECONV2D 6
#define LNN_SIM_OP_LINEAR 7
#define LNN_SIM_OP_BATCHNORM2D 8
#define LNN_SIM_OP_AVGPOOL2D 9
#define LNN_SIM_OP_MAXPOOL2D 10
#define LNN_SIM_OP_RELU 11
#define LNN_SIM_OP_CLIP 12
#define LNN_SIM_OP_ADD 13
#define LNN_SIM_OP_SUB 14
#define LNN_SIM_OP_MUL 15
#define LNN_SIM_OP_CAT 16
#define LNN_SIM_OP_RESHAPE 17
#define LNN_SIM_OP_FLATTEN 18
#define LNN_SIM_OP_TRANSPOSE 19
#define LNN_SIM_OP_SQUEEZE 20
#define LNN_SIM_OP_UNSQUEEZE 21
#define LNN_SIM_OP_SLICE 22
#define LNN_SIM_OP_EXTERNAL 23  /* an op contributed by a plugin; runs through lnn_sim_set_external() */
#define LNN_SIM_OP_SIGMOID 24   /* iqSigmoid: int16 (exponent >= 11) -> int8 at exponent 7 */
#define LNN_SIM_OP_TANH 25      /* iqTanh: int16 (exponent >= 11) -> int8 at exponent 7 */
#define LNN_SIM_OP_LAYERNORM 26 /* LayerNormInt: int8 rows, int16 gamma, int32 beta -> int8 */
#define LNN_SIM_OP_SOFTMAX 27   /* SoftmaxInt: int8 rows (last dim) -> int8 (n_o <= 15); model not vendor-verified */
#define LNN_SIM_OP_LOGSOFTMAX 28 /* LogSoftmaxInt: int8 rows (last dim) -> int8 (n_o <= 25); not vendor-verified */
#define LNN_SIM_OP_BMM 29       /* BmmInt: int8 [B,M,K] x int8 [B,K,N] -> int8 */
#define LNN_SIM_OP_GATHER 30    /* Gather: rows of a constant int8 table [V, E] by int32 indices (embedding) */
#define LNN_SIM_OP_LSTM 31      /* LSTMInt: int8 sequence (batch 1, either direction, optional lengths, h0/c0) */
#define LNN_SIM_OP_GRU 32       /* GRUInt: int8 sequence (batch 1, either direction, optional lengths, h0) */
#define LNN_SIM_OP_PAD 33       /* iqPad: zeros around H and W of a 4-D tensor (dtype and scale pass through) */
#define LNN_SIM_NUM_OP_TYPES 34

/* Conv2dInt / Conv1dInt / ConvTranspose2dInt take an optional trailing attribute: the fused activation
 * applied to the requantized output (the chip's act_type). */
#define LNN_SIM_ACT_NONE 0
#define LNN_SIM_ACT_RELU 1

/* ---- kernels ------------------------------------------------------------------------------- */
typedef struct {
    int32_t n, c, h, w;
} lnn_sim_shape4;

/* Scratch for accumulating kernels: acc32 and acc64 each hold at least out.h * out.w entries;
 * col holds at least lnn_sim_conv_col_bytes() bytes (the im2col matrix of one group).
 * col_ready = 1 tells lnn_sim_conv2d_s8 that col already holds the window matrix of this very x for these
 * parameters (the caller guarantees it; honoured for one image and one group), so it is not rebuilt. */
typedef struct {
    int32_t *acc32;
    int64_t *acc64;
    int8_t *col;
    int32_t col_ready;
} lnn_sim_scratch;

/* Conv2dInt / Conv1dInt (h = 1): y[n,m,i,j] = RQ_out(sum x * w + b[m], shift), shift = n_x + n_w - n_o. */
typedef struct {
    int32_t kh, kw, sh, sw, pt, pl, dh, dw, groups;
    int32_t shift;
    int32_t out_dtype; /* LNN_SIM_DT_INT8 / INT16 / INT32 */
} lnn_sim_conv_params;

/* Bytes of im2col scratch lnn_sim_conv2d_s8 needs (0 when it convolves directly). */
int64_t lnn_sim_conv_col_bytes(const lnn_sim_conv_params *p, int32_t cin_per_group, const lnn_sim_shape4 *out);

lnn_sim_status lnn_sim_conv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                 const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                 const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch);

/* ConvTranspose2dInt: exact transposed convolution (scatter form), weight [C_in, C_out/g, kh, kw];
 * pt/pl are the begin paddings that crop the full output. */
lnn_sim_status lnn_sim_deconv2d_s8(const lnn_sim_conv_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                   const lnn_sim_shape4 *wshape, const int8_t *w, const int32_t *bias,
                                   const lnn_sim_shape4 *out, void *y, const lnn_sim_scratch *scratch);

/* LinearInt: y[r, n] = RQ_out(sum_k x[r, k] * w[n, k] + b[n], shift). */
typedef struct {
    int32_t shift;
    int32_t out_dtype;
} lnn_sim_linear_params;

lnn_sim_status lnn_sim_linear_s8(const lnn_sim_linear_params *p, int64_t rows, int32_t k, int32_t n,
                                 const int8_t *x, const int8_t *w, const int32_t *bias, void *y);

/* BatchNorm2dInt: y[n,c,i,j] = RQ_8(x * a[c] + b[c], shift). */
lnn_sim_status lnn_sim_batchnorm2d_s8(const lnn_sim_linear_params *p, const lnn_sim_shape4 *shape,
                                      const int8_t *x, const int8_t *a, const int32_t *b, void *y);

/* AvgPool2dInt: s = zero-padded window sum, A = kh * kw, d = n_o - n_x:
 *   y = SAT_out(floor(s * 2^d / A + 0.5)) evaluated exactly. */
typedef struct {
    int32_t kh, kw, sh, sw, pt, pl, dh, dw;
    int32_t shift_up; /* d = n_o - n_x */
    int32_t out_dtype;
} lnn_sim_pool_params;

lnn_sim_status lnn_sim_avgpool2d_s8(const lnn_sim_pool_params *p, const lnn_sim_shape4 *in, const int8_t *x,
                                    const lnn_sim_shape4 *out, void *y);

/* MaxPool: max over the window; padded cells never win. dtype is the element type of x and y. */
lnn_sim_status lnn_sim_maxpool2d_s8(const lnn_sim_pool_params *p, int32_t dtype, const lnn_sim_shape4 *in,
                                    const void *x, const lnn_sim_shape4 *out, void *y);

/* iqAdd / iqSub: y = SAT_8(SHR(x, n_x - n_o) +/- SHR(y, n_y - n_o)); shift_x, shift_y >= -LNN_SIM_MAX_LEFT_SHIFT.
 * iqMul:         y = SAT_8(SHR(x * y, n_x + n_y - n_o)); y broadcast per channel or as a scalar. */
typedef struct {
    int32_t shift_x, shift_y; /* add/sub: n_x - n_o, n_y - n_o; mul: shift_x = n_x + n_y - n_o */
    int32_t op;               /* LNN_SIM_OP_ADD / SUB / MUL */
    int64_t y_period;         /* mul broadcast: element i uses y[(i / y_inner) % y_period] */
    int64_t y_inner;
} lnn_sim_eltwise_params;

lnn_sim_status lnn_sim_eltwise_s8(const lnn_sim_eltwise_params *p, int64_t count, const int8_t *x,
                                  const int8_t *y, int8_t *out);

/* Quant: q = SAT_8(floorf(2^n * x + 0.5f)) in float32; NaN gives 0. */
lnn_sim_status lnn_sim_quant_s8(int32_t exponent, int64_t count, const float *x, int8_t *y);
/* Dequant: y = q * 2^-n in float32. */
lnn_sim_status lnn_sim_dequant_s8(int32_t exponent, int32_t in_dtype, int64_t count, const void *x, float *y);
/* Requant and iqCat's per-input rescale: y = SAT_out(SHR(q, shift)), shift = n_in - n_out. */
lnn_sim_status lnn_sim_rescale_s8(int32_t shift, int32_t out_dtype, int64_t count, const int8_t *x, void *y);
/* iqSigmoid / iqTanh (op = LNN_SIM_OP_SIGMOID / TANH): t = SAT_16(SHR(x, n_x - 11)), then the 16-segment PWL of
 * spec/int8-seq-ops.md 1.3 to Q15 and y = SAT_8(SHR(SAT_16(pwl(t)), 8)) at exponent 7; n_x >= 11. */
lnn_sim_status lnn_sim_activation_s16(int32_t op, int32_t in_exponent, int64_t count, const int16_t *x, int8_t *y);
/* LayerNormInt (spec/int8-seq-ops.md 2.3.4) on `rows` rows of `row` int8 values: the normalized value u (Q10, from
 * the row's int32 sums and a 768-entry rsqrt table), then y = SAT_8(SHR(u * gamma + beta, 10 + n_g - n_o)). Returns
 * LNN_SIM_E_LIMIT for a row whose int32 sums wrap to a negative variance term (undefined on the chip). */
lnn_sim_status lnn_sim_layernorm_s8(int32_t in_exponent, int32_t gamma_exponent, int32_t out_exponent, int64_t rows,
                                    int32_t row, const int8_t *x, const int16_t *gamma, const int32_t *beta,
                                    int8_t *y);
/* GRUInt (spec/int8-seq-ops.md 2.2.4) on one sequence of `steps` int8 rows of d values, hidden size h: the first
 * `length` rows, forward or (reverse = 1) backward, from h0 (int8 at n_o; NULL: zeros): w_ih [3h,d], w_hh [3h,h]
 * int8 (gates r, z, n), b_ih, b_hh int32 [3h]; writes y [steps,h] (rows >= length zero) and the last state h_n
 * [h]. scratch holds 6h int64 entries, acc 3h int32; isa as for lnn_sim_lstm_s8. LNN_SIM_E_ATTR when
 * n_i + n_iw < 11, n_o + n_hw < 11 or n_o > 14 (the chip's shifts there are not scalings). */
lnn_sim_status lnn_sim_gru_s8(int32_t n_i, int32_t n_iw, int32_t n_hw, int32_t n_o, int64_t steps, int64_t length,
                              int32_t reverse, int32_t d, int32_t h, const int8_t *x, const int8_t *w_ih,
                              const int8_t *w_hh, const int32_t *b_ih, const int32_t *b_hh, const int8_t *h0,
                              int8_t *y, int8_t *h_n, int32_t isa, int64_t *scratch, int32_t *acc);
/* LSTMInt (spec/int8-seq-ops.md 2.1.4) on one sequence of `steps` int8 rows of d values, hidden size h: the first
 * `length` rows, forward or (reverse = 1) backward, from h0 (int8 at n_o) and c0 (int16 Q7), NULL: zeros; w_ih [4h,d],
 * w_hh [4h,h] int8 (gates i, f, g, o), b_ih, b_hh int32 [4h]; writes y [steps,h] (rows >= length zero) and the last
 * state h_n [h], c_n [h]. scratch holds 8h int64 entries, acc 4h int32; isa: the dot products' instruction-set path
 * (0 portable, 1 avx2, 2 avx512vnni: avx2's). LNN_SIM_E_ATTR outside the chip's shift contract. */
lnn_sim_status lnn_sim_lstm_s8(int32_t n_i, int32_t n_iw, int32_t n_hw, int32_t n_o, int64_t steps, int64_t length,
                               int32_t reverse, int32_t d, int32_t h, const int8_t *x, const int8_t *w_ih,
                               const int8_t *w_hh, const int32_t *b_ih, const int32_t *b_hh, const int8_t *h0,
                               const int16_t *c0, int8_t *y, int8_t *h_n, int16_t *c_n, int32_t isa, int64_t *scratch,
                               int32_t *acc);
/* SoftmaxInt / LogSoftmaxInt (spec/int8-seq-ops.md 2.4.4, 2.5.4; the HiFi core as the spec models it, not
 * vendor-verified) on `rows` rows of `row` int8 values; scratch holds 3 * row int64 entries. */
lnn_sim_status lnn_sim_softmax_s8(int32_t in_exponent, int32_t out_exponent, int32_t log_form, int64_t rows,
                                  int32_t row, const int8_t *x, int8_t *y, int64_t *scratch);
/* BmmInt (spec/int8-seq-ops.md 2.9.4): per batch z = SAT_8(SHR(x_b @ y_b, shift)), x [M,K], y [K,N] row-major. */
lnn_sim_status lnn_sim_bmm_s8(int32_t shift, int64_t batch, int32_t m, int32_t k, int32_t n, const int8_t *x,
                              const int8_t *y, int8_t *z);
/* Gather (spec/int8-seq-ops.md 2.8.4): y[j, :] = table[idx[j], :] for `count` indices into a table of `rows` rows of
 * `cols` int8 values. Returns LNN_SIM_E_INPUT for an index outside 0..rows-1 (its position in *bad when bad is not
 * NULL; the rows before it are written). */
lnn_sim_status lnn_sim_gather_s8(int64_t rows, int32_t cols, const int8_t *table, int64_t count, const int32_t *idx,
                                 int8_t *y, int64_t *bad);
/* Relu / Clip: y = min(max(q, lo), hi) on int8/int16/int32. */
lnn_sim_status lnn_sim_clip(int32_t dtype, int64_t lo, int64_t hi, int64_t count, const void *x, void *y);
/* Transpose of a rank <= LNN_SIM_MAX_RANK tensor of elem_size-byte elements. */
lnn_sim_status lnn_sim_transpose(int32_t rank, const int32_t *dims, const int32_t *perm, int32_t elem_size,
                                 const void *x, void *y);
/* Slice with unit or positive steps: y[i0, i1, ...] = x[start0 + i0*step0, start1 + i1*step1, ...]. The caller
 * guarantees start_d + (out_dims_d - 1) * step_d < in_dims_d. */
lnn_sim_status lnn_sim_pad2d(int64_t planes, int32_t h, int32_t w, int32_t top, int32_t left, int32_t bottom,
                             int32_t right, int32_t elem_size, const void *x, void *y);
lnn_sim_status lnn_sim_slice(int32_t rank, const int32_t *in_dims, const int32_t *out_dims, const int32_t *starts,
                             const int32_t *steps, int32_t elem_size, const void *x, void *y);

/* ---- model runtime --------------------------------------------------------------------------- */
typedef struct lnn_sim_model lnn_sim_model;

typedef struct {
    const char *name;
    int32_t dtype, rank, region, flags, exponent;
    int32_t dims[LNN_SIM_MAX_RANK];
    uint32_t offset, size;
} lnn_sim_tensor_desc;

/* Validate a model.bin image and build a runnable model; the image is copied. On failure *out is
 * NULL and msg (msg_size bytes, LNN_SIM_MAX_MSG recommended) holds a one-line reason. */
lnn_sim_status lnn_sim_load(const uint8_t *image, size_t size, lnn_sim_model **out, char *msg, size_t msg_size);
/* lnn_sim_load with a MAC limit of max_macs instead of LNN_SIM_DEFAULT_MAX_MACS (UINT64_MAX: none); a model over
 * it is refused with LNN_SIM_E_WORK after every other check passed. */
lnn_sim_status lnn_sim_load_ex(const uint8_t *image, size_t size, uint64_t max_macs, lnn_sim_model **out, char *msg,
                               size_t msg_size);
void lnn_sim_free(lnn_sim_model *model);
/* the MACs of the whole model / of op i (saturated at UINT64_MAX) */
uint64_t lnn_sim_macs(const lnn_sim_model *model);
uint64_t lnn_sim_op_macs(const lnn_sim_model *model, int32_t op);
/* the instruction-set path the model's kernels take ("portable", "avx2", "avx512vnni"): the best the CPU has,
 * or the one the environment variable LNN_SIM_ISA named when the model was loaded (same integers on every path) */
const char *lnn_sim_isa(const lnn_sim_model *model);
/* Run `rows` rows one after the other: for each row r, graph input i takes the tensor-size bytes at
 * inputs[i] + r * size, the model runs (lnn_sim_invoke), and graph output o is copied to outputs[o] + r * size.
 * Each row's result is the one a single run gives. On failure *failed_row (if not NULL) names the row.
 * (lnn_sim_run_batch with the graph inputs and outputs bound and one thread.) */
lnn_sim_status lnn_sim_run_rows(lnn_sim_model *model, int64_t rows, const uint8_t *const *inputs,
                                uint8_t *const *outputs, int64_t *failed_row, char *msg, size_t msg_size);
/* A tensor bound to the rows of a batch: an input is written just before op `op` runs (-1: before the first op),
 * an output is read just after op `op` ran or was skipped (-1: after the last op); row r's bytes lie at
 * data + r * (the tensor's size). */
typedef struct {
    int32_t tensor, op;
    uint8_t *data;
} lnn_sim_binding;
/* Run `rows` rows on up to `threads` threads (POSIX threads where the build has them; fewer when there are fewer
 * rows, and one when a callback for external ops is attached: it may not be reentrant). For each row the inputs are
 * written, the ops run in order except those with skip[op] != 0 (skip may be NULL), and the outputs are read, as
 * the bindings say. Each thread has its own copy of the arenas and scratch (made on first use, kept with the
 * model), so every row's result is the one a single run gives. On failure the first failing row (in row order)
 * is reported through *failed_row and msg; the rows after it may or may not have run. */
lnn_sim_status lnn_sim_run_batch(lnn_sim_model *model, int64_t rows, int32_t threads, int32_t n_in,
                                 const lnn_sim_binding *in, int32_t n_out, const lnn_sim_binding *out,
                                 const uint8_t *skip, int64_t *failed_row, char *msg, size_t msg_size);
/* lnn_sim_invoke that adds each op's wall time in nanoseconds to ns[op] (n_ops entries), for profiles */
lnn_sim_status lnn_sim_invoke_timed(lnn_sim_model *model, uint64_t *ns, char *msg, size_t msg_size);
/* the paths this build and CPU can run, as a bit set: 1 portable, 2 avx2, 4 avx512vnni */
int32_t lnn_sim_isa_available(void);

int32_t lnn_sim_num_tensors(const lnn_sim_model *model);
int32_t lnn_sim_num_ops(const lnn_sim_model *model);
int32_t lnn_sim_num_inputs(const lnn_sim_model *model);
int32_t lnn_sim_num_outputs(const lnn_sim_model *model);
int32_t lnn_sim_input_index(const lnn_sim_model *model, int32_t i);
int32_t lnn_sim_output_index(const lnn_sim_model *model, int32_t i);
lnn_sim_status lnn_sim_tensor_info(const lnn_sim_model *model, int32_t t, lnn_sim_tensor_desc *out);
/* tensor indices written by op i (n returned through *count, at most max entries copied) */
lnn_sim_status lnn_sim_op_outputs(const lnn_sim_model *model, int32_t op, int32_t *indices, int32_t max,
                                  int32_t *count);
const char *lnn_sim_op_name(const lnn_sim_model *model, int32_t op);
uint32_t lnn_sim_region_size(const lnn_sim_model *model, int32_t region);

lnn_sim_status lnn_sim_set_tensor(lnn_sim_model *model, int32_t t, const void *data, size_t nbytes);
lnn_sim_status lnn_sim_get_tensor(const lnn_sim_model *model, int32_t t, void *data, size_t nbytes);
/* External ops (LNN_SIM_OP_EXTERNAL, attributes: string references of the op type and of its attributes as
 * JSON; 1..LNN_SIM_MAX_OP_OUTPUTS outputs) run through a callback the host attaches. The callback reads the
 * op's inputs and writes each of its outputs with lnn_sim_op_inputs / lnn_sim_op_outputs /
 * lnn_sim_get_tensor / lnn_sim_set_tensor, so every output lands at its planned offset in the arena. It
 * returns LNN_SIM_OK or an error status and may fill msg (msg_size bytes). */
typedef lnn_sim_status (*lnn_sim_external_fn)(void *user, lnn_sim_model *model, int32_t op, char *msg,
                                              size_t msg_size);
lnn_sim_status lnn_sim_set_external(lnn_sim_model *model, lnn_sim_external_fn fn, void *user);
int32_t lnn_sim_op_type(const lnn_sim_model *model, int32_t op);
/* tensor indices read by op i (-1 = omitted optional input), as lnn_sim_op_outputs */
lnn_sim_status lnn_sim_op_inputs(const lnn_sim_model *model, int32_t op, int32_t *indices, int32_t max,
                                 int32_t *count);
/* op type name and attribute JSON of an external op (both NUL-terminated, inside the loaded image) */
lnn_sim_status lnn_sim_op_external(const lnn_sim_model *model, int32_t op, const char **op_type,
                                   const char **attrs_json);

/* run all ops in order / one op; msg receives the failing op's name and reason */
lnn_sim_status lnn_sim_invoke(lnn_sim_model *model, char *msg, size_t msg_size);
lnn_sim_status lnn_sim_invoke_op(lnn_sim_model *model, int32_t op, char *msg, size_t msg_size);

#ifdef __cplusplus
}
#endif
#endif /* LNN_SIM_H */
