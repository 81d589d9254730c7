//! The server's two sockets as the commands reach them: their default
//! paths and variables, the `--admin` and `--socket` flags, where a path
//! came from, and each failure to reach one, or to be answered by one,
//! worded with the next step (a newcomer's first error is usually one of
//! these).
//!
//! Shared by every room of `cli` and importing none of them. The calls
//! themselves are `client`'s; what the server answers, the server's.

use std::io;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use crate::client::{self, ClientError};

/// Default guest socket path.
pub const DEFAULT_SOCKET: &str = "/run/guestsock/guest/sock";
/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/guestsock/admin.sock";
/// Where the guest socket is inside a container (LXD's path).
pub const CONTAINER_SOCKET: &str = "/dev/lxd/sock";
/// The variable the client commands read the admin socket's path from.
pub const ADMIN_ENV: &str = "GUESTSOCK_ADMIN";
/// The variable `query` and `token` read the guest socket's path from.
pub const SOCKET_ENV: &str = "GUESTSOCK_SOCKET";
/// Where `--demo` puts everything.
pub(super) const DEMO_DIR: &str = crate::demo::DIR;

/// The admin socket flag, for every command that talks to it.
#[derive(Debug, PartialEq, Args)]
pub struct AdminArg {
    /// `--admin`, else `$GUESTSOCK_ADMIN`, else the default.
    #[arg(
        long = "admin",
        value_name = "PATH",
        env = ADMIN_ENV,
        default_value = DEFAULT_ADMIN_SOCKET,
        global = true,
        help = "The admin socket: the server's --admin-socket"
    )]
    pub admin: PathBuf,
}

/// The guest socket flag, for the guest-side commands (`query`, `token`).
#[derive(Debug, PartialEq, Args)]
pub struct GuestSocketArg {
    /// `--socket`, else `$GUESTSOCK_SOCKET`.
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, help = format!(
        "The guest socket [default: {CONTAINER_SOCKET} if it exists, else {DEFAULT_SOCKET}]"
    ))]
    pub socket: Option<PathBuf>,
}

impl GuestSocketArg {
    /// The guest socket a client command talks to: the flag, else
    /// `$GUESTSOCK_SOCKET`, else `/dev/lxd/sock` inside a container, else
    /// the host's default.
    pub fn path(self) -> PathBuf {
        self.socket.unwrap_or_else(|| {
            let in_container = Path::new(CONTAINER_SOCKET);
            if in_container.exists() {
                in_container.to_path_buf()
            } else {
                PathBuf::from(DEFAULT_SOCKET)
            }
        })
    }
}

/// Where a socket's path came from, so that an error can name what to
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathOrigin {
    /// Its flag.
    Flag,
    /// Its environment variable.
    Env,
    /// Neither: the default.
    Default,
}

/// The admin socket a client command talks to, and where its path came
/// from (for the remedy when nothing answers there).
pub(super) struct AdminSocket {
    /// Its path.
    path: PathBuf,
    /// `--admin`, `$GUESTSOCK_ADMIN` or the default.
    origin: PathOrigin,
}

impl AdminSocket {
    /// The socket `--admin` names, its path having come from `origin`.
    pub(super) fn new(arg: AdminArg, origin: PathOrigin) -> AdminSocket {
        AdminSocket {
            path: arg.admin,
            origin,
        }
    }

    /// One admin call: the envelope's `metadata`, or the error worded with
    /// what to do about it.
    pub(super) fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Value, String> {
        self.request(method, path, body)
            .map_err(|e| self.explain(e))
    }

    /// One admin call, its error left typed for the caller to look at.
    pub(super) fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Value, ClientError> {
        client::admin(&self.path, method, path, body)
    }

    /// A `GET` whose answer is not in the envelope (`/1.0/metrics`, a raw
    /// config value): the body on success, else the status and the body.
    pub(super) fn raw(&self, method: &str, path: &str) -> Result<client::Reply, String> {
        client::call(&self.path, method, path, b"").map_err(|e| self.explain(e))
    }

    /// The error, with the next step when nothing could be connected to.
    pub(super) fn explain(&self, error: ClientError) -> String {
        if let ClientError::NotAdmin { .. } = error {
            return format!(
                "{error}. Point --admin PATH or {ADMIN_ENV} at the admin socket (`guestsock serve --admin-socket`, by default {DEFAULT_ADMIN_SOCKET})"
            );
        }
        let ClientError::Connect { socket, source } = &error else {
            return error.to_string();
        };
        let from = match self.origin {
            PathOrigin::Flag => "given by --admin".to_owned(),
            PathOrigin::Env => format!("taken from {ADMIN_ENV}"),
            PathOrigin::Default => {
                format!("the default; --admin PATH or {ADMIN_ENV} names another")
            }
        };
        let point = format!(
            "point --admin PATH or {ADMIN_ENV} at the socket it serves (its --admin-socket)"
        );
        let next = match source.kind() {
            io::ErrorKind::NotFound => {
                format!("No socket is there: is `guestsock serve` running? Start it, or {point}")
            }
            io::ErrorKind::ConnectionRefused => format!(
                "A socket is there but no server answers on it: `guestsock serve` is not running. Start it, or {point}"
            ),
            io::ErrorKind::PermissionDenied => format!(
                "The admin socket admits root and the uids of `guestsock serve --admin-uid` only: run this as root, or start the server with --admin-uid {}",
                nix::unistd::getuid()
            ),
            _ => format!("Is `guestsock serve` running? Start it, or {point}"),
        };
        let demo = Path::new(DEMO_DIR).join("admin.sock");
        let demo_hint = if self.origin == PathOrigin::Default && demo.exists() {
            format!(" (the demo's is --admin {})", demo.display())
        } else {
            String::new()
        };
        format!(
            "cannot connect to the admin socket {} ({from}): {source}. {next}{demo_hint}",
            socket.display()
        )
    }
}

/// The error of a guest-side call, with the next step when nothing could be
/// connected to.
pub(super) fn guest_remedy(error: ClientError, origin: PathOrigin) -> String {
    let ClientError::Connect { socket, source } = &error else {
        return error.to_string();
    };
    let from = match origin {
        PathOrigin::Flag => "given by --socket".to_owned(),
        PathOrigin::Env => format!("taken from {SOCKET_ENV}"),
        PathOrigin::Default => {
            format!("the default; --socket PATH or {SOCKET_ENV} names another")
        }
    };
    format!(
        "cannot connect to the guest socket {} ({from}): {source}. Is `guestsock serve` \
         running? Inside a container, mount the directory of its --socket at /dev/lxd; on the \
         host, point --socket PATH or {SOCKET_ENV} at its --socket",
        socket.display()
    )
}

/// A guest socket's error answer, and what to do when it is the one a
/// newcomer meets first: a caller that is no registered instance's.
pub(super) fn guest_refusal(reply: &client::Reply) -> String {
    let text = String::from_utf8_lossy(&reply.body);
    let text = text.trim_end();
    if reply.status == 403 && text.contains("is not part of any registered instance") {
        format!(
            "403: {text}. This process belongs to no instance: the guest socket answers processes of registered instances only (`guestsock instance list` on the host shows them and their match rules; `guestsock serve --demo` prints whom it answers)"
        )
    } else {
        format!("{}: {text}", reply.status)
    }
}
