/* A program built against an installed loraslab (find_package or pkg-config): every rank writes
 * its rows of one tensor, merged with a rank-2 LoRA delta, through the public in-job API. */
#include <loraslab.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 2) {
        fprintf(stderr, "usage: consumer OUT.h5\n");
        MPI_Finalize();
        return 2;
    }
    enum { ROWS = 7, COLS = 3, R = 2 };
    float w0[ROWS * COLS], b[ROWS * R], a[R * COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        w0[i] = (float)i;
    for (int i = 0; i < ROWS * R; i++)
        b[i] = 0.5f;
    for (int i = 0; i < R * COLS; i++)
        a[i] = 0.25f;
    uint64_t r0, nr;
    lsl_partition_rows(ROWS, size, rank, &r0, &nr);
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.overwrite = 1;
    cfg.quiet = 1;
    lsl_writer *w = NULL;
    lsl_tensor_info t = {"model.w.weight", LSL_F32, 2, {ROWS, COLS}};
    /* A whole on every rank (r x in is small): passed whole, nothing of it is gathered; B's rows
     * those of the part */
    lsl_lora_part l = {R,
                       4.0,
                       2.0,
                       {a, LSL_F32, 0, R * COLS, 0},
                       {b + r0 * R, LSL_F32, r0 * R, nr * R, 0},
                       {NULL, LSL_F32, 0, 0, 0},
                       0};
    lsl_part p = {r0, nr, w0 + r0 * COLS, LSL_MEM_HOST, NULL, &l, 0, 0};
    lsl_comm *comm = NULL;
    lsl_status st = lsl_comm_from_mpi(MPI_COMM_WORLD, &comm);
    if (st == LSL_OK)
        st = lsl_writer_create_all(comm, argv[1], &cfg, &w);
    lsl_comm_free(&comm); /* the writer keeps its own communicator */
    if (st == LSL_OK)
        st = lsl_writer_define_all(w, 1, &t);
    if (st == LSL_OK)
        st = lsl_writer_put_all(w, 0, &p);
    if (st == LSL_OK)
        st = lsl_writer_close_all(&w);
    else
        lsl_writer_abort_all(&w);
    if (rank == 0)
        printf("consumer: loraslab %s (built against %d), %d ranks: %s %s\n", lsl_version_string(),
               LSL_VERSION_NUMBER, size, lsl_status_name(st), lsl_last_error());
    MPI_Finalize();
    return st == LSL_OK ? 0 : 1;
}
