#!/bin/sh
# QTEST_QEMU_BINARY for QEMU's own migration-test: the patched QEMU with
# libnasmig.so loaded with default arguments, as an operator loads it into
# every VM.  NASMIG_SUITE_ACCEL=tcg drops the "-accel kvm..." the test asks
# for first (this machine's /dev/kvm cannot run a guest); on a KVM host it
# is left alone.
set -eu
: "${NASMIG_SUITE_QEMU:?path of the patched qemu-system-x86_64}"
: "${NASMIG_SUITE_PLUGIN:=}"
n=$#
i=0
skip=0
for a in "$@"; do
	i=$((i + 1))
	if [ $skip = 1 ]; then
		skip=0
	elif [ "${NASMIG_SUITE_ACCEL:-}" = tcg ] && [ "$a" = -accel ] && [ $i -lt $n ]; then
		# look at the next argument without consuming the list twice
		eval "next=\${$((i + 1))}"
		case "$next" in kvm*) skip=1; continue ;; esac
		set -- "$@" "$a"
	else
		set -- "$@" "$a"
	fi
done
shift "$n"
if [ -n "$NASMIG_SUITE_PLUGIN" ]; then
	set -- "$@" -plugin "$NASMIG_SUITE_PLUGIN"
fi
exec "$NASMIG_SUITE_QEMU" "$@"
