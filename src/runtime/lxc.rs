//! `guestsock hook lxc`: LXC's `lxc.hook.start-host` (register) and
//! `lxc.hook.post-stop` (remove) hooks.
//!
//! Owns what LXC tells a hook (its arguments and `LXC_*` environment, see
//! lxc.container.conf(5) "Container hooks") and where an LXC container's
//! `io.guestsock.*` labels come from: `--label` on the hook's own line in
//! the container's config, and a labels file. Registering and removing is
//! the parent module's.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    Container, Runtime, RuntimeError, Start, instance_name, parse_label_lines, register, unregister,
};
use crate::limits::{MAX_HOOK_INPUT_BYTES, read_at_most};

/// The labels file read when `--labels` is not given: beside the
/// container's config (`$LXC_CONFIG_FILE`), if it exists.
pub const DEFAULT_LABELS_FILE: &str = "guestsock.labels";

/// What LXC said about the container and the hook.
#[derive(Debug, Default)]
pub struct Invocation {
    /// `LXC_NAME`, else the first argument.
    pub name: Option<String>,
    /// `LXC_HOOK_TYPE`, else the third argument.
    pub hook_type: Option<String>,
    /// `LXC_PID`: the container's init on the host (start-host only).
    pub pid: Option<String>,
    /// `LXC_CONFIG_FILE`.
    pub config_file: Option<PathBuf>,
}

impl Invocation {
    /// From the environment and the arguments LXC appends to the hook's
    /// command (`NAME SECTION TYPE`, more for some hook types).
    pub fn from_env(args: &[String]) -> Invocation {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Invocation {
            name: var("LXC_NAME").or_else(|| args.first().cloned()),
            hook_type: var("LXC_HOOK_TYPE").or_else(|| args.get(2).cloned()),
            pid: var("LXC_PID"),
            config_file: var("LXC_CONFIG_FILE").map(PathBuf::from),
        }
    }
}

/// The container's labels: the labels file (`--labels`, else
/// [`DEFAULT_LABELS_FILE`] beside the container's config when there is
/// one), then `--label` values, which win.
pub fn labels(
    invocation: &Invocation,
    file: Option<&Path>,
    inline: &[String],
) -> Result<BTreeMap<String, String>, RuntimeError> {
    let mut labels = BTreeMap::new();
    let default = invocation
        .config_file
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join(DEFAULT_LABELS_FILE))
        .filter(|path| path.is_file());
    if let Some(path) = file.map(Path::to_path_buf).or(default) {
        let text = fs::File::open(&path)
            .and_then(|f| read_at_most(f, MAX_HOOK_INPUT_BYTES))
            .and_then(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
            })
            .map_err(|e| RuntimeError::Input(format!("cannot read {}: {e}", path.display())))?;
        parse_label_lines(&text, &path.display().to_string(), &mut labels)?;
    }
    for label in inline {
        parse_label_lines(label, "--label", &mut labels)?;
    }
    Ok(labels)
}

/// Runs the hook.
pub fn hook(
    admin: &Path,
    invocation: &Invocation,
    labels: BTreeMap<String, String>,
) -> Result<(), RuntimeError> {
    let Some(name) = invocation.name.clone() else {
        return Err(RuntimeError::Input(
            "LXC_NAME is not set and no container name was given: run this as an LXC hook".into(),
        ));
    };
    // The container's directory (its lxcpath and name) tells apart two
    // containers of one name in different lxcpaths; its name names the
    // instance.
    let id = invocation
        .config_file
        .as_deref()
        .and_then(Path::parent)
        .map_or_else(|| name.clone(), |dir| dir.display().to_string());
    match invocation.hook_type.as_deref() {
        Some("start-host") => {
            let pid = match invocation.pid.as_deref() {
                None => {
                    return Err(RuntimeError::Input(
                        "LXC_PID is not set: LXC sets it for lxc.hook.start-host".into(),
                    ));
                }
                Some(pid) => pid.parse().map_err(|_| {
                    RuntimeError::Input(format!("LXC_PID {pid:?} is not a process id"))
                })?,
            };
            let container = Container {
                runtime: Runtime::Lxc,
                id,
                name_hint: Some(name),
                pid,
                labels,
            };
            register(admin, &container, Start::Fresh).map(drop)
        }
        Some("post-stop" | "stop") => {
            let instance = instance_name(&id, Some(&name), &labels)?;
            unregister(admin, Runtime::Lxc, &id, &instance).map(drop)
        }
        other => Err(RuntimeError::Input(format!(
            "hook type {other:?}: guestsock hook lxc is for lxc.hook.start-host and lxc.hook.post-stop"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_file_beside_the_config_and_the_hook_line() {
        let dir = std::env::temp_dir().join(format!("guestsock-lxc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(DEFAULT_LABELS_FILE),
            "# c1\nio.guestsock.config.user.a=file\nio.guestsock.config.user.b=file\n",
        )
        .unwrap();
        let invocation = Invocation {
            config_file: Some(dir.join("config")),
            ..Invocation::default()
        };
        let got = labels(
            &invocation,
            None,
            &["io.guestsock.config.user.b=line".into()],
        )
        .unwrap();
        assert_eq!(got["io.guestsock.config.user.a"], "file");
        assert_eq!(got["io.guestsock.config.user.b"], "line");
        // A labels file past the bound is refused, never read in part.
        let big = dir.join("big.labels");
        fs::write(&big, "# x\n".repeat(MAX_HOOK_INPUT_BYTES as usize / 4 + 1)).unwrap();
        let err = labels(&invocation, Some(&big), &[]).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let missing = labels(&invocation, Some(&dir.join("nope")), &[]).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
        // No config file, no labels file: no labels.
        assert!(
            labels(&Invocation::default(), None, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn arguments_stand_in_for_the_environment() {
        // The test process has no LXC_* variables.
        let args: Vec<String> = ["c1", "lxc", "post-stop"].map(String::from).into();
        let invocation = Invocation::from_env(&args);
        assert_eq!(invocation.name.as_deref(), Some("c1"));
        assert_eq!(invocation.hook_type.as_deref(), Some("post-stop"));
    }
}
