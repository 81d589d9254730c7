//! The `guestsock` binary: parse the command line, run one command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use guestsock::cli;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse_args(&args).and_then(cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("guestsock: {message}");
            ExitCode::FAILURE
        }
    }
}
