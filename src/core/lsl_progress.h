/* What a long job prints on stderr while it runs, on rank 0: the human lines, or one JSON object
 * per line for schedulers and dashboards (LSL_PROGRESS_JSON), at most every PROGRESS_EVERY_S and
 * always at the end. */
#ifndef LSL_PROGRESS_H
#define LSL_PROGRESS_H

#include "lsl_internal.h"

typedef struct lsl_i_progress {
    const char *verb; /* "merge", "import", "convert", "verify", "write" */
    int mode;         /* LSL_PROGRESS_TEXT, _NONE, _JSON */
    int ranks;
    uint64_t tensors_total, bytes_total;
    double t0, last;
} lsl_i_progress;

#define LSL_I_PROGRESS_EVERY_S 2.0

void lsl_i_progress_start(lsl_i_progress *p, const char *verb, int mode, int ranks,
                          uint64_t tensors_total, uint64_t bytes_total);
/* Whether a line is due now (always when last). */
bool lsl_i_progress_due(lsl_i_progress *p, bool last);
/* One JSON line: {"event":"progress","command":...,"tensors_done":...,"tensors_total":...,
 * "bytes_done":...,"bytes_total":...,"rate_bytes_per_s":...,"eta_s":...,"elapsed_s":...,
 * "ranks":...,"done":false|true}.  Call after lsl_i_progress_due said yes. */
void lsl_i_progress_json(const lsl_i_progress *p, uint64_t tensors_done, uint64_t bytes_done,
                         bool last);

#endif
