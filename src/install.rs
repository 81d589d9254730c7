//! Where the binary is installed, and noticing a second copy of it.
//!
//! Owns the one install location that every file of `dist/` (the systemd
//! units, the OCI and LXC hooks) runs, and the check that the `guestsock` a
//! shell finds first on `PATH` is that same build. It does not install
//! anything: `cargo install --path . --root /usr/local` does.
//!
//! Root's `PATH` usually puts `~/.cargo/bin` first, so a plain `cargo
//! install --path .` as root makes a second copy that `guestsock serve`
//! typed in a shell runs, while the hooks and units run the first: two
//! builds of one daemon, which drift apart at the next upgrade of either.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The binary every file of `dist/` runs.
pub const INSTALLED: &str = "/usr/local/bin/guestsock";

/// What is wrong when a shell's `guestsock` (the first on `path`, the value
/// of `PATH`) is another build than [`INSTALLED`]: nothing if either is
/// missing, or both are the same file or the same bytes.
pub fn second_copy(path: &str) -> Option<String> {
    let installed = Path::new(INSTALLED);
    let found = first_on_path(path, "guestsock")?;
    if !installed.is_file() || same_build(&found, installed).unwrap_or(true) {
        return None;
    }
    Some(format!(
        "`guestsock` on PATH is {}, but the systemd units and runtime hooks run {INSTALLED}, a different build; keep one copy: install with `cargo install --path . --root /usr/local` and remove {}",
        found.display(),
        found.display()
    ))
}

/// The first executable file called `name` in the directories of `path`.
fn first_on_path(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Whether two files are one build: the same file, or the same bytes.
fn same_build(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (fs::metadata(a)?, fs::metadata(b)?);
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        return Ok(true);
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_build_in_two_places_is_one_build() {
        let dir = std::env::temp_dir().join(format!("guestsock-install-{}", std::process::id()));
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::create_dir_all(dir.join("b")).unwrap();
        let (a, b) = (dir.join("a/guestsock"), dir.join("b/guestsock"));
        fs::write(&a, vec![7u8; 200_000]).unwrap();
        fs::write(&b, vec![7u8; 200_000]).unwrap();
        assert!(same_build(&a, &b).unwrap());
        let mut other = vec![7u8; 200_000];
        other[150_000] = 8;
        fs::write(&b, &other).unwrap();
        assert!(!same_build(&a, &b).unwrap());
        assert!(same_build(&a, &a).unwrap());
        // Only an executable file is found on PATH.
        let path = format!("{}:{}", dir.join("a").display(), dir.join("b").display());
        assert_eq!(first_on_path(&path, "guestsock"), None);
        fs::set_permissions(&b, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(first_on_path(&path, "guestsock"), Some(b.clone()));
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(first_on_path(&path, "guestsock"), Some(a));
        fs::remove_dir_all(&dir).unwrap();
    }
}
