#!/usr/bin/env bash
# host.sh -- add a Soft-RoCE (rdma_rxe) device on a host whose kernel has it.
#
#   soft-roce-setup/host.sh [NETDEV] [RXE_NAME]
#
# NETDEV defaults to the interface of the default route, RXE_NAME to rxe0.
# Idempotent: does nothing if RXE_NAME already sits on NETDEV. Needs root.
# Kernels without rdma_rxe (like the dev/CI machines): use vm.sh instead.
set -euo pipefail

prog=host.sh
say() { printf '%s: %s\n' "$prog" "$*"; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

case "${1:-}" in
    -h|--help)
        sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
esac
[ $# -le 2 ] || die "usage: host.sh [NETDEV] [RXE_NAME]"
[ "$(id -u)" = 0 ] || die "must run as root (modprobe, rdma link add)"

# iproute2: ip, rdma; kmod: modprobe; libibverbs1 + ibverbs-providers: the
# user-space verbs library and its rxe provider; ibverbs-utils: ibv_devices.
missing=()
for p in iproute2 kmod libibverbs1 ibverbs-providers ibverbs-utils; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing missing packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        || die "apt-get install ${missing[*]} failed"
fi

NETDEV=${1:-$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')}
NAME=${2:-rxe0}
[ -n "$NETDEV" ] || die "no default route; name the network device: host.sh NETDEV [RXE_NAME]"
ip link show dev "$NETDEV" >/dev/null 2>&1 || die "no network device '$NETDEV'"

if [ -d /sys/module/rdma_rxe ]; then
    :   # loaded already, or built in
elif ! err=$(modprobe rdma_rxe 2>&1); then
    die "kernel $(uname -r) has no rdma_rxe (Soft-RoCE) module${err:+ ($err)}.
  Run RDMA code in a micro-VM instead:  soft-roce-setup/vm.sh -- CMD..."
fi

# netdev of an existing rdma link, from 'link NAME/1 state ... netdev DEV'
link_netdev() {
    rdma link show 2>/dev/null | awk -v n="$1/" 'index($2, n) == 1 {
        for (i = 3; i < NF; i++) if ($i == "netdev") { print $(i + 1); exit } }'
}

if [ -e "/sys/class/infiniband/$NAME" ]; then
    cur=$(link_netdev "$NAME")
    if [ "$cur" = "$NETDEV" ]; then
        say "$NAME already exists on $NETDEV; nothing to do"
    else
        die "$NAME already exists on ${cur:-another device}, not on $NETDEV (remove it: rdma link delete $NAME)"
    fi
else
    other=$(rdma link show 2>/dev/null | awk -v d="$NETDEV" '{
        for (i = 3; i < NF; i++) if ($i == "netdev" && $(i + 1) == d) { split($2, a, "/"); print a[1]; exit } }')
    [ -z "$other" ] || die "$NETDEV already carries RDMA device $other; use that name or remove it (rdma link delete $other)"
    rdma link add "$NAME" type rxe netdev "$NETDEV" || die "rdma link add $NAME type rxe netdev $NETDEV failed"
    say "added Soft-RoCE device $NAME on $NETDEV"
fi
rdma link show "$NAME/1" 2>/dev/null || true
if command -v ibv_devices >/dev/null; then ibv_devices; fi
lim=$(ulimit -l)
[ "$lim" = unlimited ] || say "note: locked-memory limit is ${lim} KiB here; RDMA programs usually need 'ulimit -l unlimited'"
