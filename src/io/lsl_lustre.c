/* Giving a new file the Lustre layout an I/O plan sets (lsl_ioplan.h), without Lustre's headers:
 * the two constants below are lustre_user.h's. */
#include "lsl_ioplan.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>

#define LOV_USER_MAGIC_V1    0x0BD10BD0u
#define LL_IOC_LOV_SETSTRIPE _IOW('f', 154, long)

size_t lsl_i_ioplan_lov(const lsl_i_ioplan *p, unsigned char buf[32])
{
    if (p->layout != LSL_I_LAYOUT_SET && p->layout != LSL_I_LAYOUT_USER)
        return 0;
    /* lov_user_md_v1, packed: {u32 magic; u32 pattern; u8 oi[16]; u32 stripe_size;
     * u16 stripe_count; u16 stripe_offset}: pattern 0 and offset -1 let Lustre choose. */
    uint32_t magic = LOV_USER_MAGIC_V1, size = (uint32_t)p->stripe_size;
    uint16_t count = p->stripe_count == UINT64_MAX ? 0xFFFF
                     : p->stripe_count > 0xFFFE    ? 0xFFFE
                                                   : (uint16_t)p->stripe_count;
    uint16_t offset = 0xFFFF;
    memset(buf, 0, 32);
    memcpy(buf, &magic, 4);
    memcpy(buf + 24, &size, 4);
    memcpy(buf + 28, &count, 2);
    memcpy(buf + 30, &offset, 2);
    return 32;
}

int lsl_i_ioplan_apply(const lsl_i_ioplan *p, int fd)
{
    unsigned char lov[32];
    size_t n = lsl_i_ioplan_lov(p, lov);
    if (n == 0)
        return 0;
    /* The ioctl ROMIO's Lustre driver used; the xattr where the client refuses it. */
    if (ioctl(fd, LL_IOC_LOV_SETSTRIPE, lov) == 0)
        return 0;
    int e = errno;
    if (fsetxattr(fd, "lustre.lov", lov, n, 0) == 0)
        return 0;
    return e ? e : errno;
}
