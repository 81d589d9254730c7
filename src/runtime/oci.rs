//! `guestsock hook oci`: an OCI runtime hook (runtime-spec `config.md`
//! "POSIX-platform Hooks"), for runc, crun, podman and every runtime that
//! runs them.
//!
//! Owns reading the container's state from standard input, which stage the
//! hook runs at, and the annotations; registering and removing is the
//! parent module's.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::{Container, Runtime, RuntimeError, Start, instance_name, register, unregister};
use crate::limits::{MAX_HOOK_INPUT_BYTES, MAX_OCI_CONFIG_BYTES, read_at_most};

/// The container state a runtime writes to a hook's standard input
/// (runtime-spec `runtime.md` "State"); only what the hook reads.
#[derive(Debug, Deserialize)]
pub struct State {
    /// The container's id, unique on the host for this runtime.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    pub status: String,
    /// The container's init on the host; absent once it is gone.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The bundle directory, whose `config.json` holds the annotations
    /// where the state leaves them out (older runtimes).
    #[serde(default)]
    pub bundle: Option<String>,
    /// The container's annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What the hook does at a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The container is being created or runs: register it.
    Register,
    /// The container is gone: remove its instance.
    Remove,
}

/// The action for a stage named on the command line (`--stage`), or, when
/// none is, for the state's `status`: the runtime-spec gives
/// `createRuntime`, `createContainer`, `prestart` and `startContainer`
/// hooks the status `creating` (some runtimes say `created`), `poststart`
/// `running` and `poststop` `stopped`.
pub fn action(stage: Option<&str>, status: &str) -> Result<Action, RuntimeError> {
    match stage {
        Some("createRuntime" | "createContainer" | "prestart" | "startContainer" | "poststart") => {
            Ok(Action::Register)
        }
        Some("poststop") => Ok(Action::Remove),
        Some(other) => Err(RuntimeError::Input(format!(
            "--stage {other:?} is not an OCI hook stage (createRuntime, createContainer, prestart, startContainer, poststart, poststop)"
        ))),
        None => match status {
            "creating" | "created" | "running" => Ok(Action::Register),
            "stopped" => Ok(Action::Remove),
            other => Err(RuntimeError::Input(format!(
                "the container's status {other:?} says nothing about what to do; give the hook --stage"
            ))),
        },
    }
}

/// Parses the state a runtime gave on standard input.
pub fn parse_state(input: &[u8]) -> Result<State, RuntimeError> {
    serde_json::from_slice(input).map_err(|e| {
        RuntimeError::Input(format!(
            "standard input is not an OCI container state (is this run as an OCI hook?): {e}"
        ))
    })
}

/// The container's annotations: the state's, else the bundle's
/// `config.json`'s.
fn annotations(state: &State) -> Result<BTreeMap<String, String>, RuntimeError> {
    if let Some(annotations) = &state.annotations {
        return Ok(annotations.clone());
    }
    let Some(bundle) = &state.bundle else {
        return Ok(BTreeMap::new());
    };
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let path = Path::new(bundle).join("config.json");
    let text = fs::File::open(&path)
        .and_then(|file| read_at_most(file, MAX_OCI_CONFIG_BYTES))
        .map_err(|e| RuntimeError::Input(format!("cannot read {}: {e}", path.display())))?;
    let config: Config = serde_json::from_slice(&text)
        .map_err(|e| RuntimeError::Input(format!("{}: {e}", path.display())))?;
    Ok(config.annotations)
}

/// Runs the hook on `input` (the state), for `stage` if given.
pub fn hook(admin: &Path, stage: Option<&str>, input: &[u8]) -> Result<(), RuntimeError> {
    let state = parse_state(input)?;
    let labels = annotations(&state)?;
    match action(stage, &state.status)? {
        Action::Register => {
            let container = Container {
                runtime: Runtime::Oci,
                id: state.id,
                name_hint: None,
                pid: state.pid.unwrap_or(0),
                labels,
            };
            register(admin, &container, Start::Fresh).map(drop)
        }
        Action::Remove => {
            let name = instance_name(&state.id, None, &labels)?;
            unregister(admin, Runtime::Oci, &state.id, &name).map(drop)
        }
    }
}

/// Reads the state from standard input, never more than
/// [`MAX_HOOK_INPUT_BYTES`].
pub fn read_input(input: impl Read) -> Result<Vec<u8>, RuntimeError> {
    read_at_most(input, MAX_HOOK_INPUT_BYTES).map_err(|e| {
        RuntimeError::Input(format!(
            "cannot read standard input ({e}): is this run as an OCI hook?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_statuses() {
        for (stage, status, want) in [
            (None, "creating", Some(Action::Register)),
            (None, "created", Some(Action::Register)),
            (None, "running", Some(Action::Register)),
            (None, "stopped", Some(Action::Remove)),
            (None, "paused", None),
            (Some("createRuntime"), "stopped", Some(Action::Register)),
            (Some("prestart"), "creating", Some(Action::Register)),
            (Some("poststop"), "creating", Some(Action::Remove)),
            (Some("prestop"), "creating", None),
        ] {
            assert_eq!(action(stage, status).ok(), want, "{stage:?} {status}");
        }
    }

    #[test]
    fn states() {
        // runc 1.1's createRuntime state.
        let state = parse_state(
            br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":4242,
                "bundle":"/run/c1","annotations":{"io.guestsock.config.user.foo":"bar"}}"#,
        )
        .unwrap();
        assert_eq!((state.id.as_str(), state.pid), ("c1", Some(4242)));
        assert_eq!(
            annotations(&state).unwrap()["io.guestsock.config.user.foo"],
            "bar"
        );
        // poststop: no pid.
        let state = parse_state(br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped"}"#).unwrap();
        assert_eq!(state.pid, None);
        assert!(annotations(&state).unwrap().is_empty());
        for bad in [&b""[..], b"[]", b"{\"id\":1}", b"not json"] {
            let err = parse_state(bad).unwrap_err().to_string();
            assert!(err.contains("not an OCI container state"), "{err}");
        }
    }

    #[test]
    fn annotations_fall_back_to_the_bundle() {
        let dir = std::env::temp_dir().join(format!("guestsock-oci-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.guestsock.name":"from-bundle"}}"#,
        )
        .unwrap();
        let state = parse_state(
            format!(
                r#"{{"id":"c1","status":"creating","pid":1,"bundle":{:?}}}"#,
                dir
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            annotations(&state).unwrap()["io.guestsock.name"],
            "from-bundle"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn input_is_bounded() {
        let big = vec![b' '; MAX_HOOK_INPUT_BYTES as usize + 1];
        assert!(read_input(&big[..]).is_err());
        assert_eq!(read_input(&b"{}"[..]).unwrap(), b"{}");
    }
}
