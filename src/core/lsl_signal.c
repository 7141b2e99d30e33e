/* The registry of temporaries and the chaining signal handlers (lsl_signal.h, loraslab.h). */
#define _GNU_SOURCE /* getdents64 through syscall */
#include "lsl_signal.h"

#include "lsl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Fixed storage, no allocation: lsl_remove_temporaries() runs in a signal handler and may only
 * call async-signal-safe functions.  A slot's path is written before its kind says it is live. */
#define SLOTS 16
static char g_path[SLOTS][PATH_MAX];
static volatile sig_atomic_t g_kind[SLOTS]; /* 0 free, 1 file, 2 directory */

int lsl_i_watch(const char *tmp, int is_dir)
{
    if (strlen(tmp) >= PATH_MAX)
        return -1;
    for (int i = 0; i < SLOTS; i++)
        if (!g_kind[i]) {
            memcpy(g_path[i], tmp, strlen(tmp) + 1);
            g_kind[i] = is_dir ? 2 : 1;
            return i;
        }
    return -1;
}

void lsl_i_unwatch(int slot)
{
    if (slot >= 0 && slot < SLOTS)
        g_kind[slot] = 0;
}

/* Async-signal-safe: our temporary directories hold only files, so one getdents64 pass over
 * the directory and unlinkat of each entry empties it. */
static void remove_dir_signal_safe(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[4096];
        long n;
        while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
            for (long off = 0; off < n;) {
                struct {
                    unsigned long long ino;
                    long long off;
                    unsigned short reclen;
                    unsigned char type;
                    char name[];
                } *d = (void *)(buf + off);
                if (strcmp(d->name, ".") != 0 && strcmp(d->name, "..") != 0)
                    unlinkat(fd, d->name, 0);
                off += d->reclen;
            }
        close(fd);
    }
    rmdir(dir);
}

void lsl_remove_temporaries(void)
{
    int saved = errno;
    for (int i = 0; i < SLOTS; i++) {
        if (g_kind[i] == 1)
            unlink(g_path[i]);
        else if (g_kind[i] == 2)
            remove_dir_signal_safe(g_path[i]);
        g_kind[i] = 0;
    }
    errno = saved;
}

/* ---- handlers that chain --------------------------------------------------------------------
 * What was installed before ours, per signal, restored by the outermost lsl_signals_restore. */
static const int g_sigs[3] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction g_prev[3];
static volatile sig_atomic_t g_seen;
static int g_depth;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    int k = sig == SIGINT ? 0 : sig == SIGTERM ? 1 : 2;
    const struct sigaction *p = &g_prev[k];
    if (!(p->sa_flags & SA_SIGINFO) && p->sa_handler == SIG_IGN)
        return; /* the process ignores it: it goes on, and so does its output */
    g_seen = sig;
    lsl_remove_temporaries();
    if (p->sa_flags & SA_SIGINFO)
        p->sa_sigaction(sig, si, uc);
    else if (p->sa_handler == SIG_DFL)
        /* The default would end the process by the signal; an exit status of 128 + signal says
         * the same to a shell and to torchrun, and MPICH's mpiexec, which exited 0 in one run of
         * three when its ranks died of a signal it forwarded, always passes it on. */
        _exit(128 + sig);
    else
        p->sa_handler(sig);
}

lsl_status lsl_signals_install(void)
{
    lsl_status rc = LSL_OK;
    pthread_mutex_lock(&g_lock);
    if (g_depth++ == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigfillset(&sa.sa_mask); /* one handler at a time: the registry is not reentrant */
        g_seen = 0;
        for (int k = 0; k < 3 && rc == LSL_OK; k++)
            if (sigaction(g_sigs[k], &sa, &g_prev[k]) != 0)
                rc = lsl_i_fail_errno(LSL_ERR_IO, errno, "sigaction(%d)", g_sigs[k]);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void lsl_signals_restore(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_depth > 0 && --g_depth == 0)
        for (int k = 0; k < 3; k++) {
            struct sigaction cur;
            /* a handler someone set after ours is theirs: leave it */
            if (sigaction(g_sigs[k], NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
                cur.sa_sigaction == on_signal)
                sigaction(g_sigs[k], &g_prev[k], NULL);
        }
    pthread_mutex_unlock(&g_lock);
}

int lsl_signal_received(void)
{
    return g_seen;
}
