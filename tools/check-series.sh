#!/usr/bin/env bash
# Checks that every patch of qemu-patches/series builds on top of the ones
# before it; the work is build.sh's (one home for the pinned QEMU and its
# configure arguments). Run by hand when the patches change.
exec "$(dirname "$0")/../build.sh" check-series "$@"
