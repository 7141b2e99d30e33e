/* One helper thread that runs one job at a time beside the calling thread: the writer's CRC
 * worker, the offline jobs' reader and the GPU staging thread are this type with a job each.
 * The job (a struct the caller owns) carries its inputs and outputs; post hands it over, wait
 * takes it back once run, and the mutex makes the job's writes visible to the caller.  The
 * thread never calls MPI, and it cannot set the caller's thread-local error message: a job
 * records what went wrong and the caller reports it. */
#ifndef LSL_WORKER_H
#define LSL_WORKER_H

#include <pthread.h>

typedef void (*lsl_i_job_fn)(void *job);

typedef struct lsl_i_worker {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 idle, 1 posted, 2 done */
    int quit;
    int running; /* the thread was started (and not yet stopped) */
    lsl_i_job_fn fn;
    void *job;
} lsl_i_worker;

/* Starts the thread on a zeroed w.  Returns 0, or an errno value (w->running stays 0; stop is
 * then a no-op). */
int lsl_i_worker_start(lsl_i_worker *w);
/* Runs fn(job) on the thread.  One job at a time: a posted job is waited for first. */
void lsl_i_worker_post(lsl_i_worker *w, lsl_i_job_fn fn, void *job);
/* Waits until the posted job has run; at once when none is posted. */
void lsl_i_worker_wait(lsl_i_worker *w);
/* Lets a posted job finish (its buffers may be freed after this), stops and joins the thread,
 * and zeroes w.  A worker that never started is a no-op. */
void lsl_i_worker_stop(lsl_i_worker *w);

#endif
