//! A container root filesystem made on the spot, for the real-runtime tests:
//! busybox-static (Debian's `busybox-static`) as every shell command, plus
//! the `guestsock` binary under test and the shared libraries it loads, so
//! that a process inside the container reads its metadata with the real
//! `guestsock query`, as a user's script would.
//!
//! No image registry is involved: runc, crun, podman (`--rootfs`) and LXC
//! (`lxc.rootfs.path = dir:...`) start from the directory itself; Docker
//! imports it as a tarball (`docker import`).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{TempDir, bin};

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// A root filesystem in a temporary directory, removed on drop.
pub struct Rootfs {
    /// The directory that holds the root filesystem (and nothing else).
    pub dir: TempDir,
}

impl Rootfs {
    /// busybox with every applet linked in /bin, `/bin/guestsock` with its
    /// libraries, the directories a runtime mounts over (`/proc`, `/sys`,
    /// `/dev`, `/dev/lxd`, `/tmp`) and a minimal `/etc`.
    pub fn busybox() -> Rootfs {
        assert!(
            Path::new(BUSYBOX).is_file() && is_static(BUSYBOX),
            "{BUSYBOX} (static) is missing: install it with `apt-get install busybox-static`, \
             or run ./test.sh, which installs everything the tests need"
        );
        let dir = TempDir::new();
        let root = dir.path.clone();
        for sub in ["bin", "proc", "sys", "dev/lxd", "tmp", "etc", "root", "run"] {
            fs::create_dir_all(root.join(sub)).expect("rootfs directory");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
        let applets = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        copy_with_libraries(Path::new(bin()), &root, "bin/guestsock");
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        fs::write(root.join("etc/hostname"), "guest\n").expect("hostname");
        // podman (and Docker) mount files of their own over these: in a
        // user namespace the runtime cannot create them in a root-owned /etc.
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
        fs::write(root.join("etc/resolv.conf"), "").expect("resolv.conf");
        Rootfs { dir }
    }

    /// The root filesystem's directory.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }
}

/// Whether `program` is statically linked (no `PT_INTERP`): `ldd` says so.
fn is_static(program: &str) -> bool {
    Command::new("ldd")
        .arg(program)
        .output()
        .map(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
        })
        .unwrap_or(false)
}

/// Copies `program` to `root/dest` and every shared library `ldd` names to
/// the same path under `root`, so that it runs with `root` as `/`.
pub fn copy_with_libraries(program: &Path, root: &Path, dest: &str) {
    fs::copy(program, root.join(dest)).expect("copy program");
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .expect("ldd (Debian's libc-bin)");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(library) = path {
            let target: PathBuf = root.join(library.trim_start_matches('/'));
            fs::create_dir_all(target.parent().expect("library directory")).expect("mkdir");
            fs::copy(library, &target).expect("copy library");
        }
    }
}
