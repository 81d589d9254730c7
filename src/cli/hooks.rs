//! The commands that register containers as their runtime starts and stops
//! them: `hook oci` (runc, crun, podman), `hook lxc`, and `watch docker`
//! for an engine that has no hooks, with their flags and help.
//!
//! Owns what a hook's failure does (fails the container's start unless
//! `--optional`). What a runtime's input means, its labels and the calls
//! it makes are `runtime`'s.

use std::io;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::sockets::AdminArg;
use crate::runtime::{docker, lxc, oci};

/// `guestsock hook ...`: one command per kind of runtime hook.
#[derive(Debug, PartialEq, Subcommand)]
pub enum HookRuntime {
    /// An OCI runtime hook (runc, crun, podman): the container's state on standard input
    #[command(
        long_about = "An OCI runtime hook (runc, crun, podman): the container's state \
        on standard input.\n\nAt createRuntime, prestart or poststart it registers the \
        container (matched by its cgroup, or its pid namespace where it has no cgroup of its \
        own; its config from the annotations io.guestsock.config.<key>, its devices from \
        io.guestsock.device.<device>.<field>, its name from io.guestsock.name or its id); at \
        poststop it removes it. The stage is read from the state's status unless --stage \
        names it. See docs/mounting.md."
    )]
    Oci {
        /// `--stage`.
        #[arg(
            long,
            value_name = "STAGE",
            help = "The hook's stage (createRuntime, prestart, poststart, poststop, ...) [default: from the state's status]"
        )]
        stage: Option<String>,
        /// `--optional` and the admin socket.
        #[command(flatten)]
        hook: HookArgs,
    },
    /// An LXC hook, for lxc.hook.start-host and lxc.hook.post-stop
    #[command(
        long_about = "An LXC hook, for lxc.hook.start-host and lxc.hook.post-stop.\n\n\
        At start-host it registers the container (matched by its cgroup \
        /lxc.payload.<name>); at post-stop it removes it. Its \
        io.guestsock.* labels come from --label on the hook's line, and from a labels file: \
        --labels, else guestsock.labels beside the container's config. See docs/mounting.md."
    )]
    Lxc {
        /// `--label`.
        #[arg(
            long = "label",
            value_name = "KEY=VALUE",
            help = "A label, like io.guestsock.config.user.foo=bar (repeatable)"
        )]
        labels: Vec<String>,
        /// `--labels`.
        #[arg(
            long = "labels",
            value_name = "FILE",
            help = "A file of KEY=VALUE labels [default: guestsock.labels beside $LXC_CONFIG_FILE, if it exists]"
        )]
        labels_file: Option<PathBuf>,
        /// `--optional` and the admin socket.
        #[command(flatten)]
        hook: HookArgs,
        /// What LXC appends: the container's name, the section, the hook type.
        #[arg(value_name = "LXC_ARGS", help = "What LXC passes: NAME SECTION TYPE")]
        args: Vec<String>,
    },
}

/// `guestsock watch ...`: one command per engine followed.
#[derive(Debug, PartialEq, Subcommand)]
pub enum WatchEngine {
    /// Follow the Docker engine: register each container as it starts, remove it when it stops
    #[command(
        long_about = "Follow the Docker engine: register each container as it starts, remove \
        it when it stops.\n\nFollows the engine's events on its unix socket: registers each \
        container as it starts (matched by its cgroup, or its pid namespace where it has no \
        cgroup of its own; its config from the labels io.guestsock.config.<key>, its devices \
        from io.guestsock.device.<device>.<field>, its name from io.guestsock.name or the \
        container's name), removes it when it dies or is removed, and reconciles with the running \
        containers at start and after losing the engine. Runs until stopped; meant to run as a \
        service (dist/guestsock-docker-watch.service). Docker has no hook stage, so a \
        container's first command may run before it is registered: see docs/mounting.md."
    )]
    Docker {
        /// `--docker-socket`.
        #[arg(
            long,
            value_name = "PATH",
            help = "The Docker engine's socket [default: DOCKER_HOST's unix:// path, else /var/run/docker.sock]"
        )]
        docker_socket: Option<PathBuf>,
        /// The admin socket.
        #[command(flatten)]
        admin: AdminArg,
    },
}

/// The flags every hook takes.
#[derive(Debug, PartialEq, Args)]
pub struct HookArgs {
    /// `--optional`.
    #[arg(
        long,
        help = "Let the container start even if it cannot be registered (the reason is still printed)"
    )]
    pub optional: bool,
    /// The admin socket.
    #[command(flatten)]
    pub admin: AdminArg,
}

/// `guestsock hook ...`: a failure fails the container's start (the runtime
/// shows the message), unless `--optional` lets it start unregistered.
pub(super) fn hook(runtime: HookRuntime) -> Result<(), String> {
    let (outcome, args) = match runtime {
        HookRuntime::Oci { stage, hook } => {
            let outcome = oci::read_input(io::stdin().lock())
                .and_then(|input| oci::hook(&hook.admin.admin, stage.as_deref(), &input));
            (outcome, hook)
        }
        HookRuntime::Lxc {
            labels,
            labels_file,
            hook,
            args,
        } => {
            let invocation = lxc::Invocation::from_env(&args);
            let outcome = lxc::labels(&invocation, labels_file.as_deref(), &labels)
                .and_then(|labels| lxc::hook(&hook.admin.admin, &invocation, labels));
            (outcome, hook)
        }
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) if args.optional => {
            eprintln!("guestsock hook: {e} (--optional: going on)");
            Ok(())
        }
        Err(e) => Err(format!("hook: {e}")),
    }
}

/// `guestsock watch ...`: follows the engine until stopped.
pub(super) fn watch(engine: WatchEngine) -> Result<(), String> {
    match engine {
        WatchEngine::Docker {
            docker_socket,
            admin,
        } => {
            let socket = docker::engine_socket(docker_socket.as_deref())
                .map_err(|e| format!("watch docker: {e}"))?;
            docker::watch(&admin.admin, &socket)
        }
    }
}
