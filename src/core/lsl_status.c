/* Status names, messages and cross-rank agreement on a status. */
#include "lsl_internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_msg[LSL_MSG_MAX];

const char *lsl_status_name(lsl_status st)
{
    switch (st) {
    case LSL_OK: return "LSL_OK";
    case LSL_ERR_INVALID_ARG: return "LSL_ERR_INVALID_ARG";
    case LSL_ERR_WRONG_STATE: return "LSL_ERR_WRONG_STATE";
    case LSL_ERR_SHAPE: return "LSL_ERR_SHAPE";
    case LSL_ERR_DTYPE: return "LSL_ERR_DTYPE";
    case LSL_ERR_UNSUPPORTED: return "LSL_ERR_UNSUPPORTED";
    case LSL_ERR_NOT_FOUND: return "LSL_ERR_NOT_FOUND";
    case LSL_ERR_EXISTS: return "LSL_ERR_EXISTS";
    case LSL_ERR_INCONSISTENT: return "LSL_ERR_INCONSISTENT";
    case LSL_ERR_MPI: return "LSL_ERR_MPI";
    case LSL_ERR_HDF5: return "LSL_ERR_HDF5";
    case LSL_ERR_CUDA: return "LSL_ERR_CUDA";
    case LSL_ERR_BLAS: return "LSL_ERR_BLAS";
    case LSL_ERR_NCCL: return "LSL_ERR_NCCL";
    case LSL_ERR_COMM: return "LSL_ERR_COMM";
    case LSL_ERR_NOMEM: return "LSL_ERR_NOMEM";
    case LSL_ERR_IO: return "LSL_ERR_IO";
    case LSL_ERR_NOSPACE: return "LSL_ERR_NOSPACE";
    case LSL_ERR_INTERRUPTED: return "LSL_ERR_INTERRUPTED";
    case LSL_ERR_FORMAT: return "LSL_ERR_FORMAT";
    case LSL_ERR_CORRUPT: return "LSL_ERR_CORRUPT";
    case LSL_ERR_NONFINITE: return "LSL_ERR_NONFINITE";
    }
    return "LSL_ERR_UNKNOWN";
}

const char *lsl_strerror(lsl_status st)
{
    switch (st) {
    case LSL_OK: return "success";
    case LSL_ERR_INVALID_ARG: return "invalid argument";
    case LSL_ERR_WRONG_STATE: return "call out of order";
    case LSL_ERR_SHAPE: return "shape mismatch";
    case LSL_ERR_DTYPE: return "unsupported or mismatched dtype";
    case LSL_ERR_UNSUPPORTED: return "input that cannot be merged exactly";
    case LSL_ERR_NOT_FOUND: return "file or tensor not found";
    case LSL_ERR_EXISTS: return "output already exists";
    case LSL_ERR_INCONSISTENT: return "ranks disagree on a collective argument";
    case LSL_ERR_MPI: return "MPI error";
    case LSL_ERR_HDF5: return "HDF5 error";
    case LSL_ERR_CUDA: return "CUDA error";
    case LSL_ERR_BLAS: return "BLAS error";
    case LSL_ERR_NCCL: return "NCCL error";
    case LSL_ERR_COMM: return "communicator callback failed";
    case LSL_ERR_NOMEM: return "out of memory";
    case LSL_ERR_IO: return "I/O error";
    case LSL_ERR_NOSPACE: return "no space left on the output filesystem";
    case LSL_ERR_INTERRUPTED: return "interrupted by a signal";
    case LSL_ERR_FORMAT: return "malformed input file";
    case LSL_ERR_CORRUPT: return "checksum mismatch";
    case LSL_ERR_NONFINITE: return "merge produced NaN or Inf";
    }
    return "unknown status";
}

const char *lsl_last_error(void)
{
    return last_msg;
}

void lsl_i_clear_error(void)
{
    last_msg[0] = '\0';
}

static lsl_status vfail(lsl_status st, const char *suffix, const char *fmt, va_list ap)
{
    char buf[LSL_MSG_MAX];
    vsnprintf(buf, sizeof buf, fmt, ap);
    if (suffix)
        snprintf(last_msg, sizeof last_msg, "%s: %s", buf, suffix);
    else
        snprintf(last_msg, sizeof last_msg, "%s", buf);
    return st;
}

lsl_status lsl_i_fail(lsl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(st, NULL, fmt, ap);
    va_end(ap);
    return st;
}

lsl_status lsl_i_fail_errno(lsl_status st, int err, const char *fmt, ...)
{
    va_list ap;
    if (err == ENOSPC || err == EDQUOT || err == EFBIG)
        st = LSL_ERR_NOSPACE;
    va_start(ap, fmt);
    vfail(st, strerror(err), fmt, ap);
    va_end(ap);
    return st;
}

lsl_status lsl_i_mpi_fail(int mpi_rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0, cls = 0;
    MPI_Error_string(mpi_rc, s, &len);
    MPI_Error_class(mpi_rc, &cls);
    lsl_status st = LSL_ERR_MPI;
    /* ROMIO's UFS driver reports ENOSPC as a generic I/O error with the errno text. */
    if (cls == MPI_ERR_NO_SPACE || cls == MPI_ERR_QUOTA || strstr(s, "No space left") ||
        strstr(s, "quota exceeded") || strstr(s, "File too large"))
        st = LSL_ERR_NOSPACE;
    else if (cls == MPI_ERR_IO || cls == MPI_ERR_ACCESS || cls == MPI_ERR_NO_SUCH_FILE ||
             cls == MPI_ERR_FILE || cls == MPI_ERR_READ_ONLY)
        st = LSL_ERR_IO;
    return lsl_i_fail(st, "%s: %s", what, s);
}

lsl_status lsl_i_agree_min(lsl_i_comm *comm, lsl_status local, int64_t *v, int n)
{
    /* A signal whose handler (lsl_signals_install) removed this call's temporaries and then let
     * the process go on: the call cannot finish, and every rank must learn it here. */
    int sig = lsl_signal_received();
    if (local == LSL_OK && sig)
        local = lsl_i_fail(LSL_ERR_INTERRUPTED,
                           "interrupted by %s; loraslab removed its temporary output",
                           sig == SIGINT    ? "SIGINT"
                           : sig == SIGTERM ? "SIGTERM"
                                            : "SIGHUP");
    int64_t all[8] = {local != LSL_OK ? comm->rank : INT64_MAX};
    n = n < 0 ? 0 : n > 7 ? 7 : n;
    for (int i = 0; i < n; i++)
        all[1 + i] = v[i];
    lsl_status rc = lsl_i_allreduce_i64(comm, all, 1 + n, LSL_OP_MIN);
    if (rc != LSL_OK)
        return rc;
    for (int i = 0; i < n; i++)
        v[i] = all[1 + i];
    return lsl_i_agree_first(comm, all[0], local);
}

lsl_status lsl_i_agree(lsl_i_comm *comm, lsl_status local)
{
    return lsl_i_agree_min(comm, local, NULL, 0);
}

lsl_status lsl_i_agree_first(lsl_i_comm *comm, int64_t first, lsl_status local)
{
    lsl_status rc;
    if (first == INT64_MAX)
        return LSL_OK;
    /* One message for everyone, so every rank (and a log that only shows rank 0) tells the same
     * story about what went wrong and where. */
    struct {
        int st;
        char msg[LSL_MSG_MAX];
    } pkt;
    memset(&pkt, 0, sizeof pkt);
    pkt.st = (int)local;
    if (comm->rank == first) {
        if (comm->rank != 0 && strncmp(last_msg, "rank ", 5) != 0)
            snprintf(pkt.msg, sizeof pkt.msg, "rank %d: %s", comm->rank, last_msg);
        else
            snprintf(pkt.msg, sizeof pkt.msg, "%s", last_msg);
    }
    rc = lsl_i_bcast_raw(comm, &pkt, sizeof pkt, (int)first);
    if (rc != LSL_OK)
        return rc;
    snprintf(last_msg, sizeof last_msg, "%s", pkt.msg);
    return (lsl_status)pkt.st;
}
