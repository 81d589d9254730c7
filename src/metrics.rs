//! Counters for the admin socket's `GET /1.0/metrics` (Prometheus text
//! exposition format, version 0.0.4).
//!
//! Owns the counters and their rendering. Counting is a few integer
//! additions on the event loop; nothing here allocates per request.

use std::fmt::Write;

/// Upper bounds of the request latency histogram, in seconds.
const LATENCY_BOUNDS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1, 1.0,
];

/// The endpoints requests are counted by (a bounded label set: a path a
/// client invents is `other`, never its own label).
pub const ENDPOINTS: [&str; 11] = [
    "/",
    "/1.0",
    "/1.0/config",
    "/1.0/config/{key}",
    "/1.0/meta-data",
    "/1.0/devices",
    "/1.0/events",
    "/1.0/instances...",
    "other",
    "/1.0/identity/token",
    "/1.0/identity...",
];

/// The statuses requests are counted by.
const STATUSES: [u16; 17] = [
    101, 200, 304, 400, 401, 403, 404, 405, 408, 409, 413, 426, 429, 431, 500, 501, 503,
];

/// Why a connection or request was refused at a limit: one label of
/// `guestsock_limits_hit_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The global connection cap.
    Connections,
    /// The per-instance connection cap.
    PerInstance,
    /// The cap for callers matching no instance.
    Unknown,
    /// The header or body timeout.
    Timeout,
    /// The rate limit.
    Rate,
}

impl Limit {
    /// Every limit, in the order they are rendered.
    pub const ALL: [Limit; 5] = [
        Limit::Connections,
        Limit::PerInstance,
        Limit::Unknown,
        Limit::Timeout,
        Limit::Rate,
    ];

    /// Its `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::PerInstance => "per_instance",
            Limit::Unknown => "unknown",
            Limit::Timeout => "timeout",
            Limit::Rate => "rate",
        }
    }
}

/// Why a guest request was refused for who its caller is: one label of
/// `guestsock_identity_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityFailure {
    /// The caller matched no instance (`403`).
    NoInstance,
    /// Two kinds of rule named different instances (`403`).
    Ambiguous,
    /// A `/proc` fact could not be proved (`403`).
    Unverified,
    /// A uid other than its instance's root, where only root may ask (`401`).
    WrongUid,
    /// On a listener of an instance's own, a caller who may not use it
    /// (`403`).
    WrongListener,
}

impl IdentityFailure {
    /// Every identity failure, in the order they are rendered.
    pub const ALL: [IdentityFailure; 5] = [
        IdentityFailure::NoInstance,
        IdentityFailure::Ambiguous,
        IdentityFailure::Unverified,
        IdentityFailure::WrongUid,
        IdentityFailure::WrongListener,
    ];

    /// Its `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            IdentityFailure::NoInstance => "no_instance",
            IdentityFailure::Ambiguous => "ambiguous",
            IdentityFailure::Unverified => "unverified",
            IdentityFailure::WrongUid => "wrong_uid",
            IdentityFailure::WrongListener => "wrong_listener",
        }
    }
}

/// What a refusal counts as: a label of one of the two refusal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `guestsock_identity_failures_total{reason=..}`.
    Identity(IdentityFailure),
    /// `guestsock_limits_hit_total{limit=..}`.
    Limit(Limit),
}

/// Every counter.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: [[u64; STATUSES.len() + 1]; ENDPOINTS.len()],
    latency_buckets: [u64; LATENCY_BOUNDS.len()],
    latency_count: u64,
    latency_sum: f64,
    /// Events published (one per change, per type).
    pub events_published: u64,
    /// Event frames or lines queued to subscribers.
    pub events_delivered: u64,
    /// Identity tokens signed and answered.
    pub tokens_minted: u64,
    /// Subscribers cut off for not reading.
    pub slow_consumers_cut: u64,
    /// Websocket subscribers dropped for not answering pings.
    pub ping_timeouts: u64,
    /// Refusals at each limit, by [`Limit`].
    limits_hit: [u64; Limit::ALL.len()],
    /// Guest requests refused for who asked, by [`IdentityFailure`].
    identity_failures: [u64; IdentityFailure::ALL.len()],
    /// The last fan-out: frames queued, and how long queuing (and writing,
    /// where the socket took it at once) all of them took.
    last_fanout: (usize, f64),
    /// The slowest fan-out so far, as above.
    max_fanout: (usize, f64),
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: [[0; STATUSES.len() + 1]; ENDPOINTS.len()],
            latency_buckets: [0; LATENCY_BOUNDS.len()],
            latency_count: 0,
            latency_sum: 0.0,
            events_published: 0,
            tokens_minted: 0,
            events_delivered: 0,
            slow_consumers_cut: 0,
            ping_timeouts: 0,
            limits_hit: [0; Limit::ALL.len()],
            identity_failures: [0; IdentityFailure::ALL.len()],
            last_fanout: (0, 0.0),
            max_fanout: (0, 0.0),
        }
    }
}

/// The endpoint label of a path.
pub fn endpoint(path: &str) -> usize {
    match path {
        "/" => 0,
        "/1.0" => 1,
        "/1.0/config" => 2,
        "/1.0/meta-data" => 4,
        "/1.0/devices" => 5,
        "/1.0/events" => 6,
        p if p.starts_with("/1.0/config/") => 3,
        p if p.starts_with("/1.0/instances") => 7,
        "/1.0/identity/token" => 9,
        p if p.starts_with("/1.0/identity") => 10,
        _ => 8,
    }
}

impl Metrics {
    /// Counts one answered request and how long it took from its first
    /// byte to its answer being queued.
    pub fn request(&mut self, path: &str, status: u16, seconds: f64) {
        let status_index = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.requests[endpoint(path)][status_index] += 1;
        self.latency_count += 1;
        self.latency_sum += seconds;
        for (bucket, bound) in self.latency_buckets.iter_mut().zip(LATENCY_BOUNDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Records one change's fan-out: `frames` queued in `seconds`.
    pub fn fanout(&mut self, frames: usize, seconds: f64) {
        self.last_fanout = (frames, seconds);
        if seconds > self.max_fanout.1 {
            self.max_fanout = (frames, seconds);
        }
    }

    /// Counts one refusal under its label.
    pub fn refused(&mut self, reason: Reason) {
        match reason {
            Reason::Identity(failure) => self.identity_failures[failure as usize] += 1,
            Reason::Limit(limit) => self.limits_hit[limit as usize] += 1,
        }
    }

    /// The exposition text. `gauges` are the current values: connections by
    /// kind and the instance count.
    pub fn render(
        &self,
        guest_connections: usize,
        admin_connections: usize,
        subscribers: usize,
        instances: usize,
        cgroup_cache: (usize, usize),
    ) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "guestsock_instances",
            "Registered instances.",
            instances.to_string(),
        );
        gauge(
            &mut out,
            "guestsock_cgroup_cache_entries",
            "cgroup ids cached with the path they name.",
            cgroup_cache.0.to_string(),
        );
        gauge(
            &mut out,
            "guestsock_cgroup_cache_bytes",
            "What the cgroup-id cache costs, as counted against its bound.",
            cgroup_cache.1.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_connections Open connections by kind.\n# TYPE guestsock_connections gauge\nguestsock_connections{{kind=\"guest\"}} {guest_connections}\nguestsock_connections{{kind=\"admin\"}} {admin_connections}\nguestsock_connections{{kind=\"subscriber\"}} {subscribers}"
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_requests_total Answered requests by endpoint and status.\n# TYPE guestsock_requests_total counter"
        );
        for (e, row) in self.requests.iter().enumerate() {
            for (s, &count) in row.iter().enumerate() {
                if count > 0 {
                    let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "guestsock_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {count}",
                        ENDPOINTS[e]
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP guestsock_request_duration_seconds From a request's first byte to its answer being queued.\n# TYPE guestsock_request_duration_seconds histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BOUNDS) {
            let _ = writeln!(
                out,
                "guestsock_request_duration_seconds_bucket{{le=\"{bound}\"}} {bucket}"
            );
        }
        let _ = writeln!(
            out,
            "guestsock_request_duration_seconds_bucket{{le=\"+Inf\"}} {0}\nguestsock_request_duration_seconds_sum {1}\nguestsock_request_duration_seconds_count {0}",
            self.latency_count, self.latency_sum
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_identity_failures_total Guest requests refused, by reason.\n# TYPE guestsock_identity_failures_total counter"
        );
        for (failure, count) in IdentityFailure::ALL.iter().zip(self.identity_failures) {
            let _ = writeln!(
                out,
                "guestsock_identity_failures_total{{reason=\"{}\"}} {count}",
                failure.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP guestsock_events_total Events published, and frames delivered to or dropped for subscribers.\n# TYPE guestsock_events_total counter\nguestsock_events_total{{what=\"published\"}} {}\nguestsock_events_total{{what=\"delivered\"}} {}\nguestsock_events_total{{what=\"dropped\"}} {}",
            self.events_published, self.events_delivered, self.slow_consumers_cut
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_identity_tokens_total Identity tokens signed.\n# TYPE guestsock_identity_tokens_total counter\nguestsock_identity_tokens_total {}",
            self.tokens_minted
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_subscribers_dropped_total Subscribers cut off, by reason.\n# TYPE guestsock_subscribers_dropped_total counter\nguestsock_subscribers_dropped_total{{reason=\"slow\"}} {}\nguestsock_subscribers_dropped_total{{reason=\"ping_timeout\"}} {}",
            self.slow_consumers_cut, self.ping_timeouts
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_fanout_seconds Time to hand one change's frames to every subscriber's socket.\n# TYPE guestsock_fanout_seconds gauge\nguestsock_fanout_seconds{{which=\"last\"}} {}\nguestsock_fanout_seconds{{which=\"max\"}} {}\n# HELP guestsock_fanout_frames Frames in that fan-out.\n# TYPE guestsock_fanout_frames gauge\nguestsock_fanout_frames{{which=\"last\"}} {}\nguestsock_fanout_frames{{which=\"max\"}} {}",
            self.last_fanout.1, self.max_fanout.1, self.last_fanout.0, self.max_fanout.0
        );
        let _ = writeln!(
            out,
            "# HELP guestsock_limits_hit_total Connections or requests refused at a limit.\n# TYPE guestsock_limits_hit_total counter"
        );
        for (limit, count) in Limit::ALL.iter().zip(self.limits_hit) {
            let _ = writeln!(
                out,
                "guestsock_limits_hit_total{{limit=\"{}\"}} {count}",
                limit.label()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let mut m = Metrics::default();
        m.request("/1.0/config/user.foo", 200, 0.000_2);
        m.request("/1.0/config/user.foo", 200, 0.003);
        m.request("/../etc/passwd", 404, 0.000_01);
        m.refused(Reason::Limit(Limit::Rate));
        let text = m.render(3, 1, 2, 7, (5, 640));
        assert!(
            text.contains("\nguestsock_cgroup_cache_entries 5\n"),
            "{text}"
        );
        assert!(
            text.contains("\nguestsock_cgroup_cache_bytes 640\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "guestsock_requests_total{endpoint=\"/1.0/config/{key}\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("guestsock_requests_total{endpoint=\"other\",status=\"404\"} 1"));
        assert!(text.contains("guestsock_request_duration_seconds_bucket{le=\"0.00025\"} 2"));
        assert!(text.contains("guestsock_request_duration_seconds_count 3"));
        assert!(text.contains("guestsock_limits_hit_total{limit=\"rate\"} 1"));
        assert!(text.contains("guestsock_connections{kind=\"guest\"} 3"));
        assert!(text.contains("guestsock_instances 7"));
        assert!(!text.contains("passwd"), "client paths never become labels");
    }

    #[test]
    fn every_refusal_is_counted_under_its_own_label() {
        let reasons = IdentityFailure::ALL
            .map(Reason::Identity)
            .into_iter()
            .chain(Limit::ALL.map(Reason::Limit));
        for (n, reason) in reasons.enumerate() {
            let mut m = Metrics::default();
            for _ in 0..=n {
                m.refused(reason);
            }
            let line = match reason {
                Reason::Identity(f) => format!(
                    "guestsock_identity_failures_total{{reason=\"{}\"}} {}",
                    f.label(),
                    n + 1
                ),
                Reason::Limit(l) => {
                    format!(
                        "guestsock_limits_hit_total{{limit=\"{}\"}} {}",
                        l.label(),
                        n + 1
                    )
                }
            };
            let text = m.render(0, 0, 0, 0, (0, 0));
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
            // Every other refusal counter is still 0.
            let counted = text
                .lines()
                .filter(|l| {
                    l.starts_with("guestsock_identity_failures_total{")
                        || l.starts_with("guestsock_limits_hit_total{")
                })
                .filter(|l| !l.ends_with(" 0"))
                .count();
            assert_eq!(counted, 1, "{text}");
        }
    }
}
