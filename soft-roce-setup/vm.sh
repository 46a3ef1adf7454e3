#!/usr/bin/env bash
# vm.sh -- run a command inside a throwaway micro-VM that has Soft-RoCE (rxe0).
#
#   soft-roce-setup/vm.sh [--] CMD [ARG...]
#
# The VM boots Debian's stock kernel (it ships rdma_rxe) from a busybox
# initramfs under qemu/TCG, mounts the host's root read-only over 9p, chroots
# into it, adds rxe0 on the VM's virtio NIC and runs CMD in the caller's
# current directory. CMD's stdout/stderr go to our stdout/stderr and its exit
# status becomes ours. See soft-roce-setup/README.md for the details and the
# environment variables honoured.
set -euo pipefail

prog=vm.sh
say()  { printf '%s: %s\n' "$prog" "$*" >&2; }
die()  { say "error: $*"; exit 125; }

usage() {
    cat <<'EOF'
usage: soft-roce-setup/vm.sh [--] CMD [ARG...]

Runs CMD inside a throwaway qemu/TCG micro-VM with Soft-RoCE device rxe0 and
exits with CMD's exit status (124: timed out, 125: the VM itself failed).

Environment:
  SMRDB_VM_CACHE    cache dir for kernel + initramfs (default ~/.cache/smrdb-vm)
  SMRDB_VM_MEM      guest memory (qemu -m), default 3G
  SMRDB_VM_SMP      guest CPUs, default 2
  SMRDB_VM_TIMEOUT  seconds before the VM is killed, default 1500
  SMRDB_VM_VERBOSE  1: show downloads, kernel boot log, module loading, rdma link, ibv_devices
  SMRDB_VM_ENV      space-separated names of extra env vars to pass into the VM
                    (always passed: PATH HOME RUST_BACKTRACE RUST_LOG)
  SMRDB_VM_OUTDIR   host dir mounted read-write in the VM (same path), exposed as
                    $SMRDB_VM_OUT; default: a temp dir deleted afterwards
  SMRDB_VM_KERNEL_PKG  kernel package (default: the dependency of linux-image-amd64)
Inside the VM: SMRDB_VERBS_DEVICE=rxe0, SMRDB_VM_OUT=<out dir>, ulimit -l unlimited.
EOF
}

# ---------------------------------------------------------------- arguments
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --) shift ;;
esac
[ $# -gt 0 ] || { usage >&2; exit 125; }

SCRIPT=$(readlink -f -- "${BASH_SOURCE[0]}")
CACHE=${SMRDB_VM_CACHE:-${HOME:-/root}/.cache/smrdb-vm}
MEM=${SMRDB_VM_MEM:-3G}
SMP=${SMRDB_VM_SMP:-2}
TIMEOUT=${SMRDB_VM_TIMEOUT:-1500}
VERBOSE=${SMRDB_VM_VERBOSE:-0}
[ "$VERBOSE" = 1 ] || VERBOSE=0
vsay() { if [ "$VERBOSE" = 1 ]; then say "$@"; fi; }

# Modules insmod'ed by the guest, in this order. Dependencies found in the
# modules' own "depends=" that are missing from this list are added
# automatically (before their user). A module that is neither shipped nor
# built in is tolerated only if nothing needs it.
MODULES="crc32_generic virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
 virtio_pci netfs fscache 9pnet 9pnet_virtio 9p failover net_failover virtio_net
 ib_core ib_uverbs udp_tunnel ip6_udp_tunnel rdma_rxe"
# Needed for sure: crc32_generic is only a soft dependency of rdma_rxe (without
# it: "failed to init crc32 algorithm"); the rest pull in their own deps.
REQUIRED="crc32_generic virtio_pci 9pnet_virtio 9p virtio_net ib_uverbs rdma_rxe"

# ------------------------------------------------------------- host packages
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing missing packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { as_root apt-get update -q >&2 && \
             as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
        || die "apt-get install ${missing[*]} failed"
}
# qemu-system-x86: the VM; busybox-static + cpio: the initramfs; the rest is
# run from the host root inside the VM: iproute2 (rdma), libibverbs1 +
# ibverbs-providers (librxe), ibverbs-utils (ibv_devices); coreutils/util-linux
# give timeout/flock on the host.
ensure_pkgs qemu-system-x86 busybox-static cpio iproute2 libibverbs1 ibverbs-providers ibverbs-utils coreutils util-linux
BUSYBOX=/bin/busybox

# --------------------------------------------------------------- cache + lock
mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
exec 9>"$CACHE/.lock"
flock 9

# ------------------------------------------------------------------- kernel
pick_kernel_pkg() {
    local meta=linux-image-amd64 pkg
    if [ -n "${SMRDB_VM_KERNEL_PKG:-}" ]; then echo "$SMRDB_VM_KERNEL_PKG"; return; fi
    pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        say "apt knows no $meta; running apt-get update"
        as_root apt-get update -q >&2 || die "apt-get update failed"
        pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
    fi
    [ -n "$pkg" ] || die "cannot find the kernel package $meta depends on"
    echo "$pkg"
}
resolve_kernel() {   # sets KPKG KVER_PKG KID KDIR
    KPKG=$(pick_kernel_pkg)
    KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
    [ -n "$KVER_PKG" ] || die "apt has no version of $KPKG"
    KID="${KPKG}_${KVER_PKG}"
    KDIR="$CACHE/kernel/$KID"
}
resolve_kernel

TMPS=()
cleanup() {
    local d
    if [ -n "${QPID:-}" ]; then kill -TERM "$QPID" 2>/dev/null || true; fi
    for d in "${TMPS[@]}"; do [ -n "$d" ] && rm -rf -- "$d"; done
}
trap cleanup EXIT

if [ ! -e "$KDIR/.complete" ]; then
    t=$(mktemp -d "$CACHE/.tmp.XXXXXX"); TMPS+=("$t")
    chmod 755 "$t"          # apt's _apt user may write here (if it can reach it)
    say "fetching kernel $KPKG $KVER_PKG"
    if ! (cd "$t" && apt-get download -q "$KPKG=$KVER_PKG") >"$t/apt.log" 2>&1; then
        say "download failed; apt-get update and retry"     # stale package lists?
        as_root apt-get update -q >&2 || true
        resolve_kernel
        (cd "$t" && apt-get download -q "$KPKG=$KVER_PKG") >"$t/apt.log" 2>&1 \
            || { cat "$t/apt.log" >&2; die "apt-get download $KPKG=$KVER_PKG failed"; }
    fi
    rm -rf -- "$KDIR"
    [ "$VERBOSE" = 1 ] && cat "$t/apt.log" >&2
    deb=$(ls "$t"/*.deb)
    mkdir -p "$t/k"
    mv "$deb" "$t/k/kernel.deb"
    dpkg-deb --fsys-tarfile "$t/k/kernel.deb" | tar -x -C "$t" ./boot \
        || die "cannot unpack $deb"
    vmlinuz=$(ls "$t"/boot/vmlinuz-* | head -n1)
    [ -f "$vmlinuz" ] || die "no vmlinuz in $KPKG"
    cp "$vmlinuz" "$t/k/vmlinuz"
    echo "${vmlinuz##*/vmlinuz-}" >"$t/k/release"
    touch "$t/k/.complete"
    mkdir -p "$CACHE/kernel"
    mv "$t/k" "$KDIR"
    say "kernel cached in $KDIR"
fi
KREL=$(cat "$KDIR/release")

# ---------------------------------------------------------------- initramfs
# Rebuilt when this script, the kernel or busybox changes.
IKEY=$( { cat "$SCRIPT" "$BUSYBOX" | sha256sum; echo "$KID"; } | sha256sum | cut -c1-16)
INITRD="$CACHE/initramfs/$KID-$IKEY.cpio"

write_init() {
cat <<'INIT_EOF'
#!/bin/sh
# smrdb micro-VM init; generated by soft-roce-setup/vm.sh (do not edit)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
VERBOSE=0
grep -q 'smrdb.verbose=1' /proc/cmdline && VERBOSE=1
CTL=0
log()  { echo "vm.sh[guest]: $*"; }
vlog() { if [ "$VERBOSE" = 1 ]; then log "$@"; fi; }
die()  {
    log "error: $*"
    if [ "$CTL" = 1 ]; then echo 125 >/ctl/status; fi
    sync; poweroff -f; sleep 30
}
stty -F /dev/console -opost 2>/dev/null    # no "\r\n" on our own lines
P9="trans=virtio,version=9p2000.L,msize=262144"

# --- modules
if [ "$VERBOSE" = 1 ]; then cat /modules.notes; fi
while read -r name file; do
    if out=$(insmod "/lib/modules/$file" 2>&1); then
        vlog "insmod $name: ok"
    else
        log "insmod $name failed: $out"
    fi
done </modules.list

# --- host root (read-only), control dir, mounts inside the chroot
mkdir -p /host /orig /ctl
mount -t 9p -o "$P9,ro" hostroot /host || die "cannot mount host root over 9p"
mount -t 9p -o "$P9" smrdbctl /ctl || die "cannot mount control dir over 9p"
CTL=1
. /ctl/conf || die "cannot read /ctl/conf"
mount --bind /host /orig || die "bind /host"
mount -t proc proc /host/proc || die "mount proc"
mount -t sysfs sysfs /host/sys || die "mount sysfs"
mount -t devtmpfs devtmpfs /host/dev || die "mount devtmpfs"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || die "mount /tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || die "mount /run"
# The caller's cwd is hidden if it lies under /tmp or /run: bind it back (ro).
case "$WORK_DIR" in
    /tmp/*|/run/*)
        if [ -d "/orig$WORK_DIR" ]; then
            mkdir -p "/host$WORK_DIR" && mount --bind "/orig$WORK_DIR" "/host$WORK_DIR" \
                || die "cannot expose $WORK_DIR"
        fi ;;
esac
[ -d "/host$OUT_DIR" ] || mkdir -p "/host$OUT_DIR" || die "cannot create mount point $OUT_DIR"
mount -t 9p -o "$P9" smrdbout "/host$OUT_DIR" || die "cannot mount out dir at $OUT_DIR"

# --- network + Soft-RoCE
[ -e /sys/class/net/eth0 ] || die "no eth0 (virtio_net not loaded?)"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 || die "cannot configure eth0"
ip link set eth0 up || die "cannot bring eth0 up"
out=$(chroot /host rdma link add rxe0 type rxe netdev eth0 2>&1) || die "rdma link add rxe0 failed: $out"
i=0
until grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
    i=$((i + 1)); [ $i -le 100 ] || die "rxe0 port never became ACTIVE"
    sleep 0.1
done
[ -e /host/dev/infiniband/uverbs0 ] || die "/dev/infiniband/uverbs0 missing"
if [ "$VERBOSE" = 1 ]; then
    chroot /host rdma link
    chroot /host ibv_devices
fi

# --- run the command
cp /ctl/cmd.sh /host/run/smrdb-vm-cmd.sh || die "cannot stage cmd.sh"
ulimit -l unlimited
vlog "running command"
# stdout/stderr are files on the control share (9p, uncached: each write
# reaches the host before it returns); the host streams them with tail -f.
/bin/busybox env -i /bin/busybox chroot /host /bin/bash /run/smrdb-vm-cmd.sh \
    </dev/null >/ctl/stdout 2>/ctl/stderr
rc=$?
echo "$rc" >/ctl/status
sync
[ "$VERBOSE" = 1 ] || echo 0 >/proc/sys/kernel/printk   # no "reboot: Power down"
poweroff -f
sleep 30
INIT_EOF
}

# Resolve the module load order (list order, deps first) from the kernel
# package; writes <root>/lib/modules/*.ko, modules.list and modules.notes.
build_modules() {
    local root=$1 x=$2 moddir idx builtin
    moddir="$x/lib/modules/$KREL"
    [ -d "$moddir" ] || die "no /lib/modules/$KREL in $KPKG"
    idx="$x/.modidx"; builtin="$moddir/modules.builtin"
    find "$moddir/kernel" -name '*.ko*' | while read -r f; do
        b=${f##*/}; b=${b%%.ko*}; echo "${b//-/_} $f"
    done >"$idx"
    mkdir -p "$root/lib/modules"
    : >"$root/modules.list"; : >"$root/modules.notes"
    local -A done_=() needed=()
    local m
    for m in $REQUIRED; do needed[$m]=1; done
    note() { echo "modules: $*" | tee -a "$root/modules.notes" >&2; }
    visit() {   # visit NAME [USER]
        local m=$1 user=${2:-} f dep deps out
        [ -z "${done_[$m]:-}" ] || return 0
        done_[$m]=1
        f=$(awk -v m="$m" '$1 == m { print $2; exit }' "$idx")
        if [ -z "$f" ]; then
            if sed 's,.*/,,; s,\.ko.*,,; s,-,_,g' "$builtin" | grep -qx "$m"; then
                note "$m: built into the kernel"
            elif [ -n "$user" ] || [ -n "${needed[$m]:-}" ]; then
                die "module $m${user:+ (needed by $user)} is neither shipped nor built into $KPKG"
            else
                note "$m: not in this kernel and nothing needs it; skipped"
            fi
            return 0
        fi
        out="$root/lib/modules/$m.ko"
        case "$f" in
            *.ko)    cp "$f" "$out" ;;
            *.ko.xz) "$BUSYBOX" xzcat "$f" >"$out" ;;
            *.ko.gz) gzip -dc "$f" >"$out" ;;
            *.ko.zst) ensure_pkgs zstd; zstd -q -dc "$f" >"$out" ;;
            *) die "unknown module format: $f" ;;
        esac || die "cannot decompress $f"
        [ "$f" = "${f%.ko}.ko" ] || note "$m: decompressed ${f##*/}"
        deps=$(tr '\0' '\n' <"$out" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' ')
        for dep in $deps; do
            [ -n "${done_[${dep//-/_}]:-}" ] || { case " $MODULES " in *" ${dep//-/_} "*) ;; *) note "$dep: added (dependency of $m)";; esac; }
            visit "${dep//-/_}" "$m"
        done
        echo "$m $m.ko" >>"$root/modules.list"
    }
    for m in $MODULES; do visit "$m"; done
    for m in $REQUIRED; do
        grep -q "^$m " "$root/modules.list" || grep -q "^modules: $m: built into" "$root/modules.notes" \
            || die "required module $m unavailable"
    done
}

if [ ! -f "$INITRD" ]; then
    say "building initramfs $INITRD"
    t=$(mktemp -d "$CACHE/.tmp.XXXXXX"); TMPS+=("$t")
    dpkg-deb --fsys-tarfile "$KDIR/kernel.deb" | tar -x -C "$t" ./lib/modules \
        || die "cannot unpack modules from $KDIR/kernel.deb"
    r="$t/root"
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,lib/modules}
    cp "$BUSYBOX" "$r/bin/busybox"
    ln -s busybox "$r/bin/sh"
    write_init >"$r/init"; chmod 755 "$r/init"
    build_modules "$r" "$t"
    say "initramfs modules (load order): $(cut -d' ' -f1 "$r/modules.list" | tr '\n' ' ')"
    (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$t/initramfs.cpio" \
        || die "cpio failed"
    mkdir -p "$CACHE/initramfs"
    # other script versions' images: drop those unused for a week
    find "$CACHE/initramfs" -name '*.cpio' -mtime +7 -delete 2>/dev/null || true
    mv "$t/initramfs.cpio" "$INITRD"
    rm -rf -- "$t"
fi
touch "$INITRD"    # mtime = last use, for the pruning above
flock -u 9
exec 9>&-

# ------------------------------------------------------------------ per run
RUN=$(mktemp -d "${TMPDIR:-/tmp}/smrdb-vm.XXXXXX"); TMPS+=("$RUN")
mkdir "$RUN/ctl"
if [ -n "${SMRDB_VM_OUTDIR:-}" ]; then
    mkdir -p -- "$SMRDB_VM_OUTDIR" || die "cannot create SMRDB_VM_OUTDIR=$SMRDB_VM_OUTDIR"
    OUT=$(cd -- "$SMRDB_VM_OUTDIR" && pwd -P)
else
    mkdir "$RUN/out"; OUT="$RUN/out"
fi
WORK_DIR=$(pwd -P)

sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # POSIX-sh quoting
{
    echo "WORK_DIR=$(sq "$WORK_DIR")"
    echo "OUT_DIR=$(sq "$OUT")"
} >"$RUN/ctl/conf"

{
    echo '# generated by soft-roce-setup/vm.sh'
    for n in PATH HOME RUST_BACKTRACE RUST_LOG ${SMRDB_VM_ENV:-}; do
        [[ $n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "SMRDB_VM_ENV: bad variable name '$n'"
        if [ -n "${!n+x}" ]; then printf 'export %s=%q\n' "$n" "${!n}"; fi
    done
    printf 'export SMRDB_VERBS_DEVICE=rxe0\n'
    printf 'export SMRDB_VM_OUT=%q\n' "$OUT"
    printf 'cd -- %q || { echo "vm.sh[guest]: cannot cd to %q inside the VM" >&2; exit 125; }\n' "$WORK_DIR" "$WORK_DIR"
    printf 'exec --'; printf ' %q' "$@"; printf '\n'
} >"$RUN/ctl/cmd.sh"

# Output: the serial console ttyS0 (kernel + init messages) goes to a file,
# CMD's stdout/stderr to files on the control share; tail -f streams them to
# our stderr/stdout/stderr until qemu is gone. qemu never touches our
# terminal or stdin.
: >"$RUN/console"; : >"$RUN/ctl/stdout"; : >"$RUN/ctl/stderr"

APPEND="console=ttyS0 panic=-1 oops=panic 8250.nr_uarts=1"
if [ "$VERBOSE" = 1 ]; then APPEND+=" smrdb.verbose=1"; else APPEND+=" quiet"; fi
VIRTFS=security_model=none,multidevs=remap
QEMU=(qemu-system-x86_64
    -nodefaults -no-user-config -display none -monitor none -no-reboot
    -machine pc -accel tcg -cpu max -smp "$SMP" -m "$MEM"
    -kernel "$KDIR/vmlinuz" -initrd "$INITRD" -append "$APPEND"
    -chardev "file,id=s0,path=$RUN/console,append=on" -serial chardev:s0
    -virtfs "local,path=/,mount_tag=hostroot,readonly=on,$VIRTFS"
    -virtfs "local,path=$RUN/ctl,mount_tag=smrdbctl,$VIRTFS"
    -virtfs "local,path=$OUT,mount_tag=smrdbout,$VIRTFS"
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0)
vsay "kernel $KPKG $KVER_PKG ($KREL); initramfs $INITRD"
vsay "${QEMU[*]}"

SIG= QPID=
for s in INT TERM HUP; do
    trap "SIG=$s; if [ -n \"\$QPID\" ]; then kill -TERM \$QPID 2>/dev/null || true; fi" $s
done
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null & QPID=$!
if [ -n "$SIG" ]; then kill -TERM $QPID 2>/dev/null || true; fi
TAILS=()
# poll (no inotify): far fewer host wake-ups while the guest writes a lot
TAILOPT=(---disable-inotify); tail "${TAILOPT[@]}" --version >/dev/null 2>&1 || TAILOPT=()
stream() { tail "${TAILOPT[@]}" -n +1 -s 0.2 --pid=$QPID -f "$1" </dev/null & TAILS+=($!); }
stream "$RUN/ctl/stdout"
stream "$RUN/console" >&2
stream "$RUN/ctl/stderr" >&2
qrc=0
while :; do
    wait $QPID && qrc=0 || qrc=$?
    kill -0 $QPID 2>/dev/null || break   # wait was interrupted by a signal: keep waiting
done
QPID=                          # reaped: never signal that pid again
trap - INT TERM HUP
wait "${TAILS[@]}" || true     # they print what is left, then exit

case "$SIG" in
    INT) say "interrupted; VM killed"; exit 130 ;;
    TERM) say "terminated; VM killed"; exit 143 ;;
    HUP) say "hangup; VM killed"; exit 129 ;;
esac
if [ $qrc -eq 124 ]; then
    say "error: the VM timed out after ${TIMEOUT}s (SMRDB_VM_TIMEOUT) and was killed"
    exit 124
fi
if [ -s "$RUN/ctl/status" ]; then
    rc=$(cat "$RUN/ctl/status")
    [[ $rc =~ ^[0-9]+$ ]] || die "garbled exit status '$rc' from the VM"
    exit "$rc"
fi
if [ $qrc -ne 0 ]; then
    die "qemu failed (exit $qrc) before the command finished"
fi
die "the VM stopped without reporting an exit status (kernel panic or boot failure?); rerun with SMRDB_VM_VERBOSE=1"
