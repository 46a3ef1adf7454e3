#!/usr/bin/env bash
# Installs the Debian packages smrdb needs that are missing, and says which.
#   deps.sh build   - to build the workspace (verbs backend: cmake, libclang, rdma-core headers)
#   deps.sh run     - to run (libibverbs + providers, perftest, psql for the psql session test)
#   deps.sh vm      - for soft-roce-setup/vm.sh (qemu, busybox, rdma tools)
#   deps.sh all     - everything
set -euo pipefail

build=(build-essential pkg-config cmake clang libclang-dev libibverbs-dev librdmacm-dev libhwloc-dev libudev-dev)
run=(libibverbs1 librdmacm1 ibverbs-providers rdma-core ibverbs-utils perftest postgresql-client)
vm=(qemu-system-x86 busybox-static cpio iproute2 rdma-core ibverbs-utils perftest)

want=()
for mode in "${@:-all}"; do
  case "$mode" in
    build) want+=("${build[@]}") ;;
    run) want+=("${run[@]}") ;;
    vm) want+=("${vm[@]}") ;;
    all) want+=("${build[@]}" "${run[@]}" "${vm[@]}") ;;
    *) echo "deps.sh: unknown set '$mode' (build, run, vm, all)" >&2; exit 2 ;;
  esac
done

missing=()
for p in $(printf '%s\n' "${want[@]}" | sort -u); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "smrdb: installing missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "smrdb: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "smrdb: installed ${missing[*]}"
