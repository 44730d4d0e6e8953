#!/bin/sh
# /init of the `cargo xtask vm-test` guest (run by busybox sh as pid 1).
#
# Sets up what the integration tests expect of a host (proc, sysfs, devtmpfs,
# cgroup2, tmpfs /run, a writable /tmp, `lo` up, the modules the suite needs), runs
# every test binary listed in /panda-vm/tests, and powers off. Its output is
# the serial console, which xtask reads: lines starting with "@@panda-vm " are
# for xtask (see xtask/src/vm/verdict.rs), the rest is shown as is.
#
# /panda-vm/ is written by xtask: modules (insmod order), tests, env (shell
# `export` lines), args (shell-quoted arguments for every test binary).

# Debian's busybox-static runs its own applets for the commands of this
# script (`ip`, `mount`…) whatever PATH says; the tests exec the host's real
# tools (/usr/sbin/ip…), found through PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mark() { echo "@@panda-vm $*"; }

# Never return: pid 1 exiting panics the kernel. poweroff ends QEMU; reboot
# does too (-no-reboot) should poweroff fail.
finish() {
	sync
	poweroff -f
	reboot -f
	sleep 3600
}

error() {
	mark "error $*"
	mark done
	finish
}

mount -t proc proc /proc || error "mount /proc"
mount -t sysfs sysfs /sys || error "mount /sys"
mount -t devtmpfs devtmpfs /dev || error "mount /dev"
# What udev would add: programs read /dev/stdin (pandad feeds `nft -f
# /dev/stdin`), /dev/fd/N.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run || error "mount /run"
# /tmp stays on the (writable) initramfs root: the test binaries may live
# below it, at the paths they were built at (a checkout under /tmp).
mkdir -p /tmp && chmod 1777 /tmp || error "mkdir /tmp"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || error "mount cgroup2 on /sys/fs/cgroup"
# As systemd does; tests may look at the active LSMs there.
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
# `ip netns` keeps its namespaces here (/var/run is a link to /run).
mkdir -p /var/run/netns

ip link set lo up || error "ip link set lo up"

# Open files: what systemd gives a session by default (soft 1024, hard
# 524288), not the kernel's bare 1024/4096 for pid 1.
ulimit -Hn 524288 && ulimit -Sn 1024 || error "ulimit -n"

while read -r module; do
	[ -n "$module" ] || continue
	insmod "$module" || error "insmod $module failed"
done </panda-vm/modules

. /panda-vm/env
eval "set -- $(cat /panda-vm/args)"

mark "kernel $(uname -r)"
# One path a line (paths may hold spaces); read on fd 3 so that the tests'
# stdin stays the console.
while read -r test <&3; do
	[ -n "$test" ] || continue
	mark "begin $test"
	"$test" "$@" 2>&1
	mark "end $test exit=$?"
done 3</panda-vm/tests
mark done
finish
