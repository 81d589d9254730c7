#!/usr/bin/env bash
# The README's test command. On a fresh Debian machine, as root: installs
# what the integration tests run (only what is missing), then runs the
# whole suite. Arguments go to `cargo test` (./test.sh --test logging).
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run it as root (sudo ./test.sh): the tests make real cgroups, setuid children and pid namespaces, and fail without root" >&2
    exit 1
fi

# program:Debian package. curl is the real client of the isolation tests;
# util-linux brings setpriv, unshare, nsenter and prlimit (the descriptor
# exhaustion test); mount the doctor test's private mounts and the full-disk
# test's tmpfs; acl getfacl, which reads back the admin socket's ACL of
# --admin-uid; procps pgrep for the handoff test; gcc builds the
# connect-and-close flooder of the accept test; lxc runs the LXC runtime
# test's containers (lxc-start, lxc-attach, lxc-stop, lxc-info); runc, crun
# and podman run the OCI runtime tests' containers (podman needs no network
# backend: they run with --network none); qemu-system-x86 boots the VM
# tests' guests (under TCG, tests/util/vm.rs).
missing=()
for need in curl:curl setpriv:util-linux unshare:util-linux nsenter:util-linux \
    prlimit:util-linux mount:mount umount:mount getfacl:acl pgrep:procps python3:python3 cc:gcc \
    lxc-start:lxc runc:runc crun:crun podman:podman qemu-system-x86_64:qemu-system-x86; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
# The real-runtime tests' root filesystem is busybox-static's /bin/busybox
# (Debian's dynamic busybox installs the same path, so ask dpkg).
if ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    missing+=(busybox-static)
fi
# cloud-init's own LXD datasource, for Debian's Python, is a real client.
if ! /usr/bin/python3 -c 'import cloudinit.sources.DataSourceLXD' 2>/dev/null; then
    missing+=(cloud-init)
fi
# Debian's docker.io (dockerd and its own 20.10 client, /usr/bin/docker) for
# the Docker watcher's test, which starts a dockerd of its own.
if ! command -v dockerd >/dev/null || [ ! -x /usr/bin/docker ]; then
    missing+=(docker.io)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python's websocket-client (for python3 on PATH) is a real client of the
# events tests: from PyPI, or Debian's package where pip may not install
# into the system's Python.
if ! python3 -c 'import websocket' 2>/dev/null; then
    echo "== pip install websocket-client"
    python3 -m pip install -q websocket-client ||
        apt-get install -y -qq --no-install-recommends python3-websocket >/dev/null
fi

# PyJWT with cryptography (for python3 on PATH) is the independent verifier
# of the identity token tests: from PyPI, or Debian's packages where pip may
# not install into the system's Python.
if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
    echo "== pip install PyJWT[crypto]"
    python3 -m pip install -q 'PyJWT[crypto]' ||
        apt-get install -y -qq --no-install-recommends python3-jwt python3-cryptography >/dev/null
fi

# The VM tests' guest kernel (Debian's cloud kernel, unpacked, not
# installed) and vhost-device-vsock 0.3.0, cached under target/vm-cache.
tests/vm/prepare.sh

echo "== cargo test $*"
exec cargo test "$@"
