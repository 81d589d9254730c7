//! The `guestsock` binary: parse the command line, run one command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use guestsock::cli;

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        // `--help` and `--version` end here too, on standard output and
        // successfully; a usage error (a bare `guestsock` included) exits
        // 2, as clap's and the shell's conventions have it, apart from a
        // command that ran and failed (1).
        Err(stop) => {
            let _ = stop.print();
            return ExitCode::from(u8::try_from(stop.exit_code()).unwrap_or(2));
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
