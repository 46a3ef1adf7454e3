# smrdb: the two commands of the README, and their parts.
#   make demo   the main job: a local run on the shm fabric with a report
#   make test   every test: cargo tests on the host (shm, tcp), the verbs suite in the
#               Soft-RoCE micro-VM
# Both install missing Debian packages first (soft-roce-setup/deps.sh says which).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
CARGO ?= cargo
REPORT_DIR ?= reports/$(shell date -u +%Y%m%d-%H%M%S)-$(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)

.PHONY: all deps build test test-host test-vm demo bench-vm clean

all: build

deps:
	soft-roce-setup/deps.sh all

build: deps
	$(CARGO) build --release --workspace --all-targets

test: deps
	$(CARGO) test --release --workspace --no-fail-fast
	soft-roce-setup/verbs-tests.sh

test-host: deps
	$(CARGO) test --release --workspace --no-fail-fast

test-vm: deps
	soft-roce-setup/verbs-tests.sh

demo: deps
	$(CARGO) build --release --workspace
	./target/release/smrdb-bench paper --quick --fabric shm --nodes 2 --tstores 2 --out reports

# Every experiment of the paper at the quick scale on all three fabrics: shm and tcp
# on this host, verbs (Soft-RoCE rxe0) inside the micro-VM. One report per fabric
# under reports/paper-quick/. The shm run also creates the DuckDB venv the VM reuses.
.PHONY: paper-quick
paper-quick: deps
	$(CARGO) build --release --workspace
	mkdir -p reports/paper-quick
	./target/release/smrdb-bench paper --quick --fabric shm --out reports/paper-quick
	./target/release/smrdb-bench paper --quick --fabric tcp --out reports/paper-quick
	SMRDB_VM_OUTDIR=$(abspath reports/paper-quick) soft-roce-setup/vm.sh -- sh -c '\
	  ./target/release/smrdb-bench paper --quick --fabric verbs --scale 0.2 --out "$$SMRDB_VM_OUT"'

# The verbs figures on rxe, in one boot of the Soft-RoCE VM: transport next to
# ib_write_bw / ib_write_lat, and SMR vs naive broadcast (3 node processes). Sizes are
# small because rxe under qemu/TCG moves tens of MB/s.
bench-vm: deps
	$(CARGO) build --release --workspace
	mkdir -p $(REPORT_DIR)
	SMRDB_VM_OUTDIR=$(abspath $(REPORT_DIR)) soft-roce-setup/vm.sh -- sh -c '\
	  set -e; \
	  ./target/release/smrdb-bench transport --fabric verbs --vs-perftest --mib-per-size 16 --repeats 3 \
	    --lat-iters 2000 --json "$$SMRDB_VM_OUT/transport-verbs.json"; \
	  ./target/release/smrdb-bench broadcast --fabric verbs --nodes 3 --tstores 1,2,4 --size-mib 8 \
	    --repeats 3 --ring-mib 4 --json "$$SMRDB_VM_OUT/broadcast-verbs.json"' | tee $(REPORT_DIR)/report-verbs.md
	@echo "report: $(REPORT_DIR)/report-verbs.md"

clean:
	$(CARGO) clean

# The design's join example ("new customers who bought in July") on smrdb (1 node x 2
# Tstores, shm) and DuckDB (2 threads) side by side: 1 M customers x 10 M purchases,
# answers checked. The CSVs are reused from $TMPDIR/smrdb-query-bench; DuckDB is
# pip-installed once into ~/.cache/smrdb-bench/venv.
.PHONY: bench-query
bench-query: deps
	$(CARGO) build --release --workspace
	mkdir -p $(REPORT_DIR)
	@echo "# smrdb vs DuckDB, multi-set query ($$(git rev-parse --short HEAD 2>/dev/null), $$(date -u +%F))" > $(REPORT_DIR)/report-query.md
	./target/release/smrdb-bench query --fabric shm --nodes 1 --tstores 2 --customers 1000000 --purchases 10000000 \
	  --repeats 5 --duckdb-threads 2 --json $(REPORT_DIR)/query-shm.json | tee -a $(REPORT_DIR)/report-query.md
	@echo "report: $(REPORT_DIR)/report-query.md"

# Fuzzing (fuzz/: a cargo-fuzz project outside the workspace; targets header, task_msg,
# fragment, sql): builds, runs every target FUZZ_SECONDS each, prints execs and crashes
# per target, fails on a crash. Uses nightly if rustup has it, else stable with
# RUSTC_BOOTSTRAP=1; installs cargo-fuzz when missing. fuzz-ci: 10 s per target.
FUZZ_SECONDS ?= 60
.PHONY: fuzz fuzz-ci
fuzz: deps
	fuzz/run.sh $(FUZZ_SECONDS)

fuzz-ci: deps
	fuzz/run.sh 10
