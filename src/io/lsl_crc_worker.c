#include "lsl_crc_worker.h"

#include "lsl_crc32c.h"

static void *crc_main(void *arg)
{
    lsl_i_crcw *c = arg;
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

void lsl_i_crcw_start(lsl_i_crcw *c)
{
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->running = pthread_create(&c->th, NULL, crc_main, c) == 0;
}

void lsl_i_crcw_stop(lsl_i_crcw *c)
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

void lsl_i_crcw_post(lsl_i_crcw *c, uint32_t crc, const void *buf, uint64_t n)
{
    pthread_mutex_lock(&c->mu);
    c->crc = crc;
    c->buf = buf;
    c->n = n;
    c->state = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

uint32_t lsl_i_crcw_wait(lsl_i_crcw *c)
{
    pthread_mutex_lock(&c->mu);
    while (c->state != 2)
        pthread_cond_wait(&c->cv, &c->mu);
    c->state = 0;
    uint32_t r = c->crc;
    pthread_mutex_unlock(&c->mu);
    return r;
}
