#include "lsl_plan.h"

#include "lsl_adapter.h"
#include "lsl_checkpoint.h"

#include <errno.h>
#include <jansson.h>
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
    char **nk = lsl_i_realloc(p->keys, (p->nattrs + 1) * sizeof *nk);
    if (nk)
        p->keys = nk;
    char **nv = lsl_i_realloc(p->vals, (p->nattrs + 1) * sizeof *nv);
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

/* What the adapter holds for one module. */
typedef struct module_ref {
    char *name;
    int64_t a, b;   /* lora_A.weight, lora_B.weight */
    int64_t ea, eb; /* lora_embedding_A, lora_embedding_B */
    int64_t bias;   /* lora_B.bias */
    int64_t mag;    /* lora_magnitude_vector */
} module_ref;

static bool ends_with(const char *s, size_t len, const char *suffix, size_t *stem)
{
    size_t n = strlen(suffix);
    if (len <= n || strcmp(s + len - n, suffix) != 0)
        return false;
    *stem = len - n;
    return true;
}

static module_ref *module_of(module_ref *m, uint64_t *n, const char *name, size_t len)
{
    for (uint64_t j = 0; j < *n; j++)
        if (strlen(m[j].name) == len && strncmp(m[j].name, name, len) == 0)
            return &m[j];
    m[*n] = (module_ref){strndup(name, len), -1, -1, -1, -1, -1, -1};
    return m[*n].name ? &m[(*n)++] : NULL;
}

/* Map the adapter's keys to modules (LoRA factors, DoRA magnitudes, LoRA biases) and to
 * replacement tensors (modules_to_save, trained biases: every other key). */
static lsl_status collect_modules(const lsl_st_file *ad, module_ref **out, uint64_t *nout,
                                  int64_t **repl, uint64_t *nrepl)
{
    lsl_status rc = LSL_OK;
    module_ref *m = lsl_i_calloc(ad->ntensors ? ad->ntensors : 1, sizeof *m);
    int64_t *rp = lsl_i_calloc(ad->ntensors ? ad->ntensors : 1, sizeof *rp);
    uint64_t n = 0, nr = 0;
    if (!m || !rp)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < ad->ntensors; i++) {
        const char *key = ad->tensors[i].name, *rest;
        if (strncmp(key, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0)
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: tensor `%s` does not start with \"%s\" (not a PEFT adapter file?)",
                     ad->path, key, PEFT_PREFIX);
        rest = key + strlen(PEFT_PREFIX);
        size_t len = strlen(rest), stem = 0;
        int64_t *slot = NULL;
        module_ref *mr = NULL;
#define KIND(suffix, field)                                                                        \
    if (!slot && ends_with(rest, len, suffix, &stem)) {                                            \
        if (!(mr = module_of(m, &n, rest, stem)))                                                  \
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");                                              \
        slot = &mr->field;                                                                         \
    }
        KIND(".lora_A.weight", a)
        KIND(".lora_B.weight", b)
        KIND(".lora_B.bias", bias)
        KIND(".lora_embedding_A", ea)
        KIND(".lora_embedding_B", eb)
        KIND(".lora_magnitude_vector.weight", mag)
        KIND(".lora_magnitude_vector", mag)
#undef KIND
        if (slot) {
            if (*slot >= 0)
                LSL_FAIL(LSL_ERR_FORMAT, "%s: `%s` appears twice", ad->path, key);
            *slot = (int64_t)i;
        } else if (strstr(rest, ".lora_A.") || strstr(rest, ".lora_B.") ||
                   strstr(rest, ".lora_embedding_") || strstr(rest, "lora_magnitude_vector.")) {
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: `%s` still carries an adapter name (expected ...lora_A.weight); save "
                     "the adapter with PEFT's save_pretrained",
                     ad->path, key);
        } else if (strstr(rest, "lora_")) {
            LSL_FAIL(LSL_ERR_UNSUPPORTED, "%s: `%s` is a LoRA tensor loraslab does not know",
                     ad->path, key);
        } else {
            rp[nr++] = (int64_t)i;
        }
    }
    *out = m;
    *nout = n;
    *repl = rp;
    *nrepl = nr;
    return LSL_OK;
fail:
    for (uint64_t j = 0; m && j < n; j++)
        free(m[j].name);
    free(m);
    free(rp);
    return rc;
}

static bool float_dtype(lsl_dtype d)
{
    return d == LSL_F32 || d == LSL_BF16 || d == LSL_F16;
}

static lsl_plan_tensor *find_plan(lsl_plan *p, const char *module, const char *suffix)
{
    size_t n = strlen(module), k = strlen(suffix);
    for (uint64_t i = 0; i < p->n; i++) {
        const char *nm = p->t[i].info.name;
        if (strlen(nm) == n + k && strncmp(nm, module, n) == 0 && strcmp(nm + n, suffix) == 0)
            return &p->t[i];
    }
    return NULL;
}

#define DIMS(t)                                                                                    \
    (unsigned long long)(t)->shape[0], (unsigned long long)((t)->ndim > 1 ? (t)->shape[1] : 0)

static lsl_status attach_lora(lsl_plan *p, const lsl_st_file *ad, uint32_t adfile,
                              const lsl_adapter_cfg *cfg, int conv1d, const module_ref *m)
{
    const char *path = ad->path, *mn = m->name;
    bool emb = m->ea >= 0 || m->eb >= 0;
    const lsl_st_tensor *A =
        emb ? (m->ea >= 0 ? &ad->tensors[m->ea] : NULL) : (m->a >= 0 ? &ad->tensors[m->a] : NULL);
    const lsl_st_tensor *B =
        emb ? (m->eb >= 0 ? &ad->tensors[m->eb] : NULL) : (m->b >= 0 ? &ad->tensors[m->b] : NULL);
    if (!A && !B && (m->bias >= 0 || m->mag >= 0))
        return lsl_i_fail(LSL_ERR_FORMAT,
                          "%s: module %s has a LoRA bias or DoRA magnitude but no "
                          "lora_A/lora_B",
                          path, mn);
    if (!A || !B)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s has lora_%s%s but no lora_%s%s", path, mn,
                          emb ? "embedding_" : "", A ? "A" : "B", emb ? "embedding_" : "",
                          A ? "B" : "A");
    lsl_plan_tensor *t = find_plan(p, mn, ".weight");
    if (!t)
        return lsl_i_fail(LSL_ERR_NOT_FOUND,
                          "%s: the adapter targets module %s but the base checkpoint has no "
                          "tensor %s.weight (wrong base model?)",
                          path, mn, mn);
    const lsl_tensor_info *W = &t->info;
    if (W->ndim != 2)
        return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                          "%s: module %s: base weight has %d dimensions; LoRA on non-Linear "
                          "layers (Conv) is not supported",
                          path, mn, W->ndim);
    if (!float_dtype(W->dtype))
        return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                          "tensor `%s` has dtype %s; only BF16, F16 and F32 weights can be merged "
                          "(quantized bases are refused)",
                          W->name, lsl_dtype_name(W->dtype));
    if (!float_dtype(A->dtype) || !float_dtype(B->dtype))
        return lsl_i_fail(LSL_ERR_DTYPE, "%s: module %s: LoRA dtypes %s/%s; need F32, BF16, F16",
                          path, mn, lsl_dtype_name(A->dtype), lsl_dtype_name(B->dtype));
    /* Linear: W [out, in], A [r, in], B [out, r].  Embeddings (A [r, vocab], B [dim, r]) and
     * GPT-2 Conv1D with fan_in_fan_out (W [in, out]) take the delta transposed. */
    bool tr = emb || conv1d;
    uint64_t wr = W->shape[0], wc = W->shape[1];
    uint64_t want_a = tr ? wr : wc, want_b = tr ? wc : wr;
    if (A->ndim != 2 || B->ndim != 2 || A->shape[1] != want_a || B->shape[0] != want_b ||
        A->shape[0] != B->shape[1])
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "%s: module %s: base weight is [%llu, %llu] but lora_%sA is [%llu, %llu] "
                          "and lora_%sB is [%llu, %llu] (expected [r, %llu] and [%llu, r]%s)",
                          path, mn, (unsigned long long)wr, (unsigned long long)wc,
                          emb ? "embedding_" : "", DIMS(A), emb ? "embedding_" : "", DIMS(B),
                          (unsigned long long)want_a, (unsigned long long)want_b,
                          tr ? ", the delta being transposed" : "");
    uint64_t r = A->shape[0], want = lsl_adapter_rank_for(cfg, mn);
    if (r != want)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "%s: module %s: lora_A has rank %llu but adapter_config.json says r=%llu "
                          "(after rank_pattern)",
                          path, mn, (unsigned long long)r, (unsigned long long)want);
    if (r == 0)
        return lsl_i_fail(LSL_ERR_SHAPE, "%s: module %s: rank 0", path, mn);
    /* A replaced weight (PEFT saves a targeted embedding's base layer) is W0 for the delta: PEFT
     * loads it into the base layer and applies the LoRA on top. */
    if (t->has_lora)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s is targeted twice", path, mn);
    t->has_lora = tr ? LSL_PLAN_TRANSPOSED : LSL_PLAN_LINEAR;
    t->a_file = t->b_file = adfile;
    t->a_off = ad->data_start + A->begin;
    t->b_off = ad->data_start + B->begin;
    t->a_dtype = A->dtype;
    t->b_dtype = B->dtype;
    t->a_cols = A->shape[1];
    t->r = r;
    t->alpha = lsl_adapter_alpha_for(cfg, mn);
    t->scaling = lsl_adapter_scaling(cfg, r, t->alpha);
    /* PEFT's Embedding layer merges at the weight's precision (its Linear layers in fp32). */
    t->flags = (cfg->rslora ? LSL_LORA_RSLORA : 0) | (emb ? LSL_LORA_DELTA_IN_WEIGHT_DTYPE : 0);
    if (!isfinite(t->scaling))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: module %s: scaling is not finite", path, mn);
    if (cfg->use_dora != (m->mag >= 0))
        return lsl_i_fail(LSL_ERR_FORMAT,
                          cfg->use_dora ? "%s: use_dora is set but module %s has no "
                                          "lora_magnitude_vector"
                                        : "%s: module %s has a lora_magnitude_vector but use_dora "
                                          "is not set",
                          path, mn);
    if (m->mag >= 0) {
        const lsl_st_tensor *M = &ad->tensors[m->mag];
        if (emb)
            return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                              "%s: module %s: DoRA on embeddings is not supported", path, mn);
        /* Linear: one magnitude per output row (local to a row slice); Conv1D (fan_in_fan_out):
         * one per output = per stored column, the norm reduced across ranks. */
        uint64_t mlen = tr ? wc : wr;
        if (M->ndim != 1 || M->shape[0] != mlen || !float_dtype(M->dtype))
            return lsl_i_fail(LSL_ERR_SHAPE,
                              "%s: module %s: lora_magnitude_vector must be [%llu] of a float "
                              "dtype",
                              path, mn, (unsigned long long)mlen);
        t->has_dora = 1;
        t->m_off = ad->data_start + M->begin;
        t->m_dtype = M->dtype;
        if (tr)
            t->flags |= LSL_I_LORA_DORA_COLUMNS;
    }
    if (cfg->lora_bias != (m->bias >= 0))
        return lsl_i_fail(LSL_ERR_FORMAT,
                          cfg->lora_bias ? "%s: lora_bias is set but module %s has no lora_B.bias"
                                         : "%s: module %s has a lora_B.bias but lora_bias is not "
                                           "set",
                          path, mn);
    if (m->bias >= 0) {
        const lsl_st_tensor *Bb = &ad->tensors[m->bias];
        lsl_plan_tensor *bt = find_plan(p, mn, ".bias");
        if (!bt)
            return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                              "%s: module %s: Impossible to merge LoRA with lora_bias=True because "
                              "the base layer has no bias (%s.bias)",
                              path, mn, mn);
        if (Bb->ndim != 1 || bt->info.ndim != 1 || Bb->shape[0] != bt->info.shape[0] ||
            !float_dtype(Bb->dtype) || !float_dtype(bt->info.dtype))
            return lsl_i_fail(LSL_ERR_SHAPE, "%s: module %s: lora_B.bias does not fit %s.bias",
                              path, mn, mn);
        if (bt->has_lora)
            return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s.bias gets two LoRA biases", path, mn);
        bt->has_lora = LSL_PLAN_BIAS;
        bt->b_file = bt->a_file = adfile;
        bt->b_off = ad->data_start + Bb->begin;
        bt->b_dtype = Bb->dtype;
        bt->a_dtype = LSL_F32;
        bt->r = 1;
        bt->alpha = t->alpha;
        bt->scaling = t->scaling;
        bt->flags = t->flags;
        p->nmerged++;
    }
    p->nmerged++;
    return LSL_OK;
}

/* modules_to_save copies and trained biases: the adapter's tensor replaces the base tensor, in
 * the adapter's dtype (what PEFT's merged model holds). */
static lsl_status attach_replacement(lsl_plan *p, const lsl_st_file *ad, uint32_t adfile,
                                     const lsl_st_tensor *T)
{
    char name[1024];
    const char *rest = T->name + strlen(PEFT_PREFIX);
    /* drop a ".base_layer" component, and an older PEFT's ".modules_to_save.<adapter>" */
    snprintf(name, sizeof name, "%s", rest);
    char *bl = strstr(name, ".base_layer.");
    if (bl)
        memmove(bl, bl + strlen(".base_layer"), strlen(bl + strlen(".base_layer")) + 1);
    char *ms = strstr(name, ".modules_to_save.");
    if (ms) {
        char *after = strchr(ms + strlen(".modules_to_save."), '.');
        if (after)
            memmove(ms, after, strlen(after) + 1);
    }
    lsl_plan_tensor *t = find_plan(p, name, "");
    if (!t)
        return lsl_i_fail(LSL_ERR_NOT_FOUND,
                          "%s: `%s` would replace base tensor `%s`, which the base does not have",
                          ad->path, T->name, name);
    bool same = t->info.ndim == T->ndim;
    for (int d = 0; same && d < T->ndim; d++)
        same = t->info.shape[d] == T->shape[d];
    if (!same)
        return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                          "%s: `%s` has a different shape from the base tensor `%s` (a resized "
                          "vocabulary?); refusing rather than changing the model's config",
                          ad->path, T->name, name);
    if (t->replaced)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: base tensor `%s` is replaced twice", ad->path, name);
    t->replaced = 1;
    t->file = adfile;
    t->off = ad->data_start + T->begin;
    t->info.dtype = T->dtype;
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
    uint64_t nmods = 0, nrepl = 0;
    int64_t *repl = NULL;
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
    char **nf = lsl_i_realloc(p->files, (p->nfiles + 1) * sizeof *nf);
    if (!nf)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    p->files = nf;
    if (!(p->files[p->nfiles] = lsl_i_strdup(stp)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    uint32_t adfile = p->nfiles++;
    LSL_TRY(collect_modules(&ad, &mods, &nmods, &repl, &nrepl));
    /* PEFT transposes only GPT-2's Conv1D layers (and forces fan_in_fan_out off for Linear ones,
     * with a warning): the checkpoint's model_type tells which this is. */
    int conv1d = 0;
    if (cfg.fan_in_fan_out) {
        json_t *bc = ck->config_json ? json_loads(ck->config_json, 0, NULL) : NULL;
        const char *mt = json_string_value(json_object_get(bc, "model_type"));
        conv1d = mt && strcmp(mt, "gpt2") == 0;
        if (!conv1d && jc->quiet != LSL_PROGRESS_NONE)
            lsl_i_log(LSL_LOG_WARN,
                      "loraslab: warning: fan_in_fan_out is set but the base model (%s) has no "
                      "Conv1D layers; ignored, as PEFT does\n",
                      mt ? mt : "model_type unknown");
        json_decref(bc);
    }
    for (uint64_t i = 0; i < nrepl; i++)
        LSL_TRY(attach_replacement(p, &ad, adfile, &ad.tensors[repl[i]]));
    /* PEFT gives a LoRA layer only to the modules the config selects and never loads factors
     * for the others: they are not merged here either, and the user hears which. */
    uint64_t skipped = 0;
    const char *first_skipped = NULL;
    for (uint64_t i = 0; i < nmods; i++) {
        if (!lsl_adapter_targets(&cfg, mods[i].name)) {
            first_skipped = first_skipped ? first_skipped : mods[i].name;
            skipped++;
            continue;
        }
        LSL_TRY(attach_lora(p, &ad, adfile, &cfg, conv1d, &mods[i]));
    }
    if (skipped && jc->quiet != LSL_PROGRESS_NONE)
        lsl_i_log(LSL_LOG_WARN,
                  "loraslab: warning: %s holds LoRA factors for %llu module%s that the config's "
                  "target_modules / exclude_modules / layers_to_transform do not select (first: "
                  "%s); not merged, as PEFT does not load them\n",
                  stp, (unsigned long long)skipped, skipped == 1 ? "" : "s", first_skipped);
    LSL_TRY(add_attr(p, "adapter_config_json", text));
    LSL_TRY(lsl_i_check_utf8(jc->adapter, "the adapter path (recorded in the file)"));
    LSL_TRY(add_attr(p, "adapter_path", jc->adapter));
fail:
    for (uint64_t i = 0; i < nmods; i++)
        free(mods[i].name);
    free(mods);
    free(repl);
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
    LSL_TRY(lsl_ckpt_open(jc->base, jc->quiet != LSL_PROGRESS_NONE, &ck));
    p->files = lsl_i_calloc(ck.nfiles, sizeof *p->files);
    p->t = lsl_i_calloc(ck.ntensors ? ck.ntensors : 1, sizeof *p->t);
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
    LSL_TRY(lsl_i_check_utf8(jc->base, "the base path (recorded in the file)"));
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
