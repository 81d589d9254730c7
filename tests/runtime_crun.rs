//! crun (Debian's `crun`) runs real containers from a busybox root
//! filesystem with `guestsock hook oci` installed from
//! `dist/oci-hooks-fragment.json`, against the real `guestsock serve`.
//!
//! crun refuses this machine's hybrid cgroups ("cgroups in hybrid mode not
//! supported, drop all controllers from cgroupv2": the cgroup2 root holds
//! `hugetlb`, which no v1 hierarchy takes). Each crun command therefore runs
//! in a private mount namespace with the cgroup2 mount unmounted (crun then
//! sees a v1-only host and makes v1 groups only) from a cgroup2 group of the
//! container's own, which the container inherits. Its cgroup2 path is then
//! the runtime's own, so the hook registers it by its pid namespace, and
//! the pid rule ends with the container's init.

mod util;

use util::oci::{self, Kind};

/// A container reads exactly its own annotation's value.
#[test]
fn reads_its_own_annotation() {
    oci::reads_its_own_annotation(Kind::Crun);
}

/// Two at once: each its own, never the other's; a name thief fails.
#[test]
fn two_containers_read_their_own() {
    oci::two_containers_read_their_own(Kind::Crun);
}

/// Stopped and deleted: its instance is gone.
#[test]
fn gone_after_stop_and_delete() {
    oci::gone_after_stop_and_delete(Kind::Crun);
}

/// The same id again (after a delete, after a lost record) replaces.
#[test]
fn same_container_again_replaces() {
    oci::same_container_again_replaces(Kind::Crun);
}

/// guestsock down: no start, the hook's reason shown; `--optional` starts.
#[test]
fn server_down_fails_unless_optional() {
    oci::server_down_fails_unless_optional(Kind::Crun);
}

/// root_uid comes from the container's uid map.
#[test]
fn root_uid_from_user_namespace() {
    oci::root_uid_from_user_namespace(Kind::Crun);
}
