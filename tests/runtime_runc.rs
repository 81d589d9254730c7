//! runc (Debian's `runc`) runs real containers from a busybox root
//! filesystem with `guestsock hook oci` installed from
//! `dist/oci-hooks-fragment.json` (createRuntime and poststop hooks, and the
//! guest socket's directory mounted at `/dev/lxd`), against the real
//! `guestsock serve`. On this machine's hybrid cgroups runc puts each
//! container in a cgroup2 group of its own, which its instance matches.

mod util;

use util::oci::{self, Kind};

/// A container reads exactly its own annotation's value.
#[test]
fn reads_its_own_annotation() {
    oci::reads_its_own_annotation(Kind::Runc);
}

/// Two at once: each its own, never the other's; a name thief fails.
#[test]
fn two_containers_read_their_own() {
    oci::two_containers_read_their_own(Kind::Runc);
}

/// Stopped and deleted: its instance is gone.
#[test]
fn gone_after_stop_and_delete() {
    oci::gone_after_stop_and_delete(Kind::Runc);
}

/// The same id again (after a delete, after a lost record) replaces.
#[test]
fn same_container_again_replaces() {
    oci::same_container_again_replaces(Kind::Runc);
}

/// guestsock down: no start, the hook's reason shown; `--optional` starts.
#[test]
fn server_down_fails_unless_optional() {
    oci::server_down_fails_unless_optional(Kind::Runc);
}

/// root_uid comes from the container's uid map.
#[test]
fn root_uid_from_user_namespace() {
    oci::root_uid_from_user_namespace(Kind::Runc);
}
