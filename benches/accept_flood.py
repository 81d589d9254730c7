#!/usr/bin/env python3
"""A neighbour's latency while other containers flood the guest socket with
connect+close, against a release build of guestsock, as root (real cgroups).

    cargo build --release && python3 benches/accept_flood.py [SECONDS]

GUESTSOCK_BIN=path runs another build (an older release, for comparison).

For 0 (the baseline), 1, 2 and 6 flooding processes (tests/flood/connect_close.c,
each in the cgroup of a registered instance), a neighbour process in its own
cgroup makes fresh-connection GETs of its own key for SECONDS (default 5),
one after another, and times each: p50, p99 and worst. It connects with a
blocking connect(), as a plain socket does. A second neighbour connects
non-blocking (as Go and Python with a timeout do): while the flood keeps the
listen backlog full, the kernel answers its connect() with EAGAIN at once,
whatever the server does; those are counted, not timed. An admin connection
opened before the flood asks GET /1.0 every 20 ms: its worst is shown too.
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import priority  # noqa: E402  (its cgroup clean-up)

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("GUESTSOCK_BIN") or os.path.join(HERE, "..", "target", "release", "guestsock")
FLOOD_SRC = os.path.join(HERE, "..", "tests", "flood", "connect_close.c")

NEIGHBOUR = r"""
import json, socket, sys, time
path, secs, blocking = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "blocking"
times, eagain, errors = [], 0, 0
end = time.monotonic() + secs
while time.monotonic() < end:
    start = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    try:
        if not blocking:
            s.setblocking(False)
        s.connect(path)
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(b"GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        if reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"neighbour"):
            times.append(time.monotonic() - start)
        else:
            errors += 1
    except BlockingIOError:
        eagain += 1
    except Exception:
        errors += 1
    finally:
        s.close()
    time.sleep(0.002)
print(json.dumps({"times": times, "eagain": eagain, "errors": errors}))
"""


def cgroup_root():
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ")
        if right.split()[0] == "cgroup2":
            return left.split()[4]
    sys.exit("no cgroup2 mount")


def in_cgroup(group, argv, **kw):
    """Starts argv inside cgroup directory `group`."""
    procs = os.path.join(group, "cgroup.procs")
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs] + argv, **kw)


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the neighbour and the flooders live in real cgroups")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="guestsock-flood-bench-")
    root = cgroup_root()
    groups = {name: os.path.join(root, f"gsbench-{os.getpid()}-{name}") for name in ("near", "bad")}
    for g in groups.values():
        os.mkdir(g)
    flooder = os.path.join(work, "connect_close")
    subprocess.run(["cc", "-O2", "-o", flooder, FLOOD_SRC], check=True)
    instances = {"instances": [
        {"name": "neighbour", "match": {"cgroup": "/" + os.path.basename(groups["near"])},
         "config": {"user.who": "neighbour"}},
        {"name": "flood", "match": {"cgroup": "/" + os.path.basename(groups["bad"])}},
    ]}
    with open(os.path.join(work, "instances.json"), "w") as f:
        json.dump(instances, f)
    sock, admin = os.path.join(work, "guest.sock"), os.path.join(work, "admin.sock")
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", os.path.join(work, "state"),
                               "--instances", os.path.join(work, "instances.json"),
                               "--rate-limit", "0", "--log-level", "error"],
                              stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(admin):
            break
        time.sleep(0.02)
    rows = []
    try:
        for flooders in (0, 1, 2, 6):
            rows.append(run(flooders, flooder, sock, admin, groups))
    finally:
        server.terminate()
        server.wait()
        priority.remove_groups(groups.values())
        shutil.rmtree(work, ignore_errors=True)
    print(f"neighbour latency, fresh connection per GET, {SECONDS:.0f} s per row "
          f"(guestsock {subprocess.run([BIN, '--version'], capture_output=True, text=True).stdout.strip()})\n")
    print("| flooders | connects/s | neighbour GETs | p50 | p99 | worst | errors | non-blocking connects refused (EAGAIN) | admin worst |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['flooders']} | {r['rate']:,.0f} | {r['count']} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | "
              f"{r['worst']:.1f} ms | {r['errors']} | {r['eagain']} of {r['nb_tries']} | {r['admin']:.1f} ms |")


def run(flooders, flooder, sock, admin, groups):
    procs = [in_cgroup(groups["bad"], [flooder, sock, str(SECONDS + 1.0)], stdout=subprocess.PIPE)
             for _ in range(flooders)]
    time.sleep(0.5)
    near = [in_cgroup(groups["near"], ["python3", "-c", NEIGHBOUR, sock, str(SECONDS), mode],
                      stdout=subprocess.PIPE) for mode in ("blocking", "nonblocking")]
    a = socket.socket(socket.AF_UNIX)
    a.connect(admin)
    a.settimeout(10)
    admin_worst = 0.0
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        start = time.monotonic()
        a.sendall(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            got += a.recv(65536)
        admin_worst = max(admin_worst, time.monotonic() - start)
        time.sleep(0.02)
    a.close()
    blocking, nonblocking = (json.loads(p.communicate()[0]) for p in near)
    made = sum(int(p.communicate()[0] or 0) for p in procs)
    times = sorted(blocking["times"])
    return {
        "flooders": flooders,
        "rate": made / (SECONDS + 1.0),
        "count": len(times),
        "p50": statistics.median(times) * 1000,
        "p99": times[int(len(times) * 0.99) - 1] * 1000 if len(times) >= 100 else times[-1] * 1000,
        "worst": times[-1] * 1000,
        "errors": blocking["errors"] + nonblocking["errors"],
        "eagain": nonblocking["eagain"],
        "nb_tries": nonblocking["eagain"] + len(nonblocking["times"]) + nonblocking["errors"],
        "admin": admin_worst * 1000,
    }


if __name__ == "__main__":
    main()
