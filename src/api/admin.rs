//! The admin API's routes (docs/protocol.md section 7): the host orchestrator
//! registers, changes and removes instances.
//!
//! Owns the validation of every admin body and name and the shape of every
//! answer's `metadata`. Answers are built as plain JSON or errors and put in
//! LXD's envelope by `dispatch` (`Response::enveloped`). Reads show the
//! durable state; a change is built on the newest version of its instance
//! (changes in flight included) and reported as a [`Change`], which the
//! server makes durable before it is served or acknowledged.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::Change;
use crate::error::NotServed;
use crate::events::{self, Event};
use crate::http::request::{Request, percent_decode};
use crate::http::response::Response;
use crate::instance::{
    DeviceFields, GuestState, InstanceSpec, check_config_entry, check_device, valid_key,
};
use crate::limits::MAX_BATCH_INSTANCES;
use crate::registry::{Instance, Registry, Staged};

/// What `GET /1.0` reports about the server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFacts {
    /// guestsock's version.
    pub version: &'static str,
    /// This server's process id (`doctor` reads its priority in `/proc`;
    /// under socket activation or after a SIGHUP handoff, the socket's own
    /// credentials name whoever bound it, not the server).
    pub pid: u32,
    /// Where the guest socket is.
    pub guest_socket: String,
    /// Where the admin socket is.
    pub admin_socket: String,
    /// Where state is kept.
    pub state_dir: String,
    /// Open connections by socket.
    pub connections: Connections,
}

/// Open connections by socket.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Connections {
    /// On the guest socket.
    pub guest: usize,
    /// On the admin socket.
    pub admin: usize,
}

/// What an admin request calls for.
#[derive(Debug)]
pub enum AdminAnswer {
    /// An answer now (not yet enveloped), and what the request changed.
    Respond(Response, Option<Change>),
    /// `GET /1.0/events`: subscribe to every instance's events.
    Subscribe,
    /// `GET /1.0/metrics`: the server renders its counters.
    Metrics,
}

/// Answers one admin request from an authorized peer.
pub fn answer(req: &Request<'_>, registry: &mut Registry, facts: &ServerFacts) -> AdminAnswer {
    if req.path == "/1.0/metrics" {
        return match req.method {
            "GET" | "HEAD" => AdminAnswer::Metrics,
            _ => AdminAnswer::Respond(
                NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
                None,
            ),
        };
    }
    if req.path == "/1.0/events" {
        return match req.method {
            "GET" => AdminAnswer::Subscribe,
            _ => AdminAnswer::Respond(
                NotServed::MethodNotAllowed { allow: "GET" }.response(),
                None,
            ),
        };
    }
    // What the instance was (counting changes in flight), to tell
    // subscribers what changed.
    let before = instance_name(req.path)
        .filter(|_| !matches!(req.method, "GET" | "HEAD"))
        .and_then(|name| registry.latest(name));
    let (response, change) = route(req, registry, facts);
    let change = change.map(|change| match change {
        Change::Put { staged, .. } => Change::Put {
            events: events_for(req, before, &staged),
            staged,
        },
        other => other,
    });
    AdminAnswer::Respond(response, change)
}

/// The `{name}` of an `/1.0/instances/{name}...` path.
fn instance_name(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/1.0/instances/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The events a change made: registration, replacement and host state
/// changes for the admin stream, then one per config key and device that
/// differs.
fn events_for(req: &Request<'_>, before: Option<Staged>, after: &Staged) -> Vec<Event> {
    let Some(before) = before else {
        return vec![Event::InstanceCreated];
    };
    let mut events = Vec::new();
    if req.method == "PUT" && instance_name(req.path) == req.path.strip_prefix("/1.0/instances/") {
        events.push(Event::InstanceUpdated);
    }
    if before.state != after.state {
        events.push(Event::State {
            state: after.state.as_str(),
        });
    }
    events.extend(events::diff(Some(&before.spec), Some(&after.spec)));
    events
}

fn route(
    req: &Request<'_>,
    registry: &mut Registry,
    facts: &ServerFacts,
) -> (Response, Option<Change>) {
    let read = matches!(req.method, "GET" | "HEAD");
    let path = req.path;
    let Some(rest) = path.strip_prefix("/1.0/instances") else {
        let response = match path {
            "/" if read => Response::json(&["/1.0"]),
            "/" => NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
            "/1.0" if read => server_info(registry, facts),
            "/1.0" => NotServed::MethodNotAllowed { allow: "GET, HEAD" }.response(),
            _ => NotServed::NoSuchPath.response(),
        };
        return (response, None);
    };
    if rest.is_empty() {
        return match req.method {
            "GET" | "HEAD" => (list_instances(registry, req.query), None),
            "POST" => create_instance(registry, req.body),
            _ => (
                NotServed::MethodNotAllowed {
                    allow: "GET, HEAD, POST",
                }
                .response(),
                None,
            ),
        };
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return (NotServed::NoSuchPath.response(), None);
    };
    let (name, sub) = match rest.split_once('/') {
        Some((name, sub)) => (name, Some(sub)),
        None => (rest, None),
    };
    // Reads show what is durable; changes build on the newest version,
    // counting changes in flight.
    let id = registry.find(name);
    if id.is_none() && !registry.exists_latest(name) {
        return (instance_not_found(name), None);
    }
    let durable = |get: &dyn Fn(&Instance) -> Response| match id.and_then(|id| registry.get(id)) {
        Some(instance) => get(instance),
        None => instance_not_found(name),
    };
    match sub {
        None => match req.method {
            "GET" | "HEAD" => (
                durable(&|i| Response::json(&instance_view(&i.spec, i.state))),
                None,
            ),
            "PUT" => replace_instance(registry, name, req.body),
            "DELETE" => {
                if registry.stage_remove(name) {
                    (
                        Response::json(&serde_json::json!({})),
                        Some(Change::Remove {
                            name: name.to_owned(),
                        }),
                    )
                } else {
                    (instance_not_found(name), None)
                }
            }
            _ => (
                NotServed::MethodNotAllowed {
                    allow: "GET, HEAD, PUT, DELETE",
                }
                .response(),
                None,
            ),
        },
        Some("config") => match req.method {
            "PATCH" => patch_config(registry, name, req.body),
            "GET" | "HEAD" => (durable(&|i| Response::json(&i.spec.config)), None),
            _ => (
                NotServed::MethodNotAllowed {
                    allow: "GET, HEAD, PATCH",
                }
                .response(),
                None,
            ),
        },
        Some("devices") => match req.method {
            "POST" => add_device(registry, name, req.body),
            _ => (
                NotServed::MethodNotAllowed { allow: "POST" }.response(),
                None,
            ),
        },
        Some("state") => match req.method {
            "PUT" => put_state(registry, name, req.body),
            "GET" | "HEAD" => (durable(&|i| Response::json(&i.state)), None),
            _ => (
                NotServed::MethodNotAllowed {
                    allow: "GET, HEAD, PUT",
                }
                .response(),
                None,
            ),
        },
        Some(sub) => {
            if let Some(raw_key) = sub.strip_prefix("config/") {
                let key = match decode_name(raw_key, "key") {
                    Ok(key) => key,
                    Err(error) => return (error.response(), None),
                };
                match req.method {
                    "PUT" => set_config(registry, name, key, req.body),
                    "DELETE" => unset_config(registry, name, &key),
                    "GET" | "HEAD" => (
                        durable(&|i| match i.spec.config.get(&key) {
                            Some(value) => Response::raw(value.clone().into_bytes()),
                            None => NotServed::KeyNotSet(key.clone()).response(),
                        }),
                        None,
                    ),
                    _ => (
                        NotServed::MethodNotAllowed {
                            allow: "GET, HEAD, PUT, DELETE",
                        }
                        .response(),
                        None,
                    ),
                }
            } else if let Some(raw_dev) = sub.strip_prefix("devices/") {
                let dev = match decode_name(raw_dev, "device name") {
                    Ok(dev) => dev,
                    Err(error) => return (error.response(), None),
                };
                match req.method {
                    "PUT" => put_device(registry, name, dev, req.body),
                    "DELETE" => remove_device(registry, name, &dev),
                    "GET" | "HEAD" => (
                        durable(&|i| match i.spec.devices.get(&dev) {
                            Some(fields) => Response::json(fields),
                            None => NotServed::NoSuchDevice(dev.clone()).response(),
                        }),
                        None,
                    ),
                    _ => (
                        NotServed::MethodNotAllowed {
                            allow: "GET, HEAD, PUT, DELETE",
                        }
                        .response(),
                        None,
                    ),
                }
            } else {
                (NotServed::NoSuchPath.response(), None)
            }
        }
    }
}

fn instance_not_found(name: &str) -> Response {
    NotServed::NoSuchInstance(name.to_owned()).response()
}

/// Percent-decodes a key or device name from a path and checks it.
fn decode_name(raw: &str, what: &'static str) -> Result<String, NotServed> {
    let decoded = percent_decode(raw).ok_or(NotServed::BadPercentEncoding { what })?;
    if !valid_key(&decoded) {
        return Err(NotServed::BadName {
            what,
            name: decoded.into_owned(),
        });
    }
    Ok(decoded.into_owned())
}

/// Parses a JSON body strictly, with serde's position and reason on error.
fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, NotServed> {
    serde_json::from_slice(body).map_err(|e| NotServed::BadBody(format!("invalid {what}: {e}")))
}

/// An instance as the admin API shows it: the section 4 object plus its
/// guest `state`.
fn instance_view(spec: &InstanceSpec, state: GuestState) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("state".into(), state.as_str().into());
    }
    value
}

fn server_info(registry: &Registry, facts: &ServerFacts) -> Response {
    let mut value = serde_json::to_value(facts).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("instances".into(), registry.len().into());
    }
    Response::json(&value)
}

fn list_instances(registry: &Registry, query: &str) -> Response {
    let recursion = query
        .split('&')
        .any(|pair| pair == "recursion=1" || pair == "recursion=2");
    let mut instances: Vec<&Instance> = registry.iter().map(|(_, i)| i).collect();
    instances.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if recursion {
        let views: Vec<serde_json::Value> = instances
            .into_iter()
            .map(|i| instance_view(&i.spec, i.state))
            .collect();
        Response::json(&views)
    } else {
        let urls: Vec<String> = instances
            .into_iter()
            .map(|i| format!("/1.0/instances/{}", i.spec.name))
            .collect();
        Response::json(&urls)
    }
}

/// The answer to a change: the instance as it will be once the change is
/// durable (the answer is held until then). Its events are filled in by
/// `answer`, which saw it before.
fn saved(staged: Rc<Staged>) -> (Response, Option<Change>) {
    (
        Response::json(&instance_view(&staged.spec, staged.state)),
        Some(Change::Put {
            staged,
            events: Vec::new(),
        }),
    )
}

/// Builds a change on the newest version of instance `name` (its rule
/// unchanged): `edit` changes a copy, or refuses with its answer.
fn change(
    registry: &mut Registry,
    name: &str,
    edit: impl FnOnce(&mut Staged) -> Result<(), NotServed>,
) -> (Response, Option<Change>) {
    let Some(mut staged) = registry.latest(name) else {
        return (instance_not_found(name), None);
    };
    if let Err(error) = edit(&mut staged) {
        return (error.response(), None);
    }
    saved(registry.stage(staged))
}

/// Whether a `POST /1.0/instances` body is a batch, `{"instances": [...]}`:
/// an instance object has no `instances` field (unknown fields are refused),
/// so the first key tells, without parsing the body twice.
fn is_batch(body: &[u8]) -> bool {
    let text = body.trim_ascii_start();
    text.strip_prefix(b"{")
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"\"instances\""))
}

/// A batch registration: `{"instances": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    instances: Vec<InstanceSpec>,
}

/// `POST /1.0/instances` with `{"instances": [...]}`: registers new
/// instances and replaces existing ones, all or nothing, made durable in
/// one transaction. Answers how many of each.
fn register_batch(registry: &mut Registry, body: &[u8]) -> (Response, Option<Change>) {
    let batch: Batch = match parse_body(body, "batch") {
        Ok(batch) => batch,
        Err(error) => return (error.response(), None),
    };
    if batch.instances.len() > MAX_BATCH_INSTANCES {
        return (
            NotServed::BadBody(format!(
                "a batch holds at most {MAX_BATCH_INSTANCES} instances, not {}",
                batch.instances.len()
            ))
            .response(),
            None,
        );
    }
    let staged = match registry.stage_batch(batch.instances) {
        Ok(staged) => staged,
        Err(e) => return (NotServed::Batch(e).response(), None),
    };
    let created = staged.iter().filter(|(before, _)| before.is_none()).count();
    let replaced = staged.len() - created;
    let changes = staged
        .into_iter()
        .map(|(before, staged)| {
            let events = match before {
                None => vec![Event::InstanceCreated],
                Some(before) => {
                    let mut events = vec![Event::InstanceUpdated];
                    events.extend(events::diff(Some(&before.spec), Some(&staged.spec)));
                    events
                }
            };
            Change::Put { staged, events }
        })
        .collect();
    (
        Response::json(&serde_json::json!({"created": created, "replaced": replaced})),
        Some(Change::Batch(changes)),
    )
}

fn create_instance(registry: &mut Registry, body: &[u8]) -> (Response, Option<Change>) {
    if is_batch(body) {
        return register_batch(registry, body);
    }
    let spec: InstanceSpec = match parse_body(body, "instance") {
        Ok(spec) => spec,
        Err(error) => return (error.response(), None),
    };
    match registry.stage_insert(spec) {
        Ok(staged) => saved(staged),
        Err(e) => (NotServed::Registry(e).response(), None),
    }
}

fn replace_instance(
    registry: &mut Registry,
    name: &str,
    body: &[u8],
) -> (Response, Option<Change>) {
    let spec: InstanceSpec = match parse_body(body, "instance") {
        Ok(spec) => spec,
        Err(error) => return (error.response(), None),
    };
    match registry.stage_replace(name, spec) {
        Ok(staged) => saved(staged),
        Err(e) => (NotServed::Registry(e).response(), None),
    }
}

/// A config value is the raw body: it must be UTF-8, since values are
/// strings, and within the value limit.
fn set_config(
    registry: &mut Registry,
    name: &str,
    key: String,
    body: &[u8],
) -> (Response, Option<Change>) {
    let Ok(value) = std::str::from_utf8(body) else {
        return (
            NotServed::BadBody("a config value must be UTF-8 text".into()).response(),
            None,
        );
    };
    if let Err(e) = check_config_entry(&key, value) {
        return (NotServed::Invalid(e).response(), None);
    }
    change(registry, name, |staged| {
        staged.spec.config.insert(key, value.to_owned());
        Ok(())
    })
}

fn unset_config(registry: &mut Registry, name: &str, key: &str) -> (Response, Option<Change>) {
    change(registry, name, |staged| {
        match staged.spec.config.remove(key) {
            Some(_) => Ok(()),
            None => Err(NotServed::KeyNotSet(key.to_owned())),
        }
    })
}

/// `PATCH .../config`: key to string (set) or `null` (unset), every entry
/// checked before any is applied.
fn patch_config(registry: &mut Registry, name: &str, body: &[u8]) -> (Response, Option<Change>) {
    let patch: BTreeMap<String, Option<String>> = match parse_body(body, "config patch") {
        Ok(patch) => patch,
        Err(error) => return (error.response(), None),
    };
    for (key, value) in &patch {
        let checked = match value {
            Some(value) => check_config_entry(key, value),
            None => check_config_entry(key, ""),
        };
        if let Err(e) = checked {
            return (NotServed::Invalid(e).response(), None);
        }
    }
    change(registry, name, |staged| {
        for (key, value) in patch {
            match value {
                Some(value) => staged.spec.config.insert(key, value),
                None => staged.spec.config.remove(&key),
            };
        }
        Ok(())
    })
}

fn put_device(
    registry: &mut Registry,
    name: &str,
    dev: String,
    body: &[u8],
) -> (Response, Option<Change>) {
    match parse_body(body, "device") {
        Ok(fields) => store_device(registry, name, dev, fields, true),
        Err(error) => (error.response(), None),
    }
}

/// `POST .../devices` with `{"name": DEV, "fields": {..}}`: adds a device
/// that does not exist yet. One that does is refused with `409`, as LXD's
/// `device add` refuses it; `PUT .../devices/{dev}` is the way to replace it.
fn add_device(registry: &mut Registry, name: &str, body: &[u8]) -> (Response, Option<Change>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewDevice {
        name: String,
        fields: DeviceFields,
    }
    match parse_body::<NewDevice>(body, "device") {
        Ok(device) => store_device(registry, name, device.name, device.fields, false),
        Err(error) => (error.response(), None),
    }
}

/// Checks device `dev` and stages it on instance `name`; an existing one
/// is replaced only if `replace`, else refused with `409`.
fn store_device(
    registry: &mut Registry,
    name: &str,
    dev: String,
    fields: DeviceFields,
    replace: bool,
) -> (Response, Option<Change>) {
    if let Err(e) = check_device(&dev, &fields) {
        return (NotServed::Invalid(e).response(), None);
    }
    change(registry, name, |staged| {
        if !replace && staged.spec.devices.contains_key(&dev) {
            return Err(NotServed::DeviceExists(dev));
        }
        staged.spec.devices.insert(dev, fields);
        Ok(())
    })
}

fn remove_device(registry: &mut Registry, name: &str, dev: &str) -> (Response, Option<Change>) {
    change(registry, name, |staged| {
        match staged.spec.devices.remove(dev) {
            Some(_) => Ok(()),
            None => Err(NotServed::NoSuchDevice(dev.to_owned())),
        }
    })
}

fn put_state(registry: &mut Registry, name: &str, body: &[u8]) -> (Response, Option<Change>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Put {
        state: String,
    }
    let put: Put = match parse_body(body, "state") {
        Ok(put) => put,
        Err(error) => return (error.response(), None),
    };
    let state = match put.state.as_str() {
        "Started" => GuestState::Started,
        "Ready" => GuestState::Ready,
        other => {
            return (
                NotServed::BadBody(format!("Invalid state {other:?}; use \"Started\"")).response(),
                None,
            );
        }
    };
    change(registry, name, |staged| {
        staged.state = state;
        Ok(())
    })
}
