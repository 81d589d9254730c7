//! Log lines on standard error, one per notable event, never per request at
//! the default level, no colours (journald reads them as they are).
//!
//! The level comes from `--log-level`, else `RUST_LOG` (`error`, `warn`,
//! `info`, `debug`; a `RUST_LOG` with module filters uses its first bare
//! level), else `info`.

use std::fmt::Arguments;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much is logged, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only failures.
    Error = 0,
    /// Also problems worked around (refused callers, limits hit, slow
    /// subscribers cut off).
    Warn = 1,
    /// Also start, stop and other notable events (the default).
    Info = 2,
    /// Also per-connection detail.
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl Level {
    /// Parses `error`, `warn`, `info` or `debug` (`trace` counts as debug).
    pub fn parse(text: &str) -> Option<Level> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    /// The level a `RUST_LOG` value asks for: its first bare level
    /// (`info`, or `warn,mio=debug`), if any.
    pub fn from_rust_log(value: &str) -> Option<Level> {
        value.split(',').find_map(|part| {
            let part = part.trim();
            (!part.contains('=')).then(|| Level::parse(part)).flatten()
        })
    }
}

/// Sets the level for the rest of the process.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Something failed.
pub fn error(message: Arguments<'_>) {
    if enabled(Level::Error) {
        eprintln!("guestsock: error: {message}");
    }
}

/// Something went wrong that guestsock worked around.
pub fn warn(message: Arguments<'_>) {
    if enabled(Level::Warn) {
        eprintln!("guestsock: warning: {message}");
    }
}

/// Something an operator may want to know happened.
pub fn info(message: Arguments<'_>) {
    if enabled(Level::Info) {
        eprintln!("guestsock: {message}");
    }
}

/// Detail for debugging.
pub fn debug(message: Arguments<'_>) {
    if enabled(Level::Debug) {
        eprintln!("guestsock: debug: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert_eq!(
            Level::from_rust_log("guestsock=debug,warn"),
            Some(Level::Warn)
        );
        assert_eq!(Level::from_rust_log("mio=trace"), None);
        assert!(Level::Error < Level::Debug);
    }
}
