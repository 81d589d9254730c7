//! The `guestsock` binary: parse the command line, run one command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use guestsock::cli;

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        // `--help` and `--version` end here too, on standard output and
        // successfully; a usage error exits 1 like every other failure.
        Err(stop) => {
            let _ = stop.print();
            return if stop.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli::run(invocation) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("guestsock: {message}");
            ExitCode::FAILURE
        }
    }
}
