#define _GNU_SOURCE /* renameat2, copy_file_range */
#include "lsl_fault.h"
#include "lsl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const kind_name[LSL_FAULT_KINDS] = {"write", "malloc", "fsync", "rename"};
static uint64_t target[LSL_FAULT_KINDS]; /* 0: never */
static uint64_t count[LSL_FAULT_KINDS];
static int armed;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static long env_rank(void)
{
    static const char *const vars[] = {"PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                                       "SLURM_PROCID", "RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]))
            return strtol(getenv(vars[i]), NULL, 10);
    return 0;
}

static void arm(void)
{
    const char *spec = lsl_i_env(LSL_ENV_FAULT), *who = lsl_i_env(LSL_ENV_FAULT_RANK);
    if (!spec || !*spec || (who && *who && strtol(who, NULL, 10) != env_rank()))
        return;
    for (const char *p = spec; *p;) {
        for (int k = 0; k < LSL_FAULT_KINDS; k++) {
            size_t n = strlen(kind_name[k]);
            if (strncmp(p, kind_name[k], n) == 0 && (p[n] == ':' || p[n] == ',' || !p[n])) {
                target[k] = p[n] == ':' ? strtoull(p + n + 1, NULL, 10) : 1;
                armed = 1;
            }
        }
        const char *c = strchr(p, ',');
        p = c ? c + 1 : p + strlen(p);
    }
}

bool lsl_i_fault(lsl_i_fault_kind k)
{
    pthread_once(&once, arm);
    if (!armed || !target[k])
        return false;
    return __atomic_add_fetch(&count[k], 1, __ATOMIC_RELAXED) == target[k];
}

void *lsl_i_malloc(size_t n)
{
    return lsl_i_fault(LSL_FAULT_MALLOC) ? NULL : malloc(n);
}

void *lsl_i_calloc(size_t n, size_t size)
{
    return lsl_i_fault(LSL_FAULT_MALLOC) ? NULL : calloc(n, size);
}

void *lsl_i_realloc(void *p, size_t n)
{
    return lsl_i_fault(LSL_FAULT_MALLOC) ? NULL : realloc(p, n);
}

ssize_t lsl_i_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (lsl_i_fault(LSL_FAULT_WRITE))
        return errno = EIO, -1;
    return pwrite(fd, buf, n, off);
}

ssize_t lsl_i_write(int fd, const void *buf, size_t n)
{
    if (lsl_i_fault(LSL_FAULT_WRITE))
        return errno = EIO, -1;
    return write(fd, buf, n);
}

int lsl_i_fsync(int fd)
{
    if (lsl_i_fault(LSL_FAULT_FSYNC))
        return errno = EIO, -1;
    return fsync(fd);
}

int lsl_i_rename(const char *from, const char *to)
{
    if (lsl_i_fault(LSL_FAULT_RENAME))
        return errno = EIO, -1;
    return rename(from, to);
}

int lsl_i_rename_noreplace(const char *from, const char *to)
{
    if (lsl_i_fault(LSL_FAULT_RENAME))
        return errno = EIO, -1;
    return renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}

int lsl_i_rename_exchange(const char *a, const char *b)
{
    if (lsl_i_fault(LSL_FAULT_RENAME))
        return errno = EIO, -1;
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

ssize_t lsl_i_copy_file_range(int in, int64_t *in_off, int out, int64_t *out_off, size_t n)
{
    if (lsl_i_fault(LSL_FAULT_WRITE))
        return errno = EIO, -1;
    loff_t a = (loff_t)*in_off, b = (loff_t)*out_off;
    ssize_t c = copy_file_range(in, &a, out, &b, n, 0);
    *in_off = (int64_t)a;
    *out_off = (int64_t)b;
    return c;
}
