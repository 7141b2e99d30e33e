/* Every environment variable the library reads, in one table: the settings a user may change
 * without a rebuild, each read through lsl_i_env, and a misspelt name reported instead of
 * silently doing nothing (LSL_PROFIL=1 at 2 a.m.). */
#include "lsl_internal.h"

#include <stdlib.h>
#include <string.h>

extern char **environ;

static const char *const g_names[LSL_ENV_COUNT] = {
    [LSL_ENV_FAULT] = "LSL_FAULT",                   /* fault injection (lsl_fault.c) */
    [LSL_ENV_FAULT_RANK] = "LSL_FAULT_RANK",         /* the rank LSL_FAULT applies to */
    [LSL_ENV_GATHER] = "LSL_GATHER",                 /* nccl | mpi: the device A gather */
    [LSL_ENV_IOPLAN] = "LSL_IOPLAN",                 /* off: no I/O plan (lsl_ioplan.h) */
    [LSL_ENV_IO_THREADS] = "LSL_IO_THREADS",         /* writer threads a rank (lsl_iopool.h) */
    [LSL_ENV_MPIIO_HINTS] = "LSL_MPIIO_HINTS",       /* key=value;... added to the file's */
    [LSL_ENV_NO_SPACE_CHECK] = "LSL_NO_SPACE_CHECK", /* 1: skip the free-space pre-check */
    [LSL_ENV_PROFILE] = "LSL_PROFILE",               /* 1 | 2: where the time went */
    [LSL_ENV_TRACE] = "LSL_TRACE",                   /* FILE: every data write (lsl_trace.h) */
};

/* Edit distance of a (n bytes) and b, capped at 3: a misspelling is 1 or 2 edits away from a
 * name the library reads, while other LSL_ variables (the test harness's, other software's)
 * are further. */
static int distance(const char *a, size_t n, const char *b)
{
    size_t m = strlen(b);
    if (n > 64 || m > 64 || (n > m ? n - m : m - n) > 2)
        return 3;
    int row[65];
    for (size_t j = 0; j <= m; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            best = up + 1 < best ? up + 1 : best;
            best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
            diag = up;
            row[j] = best;
        }
    }
    return row[m] < 3 ? row[m] : 3;
}

const char *lsl_i_env(lsl_i_env_var v)
{
    return v >= 0 && v < LSL_ENV_COUNT ? getenv(g_names[v]) : NULL;
}

void lsl_i_env_check(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "LSL_", 4) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
        int best = -1, bd = 3;
        for (int k = 0; k < LSL_ENV_COUNT && bd > 0; k++) {
            int d = distance(*e, n, g_names[k]);
            if (d < bd)
                bd = d, best = k;
        }
        if (bd > 0 && bd <= 2)
            lsl_i_log(LSL_LOG_WARN,
                      "loraslab: warning: %.*s is set, which loraslab does not read; did you "
                      "mean %s?",
                      (int)n, *e, g_names[best]);
    }
}
