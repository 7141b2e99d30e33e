/* The sink for what the library says besides errors (lsl_set_log): stderr unless the caller
 * installed one, so a job embedding loraslab can route progress and warnings to its own log. */
#include "lsl_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lsl_log_fn g_fn;
static void *g_ctx;
static int g_open; /* a progress line is on the terminal, not ended yet */

void lsl_set_log(lsl_log_fn fn, void *ctx)
{
    g_fn = fn;
    g_ctx = ctx;
}

void lsl_i_log(int level, const char *fmt, ...)
{
    char small[1024], *line = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof small) { /* a long line (a profile, a path): the whole of it */
        char *big = malloc((size_t)n + 1);
        if (big) {
            va_start(ap, fmt);
            vsnprintf(big, (size_t)n + 1, fmt, ap);
            va_end(ap);
            line = big;
        } else {
            n = (int)sizeof small - 1;
        }
    }
    while (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    if (g_fn) {
        g_fn(level, line, g_ctx);
    } else { /* one call per line: stderr is unbuffered, and a line must not be torn */
        fprintf(stderr, "%s%s\n", g_open ? "\n" : "", line);
        g_open = 0;
    }
    if (line != small)
        free(line);
}

void lsl_i_log_progress(const char *line, bool last)
{
    if (g_fn || !isatty(STDERR_FILENO)) { /* a log or a pipe: a line per update */
        lsl_i_log(LSL_LOG_INFO, "%s", line);
        return;
    }
    /* a terminal: the line rewritten in place (carriage return, erase to its end) */
    fprintf(stderr, "\r%s\033[K%s", line, last ? "\n" : "");
    g_open = !last;
}
