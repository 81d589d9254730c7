//! `serve`'s pid file: the one number that names this server, so that a
//! restart (`kill -HUP $(cat /run/guestsock/guestsock.pid)`) reaches exactly
//! it and no other guestsock on the machine.
//!
//! Owns writing the file (atomically, once serving) and removing it at a
//! final stop. A successor started by SIGHUP writes its own pid when it
//! takes over; the predecessor then leaves the file alone. When to do
//! either is `server`'s business.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The pid file's name when `--pid-file` is not given: beside the admin
/// socket, so that each server's sockets and pid file sit together
/// (`/run/guestsock/guestsock.pid` by default).
pub const DEFAULT_NAME: &str = "guestsock.pid";

/// The default pid file of a server whose admin socket is `admin_socket`.
pub fn default_for(admin_socket: &Path) -> PathBuf {
    admin_socket.with_file_name(DEFAULT_NAME)
}

/// A pid file this process wrote.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid and a newline to `path`, replacing what was
    /// there (a predecessor's, or a crashed server's) in one rename, so a
    /// reader never sees a half-written number.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let pid = std::process::id();
        let tmp = path.with_file_name(format!(
            ".{}.{pid}.tmp",
            path.file_name()
                .map_or_else(|| DEFAULT_NAME.into(), |n| n.to_string_lossy())
        ));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut file| file.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(format!(
                "cannot write the pid file {}: {e}; choose another place with --pid-file",
                path.display()
            ));
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// At a final stop: removes the file if it still names this process
    /// (another server may have been given the same path since).
    pub fn remove(self) {
        let ours = fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid));
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_ours() {
        let dir = std::env::temp_dir().join(format!("guestsock-pidfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guestsock.pid");
        let file = PidFile::write(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        file.remove();
        assert!(!path.exists());
        let file = PidFile::write(&path).unwrap();
        fs::write(&path, "1\n").unwrap();
        file.remove();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n", "not ours: kept");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            default_for(Path::new("/run/guestsock/admin.sock")),
            Path::new("/run/guestsock/guestsock.pid")
        );
        assert!(PidFile::write(Path::new("/nonexistent-dir/x.pid")).is_err());
    }
}
