//! The admin API's routes (PROTOCOL.md section 6): the host orchestrator
//! registers, changes and removes instances.
//!
//! Owns the validation of every admin body and name and the shape of every
//! answer's `metadata`. Answers are built as plain JSON or errors and put in
//! LXD's envelope by the connection (`Response::enveloped`). Making a change
//! durable before it is acknowledged is the server's business: this module
//! reports each change as a [`Change`].

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::Change;
use crate::events::{self, Event};
use crate::http::request::{Request, percent_decode};
use crate::http::response::Response;
use crate::instance::{GuestState, InstanceSpec, check_config_entry, check_device, valid_key};
use crate::registry::{Instance, InstanceId, Registry, RegistryError};

/// What `GET /1.0` reports about the server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFacts {
    /// guestsock's version.
    pub version: &'static str,
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
            _ => AdminAnswer::Respond(Response::method_not_allowed("GET, HEAD"), None),
        };
    }
    if req.path == "/1.0/events" {
        return match req.method {
            "GET" => AdminAnswer::Subscribe,
            _ => AdminAnswer::Respond(Response::method_not_allowed("GET"), None),
        };
    }
    // What the instance was, to tell subscribers what changed.
    let before = instance_name(req.path)
        .and_then(|name| registry.find(name))
        .and_then(|id| registry.get(id))
        .filter(|_| !matches!(req.method, "GET" | "HEAD"))
        .map(|i| (i.spec.clone(), i.state));
    let (response, change) = route(req, registry, facts);
    let change = change.map(|change| match change {
        Change::Saved { id, .. } => Change::Saved {
            id,
            events: events_for(req, before, registry.get(id)),
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
fn events_for(
    req: &Request<'_>,
    before: Option<(InstanceSpec, GuestState)>,
    after: Option<&Instance>,
) -> Vec<Event> {
    let Some(after) = after else {
        return Vec::new();
    };
    let Some((spec, state)) = before else {
        return vec![Event::InstanceCreated];
    };
    let mut events = Vec::new();
    if req.method == "PUT" && instance_name(req.path) == req.path.strip_prefix("/1.0/instances/") {
        events.push(Event::InstanceUpdated);
    }
    if state != after.state {
        events.push(Event::State {
            state: after.state.as_str(),
        });
    }
    events.extend(events::diff(Some(&spec), Some(&after.spec)));
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
            "/" => Response::method_not_allowed("GET, HEAD"),
            "/1.0" if read => server_info(registry, facts),
            "/1.0" => Response::method_not_allowed("GET, HEAD"),
            _ => Response::error(404, "not found"),
        };
        return (response, None);
    };
    if rest.is_empty() {
        return match req.method {
            "GET" | "HEAD" => (list_instances(registry, req.query), None),
            "POST" => create_instance(registry, req.body),
            _ => (Response::method_not_allowed("GET, HEAD, POST"), None),
        };
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return (Response::error(404, "not found"), None);
    };
    let (name, sub) = match rest.split_once('/') {
        Some((name, sub)) => (name, Some(sub)),
        None => (rest, None),
    };
    let Some(id) = registry.find(name) else {
        return (instance_not_found(name), None);
    };
    match sub {
        None => match req.method {
            "GET" | "HEAD" => (view(registry, id), None),
            "PUT" => replace_instance(registry, id, req.body),
            "DELETE" => {
                let name = name.to_owned();
                match registry.remove(&name) {
                    Some((id, instance)) => (
                        Response::json(&serde_json::json!({})),
                        Some(Change::Removed {
                            id,
                            name,
                            instance: Box::new(instance),
                        }),
                    ),
                    None => (instance_not_found(&name), None),
                }
            }
            _ => (Response::method_not_allowed("GET, HEAD, PUT, DELETE"), None),
        },
        Some("config") => match req.method {
            "PATCH" => patch_config(registry, id, req.body),
            "GET" | "HEAD" => (field(registry, id, |i| &i.spec.config), None),
            _ => (Response::method_not_allowed("GET, HEAD, PATCH"), None),
        },
        Some("devices") => match req.method {
            "POST" => add_device(registry, id, req.body),
            _ => (Response::method_not_allowed("POST"), None),
        },
        Some("state") => match req.method {
            "PUT" => put_state(registry, id, req.body),
            "GET" | "HEAD" => (field(registry, id, |i| &i.state), None),
            _ => (Response::method_not_allowed("GET, HEAD, PUT"), None),
        },
        Some(sub) => {
            if let Some(raw_key) = sub.strip_prefix("config/") {
                let key = match decode_name(raw_key, "key") {
                    Ok(key) => key,
                    Err(response) => return (response, None),
                };
                match req.method {
                    "PUT" => set_config(registry, id, key, req.body),
                    "DELETE" => unset_config(registry, id, &key),
                    "GET" | "HEAD" => {
                        let value = registry.get(id).and_then(|i| i.spec.config.get(&key));
                        match value {
                            Some(value) => (Response::raw(value.clone().into_bytes()), None),
                            None => (
                                Response::error(404, format!("key {key:?} is not set")),
                                None,
                            ),
                        }
                    }
                    _ => (Response::method_not_allowed("GET, HEAD, PUT, DELETE"), None),
                }
            } else if let Some(raw_dev) = sub.strip_prefix("devices/") {
                let dev = match decode_name(raw_dev, "device name") {
                    Ok(dev) => dev,
                    Err(response) => return (response, None),
                };
                match req.method {
                    "PUT" => put_device(registry, id, dev, req.body),
                    "DELETE" => remove_device(registry, id, &dev),
                    "GET" | "HEAD" => {
                        let fields = registry.get(id).and_then(|i| i.spec.devices.get(&dev));
                        match fields {
                            Some(fields) => (Response::json(fields), None),
                            None => (
                                Response::error(404, format!("device {dev:?} does not exist")),
                                None,
                            ),
                        }
                    }
                    _ => (Response::method_not_allowed("GET, HEAD, PUT, DELETE"), None),
                }
            } else {
                (Response::error(404, "not found"), None)
            }
        }
    }
}

/// The admin view of instance `id`, or `404` if it is gone.
fn view(registry: &Registry, id: InstanceId) -> Response {
    match registry.get(id) {
        Some(instance) => Response::json(&instance_view(instance)),
        None => Response::error(404, "instance not found"),
    }
}

/// A field of instance `id`, as JSON, or `404` if it is gone.
fn field<T: Serialize>(
    registry: &Registry,
    id: InstanceId,
    get: impl Fn(&Instance) -> &T,
) -> Response {
    match registry.get(id) {
        Some(instance) => Response::json(get(instance)),
        None => Response::error(404, "instance not found"),
    }
}

fn instance_not_found(name: &str) -> Response {
    Response::error(404, format!("instance {name:?} not found"))
}

/// Percent-decodes a key or device name from a path and checks it.
fn decode_name(raw: &str, what: &str) -> Result<String, Response> {
    let decoded = percent_decode(raw)
        .ok_or_else(|| Response::error(400, format!("bad percent-encoding in {what}")))?;
    if !valid_key(&decoded) {
        return Err(Response::error(
            400,
            format!(
                "{what} {decoded:?} is not 1-255 printable ASCII characters without spaces or any of / ? # % \" \\"
            ),
        ));
    }
    Ok(decoded.into_owned())
}

/// Parses a JSON body strictly, with serde's position and reason on error.
fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| Response::error(400, format!("invalid {what}: {e}")))
}

fn registry_error(e: RegistryError) -> Response {
    let status = match e {
        RegistryError::Invalid(_) => 400,
        RegistryError::NameTaken(_) | RegistryError::Conflict { .. } => 409,
    };
    Response::error(status, e)
}

/// An instance as the admin API shows it: the section 4 object plus its
/// guest `state`.
fn instance_view(instance: &Instance) -> serde_json::Value {
    let mut value = serde_json::to_value(&instance.spec).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("state".into(), instance.state.as_str().into());
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
        let views: Vec<serde_json::Value> = instances.into_iter().map(instance_view).collect();
        Response::json(&views)
    } else {
        let urls: Vec<String> = instances
            .into_iter()
            .map(|i| format!("/1.0/instances/{}", i.spec.name))
            .collect();
        Response::json(&urls)
    }
}

/// The answer to a change: the instance as it is now. Its events are
/// filled in by `answer`, which saw it before.
fn saved(registry: &Registry, id: InstanceId) -> (Response, Option<Change>) {
    (
        view(registry, id),
        Some(Change::Saved {
            id,
            events: Vec::new(),
        }),
    )
}

fn create_instance(registry: &mut Registry, body: &[u8]) -> (Response, Option<Change>) {
    let spec: InstanceSpec = match parse_body(body, "instance") {
        Ok(spec) => spec,
        Err(response) => return (response, None),
    };
    match registry.insert(spec) {
        Ok(id) => saved(registry, id),
        Err(e) => (registry_error(e), None),
    }
}

fn replace_instance(
    registry: &mut Registry,
    id: InstanceId,
    body: &[u8],
) -> (Response, Option<Change>) {
    let spec: InstanceSpec = match parse_body(body, "instance") {
        Ok(spec) => spec,
        Err(response) => return (response, None),
    };
    match registry.replace(id, spec) {
        Ok(()) => saved(registry, id),
        Err(e) => (registry_error(e), None),
    }
}

/// A config value is the raw body: it must be UTF-8, since values are
/// strings, and within the value limit.
fn set_config(
    registry: &mut Registry,
    id: InstanceId,
    key: String,
    body: &[u8],
) -> (Response, Option<Change>) {
    let Ok(value) = std::str::from_utf8(body) else {
        return (
            Response::error(400, "a config value must be UTF-8 text"),
            None,
        );
    };
    if let Err(e) = check_config_entry(&key, value) {
        return (Response::error(400, e), None);
    }
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    instance.spec.config.insert(key, value.to_owned());
    saved(registry, id)
}

fn unset_config(registry: &mut Registry, id: InstanceId, key: &str) -> (Response, Option<Change>) {
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    if instance.spec.config.remove(key).is_none() {
        return (
            Response::error(404, format!("key {key:?} is not set")),
            None,
        );
    }
    saved(registry, id)
}

/// `PATCH .../config`: key to string (set) or `null` (unset), every entry
/// checked before any is applied.
fn patch_config(
    registry: &mut Registry,
    id: InstanceId,
    body: &[u8],
) -> (Response, Option<Change>) {
    let patch: BTreeMap<String, Option<String>> = match parse_body(body, "config patch") {
        Ok(patch) => patch,
        Err(response) => return (response, None),
    };
    for (key, value) in &patch {
        let checked = match value {
            Some(value) => check_config_entry(key, value),
            None => check_config_entry(key, ""),
        };
        if let Err(e) = checked {
            return (Response::error(400, e), None);
        }
    }
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    for (key, value) in patch {
        match value {
            Some(value) => instance.spec.config.insert(key, value),
            None => instance.spec.config.remove(&key),
        };
    }
    saved(registry, id)
}

fn put_device(
    registry: &mut Registry,
    id: InstanceId,
    dev: String,
    body: &[u8],
) -> (Response, Option<Change>) {
    let fields: BTreeMap<String, String> = match parse_body(body, "device") {
        Ok(fields) => fields,
        Err(response) => return (response, None),
    };
    if let Err(e) = check_device(&dev, &fields) {
        return (Response::error(400, e), None);
    }
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    instance.spec.devices.insert(dev, fields);
    saved(registry, id)
}

/// `POST .../devices` with `{"name": DEV, "fields": {..}}`: adds a device
/// that does not exist yet. One that does is refused with `409`, as LXD's
/// `device add` refuses it; `PUT .../devices/{dev}` is the way to replace it.
fn add_device(registry: &mut Registry, id: InstanceId, body: &[u8]) -> (Response, Option<Change>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewDevice {
        name: String,
        fields: BTreeMap<String, String>,
    }
    let device: NewDevice = match parse_body(body, "device") {
        Ok(device) => device,
        Err(response) => return (response, None),
    };
    if let Err(e) = check_device(&device.name, &device.fields) {
        return (Response::error(400, e), None);
    }
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    if instance.spec.devices.contains_key(&device.name) {
        return (
            Response::error(409, format!("device {:?} already exists", device.name)),
            None,
        );
    }
    instance.spec.devices.insert(device.name, device.fields);
    saved(registry, id)
}

fn remove_device(registry: &mut Registry, id: InstanceId, dev: &str) -> (Response, Option<Change>) {
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    if instance.spec.devices.remove(dev).is_none() {
        return (
            Response::error(404, format!("device {dev:?} does not exist")),
            None,
        );
    }
    saved(registry, id)
}

fn put_state(registry: &mut Registry, id: InstanceId, body: &[u8]) -> (Response, Option<Change>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Put {
        state: String,
    }
    let put: Put = match parse_body(body, "state") {
        Ok(put) => put,
        Err(response) => return (response, None),
    };
    let state = match put.state.as_str() {
        "Started" => GuestState::Started,
        "Ready" => GuestState::Ready,
        other => {
            return (
                Response::error(400, format!("Invalid state {other:?}; use \"Started\"")),
                None,
            );
        }
    };
    let Some(instance) = registry.get_mut(id) else {
        return (Response::error(404, "instance not found"), None);
    };
    instance.state = state;
    saved(registry, id)
}
