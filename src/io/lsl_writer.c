#define _GNU_SOURCE /* renameat2 */
/* The collective writer: rank 0 lays out the HDF5 file, every rank writes its byte ranges with
 * MPI_File_write_at_all, rank 0 finishes the attributes and renames the file into place. */
#include "lsl_writer_i.h"

#include "lsl_crc32c.h"
#include "lsl_fs.h"
#include "lsl_gather.h"
#include "lsl_h5.h"
#include "lsl_progress.h"
#include "lsl_publish.h"
#include "lsl_merge.h"
#include "lsl_reader.h"
#ifdef LSL_HAVE_CUDA
#include "lsl_cuda.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest single write from caller memory: keeps MPI's int count safe. */
#define ZERO_COPY_CHUNK ((uint64_t)1 << 30)

enum wstate { W_CREATED, W_DEFINED, W_FAILED };

/* The phases LSL_PROFILE reports, in print order; what falls in none is printed as "other". */
enum phase {
    P_DEFINE,
    P_GPU_OPEN,
    P_GATHER,
    P_LAUNCH,
    P_GPU_WAIT,
    P_WRITE,
    P_CRC_WAIT,
    P_AGREE,
    P_PUT_REST,
    P_CLOSE,
    P_COUNT
};
static const char *const phase_name[P_COUNT] = {
    "define",     "GPU setup",      "A gathers",      "GPU launches", "GPU waits",
    "MPI writes", "checksum waits", "put agreements", "rest of puts", "close"};

/* Checksums a chunk on a helper thread while MPI_File_write_at_all reads the same buffer, so the
 * CRC costs no time on the write path. */
typedef struct crc_worker {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 idle, 1 job posted, 2 result ready, 3 quit */
    int running;
    const void *buf;
    uint64_t n;
    uint32_t crc;
} crc_worker;

static void *crc_main(void *arg)
{
    crc_worker *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->state != 1 && c->state != 3)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->state == 3)
            break;
        pthread_mutex_unlock(&c->mu);
        uint32_t r = lsl_crc32c_extend(c->crc, c->buf, c->n);
        pthread_mutex_lock(&c->mu);
        c->crc = r;
        c->state = 2;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void crc_start(crc_worker *c)
{
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->running = pthread_create(&c->th, NULL, crc_main, c) == 0;
}

static void crc_stop(crc_worker *c)
{
    if (!c->running)
        return;
    pthread_mutex_lock(&c->mu);
    c->state = 3;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    c->running = 0;
}

static void crc_post(crc_worker *c, uint32_t crc, const void *buf, uint64_t n)
{
    pthread_mutex_lock(&c->mu);
    c->crc = crc;
    c->buf = buf;
    c->n = n;
    c->state = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static uint32_t crc_wait(crc_worker *c)
{
    pthread_mutex_lock(&c->mu);
    while (c->state != 2)
        pthread_cond_wait(&c->cv, &c->mu);
    c->state = 0;
    uint32_t r = c->crc;
    pthread_mutex_unlock(&c->mu);
    return r;
}

struct lsl_writer {
    MPI_Comm comm;
    int rank, size;
    enum wstate state;
    lsl_writer_config cfg;
    uint64_t staging_bytes;
    lsl_i_out out; /* the file: its path, temporary, directory */
    char *hints;
    lsl_i_fsinfo fs;
    uint64_t nattrs;
    char **keys, **vals;
    uint64_t n;
    lsl_tensor_info *t;
    uint64_t *offsets, *nbytes, total_bytes;
    unsigned char *done;
    lsl_i_h5_final *fin;
    MPI_File fh;
    int fh_open;
    unsigned char *staging;
    double t0;
    lsl_i_progress prog;
    uint64_t bytes_done, tensors_done;
    crc_worker crc;
    lsl_i_reader *reader; /* started at the first put from a file */
    /* Where the time goes (seconds, this rank), printed at close when LSL_PROFILE is set: the
     * benchmark's gap to the raw MPI-IO ceiling is read from these. */
    double prof[P_COUNT];
    int profile;                    /* LSL_PROFILE on rank 0: 0 off, 1 at close, 2 per put */
    double put_t0, put_p0[P_COUNT]; /* the put in progress: its start, the phases then */
    uint64_t put_writes;            /* collective write calls in it */
#ifdef LSL_HAVE_CUDA
    lsl_i_cuda *cuda; /* opened at the first device put */
#endif
};

static void writer_free(lsl_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->nattrs; i++) {
        free(w->keys[i]);
        free(w->vals[i]);
    }
    free(w->keys);
    free(w->vals);
    for (uint64_t i = 0; i < w->n; i++)
        free((char *)w->t[i].name);
    free(w->t);
    free(w->offsets);
    free(w->nbytes);
    free(w->done);
    free(w->fin);
    lsl_i_reader_stop(&w->reader); /* before the staging it may be reading into */
    free(w->staging);
    lsl_i_out_discard(&w->out, w->rank);
    free(w->hints);
#ifdef LSL_HAVE_CUDA
    lsl_i_cuda_close(&w->cuda);
#endif
    crc_stop(&w->crc);
    if (w->comm != MPI_COMM_NULL)
        MPI_Comm_free(&w->comm);
    free(w);
}

lsl_status lsl_i_writer_create(MPI_Comm comm, const char *path, const lsl_writer_config *cfg,
                               const char *const *inputs, uint64_t ninputs, lsl_writer **out)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_writer *w = NULL;
    lsl_i_clear_error();
    if (!out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_create_all: out is NULL");
    *out = NULL;
    MPI_Comm own;
    LSL_TRY(lsl_i_comm_dup(comm, &own));
    /* Every rank learns whether every rank has a writer before anything else happens. */
    w = lsl_i_calloc(1, sizeof *w);
    st = lsl_i_agree(own, w ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    if (st != LSL_OK) {
        free(w);
        MPI_Comm_free(&own);
        return st;
    }
    w->comm = own;
    w->out.lock_fd = w->out.slot = -1;
    MPI_Comm_rank(w->comm, &w->rank);
    MPI_Comm_size(w->comm, &w->size);
    if (cfg)
        w->cfg = *cfg;
    w->staging_bytes = w->cfg.staging_bytes ? w->cfg.staging_bytes : LSL_DEFAULT_STAGING;
    if (w->staging_bytes < 4096 || w->staging_bytes > ((uint64_t)1 << 30))
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "staging budget of %llu bytes: use 4 KiB to 1 GiB",
                        (unsigned long long)w->staging_bytes);
    else if (w->cfg.alignment > LSL_MAX_ALIGNMENT)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "alignment of %llu bytes: at most 1 GiB (each large tensor starts on a "
                        "multiple of it, so the file's holes grow with it)",
                        (unsigned long long)w->cfg.alignment);
    if (w->rank == 0 && st == LSL_OK) {
        st = lsl_i_out_create(path, 0, w->cfg.overwrite, w->cfg.quiet, inputs, ninputs, &w->out);
        w->fs = w->out.fs;
        const char *h = getenv("LSL_MPIIO_HINTS");
        if (st == LSL_OK && h && !(w->hints = lsl_i_strdup(h)))
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    LSL_TRY(lsl_i_out_share(w->comm, &w->out, st));
    /* Settings read on rank 0 only and broadcast, so ranks cannot disagree. */
    char **hints[1] = {&w->hints};
    LSL_TRY(lsl_i_bcast_strs(w->comm, 1, hints, NULL, LSL_OK));
    MPI_Bcast(&w->fs, (int)sizeof w->fs, MPI_BYTE, 0, w->comm);
    /* Rank 0's environment decides, so a variable set on some ranks only cannot leave the
     * others out of the closing reduction. */
    const char *prof = w->rank == 0 ? getenv("LSL_PROFILE") : NULL;
    w->profile = !prof ? 0 : strcmp(prof, "2") == 0 ? 2 : 1;
    MPI_Bcast(&w->profile, 1, MPI_INT, 0, w->comm);
    w->t0 = lsl_i_now();
    crc_start(&w->crc);
    w->state = W_CREATED;
    *out = w;
    return LSL_OK;
fail:
    writer_free(w);
    return rc;
}

MPI_Comm lsl_i_writer_comm(const lsl_writer *w)
{
    return w->comm;
}

lsl_status lsl_writer_create_all(MPI_Comm comm, const char *path, const lsl_writer_config *cfg,
                                 lsl_writer **out)
{
    return lsl_i_writer_create(comm, path, cfg, NULL, 0, out);
}

lsl_status lsl_writer_set_attr_all(lsl_writer *w, const char *key, const char *value)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_set_attr_all: writer is NULL");
    lsl_status st = LSL_OK;
    char **k = NULL, **v = NULL;
    if (!key || !*key || !value)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_set_attr_all: NULL or empty argument");
    else if (w->state != W_CREATED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "attributes must be set before define");
    else if (!(k = lsl_i_realloc(w->keys, (w->nattrs + 1) * sizeof *k)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (w->keys = k, !(v = lsl_i_realloc(w->vals, (w->nattrs + 1) * sizeof *v)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else {
        w->vals = v;
        w->keys[w->nattrs] = lsl_i_strdup(key);
        w->vals[w->nattrs] = lsl_i_strdup(value);
        w->nattrs++;
        if (!w->keys[w->nattrs - 1] || !w->vals[w->nattrs - 1])
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    /* collective, as documented: one rank's failure is every rank's */
    return lsl_i_agree(w->comm, st);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static lsl_status check_tensors(uint64_t n, const lsl_tensor_info *t, uint64_t *nbytes,
                                uint64_t *total)
{
    lsl_status rc = LSL_OK;
    const char **names = lsl_i_malloc((n ? n : 1) * sizeof *names);
    if (!names)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    *total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || !*nm || strchr(nm, '/') || strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
            LSL_FAIL(LSL_ERR_INVALID_ARG, "tensor %llu: name \"%s\" cannot name an HDF5 dataset",
                     (unsigned long long)i, nm ? nm : "(null)");
        /* names go into safetensors headers and JSON, which are UTF-8 */
        LSL_TRY(lsl_i_check_utf8(nm, "tensor name"));
        if (!lsl_dtype_name(t[i].dtype) || lsl_dtype_bits(t[i].dtype) % 8 != 0)
            LSL_FAIL(LSL_ERR_DTYPE, "tensor `%s`: dtype %s is not supported (sub-byte or invalid)",
                     nm, lsl_dtype_name(t[i].dtype) ? lsl_dtype_name(t[i].dtype) : "?");
        if (t[i].ndim < 0 || t[i].ndim > LSL_MAX_NDIM)
            LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: %d dimensions", nm, t[i].ndim);
        uint64_t e = 1;
        for (int d = 0; d < t[i].ndim; d++)
            if (lsl_mul_overflow(e, t[i].shape[d], &e))
                LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: shape overflows 64 bits", nm);
        if (!lsl_i_dtype_bytes(t[i].dtype, e, &nbytes[i]) ||
            lsl_add_overflow(*total, nbytes[i], total))
            LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: size overflows 64 bits", nm);
        names[i] = nm;
    }
    qsort(names, n, sizeof *names, cmp_names);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            LSL_FAIL(LSL_ERR_INVALID_ARG, "tensor `%s` is defined twice", names[i]);
fail:
    free(names);
    return rc;
}

static lsl_status define_impl(lsl_writer *w, uint64_t ntensors, const lsl_tensor_info *tensors)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    MPI_Info info = MPI_INFO_NULL;
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_define_all: writer is NULL");
    lsl_i_clear_error();
    if (w->state != W_CREATED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "define called twice or after a failure");
    else if (ntensors && !tensors)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_define_all: tensors is NULL");
    else {
        w->t = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->t);
        w->offsets = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->offsets);
        w->nbytes = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->nbytes);
        w->done = lsl_i_calloc(ntensors ? ntensors : 1, 1);
        w->fin = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->fin);
        w->staging = lsl_i_malloc(w->staging_bytes);
        if (!w->t || !w->offsets || !w->nbytes || !w->done || !w->fin || !w->staging)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for %llu tensors and staging",
                            (unsigned long long)ntensors);
        for (uint64_t i = 0; st == LSL_OK && i < ntensors; i++) {
            w->t[i] = tensors[i];
            w->t[i].name = NULL;
            if (tensors[i].name && !(w->t[i].name = lsl_i_strdup(tensors[i].name)))
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            w->n = i + 1;
        }
        if (st == LSL_OK)
            st = check_tensors(ntensors, w->t, w->nbytes, &w->total_bytes);
    }
    /* A local failure first: a rank that could not copy the list would otherwise look like one
     * that defined a different list, and the others would report that instead. */
    LSL_TRY(lsl_i_agree(w->comm, st));
    /* The list is logically collective: compare a digest of it with every other rank's. */
    uint64_t h = 14695981039346656037ull, hv[2], hmax[2];
    for (uint64_t i = 0; st == LSL_OK && i < ntensors; i++) {
        h = fnv(h, w->t[i].name, strlen(w->t[i].name) + 1);
        h = fnv(h, &w->t[i].dtype, sizeof w->t[i].dtype);
        h = fnv(h, &w->t[i].ndim, sizeof w->t[i].ndim);
        h = fnv(h, w->t[i].shape, sizeof(uint64_t) * (size_t)w->t[i].ndim);
    }
    hv[0] = h;
    hv[1] = ~h;
    MPI_Allreduce(hv, hmax, 2, MPI_UINT64_T, MPI_MAX, w->comm);
    if (st == LSL_OK && (hmax[0] != h || hmax[1] != ~h))
        st = lsl_i_fail(LSL_ERR_INCONSISTENT, "ranks defined different tensor lists");
    LSL_TRY(lsl_i_agree(w->comm, st));
    lsl_i_progress_start(&w->prog, w->cfg.progress_label ? w->cfg.progress_label : "write",
                         w->cfg.quiet, w->size, w->n, w->total_bytes);
    w->prog.t0 = w->t0;

    if (w->rank == 0) {
        uint64_t align = w->cfg.alignment ? w->cfg.alignment : w->fs.alignment;
        /* Alignment holes stay sparse; what must fit is the data plus the metadata. */
        uint64_t need = w->total_bytes + (1u << 20) + w->n * 4096u;
        char b1[32], b2[32], b3[32], b4[32];
        /* statvfs can overstate what a job may write (Lustre OSTs fill one by one, quotas):
         * LSL_NO_SPACE_CHECK=1 skips this and relies on the write errors alone. */
        const char *nocheck = getenv("LSL_NO_SPACE_CHECK");
        if (w->fs.avail_bytes < need && !(nocheck && strcmp(nocheck, "1") == 0))
            st = lsl_i_fail(LSL_ERR_NOSPACE, "%s: needs %s but the filesystem has %s available",
                            w->out.dir, lsl_i_fmt_bytes(need, b1, sizeof b1),
                            lsl_i_fmt_bytes(w->fs.avail_bytes, b2, sizeof b2));
        else
            st = lsl_i_h5_create(w->out.tmp, align, w->nattrs, w->keys, w->vals, w->n, w->t,
                                 w->offsets);
        if (st == LSL_OK && w->cfg.quiet == LSL_PROGRESS_TEXT)
            fprintf(stderr,
                    "loraslab: %s %llu tensors (%s) to %s on %s%s%s, aligned to %s, %d rank%s, "
                    "staging %s per rank\n",
                    w->cfg.progress_label ? w->cfg.progress_label : "write",
                    (unsigned long long)w->n, lsl_i_fmt_bytes(w->total_bytes, b1, sizeof b1),
                    w->out.path, w->fs.name, w->fs.parallel ? " stripe " : "",
                    w->fs.parallel ? lsl_i_fmt_bytes(w->fs.stripe_size, b3, sizeof b3) : "",
                    lsl_i_fmt_bytes(align, b2, sizeof b2), w->size, w->size > 1 ? "s" : "",
                    lsl_i_fmt_bytes(w->staging_bytes, b4, sizeof b4));
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    MPI_Bcast(w->offsets, (int)w->n, MPI_UINT64_T, 0, w->comm);
    st = lsl_i_fs_hints(&w->fs, w->hints, &info);
    if (st == LSL_OK) {
        int mrc = MPI_File_open(w->comm, w->out.tmp, MPI_MODE_WRONLY, info, &w->fh);
        if (mrc != MPI_SUCCESS)
            st = lsl_i_mpi_fail(mrc, "MPI_File_open of the output");
        else
            w->fh_open = 1;
    } else {
        /* MPI_File_open is collective: join it anyway so nobody waits for us. */
        int mrc = MPI_File_open(w->comm, w->out.tmp, MPI_MODE_WRONLY, MPI_INFO_NULL, &w->fh);
        w->fh_open = mrc == MPI_SUCCESS;
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    if (info != MPI_INFO_NULL)
        MPI_Info_free(&info);
    w->state = W_DEFINED;
    return LSL_OK;
fail:
    if (info != MPI_INFO_NULL)
        MPI_Info_free(&info);
    w->state = W_FAILED;
    return rc;
}

lsl_status lsl_writer_define_all(lsl_writer *w, uint64_t ntensors, const lsl_tensor_info *tensors)
{
    double t0 = lsl_i_now();
    lsl_status st = define_impl(w, ntensors, tensors);
    if (w)
        w->prof[P_DEFINE] += lsl_i_now() - t0;
    return st;
}

static lsl_status src_read(const lsl_i_src *s, uint64_t off, uint64_t n, void *dst)
{
    if (s->mem) {
        memcpy(dst, s->mem + off, n);
        return LSL_OK;
    }
    return lsl_i_pread_full(s->fd, dst, n, s->off + off, s->path);
}

static bool float_dtype(lsl_dtype d)
{
    return d == LSL_F32 || d == LSL_BF16 || d == LSL_F16;
}

static lsl_status check_lora(const lsl_tensor_info *t, uint64_t nrows, const lsl_lora_part *l)
{
    if (t->ndim != 2 && t->ndim != 1)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "tensor `%s`: a LoRA delta needs a 2-D weight (or a 1-D bias), it has "
                          "%d dims",
                          t->name, t->ndim);
    if (!float_dtype(t->dtype))
        return lsl_i_fail(LSL_ERR_DTYPE,
                          "tensor `%s`: LoRA target has dtype %s; only BF16, F16 and F32 weights "
                          "can be merged",
                          t->name, lsl_dtype_name(t->dtype));
    if (!float_dtype(l->a_dtype) || !float_dtype(l->b_dtype))
        return lsl_i_fail(LSL_ERR_DTYPE, "tensor `%s`: LoRA A/B dtypes must be F32, BF16 or F16",
                          t->name);
    if (l->rank == 0 || !isfinite(l->scaling))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA rank 0 or non-finite scaling",
                          t->name);
    if ((nrows && !l->b) || (l->a_count && !l->a))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA A or B pointer is NULL", t->name);
    if (l->a_shard != LSL_SHARD_ROWS && l->a_shard != LSL_SHARD_COLS)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: bad a_shard", t->name);
    if ((l->flags & LSL_LORA_DORA_COLUMNS) && !l->magnitude)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "tensor `%s`: LSL_LORA_DORA_COLUMNS needs the magnitude vector", t->name);
    if (l->magnitude && !float_dtype(l->magnitude_dtype))
        return lsl_i_fail(LSL_ERR_DTYPE,
                          "tensor `%s`: DoRA magnitude dtype must be F32, BF16 or F16", t->name);
    return LSL_OK;
}

static void progress(lsl_writer *w, bool last)
{
    if (w->rank != 0 || !lsl_i_progress_due(&w->prog, last))
        return;
    if (w->prog.mode == LSL_PROGRESS_JSON) {
        lsl_i_progress_json(&w->prog, w->tensors_done, w->bytes_done, last);
        return;
    }
    double el = w->prog.last - w->t0 > 1e-9 ? w->prog.last - w->t0 : 1e-9;
    double rate = (double)w->bytes_done / el;
    char b1[32], b2[32];
    double eta = rate > 0 ? (double)(w->total_bytes - w->bytes_done) / rate : 0;
    fprintf(stderr, "loraslab: %s %llu/%llu tensors  %s / %s  %.2f GB/s  %s %.0fs\n", w->prog.verb,
            (unsigned long long)w->tensors_done, (unsigned long long)w->n,
            lsl_i_fmt_bytes(w->bytes_done, b1, sizeof b1),
            lsl_i_fmt_bytes(w->total_bytes, b2, sizeof b2), rate / 1e9, last ? "elapsed" : "eta",
            last ? el : eta);
}

/* A put's time in none of the phases goes to P_PUT_REST; with LSL_PROFILE=2 rank 0 prints one
 * line per put (its own figures: the slowest rank shows in the agreements of the others). */
static void put_clock_start(lsl_writer *w)
{
    w->put_t0 = lsl_i_now();
    memcpy(w->put_p0, w->prof, sizeof w->prof);
    w->put_writes = 0;
}

static void put_clock_stop(lsl_writer *w, uint64_t index)
{
    double el = lsl_i_now() - w->put_t0, d[P_COUNT], in = 0;
    for (int i = 0; i < P_COUNT; i++)
        in += d[i] = w->prof[i] - w->put_p0[i];
    w->prof[P_PUT_REST] += el - in;
    if (w->profile < 2 || w->rank != 0)
        return;
    fprintf(stderr,
            "loraslab: put %llu `%s` %.2f MB: %.2f ms (gather %.2f, launches %.2f, GPU waits %.2f, "
            "%llu writes %.2f, checksum waits %.2f, agreements %.2f, rest %.2f)\n",
            (unsigned long long)index, index < w->n ? w->t[index].name : "?",
            index < w->n ? w->nbytes[index] / 1e6 : 0.0, el * 1e3, d[P_GATHER] * 1e3,
            d[P_LAUNCH] * 1e3, d[P_GPU_WAIT] * 1e3, (unsigned long long)w->put_writes,
            d[P_WRITE] * 1e3, d[P_CRC_WAIT] * 1e3, d[P_AGREE] * 1e3, (el - in) * 1e3);
}

/* One tensor's put, shared by the host and device paths. */
typedef struct putctx {
    const lsl_tensor_info *t;
    uint64_t rows, relems, esize, rbytes, row0, nrows, my_bytes, base;
    uint32_t crc;
} putctx;

/* Local checks, then the collective ones (same tensor everywhere, parts tiling the rows in rank
 * order), agreed before any I/O. */
static lsl_status put_begin(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                            bool has_data, const lsl_lora_part *lora, int mem, lsl_status st,
                            putctx *pc)
{
    put_clock_start(w);
    double t0 = lsl_i_now();
    memset(pc, 0, sizeof *pc);
    if (st == LSL_OK && w->state != W_DEFINED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "put before define or after a failure");
    else if (st == LSL_OK && index >= w->n)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor index %llu out of range (%llu tensors)",
                        (unsigned long long)index, (unsigned long long)w->n);
    if (st == LSL_OK) {
        const lsl_tensor_info *t = pc->t = &w->t[index];
        pc->rows = lsl_i_rows(t);
        pc->relems = lsl_i_row_elems(t);
        pc->esize = lsl_dtype_bits(t->dtype) / 8;
        pc->rbytes = pc->relems * pc->esize;
        pc->row0 = row0;
        pc->nrows = nrows;
        if (w->done[index])
            st = lsl_i_fail(LSL_ERR_WRONG_STATE, "tensor `%s` was already written", t->name);
        else if (row0 > pc->rows || nrows > pc->rows - row0)
            st = lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: rows [%llu, +%llu) outside [0, %llu)",
                            t->name, (unsigned long long)row0, (unsigned long long)nrows,
                            (unsigned long long)pc->rows);
        else if (nrows && pc->rbytes && !has_data)
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: data is NULL", t->name);
        else if (lora)
            st = check_lora(t, nrows, lora);
    }
    int64_t v[6] =
        {(int64_t)index, -(int64_t)index, lora != NULL, -(int64_t)(lora != NULL), mem, -mem},
            vmax[6];
    uint64_t mine = st == LSL_OK ? nrows : 0, prefix = 0, total = 0;
    MPI_Allreduce(v, vmax, 6, MPI_INT64_T, MPI_MAX, w->comm);
    MPI_Exscan(&mine, &prefix, 1, MPI_UINT64_T, MPI_SUM, w->comm);
    MPI_Allreduce(&mine, &total, 1, MPI_UINT64_T, MPI_SUM, w->comm);
    if (w->rank == 0)
        prefix = 0;
    if (st == LSL_OK && (vmax[0] != -vmax[1] || vmax[2] != -vmax[3] || vmax[4] != -vmax[5]))
        st = lsl_i_fail(LSL_ERR_INCONSISTENT,
                        "ranks put different tensors, or mixed LoRA/no LoRA or host/device "
                        "memory, in the same call");
    else if (st == LSL_OK && nrows && row0 != prefix)
        st = lsl_i_fail(LSL_ERR_SHAPE,
                        "tensor `%s`: this rank's rows start at %llu but the ranks before it hold "
                        "%llu rows (parts must tile the rows in rank order)",
                        pc->t->name, (unsigned long long)row0, (unsigned long long)prefix);
    else if (st == LSL_OK && total != pc->rows)
        st = lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: the ranks' parts hold %llu of %llu rows",
                        pc->t->name, (unsigned long long)total, (unsigned long long)pc->rows);
    st = lsl_i_agree(w->comm, st);
    if (st == LSL_OK) {
        pc->my_bytes = nrows * pc->rbytes;
        pc->base = w->offsets[index] + row0 * pc->rbytes;
    }
    w->prof[P_AGREE] += lsl_i_now() - t0;
    return st;
}

/* One collective write of count bytes at the part's offset + off; a rank that failed or has
 * nothing left joins with zero bytes.  Checksums what it writes, unless crc_done (the GPU did). */
static void put_write(lsl_writer *w, putctx *pc, uint64_t off, const void *buf, uint64_t count,
                      int crc_done, lsl_status *st)
{
    if (*st != LSL_OK)
        count = 0;
    /* An injected write failure (LSL_FAULT=write:N) still joins the collective, as a real one
     * would have: with nothing. */
    bool injected = count && lsl_i_fault(LSL_FAULT_WRITE);
    if (injected)
        count = 0;
    bool async = !crc_done && count >= (1u << 20) && w->crc.running;
    if (async)
        crc_post(&w->crc, pc->crc, buf, count);
    else if (!crc_done && count)
        pc->crc = lsl_crc32c_extend(pc->crc, buf, count);
    MPI_Status ms;
    double t0 = lsl_i_now();
    int mrc = MPI_File_write_at_all(w->fh, (MPI_Offset)(pc->base + off), count ? buf : w->staging,
                                    (int)count, MPI_BYTE, &ms);
    double t1 = lsl_i_now();
    w->prof[P_WRITE] += t1 - t0;
    w->put_writes++;
    if (async) {
        pc->crc = crc_wait(&w->crc);
        w->prof[P_CRC_WAIT] += lsl_i_now() - t1;
    }
    if (injected && *st == LSL_OK) {
        *st = lsl_i_fail_errno(LSL_ERR_IO, EIO, "%s: writing tensor `%s` (LSL_FAULT)", w->out.path,
                               pc->t->name);
    } else if (mrc != MPI_SUCCESS && *st == LSL_OK) {
        char what[256];
        snprintf(what, sizeof what, "%s: writing tensor `%s`", w->out.path, pc->t->name);
        *st = lsl_i_mpi_fail(mrc, what);
    } else if (*st == LSL_OK && count) {
        int got = 0;
        MPI_Get_count(&ms, MPI_BYTE, &got);
        if ((uint64_t)got != count)
            *st = lsl_i_fail(LSL_ERR_NOSPACE,
                             "%s: short write of tensor `%s` (%d of %llu bytes): filesystem full "
                             "or quota exceeded?",
                             w->out.path, pc->t->name, got, (unsigned long long)count);
    }
}

static lsl_status nonfinite(const putctx *pc, uint64_t first_row, uint64_t bad)
{
    return lsl_i_fail(LSL_ERR_NONFINITE,
                      "tensor `%s`: the merge produced NaN or Inf at row %llu, column %llu (check "
                      "the adapter's scaling and weights)",
                      pc->t->name, (unsigned long long)(pc->row0 + first_row + bad / pc->relems),
                      (unsigned long long)(bad % pc->relems));
}

/* Agree, combine the ranks' CRCs in rank (= byte) order into the tensor's, record it. */
static lsl_status put_end(lsl_writer *w, uint64_t index, putctx *pc, const lsl_lora_part *lora,
                          lsl_status st)
{
    lsl_status rc = LSL_OK;
    double t0 = lsl_i_now();
    LSL_TRY(lsl_i_agree(w->comm, st));
    uint64_t pair[2] = {pc->crc, pc->my_bytes}, *pairs = NULL;
    if (w->rank == 0 && !(pairs = lsl_i_malloc(2 * sizeof(uint64_t) * (size_t)w->size)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    static uint64_t dummy[2];
    MPI_Gather(pair, 2, MPI_UINT64_T, pairs ? pairs : dummy, pairs ? 2 : 0, MPI_UINT64_T, 0,
               w->comm);
    if (w->rank == 0 && pairs) {
        uint32_t all = 0;
        for (int k = 0; k < w->size; k++)
            all = lsl_crc32c_combine(all, (uint32_t)pairs[2 * k], pairs[2 * k + 1]);
        w->fin[index].crc32c = all;
        free(pairs);
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    w->done[index] = 1;
    if (lora) {
        w->fin[index].has_lora = 1;
        w->fin[index].lora_rank = lora->rank;
        w->fin[index].lora_alpha = lora->alpha;
        w->fin[index].lora_scaling = lora->scaling;
        w->fin[index].rslora = (lora->flags & LSL_LORA_RSLORA) != 0;
        w->fin[index].dora = lora->magnitude != NULL;
    }
    w->tensors_done++;
    w->bytes_done += w->nbytes[index];
    progress(w, w->tensors_done == w->n);
fail:
    w->prof[P_AGREE] += lsl_i_now() - t0;
    put_clock_stop(w, index);
    return rc;
}

/* Rows of chunk c when merging chunk_rows rows at a time: the first (local) row and how many. */
static void chunk_rows_of(const putctx *pc, uint64_t c, uint64_t chunk_rows, uint64_t *lr,
                          uint64_t *m)
{
    *lr = c * chunk_rows;
    *m = pc->nrows - *lr < chunk_rows ? pc->nrows - *lr : chunk_rows;
}

/* Chunk c of this rank's part: its byte offset and length (chunk_rows rows when merging, else
 * chunk_bytes bytes). */
static void chunk_of(const putctx *pc, uint64_t c, uint64_t chunk_rows, uint64_t chunk_bytes,
                     uint64_t *off, uint64_t *count)
{
    if (chunk_rows) {
        uint64_t lr, m;
        chunk_rows_of(pc, c, chunk_rows, &lr, &m);
        *off = lr * pc->rbytes;
        *count = m * pc->rbytes;
    } else {
        *off = c * chunk_bytes;
        *count = pc->my_bytes - *off < chunk_bytes ? pc->my_bytes - *off : chunk_bytes;
    }
}

lsl_status lsl_i_writer_put(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                            const lsl_i_src *src, const lsl_lora_part *lora, lsl_status local_st)
{
    lsl_status rc = LSL_OK, st;
    void *afull = NULL, *aacc = NULL, *bacc = NULL;
    double *colf = NULL; /* DoRA down the columns: factor per column */
    putctx pc;
    LSL_TRY(put_begin(w, index, row0, nrows, src->mem || src->fd >= 0, lora, LSL_MEM_HOST, local_st,
                      &pc));
    const lsl_tensor_info *t = pc.t;
    uint64_t r = 0, chunk_rows = 0, chunk_bytes = 0, nloc = 0, acc = sizeof(double);
    /* Rows from a file are read one chunk ahead by the reader thread, into the other half of the
     * staging budget, while this chunk is merged and written. */
    const int ahead = src->mem == NULL;
    st = LSL_OK;
    if (ahead && !w->reader)
        st = lsl_i_reader_start(&w->reader);
    if (lora) {
        r = lora->rank;
        uint64_t a_es = lsl_dtype_bits(lora->a_dtype) / 8, in = pc.relems, a_bytes = r * in * a_es;
        const int gathered = (lora->flags & LSL_I_LORA_A_FULL) != 0; /* by a batched put */
        afull = gathered ? NULL : lsl_i_malloc(a_bytes ? a_bytes : 1);
        aacc = lsl_i_malloc(r * in * acc + 1);
        bacc = lsl_i_malloc(nrows * r * acc + 1);
        if ((!gathered && !afull) || !aacc || !bacc)
            st = lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for LoRA factors", t->name);
        if (gathered) {
            LSL_TRY(lsl_i_agree(w->comm, st));
        } else {
            lsl_i_ashard sh = {lora->a_shard, lora->a, lora->a_off, lora->a_count, r, in,
                               a_es,          afull};
            LSL_TRY(lsl_i_writer_gather(w, 1, &sh, st));
        }
        lsl_i_to_f64(lora->a_dtype, gathered ? lora->a : afull, r * in, aacc);
        lsl_i_to_f64(lora->b_dtype, lora->b, nrows * r, bacc);
        if (lora->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE) {
            lsl_i_round_to_dtype(t->dtype, aacc, r * in);
            lsl_i_round_to_dtype(t->dtype, bacc, nrows * r);
        }
        /* The staging budget holds a block of W rows (two when reading ahead) and its fp64 delta,
         * each 64-byte aligned: keep room for the alignment. */
        uint64_t per_row = in * (pc.esize * (ahead ? 2 : 1) + acc);
        chunk_rows =
            w->staging_bytes > 128 ? (w->staging_bytes - 128) / (per_row ? per_row : 1) : 0;
        if (st == LSL_OK && chunk_rows == 0)
            st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                            "tensor `%s`: one row needs %llu bytes of staging, more than the "
                            "budget of %llu (raise the staging size)",
                            t->name, (unsigned long long)per_row,
                            (unsigned long long)w->staging_bytes);
        else
            nloc = (nrows + chunk_rows - 1) / chunk_rows;
    } else {
        chunk_bytes = src->mem ? ZERO_COPY_CHUNK : w->staging_bytes / 2;
        nloc = chunk_bytes ? (pc.my_bytes + chunk_bytes - 1) / chunk_bytes : 0;
    }
    /* Where chunk c's rows are read (half c % 2 when reading ahead) and the fp64 work area. */
    uint64_t half = lora ? (chunk_rows * pc.rbytes + 63) / 64 * 64 : chunk_bytes;
    unsigned char *rbuf[2] = {w->staging, w->staging + (ahead ? half : 0)};
    void *work = lora ? w->staging + (ahead ? 2 : 1) * half : NULL;
    uint64_t nchunks = 0;
    if (st != LSL_OK)
        nloc = 0;
    MPI_Allreduce(&nloc, &nchunks, 1, MPI_UINT64_T, MPI_MAX, w->comm);
    if (lora && (lora->flags & LSL_LORA_DORA_COLUMNS)) {
        /* DoRA down the columns: the norm of a column spans every rank's rows.  Pass 1 sums this
         * rank's squares of V per column; the reduction gives every rank the norms. */
        colf = lsl_i_calloc(pc.relems ? pc.relems : 1, sizeof *colf);
        if (!colf && st == LSL_OK)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for DoRA column norms");
        for (uint64_t c = 0; st == LSL_OK && c < nloc; c++) {
            uint64_t lr, m;
            chunk_rows_of(&pc, c, chunk_rows, &lr, &m);
            st = src_read(src, lr * pc.rbytes, m * pc.rbytes, rbuf[0]);
            if (st == LSL_OK)
                st = lsl_i_dora_colsq_cpu(t->dtype, rbuf[0], m, pc.relems,
                                          (unsigned char *)bacc + lr * r * acc, aacc, r,
                                          lora->scaling, work, colf);
        }
        static double none;
        MPI_Allreduce(MPI_IN_PLACE, colf ? colf : &none, colf ? (int)pc.relems : 0, MPI_DOUBLE,
                      MPI_SUM, w->comm);
        double *mag = colf ? lsl_i_malloc(pc.relems * sizeof *mag + 1) : NULL;
        if (colf && !mag && st == LSL_OK)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for DoRA magnitudes");
        if (mag) {
            lsl_i_to_f64(lora->magnitude_dtype, lora->magnitude, pc.relems, mag);
            for (uint64_t j = 0; j < pc.relems; j++)
                colf[j] = mag[j] / sqrt(colf[j]);
            free(mag);
        }
    }
#define CHUNK(ch, o, n) chunk_of(&pc, (ch), lora ? chunk_rows : 0, chunk_bytes, &(o), &(n))
    int posted = 0;
    uint64_t off = 0, count = 0;
    if (ahead && st == LSL_OK && nloc > 0) {
        CHUNK(0, off, count);
        lsl_i_reader_post(w->reader, src->fd, src->off + off, count, rbuf[0], src->path);
        posted = 1;
    }
    for (uint64_t c = 0; c < nchunks; c++) {
        unsigned char *rows = rbuf[c % 2];
        const void *buf = rows;
        off = count = 0;
        if (c < nloc)
            CHUNK(c, off, count);
        if (posted) { /* chunk c's read; after a failure, only let it land */
            lsl_status rs = lsl_i_reader_join(w->reader, st == LSL_OK);
            posted = 0;
            st = st == LSL_OK ? rs : st;
        }
        if (ahead && st == LSL_OK && c + 1 < nloc) { /* chunk c - 1 is written: its half is free */
            uint64_t o2, n2;
            CHUNK(c + 1, o2, n2);
            lsl_i_reader_post(w->reader, src->fd, src->off + o2, n2, rbuf[(c + 1) % 2], src->path);
            posted = 1;
        }
        if (st == LSL_OK && c < nloc && !ahead) {
            if (lora)
                st = src_read(src, off, count, rows);
            else
                buf = src->mem + off;
        }
        if (st == LSL_OK && c < nloc && lora) {
            uint64_t lr, m, bad = 0;
            chunk_rows_of(&pc, c, chunk_rows, &lr, &m);
            const void *brows = (unsigned char *)bacc + lr * r * acc;
            lsl_status ms =
                colf ? lsl_i_merge_rows_dora_cols_cpu(t->dtype, rows, m, pc.relems, brows, aacc, r,
                                                      lora->scaling, colf, work, &bad)
                : lora->magnitude ? lsl_i_merge_rows_dora_cpu(
                                        t->dtype, rows, m, pc.relems, brows, aacc, r, lora->scaling,
                                        (const unsigned char *)lora->magnitude +
                                            lr * (lsl_dtype_bits(lora->magnitude_dtype) / 8),
                                        lora->magnitude_dtype, work, &bad)
                : (lora->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE)
                    ? lsl_i_merge_rows_lowp_cpu(t->dtype, rows, m, pc.relems, brows, aacc, r,
                                                lora->scaling, work, &bad)
                    : lsl_i_merge_rows_cpu(t->dtype, rows, m, pc.relems, brows, aacc, r,
                                           lora->scaling, work, &bad);
            st = ms == LSL_ERR_NONFINITE ? nonfinite(&pc, lr, bad) : ms;
        }
        put_write(w, &pc, off, buf, c < nloc ? count : 0, 0, &st);
    }
#undef CHUNK
    LSL_TRY(put_end(w, index, &pc, lora, st));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    free(afull);
    free(aacc);
    free(bacc);
    free(colf);
    return rc;
}

#ifdef LSL_HAVE_CUDA
/* Opened at the first device put, collectively; its time is the profile's GPU setup. */
static lsl_status open_cuda(lsl_writer *w)
{
    int need = w->cuda == NULL, any = 0;
    MPI_Allreduce(&need, &any, 1, MPI_INT, MPI_MAX, w->comm);
    if (!any || w->cuda)
        return LSL_OK;
    double t0 = lsl_i_now();
    lsl_status st = lsl_i_cuda_open(w->comm, w->staging_bytes, &w->cuda);
    w->prof[P_GPU_OPEN] += lsl_i_now() - t0;
    if (st != LSL_OK)
        return st;
    if (w->rank == 0 && w->cfg.quiet == LSL_PROGRESS_TEXT)
        fprintf(
            stderr, "loraslab: device path: LoRA A gathered with %s, pinned ring 2 x %llu bytes\n",
            lsl_i_cuda_gather_path(w->cuda), (unsigned long long)lsl_i_cuda_slot_bytes(w->cuda));
    return LSL_OK;
}

/* Rows on the GPU: merge (or copy) chunk c + 1 and copy it into the other pinned slot while
 * chunk c is being written, so the kernel and the D2H copy hide behind the file I/O.  Two
 * sources: device pointers (the in-job API: data on stream, lora's factors on the device), or
 * W0 rows in a file (src; the offline merge on the GPU: lora's factors in host memory), which
 * the staging thread reads into the free slot and copies up while the other is written. */
static lsl_status put_device(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                             const void *data, void *stream, const lsl_i_src *src,
                             const lsl_lora_part *lora, lsl_status st0)
{
    lsl_status rc = LSL_OK, st = st0;
    if (st == LSL_OK && lora && (lora->magnitude || (lora->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE)))
        st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                        "DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE with device pointers are not "
                        "supported in this version (pass host memory)");
    putctx pc;
    rc = open_cuda(w);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    LSL_TRY(put_begin(w, index, st ? 0 : row0, st ? 0 : nrows, data || src, st ? NULL : lora,
                      LSL_MEM_DEVICE, st, &pc));
    const void *a_dev = NULL;
    const unsigned char *b = NULL;
    if (lora) {
        double t0 = lsl_i_now();
        LSL_TRY(
            lsl_i_cuda_gather_a(w->cuda, w->comm, lora, pc.relems, src != NULL, &a_dev, LSL_OK));
        w->prof[P_GATHER] += lsl_i_now() - t0;
        b = lora->b;
        if (src) {
            const void *bd = NULL;
            uint64_t bb = nrows * lora->rank * (lsl_dtype_bits(lora->b_dtype) / 8);
            LSL_TRY(lsl_i_agree(w->comm, lsl_i_cuda_upload_b(w->cuda, lora->b, bb, &bd)));
            b = bd;
        }
    }
    /* Chunk c covers units (rows when merging, bytes when copying) [first(c), first(c+1)): the
     * first chunk of a tensor is an eighth of a slot so the GPU-to-host pipeline fills quickly,
     * the rest fill a slot. */
    uint64_t slot = lsl_i_cuda_slot_bytes(w->cuda), unit = lora ? pc.rbytes : 1;
    uint64_t units = lora ? pc.nrows : pc.my_bytes, full_u = unit ? slot / unit : 0;
    uint64_t head_u = full_u / 8 ? full_u / 8 : full_u, nloc = 0, nchunks = 0;
    st = LSL_OK;
    if (full_u == 0)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "tensor `%s`: a row of %llu bytes exceeds the pinned slot of %llu bytes "
                        "(half the staging budget, at most 8 MiB)",
                        pc.t->name, (unsigned long long)pc.rbytes, (unsigned long long)slot);
    else if (units)
        nloc = units <= head_u ? 1 : 1 + (units - head_u + full_u - 1) / full_u;
    if (st != LSL_OK)
        nloc = 0;
    MPI_Allreduce(&nloc, &nchunks, 1, MPI_UINT64_T, MPI_MAX, w->comm);
    const unsigned char *w0 = data;
    uint64_t rb = lora ? lora->rank * (lsl_dtype_bits(lora->b_dtype) / 8) : 0;
#define FIRST(ch) ((ch) == 0 ? 0 : head_u + ((ch)-1) * full_u)
#define COUNT(ch)                                                                                  \
    (units - FIRST(ch) < ((ch) == 0 ? head_u : full_u) ? units - FIRST(ch)                         \
                                                       : ((ch) == 0 ? head_u : full_u))
    double t_launch = 0;
    lsl_status st_launch = LSL_OK;
#define LAUNCH(ch)                                                                                 \
    (t_launch = lsl_i_now(), st_launch = LAUNCH_NOW(ch),                                           \
     w->prof[P_LAUNCH] += lsl_i_now() - t_launch, st_launch)
#define LAUNCH_NOW(ch)                                                                             \
    (src ? lsl_i_cuda_stage(w->cuda, (int)((ch) % 2), src->fd, src->off + FIRST(ch) * unit,        \
                            src->path, pc.t->dtype, COUNT(ch) * unit, lora, a_dev,                 \
                            b ? b + FIRST(ch) * rb : NULL, lora ? COUNT(ch) : 0, pc.relems)        \
         : lsl_i_cuda_launch(w->cuda, (int)((ch) % 2), stream, pc.t->dtype, w0 + FIRST(ch) * unit, \
                             COUNT(ch) * unit, lora, a_dev, b ? b + FIRST(ch) * rb : NULL,         \
                             lora ? COUNT(ch) : 0, pc.relems))
    int pending[2] = {0, 0};
    if (st == LSL_OK && nloc > 0)
        pending[0] = (st = LAUNCH(0)) == LSL_OK;
    for (uint64_t c = 0; c < nchunks; c++) {
        const void *buf = NULL;
        uint64_t bad = 0;
        int crc_done = 0;
        /* File chunks: the slot of chunk c + 1 is free only once chunk c - 1 is written, so the
         * read of c + 1 is posted after c is ready and overlaps c's write.  Device chunks are
         * queued one ahead on the caller's stream. */
        if (!src && st == LSL_OK && c + 1 < nloc)
            pending[(c + 1) % 2] = (st = LAUNCH(c + 1)) == LSL_OK;
        if (pending[c % 2]) {
            pending[c % 2] = 0;
            double t0 = lsl_i_now();
            lsl_status ws = lsl_i_cuda_wait(w->cuda, (int)(c % 2), &buf, &bad, &pc.crc, &crc_done);
            w->prof[P_GPU_WAIT] += lsl_i_now() - t0;
            ws = ws == LSL_ERR_NONFINITE ? nonfinite(&pc, lora ? FIRST(c) : 0, bad) : ws;
            st = st == LSL_OK ? ws : st;
        }
        if (src && st == LSL_OK && c + 1 < nloc)
            pending[(c + 1) % 2] = (st = LAUNCH(c + 1)) == LSL_OK;
        put_write(w, &pc, c < nloc ? FIRST(c) * unit : 0, buf, c < nloc ? COUNT(c) * unit : 0,
                  crc_done, &st);
    }
    for (int k = 0; k < 2; k++) /* a failure left a chunk in flight: it must land first */
        if (pending[k])
            lsl_i_cuda_drain(w->cuda, k);
#undef LAUNCH
#undef LAUNCH_NOW
#undef FIRST
#undef COUNT
    LSL_TRY(put_end(w, index, &pc, lora, st));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    return rc;
}

lsl_status lsl_i_writer_put_device(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                                   const lsl_i_src *src, const lsl_lora_part *lora,
                                   lsl_status local_st)
{
    return put_device(w, index, row0, nrows, NULL, NULL, src, lora, local_st);
}
#endif

/* One put from the caller's memory, host or device; st is this rank's status so far. */
static lsl_status put_one(lsl_writer *w, uint64_t index, const lsl_part *part, lsl_status st)
{
    lsl_i_src src = {NULL, -1, 0, NULL};
    static const unsigned char empty = 0;
    if (st == LSL_OK && !part)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_all: part is NULL");
#ifdef LSL_HAVE_CUDA
    /* Every rank must take the same path: the memory space is logically collective. */
    int dev = part && part->mem == LSL_MEM_DEVICE, any = 0;
    MPI_Allreduce(&dev, &any, 1, MPI_INT, MPI_MAX, w->comm);
    if (any)
        return put_device(w, index, part ? part->row0 : 0, part ? part->nrows : 0,
                          part ? part->data : NULL, part ? part->stream : NULL, NULL,
                          part ? part->lora : NULL,
                          st     ? st
                          : !dev ? lsl_i_fail(LSL_ERR_INCONSISTENT,
                                              "some ranks passed device memory, this one host")
                                 : LSL_OK);
#else
    if (part && part->mem != LSL_MEM_HOST)
        st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                        "device pointers need a build with CUDA (this one has none)");
#endif
    if (st == LSL_OK)
        src.mem = part->data ? part->data : (part->nrows ? NULL : &empty);
    return lsl_i_writer_put(w, index, part && !st ? part->row0 : 0, part && !st ? part->nrows : 0,
                            &src, part && !st ? part->lora : NULL, st);
}

/* A part whose LoRA carries flag bits the API does not define is refused (fn: the public call),
 * so the library's internal bits cannot arrive from a caller. */
static lsl_status check_lora_flags(const lsl_part *part, const char *fn)
{
    if (part && part->lora && (part->lora->flags & ~LSL_LORA_PUBLIC_FLAGS))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: unknown LoRA flags 0x%x", fn,
                          part->lora->flags & ~LSL_LORA_PUBLIC_FLAGS);
    return LSL_OK;
}

lsl_status lsl_writer_put_all(lsl_writer *w, uint64_t index, const lsl_part *part)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_all: writer is NULL");
    lsl_i_clear_error();
    return put_one(w, index, part, check_lora_flags(part, "lsl_writer_put_all"));
}

lsl_status lsl_i_writer_gather(lsl_writer *w, uint64_t n, const lsl_i_ashard *s,
                               lsl_status local_st)
{
    double t0 = lsl_i_now();
    lsl_status st = lsl_i_gather_a_batch(w->comm, n, s, local_st);
    w->prof[P_GATHER] += lsl_i_now() - t0;
    return st;
}

#ifdef LSL_HAVE_CUDA
/* Batched put, over NCCL: the device A's in FSDP row shards, when NCCL serves this job, in one
 * NCCL group; gpu[i] receives their whole A (device memory of the writer's CUDA context). */
static lsl_status gather_batch_nccl(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                    const lsl_part *parts, void **gpu, lsl_status st)
{
    int dev = 0, any = 0;
    for (uint64_t i = 0; i < n; i++)
        dev |= parts[i].lora && parts[i].mem == LSL_MEM_DEVICE;
    MPI_Allreduce(&dev, &any, 1, MPI_INT, MPI_MAX, w->comm);
    if (!any)
        return st;
    lsl_status rc = open_cuda(w);
    if (rc != LSL_OK)
        return rc;
    const lsl_lora_part **l = lsl_i_calloc(n + 1, sizeof *l);
    uint64_t *in = lsl_i_calloc(n + 1, sizeof *in);
    if ((!l || !in) && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        if (parts[i].mem == LSL_MEM_DEVICE && indices[i] < w->n) {
            l[i] = parts[i].lora;
            in[i] = lsl_i_row_elems(&w->t[indices[i]]);
        }
    double t0 = lsl_i_now();
    rc = lsl_i_cuda_gather_a_batch(w->cuda, w->comm, st == LSL_OK ? n : 0, l, in, gpu, st);
    w->prof[P_GATHER] += lsl_i_now() - t0;
    free(l);
    free(in);
    return rc;
}
#endif

/* Batched put, step one: every LoRA part's A gathered in one collective step: over NCCL into
 * gpu[i] where it can (gather_batch_nccl), the rest into host memory, full[i] (NULL for a part
 * without LoRA). */
static lsl_status gather_batch(lsl_writer *w, uint64_t n, const uint64_t *indices,
                               const lsl_part *parts, void **full, void **gpu, lsl_status st)
{
#ifdef LSL_HAVE_CUDA
    st = gather_batch_nccl(w, n, indices, parts, gpu, st);
    if (st != LSL_OK)
        return st; /* agreed */
#endif
    lsl_i_ashard *sh = lsl_i_calloc(n + 1, sizeof *sh);
    void **dl = lsl_i_calloc(n + 1, sizeof *dl); /* host copies of device shards */
    uint64_t k = 0;
    if (!sh || !dl)
        st = st ? st : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++) {
        const lsl_lora_part *l = parts[i].lora;
        if (!l || gpu[i])
            continue;
        if (indices[i] >= w->n) {
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor index %llu out of range (%llu tensors)",
                            (unsigned long long)indices[i], (unsigned long long)w->n);
            break;
        }
        sh[k] = lsl_i_ashard_of(l, lsl_i_row_elems(&w->t[indices[i]]));
        full[i] = sh[k].full;
        if (!full[i] || (l->a_count && !l->a)) {
            st = !full[i] ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A")
                          : lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA A is NULL",
                                       w->t[indices[i]].name);
            break;
        }
        if (parts[i].mem == LSL_MEM_DEVICE) {
#ifdef LSL_HAVE_CUDA
            uint64_t mine = lsl_i_ashard_bytes(&sh[k]);
            if (!(dl[i] = lsl_i_malloc(mine + 1)))
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A");
            else
                st = lsl_i_cuda_download(dl[i], l->a, mine);
            sh[k].mine = dl[i];
#else
            st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                            "device pointers need a build with CUDA (this one has none)");
#endif
        }
        k++;
    }
    /* A rank that failed joins with no shards; the gather's agreement fails everyone. */
    uint64_t kmax = 0;
    MPI_Allreduce(&k, &kmax, 1, MPI_UINT64_T, MPI_MAX, w->comm);
    if (st == LSL_OK && k != kmax)
        st = lsl_i_fail(LSL_ERR_INCONSISTENT,
                        "ranks passed LoRA factors for different tensors of the batch");
    st = lsl_i_writer_gather(w, st == LSL_OK ? k : 0, sh, st);
    for (uint64_t i = 0; dl && i < n; i++)
        free(dl[i]);
    free(dl);
    free(sh);
    return st;
}

lsl_status lsl_writer_put_batch_all(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                    const lsl_part *parts)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_batch_all: writer is NULL");
    lsl_i_clear_error();
    lsl_status rc = LSL_OK, st = LSL_OK;
    void **full = lsl_i_calloc(n + 1, sizeof *full), **gpu = lsl_i_calloc(n + 1, sizeof *gpu);
    lsl_lora_part *lp = lsl_i_calloc(n + 1, sizeof *lp);
    lsl_part *pp = lsl_i_calloc(n + 1, sizeof *pp);
    int64_t v[2] = {(int64_t)n, -(int64_t)n}, vmax[2];
    MPI_Allreduce(v, vmax, 2, MPI_INT64_T, MPI_MAX, w->comm);
    if (!full || !gpu || !lp || !pp)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (vmax[0] != -vmax[1])
        st = lsl_i_fail(LSL_ERR_INCONSISTENT, "ranks passed batches of different lengths");
    else if (w->state != W_DEFINED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "put before define or after a failure");
    else if (n && (!indices || !parts))
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_batch_all: indices or parts is NULL");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        st = check_lora_flags(&parts[i], "lsl_writer_put_batch_all");
    /* A batch whose length or arrays cannot be trusted stops every rank before the gather. */
    LSL_TRY(lsl_i_agree(w->comm, st));
    LSL_TRY(gather_batch(w, n, indices, parts, full, gpu, LSL_OK));
    /* Step two: the puts, in order, with A already whole. */
    for (uint64_t i = 0; i < n; i++) {
        pp[i] = parts[i];
        if (parts[i].lora) {
            lp[i] = *parts[i].lora;
            lsl_i_lora_set_full(&lp[i], gpu[i] ? gpu[i] : full[i]);
            lp[i].flags |= gpu[i] ? LSL_I_LORA_A_GPU : 0;
            pp[i].lora = &lp[i];
        }
        LSL_TRY(put_one(w, indices[i], &pp[i], LSL_OK));
    }
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    for (uint64_t i = 0; full && i < n; i++)
        free(full[i]);
    free(full);
    free(gpu);
    free(lp);
    free(pp);
    return rc;
}

void lsl_writer_abort_all(lsl_writer **pw)
{
    if (!pw || !*pw)
        return;
    lsl_writer *w = *pw;
    if (w->fh_open)
        MPI_File_close(&w->fh);
    MPI_Barrier(w->comm);
    writer_free(w); /* removes the temporary */
    *pw = NULL;
}

static lsl_status publish(lsl_writer *w)
{
    lsl_status rc = lsl_i_h5_finish(w->out.tmp, w->n, w->t, w->fin);
    return rc == LSL_OK ? lsl_i_out_publish(&w->out, w->cfg.overwrite) : rc;
}

/* Collective: the slowest rank's figure for each phase. */
static void report_profile(lsl_writer *w)
{
    if (!w->profile)
        return;
    double mine[P_COUNT + 1], mx[P_COUNT + 1], total = lsl_i_now() - w->t0, sum = 0;
    for (int i = 0; i < P_COUNT; i++)
        sum += mine[i] = w->prof[i];
    mine[P_COUNT] = total - sum; /* in none of the phases, outside the puts */
    MPI_Reduce(mine, mx, P_COUNT + 1, MPI_DOUBLE, MPI_MAX, 0, w->comm);
    if (w->rank != 0)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "loraslab: profile (max over ranks, s):");
    for (int i = 0; i <= P_COUNT && n > 0 && (size_t)n < sizeof line; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, " %s %.3f,",
                      i < P_COUNT ? phase_name[i] : "other", mx[i]);
    fprintf(stderr, "%s total %.3f\n", line, total);
}

lsl_status lsl_writer_close_all(lsl_writer **pw)
{
    if (!pw || !*pw)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_close_all: writer is NULL");
    lsl_writer *w = *pw;
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_i_clear_error();
    if (w->state != W_DEFINED) {
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, w->state == W_FAILED
                                                 ? "close after a failed call: the file was removed"
                                                 : "close before define");
    } else {
        for (uint64_t i = 0; i < w->n; i++)
            if (!w->done[i]) {
                st = lsl_i_fail(LSL_ERR_WRONG_STATE,
                                "tensor `%s` (and maybe others) was never written; the file "
                                "would be incomplete",
                                w->t[i].name);
                break;
            }
    }
    double tc = lsl_i_now();
    if (w->fh_open) {
        int mrc = MPI_File_close(&w->fh);
        w->fh_open = 0;
        if (mrc != MPI_SUCCESS && st == LSL_OK)
            st = lsl_i_mpi_fail(mrc, "MPI_File_close of the output");
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    if (w->rank == 0)
        st = publish(w);
    LSL_TRY(lsl_i_agree(w->comm, st));
    w->prof[P_CLOSE] = lsl_i_now() - tc;
    report_profile(w);
#ifdef LSL_HAVE_CUDA
    if (w->cuda && w->rank == 0 && w->cfg.quiet == LSL_PROGRESS_TEXT) {
        uint64_t nn, nm;
        lsl_i_cuda_gathers(w->cuda, &nn, &nm);
        fprintf(stderr, "loraslab: LoRA A gathers: %llu over NCCL, %llu through host memory\n",
                (unsigned long long)nn, (unsigned long long)nm);
    }
#endif
    writer_free(w);
    *pw = NULL;
    return LSL_OK;
fail:
    writer_free(w); /* removes the temporary */
    *pw = NULL;
    return rc;
}
