#include "lsl_fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <sys/xattr.h>

#define LUSTRE_SUPER_MAGIC     0x0BD00BD0u
#define GPFS_SUPER_MAGIC       0x47504653u
#define NFS_SUPER_MAGIC        0x6969u
#define TMPFS_MAGIC            0x01021994u
#define EXT4_SUPER_MAGIC       0xEF53u
#define XFS_SUPER_MAGIC        0x58465342u
#define BTRFS_SUPER_MAGIC      0x9123683Eu
#define LOV_USER_MAGIC_V1      0x0BD10BD0u
#define LOV_USER_MAGIC_V3      0x0BD30BD0u
#define LOV_USER_MAGIC_COMP_V1 0x0BD60BD0u

static uint32_t u32_at(const unsigned char *b)
{
    uint32_t v;
    memcpy(&v, b, 4);
    return v;
}

/* A plain layout (lov_user_md v1/v3, packed, little-endian as the client returns it):
 * {u32 magic; u32 pattern; u8 oi[16]; u32 stripe_size; u16 stripe_count; ...}. */
static int plain_layout(const unsigned char *b, size_t n, uint64_t *size, uint64_t *count)
{
    if (n < 30)
        return 0;
    uint32_t magic = u32_at(b), ss = u32_at(b + 24);
    uint16_t sc;
    memcpy(&sc, b + 28, 2);
    if ((magic != LOV_USER_MAGIC_V1 && magic != LOV_USER_MAGIC_V3) || ss == 0)
        return 0;
    *size = ss;
    *count = sc == 0xFFFF ? 0 : sc; /* -1: every OST, a number the client does not say */
    return 1;
}

int lsl_i_lustre_layout(const unsigned char *b, size_t n, uint64_t *size, uint64_t *count)
{
    if (n >= 4 && u32_at(b) != LOV_USER_MAGIC_COMP_V1)
        return plain_layout(b, n, size, count);
    /* Composite (PFL): a 32-byte header {u32 magic; u32 size; u32 gen; u16 flags; u16 entries;
     * ...}, then 48-byte entries {u32 id; u32 flags; u64 start; u64 end; u32 offset; u32 size;
     * ...}, each pointing at a plain layout blob.  The component reaching the end of the file
     * stripes the bulk of a checkpoint; its blob must lie inside the buffer. */
    if (n < 32)
        return 0;
    uint16_t entries;
    memcpy(&entries, b + 14, 2);
    int found = 0;
    uint64_t best_end = 0;
    for (uint32_t i = 0; i < entries && 32 + (uint64_t)(i + 1) * 48 <= n; i++) {
        const unsigned char *e = b + 32 + (size_t)i * 48;
        uint64_t start, end;
        memcpy(&start, e + 8, 8);
        memcpy(&end, e + 16, 8);
        uint32_t off = u32_at(e + 24), len = u32_at(e + 28);
        uint64_t s = 0, c = 0;
        if (end < start || off < 32 || (uint64_t)off + len > n ||
            !plain_layout(b + off, len, &s, &c))
            continue;
        if (!found || end > best_end) {
            *size = s, *count = c;
            best_end = end;
            found = 1;
        }
    }
    return found;
}

void lsl_i_fs_classify(uint32_t magic, uint64_t blksize, const unsigned char *lov, size_t n,
                       lsl_i_fsinfo *fs)
{
    uint64_t avail = fs->avail_bytes;
    memset(fs, 0, sizeof *fs);
    fs->avail_bytes = avail;
    fs->alignment = 64 << 10; /* local filesystems: page-cache friendly, few sparse holes */
    switch (magic) {
    case LUSTRE_SUPER_MAGIC: {
        snprintf(fs->name, sizeof fs->name, "lustre");
        fs->parallel = 1;
        fs->stripe_size = 1 << 20; /* Lustre's own default when the directory says nothing */
        uint64_t size = 0, count = 0;
        if (lov && lsl_i_lustre_layout(lov, n, &size, &count)) {
            fs->stripe_size = size;
            fs->stripe_count = count;
            fs->dir_layout = n >= 4 && u32_at(lov) == LOV_USER_MAGIC_COMP_V1
                                 ? LSL_I_LAYOUT_COMPOSITE
                                 : LSL_I_LAYOUT_PLAIN;
        }
        fs->alignment = fs->stripe_size;
        break;
    }
    case GPFS_SUPER_MAGIC:
        snprintf(fs->name, sizeof fs->name, "gpfs");
        fs->parallel = 1;
        fs->stripe_size = blksize > 0 ? blksize : (1u << 20);
        fs->alignment = fs->stripe_size;
        break;
    case NFS_SUPER_MAGIC:
        snprintf(fs->name, sizeof fs->name, "nfs");
        fs->alignment = 1 << 20;
        break;
    case TMPFS_MAGIC: snprintf(fs->name, sizeof fs->name, "tmpfs"); break;
    case EXT4_SUPER_MAGIC: snprintf(fs->name, sizeof fs->name, "ext4"); break;
    case XFS_SUPER_MAGIC: snprintf(fs->name, sizeof fs->name, "xfs"); break;
    case BTRFS_SUPER_MAGIC: snprintf(fs->name, sizeof fs->name, "btrfs"); break;
    default: snprintf(fs->name, sizeof fs->name, "other"); break;
    }
}

lsl_status lsl_i_fs_probe(const char *dir, lsl_i_fsinfo *fs)
{
    struct statfs sf;
    struct statvfs sv;
    struct stat st;
    memset(fs, 0, sizeof *fs);
    if (statfs(dir, &sf) != 0 || statvfs(dir, &sv) != 0 || stat(dir, &st) != 0)
        return lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: cannot query the filesystem", dir);
    uint32_t magic = (uint32_t)((unsigned long)sf.f_type & 0xFFFFFFFFul);
    fs->avail_bytes = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    /* Lustre's default layout of a directory lives in the "lustre.lov" xattr */
    const size_t cap = 65536; /* a PFL template of many components, or 2000 stripes */
    unsigned char *lov = NULL;
    ssize_t n = -1;
    if (magic == LUSTRE_SUPER_MAGIC && (lov = malloc(cap)))
        n = getxattr(dir, "lustre.lov", lov, cap);
    lsl_i_fs_classify(magic, st.st_blksize > 0 ? (uint64_t)st.st_blksize : 0, n > 0 ? lov : NULL,
                      n > 0 ? (size_t)n : 0, fs);
    free(lov);
    return LSL_OK;
}
