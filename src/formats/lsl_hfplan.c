/* Shards and headers of a safetensors directory (lsl_hfplan.h). */
#include "lsl_hfplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SHARD 5000000000ull /* huggingface_hub's max_shard_size="5GB" */

lsl_status lsl_i_hfplan_alloc(lsl_i_hfplan *p, uint32_t nshards, uint64_t n)
{
    memset(p, 0, sizeof *p);
    p->nshards = nshards;
    size_t s = nshards ? nshards : 1, t = n ? (size_t)n : 1;
    p->names = lsl_i_calloc(s, sizeof *p->names);
    p->shard_of = lsl_i_calloc(t, sizeof *p->shard_of);
    p->offset = lsl_i_calloc(t, sizeof *p->offset);
    p->head_len = lsl_i_calloc(s, sizeof *p->head_len);
    p->file_bytes = lsl_i_calloc(s, sizeof *p->file_bytes);
    p->heads = lsl_i_calloc(s, sizeof *p->heads);
    p->first = lsl_i_calloc(s + 1, sizeof *p->first);
    p->in_file = lsl_i_calloc(t, sizeof *p->in_file);
    if (p->names && p->shard_of && p->offset && p->head_len && p->file_bytes && p->heads &&
        p->first && p->in_file)
        return LSL_OK;
    lsl_i_hfplan_free(p);
    return lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the shard plan");
}

void lsl_i_hfplan_drop_heads(lsl_i_hfplan *p)
{
    for (uint32_t s = 0; p->heads && s < p->nshards; s++) {
        free(p->heads[s]);
        p->heads[s] = NULL;
    }
}

void lsl_i_hfplan_free(lsl_i_hfplan *p)
{
    lsl_i_hfplan_drop_heads(p);
    free(p->names);
    free(p->shard_of);
    free(p->offset);
    free(p->head_len);
    free(p->file_bytes);
    free(p->heads);
    free(p->first);
    free(p->in_file);
    memset(p, 0, sizeof *p);
}

/* huggingface_hub's split: shard ids in list order into shard_of, their count returned. */
static lsl_status split(uint64_t n, const lsl_st_entry *e, uint64_t max, uint32_t *shard_of,
                        uint32_t *nsh)
{
    lsl_status rc = LSL_OK;
    uint32_t count = 0, open_id = UINT32_MAX, nseq = 0;
    uint64_t cur = 0;
    uint32_t *ids = lsl_i_calloc(n ? n : 1, sizeof *ids);
    uint32_t *seq = lsl_i_calloc(n + 1, sizeof *seq); /* creation id of the k-th shard listed */
    uint32_t *pos = lsl_i_calloc(n + 1, sizeof *pos);
    if (!ids || !seq || !pos)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        uint64_t sz = e[i].nbytes;
        if (sz > max) {
            ids[i] = count++;
            seq[nseq++] = ids[i];
            continue;
        }
        if (open_id != UINT32_MAX && cur + sz > max) {
            seq[nseq++] = open_id;
            open_id = UINT32_MAX;
        }
        if (open_id == UINT32_MAX) {
            open_id = count++;
            cur = 0;
        }
        ids[i] = open_id;
        cur += sz;
    }
    if (open_id != UINT32_MAX)
        seq[nseq++] = open_id;
    for (uint32_t k = 0; k < nseq; k++)
        pos[seq[k]] = k;
    for (uint64_t i = 0; i < n; i++)
        shard_of[i] = pos[ids[i]];
    *nsh = nseq ? nseq : 1;
fail:
    free(pos);
    free(ids);
    free(seq);
    return rc;
}

lsl_status lsl_i_hfplan_split(uint64_t n, const lsl_st_entry *e, uint64_t max_shard,
                              lsl_i_hfplan *p)
{
    lsl_status rc = LSL_OK;
    uint32_t nsh = 0, *shard_of = lsl_i_calloc(n ? n : 1, sizeof *shard_of);
    memset(p, 0, sizeof *p);
    if (!shard_of)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(split(n, e, max_shard ? max_shard : DEFAULT_SHARD, shard_of, &nsh));
    LSL_TRY(lsl_i_hfplan_alloc(p, nsh, n));
    memcpy(p->shard_of, shard_of, (n ? n : 1) * sizeof *shard_of);
    for (uint32_t s = 0; s < nsh; s++) {
        if (nsh == 1)
            snprintf(p->names[s], sizeof p->names[s], "model.safetensors");
        else
            snprintf(p->names[s], sizeof p->names[s], "model-%05u-of-%05u.safetensors", s + 1, nsh);
    }
    for (uint64_t i = 0; i < n; i++) {
        p->file_bytes[shard_of[i]] += e[i].nbytes;
        p->first[shard_of[i] + 1]++;
    }
    for (uint32_t s = 0; s < nsh; s++)
        p->first[s + 1] += p->first[s];
fail:
    free(shard_of);
    return rc;
}

lsl_status lsl_i_hfplan_shard(lsl_i_hfplan *p, uint32_t s, uint64_t n, const lsl_st_entry *e,
                              uint64_t align)
{
    lsl_status rc = LSL_OK;
    uint64_t m = 0, data = 0;
    uint64_t *idx = lsl_i_calloc(n ? n : 1, 8), *ord = lsl_i_calloc(n ? n : 1, 8),
             *off = lsl_i_calloc(n ? n : 1, 8);
    lsl_st_entry *sub = lsl_i_calloc(n ? n : 1, sizeof *sub);
    if (!idx || !ord || !off || !sub)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++)
        if (p->shard_of[i] == s) {
            sub[m] = e[i];
            idx[m++] = i;
        }
    free(p->heads[s]);
    p->heads[s] = NULL;
    LSL_TRY(lsl_st_build_header(m, sub, align, ord, off, &p->heads[s], &p->head_len[s]));
    for (uint64_t k = 0; k < m; k++) {
        p->offset[idx[k]] = p->head_len[s] + off[k];
        p->in_file[p->first[s] + k] = idx[ord[k]]; /* ord: the header's (file) order */
        data += sub[k].nbytes;
    }
    p->file_bytes[s] = p->head_len[s] + data;
fail:
    free(idx);
    free(ord);
    free(off);
    free(sub);
    return rc;
}
