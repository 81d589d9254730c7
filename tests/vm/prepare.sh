#!/usr/bin/env bash
# What the VM tests boot (tests/util/vm.rs, docs/vms.md), cached so that a
# rerun costs nothing: the guest kernel, unpacked (never installed) from the
# package Debian's linux-image-cloud-amd64 depends on, and vhost-device-vsock
# 0.3.0 built from crates.io. QEMU itself is an apt package that ./test.sh
# installs (qemu-system-x86). As root, on Debian 12; ./test.sh runs this.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${GUESTSOCK_VM_CACHE:-$repo/target/vm-cache}
mkdir -p "$cache"

# The kernel package the metapackage names today; unpacked again only when
# that changes (a security update).
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
package=$(kernel_package)
if [ -z "$package" ]; then
    apt-get update -qq
    package=$(kernel_package)
fi
if [ -z "$package" ]; then
    echo "prepare.sh: apt knows no linux-image-cloud-amd64 (is this Debian 12 on amd64?)" >&2
    exit 1
fi
if [ "$(cat "$cache/kernel/PACKAGE" 2>/dev/null)" != "$package" ]; then
    echo "== apt-get download $package; dpkg-deb -x into $cache/kernel"
    download=$(mktemp -d)
    # apt drops to its sandbox user to download; that user must be able to
    # write here.
    chmod 0777 "$download"
    (cd "$download" && apt-get download -qq "$package")
    rm -rf "$cache/kernel"
    dpkg-deb -x "$download"/*.deb "$cache/kernel"
    echo "$package" >"$cache/kernel/PACKAGE"
    rm -rf "$download"
fi

if [ ! -x "$cache/tools/bin/vhost-device-vsock" ]; then
    echo "== cargo install vhost-device-vsock --version 0.3.0 --locked --root $cache/tools"
    cargo install -q vhost-device-vsock --version 0.3.0 --locked --root "$cache/tools"
fi
