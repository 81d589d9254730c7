//! The read-only commands that look at a host and its server: `query` (a
//! guest-side `GET`), `stats` (the server's counters), `doctor` (the
//! server's priority, the socket mount inside containers, a second install
//! on `PATH`) and `dump` (the state directory, without a server).
//!
//! Owns their arguments and output. What `doctor` finds is `doctor`'s
//! (the module); reading the state directory, `store`'s; reaching either
//! socket and wording a failure to, `cli`'s.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::serve::DEFAULT_STATE_DIR;
use super::sockets::{
    AdminArg, AdminSocket, CONTAINER_SOCKET, DEFAULT_SOCKET, GuestSocketArg, PathOrigin,
    guest_refusal, guest_remedy,
};
use super::stdio::write_stdout;
use crate::client::{self, table};
use crate::instance::InstanceSpec;

/// `guestsock query PATH`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct QueryArgs {
    /// The guest socket.
    #[command(flatten)]
    pub socket: GuestSocketArg,
    /// The path to GET.
    #[arg(value_name = "PATH", help = "The path to GET, like /1.0/config")]
    pub path: String,
}

/// `guestsock doctor`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct DoctorArgs {
    /// Instances to check.
    #[arg(
        value_name = "NAME",
        help = "Instances to check [default: every instance registered by pid, or by a cgroup a process is in]"
    )]
    pub names: Vec<String>,
    /// `--pid`.
    #[arg(long, help = "Check this process's container instead")]
    pub pid: Option<i32>,
    /// `--path`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = CONTAINER_SOCKET,
        help = "Where the socket should be inside the container"
    )]
    pub path: String,
    /// `--socket`.
    #[arg(
        long,
        value_name = "PATH",
        help = "The server's guest socket on the host [default: the running server's]"
    )]
    pub socket: Option<PathBuf>,
    /// The admin socket, to list the instances.
    #[command(flatten)]
    pub admin: AdminArg,
}

/// `guestsock dump`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct DumpArgs {
    /// `--state-dir`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = DEFAULT_STATE_DIR,
        help = "The state directory: the server's --state-dir"
    )]
    pub state_dir: PathBuf,
}

/// `guestsock dump`: the state directory's instances as an instances file,
/// plus the guests' `Ready`.
pub(super) fn dump(state_dir: &Path) -> Result<(), String> {
    let stored = crate::store::dump(state_dir)?;
    let guest_states: BTreeMap<&str, &str> = stored
        .iter()
        .filter(|s| s.state == crate::instance::GuestState::Ready)
        .map(|s| (s.instance.name.as_str(), s.state.as_str()))
        .collect();
    let instances: Vec<&InstanceSpec> = stored.iter().map(|s| &s.instance).collect();
    let mut text = serde_json::to_vec_pretty(&serde_json::json!({
        "instances": instances,
        "guest_states": guest_states,
    }))
    .map_err(|e| format!("cannot encode the state: {e}"))?;
    text.push(b'\n');
    write_stdout(&text, "the state")
}

/// `guestsock query PATH`: a guest-side `GET`; the body goes to standard
/// output, an error status to standard error with a non-zero exit.
pub(super) fn query(socket: &Path, origin: PathOrigin, path: &str) -> Result<(), String> {
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("query: {path:?} is not a path like /1.0/config"));
    }
    let reply = client::call(socket, "GET", path, b"").map_err(|e| guest_remedy(e, origin))?;
    if let Some(answer) = client::envelope(&reply.body) {
        // The host's view, not a guest's: say so, on standard error, and
        // print the answer all the same.
        let guest = answer["metadata"]["guest_socket"]
            .as_str()
            .unwrap_or(DEFAULT_SOCKET);
        eprintln!(
            "guestsock: note: {} is guestsock's admin socket, so this is the host's answer, not a guest's; guests ask the guest socket ({guest}, /dev/lxd/sock inside a container)",
            socket.display()
        );
    }
    if (200..300).contains(&reply.status) {
        std::io::stdout()
            .write_all(&reply.body)
            .map_err(|e| format!("cannot write the answer: {e}"))
    } else {
        Err(guest_refusal(&reply))
    }
}

/// `guestsock stats`: the metrics of `GET /1.0/metrics`, summed up for a
/// person as one aligned table.
pub(super) fn stats(admin: &AdminSocket) -> Result<(), String> {
    let reply = admin.raw("GET", "/1.0/metrics")?;
    if reply.status != 200 {
        return Err(format!(
            "{}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim_end()
        ));
    }
    let text = String::from_utf8_lossy(&reply.body);
    // Sums every sample of a metric whose labels contain `filter`.
    let sum = |metric: &str, filter: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| {
                (name.starts_with(&format!("{metric}{{")) || *name == metric)
                    && name.contains(filter)
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    };
    let count = |metric: &str, filter: &str| format!("{}", sum(metric, filter) as u64);
    let requests = sum("guestsock_requests_total", "");
    let latency = sum("guestsock_request_duration_seconds_sum", "");
    let rows = vec![
        vec!["instances".into(), count("guestsock_instances", "")],
        vec![
            "connections: guest".into(),
            count("guestsock_connections", "kind=\"guest\""),
        ],
        vec![
            "connections: admin".into(),
            count("guestsock_connections", "kind=\"admin\""),
        ],
        vec![
            "event subscribers".into(),
            count("guestsock_connections", "kind=\"subscriber\""),
        ],
        vec!["requests answered".into(), format!("{}", requests as u64)],
        vec![
            "  2xx".into(),
            count("guestsock_requests_total", "status=\"2"),
        ],
        vec![
            "  4xx".into(),
            count("guestsock_requests_total", "status=\"4"),
        ],
        vec![
            "  5xx".into(),
            count("guestsock_requests_total", "status=\"5"),
        ],
        vec![
            "mean request time".into(),
            if requests > 0.0 {
                format!("{:.1} µs", latency / requests * 1e6)
            } else {
                "-".into()
            },
        ],
        vec![
            "identity failures".into(),
            count("guestsock_identity_failures_total", ""),
        ],
        vec![
            "events published".into(),
            count("guestsock_events_total", "published"),
        ],
        vec![
            "events delivered".into(),
            count("guestsock_events_total", "delivered"),
        ],
        vec![
            "subscribers cut off".into(),
            count("guestsock_subscribers_dropped_total", ""),
        ],
        vec!["limits hit".into(), count("guestsock_limits_hit_total", "")],
        vec![
            "identity tokens signed".into(),
            count("guestsock_identity_tokens_total", ""),
        ],
    ];
    print!("{}", table(&["WHAT", "VALUE"], &rows));
    Ok(())
}

/// `guestsock doctor`: for each container to check, what is at the socket
/// path inside it. Exits non-zero if anything needs fixing.
pub(super) fn doctor(
    names: Vec<String>,
    pid: Option<i32>,
    path: &str,
    socket: Option<PathBuf>,
    admin: &AdminSocket,
) -> Result<(), String> {
    let mut targets: Vec<(String, i32)> = Vec::new();
    let mut unchecked: Vec<String> = Vec::new();
    let mut problems = 0;
    let mut server_checked = false;
    let server_socket = match (pid, socket) {
        (Some(pid), Some(socket)) => {
            targets.push((format!("pid {pid}"), pid));
            socket
        }
        (pid, socket) => {
            let facts = admin.call("GET", "/1.0", b"")?;
            let instances = admin.call("GET", "/1.0/instances?recursion=1", b"")?;
            if names.is_empty() && pid.is_none() {
                server_checked = true;
                problems += doctor_server(&facts);
            }
            if let Some(pid) = pid {
                targets.push((format!("pid {pid}"), pid));
            }
            let instances = instances.as_array().map(Vec::as_slice).unwrap_or_default();
            for name in &names {
                if !instances.iter().any(|i| i["name"] == name.as_str()) {
                    return Err(format!(
                        "doctor: no instance is named {name:?} (`guestsock instance list` lists them)"
                    ));
                }
            }
            if pid.is_none() {
                for instance in instances {
                    let name = instance["name"].as_str().unwrap_or_default();
                    let named = names.iter().any(|n| n == name);
                    if !names.is_empty() && !named {
                        continue;
                    }
                    match crate::doctor::process_of(&instance["match"]) {
                        Ok(rule_pid) => targets.push((name.to_owned(), rule_pid)),
                        // Asked for by name, it must be checked; otherwise an
                        // instance with no process to look through (a uid
                        // range, a stopped container) is passed over.
                        Err(why) if named => unchecked.push(format!("{name}: {why}")),
                        Err(_) => {}
                    }
                }
            }
            socket.unwrap_or_else(|| {
                PathBuf::from(facts["guest_socket"].as_str().unwrap_or(DEFAULT_SOCKET))
            })
        }
    };
    for line in &unchecked {
        println!("{line}");
    }
    // The hooks and units run the installed binary; a second build on
    // PATH is a host problem of its own.
    if let Some(problem) = crate::install::second_copy(&std::env::var("PATH").unwrap_or_default()) {
        println!("install: {problem}");
        problems += 1;
    }
    if targets.is_empty() && unchecked.is_empty() && !server_checked {
        return Err(
            "doctor: no instance has a running process to look through (a pid rule, or a cgroup with a process in it); give --pid PID"
                .into(),
        );
    }
    if targets.is_empty() && unchecked.is_empty() {
        println!(
            "no instance has a running process to look through: no container to look into (give --pid PID)"
        );
    }
    for (label, pid) in targets {
        let finding = crate::doctor::diagnose(pid, path, &server_socket);
        if !finding.is_fine() {
            problems += 1;
        }
        println!("{label}: {}", finding.explain(path));
    }
    problems += unchecked.len();
    if problems > 0 {
        return Err(format!("doctor: {problems} thing(s) need fixing"));
    }
    Ok(())
}

/// `doctor`'s look at the server itself, from its `GET /1.0` facts: its CPU
/// priority against the shipped unit's. Prints one line; counts a problem.
fn doctor_server(facts: &Value) -> usize {
    let Some(pid) = facts["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
        println!(
            "server: it does not say its pid (an older release); restart it (SIGHUP) so that doctor can check its priority"
        );
        return 1;
    };
    let finding = crate::doctor::diagnose_priority(pid);
    println!("server (pid {pid}): {}", finding.explain());
    usize::from(!finding.is_fine())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::command;
    use crate::cli::{Command, DEFAULT_ADMIN_SOCKET};

    #[test]
    fn query_and_stats_lines() {
        let table = [
            (
                "query /1.0 --socket=/s",
                Command::Query(QueryArgs {
                    socket: GuestSocketArg {
                        socket: Some("/s".into()),
                    },
                    path: "/1.0".into(),
                }),
            ),
            (
                "stats",
                Command::Stats {
                    admin: AdminArg {
                        admin: DEFAULT_ADMIN_SOCKET.into(),
                    },
                },
            ),
            (
                "top --admin /a",
                Command::Stats {
                    admin: AdminArg { admin: "/a".into() },
                },
            ),
        ];
        for (line, expected) in table {
            assert_eq!(command(line), expected, "{line}");
        }
    }
}
