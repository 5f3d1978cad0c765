/*
 * exec.c - execution of a loaded model ("Eval") and the accessors of the public runtime API.
 *
 * Every op was prepared and validated by the loader; an op runs through its registration
 * (op->kernel->run, see registry.c and ops/), so nothing here knows op types. A batch runs on one thread when
 * the host attached a callback for external ops (it may not be reentrant, and the Python one is not).
 *
 * Batches (lnn_sim_run_batch) run their rows in chunks that the threads take in row order from a shared counter
 * (an atomic fetch-and-add): the calling thread on the model itself, POSIX threads on the model's workers (copies
 * with their own tensors, arenas and scratch, sharing the image and the packed weights, which nothing writes while
 * rows run). A row therefore computes exactly what a single run computes, whichever thread runs it; a thread that
 * starts late, or runs on a busier core, simply takes fewer chunks.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include "lnn_sim_model.h"

#include <stdlib.h>
#if defined(_WIN32)
#include <windows.h>
#else
#include <time.h>
#endif
#if defined(LNN_SIM_THREADS)
#include <pthread.h>
#endif

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

/* ---- batches: rows over threads ------------------------------------------------------------- */

/* the rows of a batch, handed out in chunks: next is the first row no thread has taken; stop is set by a thread
 * whose row failed, after which no thread takes another chunk (each finishes the one it holds, so every row below
 * the first failing one has run and the smallest failing row is the first one) */
typedef struct {
    int64_t next, rows, chunk;
    int32_t stop;
} batch_queue;

#if defined(LNN_SIM_THREADS)
#define QUEUE_TAKE(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define QUEUE_STOPPED(q) __atomic_load_n(&(q)->stop, __ATOMIC_RELAXED)
#define QUEUE_STOP(q) __atomic_store_n(&(q)->stop, 1, __ATOMIC_RELAXED)
#else
static int64_t queue_take(int64_t *p, int64_t v) {
    const int64_t old = *p;
    *p += v;
    return old;
}
#define QUEUE_TAKE(p, v) queue_take((p), (v))
#define QUEUE_STOPPED(q) ((q)->stop)
#define QUEUE_STOP(q) ((q)->stop = 1)
#endif

/* one thread's part of a batch: the chunks it takes from q, run on model m (the caller's model or a worker) */
typedef struct {
    lnn_sim_model *m;
    batch_queue *q;
    int32_t n_in, n_out;
    const lnn_sim_binding *in, *out;
    const uint8_t *skip;
    lnn_sim_status status;
    int64_t failed_row;
    char msg[LNN_SIM_MAX_MSG];
} batch_job;

static void bind_in(lnn_sim_model *m, const batch_job *j, int32_t op, int64_t r) {
    int32_t k;
    for (k = 0; k < j->n_in; ++k)
        if (j->in[k].op == op) {
            const lnn_tensor *t = &m->tensors[j->in[k].tensor];
            memcpy(t->data, j->in[k].data + (size_t)r * t->size, t->size);
        }
}

static void bind_out(lnn_sim_model *m, const batch_job *j, int32_t op, int64_t r) {
    int32_t k;
    for (k = 0; k < j->n_out; ++k)
        if (j->out[k].op == op) {
            const lnn_tensor *t = &m->tensors[j->out[k].tensor];
            memcpy(j->out[k].data + (size_t)r * t->size, t->data, t->size);
        }
}

static void run_job(batch_job *j) {
    lnn_sim_model *m = j->m;
    batch_queue *q = j->q;
    int64_t r, lo, hi;
    int32_t i;
    j->status = LNN_SIM_OK;
    j->failed_row = -1;
    j->msg[0] = '\0';
    while (!QUEUE_STOPPED(q) && (lo = QUEUE_TAKE(&q->next, q->chunk)) < q->rows) {
        hi = lo + q->chunk < q->rows ? lo + q->chunk : q->rows;
        for (r = lo; r < hi; ++r) {
            m->col_op = -1; /* a new row: the inputs differ */
            bind_in(m, j, -1, r);
            for (i = 0; i < m->n_ops; ++i) {
                bind_in(m, j, i, r);
                if (j->skip == NULL || !j->skip[i]) {
                    const lnn_sim_status st = lnn_sim_invoke_op(m, i, j->msg, sizeof j->msg);
                    if (st != LNN_SIM_OK) {
                        j->status = st;
                        j->failed_row = r;
                        QUEUE_STOP(q);
                        return;
                    }
                }
                bind_out(m, j, i, r);
            }
            bind_out(m, j, -1, r);
        }
    }
}

#if defined(LNN_SIM_THREADS)
static void *run_job_thread(void *arg) {
    run_job((batch_job *)arg);
    return NULL;
}
#endif

static lnn_sim_status check_bindings(const lnn_sim_model *m, int64_t rows, int32_t count, const lnn_sim_binding *b,
                                     const char *what, char *msg, size_t n) {
    int32_t k;
    if (count < 0 || count > LNN_SIM_MAX_TENSORS || (count > 0 && b == NULL))
        return LNN_FAIL(LNN_SIM_E_ARG, "%d batch %ss", count, what);
    for (k = 0; k < count; ++k) {
        if (b[k].tensor < 0 || b[k].tensor >= m->n_tensors || b[k].op < -1 || b[k].op >= m->n_ops ||
            (rows > 0 && b[k].data == NULL))
            return LNN_FAIL(LNN_SIM_E_ARG, "batch %s %d: tensor %d, op %d or its buffer is invalid", what, k,
                            b[k].tensor, b[k].op);
        if (m->tensors[b[k].tensor].region == LNN_SIM_REGION_FLASH)
            return LNN_FAIL(LNN_SIM_E_ARG, "batch %s %d: tensor '%s' is a constant", what, k,
                            m->tensors[b[k].tensor].name);
    }
    return LNN_SIM_OK;
}

lnn_sim_status lnn_sim_run_batch(lnn_sim_model *m, int64_t rows, int32_t threads, int32_t n_in,
                                 const lnn_sim_binding *in, int32_t n_out, const lnn_sim_binding *out,
                                 const uint8_t *skip, int64_t *failed_row, char *msg, size_t n) {
    batch_job *jobs;
    batch_queue queue;
    int32_t t, n_threads = threads, failed = -1;
    lnn_sim_status st;
#if defined(LNN_SIM_THREADS)
    pthread_t *tids;
    uint8_t *started;
#endif
    if (msg != NULL && n > 0) msg[0] = '\0';
    if (failed_row != NULL) *failed_row = -1;
    if (m == NULL || rows < 0 || threads < 1) return LNN_FAIL(LNN_SIM_E_ARG, "NULL model, negative rows or threads < 1");
    if ((st = check_bindings(m, rows, n_in, in, "input", msg, n)) != LNN_SIM_OK) return st;
    if ((st = check_bindings(m, rows, n_out, out, "output", msg, n)) != LNN_SIM_OK) return st;
    if (rows == 0) return LNN_SIM_OK;
#if !defined(LNN_SIM_THREADS)
    n_threads = 1; /* a build without POSIX threads runs the rows one after the other */
#endif
    if (m->external != NULL) n_threads = 1; /* the host's callback for external ops may not be reentrant */
    if (n_threads > rows) n_threads = (int32_t)rows;
    if (m->owner == NULL && m->n_workers < n_threads - 1) { /* workers are made once and kept */
        lnn_sim_model **grown = (lnn_sim_model **)realloc(m->workers, (size_t)(n_threads - 1) * sizeof *grown);
        if (grown == NULL) return LNN_FAIL(LNN_SIM_E_NOMEM, "out of memory for %d batch workers", n_threads - 1);
        m->workers = grown;
        while (m->n_workers < n_threads - 1) {
            lnn_sim_model *w = lnn_model_worker(m);
            if (w == NULL) break; /* out of memory: fewer threads */
            m->workers[m->n_workers++] = w;
        }
    }
    if (n_threads - 1 > m->n_workers) n_threads = m->n_workers + 1;
    jobs = (batch_job *)calloc((size_t)n_threads, sizeof *jobs);
    if (jobs == NULL) return LNN_FAIL(LNN_SIM_E_NOMEM, "out of memory for %d batch jobs", n_threads);
    queue.next = 0;
    queue.rows = rows;
    queue.stop = 0;
    /* about 16 chunks per thread: small enough to even out a late start, large enough that taking one is rare */
    queue.chunk = rows / (16 * (int64_t)n_threads) > 0 ? rows / (16 * (int64_t)n_threads) : 1;
    for (t = 0; t < n_threads; ++t) {
        jobs[t].m = t == 0 ? m : m->workers[t - 1];
        jobs[t].q = &queue;
        jobs[t].n_in = n_in;
        jobs[t].in = in;
        jobs[t].n_out = n_out;
        jobs[t].out = out;
        jobs[t].skip = skip;
    }
#if defined(LNN_SIM_THREADS)
    tids = (pthread_t *)calloc((size_t)n_threads, sizeof *tids);
    started = (uint8_t *)calloc((size_t)n_threads, 1);
    if (tids != NULL && started != NULL)
        for (t = 1; t < n_threads; ++t) started[t] = pthread_create(&tids[t], NULL, run_job_thread, &jobs[t]) == 0;
    run_job(&jobs[0]); /* a thread that could not start takes no chunk: the others run its rows */
    for (t = 1; t < n_threads; ++t)
        if (started != NULL && started[t]) pthread_join(tids[t], NULL);
    free(tids);
    free(started);
#else
    run_job(&jobs[0]);
#endif
    st = LNN_SIM_OK;
    for (t = 0; t < n_threads; ++t) /* the smallest failing row is the first one (see batch_queue) */
        if (jobs[t].status != LNN_SIM_OK && (failed < 0 || jobs[t].failed_row < jobs[failed].failed_row)) failed = t;
    if (failed >= 0) {
        st = jobs[failed].status;
        if (failed_row != NULL) *failed_row = jobs[failed].failed_row;
        if (msg != NULL && n > 0) lnn_fail(msg, n, st, "%s", jobs[failed].msg);
    }
    free(jobs);
    return st;
}

lnn_sim_status lnn_sim_run_rows(lnn_sim_model *m, int64_t rows, const uint8_t *const *inputs, uint8_t *const *outputs,
                                int64_t *failed_row, char *msg, size_t n) {
    lnn_sim_binding in[LNN_SIM_MAX_GRAPH_IO], out[LNN_SIM_MAX_GRAPH_IO];
    int32_t i;
    if (msg != NULL && n > 0) msg[0] = '\0';
    if (failed_row != NULL) *failed_row = -1;
    if (m == NULL || rows < 0 || (rows > 0 && (inputs == NULL || outputs == NULL)))
        return LNN_FAIL(LNN_SIM_E_ARG, "NULL model or buffers, or a negative row count");
    for (i = 0; i < m->n_inputs; ++i) {
        in[i].tensor = m->inputs[i];
        in[i].op = -1;
        in[i].data = rows > 0 ? (uint8_t *)inputs[i] : NULL;
    }
    for (i = 0; i < m->n_outputs; ++i) {
        out[i].tensor = m->outputs[i];
        out[i].op = -1;
        out[i].data = rows > 0 ? outputs[i] : NULL;
    }
    return lnn_sim_run_batch(m, rows, 1, m->n_inputs, in, m->n_outputs, out, NULL, failed_row, msg, n);
}

/* ---- profiling --------------------------------------------------------------------------------- */

static uint64_t now_ns(void) {
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (uint64_t)((double)c.QuadPart * 1e9 / (double)f.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

lnn_sim_status lnn_sim_invoke_timed(lnn_sim_model *m, uint64_t *ns, char *msg, size_t n) {
    int32_t i;
    if (m == NULL || (ns == NULL && m->n_ops > 0)) return LNN_FAIL(LNN_SIM_E_ARG, "NULL model or times");
    m->col_op = -1;
    for (i = 0; i < m->n_ops; ++i) {
        const uint64_t t0 = now_ns();
        const lnn_sim_status st = lnn_sim_invoke_op(m, i, msg, n);
        ns[i] += now_ns() - t0;
        if (st != LNN_SIM_OK) return st;
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
