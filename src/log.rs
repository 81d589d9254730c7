//! Log lines on standard error, one per notable event, never per request at
//! the default level, no colours (journald reads them as they are), for
//! guestsock and for the crates underneath it (mio), through the `log`
//! facade.
//!
//! Owns the logger behind the facade, its filter (`--log-level`, else
//! `RUST_LOG`, else `info`), the line format, and the throttle for lines a
//! peer can cause ([`log_throttled`], one a [`LOG_THROTTLE`] at most). What
//! is worth a line, and which lines share a throttle, is the caller's
//! business.
//!
//! `RUST_LOG` is read as `env_logger` reads it: comma-separated directives,
//! each `LEVEL` (every target), `TARGET=LEVEL` or a bare `TARGET` (all of
//! its levels), where a target is a module path and covers the modules
//! below it (`guestsock::server=debug,mio=trace,warn`); the longest target
//! that covers a record decides. One difference: targets no directive
//! covers are logged at `info` when no bare level is given, so that
//! `RUST_LOG=mio=trace` adds mio's lines without hiding guestsock's errors.

use std::fmt::Arguments;
use std::io::Write;
use std::panic::Location;
use std::sync::OnceLock;
use std::time::Instant;

use ::log::{LevelFilter, Log, Metadata, Record};

use crate::limits::LOG_THROTTLE;

/// How much is logged, least first (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only failures.
    Error,
    /// Also problems worked around (refused callers, limits hit, slow
    /// subscribers cut off).
    Warn,
    /// Also start, stop and other notable events (the default).
    Info,
    /// Also per-connection detail.
    Debug,
    /// Everything, the event loop's own registrations (mio) included.
    Trace,
}

impl Level {
    /// Parses `error`, `warn`, `info`, `debug` or `trace`, in any case.
    pub fn parse(text: &str) -> Option<Level> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            "trace" => Some(Level::Trace),
            _ => None,
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            Level::Error => LevelFilter::Error,
            Level::Warn => LevelFilter::Warn,
            Level::Info => LevelFilter::Info,
            Level::Debug => LevelFilter::Debug,
            Level::Trace => LevelFilter::Trace,
        }
    }
}

/// The level a target is logged at when no directive covers it.
const DEFAULT: LevelFilter = LevelFilter::Info;

/// One `RUST_LOG` directive: a target (none for every target) and its level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    target: Option<String>,
    level: LevelFilter,
}

/// Which records are logged: a pure function of a `RUST_LOG`-style spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The level of targets no directive covers.
    default: LevelFilter,
    /// Targeted directives, longest target first.
    targeted: Vec<Directive>,
}

impl Filter {
    /// Every target at `level`.
    pub fn everything_at(level: Level) -> Filter {
        Filter {
            default: level.filter(),
            targeted: Vec::new(),
        }
    }

    /// Parses a `RUST_LOG` value. Directives that cannot be read are left
    /// out and described in the second value, for a warning.
    pub fn parse(spec: &str) -> (Filter, Vec<String>) {
        let mut filter = Filter {
            default: DEFAULT,
            targeted: Vec::new(),
        };
        let mut problems = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let directive = match part.split_once('=') {
                Some((target, level)) => match parse_level_filter(level) {
                    Some(level) if valid_target(target.trim()) => Directive {
                        target: Some(target.trim().to_owned()),
                        level,
                    },
                    _ => {
                        problems.push(format!("{part:?} is not TARGET=LEVEL"));
                        continue;
                    }
                },
                None => match parse_level_filter(part) {
                    Some(level) => Directive {
                        target: None,
                        level,
                    },
                    None if valid_target(part) => Directive {
                        target: Some(part.to_owned()),
                        level: LevelFilter::Trace,
                    },
                    None => {
                        problems.push(format!("{part:?} is neither a level nor a module path"));
                        continue;
                    }
                },
            };
            match directive.target {
                None => filter.default = directive.level,
                Some(target) => {
                    // A later directive for the same target wins.
                    filter
                        .targeted
                        .retain(|d| d.target.as_ref() != Some(&target));
                    filter.targeted.push(Directive {
                        target: Some(target),
                        level: directive.level,
                    });
                }
            }
        }
        filter
            .targeted
            .sort_by_key(|d| std::cmp::Reverse(d.target.as_ref().map_or(0, String::len)));
        (filter, problems)
    }

    /// The most detailed level logged for `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.targeted
            .iter()
            .find(|d| d.target.as_deref().is_some_and(|t| covers(t, target)))
            .map_or(self.default, |d| d.level)
    }

    /// The most detailed level logged for any target (the facade's cheap
    /// first check).
    pub fn max(&self) -> LevelFilter {
        self.targeted
            .iter()
            .map(|d| d.level)
            .fold(self.default, Ord::max)
    }
}

/// `off`, or a level.
fn parse_level_filter(text: &str) -> Option<LevelFilter> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Some(LevelFilter::Off);
    }
    Level::parse(text).map(Level::filter)
}

/// A module path: `::`-separated identifiers (`guestsock::server`, `mio`).
fn valid_target(text: &str) -> bool {
    !text.is_empty()
        && text.split("::").all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// Whether the directive target `prefix` covers `target`: the same module
/// or one below it (`guestsock::server` covers `guestsock::server::x`, not
/// `guestsock::serverless`).
fn covers(prefix: &str, target: &str) -> bool {
    target
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The logger behind the facade.
struct Logger {
    filter: OnceLock<Filter>,
}

static LOGGER: Logger = Logger {
    filter: OnceLock::new(),
};

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter
            .get()
            .is_some_and(|f| metadata.level() <= f.level_for(metadata.target()))
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), record.args());
        // One write per line, so that lines of the writer thread and the
        // event loop never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One line: `guestsock: ` and, but for `info`, the level, then the
/// message; records of other crates also name their target.
fn format_line(level: ::log::Level, target: &str, message: &Arguments<'_>) -> String {
    let word = match level {
        ::log::Level::Error => "error: ",
        ::log::Level::Warn => "warning: ",
        ::log::Level::Info => "",
        ::log::Level::Debug => "debug: ",
        ::log::Level::Trace => "trace: ",
    };
    if covers("guestsock", target) {
        format!("guestsock: {word}{message}\n")
    } else {
        format!("guestsock: {word}{target}: {message}\n")
    }
}

/// Installs the logger: `--log-level` if given (every target at that
/// level), else `RUST_LOG`, else `info`. Unreadable `RUST_LOG` directives
/// are reported once installed. Later calls change nothing.
pub fn init(level: Option<Level>) {
    let (filter, problems) = match level {
        Some(level) => (Filter::everything_at(level), Vec::new()),
        None => match std::env::var("RUST_LOG") {
            Ok(spec) => Filter::parse(&spec),
            Err(_) => (Filter::everything_at(Level::Info), Vec::new()),
        },
    };
    let max = filter.max();
    if LOGGER.filter.set(filter).is_err() || ::log::set_logger(&LOGGER).is_err() {
        return;
    }
    ::log::set_max_level(max);
    for problem in problems {
        warn(format_args!("RUST_LOG: {problem}; ignored"));
    }
}

/// The module a source file of this crate is, as `module_path!` would say
/// it: `src/api/guest.rs` is `guestsock::api::guest`.
fn target_of(file: &str) -> String {
    let relative = file
        .rsplit_once("/src/")
        .map(|(_, rest)| rest)
        .or_else(|| file.strip_prefix("src/"))
        .unwrap_or(file);
    let module = relative.strip_suffix(".rs").unwrap_or(relative);
    let module = module.strip_suffix("/mod").unwrap_or(module);
    match module {
        "lib" | "main" => "guestsock".to_owned(),
        module => format!("guestsock::{}", module.replace('/', "::")),
    }
}

/// Sends one record through the facade, with the calling module as its
/// target. guestsock's call sites pass `format_args!` to the functions
/// below rather than using `log`'s macros; `#[track_caller]` gives each
/// record the caller's file, hence its module, so that module filters
/// select them exactly as they would select `log::warn!` in that module.
fn emit(level: ::log::Level, message: Arguments<'_>, at: &'static Location<'static>) {
    if level > ::log::max_level() {
        return;
    }
    let target = target_of(at.file());
    ::log::logger().log(
        &Record::builder()
            .level(level)
            .target(&target)
            .module_path(Some(&target))
            .file_static(Some(at.file()))
            .line(Some(at.line()))
            .args(message)
            .build(),
    );
}

/// Something failed.
#[track_caller]
pub fn error(message: Arguments<'_>) {
    emit(::log::Level::Error, message, Location::caller());
}

/// Something went wrong that guestsock worked around.
#[track_caller]
pub fn warn(message: Arguments<'_>) {
    emit(::log::Level::Warn, message, Location::caller());
}

/// Something an operator may want to know happened.
#[track_caller]
pub fn info(message: Arguments<'_>) {
    emit(::log::Level::Info, message, Location::caller());
}

/// Detail for debugging.
#[track_caller]
pub fn debug(message: Arguments<'_>) {
    emit(::log::Level::Debug, message, Location::caller());
}

/// Logs `message` as a warning unless a line was logged through `last`
/// less than [`LOG_THROTTLE`] ago, so that an attack cannot flood the log.
/// The line is the caller's, for `RUST_LOG`'s module filters.
#[track_caller]
pub fn log_throttled(last: &mut Option<Instant>, message: Arguments<'_>) {
    if log_due(*last) {
        *last = Some(Instant::now());
        warn(message);
    }
}

/// Whether [`log_throttled`] through `last` would log now: for a line that
/// costs something to put together.
pub fn log_due(last: Option<Instant>) -> bool {
    last.is_none_or(|then| then.elapsed() >= LOG_THROTTLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_line_is_due_once_a_throttle_has_passed() {
        let now = Instant::now();
        assert!(log_due(None));
        assert!(!log_due(Some(now)));
        assert!(log_due(now.checked_sub(LOG_THROTTLE)));
        let mut last = now.checked_sub(LOG_THROTTLE);
        log_throttled(&mut last, format_args!("logged"));
        assert!(last.is_some_and(|at| at >= now), "{last:?}");
        let then = last;
        log_throttled(&mut last, format_args!("throttled"));
        assert_eq!(last, then);
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("trace"), Some(Level::Trace));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn rust_log_directives() {
        use LevelFilter::{Debug, Error, Info, Off, Trace, Warn};
        // (RUST_LOG, target, level it is logged at)
        let table = [
            ("", "guestsock::server", Info),
            ("warn", "guestsock::server", Warn),
            ("warn", "mio::poll", Warn),
            ("guestsock::server=debug,warn", "guestsock::server", Debug),
            ("guestsock::server=debug,warn", "guestsock::store", Warn),
            (
                "guestsock::server=debug,warn",
                "guestsock::serverless",
                Warn,
            ),
            ("guestsock::server=debug,warn", "guestsock", Warn),
            (
                "guestsock=error,guestsock::store=trace",
                "guestsock::store",
                Trace,
            ),
            (
                "guestsock=error,guestsock::store=trace",
                "guestsock::server",
                Error,
            ),
            (
                "guestsock::store=trace,guestsock=error",
                "guestsock::store",
                Trace,
            ),
            ("mio=trace", "mio::poll", Trace),
            ("mio=trace", "guestsock::server", Info),
            ("mio", "mio::poll", Trace),
            ("off", "guestsock::server", Off),
            ("mio=off,debug", "mio::poll", Off),
            ("mio=debug,mio=warn", "mio", Warn),
            (
                " guestsock::server = DEBUG , error ",
                "guestsock::server",
                Debug,
            ),
            ("loud,mio=trace", "guestsock::server", Info),
        ];
        for (spec, target, want) in table {
            let (filter, _) = Filter::parse(spec);
            assert_eq!(filter.level_for(target), want, "RUST_LOG={spec:?} {target}");
        }
        // A bare word that is no level is a module name, as for env_logger.
        let (filter, problems) = Filter::parse("loud,mio=trace,a-b=info,=debug,x=loud");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(filter.level_for("loud"), Trace);
        assert_eq!(filter.max(), Trace);
    }

    #[test]
    fn targets_are_module_paths() {
        for (file, target) in [
            ("src/server.rs", "guestsock::server"),
            ("src/api/guest.rs", "guestsock::api::guest"),
            ("src/api/mod.rs", "guestsock::api"),
            ("src/lib.rs", "guestsock"),
            ("/home/x/guestsock/src/ws/frame.rs", "guestsock::ws::frame"),
        ] {
            assert_eq!(target_of(file), target, "{file}");
        }
        // The call sites' own file, through #[track_caller].
        #[track_caller]
        fn here() -> String {
            target_of(Location::caller().file())
        }
        assert_eq!(here(), module_path!().trim_end_matches("::tests"));
    }

    #[test]
    fn lines_keep_the_format() {
        let line = |level, target| format_line(level, target, &format_args!("m {}", 1));
        assert_eq!(
            line(::log::Level::Error, "guestsock::server"),
            "guestsock: error: m 1\n"
        );
        assert_eq!(
            line(::log::Level::Warn, "guestsock::store"),
            "guestsock: warning: m 1\n"
        );
        assert_eq!(line(::log::Level::Info, "guestsock"), "guestsock: m 1\n");
        assert_eq!(
            line(::log::Level::Debug, "guestsock::conn"),
            "guestsock: debug: m 1\n"
        );
        assert_eq!(
            line(::log::Level::Trace, "mio::poll"),
            "guestsock: trace: mio::poll: m 1\n"
        );
    }
}
