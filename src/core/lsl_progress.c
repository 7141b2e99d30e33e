#include "lsl_progress.h"

#include <stdio.h>

void lsl_i_progress_start(lsl_i_progress *p, const char *verb, int mode, int ranks,
                          uint64_t tensors_total, uint64_t bytes_total)
{
    p->verb = verb;
    p->mode = mode;
    p->ranks = ranks;
    p->tensors_total = tensors_total;
    p->bytes_total = bytes_total;
    p->t0 = p->last = lsl_i_now();
}

bool lsl_i_progress_due(lsl_i_progress *p, bool last)
{
    if (p->mode == LSL_PROGRESS_NONE)
        return false;
    double now = lsl_i_now();
    if (!last && now - p->last < LSL_I_PROGRESS_EVERY_S)
        return false;
    p->last = now;
    return true;
}

void lsl_i_progress_json(const lsl_i_progress *p, uint64_t tensors_done, uint64_t bytes_done,
                         bool last)
{
    double el = p->last - p->t0 > 1e-9 ? p->last - p->t0 : 1e-9;
    double rate = (double)bytes_done / el;
    double eta = last || rate <= 0 ? 0 : (double)(p->bytes_total - bytes_done) / rate;
    lsl_i_log(LSL_LOG_INFO,
              "{\"event\":\"progress\",\"command\":\"%s\",\"tensors_done\":%llu,"
              "\"tensors_total\":%llu,\"bytes_done\":%llu,\"bytes_total\":%llu,"
              "\"rate_bytes_per_s\":%.0f,\"eta_s\":%.1f,\"elapsed_s\":%.3f,\"ranks\":%d,"
              "\"done\":%s}\n",
              p->verb, (unsigned long long)tensors_done, (unsigned long long)p->tensors_total,
              (unsigned long long)bytes_done, (unsigned long long)p->bytes_total, rate, eta, el,
              p->ranks, last ? "true" : "false");
}
