#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60), one after the other;
# prints per target the executions and whether it found a crash, and exits non-zero if
# any did (or if a build or run failed).
#
#   fuzz/run.sh [SECONDS]       FUZZ_TARGETS="header sql" limits the targets
#
# Targets (fuzz/fuzz_targets/): header (router header decode + inbound validation
# against a ring), task_msg (task-protocol envelope + exchange-chunk trailer and IPC
# decode, copied and in place), fragment (a Stages fragment, stage plans and UPDATE /
# DELETE expressions decoded as a Tstore does), sql (parse + plan + distribute + EXPLAIN,
# stage plans and expressions encoded and decoded). Seeds: fuzz/corpus/<target>/
# (checked in: encodings from `cd fuzz && cargo run --example gen_corpus`, and inputs
# of fixed crashes as regressions) and, for sql, every statement of tests/slt/*.slt.
# What the fuzzer learns goes to fuzz/work/<target>/ (kept between runs, not checked
# in); a crash's input to fuzz/artifacts/<target>/, and the script prints how to
# reproduce it.
#
# Needs cargo-fuzz (installed from crates.io when missing) and a nightly toolchain;
# without one (or with FUZZ_TOOLCHAIN=stable) it uses the stable toolchain with
# RUSTC_BOOTSTRAP=1. FUZZ_TARGET_DIR sets the build directory (default fuzz/target).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
secs=${1:-60}
[[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || { echo "usage: fuzz/run.sh [SECONDS > 0]" >&2; exit 2; }
read -r -a targets <<< "${FUZZ_TARGETS:-header task_msg fragment sql}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed; installing it: cargo install cargo-fuzz --locked" >&2
  cargo install cargo-fuzz --locked
fi
# FUZZ_TOOLCHAIN=nightly|stable forces one (default: nightly when rustup has it).
tc=()
want=${FUZZ_TOOLCHAIN:-auto}
if [ "$want" != stable ] && cargo +nightly --version >/dev/null 2>&1; then
  tc=(+nightly)
  echo "fuzz: toolchain $(cargo +nightly --version)"
elif [ "$want" = nightly ]; then
  echo "fuzz: FUZZ_TOOLCHAIN=nightly but \`cargo +nightly\` does not work" >&2; exit 1
else
  # cargo-fuzz passes -Z flags (sanitizer, coverage passes); stable accepts them only
  # with RUSTC_BOOTSTRAP=1.
  if [ "$want" = stable ] && cargo +stable --version >/dev/null 2>&1; then tc=(+stable); fi
  export RUSTC_BOOTSTRAP=1
  echo "fuzz: no nightly toolchain (or FUZZ_TOOLCHAIN=stable): $(cargo "${tc[@]}" --version) with RUSTC_BOOTSTRAP=1"
fi

cd "$root"
# Release builds with AddressSanitizer (cargo-fuzz's default); fuzz/Cargo.toml's
# profile turns on debug assertions and overflow checks in our crates and builds the
# dependencies with few optimizations. 16 codegen units per crate (cargo-fuzz's default
# of 1 makes each of DataFusion's crates one long serial LLVM job). FUZZ_TARGET_DIR:
# where they go (default fuzz/target; a toolchain switch rebuilds everything there).
build=(-O --codegen-units 16)
common=(--fuzz-dir "$here" "${build[@]}")
[ -z "${FUZZ_TARGET_DIR:-}" ] || common+=(--target-dir "$FUZZ_TARGET_DIR")
echo "fuzz: building ${targets[*]}"
if [ -z "${FUZZ_TARGETS:-}" ]; then
  # Every target in one cargo run (their links run in parallel).
  cargo "${tc[@]}" fuzz build "${common[@]}"
else
  for t in "${targets[@]}"; do cargo "${tc[@]}" fuzz build "${common[@]}" "$t"; done
fi

# The sql seeds: each statement of the sqllogictest corpus (the lines after a
# `statement ...` / `query ...` record header, up to a blank line or `----`) of at most
# 1 KiB: the longer ones are the 32- and 64-table joins of join_wide.slt, which take
# seconds each to plan in this build (dependencies barely optimized, under ASan), and
# every seed runs before the timed fuzzing starts.
sqlseeds="$here/work/seeds-sql"
rm -rf "$sqlseeds"; mkdir -p "$sqlseeds"
awk -v dir="$sqlseeds" '
  function flush() { if (sql != "" && length(sql) <= 1024) { n++; f = sprintf("%s/%s-%04d.sql", dir, base, n); printf "%s", sql > f; close(f) } sql = ""; on = 0 }
  FNR == 1 { flush(); base = FILENAME; sub(".*/", "", base); sub("\\.slt$", "", base); n = 0 }
  /^(statement|query)( |$)/ { flush(); on = 1; next }
  on && (/^----/ || /^[[:space:]]*$/) { flush(); next }
  on { sql = sql $0 "\n" }
  END { flush() }
' "$root"/tests/slt/*.slt

status=0
summary=()
for t in "${targets[@]}"; do
  work="$here/work/$t"
  mkdir -p "$work" "$here/artifacts/$t"
  seeds=("$here/corpus/$t")
  extra=()
  case "$t" in
    sql) seeds+=("$sqlseeds"); extra=(-dict="$here/sql.dict" -max_len=4096) ;;
    task_msg) extra=(-max_len=16384) ;;
    fragment) extra=(-max_len=4096) ;;
  esac
  for d in "${seeds[@]}"; do [ -d "$d" ] || { echo "fuzz: missing seed corpus $d" >&2; exit 1; }; done
  log="$here/work/$t.log"
  echo "fuzz: running $t for ${secs}s (log: ${log#"$root"/})"
  start=$(date +%s)
  set +e
  cargo "${tc[@]}" fuzz run "${common[@]}" "$t" "$work" "${seeds[@]}" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=2560 \
    "${extra[@]}" > "$log" 2>&1
  rc=$?
  set -e
  wall=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p; s/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "$work" -type f | wc -l)
  # A crash's, timeout's, leak's or out-of-memory's input (libFuzzer also writes the
  # slowest input, slow-unit-*, which is no failure).
  artifact=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | grep -v '/slow-unit-' | tail -1 || true)
  if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
    verdict="no crash"
  else
    status=1
    if [ -n "$artifact" ]; then
      verdict="CRASH: ${artifact#"$root"/} (reproduce: cargo ${tc[*]} fuzz run --fuzz-dir fuzz ${build[*]} $t ${artifact#"$root"/})"
    else
      verdict="FAILED (exit $rc)"
    fi
    echo "---- $t: last lines of ${log#"$root"/}" >&2
    grep -E "panicked at|ERROR: |SUMMARY: |deadly signal|timeout|out-of-memory" "$log" | head -5 >&2 || true
    tail -n 25 "$log" >&2
  fi
  summary+=("$(printf '%-9s %10s execs in %3ss (wall %ss), coverage %s, corpus %s: %s' "$t" "${execs:-?}" "$secs" "$wall" "${cov:-?}" "$corpus" "$verdict")")
done
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
exit "$status"
