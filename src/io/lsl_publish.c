#define _GNU_SOURCE /* renameat2 */
#include "lsl_publish.h"

#include "lsl_fs.h"
#include "lsl_ioplan.h"
#include "lsl_signal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- checks before anything is created ----------------------------------------------------- */

char *lsl_i_strip_slashes(const char *path)
{
    char *p = lsl_i_strdup(path);
    size_t n = p ? strlen(p) : 0;
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    return p;
}

static const char *kind_of(mode_t m)
{
    return S_ISDIR(m)    ? "a directory"
           : S_ISREG(m)  ? "a regular file"
           : S_ISLNK(m)  ? "a symbolic link"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
                         : "a socket";
}

/* Whether `inner` (a resolved path) is `outer` or lies below it. */
static int under(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 &&
           (inner[n] == '\0' || inner[n] == '/' || (n == 1 && outer[0] == '/'));
}

static int dir_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    return d && n == 0;
}

static lsl_status check_output(const char *path, int is_dir, int overwrite,
                               const char *const *inputs, uint64_t n)
{
    struct stat ls, is;
    if (lstat(path, &ls) != 0)
        return LSL_OK; /* nothing there yet: no input can be it or lie inside it */
    if (S_ISLNK(ls.st_mode))
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "%s: is a symbolic link%s; give the path it should be written at", path,
                          stat(path, &is) != 0 ? " to nothing" : "");
    if (is_dir ? !S_ISDIR(ls.st_mode) : !S_ISREG(ls.st_mode))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: is %s; loraslab replaces only %s%s", path,
                          kind_of(ls.st_mode), is_dir ? "directories" : "regular files",
                          is_dir && S_ISREG(ls.st_mode)
                              ? " (the output is a safetensors directory unless its name ends "
                                "in .h5 or .hdf5 or --format h5 is given)"
                              : "");
    char *outer = is_dir ? realpath(path, NULL) : NULL;
    lsl_status st = LSL_OK;
    for (uint64_t i = 0; i < n && st == LSL_OK; i++) {
        if (!inputs[i] || stat(inputs[i], &is) != 0)
            continue;
        if (!is_dir && is.st_dev == ls.st_dev && is.st_ino == ls.st_ino) {
            st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                            "%s: is an input of this job (%s); write the output elsewhere", path,
                            inputs[i]);
        } else if (is_dir && outer) {
            char *inner = realpath(inputs[i], NULL);
            if (inner && under(inner, outer))
                st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                                "%s: holds an input of this job (%s); write the output elsewhere",
                                path, inputs[i]);
            free(inner);
        }
    }
    free(outer);
    if (st == LSL_OK && !overwrite && !(is_dir && dir_empty(path)))
        st = lsl_i_fail(LSL_ERR_EXISTS, "%s: already exists%s (pass --overwrite to replace it)",
                        path, is_dir ? " and is not empty" : "");
    return st;
}

/* ---- temporaries of earlier runs ------------------------------------------------------------ */

/* Whether every process that could write into dir runs on this host, so that a flock() held
 * by one of them is seen here.  Not NFS, Lustre or GPFS: there a lock (if the mount has them at
 * all) may answer for this host alone (Lustre's `localflock`), and on NFS flock() is emulated
 * with a whole-file POSIX lock that ROMIO's per-write fcntl locks from the other ranks would
 * wait on forever. */
static int local_fs(const lsl_i_fsinfo *fs)
{
    return strcmp(fs->name, "ext4") == 0 || strcmp(fs->name, "xfs") == 0 ||
           strcmp(fs->name, "btrfs") == 0 || strcmp(fs->name, "tmpfs") == 0;
}

/* A temporary is dead when nobody holds its lock: proof only on a local filesystem (local_fs);
 * elsewhere we only say what we found. */
static void stale_scan(const char *dir, const char *prefix, int local, int quiet)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    size_t pl = strlen(prefix);
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, pl) != 0)
            continue;
        char *p = lsl_i_join(dir, e->d_name);
        int fd = p ? open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW) : -1;
        int got = fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0, busy = !got && errno == EWOULDBLOCK;
        if (got && local) {
            int gone = lsl_i_rmtree(p) == 0;
            if (quiet != LSL_PROGRESS_NONE && gone)
                lsl_i_log(LSL_LOG_WARN,
                          "loraslab: removed %s, left by an interrupted run (no process holds its "
                          "lock)\n",
                          p);
        } else if (quiet != LSL_PROGRESS_NONE && p) {
            lsl_i_log(LSL_LOG_WARN,
                      busy ? "loraslab: warning: %s is being written by another run\n"
                           : "loraslab: warning: %s was left by an earlier run (this filesystem "
                             "cannot tell whether it is still being written); remove it once no "
                             "job writes it\n",
                      p);
        }
        if (fd >= 0)
            close(fd); /* drops the lock we took */
        free(p);
    }
    closedir(d);
}

/* ---- create, share, publish, discard -------------------------------------------------------- */

/* A name no other run picks: time, pid and a counter through a 64-bit mix, 8 base-32 digits;
 * O_EXCL settles the rare collision. */
static void tmp_name(char *buf, size_t len, const char *dir, const char *base, unsigned attempt)
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuv";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 12) ^
                 ((uint64_t)attempt * 0x9E3779B97F4A7C15ull);
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33;
    char s[9];
    for (int i = 0; i < 8; i++, x >>= 5)
        s[i] = digits[x & 31];
    s[8] = '\0';
    snprintf(buf, len, "%s/.%s.lsl-tmp-%s", dir, base, s);
}

lsl_status lsl_i_out_create(const char *path, int is_dir, int overwrite, int quiet,
                            const char *const *inputs, uint64_t n, lsl_i_out *o)
{
    lsl_status rc = LSL_OK;
    char *d = NULL, *b = NULL, prefix[NAME_MAX + 16];
    struct stat sb;
    memset(o, 0, sizeof *o);
    o->lock_fd = o->slot = -1;
    o->is_dir = is_dir;
    if (!path || !*path)
        LSL_FAIL(LSL_ERR_INVALID_ARG, "the output path is empty");
    if (!(o->path = lsl_i_strip_slashes(path)) || !(d = lsl_i_strdup(o->path)) ||
        !(b = lsl_i_strdup(o->path)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(lsl_i_check_utf8(o->path, "output path"));
    const char *base = basename(b);
    if (!(o->dir = lsl_i_strdup(dirname(d))))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    if (stat(o->dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        LSL_GOTO(
            lsl_i_fail_errno(LSL_ERR_IO, errno ? errno : ENOTDIR, "%s: output directory", o->dir));
    LSL_TRY(check_output(o->path, is_dir, overwrite, inputs, n));
    LSL_TRY(lsl_i_fs_probe(o->dir, &o->fs));
    snprintf(prefix, sizeof prefix, ".%s.lsl-tmp-", base);
    int local = local_fs(&o->fs);
    stale_scan(o->dir, prefix, local, quiet);
    /* where versions before 0.3 moved an old directory aside when replacing it */
    snprintf(prefix, sizeof prefix, "%s.lsl-old-", base);
    stale_scan(o->dir, prefix, local, quiet);
    size_t tl = strlen(o->dir) + strlen(base) + 32;
    if (!(o->tmp = lsl_i_malloc(tl)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    int fd = -1, err = EEXIST;
    /* No signal between creating the temporary and registering it for removal: a handler would
     * find nothing to remove and the file would stay. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (unsigned k = 0; fd < 0 && err == EEXIST && k < 100; k++) {
        tmp_name(o->tmp, tl, o->dir, base, k);
        /* the kernel applies the umask: nothing process-wide changes under other threads */
        if (!is_dir) {
            /* on Lustre with no objects yet, so the I/O plan can still choose its layout */
            int lazy = strcmp(o->fs.name, "lustre") == 0 ? LSL_I_O_LOV_DELAY_CREATE : 0;
            fd = open(o->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | lazy, 0666);
            err = fd < 0 ? errno : 0;
        } else if (mkdir(o->tmp, 0777) != 0) {
            err = errno;
        } else if ((fd = open(o->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            err = errno;
            rmdir(o->tmp); /* made but not held: leave nothing behind */
        }
    }
    if (fd >= 0)
        o->slot = lsl_i_watch(o->tmp, is_dir);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (fd < 0) {
        o->tmp[0] = '\0';
        LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, err, "%s: cannot create a %s in the output directory",
                                  o->dir, is_dir ? "directory" : "file"));
    }
    /* Held until publish or discard, where it proves something (local_fs says why not
     * elsewhere); a filesystem without flock just cannot vouch for the temporary. */
    if (local)
        flock(fd, LOCK_EX | LOCK_NB);
    o->lock_fd = fd;
fail:
    free(d);
    free(b);
    if (rc != LSL_OK)
        lsl_i_out_discard(o, 0, 0);
    return rc;
}

lsl_status lsl_i_out_share(lsl_i_comm *comm, lsl_i_out *o, lsl_status st)
{
    int rank = comm->rank;
    if (rank != 0) /* only rank 0 created anything */
        o->slot = o->lock_fd = -1;
    uint64_t kind = (uint64_t)o->is_dir;
    char **strs[3] = {&o->path, &o->tmp, &o->dir};
    lsl_status rc = lsl_i_bcast_strs(comm, 3, strs, &kind, st);
    o->is_dir = (int)kind;
    if (rc == LSL_OK && o->slot < 0) /* rank 0 registered it at creation */
        o->slot = lsl_i_watch(o->tmp, o->is_dir);
    if (rc == LSL_OK) {
        /* Every rank writes into what rank 0 created: a path each node resolves on a
         * filesystem of its own (/tmp, /dev/shm, a local disk) cannot hold one output. */
        struct stat sb;
        char host[256] = "?";
        lsl_status seen = LSL_OK;
        if (rank != 0 && lstat(o->tmp, &sb) != 0) {
            gethostname(host, sizeof host - 1);
            seen = lsl_i_fail(LSL_ERR_INVALID_ARG,
                              "%s: rank %d (host %s) cannot see the temporary %s that rank 0 "
                              "created: every rank must reach the output on one shared "
                              "filesystem (a node-local path such as /tmp or /dev/shm cannot "
                              "take one output written from several nodes)",
                              o->path, rank, host, o->tmp);
        }
        rc = lsl_i_agree(comm, seen);
    }
    if (rc != LSL_OK)
        lsl_i_out_discard(o, rank, 0);
    return rc;
}

lsl_status lsl_i_out_publish(lsl_i_out *o, int overwrite)
{
    lsl_status rc = LSL_OK;
    char *old = NULL;
    LSL_TRY(lsl_i_sync_path(o->tmp, o->is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY));
    if (o->is_dir) {
        if (lsl_i_rename(o->tmp, o->path) != 0) {
            int e = errno;
            if (!(e == ENOTEMPTY || e == EEXIST) || !overwrite)
                LSL_GOTO(
                    lsl_i_fail_errno(e == ENOTEMPTY || e == EEXIST ? LSL_ERR_EXISTS : LSL_ERR_IO, e,
                                     "%s: cannot move the finished output into place", o->path));
            /* Replace a non-empty directory by swapping the two names in one step: the path
             * never names nothing, a racing run's swap only reorders the copies, and the old
             * copy lands under our temporary's name, which we remove next and which a later
             * run removes (or reports) if we are killed first. */
            if (lsl_i_rename_exchange(o->tmp, o->path) != 0) {
                e = errno;
                if (e != EINVAL && e != ENOSYS)
                    LSL_GOTO(
                        lsl_i_fail_errno(LSL_ERR_IO, e, "%s: cannot swap in the output", o->path));
                /* No RENAME_EXCHANGE here (some NFS): move the old copy aside under a name of
                 * our temporaries' pattern, so that it is never stranded out of sight. */
                size_t n = strlen(o->tmp) + 8;
                if (!(old = lsl_i_malloc(n)))
                    LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
                snprintf(old, n, "%s-old", o->tmp);
                if (rename(o->path, old) != 0)
                    LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno,
                                              "%s: cannot move the old directory aside", o->path));
                if (rename(o->tmp, o->path) != 0) {
                    int e2 = errno;
                    rename(old, o->path);
                    LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, e2, "%s: rename into place", o->path));
                }
                lsl_i_rmtree(old);
            } else {
                /* the old copy, now at our temporary's name (still watched for signals) */
                lsl_i_rmtree(o->tmp);
            }
        }
    } else if (overwrite) {
        if (lsl_i_rename(o->tmp, o->path) != 0)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: rename into place", o->path));
    } else if (lsl_i_rename_noreplace(o->tmp, o->path) != 0) {
        int e = errno;
        if (e == EEXIST)
            LSL_FAIL(LSL_ERR_EXISTS, "%s: appeared while the job ran; not replaced", o->path);
        /* Filesystems without RENAME_NOREPLACE (some NFS): check, then rename. */
        if (!((e == EINVAL || e == ENOSYS) && access(o->path, F_OK) != 0))
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, e, "%s: rename into place", o->path));
        if (rename(o->tmp, o->path) != 0)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: rename into place", o->path));
    }
    o->tmp[0] = '\0'; /* published: nothing left to remove */
    lsl_i_unwatch(o->slot);
    o->slot = -1;
    LSL_TRY(lsl_i_sync_path(o->dir, O_RDONLY | O_DIRECTORY));
fail:
    free(old);
    return rc;
}

void lsl_i_out_discard(lsl_i_out *o, int rank, int any_rank)
{
    lsl_i_unwatch(o->slot);
    if ((rank == 0 || any_rank) && o->tmp && o->tmp[0])
        lsl_i_rmtree(o->tmp);
    if (o->lock_fd >= 0)
        close(o->lock_fd);
    free(o->path);
    free(o->tmp);
    free(o->dir);
    memset(o, 0, sizeof *o);
    o->lock_fd = o->slot = -1;
}
