//! The guest API's routes (docs/protocol.md section 3): who may ask, and what each
//! path answers.
//!
//! Owns the caller check (403 for strangers, 401 for the wrong uid) and the
//! bodies of every guest endpoint. Reading requests and writing responses is
//! `http`'s business; the event stream is served by the connection itself.

use std::time::Duration;

use crate::api::Change;
use crate::api::identity::{self, Mint};
use crate::error::NotServed;
use crate::events::Event;
use crate::http::request::{Request, percent_decode, query_param};
use crate::http::response::Response;
use crate::identity::PeerFacts;
use crate::instance::{GuestAccess, GuestState, guest_visible};
use crate::limits::{DEFAULT_WAIT_SECS, MAX_WAIT_SECS, Tunables};
use crate::registry::{Instance, InstanceId, Refusal, Registry};

/// What a guest request calls for.
#[derive(Debug)]
pub enum GuestAnswer {
    /// An answer now, and what the request changed.
    Respond(Response, Option<Change>),
    /// `GET /1.0/events` from an authorized caller: subscribe it.
    Subscribe(InstanceId),
    /// `GET /1.0/identity/token` from an authorized caller: sign this token
    /// for it (off the loop), then answer.
    Mint(Mint),
    /// `?wait_for_change=true` with the current tag: hold the request until
    /// the answer's tag differs from `etag`, or `timeout` passes.
    Wait {
        /// The caller's instance.
        id: InstanceId,
        /// The tag the answer must move away from.
        etag: String,
        /// When to answer anyway.
        timeout: Duration,
    },
}

/// Who a guest request comes from: the instance the registry says the
/// caller belongs to, or why it belongs to none. Worked out once per request
/// (`dispatch`) and used by authorization, waits and metrics alike.
pub type Caller = Result<InstanceId, Refusal>;

/// The caller's instance, or why it is refused.
pub fn authorize(
    caller: &Caller,
    peer: &PeerFacts,
    registry: &Registry,
) -> Result<InstanceId, NotServed> {
    let id = caller.clone().map_err(NotServed::Unidentified)?;
    let instance = registry.get(id).ok_or(NotServed::InstanceVanished)?;
    if instance.spec.guest_access == GuestAccess::Root && peer.uid != instance.spec.root_uid() {
        return Err(NotServed::NotRoot);
    }
    Ok(id)
}

/// Refused if the instance has used up its request rate (a token bucket per
/// instance, SECURITY.md). Callers matching no instance never get here:
/// they are refused as strangers and their connections capped.
fn within_rate(instance: &mut Instance, limits: &Tunables) -> Result<(), NotServed> {
    if instance.bucket.take(
        std::time::Instant::now(),
        limits.rate_per_sec,
        limits.rate_burst,
    ) {
        return Ok(());
    }
    Err(NotServed::RateLimited)
}

/// Answers one guest request from `peer`. With `limits`, the request
/// counts against its instance's rate limit (re-evaluations of a waiting
/// request pass `None`: they are not new requests).
pub fn answer(
    req: &Request<'_>,
    caller: &Caller,
    peer: &PeerFacts,
    registry: &mut Registry,
    limits: Option<&Tunables>,
) -> GuestAnswer {
    let id = match authorize(caller, peer, registry) {
        Ok(id) => id,
        Err(error) => return GuestAnswer::Respond(error.response(), None),
    };
    let Some(instance) = registry.get_mut(id) else {
        return GuestAnswer::Respond(NotServed::InstanceVanished.response(), None);
    };
    if let Some(Err(error)) = limits.map(|limits| within_rate(instance, limits)) {
        return GuestAnswer::Respond(error.response(), None);
    }
    let read = matches!(req.method, "GET" | "HEAD");
    // The answers that carry an ETag and can be waited on.
    let tagged = match req.path {
        "/" if read => Response::json(&["/1.0"]),
        "/" => NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
        "/1.0" if read => api_info(instance),
        "/1.0" if req.method == "PATCH" => {
            let (name, durable) = (instance.spec.name.clone(), instance.state);
            return match patch_state(req.body) {
                Ok(state) => GuestAnswer::Respond(
                    Response::raw(Vec::new()),
                    stage_state(registry, &name, durable, state),
                ),
                Err(error) => GuestAnswer::Respond(error.response(), None),
            };
        }
        "/1.0" => NotServed::MethodNotAllowed {
            allow: "GET, HEAD, PATCH",
        }
        .response(),
        "/1.0/events" if req.method == "GET" => return GuestAnswer::Subscribe(id),
        "/1.0/events" => NotServed::MethodNotAllowed { allow: "GET" }.response(),
        "/1.0/config" if read => config_list(instance).with_etag(),
        "/1.0/meta-data" if read => meta_data(instance).with_etag(),
        "/1.0/devices" if read => Response::json(&instance.spec.devices).with_etag(),
        "/1.0/config" | "/1.0/meta-data" | "/1.0/devices" => {
            NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response()
        }
        "/1.0/ubuntu-pro" if read => ubuntu_pro_settings(),
        "/1.0/ubuntu-pro" => NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
        "/1.0/ubuntu-pro/token" if req.method == "POST" => ubuntu_pro_token(),
        "/1.0/ubuntu-pro/token" => NotServed::MethodNotAllowed { allow: "POST" }.response(),
        // Minted for the instance the kernel says the caller is in, under
        // the same proof and rate as every other request (section 9).
        "/1.0/identity/token" if req.method == "GET" => {
            return match identity::token_request(req) {
                Ok((audience, ttl)) => {
                    GuestAnswer::Mint(Mint::new(instance, peer.uid, audience, ttl))
                }
                Err(error) => GuestAnswer::Respond(error.response(), None),
            };
        }
        "/1.0/identity/token" => NotServed::MethodNotAllowed { allow: "GET" }.response(),
        path => {
            if let Some(key) = path.strip_prefix("/1.0/config/").filter(|k| !k.is_empty()) {
                if read {
                    config_value(instance, key)
                } else {
                    NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response()
                }
            } else if is_image_export(path) {
                if read {
                    image_export()
                } else {
                    NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response()
                }
            } else {
                NotServed::NoSuchPath.response()
            }
        }
    };
    conditional(req, id, tagged)
}

/// The change a guest's `PATCH /1.0` makes, if any: its instance (named
/// `name`, registered with state `durable`) with the new state. The guest
/// is answered, and sees the state, once that is durable.
fn stage_state(
    registry: &mut Registry,
    name: &str,
    durable: GuestState,
    state: GuestState,
) -> Option<Change> {
    let mut staged = registry.latest(name)?;
    if staged.state == state && durable == state {
        return None;
    }
    staged.state = state;
    let events = match state {
        GuestState::Ready => vec![Event::InstanceReady],
        GuestState::Started => Vec::new(),
    };
    Some(Change::Put {
        staged: registry.stage(staged),
        events,
    })
}

/// Applies `If-None-Match` and `?wait_for_change=` to an answer that may
/// carry an ETag (docs/protocol.md section 6, "ETags and waiting for a
/// change").
fn conditional(req: &Request<'_>, id: InstanceId, response: Response) -> GuestAnswer {
    // Most requests ask neither: nothing to compare, nothing to wait for.
    if req.query.is_empty() && req.if_none_match.is_none() {
        return GuestAnswer::Respond(response, None);
    }
    let Some(etag) = response.etag.clone() else {
        return GuestAnswer::Respond(response, None);
    };
    let wait = match wait_request(req.query) {
        Ok(wait) => wait,
        Err(error) => return GuestAnswer::Respond(error.response(), None),
    };
    let last_etag = query_param(req.query, "last_etag")
        .and_then(percent_decode)
        .map(|tag| tag.into_owned());
    let known = req.if_none_match.map(str::to_owned).or(last_etag);
    let matches = known
        .as_deref()
        .is_some_and(|known| etag_matches(known, &etag));
    match wait {
        Some(timeout) if matches => GuestAnswer::Wait { id, etag, timeout },
        // A waited-for answer that changed is the new body, not a 304.
        Some(_) => GuestAnswer::Respond(response, None),
        None if matches && req.if_none_match.is_some() => {
            GuestAnswer::Respond(Response::not_modified(etag), None)
        }
        None => GuestAnswer::Respond(response, None),
    }
}

/// `?wait_for_change=true&timeout_sec=N`: `Ok(Some(timeout))` to wait,
/// `Ok(None)` not to, or what is wrong with the parameters.
fn wait_request(query: &str) -> Result<Option<Duration>, NotServed> {
    match query_param(query, "wait_for_change") {
        None | Some("false" | "0") => return Ok(None),
        Some("true" | "1") => {}
        Some(other) => {
            return Err(NotServed::BadQuery(format!(
                "wait_for_change={other:?}: use true or false"
            )));
        }
    }
    let secs = match query_param(query, "timeout_sec") {
        None => DEFAULT_WAIT_SECS,
        Some(text) => match text.parse::<u64>() {
            Ok(secs) if secs <= MAX_WAIT_SECS => secs,
            _ => {
                return Err(NotServed::BadQuery(format!(
                    "timeout_sec={text:?}: give whole seconds from 0 to {MAX_WAIT_SECS}"
                )));
            }
        },
    };
    Ok(Some(Duration::from_secs(secs)))
}

/// Whether an `If-None-Match` value (a list of tags, possibly weak, or `*`)
/// names `etag` (RFC 9110 13.1.2, weak comparison).
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

fn api_info(instance: &Instance) -> Response {
    // Written by hand, fields in LXD's order: this is the path guests ask
    // most, and serde's general string escaping was a sixth of the
    // instructions spent on such a request. Only `location` is not ours.
    let location = instance.spec.location.as_deref().unwrap_or_default();
    let mut body = Vec::with_capacity(128 + location.len());
    body.extend_from_slice(br#"{"api_version":"1.0","auth":"untrusted","instance_type":""#);
    body.extend_from_slice(instance.spec.kind.as_str().as_bytes());
    body.extend_from_slice(br#"","location":"#);
    push_json_string(&mut body, location);
    body.extend_from_slice(br#","state":""#);
    body.extend_from_slice(instance.state.as_str().as_bytes());
    body.extend_from_slice(b"\"}\n");
    Response::json_bytes(body)
}

/// Appends `text` as a JSON string, exactly as serde_json writes it.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// `PATCH /1.0`: `{"state":"Ready"}` or `{"state":"Started"}`, exactly.
fn patch_state(body: &[u8]) -> Result<GuestState, NotServed> {
    #[derive(serde::Deserialize)]
    struct Patch {
        #[serde(default)]
        state: String,
    }
    let patch: Patch = serde_json::from_slice(body)
        .map_err(|e| NotServed::BadBody(format!("invalid JSON body: {e}")))?;
    match patch.state.as_str() {
        "Ready" => Ok(GuestState::Ready),
        "Started" => Ok(GuestState::Started),
        other => Err(NotServed::BadBody(format!("Invalid state {other:?}"))),
    }
}

fn config_list(instance: &Instance) -> Response {
    let keys: Vec<String> = instance
        .spec
        .config
        .keys()
        .filter(|key| guest_visible(key))
        .map(|key| format!("/1.0/config/{key}"))
        .collect();
    Response::json(&keys)
}

fn config_value(instance: &Instance, raw_key: &str) -> Response {
    let Some(key) = percent_decode(raw_key) else {
        return NotServed::BadPercentEncoding { what: "key" }.response();
    };
    if !guest_visible(&key) {
        return NotServed::HiddenKey.response();
    }
    // A missing key has a tag too, so that a guest can wait for it to be
    // set.
    match instance.spec.config.get(key.as_ref()) {
        Some(value) => Response::raw(value.as_bytes().to_vec()).with_etag(),
        None => NotServed::NoSuchPath.response().with_etag(),
    }
}

/// Whether `path` is `/1.0/images/{fingerprint}/export` with one non-empty
/// segment for the fingerprint (LXD's route pattern).
fn is_image_export(path: &str) -> bool {
    path.strip_prefix("/1.0/images/")
        .and_then(|rest| rest.strip_suffix("/export"))
        .is_some_and(|fingerprint| !fingerprint.is_empty() && !fingerprint.contains('/'))
}

/// `GET /1.0/images/{fingerprint}/export`: guestsock serves no images, which
/// is LXD's case of an instance without `security.devlxd.images`. LXD then
/// answers `403` in the envelope of its main API rather than devlxd's plain
/// text (lxd/devlxd.go, `devLXDImageExportHandler`: "we return LXD API
/// response error here as an exception"), whatever the fingerprint.
fn image_export() -> Response {
    NotServed::NoImages.response()
}

/// `GET /1.0/ubuntu-pro`: Ubuntu Pro guest attachment is off, as on an LXD
/// host without Pro's configuration (`api.DevLXDUbuntuProSettings`).
fn ubuntu_pro_settings() -> Response {
    Response::json_bytes(b"{\"guest_attach\":\"off\"}\n".to_vec())
}

/// `POST /1.0/ubuntu-pro/token`: refused as LXD refuses it while guest
/// attachment is off (`GetGuestToken`'s `403 Guest attachment not allowed`,
/// wrapped by `devLXDUbuntuProTokenPostHandler`).
fn ubuntu_pro_token() -> Response {
    NotServed::UbuntuProOff.response()
}

fn meta_data(instance: &Instance) -> Response {
    let spec = &instance.spec;
    let mut body = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        spec.cloud_init_id.as_deref().unwrap_or(&spec.name),
        spec.name
    )
    .into_bytes();
    if let Some(extra) = spec.config.get("user.meta-data") {
        body.extend_from_slice(extra.as_bytes());
    }
    Response::raw(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Parsed, parse};
    use crate::http::response::BodyKind;
    use crate::instance::{InstanceSpec, RuleKinds};

    fn registry() -> Registry {
        let mut r = Registry::new("host1".into());
        let spec: InstanceSpec = serde_json::from_str(
            r##"{"name":"c1","match":{"uid_range":[1000,10]},
                "config":{"user.foo":"bar","user.meta-data":"extra: 1\n","cloud-init.user-data":"#cloud-config\n","volatile.x":"no","security.y":"no"},
                "devices":{"eth0":{"type":"nic","name":"eth0"},"a":{}}}"##,
        )
        .unwrap();
        r.insert(spec).unwrap();
        let spec: InstanceSpec = serde_json::from_str(
            r#"{"name":"any","match":{"uid_range":[2000,10]},"guest_access":"any","cloud_init_id":"ci-9","type":"virtual-machine","location":"rack2"}"#,
        )
        .unwrap();
        r.insert(spec).unwrap();
        r
    }

    fn peer(uid: u32) -> PeerFacts {
        PeerFacts {
            pid: 7,
            uid,
            gid: uid,
            gathered: RuleKinds::empty(),
            cgroup: None,
            pidns: None,
            proc_error: None,
        }
    }

    fn respond(answer: GuestAnswer) -> (Response, Option<Change>) {
        match answer {
            GuestAnswer::Respond(response, change) => (response, change),
            other => panic!("{other:?}"),
        }
    }

    fn ask(r: &mut Registry, uid: u32, method: &str, path: &str, body: &str) -> Response {
        let text = format!(
            "{method} {path} HTTP/1.1\r\nHost: lxd\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let Ok(Parsed::Complete(req)) = parse(text.as_bytes(), 0, 1024) else {
            panic!("{text}")
        };
        let caller = r.identify(&peer(uid));
        respond(answer(&req, &caller, &peer(uid), r, None)).0
    }

    fn ok(r: &mut Registry, uid: u32, path: &str) -> String {
        let resp = ask(r, uid, "GET", path, "");
        assert_eq!(
            resp.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        String::from_utf8(resp.body).unwrap()
    }

    #[test]
    fn endpoints() {
        let mut r = registry();
        assert_eq!(ok(&mut r, 1000, "/"), "[\"/1.0\"]\n");
        assert_eq!(
            ok(&mut r, 1000, "/1.0"),
            "{\"api_version\":\"1.0\",\"auth\":\"untrusted\",\"instance_type\":\"container\",\"location\":\"host1\",\"state\":\"Started\"}\n"
        );
        assert_eq!(
            ok(&mut r, 2005, "/1.0"),
            "{\"api_version\":\"1.0\",\"auth\":\"untrusted\",\"instance_type\":\"virtual-machine\",\"location\":\"rack2\",\"state\":\"Started\"}\n"
        );
        assert_eq!(
            ok(&mut r, 1000, "/1.0/config"),
            "[\"/1.0/config/cloud-init.user-data\",\"/1.0/config/user.foo\",\"/1.0/config/user.meta-data\"]\n"
        );
        assert_eq!(ok(&mut r, 1000, "/1.0/config/user.foo"), "bar");
        assert_eq!(ok(&mut r, 1000, "/1.0/config/user.%66oo"), "bar");
        assert_eq!(ok(&mut r, 1000, "/1.0/config/user.foo?x=1"), "bar");
        assert_eq!(
            ok(&mut r, 1000, "/1.0/meta-data"),
            "instance-id: c1\nlocal-hostname: c1\nextra: 1\n"
        );
        assert_eq!(
            ok(&mut r, 2000, "/1.0/meta-data"),
            "instance-id: ci-9\nlocal-hostname: any\n"
        );
        assert_eq!(
            ok(&mut r, 1000, "/1.0/devices"),
            "{\"a\":{},\"eth0\":{\"name\":\"eth0\",\"type\":\"nic\"}}\n"
        );
        let resp = ask(&mut r, 1000, "GET", "/1.0/config/user.foo", "");
        assert_eq!(resp.kind, BodyKind::Raw);
    }

    #[test]
    fn errors() {
        let mut r = registry();
        let table = [
            (1000, "GET", "/1.0/config/volatile.x", "", 403),
            (1000, "GET", "/1.0/images", "", 404),
            (1000, "GET", "/1.0/ubuntu-pro/", "", 404),
            (1000, "GET", "/1.0/config/user.missing", "", 404),
            (1000, "GET", "/1.0/config/", "", 404),
            (1000, "GET", "/1.0/config/user.%zz", "", 400),
            (1000, "GET", "/1.0/", "", 404),
            (1000, "GET", "/1.0/events/x", "", 404),
            (1000, "GET", "/2.0", "", 404),
            (1000, "POST", "/1.0", "", 405),
            (1000, "DELETE", "/1.0/config/user.foo", "", 405),
            (1000, "PUT", "/1.0/config", "", 405),
            (1000, "PATCH", "/1.0", "{\"state\":\"ready\"}", 400),
            (1000, "PATCH", "/1.0", "{\"state\":", 400),
            (1000, "PATCH", "/1.0", "", 400),
            (1001, "GET", "/1.0", "", 401),
            (999, "GET", "/1.0", "", 403),
            (2009, "GET", "/1.0/config/user.foo", "", 404),
            (2010, "GET", "/", "", 403),
        ];
        for (uid, method, path, body, status) in table {
            let resp = ask(&mut r, uid, method, path, body);
            assert_eq!(resp.status, status, "{uid} {method} {path} {body}");
            assert_eq!(resp.kind, BodyKind::Error);
        }
        let resp = ask(&mut r, 1000, "POST", "/1.0", "");
        assert_eq!(resp.allow, Some("GET, HEAD, PATCH"));
        let resp = ask(&mut r, 1000, "PATCH", "/1.0", "{\"state\":\"Bogus\"}");
        assert_eq!(resp.body, b"Invalid state \"Bogus\"\n");
        let resp = ask(&mut r, 999, "GET", "/1.0", "");
        assert!(String::from_utf8_lossy(&resp.body).contains("pid 7 (uid 999)"));
    }

    /// Where LXD refuses for the same reason, its status, body and type
    /// exactly (canonical/lxd lxd/devlxd.go).
    #[test]
    fn refusals_are_lxds() {
        let mut r = registry();
        let table: [(&str, &str, u16, BodyKind, &str); 7] = [
            (
                "GET",
                "/1.0/config/volatile.x",
                403,
                BodyKind::Error,
                "Forbidden\n",
            ),
            (
                "GET",
                "/1.0/config/security.nesting",
                403,
                BodyKind::Error,
                "Forbidden\n",
            ),
            (
                "GET",
                "/1.0/images/0123456789ab/export",
                403,
                BodyKind::Json,
                "{\"type\":\"error\",\"status\":\"\",\"status_code\":0,\"operation\":\"\",\"error_code\":403,\"error\":\"Forbidden\",\"metadata\":null}\n\n",
            ),
            (
                "GET",
                "/1.0/ubuntu-pro",
                200,
                BodyKind::Json,
                "{\"guest_attach\":\"off\"}\n",
            ),
            (
                "POST",
                "/1.0/ubuntu-pro/token",
                403,
                BodyKind::Error,
                "Failed getting an Ubuntu Pro guest token: Guest attachment not allowed\n",
            ),
            (
                "GET",
                "/1.0/images//export",
                404,
                BodyKind::Error,
                "not found\n",
            ),
            (
                "GET",
                "/1.0/images/a/b/export",
                404,
                BodyKind::Error,
                "not found\n",
            ),
        ];
        for (method, path, status, kind, body) in table {
            let resp = ask(&mut r, 1000, method, path, "");
            assert_eq!(
                (
                    resp.status,
                    resp.kind,
                    String::from_utf8_lossy(&resp.body).as_ref()
                ),
                (status, kind, body),
                "{method} {path}"
            );
        }
        // LXD's main-API error carries nosniff, like its devlxd errors.
        let resp = ask(&mut r, 1000, "GET", "/1.0/images/x/export", "");
        assert_eq!(resp.extra_header, Some("X-Content-Type-Options: nosniff"));
        for (method, path, allow) in [
            ("POST", "/1.0/images/x/export", "GET, HEAD"),
            ("PUT", "/1.0/ubuntu-pro", "GET, HEAD"),
            ("GET", "/1.0/ubuntu-pro/token", "POST"),
        ] {
            let resp = ask(&mut r, 1000, method, path, "");
            assert_eq!(
                (resp.status, resp.allow),
                (405, Some(allow)),
                "{method} {path}"
            );
        }
        // A stranger still learns nothing, whatever the path.
        let resp = ask(&mut r, 999, "GET", "/1.0/ubuntu-pro", "");
        assert_eq!(resp.status, 403);
    }

    #[test]
    fn ready_is_kept_and_reported_once() {
        let mut r = registry();
        let text =
            "PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 17\r\n\r\n{\"state\":\"Ready\"}";
        let Ok(Parsed::Complete(req)) = parse(text.as_bytes(), 0, 1024) else {
            panic!()
        };
        let caller = r.identify(&peer(1000));
        let (resp, change) = respond(answer(&req, &caller, &peer(1000), &mut r, None));
        assert_eq!(
            (resp.status, resp.body.len(), resp.kind),
            (200, 0, BodyKind::Raw)
        );
        let Some(Change::Put { staged, events }) = change else {
            panic!("{change:?}")
        };
        assert_eq!(
            (staged.state, events),
            (GuestState::Ready, vec![Event::InstanceReady])
        );
        assert!(
            ok(&mut r, 1000, "/1.0").contains("\"state\":\"Started\""),
            "not served before it is durable"
        );
        r.commit(&staged);
        assert!(ok(&mut r, 1000, "/1.0").contains("\"state\":\"Ready\""));
        let caller = r.identify(&peer(1000));
        let (_, change) = respond(answer(&req, &caller, &peer(1000), &mut r, None));
        assert!(change.is_none(), "no change, nothing to announce");
        assert!(
            ok(&mut r, 2000, "/1.0").contains("\"state\":\"Started\""),
            "other instance untouched"
        );
    }

    /// A token request: minted for the caller's own instance, refused as
    /// every other request is, and for the rules of section 9.
    #[test]
    fn token_requests() {
        let mut r = registry();
        let token = |r: &mut Registry, uid: u32, method: &str, target: &str, headers: &str| {
            let text = format!("{method} {target} HTTP/1.1\r\nHost: lxd\r\n{headers}\r\n");
            let Ok(Parsed::Complete(req)) = parse(text.as_bytes(), 0, 1024) else {
                panic!("{text}")
            };
            let caller = r.identify(&peer(uid));
            answer(&req, &caller, &peer(uid), r, None)
        };
        let yes = "Guestsock-Identity: true\r\n";
        let GuestAnswer::Mint(mint) = token(
            &mut r,
            2003,
            "GET",
            "/1.0/identity/token?audience=vault&ttl=60",
            yes,
        ) else {
            panic!("not minted")
        };
        assert_eq!(
            (
                mint.instance.as_str(),
                mint.kind,
                mint.location.as_str(),
                mint.uid,
                mint.audience.as_str(),
                mint.ttl
            ),
            ("any", "virtual-machine", "rack2", 2003, "vault", 60)
        );
        let GuestAnswer::Mint(mint) = token(
            &mut r,
            1000,
            "GET",
            "/1.0/identity/token?audience=a",
            "guestsock-identity:  TRUE \r\n",
        ) else {
            panic!("not minted")
        };
        assert_eq!(
            (mint.instance.as_str(), mint.location.as_str(), mint.ttl),
            ("c1", "host1", 600)
        );
        let table = [
            (1000, "GET", "/1.0/identity/token?audience=a", "", 403),
            (
                1000,
                "GET",
                "/1.0/identity/token?audience=a",
                "Guestsock-Identity: false\r\n",
                403,
            ),
            (
                1000,
                "GET",
                "/1.0/identity/token?audience=a",
                "Guestsock-Identity: true\r\nX-Forwarded-For: 10.0.0.1\r\n",
                403,
            ),
            (
                1000,
                "GET",
                "/1.0/identity/token?audience=a",
                "Guestsock-Identity: true\r\nForwarded: for=x\r\n",
                403,
            ),
            (1000, "GET", "/1.0/identity/token", yes, 400),
            (
                1000,
                "GET",
                "/1.0/identity/token?audience=a&ttl=5",
                yes,
                400,
            ),
            (1000, "POST", "/1.0/identity/token?audience=a", yes, 405),
            (1000, "HEAD", "/1.0/identity/token?audience=a", yes, 405),
            (1001, "GET", "/1.0/identity/token?audience=a", yes, 401),
            (999, "GET", "/1.0/identity/token?audience=a", yes, 403),
            (1000, "GET", "/1.0/identity", yes, 404),
            (1000, "GET", "/1.0/identity/token/", yes, 404),
        ];
        for (uid, method, target, headers, status) in table {
            let (resp, _) = respond(token(&mut r, uid, method, target, headers));
            assert_eq!(resp.status, status, "{uid} {method} {target} {headers:?}");
        }
    }

    #[test]
    fn json_strings_are_written_as_serde_writes_them() {
        for text in [
            "",
            "host1",
            "a\"b",
            "back\\slash",
            "tab\t",
            "é ü",
            "\u{7f}",
            "\u{1}",
            "</script>",
        ] {
            let mut out = Vec::new();
            push_json_string(&mut out, text);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }
}
