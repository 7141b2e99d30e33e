/* The write pool (lsl_iopool.h): requests in a fixed table; a write is taken oldest first among
 * the files no thread is writing (so a slow file does not hold the others up), a copy's read by
 * any thread before that.  Positional writes to disjoint ranges: their order does not matter. */
#include "lsl_iopool.h"

#include "lsl_crc32c.h"
#include "lsl_trace.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A copy is read (any thread, any time) before it waits for its file like a plain write. */
enum { R_FREE, R_QUEUED, R_READING, R_READY, R_RUNNING };

typedef struct req {
    int state;
    uint32_t file;
    uint64_t seq, off, count;
    const unsigned char *buf;
    int src_fd; /* a copy: read first (-1: a plain write) */
    uint64_t src_off;
    const char *src_name;
    uint32_t *crc;
    char what[240];
} req;

struct lsl_i_iopool {
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    pthread_t *threads;
    int nthreads, stop, rank;
    uint32_t nfiles;
    const int *fds;
    const char *const *names;
    unsigned char *busy, *wrote;
    req r[LSL_I_IOPOOL_DEPTH];
    uint64_t seq, calls;
    int inflight;
    lsl_status st;
    char msg[1024];
};

/* The next step: the oldest write (a plain one, or a copy already read) whose file no thread is
 * writing, *read = 0; else the oldest copy still to read, *read = 1; or -1. */
static int pick(lsl_i_iopool *p, int *read)
{
    int best = -1;
    for (int i = 0; i < LSL_I_IOPOOL_DEPTH; i++) {
        const req *q = &p->r[i];
        int ready = (q->state == R_QUEUED && q->src_fd < 0) || q->state == R_READY;
        if (ready && !p->busy[q->file] && (best < 0 || q->seq < p->r[best].seq))
            best = i;
    }
    *read = 0;
    if (best >= 0)
        return best;
    for (int i = 0; i < LSL_I_IOPOOL_DEPTH; i++) {
        const req *q = &p->r[i];
        if (q->state == R_QUEUED && q->src_fd >= 0 && (best < 0 || q->seq < p->r[best].seq))
            best = i;
    }
    *read = best >= 0;
    return best;
}

/* Under the lock: request q is done (written, or dropped after a failure). */
static void retire(lsl_i_iopool *p, req *q)
{
    q->state = R_FREE;
    p->inflight--;
    pthread_cond_broadcast(&p->done);
}

/* Under the lock: the first failure and its message (this thread's) are the pool's. */
static void note(lsl_i_iopool *p, lsl_status st)
{
    if (st != LSL_OK && p->st == LSL_OK) {
        p->st = st;
        snprintf(p->msg, sizeof p->msg, "%s", lsl_last_error());
    }
}

static void *run(void *arg)
{
    lsl_i_iopool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int i, read = 0;
        while (!p->stop && (i = pick(p, &read)) < 0)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->stop && (i = pick(p, &read)) < 0)
            break;
        req *q = &p->r[i];
        int skip = p->st != LSL_OK; /* after a failure nothing more is read or written */
        if (read) {
            q->state = R_READING;
            pthread_mutex_unlock(&p->mu);
            lsl_status st = skip ? LSL_OK
                                 : lsl_i_pread_full(q->src_fd, (void *)q->buf, q->count, q->src_off,
                                                    q->src_name);
            if (st == LSL_OK && !skip && q->crc)
                *q->crc = lsl_crc32c_extend(0, q->buf, q->count);
            pthread_mutex_lock(&p->mu);
            note(p, st);
            if (skip || st != LSL_OK)
                retire(p, q);
            else
                q->state = R_READY;
            pthread_cond_broadcast(&p->work); /* a write may be ready */
            continue;
        }
        q->state = R_RUNNING;
        p->busy[q->file] = 1;
        uint64_t call = p->calls++;
        pthread_mutex_unlock(&p->mu);
        lsl_status st = LSL_OK;
        if (!skip) {
            char msg[512];
            double t0 = lsl_i_wall();
            snprintf(msg, sizeof msg, "%s: writing %s", p->names[q->file], q->what);
            st = lsl_i_pwrite_full(p->fds[q->file], q->buf, q->count, q->off, msg);
            if (lsl_i_trace_on())
                lsl_i_trace_write(p->rank, p->names[q->file], call, q->off, q->count, q->what, t0,
                                  lsl_i_wall());
        }
        pthread_mutex_lock(&p->mu);
        note(p, st);
        if (!skip && q->count)
            p->wrote[q->file] = 1;
        p->busy[q->file] = 0;
        retire(p, q);
        pthread_cond_broadcast(&p->work); /* the file is free for another thread */
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Under the lock: the pool's failure, with its message now this thread's. */
static lsl_status failed(lsl_i_iopool *p)
{
    return p->st == LSL_OK ? LSL_OK : lsl_i_fail(p->st, "%s", p->msg);
}

int lsl_i_iopool_threads(void)
{
    const char *env = lsl_i_env(LSL_ENV_IO_THREADS);
    int n = env ? atoi(env) : 0;
    return n > 0 ? n : 8;
}

lsl_status lsl_i_iopool_start(int threads, uint32_t nfiles, const int *fds,
                              const char *const *names, int rank, lsl_i_iopool **out)
{
    *out = NULL;
    if (threads < 1)
        threads = 1;
    if (threads > 64)
        threads = 64;
    lsl_i_iopool *p = lsl_i_calloc(1, sizeof *p);
    if (!p)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    p->busy = lsl_i_calloc(nfiles ? nfiles : 1, 1);
    p->wrote = lsl_i_calloc(nfiles ? nfiles : 1, 1);
    p->threads = lsl_i_calloc((size_t)threads, sizeof *p->threads);
    if (!p->busy || !p->wrote || !p->threads) {
        free(p->busy);
        free(p->wrote);
        free(p->threads);
        free(p);
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    p->nfiles = nfiles;
    p->rank = rank;
    p->fds = fds;
    p->names = names;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < threads; i++) {
        int e = pthread_create(&p->threads[i], NULL, run, p);
        if (e != 0) {
            *out = p;
            lsl_i_iopool_stop(out);
            return lsl_i_fail_errno(LSL_ERR_IO, e, "starting an I/O thread");
        }
        p->nthreads = i + 1;
    }
    *out = p;
    return LSL_OK;
}

static lsl_status post(lsl_i_iopool *p, const req *r)
{
    pthread_mutex_lock(&p->mu);
    while (p->inflight == LSL_I_IOPOOL_DEPTH && p->st == LSL_OK)
        pthread_cond_wait(&p->done, &p->mu);
    lsl_status st = failed(p);
    if (st == LSL_OK && r->count) {
        int i = 0;
        while (p->r[i].state != R_FREE)
            i++;
        p->r[i] = *r;
        p->r[i].state = R_QUEUED;
        p->r[i].seq = p->seq++;
        p->inflight++;
        pthread_cond_signal(&p->work);
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

lsl_status lsl_i_iopool_post(lsl_i_iopool *p, uint32_t file, uint64_t off, const void *buf,
                             uint64_t count, const char *what)
{
    req r = {0};
    r.file = file;
    r.off = off;
    r.count = count;
    r.buf = buf;
    r.src_fd = -1;
    snprintf(r.what, sizeof r.what, "%s", what ? what : "data");
    return post(p, &r);
}

lsl_status lsl_i_iopool_post_copy(lsl_i_iopool *p, uint32_t file, uint64_t off, void *buf,
                                  uint64_t count, int src_fd, uint64_t src_off,
                                  const char *src_name, uint32_t *crc, const char *what)
{
    req r = {0};
    r.file = file;
    r.off = off;
    r.count = count;
    r.buf = buf;
    r.src_fd = src_fd;
    r.src_off = src_off;
    r.src_name = src_name;
    r.crc = crc;
    snprintf(r.what, sizeof r.what, "%s", what ? what : "data");
    return post(p, &r);
}

static bool reads(const req *q, const unsigned char *b, uint64_t len)
{
    return q->state != R_FREE && q->buf < b + len && b < q->buf + q->count;
}

lsl_status lsl_i_iopool_fence(lsl_i_iopool *p, const void *buf, uint64_t len)
{
    const unsigned char *b = buf;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < LSL_I_IOPOOL_DEPTH; i++)
        while (reads(&p->r[i], b, len))
            pthread_cond_wait(&p->done, &p->mu);
    lsl_status st = failed(p);
    pthread_mutex_unlock(&p->mu);
    return st;
}

lsl_status lsl_i_iopool_fence_any(lsl_i_iopool *p, const void *const *bufs, int n, uint64_t len,
                                  int *which)
{
    pthread_mutex_lock(&p->mu);
    *which = -1;
    while (*which < 0 && n > 0) {
        for (int k = 0; k < n && *which < 0; k++) {
            int busy = 0;
            for (int i = 0; i < LSL_I_IOPOOL_DEPTH && !busy; i++)
                busy = reads(&p->r[i], bufs[k], len);
            if (!busy)
                *which = k;
        }
        if (*which < 0)
            pthread_cond_wait(&p->done, &p->mu);
    }
    lsl_status st = failed(p);
    pthread_mutex_unlock(&p->mu);
    return st;
}

lsl_status lsl_i_iopool_drain(lsl_i_iopool *p, unsigned char *wrote)
{
    pthread_mutex_lock(&p->mu);
    while (p->inflight > 0)
        pthread_cond_wait(&p->done, &p->mu);
    if (wrote)
        memcpy(wrote, p->wrote, p->nfiles);
    lsl_status st = failed(p);
    pthread_mutex_unlock(&p->mu);
    return st;
}

void lsl_i_iopool_stop(lsl_i_iopool **pp)
{
    if (!pp || !*pp)
        return;
    lsl_i_iopool *p = *pp;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->busy);
    free(p->wrote);
    free(p->threads);
    free(p);
    *pp = NULL;
}
