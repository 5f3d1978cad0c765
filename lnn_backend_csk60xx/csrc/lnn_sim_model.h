/*
 * lnn_sim_model.h - the in-memory model and the op registration interface shared by the loader, the
 * executor, the registry and the op families in ops/ (not installed).
 *
 * Every op type is one registration (lnn_op_kernel, the TFLM TfLiteRegistration habit): its name, how
 * many outputs it writes, a prepare function and a run function, all in its family file (ops/<family>.c).
 * registry.c maps op codes to registrations; it is the only place that lists op codes.
 *
 *   prepare(m, op, need, msg, n): called by the loader for every op before anything runs. It checks the
 *       attribute vector, dtypes, ranks and every output dimension against the inputs (the loader has
 *       already checked the input/output counts and indices), stores the derived parameters in op->p and
 *       the shape fields, and reports in *need the scratch it needs and its multiply-accumulates (the loader
 *       adds one per element the op reads and writes, and refuses a model over its MAC limit). On failure it
 *       returns a status and a one-line message naming the op.
 *   run(m, op, msg, n): executes the prepared op. Kernels index their buffers without further bounds tests,
 *       read their outputs as op->out[k], and may leave msg empty (the executor names the op and status).
 *   share(m, op, input, output): optional; whether an input may share bytes with an output in the memory
 *       plan (LNN_SHARE_*), for the loader's schedule proof. NULL: never (every op the planner neither aliases
 *       nor joins in place).
 */
#ifndef LNN_SIM_MODEL_H
#define LNN_SIM_MODEL_H

#include "lnn_gemm.h"
#include "lnn_sim_internal.h"

#include <stddef.h>

#define LNN_DIM_LIMIT LNN_SIM_MAX_WINDOW /* kernel, stride, pad and dilation values accepted by the simulator */

struct lnn_op_kernel;

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
    const struct lnn_op_kernel *kernel; /* the registration of op->type, set by the loader */
    uint64_t macs;                      /* the op's work (see LNN_SIM_DEFAULT_MAX_MACS), set by the loader */
    uint8_t *packed; /* weights re-laid-out by prepare for the model's instruction-set path (lnn_gemm.h), or NULL;
                      * owned by the op, freed with the model */
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
    uint64_t macs; /* the sum of the ops' work */
    int32_t isa;   /* LNN_ISA_*: the kernels' instruction-set path, chosen before the ops are prepared */
    int64_t n_acc, n_col; /* entries of acc32/acc64 and bytes of col (what a batch worker allocates too) */
    /* batch workers (lnn_sim_run_batch): copies that share this model's image, ops and packed weights but have
     * their own tensors, arenas and scratch; made on first use, kept, freed with the model. A worker's owner
     * is the model it was copied from (NULL for a loaded model: it owns everything it points to). */
    struct lnn_sim_model **workers;
    int32_t n_workers;
    const struct lnn_sim_model *owner;
};

/* loader.c: a batch worker of m (see lnn_sim_model.workers), or NULL when out of memory */
struct lnn_sim_model *lnn_model_worker(const struct lnn_sim_model *m);

/* scratch an op needs while it runs: accumulator plane entries (int32 and int64 each) and im2col bytes; and its
 * multiply-accumulates or window cells beyond one per element read and written (macs, saturated: lnn_mul_sat) */
typedef struct {
    int64_t acc, col;
    uint64_t macs;
} lnn_scratch_need;

/* a * b, or UINT64_MAX when the product does not fit */
static inline uint64_t lnn_mul_sat(uint64_t a, uint64_t b) { return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b; }
static inline uint64_t lnn_add_sat(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

typedef lnn_sim_status (*lnn_prepare_fn)(const struct lnn_sim_model *m, lnn_op *op, lnn_scratch_need *need,
                                         char *msg, size_t n);
typedef lnn_sim_status (*lnn_run_fn)(struct lnn_sim_model *m, const lnn_op *op, char *msg, size_t n);

/* May input `input` of a prepared op share bytes with its output `output` (the loader's schedule proof)? */
#define LNN_SHARE_NONE 0 /* no: the kernel would read bytes it has already written */
#define LNN_SHARE_KEEP 1 /* yes, and the op leaves those bytes as they are (an alias, an in-place join) */
#define LNN_SHARE_READ 2 /* yes: the op reads the whole input before it writes; the shared bytes change */
typedef int32_t (*lnn_share_fn)(const struct lnn_sim_model *m, const lnn_op *op, int32_t input, int32_t output);

/* One op type's registration. n_out: the outputs it writes (0: any count 1..LNN_SIM_MAX_OP_OUTPUTS).
 * share: NULL when no input may share bytes with an output (every op whose planner entry is not an alias or
 * a join). */
typedef struct lnn_op_kernel {
    const char *name;
    int32_t n_out;
    lnn_prepare_fn prepare;
    lnn_run_fn run;
    lnn_share_fn share;
} lnn_op_kernel;

/* registry.c: the registration of op code `code`, or NULL when this simulator has none */
const lnn_op_kernel *lnn_find_kernel(int32_t code);

/* registry.c: format a one-line message into msg (n bytes) and return code */
lnn_sim_status lnn_fail(char *msg, size_t n, lnn_sim_status code, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* prepare/run helpers: `return LNN_FAIL(code, fmt, ...)` inside a function with msg and n in scope */
#define LNN_FAIL(code, ...) lnn_fail(msg, n, code, __VA_ARGS__)

static inline int lnn_same_dims(const lnn_tensor *a, const lnn_tensor *b) {
    int32_t d;
    if (a->rank != b->rank) return 0;
    for (d = 0; d < a->rank; ++d)
        if (a->dims[d] != b->dims[d]) return 0;
    return 1;
}

static inline int lnn_in_range(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; }

/* window output size along one axis (ONNX convention, see ops/_window.py); -1 when the kernel does not fit */
static inline int64_t lnn_window_out(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1, int64_t d,
                                     int ceil_mode) {
    const int64_t span = in + p0 + p1 - d * (k - 1) - 1;
    int64_t out;
    if (span < 0) return -1;
    out = (ceil_mode ? lnn_ceil_div(span, s) : span / s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p0) out -= 1;
    return out;
}

/* do two activation tensors share bytes? (flash tensors never count: ops cannot write them) */
static inline int lnn_overlap(const lnn_tensor *a, const lnn_tensor *b) {
    return a->region == b->region && a->region != LNN_SIM_REGION_FLASH &&
           (uint64_t)a->offset < (uint64_t)b->offset + b->size && (uint64_t)b->offset < (uint64_t)a->offset + a->size;
}

/* the tensor behind input i / output k of a prepared op (input i must not be omitted) */
#define LNN_IN(m, op, i) (&(m)->tensors[(op)->in[i]])
#define LNN_OUT(m, op, k) (&(m)->tensors[(op)->out[k]])

/* the prologue of a one-input op's prepare: exactly one input; *x and *y are its input and first output */
static inline lnn_sim_status lnn_unary(const struct lnn_sim_model *m, const lnn_op *op, const lnn_tensor **x,
                                       const lnn_tensor **y, char *msg, size_t n) {
    if (op->n_in != 1 || op->in[0] < 0) return LNN_FAIL(LNN_SIM_E_OP, "op '%s': needs exactly one input", op->name);
    *x = LNN_IN(m, op, 0);
    *y = LNN_OUT(m, op, 0);
    return LNN_SIM_OK;
}

#endif /* LNN_SIM_MODEL_H */
