/*
 * loader.c - reads and validates a model.bin image (layout: README "model.bin format").
 *
 * Nothing is trusted: every count, index, offset and size is checked against the image length,
 * the section it lives in and the memory plan before any pointer is formed, every op is
 * checked against its tensors (its registration's prepare, see registry.c), and the schedule is
 * proven against the planned offsets (check_schedule) before anything runs. All arithmetic on file
 * values is done in 64 bits so that a hostile value cannot wrap.
 */
#include "lnn_sim_model.h"

#include <stdio.h>
#include <stdlib.h>

static const char k_magic[8] = {'L', 'N', 'N', 'M', 'O', 'D', 'E', 'L'};

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static int32_t rd_i32(const uint8_t *p) {
    const uint32_t u = rd_u32(p);
    return u <= 0x7FFFFFFFu ? (int32_t)u : (int32_t)(u - 0x80000000u) + INT32_MIN;
}
static uint16_t rd_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), identical to zlib.crc32. */
static uint32_t crc32_ieee(const uint8_t *data, size_t len) {
    uint32_t table[256], crc = 0xFFFFFFFFu;
    uint32_t i;
    size_t k;
    for (i = 0; i < 256; ++i) {
        uint32_t c = i;
        int b;
        for (b = 0; b < 8; ++b) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    for (k = 0; k < len; ++k) crc = table[(crc ^ data[k]) & 0xFFu] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

typedef struct {
    uint32_t count, offset, size;
    int present;
} section;

static const char *section_name(int kind) {
    static const char *const names[] = {"?", "strings", "tensors", "ops", "ioidx", "weights", "plan", "graph"};
    return kind >= 1 && kind <= LNN_SIM_NUM_SECTIONS ? names[kind] : "?";
}

static lnn_sim_status get_string(const struct lnn_sim_model *m, uint32_t ref, const char **out) {
    if (ref >= m->strings_size) return LNN_SIM_E_STRING;
    *out = m->strings + ref;
    return LNN_SIM_OK;
}

static lnn_sim_status read_sections(const uint8_t *img, size_t size, section *sec, char *msg, size_t n) {
    const uint32_t count = rd_u32(img + 24);
    const uint64_t table_end = (uint64_t)LNN_SIM_HEADER_BYTES + (uint64_t)count * LNN_SIM_SECTION_ENTRY_BYTES;
    uint32_t i;
    int a, b;
    if (count != LNN_SIM_NUM_SECTIONS)
        return lnn_fail(msg, n, LNN_SIM_E_SECTION, "the header declares %u sections, expected %d", count,
                    LNN_SIM_NUM_SECTIONS);
    if (table_end > size)
        return lnn_fail(msg, n, LNN_SIM_E_TRUNCATED, "the section table ends at byte %llu but the file has %llu bytes",
                    (unsigned long long)table_end, (unsigned long long)size);
    for (i = 0; i < count; ++i) {
        const uint8_t *e = img + LNN_SIM_HEADER_BYTES + i * LNN_SIM_SECTION_ENTRY_BYTES;
        const uint32_t kind = rd_u32(e);
        section s;
        uint32_t align;
        s.count = rd_u32(e + 4);
        s.offset = rd_u32(e + 8);
        s.size = rd_u32(e + 12);
        s.present = 1;
        if (kind < 1 || kind > LNN_SIM_NUM_SECTIONS)
            return lnn_fail(msg, n, LNN_SIM_E_SECTION, "section entry %u has unknown kind %u", i, kind);
        if (sec[kind].present)
            return lnn_fail(msg, n, LNN_SIM_E_SECTION, "section '%s' appears twice", section_name((int)kind));
        align = kind == LNN_SIM_SEC_WEIGHTS ? LNN_SIM_ALIGN : 16u;
        if (s.offset < table_end || s.offset % align != 0)
            return lnn_fail(msg, n, LNN_SIM_E_SECTION, "section '%s' starts at offset %u (must be >= %llu and %u-aligned)",
                        section_name((int)kind), s.offset, (unsigned long long)table_end, align);
        if ((uint64_t)s.offset + s.size > size)
            return lnn_fail(msg, n, LNN_SIM_E_TRUNCATED,
                        "section '%s' declares %u bytes at offset %u, but the file ends at %llu bytes",
                        section_name((int)kind), s.size, s.offset, (unsigned long long)size);
        sec[kind] = s;
    }
    for (a = 1; a <= LNN_SIM_NUM_SECTIONS; ++a) {
        for (b = a + 1; b <= LNN_SIM_NUM_SECTIONS; ++b) {
            const uint64_t a0 = sec[a].offset, a1 = a0 + sec[a].size, b0 = sec[b].offset, b1 = b0 + sec[b].size;
            if (a0 < b1 && b0 < a1)
                return lnn_fail(msg, n, LNN_SIM_E_SECTION, "sections '%s' and '%s' overlap", section_name(a),
                            section_name(b));
        }
    }
    {
        const struct {
            int kind;
            uint64_t record, fixed;
        } rules[] = {{LNN_SIM_SEC_STRINGS, 0, 0}, {LNN_SIM_SEC_TENSORS, LNN_SIM_TENSOR_RECORD_BYTES, 0},
                     {LNN_SIM_SEC_OPS, LNN_SIM_OP_RECORD_BYTES, 0}, {LNN_SIM_SEC_IOIDX, 4, 0},
                     {LNN_SIM_SEC_WEIGHTS, 0, 0}, {LNN_SIM_SEC_PLAN, LNN_SIM_PLAN_RECORD_BYTES, 0},
                     {LNN_SIM_SEC_GRAPH, 4, 8}};
        size_t r;
        for (r = 0; r < sizeof rules / sizeof rules[0]; ++r) {
            const section *s = &sec[rules[r].kind];
            const uint64_t want = rules[r].record ? rules[r].fixed + (uint64_t)s->count * rules[r].record : s->size;
            if (rules[r].record == 0 && s->count != 0)
                return lnn_fail(msg, n, LNN_SIM_E_SECTION, "section '%s' has count %u, expected 0",
                            section_name(rules[r].kind), s->count);
            if (want != s->size)
                return lnn_fail(msg, n, LNN_SIM_E_SECTION, "section '%s' has %u bytes for %u records (expected %llu)",
                            section_name(rules[r].kind), s->size, s->count, (unsigned long long)want);
        }
    }
    return LNN_SIM_OK;
}

static lnn_sim_status read_plan(struct lnn_sim_model *m, const section *s, char *msg, size_t n) {
    uint32_t i;
    int seen[LNN_SIM_NUM_REGIONS] = {0, 0, 0};
    if (s->count > LNN_SIM_NUM_REGIONS - 1)
        return lnn_fail(msg, n, LNN_SIM_E_PLAN, "the plan lists %u regions, at most %d exist", s->count,
                    LNN_SIM_NUM_REGIONS - 1);
    for (i = 0; i < s->count; ++i) {
        const uint8_t *r = m->image + s->offset + i * LNN_SIM_PLAN_RECORD_BYTES;
        const uint32_t region = rd_u32(r), bytes = rd_u32(r + 4), peak = rd_u32(r + 8);
        if (region != LNN_SIM_REGION_PSRAM && region != LNN_SIM_REGION_SHARE)
            return lnn_fail(msg, n, LNN_SIM_E_PLAN, "plan record %u names region %u (expected 1 psram or 2 share-memory)",
                        i, region);
        if (seen[region]) return lnn_fail(msg, n, LNN_SIM_E_PLAN, "region %u is planned twice", region);
        if (bytes > LNN_SIM_MAX_REGION_BYTES || bytes % LNN_SIM_ALIGN != 0 || peak > bytes || rd_u32(r + 12) != 0)
            return lnn_fail(msg, n, LNN_SIM_E_PLAN,
                        "region %u: arena of %u bytes (peak %u) is invalid (limit %u bytes, %d-byte multiple)", region,
                        bytes, peak, LNN_SIM_MAX_REGION_BYTES, LNN_SIM_ALIGN);
        seen[region] = 1;
        m->region_size[region] = bytes;
    }
    return LNN_SIM_OK;
}

static lnn_sim_status read_tensors(struct lnn_sim_model *m, const section *s, char *msg, size_t n) {
    int32_t t;
    if (s->count > LNN_SIM_MAX_TENSORS)
        return lnn_fail(msg, n, LNN_SIM_E_LIMIT, "%u tensors exceed the limit of %d", s->count, LNN_SIM_MAX_TENSORS);
    m->n_tensors = (int32_t)s->count;
    m->tensors = (lnn_tensor *)calloc(s->count ? s->count : 1, sizeof(lnn_tensor));
    if (m->tensors == NULL) return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for %u tensors", s->count);
    for (t = 0; t < m->n_tensors; ++t) {
        const uint8_t *r = m->image + s->offset + (size_t)t * LNN_SIM_TENSOR_RECORD_BYTES;
        lnn_tensor *x = &m->tensors[t];
        uint64_t numel = 1;
        int32_t d, esize;
        if (get_string(m, rd_u32(r), &x->name) != LNN_SIM_OK)
            return lnn_fail(msg, n, LNN_SIM_E_STRING, "tensor %d: name reference %u is outside the strings (%u bytes)", t,
                        rd_u32(r), m->strings_size);
        x->dtype = r[4];
        x->rank = r[5];
        x->region = r[6];
        x->flags = r[7];
        x->exponent = rd_i32(r + 8);
        x->offset = rd_u32(r + 12);
        x->size = rd_u32(r + 16);
        esize = lnn_dtype_size(x->dtype);
        if (esize == 0) return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': unknown dtype %d", x->name, x->dtype);
        if (x->rank > LNN_SIM_MAX_RANK)
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': rank %d exceeds %d", x->name, x->rank, LNN_SIM_MAX_RANK);
        for (d = 0; d < LNN_SIM_MAX_RANK; ++d) {
            const int32_t v = rd_i32(r + 20 + 4 * d);
            if (d < x->rank) {
                if (v < 1) return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': dimension %d is %d", x->name, d, v);
                numel *= (uint64_t)v;
                if (numel * (uint64_t)esize > LNN_SIM_MAX_TENSOR_BYTES)
                    return lnn_fail(msg, n, LNN_SIM_E_LIMIT, "tensor '%s' exceeds %u bytes", x->name,
                                LNN_SIM_MAX_TENSOR_BYTES);
            } else if (v != 0) {
                return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': unused dimension slot %d is %d (must be 0)",
                            x->name, d, v);
            }
            x->dims[d] = v;
        }
        for (d = 44; d < LNN_SIM_TENSOR_RECORD_BYTES; ++d)
            if (r[d] != 0) return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': reserved bytes are not zero", x->name);
        x->numel = (int64_t)numel;
        if ((uint64_t)x->size != numel * (uint64_t)esize)
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': size %u bytes does not match %llu elements of %d bytes",
                        x->name, x->size, (unsigned long long)numel, esize);
        if (x->flags & ~(LNN_SIM_TF_INPUT | LNN_SIM_TF_OUTPUT | LNN_SIM_TF_CONST))
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': unknown flags 0x%x", x->name, x->flags);
        if (x->exponent == LNN_SIM_NO_EXPONENT) {
            if (x->dtype != LNN_SIM_DT_FLOAT32 && x->dtype != LNN_SIM_DT_INT64)
                return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "integer tensor '%s' has no exponent", x->name);
        } else if (x->exponent > LNN_SIM_MAX_EXPONENT || x->exponent < -LNN_SIM_MAX_EXPONENT) {
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': exponent %d outside +-%d", x->name, x->exponent,
                        LNN_SIM_MAX_EXPONENT);
        }
        if (x->offset % LNN_SIM_ALIGN != 0)
            return lnn_fail(msg, n, LNN_SIM_E_PLAN, "tensor '%s': offset %u is not %d-byte aligned", x->name, x->offset,
                        LNN_SIM_ALIGN);
        if (x->region == LNN_SIM_REGION_FLASH) {
            if (!(x->flags & LNN_SIM_TF_CONST) || (x->flags & (LNN_SIM_TF_INPUT | LNN_SIM_TF_OUTPUT)))
                return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s' lives in flash but is not a constant", x->name);
            if ((uint64_t)x->offset + x->size > m->weights_size)
                return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "weight '%s': %u bytes at offset %u pass the end of weights (%u bytes)",
                            x->name, x->size, x->offset, m->weights_size);
        } else if (x->region == LNN_SIM_REGION_PSRAM || x->region == LNN_SIM_REGION_SHARE) {
            if (x->flags & LNN_SIM_TF_CONST)
                return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "constant '%s' must live in flash", x->name);
            if ((uint64_t)x->offset + x->size > m->region_size[x->region])
                return lnn_fail(msg, n, LNN_SIM_E_PLAN, "tensor '%s': %u bytes at offset %u pass the end of region %d (%u bytes)",
                            x->name, x->size, x->offset, x->region, m->region_size[x->region]);
        } else {
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "tensor '%s': unknown region %d", x->name, x->region);
        }
    }
    return LNN_SIM_OK;
}

static lnn_sim_status read_graph(struct lnn_sim_model *m, const section *s, char *msg, size_t n) {
    const uint8_t *g = m->image + s->offset;
    const uint32_t n_in = rd_u32(g), n_out = rd_u32(g + 4);
    uint32_t i;
    if ((uint64_t)n_in + n_out != s->count || n_in > LNN_SIM_MAX_GRAPH_IO || n_out > LNN_SIM_MAX_GRAPH_IO ||
        n_out < 1)
        return lnn_fail(msg, n, LNN_SIM_E_SECTION, "graph section: %u inputs + %u outputs for %u entries (limit %d each)",
                    n_in, n_out, s->count, LNN_SIM_MAX_GRAPH_IO);
    m->n_inputs = (int32_t)n_in;
    m->n_outputs = (int32_t)n_out;
    for (i = 0; i < n_in + n_out; ++i) {
        const int32_t t = rd_i32(g + 8 + 4 * i);
        const int is_in = i < n_in;
        const int32_t flag = is_in ? LNN_SIM_TF_INPUT : LNN_SIM_TF_OUTPUT;
        if (t < 0 || t >= m->n_tensors)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "graph %s %u refers to tensor %d of %d", is_in ? "input" : "output",
                        is_in ? i : i - n_in, t, m->n_tensors);
        if (!(m->tensors[t].flags & flag) || m->tensors[t].region == LNN_SIM_REGION_FLASH)
            return lnn_fail(msg, n, LNN_SIM_E_TENSOR, "graph %s '%s' is not flagged as such or lives in flash",
                        is_in ? "input" : "output", m->tensors[t].name);
        if (is_in)
            m->inputs[i] = t;
        else
            m->outputs[i - n_in] = t;
    }
    return LNN_SIM_OK;
}

/* every output is present, distinct, and an activation that is not a graph input */
static lnn_sim_status check_outputs(const struct lnn_sim_model *m, const lnn_op *op, char *msg, size_t n) {
    int32_t k, j;
    for (k = 0; k < op->n_out; ++k) {
        const lnn_tensor *y;
        if (op->out[k] < 0) return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': output %d is missing", op->name, k);
        y = &m->tensors[op->out[k]];
        if (y->region == LNN_SIM_REGION_FLASH || (y->flags & LNN_SIM_TF_INPUT))
            return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': writes '%s', a constant or graph input", op->name, y->name);
        for (j = 0; j < k; ++j)
            if (op->out[j] == op->out[k])
                return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': outputs %d and %d are the same tensor '%s'", op->name,
                                j, k, y->name);
    }
    return LNN_SIM_OK;
}

static lnn_sim_status read_ops(struct lnn_sim_model *m, const section *s, const section *io, char *msg, size_t n,
                               int64_t *scratch, int64_t *col) {
    int32_t i;
    if (s->count > LNN_SIM_MAX_OPS)
        return lnn_fail(msg, n, LNN_SIM_E_LIMIT, "%u ops exceed the limit of %d", s->count, LNN_SIM_MAX_OPS);
    m->n_io = (int32_t)io->count;
    m->io = (int32_t *)calloc(io->count ? io->count : 1, sizeof(int32_t));
    m->n_ops = (int32_t)s->count;
    m->ops = (lnn_op *)calloc(s->count ? s->count : 1, sizeof(lnn_op));
    if (m->io == NULL || m->ops == NULL) return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for %u ops", s->count);
    for (i = 0; i < m->n_io; ++i) {
        const int32_t t = rd_i32(m->image + io->offset + 4 * (size_t)i);
        if (t < -1 || t >= m->n_tensors)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "io index %d refers to tensor %d of %d", i, t, m->n_tensors);
        m->io[i] = t;
    }
    *scratch = 1;
    *col = 1;
    for (i = 0; i < m->n_ops; ++i) {
        const uint8_t *r = m->image + s->offset + (size_t)i * LNN_SIM_OP_RECORD_BYTES;
        lnn_op *op = &m->ops[i];
        const uint32_t n_in = rd_u32(r + 8), n_out = rd_u32(r + 12), start = rd_u32(r + 16), n_attrs = rd_u32(r + 20);
        lnn_scratch_need need;
        int32_t a;
        lnn_sim_status st;
        op->type = rd_i32(r);
        if (get_string(m, rd_u32(r + 4), &op->name) != LNN_SIM_OK)
            return lnn_fail(msg, n, LNN_SIM_E_STRING, "op %d: name reference %u is outside the strings", i,
                            rd_u32(r + 4));
        op->kernel = lnn_find_kernel(op->type);
        if (op->kernel == NULL)
            return lnn_fail(msg, n, LNN_SIM_E_OP,
                            "op '%s': unknown op type %d (this simulator has no kernel registered for it)", op->name,
                            op->type);
        if (n_in < 1 || n_in > LNN_SIM_MAX_OP_INPUTS || n_out < 1 || n_out > LNN_SIM_MAX_OP_OUTPUTS ||
            n_attrs > LNN_SIM_MAX_ATTRS)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': %u inputs, %u outputs, %u attributes (limits %d, %d, %d)",
                            op->name, n_in, n_out, n_attrs, LNN_SIM_MAX_OP_INPUTS, LNN_SIM_MAX_OP_OUTPUTS,
                            LNN_SIM_MAX_ATTRS);
        if (op->kernel->n_out != 0 && n_out != (uint32_t)op->kernel->n_out)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': %s writes %d output(s), the record lists %u", op->name,
                            op->kernel->name, op->kernel->n_out, n_out);
        if ((uint64_t)start + n_in + n_out > (uint64_t)m->n_io)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': io entries %u..%llu pass the end of the io table (%d)",
                            op->name, start, (unsigned long long)start + n_in + n_out, m->n_io);
        if (rd_u32(r + 88) != 0 || rd_u32(r + 92) != 0)
            return lnn_fail(msg, n, LNN_SIM_E_OP, "op '%s': reserved words are not zero", op->name);
        op->n_in = (int32_t)n_in;
        op->n_out = (int32_t)n_out;
        op->in = m->io + start;
        op->out = m->io + start + n_in;
        op->n_attrs = (int32_t)n_attrs;
        for (a = 0; a < LNN_SIM_MAX_ATTRS; ++a) {
            op->attrs[a] = rd_i32(r + 24 + 4 * a);
            if (a >= op->n_attrs && op->attrs[a] != 0)
                return lnn_fail(msg, n, LNN_SIM_E_ATTR, "op '%s': unused attribute slot %d is not zero", op->name, a);
        }
        if ((st = check_outputs(m, op, msg, n)) != LNN_SIM_OK) return st;
        need.acc = 0;
        need.col = 0;
        need.macs = 0;
        if ((st = op->kernel->prepare(m, op, &need, msg, n)) != LNN_SIM_OK) return st;
        op->macs = need.macs;
        for (a = 0; a < op->n_in + op->n_out; ++a) /* one per element read or written (outputs follow inputs) */
            if (op->in[a] >= 0) op->macs = lnn_add_sat(op->macs, (uint64_t)m->tensors[op->in[a]].numel);
        m->macs = lnn_add_sat(m->macs, op->macs);
        if (need.acc > *scratch) *scratch = need.acc;
        if (need.col > *col) *col = need.col;
    }
    return LNN_SIM_OK;
}

/* ---- the schedule proof ------------------------------------------------------------------------------
 * Every op input must be a constant, a graph input, or the output of an earlier op whose bytes no op has changed
 * since (by the planned offsets); every graph output must be written and not changed afterwards. The loader
 * walks the ops in order and keeps, for every byte of the arenas, the last step that changed it: a max tree over
 * the segments between the activation tensors' boundaries (so the work does not depend on the arena sizes). An
 * op changes the bytes of its outputs, except those of an input its registration keeps in place (an alias, an
 * in-place join). A tensor is intact when no byte of it changed after the step that established it. */

#define NOT_WRITTEN INT32_MIN

typedef struct {
    int64_t *cut; /* sorted distinct (region << 32) + offset of every activation tensor's start and end */
    int64_t n_cut, n_seg;
    int32_t *mx, *tag; /* segment tree over the n_seg segments: max step (mx), step applied to a whole node (tag) */
} byte_steps;

static int64_t tensor_key(const lnn_tensor *t, int end) {
    return ((int64_t)t->region << 32) + (int64_t)t->offset + (end ? (int64_t)t->size : 0);
}

static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : (x > y ? 1 : 0);
}

static int64_t cut_index(const byte_steps *bs, int64_t key) { /* key is one of the cuts */
    int64_t lo = 0, hi = bs->n_cut - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (bs->cut[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void bs_update(byte_steps *bs, int64_t node, int64_t nl, int64_t nr, int64_t l, int64_t r, int32_t v) {
    int64_t mid;
    if (r <= nl || nr <= l) return;
    if (bs->mx[node] < v) bs->mx[node] = v;
    if (l <= nl && nr <= r) {
        if (bs->tag[node] < v) bs->tag[node] = v;
        return;
    }
    mid = nl + (nr - nl) / 2;
    bs_update(bs, 2 * node + 1, nl, mid, l, r, v);
    bs_update(bs, 2 * node + 2, mid, nr, l, r, v);
}

static int32_t bs_query(const byte_steps *bs, int64_t node, int64_t nl, int64_t nr, int64_t l, int64_t r) {
    int64_t mid;
    int32_t best, sub;
    if (r <= nl || nr <= l) return NOT_WRITTEN;
    if (l <= nl && nr <= r) return bs->mx[node];
    mid = nl + (nr - nl) / 2;
    best = bs->tag[node];
    sub = bs_query(bs, 2 * node + 1, nl, mid, l, r);
    if (sub > best) best = sub;
    sub = bs_query(bs, 2 * node + 2, mid, nr, l, r);
    return sub > best ? sub : best;
}

/* the last step that changed a byte of [start, end) (-1: none since the run began) */
static int32_t bs_last_change(const byte_steps *bs, int64_t start, int64_t end) {
    return bs_query(bs, 0, 0, bs->n_seg, cut_index(bs, start), cut_index(bs, end));
}

static void bs_change(byte_steps *bs, int64_t start, int64_t end, int32_t step) {
    if (start < end) bs_update(bs, 0, 0, bs->n_seg, cut_index(bs, start), cut_index(bs, end), step);
}

static const char *region_name(int32_t region) { return region == LNN_SIM_REGION_PSRAM ? "psram" : "share-memory"; }

/* "op 'conv' (step 3)" or "the caller (a graph input)" for a step that established a tensor */
static void who(const struct lnn_sim_model *m, int32_t step, char *buf, size_t n) {
    if (step < 0)
        snprintf(buf, n, "the caller (graph input)");
    else
        snprintf(buf, n, "op '%s' (step %d)", m->ops[step].name, step);
}

static lnn_sim_status check_reads(const struct lnn_sim_model *m, const byte_steps *bs, const int32_t *est,
                                  const int32_t *writer, int32_t i, char *msg, size_t n) {
    const lnn_op *op = &m->ops[i];
    char by[LNN_SIM_MAX_MSG / 4], since[LNN_SIM_MAX_MSG / 4];
    int32_t j;
    for (j = 0; j < op->n_in; ++j) {
        const int32_t t = op->in[j];
        const lnn_tensor *x;
        int32_t last;
        if (t < 0 || m->tensors[t].region == LNN_SIM_REGION_FLASH) continue;
        x = &m->tensors[t];
        if (writer[t] == i)
            return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "op '%s' (step %d) writes its own input '%s'", op->name, i,
                            x->name);
        if (est[t] == NOT_WRITTEN) {
            if (writer[t] >= 0)
                return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE,
                                "op '%s' (step %d) reads '%s', which op '%s' writes only later (step %d)", op->name, i,
                                x->name, m->ops[writer[t]].name, writer[t]);
            return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE,
                            "op '%s' (step %d) reads '%s', which no op writes and which is not a graph input",
                            op->name, i, x->name);
        }
        last = bs_last_change(bs, tensor_key(x, 0), tensor_key(x, 1));
        if (last > est[t]) {
            who(m, last, by, sizeof by);
            who(m, est[t], since, sizeof since);
            return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE,
                            "op '%s' (step %d) reads '%s' (%u bytes at offset %u of %s), which %s overwrote after %s "
                            "wrote it",
                            op->name, i, x->name, x->size, x->offset, region_name(x->region), by, since);
        }
    }
    return LNN_SIM_OK;
}

/* Check how op i's outputs share bytes with its inputs and with each other, then mark the bytes it changes. */
static lnn_sim_status apply_writes(const struct lnn_sim_model *m, byte_steps *bs, int32_t i, char *msg, size_t n) {
    const lnn_op *op = &m->ops[i];
    int32_t k, j;
    for (k = 0; k < op->n_out; ++k) {
        const lnn_tensor *y = &m->tensors[op->out[k]];
        int64_t kept[2 * LNN_SIM_MAX_OP_INPUTS], cur;
        int32_t n_kept = 0, a;
        for (j = 0; j < k; ++j)
            if (lnn_overlap(y, &m->tensors[op->out[j]]))
                return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "op '%s' (step %d): outputs '%s' and '%s' share bytes",
                                op->name, i, m->tensors[op->out[j]].name, y->name);
        for (j = 0; j < op->n_in; ++j) {
            const lnn_tensor *x;
            int32_t share;
            if (op->in[j] < 0) continue;
            x = &m->tensors[op->in[j]];
            if (op->in[j] == op->out[k])
                return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "op '%s' (step %d) writes its own input '%s'", op->name, i,
                                y->name);
            if (!lnn_overlap(x, y)) continue;
            share = op->kernel->share != NULL ? op->kernel->share(m, op, j, k) : LNN_SHARE_NONE;
            if (share == LNN_SHARE_NONE ||
                (share == LNN_SHARE_KEEP && (x->offset < y->offset ||
                                             (uint64_t)x->offset + x->size > (uint64_t)y->offset + y->size)))
                return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE,
                                "op '%s' (step %d): output '%s' (offset %u) shares bytes of %s with its input '%s' "
                                "(offset %u), which %s reads while it writes",
                                op->name, i, y->name, y->offset, region_name(y->region), x->name, x->offset,
                                op->kernel->name);
            if (share == LNN_SHARE_KEEP) {
                /* insertion sort by start: at most LNN_SIM_MAX_OP_INPUTS intervals */
                const int64_t s0 = tensor_key(x, 0), e0 = tensor_key(x, 1);
                for (a = n_kept; a > 0 && kept[2 * (a - 1)] > s0; --a) {
                    kept[2 * a] = kept[2 * (a - 1)];
                    kept[2 * a + 1] = kept[2 * (a - 1) + 1];
                }
                kept[2 * a] = s0;
                kept[2 * a + 1] = e0;
                ++n_kept;
            }
        }
        /* the output's bytes outside the kept inputs change at this step */
        cur = tensor_key(y, 0);
        for (a = 0; a < n_kept; ++a) {
            bs_change(bs, cur, kept[2 * a], i);
            if (kept[2 * a + 1] > cur) cur = kept[2 * a + 1];
        }
        bs_change(bs, cur, tensor_key(y, 1), i);
    }
    return LNN_SIM_OK;
}

static lnn_sim_status prove_schedule(const struct lnn_sim_model *m, byte_steps *bs, int32_t *est, int32_t *writer,
                                     char *msg, size_t n) {
    char by[LNN_SIM_MAX_MSG / 4], since[LNN_SIM_MAX_MSG / 4];
    int32_t t, i, k;
    int64_t c, tree;
    for (t = 0; t < m->n_tensors; ++t) {
        if (m->tensors[t].region == LNN_SIM_REGION_FLASH) continue;
        bs->cut[bs->n_cut++] = tensor_key(&m->tensors[t], 0);
        bs->cut[bs->n_cut++] = tensor_key(&m->tensors[t], 1);
    }
    qsort(bs->cut, (size_t)bs->n_cut, sizeof(int64_t), cmp_i64);
    for (c = 0, k = 0; c < bs->n_cut; ++c)
        if (k == 0 || bs->cut[k - 1] != bs->cut[c]) bs->cut[k++] = bs->cut[c];
    bs->n_cut = k;
    bs->n_seg = k > 1 ? k - 1 : 1;
    tree = 4 * bs->n_seg;
    bs->mx = (int32_t *)malloc((size_t)tree * sizeof(int32_t));
    bs->tag = (int32_t *)malloc((size_t)tree * sizeof(int32_t));
    if (bs->mx == NULL || bs->tag == NULL) return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for the schedule check");
    for (c = 0; c < tree; ++c) bs->mx[c] = bs->tag[c] = -1;
    for (t = 0; t < m->n_tensors; ++t) {
        est[t] = NOT_WRITTEN;
        writer[t] = -1;
    }
    for (i = 0; i < m->n_inputs; ++i) est[m->inputs[i]] = -1;
    for (i = 0; i < m->n_ops; ++i) {
        for (k = 0; k < m->ops[i].n_out; ++k) {
            t = m->ops[i].out[k];
            if (writer[t] >= 0)
                return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "op '%s' (step %d) writes '%s', which op '%s' (step %d) "
                                "writes too", m->ops[i].name, i, m->tensors[t].name, m->ops[writer[t]].name, writer[t]);
            writer[t] = i;
        }
    }
    for (i = 0; i < m->n_ops; ++i) {
        lnn_sim_status st = check_reads(m, bs, est, writer, i, msg, n);
        if (st == LNN_SIM_OK) st = apply_writes(m, bs, i, msg, n);
        if (st != LNN_SIM_OK) return st;
        for (k = 0; k < m->ops[i].n_out; ++k) est[m->ops[i].out[k]] = i;
    }
    for (i = 0; i < m->n_outputs; ++i) {
        const lnn_tensor *y = &m->tensors[m->outputs[i]];
        int32_t last;
        t = m->outputs[i];
        if (est[t] == NOT_WRITTEN)
            return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "graph output '%s' is written by no op", y->name);
        last = bs_last_change(bs, tensor_key(y, 0), tensor_key(y, 1));
        if (last > est[t]) {
            who(m, last, by, sizeof by);
            who(m, est[t], since, sizeof since);
            return lnn_fail(msg, n, LNN_SIM_E_SCHEDULE, "graph output '%s' is overwritten by %s after %s wrote it",
                            y->name, by, since);
        }
    }
    return LNN_SIM_OK;
}

static lnn_sim_status check_schedule(const struct lnn_sim_model *m, char *msg, size_t n) {
    byte_steps bs;
    int32_t *est = (int32_t *)malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(int32_t));
    int32_t *writer = (int32_t *)malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(int32_t));
    lnn_sim_status st;
    memset(&bs, 0, sizeof bs);
    bs.cut = (int64_t *)malloc((size_t)(2 * m->n_tensors + 2) * sizeof(int64_t));
    if (est == NULL || writer == NULL || bs.cut == NULL)
        st = lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for the schedule check");
    else
        st = prove_schedule(m, &bs, est, writer, msg, n);
    free(bs.cut);
    free(bs.mx);
    free(bs.tag);
    free(est);
    free(writer);
    return st;
}

/* the per-run memory of m: arenas, accumulators and window-matrix scratch, and the tensors pointing into them */
static lnn_sim_status alloc_run_memory(struct lnn_sim_model *m, char *msg, size_t n) {
    int32_t t, r;
    m->acc32 = (int32_t *)malloc((size_t)m->n_acc * sizeof(int32_t));
    m->acc64 = (int64_t *)malloc((size_t)m->n_acc * sizeof(int64_t));
    m->col = (int8_t *)malloc((size_t)m->n_col);
    if (m->acc32 == NULL || m->acc64 == NULL || m->col == NULL)
        return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for scratch");
    for (r = 1; r < LNN_SIM_NUM_REGIONS; ++r) {
        m->arena[r] = (uint8_t *)calloc(m->region_size[r] ? m->region_size[r] : 1, 1);
        if (m->arena[r] == NULL)
            return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for the %u-byte arena of region %d", m->region_size[r], r);
    }
    for (t = 0; t < m->n_tensors; ++t) {
        lnn_tensor *x = &m->tensors[t];
        x->data = x->region == LNN_SIM_REGION_FLASH ? (uint8_t *)m->weights + x->offset : m->arena[x->region] + x->offset;
    }
    return LNN_SIM_OK;
}

struct lnn_sim_model *lnn_model_worker(const struct lnn_sim_model *m) {
    struct lnn_sim_model *w = (struct lnn_sim_model *)malloc(sizeof *w);
    int r;
    if (w == NULL) return NULL;
    *w = *m; /* image, strings, ops (with their packed weights), io, isa, external: shared, read only */
    w->owner = m;
    w->workers = NULL;
    w->n_workers = 0;
    w->col_op = -1;
    w->acc32 = NULL;
    w->acc64 = NULL;
    w->col = NULL;
    for (r = 0; r < LNN_SIM_NUM_REGIONS; ++r) w->arena[r] = NULL;
    w->tensors = (lnn_tensor *)malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(lnn_tensor));
    if (w->tensors == NULL || (memcpy(w->tensors, m->tensors, (size_t)m->n_tensors * sizeof(lnn_tensor)),
                               alloc_run_memory(w, NULL, 0)) != LNN_SIM_OK) {
        lnn_sim_free(w);
        return NULL;
    }
    return w;
}

void lnn_sim_free(lnn_sim_model *m) {
    int r;
    if (m == NULL) return;
    for (r = 0; r < LNN_SIM_NUM_REGIONS; ++r) free(m->arena[r]);
    for (r = 0; r < m->n_workers; ++r) lnn_sim_free(m->workers[r]);
    free(m->workers);
    free(m->acc32);
    free(m->acc64);
    free(m->col);
    free(m->tensors);
    if (m->owner == NULL) { /* a worker shares the rest with its owner */
        if (m->ops != NULL)
            for (r = 0; r < m->n_ops; ++r) free(m->ops[r].packed);
        free(m->ops);
        free(m->io);
        free(m->image);
    }
    free(m);
}

/* refuse a model whose work exceeds max_macs, naming the op with the most */
static lnn_sim_status check_work(const struct lnn_sim_model *m, uint64_t max_macs, char *msg, size_t n) {
    int32_t i, top = 0;
    if (m->macs <= max_macs || m->n_ops == 0) return LNN_SIM_OK;
    for (i = 1; i < m->n_ops; ++i)
        if (m->ops[i].macs > m->ops[top].macs) top = i;
    return lnn_fail(msg, n, LNN_SIM_E_WORK,
                    "the model needs %llu MACs, more than the limit of %llu (op '%s' alone needs %llu)",
                    (unsigned long long)m->macs, (unsigned long long)max_macs, m->ops[top].name,
                    (unsigned long long)m->ops[top].macs);
}

static lnn_sim_status load(struct lnn_sim_model *m, const uint8_t *img, size_t size, uint64_t max_macs, char *msg,
                           size_t n) {
    section sec[LNN_SIM_NUM_SECTIONS + 1];
    uint32_t payload, crc_stored, crc;
    int64_t scratch = 0, col = 0;
    int32_t t;
    lnn_sim_status st;
    memset(sec, 0, sizeof sec);
    if (size < LNN_SIM_HEADER_BYTES)
        return lnn_fail(msg, n, LNN_SIM_E_TRUNCATED, "the file has %llu bytes, fewer than the %d-byte header",
                    (unsigned long long)size, LNN_SIM_HEADER_BYTES);
    if (memcmp(img, k_magic, sizeof k_magic) != 0)
        return lnn_fail(msg, n, LNN_SIM_E_MAGIC, "not a model.bin file (magic bytes differ from \"LNNMODEL\")");
    if (rd_u16(img + 8) != LNN_SIM_FORMAT_VERSION || rd_u16(img + 10) != LNN_SIM_HEADER_BYTES)
        return lnn_fail(msg, n, LNN_SIM_E_VERSION, "format version %u, header size %u (this simulator reads version %d, %d bytes)",
                    rd_u16(img + 8), rd_u16(img + 10), LNN_SIM_FORMAT_VERSION, LNN_SIM_HEADER_BYTES);
    if (rd_u32(img + 12) != LNN_SIM_TARGET_CSK60XX)
        return lnn_fail(msg, n, LNN_SIM_E_TARGET, "target id 0x%x (this simulator runs 0x%x, CSK60xx)", rd_u32(img + 12),
                    LNN_SIM_TARGET_CSK60XX);
    payload = rd_u32(img + 16);
    if ((uint64_t)payload + LNN_SIM_HEADER_BYTES != size)
        return lnn_fail(msg, n, LNN_SIM_E_TRUNCATED, "the header declares %u payload bytes, the file has %llu", payload,
                    (unsigned long long)(size - LNN_SIM_HEADER_BYTES));
    crc_stored = rd_u32(img + 20);
    crc = crc32_ieee(img + LNN_SIM_HEADER_BYTES, payload);
    if (crc != crc_stored)
        return lnn_fail(msg, n, LNN_SIM_E_CRC, "payload crc32 stored 0x%08x, computed 0x%08x", crc_stored, crc);
    if (rd_u32(img + 28) != 0) return lnn_fail(msg, n, LNN_SIM_E_VERSION, "unknown header flags 0x%x", rd_u32(img + 28));
    for (t = 32; t < LNN_SIM_HEADER_BYTES; ++t)
        if (img[t] != 0) return lnn_fail(msg, n, LNN_SIM_E_VERSION, "reserved header bytes are not zero");
    st = read_sections(img, size, sec, msg, n);
    if (st != LNN_SIM_OK) return st;

    m->image = (uint8_t *)malloc(size);
    if (m->image == NULL) return lnn_fail(msg, n, LNN_SIM_E_NOMEM, "out of memory for a %llu-byte image",
                                      (unsigned long long)size);
    memcpy(m->image, img, size);
    m->image_size = size;
    m->strings = (const char *)m->image + sec[LNN_SIM_SEC_STRINGS].offset;
    m->strings_size = sec[LNN_SIM_SEC_STRINGS].size;
    if (m->strings_size == 0 || m->strings[m->strings_size - 1] != '\0')
        return lnn_fail(msg, n, LNN_SIM_E_STRING, "the strings section is empty or not NUL-terminated");
    m->weights = m->image + sec[LNN_SIM_SEC_WEIGHTS].offset;
    m->weights_size = sec[LNN_SIM_SEC_WEIGHTS].size;

    if ((st = read_plan(m, &sec[LNN_SIM_SEC_PLAN], msg, n)) != LNN_SIM_OK) return st;
    if ((st = read_tensors(m, &sec[LNN_SIM_SEC_TENSORS], msg, n)) != LNN_SIM_OK) return st;
    if ((st = read_graph(m, &sec[LNN_SIM_SEC_GRAPH], msg, n)) != LNN_SIM_OK) return st;
    if ((st = read_ops(m, &sec[LNN_SIM_SEC_OPS], &sec[LNN_SIM_SEC_IOIDX], msg, n, &scratch, &col)) != LNN_SIM_OK)
        return st;
    if ((st = check_schedule(m, msg, n)) != LNN_SIM_OK) return st;

    if ((uint64_t)scratch * sizeof(int64_t) > LNN_SIM_MAX_SCRATCH_BYTES || (uint64_t)col > LNN_SIM_MAX_SCRATCH_BYTES)
        return lnn_fail(msg, n, LNN_SIM_E_LIMIT, "an op needs %lld accumulators / %lld im2col bytes (limit %u bytes)",
                    (long long)scratch, (long long)col, LNN_SIM_MAX_SCRATCH_BYTES);
    if ((st = check_work(m, max_macs, msg, n)) != LNN_SIM_OK) return st; /* the last check */
    m->n_acc = scratch;
    m->n_col = col;
    return alloc_run_memory(m, msg, n);
}

lnn_sim_status lnn_sim_load(const uint8_t *image, size_t size, lnn_sim_model **out, char *msg, size_t msg_size) {
    return lnn_sim_load_ex(image, size, LNN_SIM_DEFAULT_MAX_MACS, out, msg, msg_size);
}

uint64_t lnn_sim_macs(const lnn_sim_model *m) { return m ? m->macs : 0; }
uint64_t lnn_sim_op_macs(const lnn_sim_model *m, int32_t i) { return m && i >= 0 && i < m->n_ops ? m->ops[i].macs : 0; }

lnn_sim_status lnn_sim_load_ex(const uint8_t *image, size_t size, uint64_t max_macs, lnn_sim_model **out, char *msg,
                               size_t msg_size) {
    struct lnn_sim_model *m;
    lnn_sim_status st;
    if (msg != NULL && msg_size > 0) msg[0] = '\0';
    if (out == NULL || (image == NULL && size > 0)) return lnn_fail(msg, msg_size, LNN_SIM_E_ARG, "NULL argument");
    *out = NULL;
    m = (struct lnn_sim_model *)calloc(1, sizeof *m);
    if (m == NULL) return lnn_fail(msg, msg_size, LNN_SIM_E_NOMEM, "out of memory");
    m->col_op = -1;
    m->isa = lnn_isa_select(msg, msg_size); /* LNN_SIM_ISA, read once per load */
    st = m->isa < 0 ? LNN_SIM_E_ARG : load(m, image, size, max_macs, msg, msg_size);
    if (st != LNN_SIM_OK) {
        lnn_sim_free(m);
        return st;
    }
    *out = m;
    return LNN_SIM_OK;
}
