# The shell tests' one counter (sourced): each check says what it checked, `ok` or `not_ok`, and
# `finish` prints the tally as its last line and returns non-zero if any check failed, which is
# what ctest and the CI summary read.
lsl_pass=0 lsl_fail=0
ok() {
  echo "ok - $*"
  lsl_pass=$((lsl_pass + 1))
}
not_ok() {
  echo "FAIL - $*"
  lsl_fail=$((lsl_fail + 1))
}
# finish: the last command of a test script.
finish() {
  echo "$lsl_pass passed, $lsl_fail failed"
  [ "$lsl_fail" -eq 0 ] && [ "$lsl_pass" -gt 0 ]
}
