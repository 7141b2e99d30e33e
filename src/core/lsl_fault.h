/* Fault injection, for tests: LSL_FAULT="KIND:N[,KIND:N...]" makes the Nth hooked call of each
 * KIND (write, malloc, fsync, rename) fail on the rank LSL_FAULT_RANK names (every rank when it is
 * unset), the way the real call fails: NULL for malloc, -1 with EIO for the others.  The rank
 * comes from the launcher's environment (PMI_RANK, OMPI_COMM_WORLD_RANK, SLURM_PROCID, RANK), so
 * the hooks never call MPI and may run on helper threads.  Read once; when LSL_FAULT is unset a
 * hook costs one load and a branch. */
#ifndef LSL_FAULT_H
#define LSL_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum lsl_i_fault_kind {
    LSL_FAULT_WRITE,
    LSL_FAULT_MALLOC,
    LSL_FAULT_FSYNC,
    LSL_FAULT_RENAME,
    LSL_FAULT_KINDS
} lsl_i_fault_kind;

/* Counts a call of kind k; true when this one is to fail. */
bool lsl_i_fault(lsl_i_fault_kind k);

/* The library's allocations and data-path system calls, through the hooks. */
void *lsl_i_malloc(size_t n);
void *lsl_i_calloc(size_t n, size_t size);
void *lsl_i_realloc(void *p, size_t n);
ssize_t lsl_i_pwrite(int fd, const void *buf, size_t n, off_t off);
ssize_t lsl_i_write(int fd, const void *buf, size_t n);
int lsl_i_fsync(int fd);
int lsl_i_rename(const char *from, const char *to);
/* renameat2(RENAME_NOREPLACE) under the rename hook; copy_file_range under the write hook. */
int lsl_i_rename_noreplace(const char *from, const char *to);
/* Swaps the two names atomically (renameat2 RENAME_EXCHANGE; EINVAL where unsupported). */
int lsl_i_rename_exchange(const char *a, const char *b);
ssize_t lsl_i_copy_file_range(int in, int64_t *in_off, int out, int64_t *out_off, size_t n);

#endif
