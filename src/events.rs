//! Events (docs/protocol.md section 5): what changed, as the JSON objects sent to
//! subscribers, and which subscriber wants which.
//!
//! Owns the event shapes, their timestamps, the `?type=` filter and the
//! diffs that turn an instance's old and new description into events. Who
//! is subscribed, and delivering, is `server`'s business.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::instance::{Config, DeviceFields, Devices, InstanceSpec, guest_visible};

/// One change, as its subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A config key was set, changed or removed.
    Config {
        /// The key.
        key: String,
        /// Its value before (`""` if it was not set).
        old_value: String,
        /// Its value now (`""` if removed).
        value: String,
    },
    /// A device was added, removed or replaced.
    Device {
        /// `added`, `removed` or `updated`.
        action: &'static str,
        /// The device's name.
        name: String,
        /// Its fields (the old ones for `removed`).
        config: DeviceFields,
    },
    /// Admin stream only: the guest said it is ready.
    InstanceReady,
    /// Admin stream only: an instance was registered.
    InstanceCreated,
    /// Admin stream only: an instance's description was replaced.
    InstanceUpdated,
    /// Admin stream only: an instance was removed.
    InstanceRemoved,
    /// Admin stream only: the host set the guest's state.
    State {
        /// The new state.
        state: &'static str,
    },
    /// Admin stream only: a new identity signing key replaced the old one
    /// (`rotated`, `previous` naming the key it retired), or a retired key
    /// was dropped from the JWKS (`dropped`). Names no instance. (The first
    /// key is made before anyone can subscribe, and logged.)
    IdentityKey {
        /// `rotated` or `dropped`.
        action: &'static str,
        /// The key's kid.
        kid: String,
        /// For `rotated`: the kid of the key it retired.
        previous: Option<String>,
    },
}

/// Bits of [`TypeFilter`], one per event type.
const CONFIG: u8 = 1;
const DEVICE: u8 = 2;
const INSTANCE_READY: u8 = 4;
const INSTANCE_CREATED: u8 = 8;
const INSTANCE_UPDATED: u8 = 16;
const INSTANCE_REMOVED: u8 = 32;
const STATE: u8 = 64;
const IDENTITY_KEY: u8 = 128;

impl Event {
    /// The `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Config { .. } => "config",
            Event::Device { .. } => "device",
            Event::InstanceReady => "instance-ready",
            Event::InstanceCreated => "instance-created",
            Event::InstanceUpdated => "instance-updated",
            Event::InstanceRemoved => "instance-removed",
            Event::State { .. } => "state",
            Event::IdentityKey { .. } => "identity-key",
        }
    }

    fn bit(&self) -> u8 {
        match self {
            Event::Config { .. } => CONFIG,
            Event::Device { .. } => DEVICE,
            Event::InstanceReady => INSTANCE_READY,
            Event::InstanceCreated => INSTANCE_CREATED,
            Event::InstanceUpdated => INSTANCE_UPDATED,
            Event::InstanceRemoved => INSTANCE_REMOVED,
            Event::State { .. } => STATE,
            Event::IdentityKey { .. } => IDENTITY_KEY,
        }
    }

    /// Whether a guest may see it: config events only for `user.*` and
    /// `cloud-init.*` keys, devices always, admin-only types never.
    pub fn guest_visible(&self) -> bool {
        match self {
            Event::Config { key, .. } => guest_visible(key),
            Event::Device { .. } => true,
            _ => false,
        }
    }

    /// The event's JSON object, without a newline. `instance` names the
    /// instance on the admin stream and is left out on the guest's.
    pub fn to_json(&self, timestamp: &str, instance: Option<&str>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a, M: Serialize> {
            #[serde(rename = "type")]
            kind: &'static str,
            timestamp: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            instance: Option<&'a str>,
            metadata: M,
        }
        #[derive(Serialize)]
        struct ConfigMeta<'a> {
            key: &'a str,
            old_value: &'a str,
            value: &'a str,
        }
        #[derive(Serialize)]
        struct DeviceMeta<'a> {
            action: &'a str,
            config: &'a DeviceFields,
            name: &'a str,
        }
        #[derive(Serialize)]
        struct StateMeta {
            state: &'static str,
        }
        #[derive(Serialize)]
        struct KeyMeta<'a> {
            action: &'a str,
            kid: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            previous: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Empty {}
        let kind = self.kind();
        let result = match self {
            Event::Config {
                key,
                old_value,
                value,
            } => serde_json::to_vec(&Envelope {
                kind,
                timestamp,
                instance,
                metadata: ConfigMeta {
                    key,
                    old_value,
                    value,
                },
            }),
            Event::Device {
                action,
                name,
                config,
            } => serde_json::to_vec(&Envelope {
                kind,
                timestamp,
                instance,
                metadata: DeviceMeta {
                    action,
                    config,
                    name,
                },
            }),
            Event::State { state } => serde_json::to_vec(&Envelope {
                kind,
                timestamp,
                instance,
                metadata: StateMeta { state },
            }),
            Event::IdentityKey {
                action,
                kid,
                previous,
            } => serde_json::to_vec(&Envelope {
                kind,
                timestamp,
                // The host's keys, no instance's.
                instance: None,
                metadata: KeyMeta {
                    action,
                    kid,
                    previous: previous.as_deref(),
                },
            }),
            _ => serde_json::to_vec(&Envelope {
                kind,
                timestamp,
                instance,
                metadata: Empty {},
            }),
        };
        result.unwrap_or_default()
    }
}

/// The `?type=` filter: which event types a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeFilter(u8);

impl TypeFilter {
    /// Parses `config,device` style lists. Unknown types are accepted and
    /// never match (docs/protocol.md section 5). `None` (no `type=`) is the
    /// default: `config,device` for guests, everything for the admin.
    pub fn parse(list: Option<&str>, admin: bool) -> TypeFilter {
        let Some(list) = list else {
            return TypeFilter(if admin { u8::MAX } else { CONFIG | DEVICE });
        };
        let mut bits = 0;
        for name in list.split(',') {
            bits |= match name.trim() {
                "config" => CONFIG,
                "device" => DEVICE,
                "instance-ready" if admin => INSTANCE_READY,
                "instance-created" if admin => INSTANCE_CREATED,
                "instance-updated" if admin => INSTANCE_UPDATED,
                "instance-removed" if admin => INSTANCE_REMOVED,
                "state" if admin => STATE,
                "identity-key" if admin => IDENTITY_KEY,
                _ => 0,
            };
        }
        TypeFilter(bits)
    }

    /// Whether the subscriber wants this event.
    pub fn wants(self, event: &Event) -> bool {
        self.0 & event.bit() != 0
    }
}

/// The events that take `old` to `new` (either may be absent): one per
/// config key whose value differs, one per device added, removed or
/// changed; keys and devices in sorted order.
pub fn diff(old: Option<&InstanceSpec>, new: Option<&InstanceSpec>) -> Vec<Event> {
    let empty_config = Config::new();
    let empty_devices = Devices::new();
    let (old_config, old_devices) =
        old.map_or((&empty_config, &empty_devices), |s| (&s.config, &s.devices));
    let (new_config, new_devices) =
        new.map_or((&empty_config, &empty_devices), |s| (&s.config, &s.devices));
    let mut events = Vec::new();
    let keys: std::collections::BTreeSet<&String> =
        old_config.keys().chain(new_config.keys()).collect();
    for key in keys {
        let (before, after) = (old_config.get(key), new_config.get(key));
        if before != after {
            events.push(Event::Config {
                key: key.clone(),
                old_value: before.cloned().unwrap_or_default(),
                value: after.cloned().unwrap_or_default(),
            });
        }
    }
    let names: std::collections::BTreeSet<&String> =
        old_devices.keys().chain(new_devices.keys()).collect();
    for name in names {
        let (action, config) = match (old_devices.get(name), new_devices.get(name)) {
            (None, Some(after)) => ("added", after),
            (Some(before), None) => ("removed", before),
            (Some(before), Some(after)) if before != after => ("updated", after),
            _ => continue,
        };
        events.push(Event::Device {
            action,
            name: name.clone(),
            config: config.clone(),
        });
    }
    events
}

/// Now, in RFC 3339 with nanoseconds and `Z`
/// (`2026-11-22T10:00:00.123456789Z`).
pub fn timestamp_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(since.as_secs(), since.subsec_nanos())
}

/// Formats seconds and nanoseconds since the Unix epoch (UTC).
pub fn format_timestamp(secs: u64, nanos: u32) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The (year, month 1-12, day 1-31) of `days` after 1970-01-01 in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`, for days
/// on or after the epoch); also the `Date` header's (`http::response`).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_timestamp(951_782_400, 5),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            format_timestamp(1_795_341_600, 123_456_789),
            "2026-11-22T10:00:00.123456789Z"
        );
        assert_eq!(
            format_timestamp(4_107_542_399, 0),
            "2100-02-28T23:59:59.000000000Z"
        );
    }

    #[test]
    fn shapes_match_the_protocol() {
        let ts = "2026-11-22T10:00:00.123456789Z";
        let config = Event::Config {
            key: "user.foo".into(),
            old_value: "bar".into(),
            value: "baz".into(),
        };
        assert_eq!(
            String::from_utf8(config.to_json(ts, None)).unwrap(),
            r#"{"type":"config","timestamp":"2026-11-22T10:00:00.123456789Z","metadata":{"key":"user.foo","old_value":"bar","value":"baz"}}"#
        );
        let device = Event::Device {
            action: "added",
            name: "kvm".into(),
            config: [
                ("type".to_string(), "unix-char".to_string()),
                ("path".to_string(), "/dev/kvm".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            String::from_utf8(device.to_json(ts, Some("c1"))).unwrap(),
            r#"{"type":"device","timestamp":"2026-11-22T10:00:00.123456789Z","instance":"c1","metadata":{"action":"added","config":{"path":"/dev/kvm","type":"unix-char"},"name":"kvm"}}"#
        );
        assert_eq!(
            String::from_utf8(Event::InstanceReady.to_json(ts, Some("c1"))).unwrap(),
            r#"{"type":"instance-ready","timestamp":"2026-11-22T10:00:00.123456789Z","instance":"c1","metadata":{}}"#
        );
        // The host's keys name no instance, whatever the caller passes.
        let rotated = Event::IdentityKey {
            action: "rotated",
            kid: "new".into(),
            previous: Some("old".into()),
        };
        assert_eq!(
            String::from_utf8(rotated.to_json(ts, Some(""))).unwrap(),
            r#"{"type":"identity-key","timestamp":"2026-11-22T10:00:00.123456789Z","metadata":{"action":"rotated","kid":"new","previous":"old"}}"#
        );
        let dropped = Event::IdentityKey {
            action: "dropped",
            kid: "old".into(),
            previous: None,
        };
        assert_eq!(
            String::from_utf8(dropped.to_json(ts, None)).unwrap(),
            r#"{"type":"identity-key","timestamp":"2026-11-22T10:00:00.123456789Z","metadata":{"action":"dropped","kid":"old"}}"#
        );
    }

    #[test]
    fn filters() {
        let config = Event::Config {
            key: "user.a".into(),
            old_value: String::new(),
            value: "1".into(),
        };
        assert!(TypeFilter::parse(None, false).wants(&config));
        assert!(TypeFilter::parse(Some("device,config"), false).wants(&config));
        assert!(!TypeFilter::parse(Some("device"), false).wants(&config));
        assert!(!TypeFilter::parse(Some("bogus"), false).wants(&config));
        assert!(!TypeFilter::parse(Some(""), false).wants(&config));
        assert!(!TypeFilter::parse(None, false).wants(&Event::InstanceReady));
        assert!(TypeFilter::parse(None, true).wants(&Event::InstanceReady));
        assert!(!TypeFilter::parse(Some("instance-ready"), false).wants(&Event::InstanceReady));
        let key = Event::IdentityKey {
            action: "dropped",
            kid: "k".into(),
            previous: None,
        };
        assert!(TypeFilter::parse(None, true).wants(&key));
        assert!(TypeFilter::parse(Some("identity-key"), true).wants(&key));
        assert!(!TypeFilter::parse(Some("config"), true).wants(&key));
        assert!(!TypeFilter::parse(None, false).wants(&key));
        assert!(!TypeFilter::parse(Some("identity-key"), false).wants(&key));
        assert!(!key.guest_visible());
    }

    #[test]
    fn diffs() {
        let spec = |config: &[(&str, &str)], devices: &[(&str, &str)]| -> InstanceSpec {
            let mut s: InstanceSpec =
                serde_json::from_str(r#"{"name":"c","match":{"pid":5}}"#).unwrap();
            s.config = config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            s.devices = devices
                .iter()
                .map(|(n, t)| {
                    (
                        n.to_string(),
                        [("type".to_string(), t.to_string())].into_iter().collect(),
                    )
                })
                .collect();
            s
        };
        let old = spec(
            &[("user.a", "1"), ("user.b", "2")],
            &[("eth0", "nic"), ("d", "disk")],
        );
        let new = spec(
            &[("user.a", "1"), ("user.c", "3"), ("user.b", "")],
            &[("eth0", "bridge"), ("kvm", "unix-char")],
        );
        let kinds: Vec<String> = diff(Some(&old), Some(&new))
            .iter()
            .map(|e| match e {
                Event::Config {
                    key,
                    old_value,
                    value,
                } => format!("{key}:{old_value}->{value}"),
                Event::Device { action, name, .. } => format!("{name} {action}"),
                other => other.kind().to_string(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "user.b:2->",
                "user.c:->3",
                "d removed",
                "eth0 updated",
                "kvm added"
            ]
        );
        assert_eq!(diff(Some(&old), Some(&old)), vec![]);
        assert_eq!(diff(None, Some(&old)).len(), 4);
    }
}
