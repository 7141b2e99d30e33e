#include "lsl_adapter.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void names_free(lsl_names *n)
{
    if (n->is_regex)
        regfree(&n->re);
    for (uint64_t i = 0; i < n->n; i++)
        free(n->names[i]);
    free(n->names);
    memset(n, 0, sizeof *n);
}

void lsl_adapter_cfg_free(lsl_adapter_cfg *c)
{
    if (!c)
        return;
    names_free(&c->targets);
    names_free(&c->excludes);
    for (uint64_t i = 0; i < c->nlayer_re; i++)
        regfree(&c->layer_re[i]);
    free(c->layer_re);
    free(c->layers);
    for (uint64_t i = 0; i < c->nrank_pat; i++) {
        free(c->rank_pat[i].key);
        regfree(&c->rank_pat[i].re);
    }
    for (uint64_t i = 0; i < c->nalpha_pat; i++) {
        free(c->alpha_pat[i].key);
        regfree(&c->alpha_pat[i].re);
    }
    free(c->rank_pat);
    free(c->alpha_pat);
    free(c->base_model);
    memset(c, 0, sizeof *c);
}

/* A JSON value that switches an option on: true, a non-empty string/array/object, a number. */
static bool is_set(const json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return false;
    if (json_is_array(v))
        return json_array_size(v) > 0;
    if (json_is_object(v))
        return json_object_size(v) > 0;
    if (json_is_string(v))
        return json_string_length(v) > 0;
    return true;
}

/* Bounds on rank_pattern / alpha_pattern keys.  glibc compiles ERE into automata whose size can
 * double with each stacked or nested quantifier (a key "q_pr" + "+" * 22 + "oj" took 3 GB and
 * 17 s), so keys are refused before regcomp when they could cost more than their length: real
 * keys are module names or short patterns (".*q_proj", "layers.[0-9]+.mlp"). */
#define PATTERN_MAX_KEYS 4096
#define PATTERN_MAX_LEN  256
#define PATTERN_MAX_REP  16 /* largest count in {m,n} */
#define PATTERN_MAX_NEST 8  /* deepest group nesting */

/* NULL when key's cost is bounded by its length; else what is wrong with it. */
static const char *pattern_risk(const char *k)
{
    int depth = 0, prev_quant = 0, group_q = 0; /* group_q: the atom just closed held one */
    int inner[PATTERN_MAX_NEST + 1] = {0};      /* per open group: it holds a quantifier */
    for (const char *c = k; *c; c++) {
        if (*c == '[') { /* a bracket expression is one atom: skip to its closing ']' */
            const char *e = c + 1;
            if (*e == '^')
                e++;
            if (*e == ']')
                e++;
            while (*e && *e != ']') {
                if (*e == '[' && (e[1] == ':' || e[1] == '.' || e[1] == '=')) {
                    const char *q = strchr(e + 2, e[1]);
                    e = q && q[1] == ']' ? q + 1 : e;
                }
                e++;
            }
            if (!*e)
                return "has an unclosed [";
            c = e;
            prev_quant = group_q = 0;
        } else if (*c == '(') {
            if (++depth > PATTERN_MAX_NEST)
                return "nests groups more than 8 deep";
            inner[depth] = 0;
            prev_quant = group_q = 0;
        } else if (*c == ')') {
            if (depth == 0)
                return "has an unmatched )";
            group_q = inner[depth--];
            if (group_q && depth > 0)
                inner[depth] = 1;
            prev_quant = 0;
        } else if (*c == '*' || *c == '+' || *c == '?' || *c == '{') {
            if (prev_quant)
                return "stacks quantifiers (like ++ or *?); write one";
            if (group_q)
                return "repeats a group that repeats inside (like (a+)+)";
            if (*c == '{') {
                char *end;
                unsigned long m = strtoul(c + 1, &end, 10), n = m;
                if (end == c + 1)
                    return "has a { that is not a count";
                if (*end == ',')
                    n = end[1] == '}' ? ULONG_MAX : strtoul(end + 1, &end, 10);
                else if (*end != '}')
                    return "has a { that is not a count";
                end = strchr(end, '}');
                if (!end)
                    return "has an unclosed {";
                if (m > PATTERN_MAX_REP || (n != ULONG_MAX && n > PATTERN_MAX_REP))
                    return "repeats more than 16 times ({m,n} past 16)";
                c = end;
            }
            if (depth > 0)
                inner[depth] = 1;
            prev_quant = 1;
        } else {
            prev_quant = group_q = 0;
        }
    }
    return depth ? "has an unclosed (" : NULL;
}

/* A Python regex as POSIX ERE: the escapes PEFT configs use (\. and other escaped punctuation,
 * \d, \w, \s) become their ERE spelling; other Python-only syntax ((?...) groups, \b, back
 * references) would silently change meaning, so it is refused (NULL, *why set). */
static char *python_to_ere(const char *k, const char **why)
{
    size_t n = strlen(k);
    char *out = lsl_i_malloc(n * 14 + 1), *o = out;
    *why = out ? NULL : "out of memory";
    if (!out)
        return NULL;
    if (strstr(k, "(?")) {
        *why = "uses a (?...) group, Python-only regex syntax";
        free(out);
        return NULL;
    }
    for (const char *c = k; *c; c++) {
        if (*c != '\\') {
            *o++ = *c;
            continue;
        }
        const char *rep = c[1] == 'd'   ? "[0-9]"
                          : c[1] == 'w' ? "[[:alnum:]_]"
                          : c[1] == 's' ? "[[:space:]]"
                                        : NULL;
        if (rep) {
            o += sprintf(o, "%s", rep);
        } else if (c[1] && !((c[1] >= 'a' && c[1] <= 'z') || (c[1] >= 'A' && c[1] <= 'Z') ||
                             (c[1] >= '0' && c[1] <= '9'))) {
            *o++ = '\\';
            *o++ = c[1];
        } else {
            *why = "uses a \\ escape that is Python-only regex syntax";
            free(out);
            return NULL;
        }
        c++;
    }
    *o = '\0';
    return out;
}

/* A Python regex as POSIX ERE, wrapped by fmt (which holds one %s), under the same bounds and
 * refusals as the pattern keys. */
static lsl_status compile_bounded(const char *label, const char *field, const char *k,
                                  const char *fmt, regex_t *re)
{
    const char *why = NULL;
    char *ere = python_to_ere(k, &why), *rx = NULL;
    lsl_status rc = LSL_OK;
    if (!ere)
        LSL_FAIL(why[0] == 'o' ? LSL_ERR_NOMEM : LSL_ERR_UNSUPPORTED,
                 "%s: %s \"%.80s\" %s, which loraslab cannot match exactly", label, field, k, why);
    const char *risk = strlen(k) > PATTERN_MAX_LEN ? "is longer than 256 bytes" : pattern_risk(ere);
    if (risk)
        LSL_FAIL(LSL_ERR_UNSUPPORTED,
                 "%s: %s \"%.80s%s\" %s (loraslab bounds a pattern's cost by its length)", label,
                 field, k, strlen(k) > 80 ? "..." : "", risk);
    size_t rl = strlen(ere) + strlen(fmt) + 1;
    if (!(rx = lsl_i_malloc(rl)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    snprintf(rx, rl, fmt, ere);
    if (regcomp(re, rx, REG_EXTENDED) != 0)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: %s \"%s\" is not a valid regex", label, field, k);
fail:
    free(ere);
    free(rx);
    return rc;
}

static lsl_status parse_patterns(const char *label, const char *field, json_t *obj, bool integer,
                                 lsl_pattern **out, uint64_t *n)
{
    lsl_status rc = LSL_OK;
    *out = NULL;
    *n = 0;
    if (!obj || json_is_null(obj))
        return LSL_OK;
    if (!json_is_object(obj))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s is not an object", label, field);
    size_t cnt = json_object_size(obj);
    if (cnt > PATTERN_MAX_KEYS)
        return lsl_i_fail(LSL_ERR_UNSUPPORTED, "%s: %s has %zu keys; loraslab takes at most %d",
                          label, field, cnt, PATTERN_MAX_KEYS);
    *out = lsl_i_calloc(cnt ? cnt : 1, sizeof **out);
    if (!*out)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach (obj, k, v) {
        lsl_pattern *p = &(*out)[*n];
        if (integer ? !json_is_integer(v) || json_integer_value(v) <= 0 : !json_is_number(v))
            return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s[\"%s\"] must be a %s", label, field, k,
                              integer ? "positive integer" : "number");
        LSL_TRY(compile_bounded(label, field, k, "^(.*\\.)?(%s)$", &p->re));
        p->key = lsl_i_strdup(k);
        p->value = integer ? (double)json_integer_value(v) : json_number_value(v);
        (*n)++;
        if (!p->key)
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
fail:
    return rc;
}

/* target_modules / exclude_modules / layers_pattern: a string (a regex matched whole; for
 * layers_pattern a name) or a list of names. */
static lsl_status parse_names(const char *label, const char *field, const json_t *v,
                              bool string_is_regex, lsl_names *out)
{
    memset(out, 0, sizeof *out);
    if (!is_set(v))
        return LSL_OK;
    out->set = 1;
    if (json_is_string(v) && string_is_regex) {
        lsl_status st = compile_bounded(label, field, json_string_value(v), "^(%s)$", &out->re);
        out->is_regex = st == LSL_OK;
        return st;
    }
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_string(v))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s is neither a string nor a list", label, field);
    if (n > PATTERN_MAX_KEYS)
        return lsl_i_fail(LSL_ERR_UNSUPPORTED, "%s: %s has %zu entries; loraslab takes at most %d",
                          label, field, n, PATTERN_MAX_KEYS);
    if (!(out->names = lsl_i_calloc(n, sizeof *out->names)))
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(e))
            return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s[%zu] is not a string", label, field, i);
        if (!(out->names[out->n++] = lsl_i_strdup(json_string_value(e))))
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    return LSL_OK;
}

static lsl_status parse_targets(const char *label, json_t *root, lsl_adapter_cfg *c)
{
    lsl_status rc = LSL_OK;
    lsl_names pats; /* layers_pattern, until compiled into c->layer_re */
    memset(&pats, 0, sizeof pats);
    json_t *t = json_object_get(root, "target_modules");
    /* "all-linear" is expanded by PEFT to the model's linear layers before it saves; a file
     * that still says it gets every module its factors name */
    if (!(json_is_string(t) && strcmp(json_string_value(t), "all-linear") == 0))
        LSL_TRY(parse_names(label, "target_modules", t, true, &c->targets));
    LSL_TRY(parse_names(label, "exclude_modules", json_object_get(root, "exclude_modules"), true,
                        &c->excludes));
    json_t *lp = json_object_get(root, "layers_pattern");
    if (json_is_string(lp) || json_is_array(lp))
        LSL_TRY(parse_names(label, "layers_pattern", lp, false, &pats));
    /* PEFT's re.match(rf".*\.{pattern}\.(\d+)\.", key), or r".*\.[^.]*\.(\d+)\." without one */
    uint64_t npats = pats.n ? pats.n : 1;
    if (!(c->layer_re = lsl_i_calloc(npats, sizeof *c->layer_re)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < npats; i++, c->nlayer_re++)
        LSL_TRY(compile_bounded(label, "layers_pattern", pats.n ? pats.names[i] : "[^.]*",
                                "^.*\\.(%s)\\.([0-9]+)\\.", &c->layer_re[i]));
    json_t *lt = json_object_get(root, "layers_to_transform");
    if (json_is_integer(lt) || (json_is_array(lt) && json_array_size(lt) > 0)) {
        size_t n = json_is_array(lt) ? json_array_size(lt) : 1;
        if (n > PATTERN_MAX_KEYS)
            LSL_FAIL(LSL_ERR_UNSUPPORTED, "%s: layers_to_transform has %zu entries", label, n);
        if (!(c->layers = lsl_i_calloc(n, sizeof *c->layers)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            const json_t *e = json_is_array(lt) ? json_array_get(lt, i) : lt;
            if (!json_is_integer(e))
                LSL_FAIL(LSL_ERR_FORMAT, "%s: layers_to_transform[%zu] is not an integer", label,
                         i);
            c->layers[c->nlayers++] = json_integer_value(e);
        }
    } else if (lt && !json_is_null(lt) && !json_is_array(lt)) {
        LSL_FAIL(LSL_ERR_FORMAT, "%s: layers_to_transform is neither an integer nor a list", label);
    }
fail:
    names_free(&pats);
    return rc;
}

lsl_status lsl_adapter_cfg_parse(const char *label, const char *text, lsl_adapter_cfg *c)
{
    lsl_status rc = LSL_OK;
    json_error_t jerr;
    memset(c, 0, sizeof *c);
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: invalid JSON (line %d): %s", label, jerr.line, jerr.text);
    if (!json_is_object(root))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: not a JSON object", label);
    json_t *pt = json_object_get(root, "peft_type");
    if (!json_is_string(pt))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: peft_type is missing", label);
    if (strcmp(json_string_value(pt), "LORA") != 0)
        LSL_FAIL(LSL_ERR_UNSUPPORTED,
                 "%s: peft_type \"%s\" is not supported: loraslab merges LoRA adapters only "
                 "(AdaLoRA, VeRA, LoHa, LoKr, IA3 and others use different math)",
                 label, json_string_value(pt));
    json_t *r = json_object_get(root, "r");
    if (!json_is_integer(r) || json_integer_value(r) <= 0)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: r must be a positive integer", label);
    c->r = (uint64_t)json_integer_value(r);
    json_t *a = json_object_get(root, "lora_alpha");
    if (a && !json_is_number(a))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: lora_alpha must be a number", label);
    c->alpha = a ? json_number_value(a) : 8.0; /* PEFT's default */
    c->rslora = json_is_true(json_object_get(root, "use_rslora"));
    c->use_dora = json_is_true(json_object_get(root, "use_dora"));
    c->fan_in_fan_out = json_is_true(json_object_get(root, "fan_in_fan_out"));
    c->lora_bias = json_is_true(json_object_get(root, "lora_bias"));

    /* Options whose math loraslab does not (yet) reproduce: refuse by name rather than write a
     * model that differs from what PEFT would produce. */
    static const char *const refused[] = {
        "target_parameters", "trainable_token_indices", "layer_replication",       "use_qalora",
        "arrow_config",      "velora_config",           "alora_invocation_tokens", "use_bdlora",
        "kasa_config",       "monteclora_config",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        if (is_set(json_object_get(root, refused[i])))
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: option %s is set; loraslab cannot merge it exactly (refusing rather "
                     "than writing a wrong model)",
                     label, refused[i]);
    json_t *bias = json_object_get(root, "bias");
    if (json_is_string(bias) && strcmp(json_string_value(bias), "none") != 0 &&
        strcmp(json_string_value(bias), "all") != 0 &&
        strcmp(json_string_value(bias), "lora_only") != 0)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: bias=\"%s\" is not one of none, all, lora_only", label,
                 json_string_value(bias));
    json_t *init = json_object_get(root, "init_lora_weights");
    if (json_is_string(init)) {
        const char *s = json_string_value(init);
        if (strncmp(s, "pissa", 5) == 0 || strcmp(s, "olora") == 0 || strcmp(s, "corda") == 0 ||
            strcmp(s, "loftq") == 0)
            LSL_FAIL(LSL_ERR_UNSUPPORTED,
                     "%s: init_lora_weights=\"%s\" trains against a modified base model; merging "
                     "onto the original base would be wrong",
                     label, s);
    }
    LSL_TRY(parse_patterns(label, "rank_pattern", json_object_get(root, "rank_pattern"), true,
                           &c->rank_pat, &c->nrank_pat));
    LSL_TRY(parse_patterns(label, "alpha_pattern", json_object_get(root, "alpha_pattern"), false,
                           &c->alpha_pat, &c->nalpha_pat));
    LSL_TRY(parse_targets(label, root, c));
    json_t *bm = json_object_get(root, "base_model_name_or_path");
    if (json_is_string(bm) && !(c->base_model = lsl_i_strdup(json_string_value(bm))))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    json_decref(root);
    return LSL_OK;
fail:
    json_decref(root);
    lsl_adapter_cfg_free(c);
    return rc;
}

static const lsl_pattern *match(const lsl_pattern *p, uint64_t n, const char *module)
{
    for (uint64_t i = 0; i < n; i++)
        if (regexec(&p[i].re, module, 0, NULL, 0) == 0)
            return &p[i];
    return NULL;
}

uint64_t lsl_adapter_rank_for(const lsl_adapter_cfg *c, const char *module)
{
    const lsl_pattern *p = match(c->rank_pat, c->nrank_pat, module);
    return p ? (uint64_t)p->value : c->r;
}

double lsl_adapter_alpha_for(const lsl_adapter_cfg *c, const char *module)
{
    const lsl_pattern *p = match(c->alpha_pat, c->nalpha_pat, module);
    return p ? p->value : c->alpha;
}

double lsl_adapter_scaling(const lsl_adapter_cfg *c, uint64_t r, double alpha)
{
    return c->rslora ? alpha / sqrt((double)r) : alpha / (double)r;
}

/* A list entry matches a module by its whole name or as its last dotted components. */
static bool names_match(const lsl_names *n, const char *module)
{
    if (n->is_regex)
        return regexec(&n->re, module, 0, NULL, 0) == 0;
    size_t ml = strlen(module);
    for (uint64_t i = 0; i < n->n; i++) {
        size_t kl = strlen(n->names[i]);
        if (strcmp(module, n->names[i]) == 0 ||
            (ml > kl && module[ml - kl - 1] == '.' && strcmp(module + ml - kl, n->names[i]) == 0))
            return true;
    }
    return false;
}

/* The layer index PEFT reads from a module name: re.match(r".*\.[^.]*\.(\d+)\.", key), or with
 * layers_pattern re.match(rf".*\.{pattern}\.(\d+)\.", key) for the first pattern that matches;
 * -1 when none does. */
static int64_t layer_index(const lsl_adapter_cfg *c, const char *module)
{
    regmatch_t m[3];
    for (uint64_t i = 0; i < c->nlayer_re; i++)
        if (regexec(&c->layer_re[i], module, 3, m, 0) == 0 && m[2].rm_so >= 0)
            return strtoll(module + m[2].rm_so, NULL, 10);
    return -1;
}

bool lsl_adapter_targets(const lsl_adapter_cfg *c, const char *module)
{
    if (c->excludes.set && names_match(&c->excludes, module))
        return false;
    if (!c->targets.set)
        return true;
    if (c->targets.is_regex)
        return names_match(&c->targets, module);
    for (uint64_t i = 0; i < c->targets.n; i++)
        if (strcmp(module, c->targets.names[i]) == 0)
            return true; /* named whole: PEFT skips the layer check */
    if (!names_match(&c->targets, module))
        return false;
    if (!c->nlayers)
        return true;
    int64_t k = layer_index(c, module);
    for (uint64_t i = 0; k >= 0 && i < c->nlayers; i++)
        if (c->layers[i] == k)
            return true;
    return false;
}
