#include "lsl_reader.h"

#include "lsl_worker.h"

#include <stdlib.h>

struct lsl_i_reader {
    lsl_i_worker w;
    int posted;
    /* the job, and what the thread found (it cannot set the caller's thread-local message) */
    int fd, err;
    uint64_t off, n, at;
    void *dst;
    const char *path;
};

static void read_job(void *arg)
{
    lsl_i_reader *r = arg;
    r->at = 0;
    r->err = lsl_i_pread_raw(r->fd, r->dst, r->n, r->off, &r->at);
}

lsl_status lsl_i_reader_start(lsl_i_reader **out)
{
    lsl_i_reader *r = lsl_i_calloc(1, sizeof *r);
    *out = NULL;
    if (!r)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    int e = lsl_i_worker_start(&r->w);
    if (e) {
        free(r);
        return lsl_i_fail_errno(LSL_ERR_NOMEM, e, "cannot start the reader thread");
    }
    *out = r;
    return LSL_OK;
}

void lsl_i_reader_stop(lsl_i_reader **pr)
{
    if (!pr || !*pr)
        return;
    lsl_i_worker_stop(&(*pr)->w); /* a posted read is finished first: its buffer may go after */
    free(*pr);
    *pr = NULL;
}

void lsl_i_reader_post(lsl_i_reader *r, int fd, uint64_t off, uint64_t n, void *dst,
                       const char *path)
{
    lsl_i_worker_wait(&r->w);
    r->fd = fd;
    r->off = off;
    r->n = n;
    r->dst = dst;
    r->path = path;
    r->posted = 1;
    lsl_i_worker_post(&r->w, read_job, r);
}

lsl_status lsl_i_reader_join(lsl_i_reader *r, int report)
{
    lsl_i_worker_wait(&r->w);
    int was = r->posted;
    r->posted = 0;
    if (!was || !r->err)
        return LSL_OK;
    return report ? lsl_i_pread_error(r->err, r->at, r->path) : LSL_ERR_IO;
}
