#!/usr/bin/env python3
"""What `guestsock hook lxc` adds to an LXC container's start (and stop): real
containers from a busybox-static root filesystem, started N times each with
and without the hooks of dist/lxc/guestsock.conf, against a release build of
guestsock, alternating so that both see the same machine. Prints the median
and the 10th and 90th percentiles of each.

    cargo build --release && sudo python3 benches/runtime_hooks_lxc.py [N] [DIR]

Each start is `lxc-start -F` (foreground) of a container whose init is its
first command; "first command done" is when the first byte of that
command's output reaches lxc-start's standard output (both commands write
once, at their end), "start and stop" when lxc-start returns, after
the container has stopped and LXC has run the post-stop hook.

- plain: the mount entry only, init `echo ready`.
- true hooks: the mount entry, and /bin/true as start-host and post-stop
  hooks: what LXC's running of any hook costs (it runs each through
  /bin/sh -c and reads its output).
- hooks: the include (mount, start-host, post-stop), a labels file with one
  key, init `echo ready`: the same first command, so the difference is the
  hooks.
- hooks + query: as hooks, but the first command is `guestsock query
  /1.0/config/user.foo`, the container reading its own key through
  /dev/lxd/sock.

Needs root, Debian's lxc and busybox-static (./test.sh installs them). The
server's state directory, the root filesystem and the private lxcpath are in
a temporary directory under DIR, by default /var/tmp, on disk: each
registration and removal is fsynced, as under /var/lib/guestsock (/dev/shm,
a tmpfs, shows what is left without the disk).
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
DIR = sys.argv[2] if len(sys.argv) > 2 else "/var/tmp"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.path.join(ROOT, "target", "release", "guestsock")
INCLUDE = os.path.join(ROOT, "dist", "lxc", "guestsock.conf")
BUSYBOX = "/bin/busybox"


def rootfs(where):
    """busybox with its applets, /bin/guestsock and its libraries (as
    tests/util/rootfs.rs makes it)."""
    for sub in ["bin", "proc", "sys", "dev/lxd", "tmp", "etc", "root", "run"]:
        os.makedirs(os.path.join(where, sub), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(where, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(where, "bin", applet))
    shutil.copy(BIN, os.path.join(where, "bin", "guestsock"))
    ldd = subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        path = line.split("=>")[-1].split()[0] if line.split() else ""
        if path.startswith("/"):
            target = os.path.join(where, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(path, target)


def container(lxcpath, name, root, body):
    os.makedirs(os.path.join(lxcpath, name))
    with open(os.path.join(lxcpath, name, "config"), "w") as f:
        f.write(f"lxc.uts.name = {name}\nlxc.rootfs.path = dir:{root}\n"
                "lxc.net.0.type = empty\nlxc.console.path = none\n" + body)


def once(lxcpath, name, env):
    """One foreground run: (seconds to the first output, seconds to exit)."""
    start = time.monotonic()
    run = subprocess.Popen(["lxc-start", "-F", "-P", lxcpath, "-n", name],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env)
    line = run.stdout.read(1)
    first = time.monotonic() - start
    rest, err = run.communicate()
    total = time.monotonic() - start
    if run.returncode != 0 or not line or (line + rest).startswith(b"guestsock:"):
        raise SystemExit(f"{name}: exit {run.returncode}, output {line + rest!r}, {err.decode()}")
    return first, total


def summary(values):
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=10)
    return f"{statistics.median(ms):6.1f} ms (p10 {q[0]:5.1f}, p90 {q[-1]:5.1f})"


def main():
    if os.geteuid() != 0:
        raise SystemExit("run it as root: LXC containers and guestsock's admin socket need it")
    for need, package in [("lxc-start", "lxc"), (BUSYBOX, "busybox-static"), (BIN, None)]:
        if not shutil.which(need):
            raise SystemExit(f"{need} is missing: " + (
                f"apt-get install {package}" if package else "cargo build --release"))
    tmp = tempfile.mkdtemp(prefix="guestsock-bench-lxc-", dir=DIR)
    server = None
    try:
        socket_dir = os.path.join(tmp, "guest")
        admin = os.path.join(tmp, "admin.sock")
        server = subprocess.Popen([BIN, "serve", "--socket", os.path.join(socket_dir, "sock"),
                                   "--admin-socket", admin,
                                   "--state-dir", os.path.join(tmp, "state")],
                                  stderr=subprocess.DEVNULL)
        while not os.path.exists(admin):
            time.sleep(0.01)
        root = os.path.join(tmp, "rootfs")
        rootfs(root)
        lxcpath = os.path.join(tmp, "lxc")
        include = os.path.join(tmp, "guestsock.conf")
        with open(INCLUDE) as f:
            text = f.read()
        with open(include, "w") as f:
            f.write(text.replace("/run/guestsock/guest", socket_dir)
                    .replace("/usr/local/bin/guestsock", BIN))
        mount = f"lxc.mount.entry = {socket_dir} dev/lxd none bind,ro,create=dir 0 0\n"
        tag = os.getpid()
        kinds = {
            "plain": (f"bench-plain-{tag}", mount + "lxc.init.cmd = /bin/echo ready\n"),
            "true hooks": (f"bench-true-{tag}",
                           mount + "lxc.hook.start-host = /bin/true\n"
                           "lxc.hook.post-stop = /bin/true\n"
                           "lxc.init.cmd = /bin/echo ready\n"),
            "hooks": (f"bench-hooks-{tag}",
                      f"lxc.include = {include}\nlxc.init.cmd = /bin/echo ready\n"),
            "hooks + query": (f"bench-query-{tag}",
                              f"lxc.include = {include}\n"
                              "lxc.init.cmd = /bin/guestsock query /1.0/config/user.foo\n"),
        }
        for name, body in kinds.values():
            container(lxcpath, name, root, body)
            with open(os.path.join(lxcpath, name, "guestsock.labels"), "w") as f:
                f.write("io.guestsock.config.user.foo=bar\n")
        env = dict(os.environ, GUESTSOCK_ADMIN=admin)
        results = {kind: ([], []) for kind in kinds}
        for kind, (name, _) in kinds.items():  # warm the page cache
            once(lxcpath, name, env)
        for _ in range(N):
            for kind, (name, _) in kinds.items():
                first, total = once(lxcpath, name, env)
                results[kind][0].append(first)
                results[kind][1].append(total)
        version = subprocess.run(["lxc-start", "--version"], capture_output=True, text=True)
        print(f"LXC {version.stdout.strip()}, {N} runs each in {DIR}, median (p10, p90)")
        print(f"{'':14} {'first command done':34} start and stop")
        for kind, (firsts, totals) in results.items():
            print(f"{kind:14} {summary(firsts):34} {summary(totals)}")
        left = subprocess.run([BIN, "instance", "list", "--json", "--admin", admin],
                              capture_output=True, text=True).stdout.strip()
        print(f"instances left registered: {left}")
    finally:
        if server:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


main()
