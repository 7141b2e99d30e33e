/* MPI-IO or pwrite: the choice follows the communicator (lsl_datafile.h). */
#include "lsl_datafile.h"
#include "lsl_trace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest single MPI write: keeps MPI's int count safe. */
#define MPI_PIECE ((uint64_t)1 << 30)

lsl_status lsl_i_datafile_open(lsl_i_comm *comm, const char *tmp, const char *path,
                               const lsl_i_ioplan *plan, const char *hints, lsl_i_datafile *f)
{
    memset(f, 0, sizeof *f);
    f->comm = comm;
    f->path = path;
    f->fd = -1;
    lsl_status st = LSL_OK;
    if (!lsl_i_comm_is_mpi(comm)) {
        /* no O_CREAT: rank 0 made and laid out the file; a rank that cannot see it says so */
        f->fd = open(tmp, O_WRONLY | O_CLOEXEC);
        if (f->fd < 0)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: opening the temporary %s for writing",
                                  path, tmp);
        st = lsl_i_agree(comm, st);
        if (st != LSL_OK && f->fd >= 0) {
            close(f->fd);
            f->fd = -1;
        }
        return st;
    }
    MPI_Info info = MPI_INFO_NULL;
    st = lsl_i_ioplan_hints(plan, hints, &info);
    /* MPI_File_open is collective: a rank without hints joins anyway so nobody waits for it. */
    int mrc =
        MPI_File_open(comm->mpi, tmp, MPI_MODE_WRONLY, st == LSL_OK ? info : MPI_INFO_NULL, &f->fh);
    f->fh_open = mrc == MPI_SUCCESS;
    if (st == LSL_OK && mrc != MPI_SUCCESS)
        st = lsl_i_mpi_fail(mrc, "MPI_File_open of the output");
    if (info != MPI_INFO_NULL)
        MPI_Info_free(&info);
    st = lsl_i_agree(comm, st);
    if (st != LSL_OK && f->fh_open) {
        MPI_File_close(&f->fh);
        f->fh_open = 0;
    }
    return st;
}

lsl_status lsl_i_datafile_open_set(lsl_i_comm *comm, const char *tmpdir, const char *path,
                                   uint32_t nfiles, const char (*names)[64], const uint64_t *vbase,
                                   int threads, lsl_i_datafile *f)
{
    memset(f, 0, sizeof *f);
    f->comm = comm;
    f->path = path;
    f->fd = -1;
    lsl_status st = LSL_OK;
    f->fds = lsl_i_malloc(sizeof *f->fds * (nfiles ? nfiles : 1));
    f->names = lsl_i_calloc(nfiles ? nfiles : 1, sizeof *f->names);
    f->vbase = lsl_i_malloc(sizeof *f->vbase * ((size_t)nfiles + 1));
    if (!f->fds || !f->names || !f->vbase)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else
        memcpy(f->vbase, vbase, sizeof *f->vbase * ((size_t)nfiles + 1));
    for (uint32_t i = 0; f->fds && i < nfiles; i++)
        f->fds[i] = -1;
    f->nfiles = f->fds && f->names ? nfiles : 0;
    for (uint32_t i = 0; st == LSL_OK && i < nfiles; i++) {
        char *tmp = lsl_i_join(tmpdir, names[i]);
        f->names[i] = lsl_i_join(path, names[i]);
        if (!tmp || !f->names[i])
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        else if ((f->fds[i] = open(tmp, O_WRONLY | O_CLOEXEC)) < 0)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: opening the temporary %s for writing",
                                  f->names[i], tmp);
        free(tmp);
    }
    if (st == LSL_OK)
        st = lsl_i_iopool_start(threads < (int)nfiles ? threads : (int)nfiles, nfiles, f->fds,
                                (const char *const *)f->names, comm->rank, &f->pool);
    st = lsl_i_agree(comm, st);
    if (st != LSL_OK)
        lsl_i_datafile_close(f);
    return st;
}

lsl_status lsl_i_datafile_fence(lsl_i_datafile *f, const void *buf, uint64_t len)
{
    return f->pool ? lsl_i_iopool_fence(f->pool, buf, len) : LSL_OK;
}

lsl_status lsl_i_datafile_fence_any(lsl_i_datafile *f, const void *const *bufs, int n, uint64_t len,
                                    int *which)
{
    if (f->pool)
        return lsl_i_iopool_fence_any(f->pool, bufs, n, len, which);
    *which = 0;
    return LSL_OK;
}

/* A set's write: the file holding virtual offset off, and the write queued there. */
static lsl_status write_set(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                            const char *what)
{
    uint32_t lo = 0, hi = f->nfiles; /* the last file whose base is <= off */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (f->vbase[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    if (count && (off < f->vbase[lo] || off + count > f->vbase[lo + 1]))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: internal: a write of %s crosses its file",
                          f->path, what);
    f->calls += count > 0;
    return lsl_i_iopool_post(f->pool, lo, off - f->vbase[lo], buf, count, what);
}

/* One collective write's outcome on this rank: an injected failure, MPI's error, or fewer
 * bytes than count written. */
static lsl_status mpi_verdict(const lsl_i_datafile *f, bool injected, int mrc, MPI_Status *ms,
                              uint64_t count, const char *what)
{
    if (injected)
        return lsl_i_fail_errno(LSL_ERR_IO, EIO, "%s: writing %s (LSL_FAULT)", f->path, what);
    if (mrc != MPI_SUCCESS) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: writing %s", f->path, what);
        return lsl_i_mpi_fail(mrc, msg);
    }
    int got = 0;
    MPI_Get_count(ms, MPI_BYTE, &got);
    if (count && (uint64_t)got != count)
        return lsl_i_fail(LSL_ERR_NOSPACE,
                          "%s: short write of %s (%d of %llu bytes): filesystem full or quota "
                          "exceeded?",
                          f->path, what, got, (unsigned long long)count);
    return LSL_OK;
}

static lsl_status write_mpi(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                            const char *what)
{
    /* An injected failure (LSL_FAULT=write:N) still joins the collective, as a real one would:
     * with nothing. */
    bool injected = count && lsl_i_fault(LSL_FAULT_WRITE);
    static const unsigned char none = 0;
    MPI_Status ms;
    int mrc = MPI_File_write_at_all(f->fh, (MPI_Offset)off, injected || !count ? &none : buf,
                                    injected ? 0 : (int)count, MPI_BYTE, &ms);
    f->calls++;
    return mpi_verdict(f, injected, mrc, &ms, count, what);
}

static lsl_status write_pos(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                            const char *what)
{
    char msg[512];
    f->calls++;
    f->wrote |= count > 0;
    snprintf(msg, sizeof msg, "%s: writing %s", f->path, what);
    return lsl_i_pwrite_full(f->fd, buf, count, off, msg);
}

static lsl_status write_any(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                            const char *what)
{
    if (f->pool)
        return write_set(f, off, buf, count, what);
    if (f->fh_open) {
        /* one collective call moves at most MPI_PIECE (callers cut their parts): a larger one
         * still joins the call, then fails */
        lsl_status st = write_mpi(f, off, buf, count > MPI_PIECE ? MPI_PIECE : count, what);
        if (st == LSL_OK && count > MPI_PIECE)
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: a write of %llu bytes exceeds 1 GiB", f->path,
                            (unsigned long long)count);
        return st;
    }
    if (f->fd < 0)
        return count ? lsl_i_fail(LSL_ERR_WRONG_STATE, "%s: the output is not open", f->path)
                     : LSL_OK;
    return write_pos(f, off, buf, count, what);
}

lsl_status lsl_i_datafile_write(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                                const char *what)
{
    if (!lsl_i_trace_on() || !count || f->pool) /* the pool's threads trace their own writes */
        return write_any(f, off, buf, count, what);
    uint64_t call = f->calls;
    double t0 = lsl_i_wall();
    lsl_status st = write_any(f, off, buf, count, what);
    lsl_i_trace_write(f->comm->rank, f->path, call, off, count, what, t0, lsl_i_wall());
    return st;
}

/* One collective write of n pieces through a view: the view's filetype places the pieces, the
 * memory side is contiguous.  The view is set and reset on every rank (MPI_File_set_view is
 * collective), whatever failed. */
static lsl_status write_rows_mpi(lsl_i_datafile *f, uint64_t off, uint64_t piece, uint64_t stride,
                                 uint64_t n, const void *buf, const char *what)
{
    static const unsigned char none = 0;
    uint64_t count = n * piece;
    bool injected = count && lsl_i_fault(LSL_FAULT_WRITE);
    lsl_status st = LSL_OK;
    char msg[256];
    snprintf(msg, sizeof msg, "%s: writing %s", f->path, what);
    if (count > MPI_PIECE || piece > INT_MAX || n > INT_MAX || stride > (uint64_t)INT64_MAX)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "%s: a write of %llu pieces of %llu bytes exceeds 1 GiB", f->path,
                        (unsigned long long)n, (unsigned long long)piece);
    if (st != LSL_OK || injected)
        count = 0;
    MPI_Datatype ft = MPI_BYTE;
    int typed = 0;
    if (count) {
        int mrc = MPI_Type_create_hvector((int)n, (int)piece, (MPI_Aint)stride, MPI_BYTE, &ft);
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Type_commit(&ft);
        typed = mrc == MPI_SUCCESS;
        if (!typed) {
            st = lsl_i_mpi_fail(mrc, msg);
            ft = MPI_BYTE;
            count = 0;
        }
    }
    int mrc = MPI_File_set_view(f->fh, count ? (MPI_Offset)off : 0, MPI_BYTE, ft, "native",
                                MPI_INFO_NULL);
    MPI_Status ms;
    int wrc = MPI_File_write_at_all(f->fh, 0, count ? buf : &none, (int)count, MPI_BYTE, &ms);
    int rrc = MPI_File_set_view(f->fh, 0, MPI_BYTE, MPI_BYTE, "native", MPI_INFO_NULL);
    f->calls++;
    if (typed)
        MPI_Type_free(&ft);
    if (st != LSL_OK)
        return st;
    return mpi_verdict(f, injected,
                       mrc != MPI_SUCCESS   ? mrc
                       : wrc != MPI_SUCCESS ? wrc
                                            : rrc,
                       &ms, count, what);
}

lsl_status lsl_i_datafile_write_rows(lsl_i_datafile *f, uint64_t off, uint64_t piece,
                                     uint64_t stride, uint64_t n, const void *buf, const char *what)
{
    if (f->fh_open && !f->pool) {
        double t0 = lsl_i_wall();
        uint64_t call = f->calls;
        lsl_status st = write_rows_mpi(f, off, piece, stride, n, buf, what);
        for (uint64_t i = 0; lsl_i_trace_on() && i < n && piece; i++)
            lsl_i_trace_write(f->comm->rank, f->path, call, off + i * stride, piece, what, t0,
                              lsl_i_wall());
        return st;
    }
    if (piece == stride) /* whole rows: one range */
        return lsl_i_datafile_write(f, off, buf, n * piece, what);
    lsl_status st = LSL_OK;
    const unsigned char *p = buf;
    for (uint64_t i = 0; st == LSL_OK && i < n && piece; i++)
        st = lsl_i_datafile_write(f, off + i * stride, p + i * piece, piece, what);
    return st;
}

lsl_status lsl_i_datafile_close(lsl_i_datafile *f)
{
    lsl_status st = LSL_OK;
    if (f->comm)
        lsl_i_trace_flush(f->comm->rank);
    if (f->fh_open) {
        int mrc = MPI_File_close(&f->fh);
        f->fh_open = 0;
        if (mrc != MPI_SUCCESS)
            st = lsl_i_mpi_fail(mrc, "MPI_File_close of the output");
    }
    if (f->pool || f->fds) {
        unsigned char *wrote = lsl_i_calloc(f->nfiles ? f->nfiles : 1, 1);
        lsl_status ds = f->pool ? lsl_i_iopool_drain(f->pool, wrote) : LSL_OK;
        lsl_i_iopool_stop(&f->pool);
        st = st == LSL_OK ? ds : st;
        for (uint32_t i = 0; i < f->nfiles; i++) {
            if (f->fds[i] >= 0) {
                /* each rank syncs the files it wrote into (see below) */
                if (st == LSL_OK && (!wrote || wrote[i]) && lsl_i_fsync(f->fds[i]) != 0)
                    st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: fsync", f->names[i]);
                close(f->fds[i]);
            }
            free(f->names[i]);
        }
        free(wrote);
        free(f->fds);
        free(f->names);
        free(f->vbase);
        f->fds = NULL;
        f->names = NULL;
        f->vbase = NULL;
        f->nfiles = 0;
    }
    if (f->fd >= 0) {
        /* every rank flushes its own writes: on a parallel filesystem each client holds its
         * own dirty pages, and rank 0's fsync at publish covers only rank 0's */
        if (f->wrote && lsl_i_fsync(f->fd) != 0)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: fsync", f->path);
        if (close(f->fd) != 0 && st == LSL_OK)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: close", f->path);
        f->fd = -1;
    }
    return st;
}
