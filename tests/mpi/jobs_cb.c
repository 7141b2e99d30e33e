/* The offline jobs over a callback communicator (tests/mpi/lsl_test_cb.h: MPI underneath), so
 * tests can compare their outputs with the CLI's MPI path byte for byte.
 *   jobs_cb merge BASE ADAPTER OUT [STAGING_MIB]   (ADAPTER "-": a plain import)
 *   jobs_cb convert IN OUTDIR
 *   jobs_cb verify PATH
 * LSL_TEST_MAX_SHARD=BYTES sets a directory output's shard size (merge).
 * LSL_TEST_CB_FAIL=N makes the Nth callback fail; LSL_TEST_CB_COUNT=1 prints how many there
 * were.  Exit 0, or 1 with the error on stderr. */
#include "lsl_test_cb.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const char *f = getenv("LSL_TEST_CB_FAIL");
    lsl_test_cb_fail_at = f ? atol(f) : 0;
    lsl_comm *cb = lsl_test_cb_world();
    int rank = lsl_comm_rank(cb);
    lsl_status st = LSL_ERR_INVALID_ARG;
    if (argc >= 5 && strcmp(argv[1], "merge") == 0) {
        lsl_job_config cfg = LSL_JOB_CONFIG_INIT;
        cfg.base = argv[2];
        cfg.adapter = strcmp(argv[3], "-") == 0 ? NULL : argv[3];
        cfg.output = argv[4];
        cfg.staging_bytes = argc > 5 ? (uint64_t)atol(argv[5]) << 20 : 0;
        const char *shard = getenv("LSL_TEST_MAX_SHARD");
        cfg.max_shard_bytes = shard ? (uint64_t)atoll(shard) : 0;
        cfg.quiet = LSL_PROGRESS_NONE;
        st = lsl_merge_all(cb, &cfg, NULL);
    } else if (argc >= 4 && strcmp(argv[1], "convert") == 0) {
        lsl_convert_config cfg = LSL_CONVERT_CONFIG_INIT;
        cfg.input = argv[2];
        cfg.outdir = argv[3];
        cfg.quiet = LSL_PROGRESS_NONE;
        st = lsl_convert_all(cb, &cfg, NULL);
    } else if (argc >= 3 && strcmp(argv[1], "verify") == 0) {
        st = lsl_verify_all(cb, argv[2], 0, LSL_PROGRESS_NONE, NULL);
    } else if (rank == 0) {
        fprintf(stderr, "usage: jobs_cb merge|convert|verify ...\n");
    }
    if (st != LSL_OK && rank == 0)
        fprintf(stderr, "jobs_cb %s: %s [%s]\n", argc > 1 ? argv[1] : "?", lsl_last_error(),
                lsl_status_name(st));
    if (getenv("LSL_TEST_CB_COUNT") && rank == 0) /* how many collectives the job made */
        fprintf(stderr, "jobs_cb: %ld callbacks on rank 0\n", lsl_test_cb_calls);
    lsl_comm_free(&cb);
    MPI_Comm_free(&lsl_test_cb_comm);
    MPI_Finalize();
    return st == LSL_OK ? 0 : 1;
}
