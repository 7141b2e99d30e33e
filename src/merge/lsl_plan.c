#include "lsl_plan.h"

#include "lsl_adapter.h"
#include "lsl_checkpoint.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PEFT_PREFIX "base_model.model."

void lsl_plan_free(lsl_plan *p)
{
    if (!p)
        return;
    for (uint32_t i = 0; i < p->nfiles; i++)
        free(p->files[i]);
    free(p->files);
    for (uint64_t i = 0; i < p->n; i++)
        free((char *)p->t[i].info.name);
    free(p->t);
    for (uint64_t i = 0; i < p->nattrs; i++) {
        free(p->keys[i]);
        free(p->vals[i]);
    }
    free(p->keys);
    free(p->vals);
    memset(p, 0, sizeof *p);
}

static lsl_status add_attr(lsl_plan *p, const char *k, const char *v)
{
    char **nk = realloc(p->keys, (p->nattrs + 1) * sizeof *nk);
    if (nk)
        p->keys = nk;
    char **nv = realloc(p->vals, (p->nattrs + 1) * sizeof *nv);
    if (nv)
        p->vals = nv;
    if (!nk || !nv)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    p->keys[p->nattrs] = lsl_i_strdup(k);
    p->vals[p->nattrs] = lsl_i_strdup(v);
    p->nattrs++;
    return p->keys[p->nattrs - 1] && p->vals[p->nattrs - 1] ? LSL_OK
                                                            : lsl_i_fail(LSL_ERR_NOMEM, "oom");
}

static const char *last_component(const char *p, char *buf, size_t len)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    size_t s = n;
    while (s > 0 && p[s - 1] != '/')
        s--;
    snprintf(buf, len, "%.*s", (int)(n - s), p + s);
    return buf;
}

typedef struct module_ref {
    char *name;
    int64_t a, b; /* adapter tensor indices */
} module_ref;

/* Map the adapter's keys to modules; anything that is not a plain lora_A/lora_B weight is
 * refused with the reason. */
static lsl_status collect_modules(const lsl_st_file *ad, module_ref **out, uint64_t *nout)
{
    lsl_status rc = LSL_OK;
    module_ref *m = calloc(ad->ntensors ? ad->ntensors : 1, sizeof *m);
    uint64_t n = 0;
    if (!m)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < ad->ntensors; i++) {
        const char *key = ad->tensors[i].name, *rest;
        if (strncmp(key, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0)
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: tensor `%s` does not start with \"%s\" (not a PEFT adapter file?)",
                     ad->path, key, PEFT_PREFIX);
        rest = key + strlen(PEFT_PREFIX);
        size_t len = strlen(rest);
        int which = -1;
        size_t mlen = 0;
        if (len > 14 && strcmp(rest + len - 14, ".lora_A.weight") == 0)
            which = 0, mlen = len - 14;
        else if (len > 14 && strcmp(rest + len - 14, ".lora_B.weight") == 0)
            which = 1, mlen = len - 14;
        else if (strstr(rest, "lora_magnitude_vector"))
            LSL_FAIL(LSL_ERR_UNSUPPORTED, "%s: `%s` is a DoRA magnitude (use_dora): not supported",
                     ad->path, key);
        else if (strstr(rest, "lora_embedding_"))
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: `%s`: LoRA on embeddings is not supported by this version", ad->path,
                     key);
        else if (strstr(rest, ".lora_B.bias"))
            LSL_FAIL(LSL_ERR_UNSUPPORTED, "%s: `%s` is a LoRA bias (lora_bias): not supported",
                     ad->path, key);
        else if (strstr(rest, ".lora_A.") || strstr(rest, ".lora_B."))
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: `%s` still carries an adapter name (expected ...lora_A.weight); save "
                     "the adapter with PEFT's save_pretrained",
                     ad->path, key);
        else
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: `%s` would replace a base tensor (modules_to_save or a trained bias): "
                     "not supported by this version",
                     ad->path, key);
        uint64_t j = 0;
        while (j < n && !(strlen(m[j].name) == mlen && strncmp(m[j].name, rest, mlen) == 0))
            j++;
        if (j == n) {
            m[n].name = strndup(rest, mlen);
            m[n].a = m[n].b = -1;
            if (!m[n++].name)
                LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        }
        if (which == 0)
            m[j].a = (int64_t)i;
        else
            m[j].b = (int64_t)i;
    }
    *out = m;
    *nout = n;
    return LSL_OK;
fail:
    for (uint64_t j = 0; j < n; j++)
        free(m[j].name);
    free(m);
    return rc;
}

static bool float_dtype(lsl_dtype d)
{
    return d == LSL_F32 || d == LSL_BF16 || d == LSL_F16;
}

static lsl_status attach_lora(lsl_plan *p, const lsl_ckpt *ck, const lsl_st_file *ad,
                              uint32_t adfile, const lsl_adapter_cfg *cfg, const module_ref *m)
{
    const lsl_st_tensor *A = m->a >= 0 ? &ad->tensors[m->a] : NULL;
    const lsl_st_tensor *B = m->b >= 0 ? &ad->tensors[m->b] : NULL;
    if (!A || !B)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s has lora_%s but no lora_%s", ad->path,
                          m->name, A ? "A" : "B", A ? "B" : "A");
    size_t wl = strlen(m->name) + 8;
    char *wname = malloc(wl);
    if (!wname)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    snprintf(wname, wl, "%s.weight", m->name);
    lsl_ckpt_ref ref;
    bool found = lsl_ckpt_find(ck, wname, &ref);
    lsl_plan_tensor *t = NULL;
    for (uint64_t i = 0; found && i < p->n; i++)
        if (strcmp(p->t[i].info.name, wname) == 0)
            t = &p->t[i];
    free(wname);
    if (!t)
        return lsl_i_fail(LSL_ERR_NOT_FOUND,
                          "%s: the adapter targets module %s but the base checkpoint has no "
                          "tensor %s.weight (wrong base model?)",
                          ad->path, m->name, m->name);
    const lsl_st_tensor *W = lsl_ckpt_tensor(ck, ref);
    if (W->ndim != 2)
        return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                          "%s: module %s: base weight has %d dimensions; LoRA on non-Linear "
                          "layers (Conv) is not supported",
                          ad->path, m->name, W->ndim);
    if (!float_dtype(W->dtype))
        return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                          "%s: tensor `%s` has dtype %s; only BF16, F16 and F32 weights can be "
                          "merged (quantized bases are refused)",
                          ck->files[ref.file].path, W->name, lsl_dtype_name(W->dtype));
    if (!float_dtype(A->dtype) || !float_dtype(B->dtype))
        return lsl_i_fail(LSL_ERR_DTYPE, "%s: module %s: LoRA dtypes %s/%s; need F32, BF16, F16",
                          ad->path, m->name, lsl_dtype_name(A->dtype), lsl_dtype_name(B->dtype));
    uint64_t out = W->shape[0], in = W->shape[1];
    if (A->ndim != 2 || B->ndim != 2 || A->shape[1] != in || B->shape[0] != out ||
        A->shape[0] != B->shape[1])
        return lsl_i_fail(
            LSL_ERR_SHAPE,
            "%s: module %s: base weight is [%llu, %llu] but lora_A is [%llu, %llu] "
            "and lora_B is [%llu, %llu] (expected [r, %llu] and [%llu, r])",
            ad->path, m->name, (unsigned long long)out, (unsigned long long)in,
            (unsigned long long)A->shape[0], (unsigned long long)(A->ndim > 1 ? A->shape[1] : 0),
            (unsigned long long)B->shape[0], (unsigned long long)(B->ndim > 1 ? B->shape[1] : 0),
            (unsigned long long)in, (unsigned long long)out);
    uint64_t r = A->shape[0], want = lsl_adapter_rank_for(cfg, m->name);
    if (r != want)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "%s: module %s: lora_A has rank %llu but adapter_config.json says r=%llu "
                          "(after rank_pattern)",
                          ad->path, m->name, (unsigned long long)r, (unsigned long long)want);
    if (r == 0)
        return lsl_i_fail(LSL_ERR_SHAPE, "%s: module %s: rank 0", ad->path, m->name);
    if (t->has_lora)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s appears twice", ad->path, m->name);
    t->has_lora = 1;
    t->a_file = t->b_file = adfile;
    t->a_off = ad->data_start + A->begin;
    t->b_off = ad->data_start + B->begin;
    t->a_dtype = A->dtype;
    t->b_dtype = B->dtype;
    t->r = r;
    t->alpha = lsl_adapter_alpha_for(cfg, m->name);
    t->scaling = lsl_adapter_scaling(cfg, r, t->alpha);
    if (!isfinite(t->scaling))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s: scaling is not finite", ad->path,
                          m->name);
    p->nmerged++;
    return LSL_OK;
}

static lsl_status add_adapter(const lsl_job_config *jc, const lsl_ckpt *ck, lsl_plan *p)
{
    lsl_status rc = LSL_OK;
    char *cfgp = lsl_i_join(jc->adapter, "adapter_config.json");
    char *stp = lsl_i_join(jc->adapter, "adapter_model.safetensors");
    char *binp = lsl_i_join(jc->adapter, "adapter_model.bin");
    char *text = NULL;
    lsl_adapter_cfg cfg;
    lsl_st_file ad;
    module_ref *mods = NULL;
    uint64_t nmods = 0;
    struct stat sb;
    memset(&cfg, 0, sizeof cfg);
    memset(&ad, 0, sizeof ad);
    if (!cfgp || !stp || !binp)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    if (stat(jc->adapter, &sb) != 0 || !S_ISDIR(sb.st_mode))
        LSL_FAIL(LSL_ERR_NOT_FOUND, "%s: adapter directory not found", jc->adapter);
    LSL_TRY(lsl_i_read_text(cfgp, 16u << 20, &text, NULL));
    LSL_TRY(lsl_adapter_cfg_parse(cfgp, text, &cfg));
    if (jc->strict) {
        char b1[256], b2[256];
        if (!cfg.base_model)
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: --strict: base_model_name_or_path is missing from the adapter config",
                     cfgp);
        if (strcmp(cfg.base_model, jc->base) != 0 &&
            strcmp(last_component(cfg.base_model, b1, sizeof b1),
                   last_component(jc->base, b2, sizeof b2)) != 0)
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: --strict: base_model_name_or_path is \"%s\" but the base is %s", cfgp,
                     cfg.base_model, jc->base);
    }
    if (stat(stp, &sb) != 0) {
        if (stat(binp, &sb) == 0)
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: adapter_model.bin is a pickle; loraslab reads only "
                     "adapter_model.safetensors",
                     jc->adapter);
        LSL_FAIL(LSL_ERR_NOT_FOUND, "%s: not found", stp);
    }
    LSL_TRY(lsl_st_open(stp, &ad));
    char **nf = realloc(p->files, (p->nfiles + 1) * sizeof *nf);
    if (!nf)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    p->files = nf;
    if (!(p->files[p->nfiles] = lsl_i_strdup(stp)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    uint32_t adfile = p->nfiles++;
    LSL_TRY(collect_modules(&ad, &mods, &nmods));
    for (uint64_t i = 0; i < nmods; i++)
        LSL_TRY(attach_lora(p, ck, &ad, adfile, &cfg, &mods[i]));
    LSL_TRY(add_attr(p, "adapter_config_json", text));
    LSL_TRY(add_attr(p, "adapter_path", jc->adapter));
fail:
    for (uint64_t i = 0; i < nmods; i++)
        free(mods[i].name);
    free(mods);
    lsl_st_free(&ad);
    lsl_adapter_cfg_free(&cfg);
    free(text);
    free(cfgp);
    free(stp);
    free(binp);
    return rc;
}

lsl_status lsl_plan_build(const lsl_job_config *jc, lsl_plan *p)
{
    lsl_status rc = LSL_OK;
    lsl_ckpt ck;
    memset(p, 0, sizeof *p);
    memset(&ck, 0, sizeof ck);
    if (!jc || !jc->base || !jc->output)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "base checkpoint and output are required");
    LSL_TRY(lsl_ckpt_open(jc->base, jc->quiet ? NULL : stderr, &ck));
    p->files = calloc(ck.nfiles, sizeof *p->files);
    p->t = calloc(ck.ntensors ? ck.ntensors : 1, sizeof *p->t);
    if (!p->files || !p->t)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t f = 0; f < ck.nfiles; f++) {
        if (!(p->files[f] = lsl_i_strdup(ck.files[f].path)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        p->nfiles = f + 1;
    }
    for (uint64_t i = 0; i < ck.ntensors; i++) {
        const lsl_st_tensor *s = lsl_ckpt_tensor(&ck, ck.order[i]);
        if (lsl_dtype_bits(s->dtype) % 8 != 0)
            LSL_FAIL(LSL_ERR_UNSUPPORTED, "%s: tensor `%s` has sub-byte dtype %s: not supported",
                     ck.files[ck.order[i].file].path, s->name, lsl_dtype_name(s->dtype));
        if (strchr(s->name, '/') || strcmp(s->name, ".") == 0 || strcmp(s->name, "..") == 0)
            LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor name `%s` cannot name an HDF5 dataset",
                     ck.files[ck.order[i].file].path, s->name);
        lsl_plan_tensor *t = &p->t[i];
        t->info.name = lsl_i_strdup(s->name);
        p->n = i + 1;
        if (!t->info.name)
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        t->info.dtype = s->dtype;
        t->info.ndim = s->ndim;
        memcpy(t->info.shape, s->shape, sizeof s->shape);
        t->file = ck.order[i].file;
        t->off = ck.files[t->file].data_start + s->begin;
    }
    if (ck.config_json)
        LSL_TRY(add_attr(p, "base_config_json", ck.config_json));
    LSL_TRY(add_attr(p, "base_path", jc->base));
    if (jc->adapter)
        LSL_TRY(add_adapter(jc, &ck, p));
    lsl_ckpt_free(&ck);
    return LSL_OK;
fail:
    lsl_ckpt_free(&ck);
    lsl_plan_free(p);
    return rc;
}

/* ---- broadcast: a flat byte encoding of the plan ---- */

typedef struct buf {
    unsigned char *p;
    uint64_t len, cap, pos;
    bool bad;
} buf;

static void put(buf *b, const void *v, uint64_t n)
{
    if (b->bad)
        return;
    if (b->len + n > b->cap) {
        uint64_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            b->bad = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, v, n);
    b->len += n;
}

static void put_u64(buf *b, uint64_t v)
{
    put(b, &v, 8);
}
static void put_str(buf *b, const char *s)
{
    uint64_t n = strlen(s);
    put_u64(b, n);
    put(b, s, n);
}

static void get(buf *b, void *v, uint64_t n)
{
    if (b->bad || b->pos + n > b->len) {
        b->bad = true;
        memset(v, 0, n);
        return;
    }
    memcpy(v, b->p + b->pos, n);
    b->pos += n;
}

static uint64_t get_u64(buf *b)
{
    uint64_t v;
    get(b, &v, 8);
    return v;
}

static char *get_str(buf *b)
{
    uint64_t n = get_u64(b);
    if (b->bad || b->pos + n > b->len) {
        b->bad = true;
        return NULL;
    }
    char *s = strndup((const char *)b->p + b->pos, n);
    b->pos += n;
    if (!s)
        b->bad = true;
    return s;
}

lsl_status lsl_plan_bcast(MPI_Comm comm, lsl_plan *p, lsl_status st)
{
    lsl_status rc = LSL_OK;
    int rank;
    buf b = {0};
    MPI_Comm_rank(comm, &rank);
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0) {
        put_u64(&b, p->nfiles);
        for (uint32_t i = 0; i < p->nfiles; i++)
            put_str(&b, p->files[i]);
        put_u64(&b, p->nattrs);
        for (uint64_t i = 0; i < p->nattrs; i++) {
            put_str(&b, p->keys[i]);
            put_str(&b, p->vals[i]);
        }
        put_u64(&b, p->n);
        put_u64(&b, p->nmerged);
        for (uint64_t i = 0; i < p->n; i++) {
            lsl_plan_tensor t = p->t[i];
            put_str(&b, t.info.name);
            t.info.name = NULL;
            put(&b, &t, sizeof t);
        }
    }
    st = b.bad ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory encoding the plan") : LSL_OK;
    LSL_TRY(lsl_i_agree(comm, st));
    MPI_Bcast(&b.len, 1, MPI_UINT64_T, 0, comm);
    st = LSL_OK;
    if (b.len > (uint64_t)INT_MAX)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "plan of %llu bytes is too large to broadcast",
                        (unsigned long long)b.len);
    else if (rank != 0 && !(b.p = malloc(b.len ? b.len : 1)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the plan");
    LSL_TRY(lsl_i_agree(comm, st));
    MPI_Bcast(b.p, (int)b.len, MPI_BYTE, 0, comm);
    if (rank != 0) {
        memset(p, 0, sizeof *p);
        p->nfiles = (uint32_t)get_u64(&b);
        p->files = calloc(p->nfiles ? p->nfiles : 1, sizeof *p->files);
        for (uint32_t i = 0; p->files && i < p->nfiles; i++)
            p->files[i] = get_str(&b);
        uint64_t na = get_u64(&b);
        p->keys = calloc(na ? na : 1, sizeof *p->keys);
        p->vals = calloc(na ? na : 1, sizeof *p->vals);
        for (uint64_t i = 0; p->keys && p->vals && i < na; i++) {
            p->keys[i] = get_str(&b);
            p->vals[i] = get_str(&b);
            p->nattrs = i + 1;
        }
        uint64_t n = get_u64(&b);
        p->nmerged = get_u64(&b);
        p->t = calloc(n ? n : 1, sizeof *p->t);
        for (uint64_t i = 0; p->t && i < n && !b.bad; i++) {
            char *name = get_str(&b);
            get(&b, &p->t[i], sizeof p->t[i]);
            p->t[i].info.name = name;
            p->n = i + 1;
        }
        if (!p->files || !p->keys || !p->vals || !p->t || b.bad)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory decoding the plan");
    }
    LSL_TRY(lsl_i_agree(comm, st));
fail:
    free(b.p);
    return rc;
}
