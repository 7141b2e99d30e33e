#!/usr/bin/env bash
# The GPU writer test at 2 ranks, checking which path gathered LoRA A (GPU machine):
#   gather_paths.sh MPIEXEC TEST_WRITER_GPU
# With two or more GPUs visible each rank takes its own: LSL_GATHER=nccl must send A over NCCL,
# while by default this test's small A stays on the host path (NCCL starts only after 1 GiB of
# A).  With one GPU the ranks share it and A must go through host memory even when NCCL is asked
# for.  LSL_GATHER=mpi must force the MPI path either way.  Each run must also pass every check
# of the writer test itself.
set -uo pipefail
mpiexec=$1 test=$2
# The report also goes to $LSL_TESTOUTDIR/gather_paths.txt (ci/device-test.sh's table).
report=${LSL_TESTOUTDIR:-/tmp}/gather_paths.txt
exec > >(tee "$report") 2>&1
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  ngpu=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
else
  ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
fi
fail=0
run() { # NAME EXPECT (nccl|mpi) [ENV=VALUE]
  local name=$1 want=$2 out
  shift 2
  out=$(env LSL_TEST_LOUD=1 "$@" "$mpiexec" -n 2 "$test" 2>&1)
  local rc=$?
  # One line per writer the test opens (rank 0's): single puts, then batched puts.  Each writer
  # has row-sharded A's (NCCL's) and column-sharded ones (always the host path), so NCCL must
  # show in every writer's line, single and batched, and with the MPI path in none.
  local lines
  lines=$(grep -E 'LoRA A gathers:' <<<"$out" | sed 's/^loraslab: //')
  echo "$name: $(grep -E 'device path:' <<<"$out" | head -1 | sed 's/^loraslab: //')"
  sed "s/^/$name: /" <<<"$lines"
  if [ $rc -ne 0 ] || ! grep -q '^PASSED' <<<"$out"; then
    echo "$name: FAILED: the writer test failed (rc $rc)"; grep -E 'FAIL|error' <<<"$out" | head -20
    fail=1; return
  fi
  if [ "$want" = nccl ] && { [ -z "$lines" ] || grep -qE 'gathers: 0 over NCCL' <<<"$lines"; }; then
    echo "$name: FAILED: expected gathers over NCCL in every writer"; fail=1
  elif [ "$want" = mpi ] && { grep -qE 'gathers: [1-9][0-9]* over NCCL' <<<"$lines" ||
    ! grep -qE 'gathers: 0 over NCCL, [1-9]' <<<"$lines"; }; then
    echo "$name: FAILED: expected every gather through host memory"; fail=1
  else
    echo "$name: ok ($want path)"
  fi
}
echo "gather_paths: $ngpu GPU(s) visible"
if [ "$ngpu" -ge 2 ]; then
  run "one GPU per rank, LSL_GATHER=nccl" nccl LSL_GATHER=nccl
  run "one GPU per rank, small A" mpi
else
  run "ranks share the GPU, LSL_GATHER=nccl" mpi LSL_GATHER=nccl
fi
run "LSL_GATHER=mpi" mpi LSL_GATHER=mpi
exit $fail
