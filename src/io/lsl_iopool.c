/* The write pool (lsl_iopool.h): requests in a fixed table, taken oldest first among the files
 * no thread is writing, so one file's writes keep their order and a slow file does not hold the
 * others up. */
#include "lsl_iopool.h"

#include "lsl_trace.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { R_FREE, R_QUEUED, R_RUNNING };

typedef struct req {
    int state;
    uint32_t file;
    uint64_t seq, off, count;
    const unsigned char *buf;
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

/* The oldest queued request whose file no thread is writing, or -1. */
static int pick(lsl_i_iopool *p)
{
    int best = -1;
    for (int i = 0; i < LSL_I_IOPOOL_DEPTH; i++)
        if (p->r[i].state == R_QUEUED && !p->busy[p->r[i].file] &&
            (best < 0 || p->r[i].seq < p->r[best].seq))
            best = i;
    return best;
}

static void *run(void *arg)
{
    lsl_i_iopool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int i;
        while (!p->stop && (i = pick(p)) < 0)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->stop && (i = pick(p)) < 0)
            break;
        req *q = &p->r[i];
        q->state = R_RUNNING;
        p->busy[q->file] = 1;
        int skip = p->st != LSL_OK; /* after a failure nothing more is written */
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
        if (st != LSL_OK && p->st == LSL_OK) {
            p->st = st;
            snprintf(p->msg, sizeof p->msg, "%s", lsl_last_error());
        }
        if (!skip && q->count)
            p->wrote[q->file] = 1;
        p->busy[q->file] = 0;
        q->state = R_FREE;
        p->inflight--;
        pthread_cond_broadcast(&p->done);
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

lsl_status lsl_i_iopool_post(lsl_i_iopool *p, uint32_t file, uint64_t off, const void *buf,
                             uint64_t count, const char *what)
{
    pthread_mutex_lock(&p->mu);
    while (p->inflight == LSL_I_IOPOOL_DEPTH && p->st == LSL_OK)
        pthread_cond_wait(&p->done, &p->mu);
    lsl_status st = failed(p);
    if (st == LSL_OK && count) {
        int i = 0;
        while (p->r[i].state != R_FREE)
            i++;
        req *q = &p->r[i];
        q->state = R_QUEUED;
        q->file = file;
        q->off = off;
        q->count = count;
        q->buf = buf;
        q->seq = p->seq++;
        snprintf(q->what, sizeof q->what, "%s", what ? what : "data");
        p->inflight++;
        pthread_cond_signal(&p->work);
    }
    pthread_mutex_unlock(&p->mu);
    return st;
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
