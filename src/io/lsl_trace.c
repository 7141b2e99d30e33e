/* The write trace (lsl_trace.h). */
#include "lsl_trace.h"

#include "lsl_internal.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_buf;
static size_t g_len, g_cap;
static int g_dropped;

int lsl_i_trace_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *t = lsl_i_env(LSL_ENV_TRACE);
        on = t && *t;
    }
    return on;
}

double lsl_i_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* JSON string body of s: the names are UTF-8 (checked at create); quote and backslash and
 * control bytes escaped. */
static size_t escaped(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            n += (size_t)snprintf(out + n, cap - n, "\\%c", ch);
        else if (ch < 0x20)
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        else
            out[n++] = (char)ch;
    }
    out[n] = '\0';
    return n;
}

void lsl_i_trace_write(int rank, const char *file, uint64_t call, uint64_t off, uint64_t len,
                       const char *what, double t0, double t1)
{
    char name[1024], w[600] = "", line[2000];
    escaped(name, sizeof name, file ? file : "");
    if (what) {
        char e[560];
        escaped(e, sizeof e, what);
        snprintf(w, sizeof w, ",\"what\":\"%s\"", e);
    }
    int n = snprintf(line, sizeof line,
                     "{\"rank\":%d,\"file\":\"%s\",\"call\":%llu,\"offset\":%llu,\"length\":%llu%s,"
                     "\"t0\":%.6f,\"t1\":%.6f}\n",
                     rank, name, (unsigned long long)call, (unsigned long long)off,
                     (unsigned long long)len, w, t0, t1);
    if (n <= 0 || (size_t)n >= sizeof line)
        return;
    pthread_mutex_lock(&g_mu);
    if (g_len + (size_t)n > g_cap) {
        size_t cap = g_cap ? g_cap * 2 : 1 << 16;
        while (cap < g_len + (size_t)n)
            cap *= 2;
        char *nb = realloc(g_buf, cap); /* not lsl_i_realloc: LSL_FAULT must not count it */
        if (!nb) {
            g_dropped = 1;
            pthread_mutex_unlock(&g_mu);
            return;
        }
        g_buf = nb;
        g_cap = cap;
    }
    memcpy(g_buf + g_len, line, (size_t)n);
    g_len += (size_t)n;
    pthread_mutex_unlock(&g_mu);
}

void lsl_i_trace_flush(int rank)
{
    if (!lsl_i_trace_on())
        return;
    const char *spec = lsl_i_env(LSL_ENV_TRACE);
    char path[4096];
    const char *r = strstr(spec, "%r");
    if (r)
        snprintf(path, sizeof path, "%.*s%d%s", (int)(r - spec), spec, rank, r + 2);
    else
        snprintf(path, sizeof path, "%s", spec);
    pthread_mutex_lock(&g_mu);
    int fd = g_len ? open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666) : -1;
    size_t done = 0;
    while (fd >= 0 && done < g_len) { /* one write on a local filesystem: lines never torn */
        ssize_t w = write(fd, g_buf + done, g_len - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    if (g_len && (fd < 0 || done < g_len))
        lsl_i_log(LSL_LOG_WARN, "loraslab: warning: rank %d: cannot append to LSL_TRACE=%s", rank,
                  path);
    if (g_dropped)
        lsl_i_log(LSL_LOG_WARN, "loraslab: warning: rank %d: out of memory, trace records lost",
                  rank);
    if (fd >= 0)
        close(fd);
    g_len = 0;
    g_dropped = 0;
    pthread_mutex_unlock(&g_mu);
}
