#!/bin/busybox sh
# /init of the initramfs that `cargo xtask test --kernel ...` builds for kernels whose
# virtio-pci and virtiofs are modules (xtask/src/kernel.rs): loads them from /modules in
# name order, mounts the host's root (shared read-only over virtiofs), and hands over to
# the guest init named by $1, passing it the other arguments.
bb=/bin/busybox

fail() {
    echo "initramfs: $*"
    $bb poweroff -f
}

for module in /modules/*.ko; do
    $bb insmod "$module" || fail "cannot load $module"
done
$bb mount -t virtiofs -o ro hostroot /newroot || fail "cannot mount the host's root (virtiofs tag hostroot)"
exec $bb switch_root /newroot "$@"
