#!/usr/bin/env bash
# Runs the verbs parts of the test suite for real: inside the Soft-RoCE micro-VM.
#
#   soft-roce-setup/verbs-tests.sh            build the test binaries (release) on the
#                                             host, boot the VM, run them there
#   soft-roce-setup/verbs-tests.sh --guest L  (inside the VM) run the list L
#
# Each line of the list is "BINARY FILTER": the binary runs with that filter, one test
# thread, --include-ignored (verbs tests are #[ignore]d on hosts without a device) and
# SMRDB_REQUIRE_VERBS=1 (a missing device fails instead of skipping).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

if [ "${1:-}" = "--guest" ]; then
  list=$2
  export SMRDB_REQUIRE_VERBS=1
  # The part of the SQL corpus that runs on a verbs cluster (TCG is ~10x slower).
  export SMRDB_SLT_FILTER=${SMRDB_SLT_FILTER:-select_filter,aggregates,copy,update_delete,errors,join_basic,join_multi}
  [ -n "${SMRDB_VERBS_DEVICE:-}" ] || { echo "verbs-tests: no SMRDB_VERBS_DEVICE inside the VM" >&2; exit 1; }
  fail=0; ran=0
  while read -r bin filter; do
    [ -n "$bin" ] || continue
    echo "== $(basename "$bin") $filter (device $SMRDB_VERBS_DEVICE)"
    ran=$((ran + 1))
    if ! "$bin" $filter --include-ignored --test-threads=1; then fail=$((fail + 1)); fi
  done < "$list"
  echo "verbs-tests: $ran binaries run in the VM, $fail failed"
  [ "$ran" -gt 0 ] && [ "$fail" -eq 0 ]
  exit
fi

cd "$root"
list="$root/target/verbs-tests.list"
mkdir -p target
# Test targets with verbs cases and the filter that selects them.
declare -A filters=( [conformance]="verbs::" [verbs_loopback]="" [router]="verbs::" [hostile_peers]="verbs::" [slt]="slt_verbs" [resources]="verbs_" )
cargo test --release --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
want = dict(a.split("=", 1) for a in sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        print(m["executable"], want[m["target"]["name"]])
' $(for k in "${!filters[@]}"; do printf '%s=%s ' "$k" "${filters[$k]}"; done) > "$list"
n=$(wc -l < "$list")
[ "$n" -eq "${#filters[@]}" ] || { echo "verbs-tests: expected ${#filters[@]} test binaries, found $n:" >&2; cat "$list" >&2; exit 1; }
exec "$here/vm.sh" -- bash "$here/verbs-tests.sh" --guest "$list"
