/* The check every collective entry point makes of its logically collective arguments: ranks
 * that were handed different paths or settings would each believe in their own output, so the
 * call is refused on every rank, naming the argument and two ranks' values. */
#include "lsl_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define ARG_TEXT 256

static void arg_text(const lsl_i_arg *a, char *buf, size_t len)
{
    if (a->is_str)
        snprintf(buf, len, "'%s'", a->str ? a->str : "(none)");
    else
        snprintf(buf, len, "%" PRIu64, a->num);
}

static int64_t arg_hash(const lsl_i_arg *a)
{
    uint64_t h = lsl_i_fnv1a(LSL_I_FNV_SEED, a->name, strlen(a->name));
    if (a->str)
        h = lsl_i_fnv1a(h, a->str, strlen(a->str) + 1);
    else
        h = lsl_i_fnv1a(h, &a->num, sizeof a->num) ^ (uint64_t)a->is_str;
    return (int64_t)(h >> 1);
}

lsl_status lsl_i_agree_args(lsl_i_comm *c, const char *call, int n, const lsl_i_arg *args)
{
    lsl_status rc = LSL_OK;
    int64_t mine[LSL_I_MAX_ARGS], root[LSL_I_MAX_ARGS], first;
    if (n > LSL_I_MAX_ARGS)
        n = LSL_I_MAX_ARGS;
    for (int i = 0; i < n; i++)
        mine[i] = root[i] = arg_hash(&args[i]);
    LSL_TRY(lsl_i_bcast_raw(c, root, (uint64_t)n * sizeof *root, 0));
    int differs = -1;
    for (int i = 0; i < n && differs < 0; i++)
        if (mine[i] != root[i])
            differs = i;
    first = differs >= 0 ? c->rank : INT64_MAX;
    LSL_TRY(lsl_i_allreduce_i64(c, &first, 1, LSL_OP_MIN));
    if (first == INT64_MAX)
        return LSL_OK;
    /* The first rank that differs says which argument, and both values travel for the message. */
    struct {
        int64_t which;
        char text[ARG_TEXT];
    } theirs = {differs, ""}, zero = {0, ""};
    if (c->rank == first)
        arg_text(&args[differs], theirs.text, sizeof theirs.text);
    LSL_TRY(lsl_i_bcast_raw(c, &theirs, sizeof theirs, (int)first));
    int w = (int)theirs.which < n && theirs.which >= 0 ? (int)theirs.which : 0;
    if (c->rank == 0)
        arg_text(&args[w], zero.text, sizeof zero.text);
    LSL_TRY(lsl_i_bcast_raw(c, zero.text, sizeof zero.text, 0));
    zero.text[ARG_TEXT - 1] = theirs.text[ARG_TEXT - 1] = '\0';
    return lsl_i_fail(LSL_ERR_INCONSISTENT,
                      "%s: the ranks were given different %s: rank 0 %s, rank %d %s; every rank "
                      "must pass the same value",
                      call, args[w].name, zero.text, (int)first, theirs.text);
fail:
    return rc;
}
