//! The command line (docs/protocol.md section 7): the command tree, declared
//! with clap's derive API, and a map from each command to its room.
//!
//! Owns the top of the tree (`Cli`, `Command`, each command's one-line
//! help), parsing it (where `--admin` and `--socket` came from) and `run`'s
//! map. Each command's flags, help and run are in its room: `serve`,
//! `instance` (instance, config, device, state), `identity` (token,
//! identity), `hooks` (hook, watch), `inspect` (query, stats, doctor, dump)
//! and `manual` (man, completions); `agent`'s flags and run are
//! `crate::agent`'s, beside the relay they start. What several rooms share lies below
//! them all, in `sockets` (the two sockets' flags, defaults and remedies)
//! and `stdio`. The server is `server`'s business; talking to it,
//! `client`'s; the exit status, `main`'s.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod hooks;
pub mod identity;
pub mod inspect;
pub mod instance;
pub mod manual;
pub mod serve;
pub mod sockets;
mod stdio;

pub use serve::DEFAULT_STATE_DIR;
use sockets::AdminSocket;
pub use sockets::{
    ADMIN_ENV, AdminArg, CONTAINER_SOCKET, DEFAULT_ADMIN_SOCKET, DEFAULT_SOCKET, GuestSocketArg,
    PathOrigin, SOCKET_ENV,
};

/// `guestsock`: the whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "guestsock",
    version,
    about = "An LXD-compatible /dev/lxd/sock for every container on a host, from one unix socket",
    long_about = "An LXD-compatible /dev/lxd/sock for every container on a host, from one unix \
        socket.\n\n`guestsock serve` runs the server; the client commands (instance, config, \
        device, state, stats, doctor) talk to it over its admin socket; `guestsock query` is \
        a guest-side GET for scripts inside containers.",
    // A bare `guestsock` is a usage error like a bare `guestsock config`:
    // the help, on standard error, exit status 2.
    arg_required_else_help = true
)]
pub struct Cli {
    /// What to do; without one, this help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One command.
#[derive(Debug, PartialEq, Subcommand)]
pub enum Command {
    /// Run the server: the guest socket, the admin socket and the state directory
    Serve(Box<serve::ServeArgs>),
    /// Register, list, show and remove instances
    #[command(subcommand_required = true)]
    Instance {
        /// Which.
        #[command(subcommand)]
        call: instance::InstanceCall,
        /// The admin socket and `--json`.
        #[command(flatten)]
        client: instance::ClientArgs,
    },
    /// Get, set, unset and show an instance's config keys
    #[command(subcommand_required = true)]
    Config {
        /// Which.
        #[command(subcommand)]
        call: instance::ConfigCall,
        /// The admin socket and `--json`.
        #[command(flatten)]
        client: instance::ClientArgs,
    },
    /// Add, set, remove and list an instance's devices
    #[command(subcommand_required = true)]
    Device {
        /// Which.
        #[command(subcommand)]
        call: instance::DeviceCall,
        /// The admin socket and `--json`.
        #[command(flatten)]
        client: instance::ClientArgs,
    },
    /// Set an instance's guest state: `Started` clears a guest's Ready (e.g. when it restarts); `Ready` sets it as the guest would
    State(instance::StateArgs),
    /// A guest-side GET, printing the body: for scripts inside containers
    Query(inspect::QueryArgs),
    /// Print an identity token for this container's instance, for AUDIENCE (docs/identity.md)
    Token(identity::TokenArgs),
    /// The host's identity keys: print the JWKS, rotate, verify a token, print an OIDC discovery document
    #[command(subcommand_required = true)]
    Identity {
        /// Which.
        #[command(subcommand)]
        call: identity::IdentityCall,
        /// The admin socket.
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Check the server's CPU priority and the socket mount inside containers; exits non-zero if anything needs fixing
    Doctor(inspect::DoctorArgs),
    /// Print the durable state as JSON, without a server: for backups and broken hosts
    #[command(
        long_about = "Print the durable state as JSON, without a server: for backups and \
        broken hosts.\n\nReads the state directory directly (a running server's as of its last \
        commit, without disturbing it) and prints {\"instances\": [...], \"guest_states\": \
        {...}}: the instances in the shape of the --instances file, which `serve --instances` \
        and `instance add` take back, and which guests had said Ready."
    )]
    Dump(inspect::DumpArgs),
    /// Register containers as their runtime starts them, and remove them when they stop
    #[command(subcommand_required = true)]
    Hook {
        /// Which runtime.
        #[command(subcommand)]
        runtime: hooks::HookRuntime,
    },
    /// Follow a container engine that has no hooks, registering its containers as they start
    #[command(subcommand_required = true)]
    Watch {
        /// Which engine.
        #[command(subcommand)]
        engine: hooks::WatchEngine,
    },
    /// The server's counters, for a person (GET /1.0/metrics on the admin socket for Prometheus)
    #[command(alias = "top")]
    Stats {
        /// The admin socket.
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Inside a VM: serve /dev/lxd/sock there and relay each connection to the host over vsock (docs/vms.md)
    Agent(Box<crate::agent::AgentArgs>),
    /// Print a shell completion script: `source <(guestsock completions bash)`
    Completions(manual::CompletionsArgs),
    /// Print the manual page (roff): `guestsock man | man -l -`; `guestsock man serve` for one command's
    Man(manual::ManArgs),
}

/// A parsed command line.
#[derive(Debug, PartialEq)]
pub struct Invocation {
    /// The command; `None` prints the help.
    pub command: Option<Command>,
    /// Where `--admin`'s path came from.
    pub admin_origin: PathOrigin,
    /// Where `--socket`'s path came from (`query`, `token`).
    pub socket_origin: PathOrigin,
}

/// Parses a whole command line, program name first. The error is clap's,
/// to print as it is: a usage error, or the text `--help` and `--version`
/// ask for.
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
    Ok(Invocation {
        command: cli.command,
        admin_origin: origin(&matches, "admin"),
        socket_origin: origin(&matches, "socket"),
    })
}

/// Where the value of argument `id` of the innermost command came from.
fn origin(matches: &ArgMatches, id: &str) -> PathOrigin {
    let mut innermost = matches;
    while let Some((_, sub)) = innermost.subcommand() {
        innermost = sub;
    }
    // `value_source` may only be asked of an argument the command has.
    if !innermost.ids().any(|known| known == id) {
        return PathOrigin::Default;
    }
    match innermost.value_source(id) {
        Some(ValueSource::CommandLine) => PathOrigin::Flag,
        Some(ValueSource::EnvVariable) => PathOrigin::Env,
        _ => PathOrigin::Default,
    }
}

/// Runs a command; the error is printed by `main`, which exits non-zero.
pub fn run(invocation: Invocation) -> Result<(), String> {
    let Some(command) = invocation.command else {
        return Cli::command()
            .print_help()
            .map_err(|e| format!("cannot print the help: {e}"));
    };
    let admin_socket = |arg: AdminArg| AdminSocket::new(arg, invocation.admin_origin);
    match command {
        Command::Serve(args) => serve::serve(*args),
        Command::Instance { call, client } => {
            instance::instance(&admin_socket(client.admin), client.json, call)
        }
        Command::Config { call, client } => {
            instance::config(&admin_socket(client.admin), client.json, call)
        }
        Command::Device { call, client } => {
            instance::device(&admin_socket(client.admin), client.json, call)
        }
        Command::State(instance::StateArgs {
            name,
            state,
            client,
            quiet,
        }) => instance::set_state(
            &admin_socket(client.admin),
            client.json,
            &name,
            &state,
            quiet,
        ),
        Command::Query(inspect::QueryArgs { socket, path }) => {
            inspect::query(&socket.path(), invocation.socket_origin, &path)
        }
        Command::Token(identity::TokenArgs {
            audience,
            ttl,
            socket,
        }) => identity::token(&socket.path(), invocation.socket_origin, &audience, ttl),
        Command::Identity { call, admin } => identity::identity(&admin_socket(admin), call),
        Command::Doctor(inspect::DoctorArgs {
            names,
            pid,
            path,
            socket,
            admin,
        }) => inspect::doctor(names, pid, &path, socket, &admin_socket(admin)),
        Command::Dump(inspect::DumpArgs { state_dir }) => inspect::dump(&state_dir),
        Command::Hook { runtime } => hooks::hook(runtime),
        Command::Watch { engine } => hooks::watch(engine),
        Command::Stats { admin } => inspect::stats(&admin_socket(admin)),
        Command::Agent(args) => crate::agent::run(*args),
        Command::Completions(args) => manual::completions(Cli::command(), args.shell),
        Command::Man(args) => manual::man(Cli::command(), &args.command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parsed(line: &str) -> Result<Invocation, String> {
        parse(std::iter::once("guestsock").chain(line.split_whitespace()))
            .map_err(|e| e.to_string())
    }

    pub(super) fn command(line: &str) -> Command {
        parsed(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
            .unwrap_or_else(|| panic!("{line}: no command"))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        // clap's own checks: no two flags alike, every default parses.
        Cli::command().debug_assert();
    }

    #[test]
    fn where_the_admin_path_came_from() {
        assert_eq!(
            parsed("instance list --admin /a").unwrap().admin_origin,
            PathOrigin::Flag
        );
        assert_eq!(
            parsed("config --admin /a show c1").unwrap().admin_origin,
            PathOrigin::Flag
        );
        assert_eq!(
            parsed("query --socket /s /1.0").unwrap().socket_origin,
            PathOrigin::Flag
        );
        assert_eq!(parsed("serve").unwrap().admin_origin, PathOrigin::Default);
        // A bare `guestsock` is a usage error, answered with the help.
        assert!(parsed("").is_err());
    }

    #[test]
    fn bad_lines_are_refused() {
        for bad in [
            "serve --bogus",
            "serve --socket",
            "serve extra",
            "serve --admin-uid x",
            "serve --ws-ping-interval 0",
            "serve --header-timeout -1",
            "serve --log-level loud",
            "query",
            "query a b",
            "frobnicate",
            "serve --demo=1",
            "instance",
            "instance show",
            "instance lsit",
            "config set c1 k",
            "device add c1 eth0",
            "device add c1 eth0 novalue",
            "device set c1 eth0",
            "state c1",
            "config set c1 k v --quiet --json",
            "--json config set c1 user.x -",
            "completions tcsh",
        ] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
    }
}
