//! Callers told apart by host uid ranges, through real children that setuid
//! (PROTOCOL.md section 4 `uid_range`, and the root-uid rule of section 1).
//! Needs root to setuid; fails, saying so, otherwise.

mod util;

use serde_json::json;

/// Two "containers" with their own 65536-uid ranges, like LXD's idmaps.
fn server() -> util::Server {
    util::Server::start(json!([
        {"name": "a", "match": {"uid_range": [100000, 65536]}, "config": {"user.who": "a"}},
        {"name": "b", "match": {"uid_range": [165536, 65536]}, "config": {"user.who": "b"},
         "guest_access": "any"},
    ]))
}

#[test]
fn each_range_sees_its_own_instance() {
    require_root!();
    let server = server();
    assert_eq!(
        util::curl_as(100000, &server.socket, "/1.0/config/user.who"),
        (200, "a".into())
    );
    assert_eq!(
        util::curl_as(165536, &server.socket, "/1.0/config/user.who"),
        (200, "b".into())
    );
    // b lets every uid of its range in; the range's last uid is still b.
    assert_eq!(
        util::curl_as(231071, &server.socket, "/1.0/config/user.who"),
        (200, "b".into())
    );
}

#[test]
fn non_root_uid_of_a_root_only_instance_is_unauthorized() {
    require_root!();
    let server = server();
    let (status, body) = util::curl_as(101000, &server.socket, "/1.0/config/user.who");
    assert_eq!(
        (status, body.as_str()),
        (401, "Access denied for non-root user\n")
    );
}

#[test]
fn uids_outside_every_range_are_forbidden() {
    require_root!();
    let server = server();
    for uid in [99999, 231072, 1000] {
        let (status, body) = util::curl_as(uid, &server.socket, "/1.0/config/user.who");
        assert_eq!(status, 403, "uid {uid}: {body}");
        assert!(body.contains(&format!("uid {uid}")), "{body}");
    }
    // Root on the host is nobody's container root here.
    assert_eq!(server.get("/1.0").status, 403);
}

#[test]
fn overlapping_ranges_are_refused_at_start() {
    let err = util::serve_refuses_instances(json!([
        {"name": "a", "match": {"uid_range": [100000, 65536]}},
        {"name": "b", "match": {"uid_range": [165535, 10]}},
    ]));
    assert!(
        err.contains("instances[1]") && err.contains("\"a\""),
        "{err}"
    );
}
