//! podman (Debian's `podman`) runs real containers from a busybox root
//! filesystem (`--rootfs`, no image registry) with the guest socket's
//! directory mounted by `dist/containers.conf.d/guestsock.conf` and
//! `guestsock hook oci` run from `dist/oci-hooks.d/guestsock.json` (given
//! with `--hooks-dir`), against the real `guestsock serve`. The hook tells
//! the stage from the state's status, since one hooks.d file serves both.
//!
//! On this machine podman runs with `runtime = "runc"` (crun refuses the
//! hybrid cgroups), the cgroupfs manager (no systemd), and `--ulimit`
//! nofile/nproc at this process's own limits (podman raises them past the
//! hard limit otherwise, which needs CAP_SYS_RESOURCE). Each container is
//! in its own cgroup, `<parent>/libpod-<id>`, which its instance matches.
//! Its poststop hook is run by podman itself when it cleans the container
//! up, not by runc.

mod util;

use util::oci::{self, Kind};

/// A container reads exactly its own annotation's value.
#[test]
fn reads_its_own_annotation() {
    oci::reads_its_own_annotation(Kind::Podman);
}

/// Two at once: each its own, never the other's; a name thief fails.
#[test]
fn two_containers_read_their_own() {
    oci::two_containers_read_their_own(Kind::Podman);
}

/// Stopped and deleted: its instance is gone.
#[test]
fn gone_after_stop_and_delete() {
    oci::gone_after_stop_and_delete(Kind::Podman);
}

/// A restart, and a re-run under the same name, replace.
#[test]
fn same_container_again_replaces() {
    oci::same_container_again_replaces(Kind::Podman);
}

/// guestsock down: no start, the hook's reason shown; `--optional` starts.
#[test]
fn server_down_fails_unless_optional() {
    oci::server_down_fails_unless_optional(Kind::Podman);
}

/// root_uid comes from the container's uid map.
#[test]
fn root_uid_from_user_namespace() {
    oci::root_uid_from_user_namespace(Kind::Podman);
}
