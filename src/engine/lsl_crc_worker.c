#include "lsl_crc_worker.h"

#include "lsl_crc32c.h"

static void crc_job(void *arg)
{
    lsl_i_crcw *c = arg;
    c->crc = lsl_crc32c_extend(c->crc, c->buf, c->n);
}

void lsl_i_crcw_start(lsl_i_crcw *c)
{
    c->running = lsl_i_worker_start(&c->w) == 0;
}

void lsl_i_crcw_stop(lsl_i_crcw *c)
{
    lsl_i_worker_stop(&c->w);
    c->running = 0;
}

void lsl_i_crcw_post(lsl_i_crcw *c, uint32_t crc, const void *buf, uint64_t n)
{
    lsl_i_worker_wait(&c->w); /* the job's fields are the thread's until then */
    c->crc = crc;
    c->buf = buf;
    c->n = n;
    lsl_i_worker_post(&c->w, crc_job, c);
}

uint32_t lsl_i_crcw_wait(lsl_i_crcw *c)
{
    lsl_i_worker_wait(&c->w);
    return c->crc;
}
