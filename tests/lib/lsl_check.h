/* The C tests' one counter, as tests/lib/harness.sh is the shell tests': CHECK records a failed
 * check with its place and message and the test goes on; lsl_check_report prints one "ok - " or
 * "FAIL - " line for a group of checks; lsl_check_finish prints the tally and gives the exit
 * status.  Under MPI, set lsl_check_sum to a sum over the ranks and lsl_check_rank to this
 * rank's, so that every rank reaches the same verdict and rank 0 alone prints it. */
#ifndef LSL_CHECK_H
#define LSL_CHECK_H

#include <stdio.h>

static int lsl_check_rank, lsl_check_failed, lsl_check_groups, lsl_check_bad_groups;
static int (*lsl_check_sum)(int local); /* NULL: this process is the whole test */

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "[rank %d] %s:%d: check failed: %s: ", lsl_check_rank, __FILE__,       \
                    __LINE__, #cond);                                                              \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            lsl_check_failed++;                                                                    \
        }                                                                                          \
    } while (0)

/* Failed checks so far, over every rank (collective under MPI). */
static inline int lsl_check_total(void)
{
    return lsl_check_sum ? lsl_check_sum(lsl_check_failed) : lsl_check_failed;
}

/* Ends a group of checks begun when lsl_check_total() was `before` (collective under MPI). */
static inline void lsl_check_report(const char *name, int before)
{
    int all = lsl_check_total();
    lsl_check_groups++;
    lsl_check_bad_groups += all > before;
    if (lsl_check_rank == 0)
        printf("%s - %s\n", all > before ? "FAIL" : "ok", name);
}

/* The tally, last: "PASSED: what, N failed checks" and "G passed, B failed" (the groups), and
 * the exit status (collective under MPI). */
static inline int lsl_check_finish(const char *what)
{
    int all = lsl_check_total();
    if (lsl_check_rank == 0) {
        printf("%s: %s, %d failed checks\n", all ? "FAILED" : "PASSED", what, all);
        printf("%d passed, %d failed\n", lsl_check_groups - lsl_check_bad_groups,
               lsl_check_bad_groups);
    }
    return all ? 1 : 0;
}

#endif
