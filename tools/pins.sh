# Pinned versions: the one home for every external version nasmig builds against.
# Sourced by build.sh; its values reach the tests through the environment.
NASMIG_QEMU_VERSION="1:10.0.13+ds-0+deb13u1"   # Debian trixie source package
NASMIG_QEMU_UPSTREAM="10.0.13"
NASMIG_KERNEL_PKG_GLOB="linux-image-6.1.0-*-amd64"  # newest bookworm 6.1 image package, resolved by apt
NASMIG_MESON_MIN="1.5"
# Xen test bed: Debian bookworm's Xen (hypervisor rebuilt from this source
# version with shadow paging; dom0's tools of the same version from
# bookworm main).
NASMIG_XEN_VERSION="4.17.5+72-g01140da4e8-1"
