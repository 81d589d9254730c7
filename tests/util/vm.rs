//! A real VM for the tests (issue 25): Debian's QEMU under TCG (never KVM:
//! `/dev/kvm` on these machines only runs guest kernels built for its
//! hypervisor), a vsock device served over vhost-user by its own
//! `vhost-device-vsock` process (hybrid vsock: a guest's `connect(CID 2,
//! port P)` arrives on the host as a connection to the unix socket
//! `<uds>_P`), Debian's cloud kernel unpacked (never installed), and an
//! initramfs made here from busybox-static, the `guestsock` binary under
//! test with its libraries, the vsock modules and an `/init` script.
//!
//! Nothing here touches the host's `/dev/vsock`, AF_VSOCK or `vhost_vsock`:
//! the host side is unix sockets only. QEMU and vhost-device-vsock are
//! started with the command lines of docs/vms.md, taken by their text.
//!
//! The kernel and vhost-device-vsock are cached under `target/vm-cache`
//! (or `$GUESTSOCK_VM_CACHE`) by `tests/vm/prepare.sh`, which `./test.sh`
//! runs; a missing prerequisite fails the test with the command that
//! brings it. Everything a VM starts is killed on drop.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::docs::Doc;
use super::rootfs::Rootfs;
use super::{TempDir, tool};

/// How long a VM may take to boot and run its script under TCG on a shared,
/// loaded machine before the test counts it as hung (a boot takes seconds).
pub const VM_PATIENCE: Duration = Duration::from_secs(180);

/// The vsock modules of Debian's cloud kernel, in the order they load
/// (each needs the ones before it).
pub const VSOCK_MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// The line the guest's `/init` prints once the vsock modules are loaded.
pub const GUEST_UP: &str = "GUESTSOCK-VM-UP";

/// The line it prints after the test's script, before powering off.
pub const GUEST_DONE: &str = "GUESTSOCK-VM-DONE";

/// Where the kernel and vhost-device-vsock are cached.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GUESTSOCK_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vm-cache"))
}

/// What booting a VM needs, every piece checked.
pub struct Kit {
    /// The directory holding `vhost-device-vsock`, put first on `PATH`.
    pub tools_bin: PathBuf,
    /// The guest kernel (`vmlinuz-*-cloud-amd64`).
    pub kernel: PathBuf,
    /// Its modules' directory (`lib/modules/<release>`).
    pub modules: PathBuf,
}

/// Fails, naming how to get it, unless `what` was prepared.
fn prepared(what: &str, found: bool, how: &str) {
    assert!(
        found,
        "{what} is missing: run `tests/vm/prepare.sh` as root (it {how}), or ./test.sh, which runs it"
    );
}

/// The one entry of `dir` whose name starts with `prefix`, if there is
/// exactly one.
fn only_entry(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    (found.len() == 1).then(|| found.into_iter().next().unwrap())
}

/// Checks every prerequisite of a VM test: QEMU (`apt-get install
/// qemu-system-x86`), vhost-device-vsock 0.3.0 and the guest kernel (both
/// by `tests/vm/prepare.sh`).
pub fn kit() -> Kit {
    tool("qemu-system-x86_64");
    let cache = cache_dir();
    let tools_bin = cache.join("tools/bin");
    prepared(
        "vhost-device-vsock",
        tools_bin.join("vhost-device-vsock").is_file(),
        &format!(
            "runs `cargo install vhost-device-vsock --version 0.3.0 --locked --root {}`, about a minute",
            cache.join("tools").display()
        ),
    );
    let unpack = format!(
        "runs `apt-get download` of the package linux-image-cloud-amd64 depends on, and `dpkg-deb -x` into {}",
        cache.join("kernel").display()
    );
    let kernel = only_entry(&cache.join("kernel/boot"), "vmlinuz-");
    prepared("the guest kernel", kernel.is_some(), &unpack);
    let modules = only_entry(&cache.join("kernel/lib/modules"), "");
    prepared("the guest kernel's modules", modules.is_some(), &unpack);
    Kit {
        tools_bin,
        kernel: kernel.unwrap(),
        modules: modules.unwrap(),
    }
}

/// Where each module of [`VSOCK_MODULES`] is below the modules directory.
fn module_path(modules: &Path, name: &str) -> PathBuf {
    let dir = if name.starts_with("virtio") {
        "kernel/drivers/virtio"
    } else {
        "kernel/net/vmw_vsock"
    };
    let path = modules.join(dir).join(format!("{name}.ko"));
    prepared(
        &format!("the module {}", path.display()),
        path.is_file(),
        "unpacks the kernel package",
    );
    path
}

/// An initramfs in the kernel's `newc` cpio format, uncompressed
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    /// One entry; `name` without a leading `/`.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            u32::try_from(data.len()).expect("a file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("a short name"),
            0, // check
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for field in fields {
            write!(self.out, "{field:08x}").expect("write to a Vec");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Everything under `root`, parents before children, as it is
    /// (directories, regular files, symbolic links).
    fn tree(&mut self, root: &Path, rel: &Path) {
        let mut entries: Vec<_> = fs::read_dir(root.join(rel))
            .expect("read the rootfs")
            .map(|e| e.expect("rootfs entry").file_name())
            .collect();
        entries.sort();
        for name in entries {
            let rel = rel.join(name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let name = rel.to_str().expect("UTF-8 path");
            let kind = meta.file_type();
            if kind.is_dir() {
                self.entry(name, meta.mode(), (0, 0), b"");
                self.tree(root, &rel);
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                let target = target.to_str().expect("UTF-8 link").as_bytes();
                self.entry(name, meta.mode(), (0, 0), target);
            } else if kind.is_file() {
                self.entry(name, meta.mode(), (0, 0), &fs::read(&path).expect("read"));
            } else {
                assert!(kind.is_fifo() || kind.is_socket(), "{name}: unexpected");
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        self.out
    }
}

/// The guest's `/init`: mounts, loads the vsock modules in order, runs
/// `script` (busybox sh), then powers off, so QEMU exits.
fn init_script(script: &str) -> String {
    let modules: Vec<String> = VSOCK_MODULES
        .iter()
        .map(|m| format!("insmod /modules/{m}.ko || echo GUESTSOCK-VM-NO-MODULE {m}"))
        .collect();
    format!(
        "#!/bin/sh\n\
         export PATH=/bin HOME=/root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         {}\n\
         echo {GUEST_UP}\n\
         {script}\n\
         echo {GUEST_DONE}\n\
         poweroff -f\n",
        modules.join("\n")
    )
}

/// Builds the initramfs for `script` into `dest`, with the host's
/// `programs` (found on `PATH`, with their libraries) in `/bin` beside
/// busybox and guestsock,
/// and a user `guest` (uid and gid 1000); returns how long it took.
pub fn build_initramfs(kit: &Kit, script: &str, dest: &Path, programs: &[&str]) -> Duration {
    let started = Instant::now();
    let rootfs = Rootfs::busybox();
    // A debug build's symbols (most of its 50 MB) would not fit the guest's
    // memory beside its libraries once unpacked: the guest gets the code.
    let copied = rootfs.path().join("bin/guestsock");
    let stripped = Command::new(tool("strip"))
        .arg("--strip-debug")
        .arg(&copied)
        .status()
        .expect("strip");
    assert!(
        stripped.success(),
        "strip --strip-debug {}",
        copied.display()
    );
    for program in programs {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{program} is missing: install it with `apt-get install {program}`, \
                     or run ./test.sh, which installs everything the tests need"
                )
            });
        let dest = format!("bin/{program}");
        super::rootfs::copy_with_libraries(&found, rootfs.path(), &dest);
    }
    let etc = rootfs.path().join("etc");
    for (file, line) in [
        ("passwd", "guest:x:1000:1000:guest:/tmp:/bin/sh\n"),
        ("group", "guest:x:1000:\n"),
    ] {
        let mut text = fs::read_to_string(etc.join(file)).expect("read /etc file");
        text.push_str(line);
        fs::write(etc.join(file), text).expect("write /etc file");
    }
    let mut cpio = Cpio::new();
    cpio.tree(rootfs.path(), Path::new(""));
    // The kernel opens /dev/console for init before anything is mounted;
    // an initramfs must bring it (character device 5:1).
    cpio.entry("dev/console", 0o020600, (5, 1), b"");
    cpio.entry("modules", 0o040755, (0, 0), b"");
    for module in VSOCK_MODULES {
        let bytes = fs::read(module_path(&kit.modules, module)).expect("read module");
        cpio.entry(&format!("modules/{module}.ko"), 0o100644, (0, 0), &bytes);
    }
    cpio.entry("init", 0o100755, (0, 0), init_script(script).as_bytes());
    fs::write(dest, cpio.finish()).expect("write the initramfs");
    started.elapsed()
}

/// The unix socket where a guest's connections to host port `port` arrive
/// for a VM booted in `dir`: `<uds>_<port>`, which the test listens on
/// before booting (nothing queues a connection for a listener to come).
pub fn port_socket(dir: &TempDir, port: u32) -> PathBuf {
    dir.join(&format!("vsock.sock_{port}"))
}

/// A running VM: its QEMU and its own vhost-device-vsock, killed on drop.
pub struct Vm {
    /// Its directory: sockets, console log, initramfs.
    pub dir: TempDir,
    /// When QEMU was started.
    pub started: Instant,
    /// How long the initramfs took to build.
    pub initramfs_built_in: Duration,
    qemu: Child,
    vhost: Child,
}

/// Runs the `sh` block of docs/vms.md starting with `start`, exactly as
/// written (one command, `exec`ed), with `VM_DIR`, `KERNEL` and `INITRD` set
/// and the cached tools first on `PATH`.
fn doc_command(start: &str, kit: &Kit, dir: &TempDir, log: &str) -> Child {
    let block = Doc::load("docs/vms.md").take(start);
    let log = fs::File::create(dir.join(log)).expect("log file");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![kit.tools_bin.clone()];
    paths.extend(std::env::split_paths(&path));
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {block}"))
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("VM_DIR", &dir.path)
        .env("KERNEL", &kit.kernel)
        .env("INITRD", dir.join("initramfs.cpio"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {start}: {e}"))
}

impl Vm {
    /// Boots a VM in `dir` whose `/init` runs `script` once vsock is up.
    /// Listeners for the guest's connections (see [`port_socket`]) must be
    /// bound in `dir` before.
    pub fn boot(dir: TempDir, script: &str) -> Vm {
        Vm::boot_with(dir, script, &[])
    }

    /// [`Vm::boot`], with the host's `programs` in the guest's `/bin`.
    pub fn boot_with(dir: TempDir, script: &str, programs: &[&str]) -> Vm {
        let kit = kit();
        let initramfs_built_in =
            build_initramfs(&kit, script, &dir.join("initramfs.cpio"), programs);
        let mut vhost = doc_command("vhost-device-vsock", &kit, &dir, "vhost.log");
        let control = dir.join("vhost.sock");
        let deadline = Instant::now() + VM_PATIENCE;
        while !control.exists() {
            if let Ok(Some(status)) = vhost.try_wait() {
                panic!(
                    "vhost-device-vsock exited ({status}): {}",
                    fs::read_to_string(dir.join("vhost.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vhost-device-vsock never listened"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let qemu = doc_command("qemu-system-x86_64", &kit, &dir, "qemu.log");
        Vm {
            dir,
            started,
            initramfs_built_in,
            qemu,
            vhost,
        }
    }

    /// What the guest printed on its serial console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The console, QEMU's and vhost-device-vsock's output, for a message.
    pub fn report(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "console:\n{}\nqemu:\n{}\nvhost-device-vsock:\n{}",
            self.console(),
            read("qemu.log"),
            read("vhost.log")
        )
    }

    /// Waits until the console shows `needle`; fails if QEMU exits first
    /// or [`VM_PATIENCE`] passes.
    pub fn wait_for_console(&mut self, needle: &str) {
        let deadline = self.started + VM_PATIENCE;
        loop {
            if self.console().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                // The file may have been written just before the exit.
                if self.console().contains(needle) {
                    return;
                }
                panic!(
                    "QEMU exited ({status}) before {needle:?}: {}",
                    self.report()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console in {VM_PATIENCE:?}: {}",
                self.report()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for QEMU to exit (the guest powers off after its script).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = self.started + VM_PATIENCE;
        loop {
            if let Some(status) = self.qemu.try_wait().expect("wait for QEMU") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU did not exit: {}",
                self.report()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for child in [&mut self.qemu, &mut self.vhost] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
