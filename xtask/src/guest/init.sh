#!/bin/busybox sh
# PID 1 of a test guest booted by `cargo xtask test --kernel ...` (xtask/src/kernel.rs). It
# runs from the host's root, shared read-only over virtiofs. $1: a directory of kernel
# modules to load, in name order (the host's root has no module tree for this kernel);
# $2: the job, a shell script. It prints the job's exit status after a marker the host
# looks for on the serial console, then powers the guest off: never returns (PID 1 must not).
bb=/bin/busybox

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
# A kernel that mounted its root itself has mounted devtmpfs too.
$bb grep -q " /dev " /proc/mounts || $bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
# The only writable place: the job's TMPDIR lives here.
$bb mount -t tmpfs tmpfs /run
$bb mount -t tracefs tracefs /sys/kernel/tracing
$bb mount -t debugfs debugfs /sys/kernel/debug
$bb mount -t bpf bpf /sys/fs/bpf
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb ip link set lo up
for module in "$1"/*.ko; do
    [ -e "$module" ] || continue # none: all built in
    $bb insmod "$module" || echo "guest init: cannot load $module"
done

$bb sh "$2"
echo "@@xtask-guest-exit-status@@ $?"
$bb poweroff -f
