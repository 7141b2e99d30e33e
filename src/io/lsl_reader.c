#include "lsl_reader.h"

#include <pthread.h>
#include <stdlib.h>

enum { IDLE, POSTED, DONE };

struct lsl_i_reader {
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state, quit;
    /* the job, and what the thread found (it cannot set the caller's thread-local message) */
    int fd, err;
    uint64_t off, n, at;
    void *dst;
    const char *path;
};

static void *reader_main(void *arg)
{
    lsl_i_reader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (r->state != POSTED && !r->quit)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->state != POSTED)
            break;
        pthread_mutex_unlock(&r->mu);
        uint64_t at = 0;
        int err = lsl_i_pread_raw(r->fd, r->dst, r->n, r->off, &at);
        pthread_mutex_lock(&r->mu);
        r->err = err;
        r->at = at;
        r->state = DONE;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

lsl_status lsl_i_reader_start(lsl_i_reader **out)
{
    lsl_i_reader *r = lsl_i_calloc(1, sizeof *r);
    *out = NULL;
    if (!r)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    if (pthread_mutex_init(&r->mu, NULL)) {
        free(r);
        return lsl_i_fail(LSL_ERR_NOMEM, "cannot start the reader thread");
    }
    if (pthread_cond_init(&r->cv, NULL)) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return lsl_i_fail(LSL_ERR_NOMEM, "cannot start the reader thread");
    }
    if (pthread_create(&r->thr, NULL, reader_main, r)) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return lsl_i_fail(LSL_ERR_NOMEM, "cannot start the reader thread");
    }
    *out = r;
    return LSL_OK;
}

void lsl_i_reader_stop(lsl_i_reader **pr)
{
    if (!pr || !*pr)
        return;
    lsl_i_reader *r = *pr;
    pthread_mutex_lock(&r->mu);
    r->quit = 1; /* a posted read is finished first: its buffer may be freed after this */
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thr, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    *pr = NULL;
}

void lsl_i_reader_post(lsl_i_reader *r, int fd, uint64_t off, uint64_t n, void *dst,
                       const char *path)
{
    pthread_mutex_lock(&r->mu);
    r->fd = fd;
    r->off = off;
    r->n = n;
    r->dst = dst;
    r->path = path;
    r->state = POSTED;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

lsl_status lsl_i_reader_join(lsl_i_reader *r, int report)
{
    pthread_mutex_lock(&r->mu);
    while (r->state == POSTED)
        pthread_cond_wait(&r->cv, &r->mu);
    int was = r->state, err = r->err;
    uint64_t at = r->at;
    r->state = IDLE;
    pthread_mutex_unlock(&r->mu);
    if (was != DONE || !err)
        return LSL_OK;
    return report ? lsl_i_pread_error(err, at, r->path) : LSL_ERR_IO;
}
