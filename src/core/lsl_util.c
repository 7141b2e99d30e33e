/* Dtypes, the row partition, versions and small system helpers. */
#define _GNU_SOURCE /* nftw */
#include "lsl_internal.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STR2(x) #x
#define STR(x)  STR2(x)

int lsl_version_number(void)
{
    return LSL_VERSION_NUMBER;
}

const char *lsl_version_string(void)
{
    return STR(LSL_VERSION_MAJOR) "." STR(LSL_VERSION_MINOR) "." STR(LSL_VERSION_PATCH);
}

static const struct {
    const char *name;
    unsigned bits;
} dtypes[LSL_DTYPE_COUNT_] = {
    [LSL_BOOL] = {"BOOL", 8},
    [LSL_F4] = {"F4", 4},
    [LSL_F6_E2M3] = {"F6_E2M3", 6},
    [LSL_F6_E3M2] = {"F6_E3M2", 6},
    [LSL_U8] = {"U8", 8},
    [LSL_I8] = {"I8", 8},
    [LSL_F8_E5M2] = {"F8_E5M2", 8},
    [LSL_F8_E4M3] = {"F8_E4M3", 8},
    [LSL_F8_E8M0] = {"F8_E8M0", 8},
    [LSL_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [LSL_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [LSL_I16] = {"I16", 16},
    [LSL_U16] = {"U16", 16},
    [LSL_F16] = {"F16", 16},
    [LSL_BF16] = {"BF16", 16},
    [LSL_I32] = {"I32", 32},
    [LSL_U32] = {"U32", 32},
    [LSL_F32] = {"F32", 32},
    [LSL_C64] = {"C64", 64},
    [LSL_F64] = {"F64", 64},
    [LSL_I64] = {"I64", 64},
    [LSL_U64] = {"U64", 64},
};

const char *lsl_dtype_name(lsl_dtype dt)
{
    return (unsigned)dt < LSL_DTYPE_COUNT_ ? dtypes[dt].name : NULL;
}

unsigned lsl_dtype_bits(lsl_dtype dt)
{
    return (unsigned)dt < LSL_DTYPE_COUNT_ ? dtypes[dt].bits : 0;
}

lsl_status lsl_dtype_from_name(const char *name, lsl_dtype *out)
{
    for (int i = 0; name && i < LSL_DTYPE_COUNT_; i++) {
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (lsl_dtype)i;
            return LSL_OK;
        }
    }
    return LSL_ERR_DTYPE;
}

bool lsl_i_dtype_bytes(lsl_dtype dt, uint64_t n, uint64_t *bytes)
{
    uint64_t bits;
    if (lsl_mul_overflow(n, lsl_dtype_bits(dt), &bits) || bits % 8 != 0)
        return false;
    *bytes = bits / 8;
    return true;
}

void lsl_partition_rows(uint64_t rows, int nranks, int rank, uint64_t *row0, uint64_t *nrows)
{
    *row0 = 0;
    *nrows = 0;
    if (nranks <= 0 || rank < 0 || rank >= nranks)
        return;
    uint64_t chunk = rows / (uint64_t)nranks + (rows % (uint64_t)nranks != 0);
    uint64_t lo = chunk * (uint64_t)rank;
    if (lo >= rows) {
        *row0 = rows;
        return;
    }
    uint64_t hi = lo + chunk < rows ? lo + chunk : rows;
    *row0 = lo;
    *nrows = hi - lo;
}

char *lsl_i_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = lsl_i_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *lsl_i_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = lsl_i_malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void lsl_i_fill_stats(lsl_i_comm *comm, double t0, uint64_t rss0, uint64_t tensors, uint64_t merged,
                      uint64_t bytes, lsl_job_stats *stats)
{
    uint64_t peak = lsl_i_rss_peak(), growth = peak > rss0 ? peak - rss0 : 0;
    /* the counts are the job's, which only some jobs know on every rank (verify plans on rank
     * 0): the maximum is that figure everywhere */
    uint64_t mx[6] = {rss0, peak, growth, tensors, merged, bytes}, mn = growth;
    /* a failed reduction leaves this rank's own figures, which is all it can know */
    if (lsl_i_allreduce_u64(comm, mx, 6, LSL_OP_MAX) == LSL_OK)
        lsl_i_allreduce_u64(comm, &mn, 1, LSL_OP_MIN);
    *stats = (lsl_job_stats){lsl_i_now() - t0, mx[3], mx[4], mx[5], mx[0], mx[1], mn, mx[2]};
}

int lsl_i_pread_raw(int fd, void *buf, uint64_t n, uint64_t off, uint64_t *at)
{
    unsigned char *p = buf;
    while (n > 0) {
        size_t want = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t got = pread(fd, p, want, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            *at = off;
            return got < 0 ? errno : -1;
        }
        p += got;
        off += (uint64_t)got;
        n -= (uint64_t)got;
    }
    return 0;
}

lsl_status lsl_i_pread_error(int err, uint64_t at, const char *path)
{
    if (err > 0)
        return lsl_i_fail_errno(LSL_ERR_IO, err, "%s: read at offset %llu", path,
                                (unsigned long long)at);
    return lsl_i_fail(LSL_ERR_FORMAT, "%s: unexpected end of file at offset %llu (file truncated?)",
                      path, (unsigned long long)at);
}

lsl_status lsl_i_pread_full(int fd, void *buf, uint64_t n, uint64_t off, const char *path)
{
    uint64_t at = 0;
    int err = lsl_i_pread_raw(fd, buf, n, off, &at);
    return err ? lsl_i_pread_error(err, at, path) : LSL_OK;
}

lsl_status lsl_i_pwrite_full(int fd, const void *buf, uint64_t n, uint64_t off, const char *what)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = lsl_i_pwrite(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return lsl_i_fail_errno(LSL_ERR_IO, w < 0 ? errno : ENOSPC, "%s at offset %llu", what,
                                    (unsigned long long)off);
        p += w;
        off += (uint64_t)w;
        n -= (uint64_t)w;
    }
    return LSL_OK;
}

lsl_status lsl_i_open_input(const char *path, int *out, uint64_t *size)
{
    struct stat sb;
    *out = -1;
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer forever. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lsl_i_fail_errno(errno == ENOENT ? LSL_ERR_NOT_FOUND : LSL_ERR_IO, errno, "%s",
                                path);
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return lsl_i_fail_errno(LSL_ERR_IO, e, "%s: stat", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: is %s, not a regular file", path,
                          S_ISDIR(sb.st_mode)    ? "a directory"
                          : S_ISFIFO(sb.st_mode) ? "a FIFO"
                          : S_ISCHR(sb.st_mode)  ? "a character device"
                          : S_ISBLK(sb.st_mode)  ? "a block device"
                                                 : "a socket");
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *out = fd;
    if (size)
        *size = (uint64_t)sb.st_size;
    return LSL_OK;
}

lsl_status lsl_i_read_text(const char *path, uint64_t max_bytes, char **out, uint64_t *len)
{
    lsl_status rc = LSL_OK;
    char *buf = NULL;
    uint64_t size = 0;
    int fd;
    rc = lsl_i_open_input(path, &fd, &size);
    if (rc != LSL_OK)
        return rc;
    if (size > max_bytes)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: %llu bytes, more than the %llu allowed", path,
                 (unsigned long long)size, (unsigned long long)max_bytes);
    buf = lsl_i_malloc((size_t)size + 1);
    if (!buf)
        LSL_FAIL(LSL_ERR_NOMEM, "%s: out of memory", path);
    LSL_TRY(lsl_i_pread_full(fd, buf, size, 0, path));
    buf[size] = '\0';
    *out = buf;
    if (len)
        *len = size;
    close(fd);
    return LSL_OK;
fail:
    free(buf);
    close(fd);
    return rc;
}

uint64_t lsl_i_rss_current(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t lsl_i_rss_peak(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

double lsl_i_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *lsl_i_fmt_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, len, "%.2f %s", v, unit[u]);
    return buf;
}

lsl_status lsl_i_sync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: open for fsync", path);
    int r = lsl_i_fsync(fd);
    int e = errno;
    close(fd);
    /* Some filesystems refuse fsync on a directory; the rename is still atomic there. */
    if (r != 0 && !(flags & O_DIRECTORY && (e == EINVAL || e == EBADF)))
        return lsl_i_fail_errno(LSL_ERR_IO, e, "%s: fsync", path);
    return LSL_OK;
}

bool lsl_i_utf8_valid(const void *p, uint64_t n, uint64_t *bad_at)
{
    const unsigned char *s = p;
    uint64_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        uint64_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            *bad_at = i;
            return false;
        }
        if (i + len > n) {
            *bad_at = i;
            return false;
        }
        for (uint64_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                *bad_at = i;
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            *bad_at = i;
            return false;
        }
        i += len;
    }
    return true;
}

lsl_status lsl_i_check_utf8(const char *s, const char *what)
{
    uint64_t bad = 0;
    if (lsl_i_utf8_valid(s, strlen(s), &bad))
        return LSL_OK;
    /* print the name with its bytes escaped, so the message itself stays valid UTF-8 */
    char shown[256];
    size_t k = 0;
    for (const unsigned char *c = (const unsigned char *)s; *c && k + 5 < sizeof shown; c++)
        k += (size_t)snprintf(shown + k, sizeof shown - k,
                              *c < 0x20 || *c >= 0x7F ? "\\x%02x" : "%c", *c);
    return lsl_i_fail(LSL_ERR_FORMAT, "%s \"%s\" is not valid UTF-8 (byte %llu)", what, shown,
                      (unsigned long long)bad);
}

lsl_status lsl_parse_size(const char *text, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"kb", 1e3},
                 {"mb", 1e6},
                 {"gb", 1e9},
                 {"tb", 1e12},
                 {"kib", 1024.0},
                 {"mib", 1048576.0},
                 {"gib", 1073741824.0},
                 {"tib", 1099511627776.0}};
    char *end = NULL;
    if (!text || !bytes)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "size is NULL");
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || errno || !(v > 0) || !isfinite(v))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "\"%s\" is not a size (try 500MB, 5GB, 5GiB)", text);
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (strcasecmp(end, units[i].unit) == 0) {
            double b = floor(v * units[i].mult);
            if (b < 1 || b > 1.8e19)
                break;
            *bytes = (uint64_t)b;
            return LSL_OK;
        }
    return lsl_i_fail(LSL_ERR_INVALID_ARG,
                      "\"%s\": unknown unit (use KB MB GB TB, KiB MiB GiB TiB, or bytes)", text);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

int lsl_i_rmtree(const char *path)
{
    return path && *path ? nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) : -1;
}

bool lsl_i_is_hdf5_path(const char *path)
{
    size_t n = strlen(path);
    return (n >= 3 && strcasecmp(path + n - 3, ".h5") == 0) ||
           (n >= 5 && strcasecmp(path + n - 5, ".hdf5") == 0);
}

bool lsl_i_plain_name(const char *s)
{
    uint64_t bad;
    return *s && !strchr(s, '/') && !strchr(s, '\\') && s[0] != '.' &&
           lsl_i_utf8_valid(s, strlen(s), &bad);
}

uint64_t lsl_i_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

uint64_t lsl_i_distinct_u64(uint64_t *v, uint64_t n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    uint64_t d = 0;
    for (uint64_t i = 0; i < n; i++)
        d += i == 0 || v[i] != v[i - 1];
    return d;
}

void lsl_i_transpose(const void *src, void *dst, uint64_t r, uint64_t c, uint64_t c0, uint64_t nc,
                     uint64_t es)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (uint64_t i = 0; i < r; i++)
        for (uint64_t j = 0; j < nc; j++)
            memcpy(d + (j * r + i) * es, s + (i * c + c0 + j) * es, es);
}
