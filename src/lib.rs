//! guestsock: an LXD-compatible guest metadata socket for dense container
//! hosts.
//!
//! The library is the whole server; the `guestsock` binary is a thin map
//! over [`cli`]. It is a library so that fuzz targets and benchmarks can
//! reach the pure parsers directly.

// Unsafe code is denied everywhere but `activation`, which adopts the
// sockets systemd passes, and `identity`'s `pidfd` module, one ioctl (see
// their headers).
#![deny(unsafe_code)]

pub mod acl;
pub mod activation;
pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod compact_map;
pub mod conn;
pub mod demo;
pub mod dispatch;
pub mod doctor;
pub mod error;
pub mod events;
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod install;
pub mod instance;
pub mod issuer;
pub mod jwt;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod pidfile;
pub mod preamble;
pub mod priority;
pub mod registry;
pub mod request_ctx;
pub mod runtime;
pub mod server;
pub mod signer;
pub mod socket_file;
pub mod store;
pub mod ws;
