#!/usr/bin/env python3
"""Server memory for the cgroup-id cache: K "containers" (cgroups, each with
a cgroup-matched instance) create N sub-cgroups between them and connect
from each (the process moves itself into each in turn, makes one GET and
closes), then remove them all. One container fills its share of the cache
(an eighth); sixteen fill the whole bound. Prints the server's RSS at the start, after the
connections, and after the cgroups are gone (and some connections have
come from a live cgroup since), with the cache's gauge from the admin
metrics. Run as root, against a release build:

    cargo build --release && python3 benches/cgroup_cache.py [N [K]]
"""
import json, os, re, shutil, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 66000
K = int(sys.argv[2]) if len(sys.argv) > 2 else 1
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "guestsock")


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    raise SystemExit("no cgroup2 mount")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def request(path, req):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(req)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def gauge(admin, name):
    text = request(admin, b"GET /1.0/metrics HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n").decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return found.group(1) if found else "-"


GET = b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n"


def main():
    mount = cgroup2_mount()
    names = [f"guestsock-bench-{os.getpid()}-{k}" for k in range(K)]
    tops = [os.path.join(mount, name) for name in names]
    for top in tops:
        os.mkdir(top)
    tmp = tempfile.mkdtemp(prefix="guestsock-cgroups-")
    sock = os.path.join(tmp, "guest", "sock")
    admin = os.path.join(tmp, "admin.sock")
    with open(os.path.join(tmp, "i.json"), "w") as f:
        json.dump({"instances": [{"name": f"c{k}", "match": {"cgroup": f"/{name}"}}
                                 for k, name in enumerate(names)]}, f)
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", os.path.join(tmp, "state"), "--instances",
                               os.path.join(tmp, "i.json"), "--rate-limit", "0"],
                              stderr=subprocess.DEVNULL)
    own = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
    try:
        while not os.path.exists(admin):
            time.sleep(0.01)
        time.sleep(0.3)
        start = rss_kib(server.pid)
        t = time.monotonic()
        refused = 0
        for i in range(N):
            sub = os.path.join(tops[i % K], f"c{i}")
            os.mkdir(sub)
            with open(os.path.join(sub, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            if not request(sock, GET).startswith(b"HTTP/1.1 200"):
                refused += 1
        took = time.monotonic() - t
        with open(os.path.join(mount, own.lstrip("/"), "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        full = rss_kib(server.pid)
        cached_full = gauge(admin, "guestsock_cgroup_cache_entries")
        bytes_full = gauge(admin, "guestsock_cgroup_cache_bytes")
        for i in range(N):
            os.rmdir(os.path.join(tops[i % K], f"c{i}"))
        # Connections keep coming from a container's live cgroup.
        live = os.path.join(tops[0], "live")
        os.mkdir(live)
        with open(os.path.join(live, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            request(sock, GET)
            time.sleep(0.01)
            if gauge(admin, "guestsock_cgroup_cache_entries") in ("1", "-") and time.monotonic() > deadline - 25:
                break
        with open(os.path.join(mount, own.lstrip("/"), "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        os.rmdir(live)
        time.sleep(0.5)
        after = rss_kib(server.pid)
        print(f"{N} sub-cgroups in {K} container(s), one connection from each in {took:.1f} s ({refused} refused)")
        per_entry = (full - start) * 1024 / max(int(cached_full), 1) if cached_full.isdigit() else 0
        print(f"server RSS: start {start} KiB, after the connections {full} KiB "
              f"(+{per_entry:.0f} bytes per cached entry), "
              f"after the cgroups were removed {after} KiB ({after / start:.2f}x the start)")
        print(f"cache: {cached_full} entries, {bytes_full} bytes at the peak; "
              f"{gauge(admin, 'guestsock_cgroup_cache_entries')} entries, "
              f"{gauge(admin, 'guestsock_cgroup_cache_bytes')} bytes at the end")
    finally:
        server.terminate()
        server.wait()
        for top in tops:
            for entry in os.listdir(top) if os.path.isdir(top) else []:
                if entry.startswith("c") or entry == "live":
                    try:
                        os.rmdir(os.path.join(top, entry))
                    except OSError:
                        pass
            os.rmdir(top)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
