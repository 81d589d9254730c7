#!/usr/bin/env python3
"""Docker's part of the runtime timing (issue 15): what `guestsock watch docker`
adds before a container's first command can read its key, and how often that
first command runs before the watcher registered the container (Docker has no
hook stage to close that race).

    cargo build --release && sudo python3 benches/runtime_docker.py [N]

Starts its own dockerd (Debian's docker.io: vfs, no bridge, no iptables, its
own sockets and directories under a temporary directory), imports a
busybox-static root filesystem with the release guestsock as the image, and
runs N containers of each kind, one at a time, each with the socket directory
at /dev/lxd and the label io.guestsock.config.user.foo:

  glue      no watcher: `docker create`, the instance registered by hand with
            the container's cgroup (/docker/<id>), then `docker start -a`:
            the key is there before the first command runs (the baseline).
  once      the watcher running, `docker run --rm` whose command reads the key
            once: how often that first read is refused (403, not registered
            yet).
  retry     the watcher running, `docker run --rm` whose command reads the key
            until it gets it, every 2 ms: tries, and the time from the first
            command to the value.
  bare      no watcher, nothing registered, `docker run --rm` reading once
            (always refused): `docker run` itself, to compare with `once`.

Times inside the container come from adjtimex (microseconds); wall times are
`docker run` (or create + register + start + rm) as the host sees it. Prints
medians and 90th percentiles.
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.path.join(ROOT, "target", "release", "guestsock")
DOCKER = "/usr/bin/docker"
BUSYBOX = "/bin/busybox"

# The container's command: read the key once (MODE=once), or until it is
# there (at most 2,000 tries, about 10 s), then print the outcome, the tries
# and the microsecond clock before the first read and after the last.
SCRIPT = r"""
now() { busybox adjtimex | busybox awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d", s, u}'; }
t0=$(now); n=1
until /bin/guestsock query /1.0/config/user.foo >/dev/null 2>&1; do
    if [ "$MODE" = once ] || [ $n -ge 2000 ]; then echo "fail $n $t0 $(now)"; exit 0; fi
    n=$((n+1)); busybox usleep 2000
done
echo "ok $n $t0 $(now)"
"""


def need(ok, message):
    if not ok:
        raise SystemExit(message)


def rootfs(tmp):
    root = os.path.join(tmp, "rootfs")
    for d in ["bin", "proc", "sys", "dev/lxd", "tmp", "etc"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin/sh"))
    shutil.copy(BIN, os.path.join(root, "bin/guestsock"))
    for line in subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout.splitlines():
        path = line.split("=>")[-1].split()[0] if line.strip() else ""
        if path.startswith("/"):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            shutil.copy(path, root + path)
    with open(os.path.join(root, "bench.sh"), "w") as f:
        f.write(SCRIPT)
    tarball = os.path.join(tmp, "rootfs.tar")
    subprocess.run(["tar", "-C", root, "-cf", tarball, "."], check=True)
    return tarball


def admin_call(admin, method, url, body=b""):
    s = socket.socket(socket.AF_UNIX)
    s.connect(admin)
    s.sendall(f"{method} {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    need(reply.startswith(b"HTTP/1.1 200"), reply[:300])


def stats(values, unit="", scale=1.0):
    values = sorted(v * scale for v in values)
    if not values:
        return "-"
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    unit = f" {unit}" if unit else ""
    return f"median {statistics.median(values):.1f}{unit}, p90 {p90:.1f}{unit}"


def main():
    need(os.geteuid() == 0, "run it as root (it starts dockerd)")
    need(os.path.exists(BIN), "build it first: cargo build --release")
    need(shutil.which("dockerd") and os.path.exists(DOCKER), "apt-get install docker.io")
    need(os.path.exists(BUSYBOX), "apt-get install busybox-static")
    tmp = tempfile.mkdtemp(prefix="guestsock-bench-docker-")
    os.chmod(tmp, 0o755)
    procs = []
    dsock = os.path.join(tmp, "docker.sock")
    docker = [DOCKER, "--host", f"unix://{dsock}"]
    try:
        admin = os.path.join(tmp, "admin.sock")
        guest_dir = os.path.join(tmp, "guest")
        procs.append(subprocess.Popen(
            [BIN, "serve", "--socket", os.path.join(guest_dir, "sock"), "--admin-socket", admin,
             "--state-dir", os.path.join(tmp, "state")], stderr=subprocess.DEVNULL))
        log = open(os.path.join(tmp, "dockerd.log"), "w")
        dockerd = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none",
             "--storage-driver=vfs", f"--data-root={tmp}/data", f"--exec-root={tmp}/exec",
             f"--pidfile={tmp}/dockerd.pid", "--containerd-namespace=guestsock-bench",
             f"--host=unix://{dsock}"], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while subprocess.run(docker + ["version"], capture_output=True).returncode != 0:
            need(time.monotonic() < deadline and dockerd.poll() is None, "dockerd did not start")
            time.sleep(0.1)
        subprocess.run(docker + ["import", rootfs(tmp), "gs-bench:1"], check=True,
                       capture_output=True)
        label = ["--label", "io.guestsock.config.user.foo=bar"]
        common = ["--network", "none", "-v", f"{guest_dir}:/dev/lxd"] + label

        def run(mode, args):
            start = time.monotonic()
            out = subprocess.run(args, capture_output=True, text=True)
            wall = time.monotonic() - start
            need(out.returncode == 0, f"{mode}: {out.stderr}")
            status, tries, t0, t1 = out.stdout.split()
            return status, int(tries), (int(t1) - int(t0)) / 1e6, wall

        def docker_run(mode):
            return run(mode, docker + ["run", "--rm", "-e", f"MODE={mode}"] + common
                       + ["gs-bench:1", "/bin/sh", "/bench.sh"])

        def glue():
            start = time.monotonic()
            cid = subprocess.run(docker + ["create", "-e", "MODE=retry"] + common
                                 + ["gs-bench:1", "/bin/sh", "/bench.sh"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            name = f"glue-{cid[:12]}"
            admin_call(admin, "POST", "/1.0/instances", json.dumps(
                {"name": name, "match": {"cgroup": f"/docker/{cid}"},
                 "config": {"user.foo": "bar"}}).encode())
            out = subprocess.run(docker + ["start", "-a", cid], capture_output=True, text=True)
            subprocess.run(docker + ["rm", cid], capture_output=True, check=True)
            wall = time.monotonic() - start
            admin_call(admin, "DELETE", f"/1.0/instances/{name}")
            status, tries, t0, t1 = out.stdout.split()
            return status, int(tries), (int(t1) - int(t0)) / 1e6, wall

        results = {}
        # Warm-up (first container start pays for caches).
        docker_run("once")
        results["bare"] = [docker_run("once") for _ in range(N)]
        results["glue"] = [glue() for _ in range(N)]
        watch_log = open(os.path.join(tmp, "watch.log"), "w")
        procs.append(subprocess.Popen([BIN, "watch", "docker", "--admin", admin,
                                       "--docker-socket", dsock], stderr=watch_log))
        time.sleep(1)
        results["once"] = [docker_run("once") for _ in range(N)]
        results["retry"] = [docker_run("retry") for _ in range(N)]

        print(f"Docker {subprocess.run(docker + ['version', '-f', '{{.Server.Version}}'], capture_output=True, text=True).stdout.strip()}, "
              f"N = {N} containers of each kind, one at a time")
        for kind in ["bare", "glue", "once", "retry"]:
            rows = results[kind]
            ok = sum(1 for r in rows if r[0] == "ok")
            print(f"{kind:6} wall {stats([r[3] for r in rows], 'ms', 1000)}; "
                  f"first command to value {stats([r[2] for r in rows if r[0] == 'ok'], 'ms', 1000)}; "
                  f"read on the first try {sum(1 for r in rows if r[0] == 'ok' and r[1] == 1)}/{len(rows)}, "
                  f"read at all {ok}/{len(rows)}; "
                  f"tries {stats([r[1] for r in rows if r[0] == 'ok'])}")
        late = [r[2] for r in results["retry"] if r[1] > 1]
        print(f"retry: first read refused in {len(late)}/{N} containers; "
              f"for those, the wait until the value: {stats(late, 'ms', 1000)}")
    finally:
        ids = subprocess.run(docker + ["ps", "-aq"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(docker + ["rm", "-f"] + ids, capture_output=True)
        for p in procs:
            p.terminate()
            p.wait()
        if "dockerd" in locals():
            dockerd.terminate()
            dockerd.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


main()
