//! `guestsock serve`: its flags (the sockets, the state directory, the
//! `--instances` file, `--demo`, the limits and the identity token flags,
//! each default shown by `--help` from where it is defined) and turning
//! them into the server's configuration.
//!
//! Owns the flags' parsers (`--identity-rotate`'s durations, the timeouts'
//! seconds, `--log-level`), reading the `--instances` file and the remedy
//! when `serve` lacks root. Serving is `server`'s business; the demo's
//! instance and directory, `demo`'s; the limits' reasons, `limits`'.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use super::sockets::{DEFAULT_ADMIN_SOCKET, DEFAULT_SOCKET, DEMO_DIR};
use crate::instance::InstanceSpec;
use crate::issuer::IssuerConfig;
use crate::limits::{
    DEFAULT_KEY_ROTATION, MAX_FLAG_SECS, MAX_INSTANCES_FILE_BYTES, MAX_KEY_LIFETIME_DAYS,
    RESERVED_FDS, Tunables, read_at_most,
};
use crate::server::{self, Seed, ServeConfig};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/guestsock";

/// `serve`'s flags.
#[derive(Debug, PartialEq, Args)]
pub struct ServeArgs {
    /// `--socket`.
    #[arg(long, value_name = "PATH", help = format!(
        "Guest socket; bind-mount its DIRECTORY into containers at /dev/lxd \
         [default: {DEFAULT_SOCKET}; with --demo, ./{DEMO_DIR}/guest/sock]"
    ))]
    pub socket: Option<PathBuf>,
    /// `--admin-socket`.
    #[arg(long, value_name = "PATH", help = format!(
        "Admin socket, mode 0600 [default: {DEFAULT_ADMIN_SOCKET}; with --demo, ./{DEMO_DIR}/admin.sock]"
    ))]
    pub admin_socket: Option<PathBuf>,
    /// `--admin-uid`, each time given.
    #[arg(
        long = "admin-uid",
        value_name = "UID",
        help = "A uid besides root that may use the admin socket (repeatable)"
    )]
    pub admin_uids: Vec<u32>,
    /// `--state-dir`.
    #[arg(long, value_name = "DIR", help = format!(
        "Durable state [default: {DEFAULT_STATE_DIR}; with --demo, ./{DEMO_DIR}/state]"
    ))]
    pub state_dir: Option<PathBuf>,
    /// `--instances`.
    #[arg(
        long,
        value_name = "FILE",
        help = "JSON file {\"instances\":[...]} registered at start; instances the state \
                directory already has keep their saved version"
    )]
    pub instances: Option<PathBuf>,
    /// `--demo`.
    #[arg(long, help = format!(
        "Everything under ./{DEMO_DIR}/, with one instance `demo` answering your own uid \
         (README, \"Try it\")"
    ))]
    pub demo: bool,
    /// `--pid-file`.
    #[arg(
        long,
        value_name = "PATH",
        help = "Where to write the server's pid, for kill -HUP $(cat PATH) \
                [default: guestsock.pid beside the admin socket]"
    )]
    pub pid_file: Option<PathBuf>,
    /// `--log-level`.
    #[arg(
        long,
        value_name = "LEVEL",
        value_parser = log_level,
        help = "error, warn, info, debug or trace [default: $RUST_LOG, else info]"
    )]
    pub log_level: Option<crate::log::Level>,
    /// The limit flags.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The identity token flags.
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The identity token flags of `serve` (docs/protocol.md section 9).
#[derive(Debug, PartialEq, Args)]
#[command(next_help_heading = "Identity tokens (docs/identity.md)")]
pub struct IdentityArgs {
    /// `--identity-issuer`.
    #[arg(
        long,
        value_name = "URL",
        help = "Tokens' `iss`, where verifiers find the discovery document [default: https://<host name>]"
    )]
    pub identity_issuer: Option<String>,
    /// `--identity-trust-domain`.
    #[arg(
        long,
        value_name = "NAME",
        help = "SPIFFE trust domain of the tokens' `sub` [default: the host name, lowercase]"
    )]
    pub identity_trust_domain: Option<String>,
    /// `--identity-rotate`.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = duration,
        default_value_t = Lifetime(DEFAULT_KEY_ROTATION),
        help = "A new signing key this often: 90s, 30m, 24h, 7d"
    )]
    pub identity_rotate: Lifetime,
    /// `--identity-jwks-file`.
    #[arg(
        long,
        value_name = "PATH",
        help = "Also write the JWKS here, atomically, whenever it changes (for a web server to publish)"
    )]
    pub identity_jwks_file: Option<PathBuf>,
}

/// A duration as `--identity-rotate` takes and shows it: whole seconds,
/// minutes, hours or days (`90s`, `30m`, `24h`, `7d`; a bare number is
/// seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime(pub Duration);

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs > 0 && secs.is_multiple_of(size) {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

/// Parses a [`Lifetime`] from 1 s to [`MAX_KEY_LIFETIME_DAYS`] days.
fn duration(text: &str) -> Result<Lifetime, String> {
    let (digits, size) = match text.as_bytes().last() {
        Some(b's') => (&text[..text.len() - 1], 1),
        Some(b'm') => (&text[..text.len() - 1], 60),
        Some(b'h') => (&text[..text.len() - 1], 3600),
        Some(b'd') => (&text[..text.len() - 1], 86_400),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.checked_mul(size))
        .filter(|&secs| (1..=MAX_KEY_LIFETIME_DAYS * 86_400).contains(&secs))
        .map(|secs| Lifetime(Duration::from_secs(secs)))
        .ok_or_else(|| {
            format!("not a duration like 90s, 30m, 24h or 7d (1s to {MAX_KEY_LIFETIME_DAYS}d)")
        })
}

/// The limit flags of `serve`, one per [`Tunables`] field. Each default is
/// `Tunables::default()`'s, shown by `--help` from there.
#[derive(Debug, PartialEq, Args)]
#[command(next_help_heading = "Limits (SECURITY.md has the reasons)")]
pub struct LimitArgs {
    /// `--max-connections`.
    #[arg(long, value_name = "N", help = format!(
        "Open connections in all [default: the open-file limit minus {RESERVED_FDS}]"
    ))]
    pub max_connections: Option<usize>,
    /// `--max-per-instance`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Tunables::default().max_per_instance,
        help = "Guest connections per instance"
    )]
    pub max_per_instance: u32,
    /// `--max-unknown`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Tunables::default().max_unknown,
        help = "Connections from callers matching no instance, all together"
    )]
    pub max_unknown: u32,
    /// `--header-timeout`.
    #[arg(
        long,
        value_name = "S",
        value_parser = seconds,
        default_value_t = Seconds(Tunables::default().header_timeout),
        help = "Seconds to send a request head"
    )]
    pub header_timeout: Seconds,
    /// `--body-timeout`.
    #[arg(
        long,
        value_name = "S",
        value_parser = seconds,
        default_value_t = Seconds(Tunables::default().body_timeout),
        help = "Seconds to send a body after its head"
    )]
    pub body_timeout: Seconds,
    /// `--idle-timeout`.
    #[arg(
        long,
        value_name = "S",
        value_parser = seconds,
        default_value_t = Seconds(Tunables::default().idle_timeout),
        help = "Seconds a keep-alive connection may idle"
    )]
    pub idle_timeout: Seconds,
    /// `--rate-limit`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Tunables::default().rate_per_sec,
        help = "Guest requests per second per instance, 0 = off"
    )]
    pub rate_limit: u32,
    /// `--rate-burst`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Tunables::default().rate_burst,
        help = "Requests an instance may send at once"
    )]
    pub rate_burst: u32,
    /// `--ws-ping-interval`.
    #[arg(
        long,
        value_name = "S",
        value_parser = positive_seconds,
        default_value_t = Seconds(Tunables::default().ping_interval),
        help = "Seconds between websocket pings; a subscriber silent for three is dropped"
    )]
    pub ws_ping_interval: Seconds,
}

impl LimitArgs {
    /// The limits these flags set.
    pub fn tunables(&self) -> Tunables {
        Tunables {
            max_connections: self.max_connections,
            max_per_instance: self.max_per_instance,
            max_unknown: self.max_unknown,
            header_timeout: self.header_timeout.0,
            body_timeout: self.body_timeout.0,
            idle_timeout: self.idle_timeout.0,
            rate_per_sec: self.rate_limit,
            rate_burst: self.rate_burst,
            ping_interval: self.ws_ping_interval.0,
        }
    }
}

/// A number of seconds as the timeout flags take it, possibly fractional
/// (`0.5`), and as `--help` shows a default (`5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// Parses seconds from 0 to [`MAX_FLAG_SECS`].
fn seconds(text: &str) -> Result<Seconds, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_FLAG_SECS as f64)
        .map(|s| Seconds(Duration::from_secs_f64(s)))
        .ok_or_else(|| format!("not a number of seconds (0 to {MAX_FLAG_SECS})"))
}

/// Parses seconds above 0 (an interval that must tick).
fn positive_seconds(text: &str) -> Result<Seconds, String> {
    let parsed = seconds(text)?;
    if parsed.0.is_zero() {
        return Err("must be above 0".into());
    }
    Ok(parsed)
}

/// Parses a `--log-level`.
fn log_level(text: &str) -> Result<crate::log::Level, String> {
    crate::log::Level::parse(text).ok_or_else(|| "not error, warn, info, debug or trace".into())
}

/// Whether `serve`'s error is a permission the caller lacks and root has.
fn needs_root(message: &str) -> bool {
    // The server's errors are text; both io::Error's and nix's wording of
    // EACCES carry this phrase.
    message.contains("Permission denied") && !nix::unistd::geteuid().is_root()
}

/// Runs the server with these flags until it is stopped.
pub(super) fn serve(args: ServeArgs) -> Result<(), String> {
    crate::log::init(args.log_level);
    if let Some(problem) = crate::install::second_copy(&std::env::var("PATH").unwrap_or_default()) {
        crate::log::warn(format_args!("{problem}"));
    }
    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut seeds = Vec::new();
    if let Some(file) = &args.instances {
        for (index, spec) in load_instances(file)?.into_iter().enumerate() {
            seeds.push(Seed {
                origin: format!("{}: instances[{index}] ({:?})", file.display(), spec.name),
                spec,
            });
        }
    }
    let demo_dir = Path::new(DEMO_DIR);
    let pick = |flag: Option<PathBuf>, demo: &str, default: &str| match (flag, args.demo) {
        (Some(path), _) => path,
        (None, true) => demo_dir.join(demo),
        (None, false) => PathBuf::from(default),
    };
    let socket = pick(args.socket.clone(), "guest/sock", DEFAULT_SOCKET);
    let admin_socket = pick(
        args.admin_socket.clone(),
        "admin.sock",
        DEFAULT_ADMIN_SOCKET,
    );
    let state_dir = pick(args.state_dir.clone(), "state", DEFAULT_STATE_DIR);
    let mut admin_uids = args.admin_uids.clone();
    if args.demo {
        // The newcomer running the demo drives it with the CLI too.
        crate::demo::set_up(
            &socket,
            &admin_socket,
            &state_dir,
            &mut seeds,
            &mut admin_uids,
        )?;
    }
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| crate::pidfile::default_for(&admin_socket));
    let identity = IssuerConfig::new(
        &host_name,
        args.identity.identity_issuer.clone(),
        args.identity.identity_trust_domain.clone(),
        args.identity.identity_rotate.0,
        args.identity.identity_jwks_file.clone(),
    )?;
    server::serve(ServeConfig {
        socket,
        admin_socket,
        admin_uids,
        state_dir,
        host_name,
        seeds,
        limits: args.limits.tunables(),
        pid_file,
        identity,
    })
    .map_err(|e| {
        if needs_root(&e) {
            format!(
                "{e}; `guestsock serve` needs root for its default paths: run it as root, or \
                 pass --state-dir, --socket and --admin-socket paths you can write (or try \
                 `guestsock serve --demo`)"
            )
        } else {
            e
        }
    })
}

/// The `--instances` file: `{"instances": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    instances: Vec<InstanceSpec>,
    /// `guestsock dump`'s record of which guests had said `Ready`: shown for
    /// people, not restored (a guest says it again when it boots).
    #[serde(default, rename = "guest_states")]
    _guest_states: Option<serde_json::Map<String, Value>>,
}

/// Reads and parses an instances file. Syntax and shape errors carry
/// serde_json's line and column; validation is left to the registry.
fn load_instances(path: &Path) -> Result<Vec<InstanceSpec>, String> {
    let shown = path.display();
    let text = fs::File::open(path)
        .and_then(|file| read_at_most(file, MAX_INSTANCES_FILE_BYTES))
        .map_err(|e| format!("{shown}: {e}"))?;
    serde_json::from_slice::<InstancesFile>(&text)
        .map(|f| f.instances)
        .map_err(|e| format!("{shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::cli::tests::command;

    #[test]
    fn serve_flags() {
        let Command::Serve(serve) = command(
            "serve --socket /x/sock --instances=/i.json --demo --admin-uid 5 --admin-uid=6 --state-dir /s",
        ) else {
            panic!("not serve");
        };
        assert_eq!(serve.socket, Some("/x/sock".into()));
        assert_eq!(serve.instances, Some("/i.json".into()));
        assert!(serve.demo);
        assert_eq!(serve.admin_uids, [5, 6]);
        assert_eq!(serve.state_dir, Some("/s".into()));
        assert_eq!(serve.admin_socket, None);
        assert_eq!(serve.log_level, None);
        // The defaults are the limits module's own.
        assert_eq!(serve.limits.tunables(), Tunables::default());

        let Command::Serve(serve) = command(
            "serve --header-timeout 0.5 --max-per-instance 3 --rate-limit 0 --ws-ping-interval 2 --log-level debug",
        ) else {
            panic!("not serve");
        };
        let limits = serve.limits.tunables();
        assert_eq!(limits.header_timeout, Duration::from_millis(500));
        assert_eq!(limits.max_per_instance, 3);
        assert_eq!(limits.rate_per_sec, 0);
        assert_eq!(limits.ping_interval, Duration::from_secs(2));
        assert_eq!(serve.log_level, Some(crate::log::Level::Debug));
    }

    #[test]
    fn identity_flags() {
        let Command::Serve(serve) = command("serve") else {
            panic!("not serve");
        };
        assert_eq!(
            serve.identity.identity_rotate,
            Lifetime(DEFAULT_KEY_ROTATION)
        );
        assert_eq!(serve.identity.identity_issuer, None);
        let Command::Serve(serve) = command(
            "serve --identity-rotate 90m --identity-issuer https://h.example --identity-trust-domain td --identity-jwks-file /j",
        ) else {
            panic!("not serve");
        };
        assert_eq!(
            serve.identity.identity_rotate,
            Lifetime(Duration::from_secs(5400))
        );
        assert_eq!(
            serve.identity.identity_issuer.as_deref(),
            Some("https://h.example")
        );
        assert_eq!(serve.identity.identity_trust_domain.as_deref(), Some("td"));
        assert_eq!(serve.identity.identity_jwks_file, Some("/j".into()));
        for (text, secs) in [
            ("1", 1),
            ("90s", 90),
            ("30m", 1800),
            ("24h", 86_400),
            ("7d", 604_800),
        ] {
            assert_eq!(
                duration(text),
                Ok(Lifetime(Duration::from_secs(secs))),
                "{text}"
            );
        }
        for text in [
            "",
            "0",
            "0s",
            "-1h",
            "1.5h",
            "h",
            "1w",
            "366d",
            "99999999999999999999d",
        ] {
            assert!(duration(text).is_err(), "{text}");
        }
        for (secs, shown) in [(86_400, "1d"), (5400, "90m"), (7200, "2h"), (61, "61s")] {
            assert_eq!(Lifetime(Duration::from_secs(secs)).to_string(), shown);
        }
    }
}
