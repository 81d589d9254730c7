//! `serve --demo`: a server a newcomer can ask at once, under
//! `./guestsock-demo/`, with one example instance, `demo`.
//!
//! Owns whom the demo answers, its example instance and the demo
//! directory's mode. Serving is `server`'s business; the flags, `cli`'s.
//!
//! The demo answers one uid, the person who started it: their own uid, or
//! `SUDO_UID` when started through sudo, so root from a root shell. Root's
//! processes include those of privileged containers, but no container
//! reaches the demo: its sockets are under `./guestsock-demo/`, which no
//! runtime mounts. A privileged container registered beside a root demo
//! (its root is host uid 0 too) would be claimed by both rules and refused
//! as ambiguous; an unprivileged one, or a demo started by another user or
//! through sudo, is answered as itself.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::instance::{GuestAccess, InstanceSpec, MatchRule};
use crate::server::Seed;

/// Where `--demo` puts its sockets and state, relative to the current
/// directory (ignored by git).
pub const DIR: &str = "guestsock-demo";

/// The uid the demo answers, from this process's uid and `SUDO_UID`.
pub fn caller_uid(uid: u32, sudo_uid: Option<&str>) -> u32 {
    if uid != 0 {
        return uid;
    }
    // Root itself when not through sudo (or sudo from root).
    sudo_uid
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or_default()
}

/// Prepares a demo serving `socket`, `admin_socket` and `state_dir`:
/// makes the demo directory reachable by the uid it answers (mode 0755;
/// the state directory inside stays 0700), adds the `demo` instance to
/// `seeds` and its uid to `admin_uids`, and prints how to call it.
pub fn set_up(
    socket: &Path,
    admin_socket: &Path,
    state_dir: &Path,
    seeds: &mut Vec<Seed>,
    admin_uids: &mut Vec<u32>,
) -> Result<(), String> {
    let uid = caller_uid(
        nix::unistd::getuid().as_raw(),
        std::env::var("SUDO_UID").ok().as_deref(),
    );
    if [socket, admin_socket, state_dir]
        .iter()
        .any(|p| p.starts_with(DIR))
    {
        let dir = Path::new(DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot make the demo directory {DIR}: {e}"))?;
    }
    seeds.push(Seed {
        origin: "the demo instance".into(),
        spec: instance(uid),
    });
    admin_uids.push(uid);
    let note = if uid == nix::unistd::getuid().as_raw() {
        ""
    } else {
        " (who started it through sudo)"
    };
    println!(
        "guestsock demo: instance `demo` answers processes of uid {uid}{note}. Try:\n  curl --unix-socket {0} http://lxd/1.0/config\n  curl --unix-socket {0} http://lxd/1.0/config/user.greeting\n  GUESTSOCK_ADMIN={1} guestsock config set demo user.greeting hi\nStop with Ctrl-C.",
        socket.display(),
        admin_socket.display()
    );
    Ok(())
}

/// The demo instance: uid `uid` alone, a few `user.*` keys, some
/// cloud-init data, a host-only key and a device.
pub fn instance(uid: u32) -> InstanceSpec {
    let config = [
        ("user.greeting", "hello from guestsock"),
        ("user.meta-data", "public-keys: []\n"),
        ("cloud-init.user-data", "#cloud-config\nhostname: demo\n"),
        (
            "volatile.hidden",
            "host-only keys are never shown to guests",
        ),
    ];
    let nic = [
        ("type", "nic"),
        ("name", "eth0"),
        ("hwaddr", "00:16:3e:00:00:01"),
    ];
    InstanceSpec {
        name: "demo".into(),
        kind: Default::default(),
        location: None,
        cloud_init_id: None,
        rule: MatchRule::UidRange(uid, 1),
        listeners: Vec::new(),
        root_uid: Some(uid),
        guest_access: GuestAccess::Root,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        devices: [(
            "eth0".to_string(),
            nic.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )]
        .into_iter()
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_person_who_started_it() {
        for (uid, sudo_uid, want) in [
            (1000, None, 1000),
            (1000, Some("0"), 1000),
            (0, Some("1000"), 1000),
            (0, Some(" 1001\n"), 1001),
            (0, None, 0),
            (0, Some("0"), 0),
            (0, Some("bob"), 0),
        ] {
            assert_eq!(caller_uid(uid, sudo_uid), want, "{uid} {sudo_uid:?}");
        }
    }

    #[test]
    fn the_instance_is_valid_and_claims_one_uid() {
        let mut registry = crate::registry::Registry::new("h".into());
        registry.insert(instance(1234)).unwrap();
        assert_eq!(instance(1234).rule, MatchRule::UidRange(1234, 1));
    }
}
