#include "lsl_adapter.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void lsl_adapter_cfg_free(lsl_adapter_cfg *c)
{
    if (!c)
        return;
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

static lsl_status parse_patterns(const char *label, const char *field, json_t *obj, bool integer,
                                 lsl_pattern **out, uint64_t *n)
{
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
        /* PEFT matches these as Python regexes; POSIX ERE agrees on the common subset.  Python-only
         * syntax (escapes like \d, (?...) groups) would silently change meaning, so refuse it. */
        if (strchr(k, '\\') || strstr(k, "(?"))
            return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                              "%s: %s key \"%s\" uses Python-only regex syntax (\\ or (?...)), "
                              "which loraslab cannot match exactly",
                              label, field, k);
        const char *risk =
            strlen(k) > PATTERN_MAX_LEN ? "is longer than 256 bytes" : pattern_risk(k);
        if (risk)
            return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                              "%s: %s key \"%.80s%s\" %s (loraslab bounds a pattern's cost by its "
                              "length)",
                              label, field, k, strlen(k) > 80 ? "..." : "", risk);
        size_t rl = strlen(k) + 16;
        char *rx = lsl_i_malloc(rl);
        if (!rx)
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        snprintf(rx, rl, "^(.*\\.)?(%s)$", k);
        int e = regcomp(&p->re, rx, REG_EXTENDED | REG_NOSUB);
        free(rx);
        if (e != 0)
            return lsl_i_fail(LSL_ERR_FORMAT, "%s: %s key \"%s\" is not a valid regex", label,
                              field, k);
        p->key = lsl_i_strdup(k);
        p->value = integer ? (double)json_integer_value(v) : json_number_value(v);
        (*n)++;
        if (!p->key)
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    return LSL_OK;
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
