/* The one-slot helper thread (lsl_worker.h). */
#include "lsl_worker.h"

#include <string.h>

enum { IDLE, POSTED, DONE };

static void *worker_main(void *arg)
{
    lsl_i_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->state != POSTED && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->state != POSTED)
            break; /* quit, with nothing posted: a posted job always runs first */
        lsl_i_job_fn fn = w->fn;
        void *job = w->job;
        pthread_mutex_unlock(&w->mu);
        fn(job);
        pthread_mutex_lock(&w->mu);
        w->state = DONE;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int lsl_i_worker_start(lsl_i_worker *w)
{
    int e = pthread_mutex_init(&w->mu, NULL);
    if (e)
        return e;
    if ((e = pthread_cond_init(&w->cv, NULL)) != 0) {
        pthread_mutex_destroy(&w->mu);
        return e;
    }
    if ((e = pthread_create(&w->th, NULL, worker_main, w)) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return e;
    }
    w->running = 1;
    return 0;
}

void lsl_i_worker_wait(lsl_i_worker *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->state == POSTED)
        pthread_cond_wait(&w->cv, &w->mu);
    w->state = IDLE;
    pthread_mutex_unlock(&w->mu);
}

void lsl_i_worker_post(lsl_i_worker *w, lsl_i_job_fn fn, void *job)
{
    lsl_i_worker_wait(w);
    pthread_mutex_lock(&w->mu);
    w->fn = fn;
    w->job = job;
    w->state = POSTED;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void lsl_i_worker_stop(lsl_i_worker *w)
{
    if (!w->running)
        return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    memset(w, 0, sizeof *w);
}
