//! Log lines on standard error, one per notable event, no colours (journald
//! reads them as they are).

use std::fmt::Arguments;

/// Something an operator may want to know happened.
pub fn info(message: Arguments<'_>) {
    eprintln!("guestsock: {message}");
}

/// Something went wrong that guestsock worked around.
pub fn warn(message: Arguments<'_>) {
    eprintln!("guestsock: warning: {message}");
}
