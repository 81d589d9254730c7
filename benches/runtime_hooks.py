#!/usr/bin/env python3
"""What `guestsock hook oci` adds to a container's start, per OCI runtime.

For each of runc, crun and podman, starts one container at a time from a
busybox-static root filesystem, with the guest socket's directory mounted at
/dev/lxd, and times the whole life of one container: create, start, its
first command (`guestsock query /1.0/config/user.foo`) done, stopped and
deleted. Two arms, run alternately so that the machine's noise hits both:

    hook     the hooks from dist/ (runc/crun: dist/oci-hooks-fragment.json;
             podman: dist/oci-hooks.d/guestsock.json), so the container is
             registered at createRuntime and removed at poststop
    no hook  the same container and mount without the hooks (its query is
             refused: nothing registered it)

Each "hook" run checks that the container read its own value and that its
instance is gone afterwards, so a broken hook cannot make it look fast.

    cargo build --release && sudo python3 benches/runtime_hooks.py [N] [RUNTIME...]

N (default 20) runs per arm; RUNTIME among runc, crun, podman (default all).
Prints the median and the spread of each arm and the median of the per-round
differences, as a Markdown table, and the hook's own time with no runtime
(`guestsock hook oci` run twice, register then remove, as the two stages do). Everything lives in a temporary directory;
crun runs as tests/runtime_crun.rs runs it (a private mount namespace with
cgroup2 unmounted, from a cgroup2 group of its own: it refuses hybrid
cgroups otherwise), podman with runc, cgroupfs, file locks and explicit
ulimits (tests/util/oci.rs says why).
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("GUESTSOCK_BIN", os.path.join(ROOT, "target", "release", "guestsock"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
RUNTIMES = sys.argv[2:] or ["runc", "crun", "podman"]
VALUE = "bench value"
COMMAND = ["/bin/guestsock", "query", "/1.0/config/user.foo"]


def dist(rel, subst):
    with open(os.path.join(ROOT, "dist", rel)) as f:
        text = f.read()
    for old, new in subst.items():
        if old in text:
            text = text.replace(old, new)
    return text


def admin_instances(admin):
    s = socket.socket(socket.AF_UNIX)
    s.connect(admin)
    s.sendall(b"GET /1.0/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])["metadata"]


def rootfs(dir):
    """busybox-static and the guestsock binary with its libraries."""
    for sub in ["bin", "proc", "sys", "dev/lxd", "tmp", "etc", "run"]:
        os.makedirs(os.path.join(dir, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(dir, "bin/busybox"))
    os.symlink("busybox", os.path.join(dir, "bin/sh"))
    shutil.copy(BIN, os.path.join(dir, "bin/guestsock"))
    for line in subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout.splitlines():
        path = line.split("=>")[-1].split()[0] if line.strip() else ""
        if path.startswith("/"):
            target = os.path.join(dir, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(path, target)
    for name, text in [("passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("group", "root:x:0:\n"),
                       ("hosts", "127.0.0.1 localhost\n"), ("resolv.conf", ""), ("hostname", "guest\n")]:
        with open(os.path.join(dir, "etc", name), "w") as f:
            f.write(text)


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    raise SystemExit("no cgroup2 mount")


def remove_cgroup_everywhere(name):
    with open("/proc/self/mountinfo") as f:
        mounts = [l.split(" - ")[0].split()[4] for l in f if l.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")]
    for m in mounts:
        top = os.path.join(m, name)
        for dirpath, dirs, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


class Bench:
    def __init__(self, runtime, tmp, admin, guest_dir, rootfs_dir):
        self.runtime, self.tmp, self.admin, self.guest_dir, self.rootfs = runtime, tmp, admin, guest_dir, rootfs_dir
        self.parent = f"guestsock-bench-{os.getpid()}-{runtime}"
        subst = {"/usr/local/bin/guestsock": os.path.abspath(BIN), "/run/guestsock/admin.sock": admin,
                 "/run/guestsock/guest": guest_dir,
                 "/var/log/guestsock-hooks.log": os.path.join(tmp, "hooks.log")}
        self.fragment = json.loads(dist("oci-hooks-fragment.json", subst))
        if runtime == "crun":
            self.group = os.path.join(cgroup2_mount(), self.parent)
            os.makedirs(self.group, exist_ok=True)
        if runtime == "podman":
            for arm in ("hook", "nohook"):
                os.makedirs(os.path.join(tmp, arm, "hooks.d"), exist_ok=True)
                with open(os.path.join(tmp, arm, "containers.conf"), "w") as f:
                    f.write(dist("containers.conf.d/guestsock.conf", subst))
                    f.write(f'\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                            f'events_logger = "file"\nlock_type = "file"\n'
                            f'tmp_dir = "{os.path.join(tmp, arm, "tmp")}"\n')
            with open(os.path.join(tmp, "hook", "hooks.d", "guestsock.json"), "w") as f:
                f.write(dist("oci-hooks.d/guestsock.json", subst))

    def prefix(self, arm):
        if self.runtime == "runc":
            return ["runc", "--root", os.path.join(self.tmp, "runc")]
        if self.runtime == "crun":
            return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(self.group, "cgroup.procs"),
                    "unshare", "-m", "--propagation", "private", "--",
                    "sh", "-c", 'umount "$0" && exec "$@"', cgroup2_mount(),
                    "crun", "--root", os.path.join(self.tmp, "crun")]
        d = os.path.join(self.tmp, arm)
        return ["env", f"CONTAINERS_CONF={d}/containers.conf", "podman", "--root", f"{d}/root",
                "--runroot", f"{d}/run", "--storage-driver", "vfs", "--hooks-dir", f"{d}/hooks.d"]

    def bundle(self, arm, cid):
        b = os.path.join(self.tmp, f"bundle-{arm}")
        os.makedirs(b, exist_ok=True)
        config = {
            "ociVersion": "1.0.2",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": COMMAND,
                        "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": True},
            "root": {"path": self.rootfs, "readonly": True},
            "hostname": "guest",
            "annotations": {"io.guestsock.config.user.foo": VALUE},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "mode=755"]}] + self.fragment["mounts"],
            "linux": {"cgroupsPath": f"/{self.parent}/{cid}",
                      "namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts", "network")]},
        }
        if arm == "hook":
            config["hooks"] = self.fragment["hooks"]
            config["annotations"].update(self.fragment["annotations"])
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(config, f)
        return b

    def once(self, arm, i):
        """One container's whole life; returns (seconds, what it printed)."""
        cid = f"bench-{arm}-{i}"
        if self.runtime in ("runc", "crun"):
            b = self.bundle(arm, cid)
            cmd = self.prefix(arm) + ["run", "--bundle", b, cid]
        else:
            cmd = self.prefix(arm) + ["run", "--rm", "--name", cid, "--network", "none",
                                      "--cgroup-parent", f"/{self.parent}",
                                      "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                      "--annotation", f"io.guestsock.config.user.foo={VALUE}",
                                      "--rootfs", self.rootfs] + COMMAND
        start = time.perf_counter()
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        took = time.perf_counter() - start
        said = out.stdout + out.stderr
        if arm == "hook":
            if out.returncode != 0 or out.stdout != VALUE:
                raise SystemExit(f"{self.runtime} with the hook: {said!r}")
            # podman's cleanup (the poststop hook) may finish after run --rm.
            deadline = time.monotonic() + 10
            while admin_instances(self.admin) and time.monotonic() < deadline:
                time.sleep(0.01)
            if admin_instances(self.admin):
                raise SystemExit(f"{self.runtime}: instance left after the container: {admin_instances(self.admin)}")
        elif "403" not in said:
            raise SystemExit(f"{self.runtime} without the hook was served?: {said!r}")
        return took

    def close(self):
        if self.runtime == "crun":
            try:
                os.rmdir(self.group)
            except OSError:
                pass
        remove_cgroup_everywhere(self.parent)


def hook_alone(admin, n):
    """The hook's own time, no runtime: register then remove a process in a
    pid namespace of its own (by that namespace: it shares this cgroup), as
    createRuntime and poststop do; seconds each."""
    init = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "1000"])
    try:
        children = f"/proc/{init.pid}/task/{init.pid}/children"
        while not open(children).read().split():
            time.sleep(0.01)
        pid = int(open(children).read().split()[0])
        times = []
        for i in range(n):
            start = time.perf_counter()
            for status in ("creating", "stopped"):
                state = json.dumps({"ociVersion": "1.0.2", "id": f"alone-{i}", "status": status,
                                    "pid": pid,
                                    "annotations": {"io.guestsock.config.user.foo": VALUE}})
                subprocess.run([BIN, "hook", "oci", "--admin", admin], input=state, text=True,
                               check=True)
            times.append(time.perf_counter() - start)
        return times
    finally:
        init.kill()
        init.wait()


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (sudo): runtimes make cgroups and namespaces")
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release (or GUESTSOCK_BIN=...)")
    rows = []
    for runtime in RUNTIMES:
        tmp = tempfile.mkdtemp(prefix="guestsock-bench-")
        os.chmod(tmp, 0o755)
        admin = os.path.join(tmp, "admin.sock")
        guest_dir = os.path.join(tmp, "guest")
        server = subprocess.Popen([BIN, "serve", "--socket", os.path.join(guest_dir, "sock"),
                                   "--admin-socket", admin, "--state-dir", os.path.join(tmp, "state")],
                                  stderr=subprocess.DEVNULL)
        bench = None
        try:
            while not os.path.exists(admin):
                time.sleep(0.01)
            rootfs(os.path.join(tmp, "rootfs"))
            bench = Bench(runtime, tmp, admin, guest_dir, os.path.join(tmp, "rootfs"))
            bench.once("hook", "warm")
            bench.once("nohook", "warm")
            hook, nohook = [], []
            for i in range(N):
                # Alternate which arm goes first in each round.
                for arm in (("hook", "nohook") if i % 2 == 0 else ("nohook", "hook")):
                    (hook if arm == "hook" else nohook).append(bench.once(arm, i))
            diffs = [h - n for h, n in zip(hook, nohook)]
            rows.append((runtime, hook, nohook, diffs))
            if runtime == RUNTIMES[-1]:
                alone = hook_alone(admin, N)
            print(f"{runtime}: done", file=sys.stderr)
        finally:
            if bench:
                bench.close()
            server.terminate()
            server.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    ms = lambda xs: statistics.median(xs) * 1000
    spread = lambda xs: f"{min(xs) * 1000:.0f}-{max(xs) * 1000:.0f}"
    print(f"\n{N} containers per arm, one at a time, arms alternated; ms, median (min-max)\n")
    print("| runtime | with the hook | without | hook adds (median of per-round differences) |")
    print("| --- | ---: | ---: | ---: |")
    for runtime, hook, nohook, diffs in rows:
        print(f"| {runtime} | {ms(hook):.0f} ({spread(hook)}) | {ms(nohook):.0f} ({spread(nohook)}) "
              f"| {ms(diffs):.1f} |")
    print(f"| (the hook alone: register + remove, no runtime) | | | {ms(alone):.1f} ({spread(alone)}) |")


if __name__ == "__main__":
    main()
