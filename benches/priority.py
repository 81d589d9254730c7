#!/usr/bin/env python3
"""What the shipped priority buys: a neighbour's requests while other
processes flood the guest socket with connect+close, against a release build
of guestsock at nice 0 and at the priority dist/guestsock.service gives it,
side by side in one run, as root (real cgroups).

    cargo build --release && python3 benches/priority.py [SECONDS]

Two servers are started at once, on sockets of their own: one as a process
started by hand (nice 0, in whatever cpu cgroup this script runs in), one as
systemd starts the unit (its Nice= set with setpriority before exec, and a
fresh cgroup with its CPUWeight=: cpu.weight where cgroup v2 has the cpu
controller, else cpu.shares = weight * 1024 / 100 on the cgroup v1 cpu
hierarchy). Each row floods one of them, the two taking turns, for SECONDS
(default 5): 0, 1, 2 and 6 flooders, each a loop of blocking connect()+close()
(tests/flood/connect_close.c's loop, counting attempts too), spread over three
kinds of caller: a registered instance's cgroup, a cgroup no instance matches,
and a host user (uid 1000). The flooders stay in this script's cpu cgroup, as
tasks beside the nice-0 server: the hardest place for the shipped weight.

The neighbour is a registered instance in a cgroup of its own that asks
GET /1.0/config/user.who on a fresh connection each time, two ways at once:
a NON-BLOCKING connect with a 2 s budget for the whole answer (as Go,
cloud-init and Python with a timeout do: a full listen backlog is an error,
EAGAIN), and a blocking connect (which waits in the backlog). An admin
connection opened before the flood asks GET /1.0 every 20 ms.

Reported per row: the neighbour's errors and p50/p99 each way, the admin's
p99, the flooders' completed connects/s (each one the server accepts; the
backlog is drained before the next row) against their attempts/s, and the
server's CPU (utime+stime from /proc) per flood connection.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("GUESTSOCK_BIN") or os.path.join(HERE, "..", "target", "release", "guestsock")
UNIT = os.path.join(HERE, "..", "dist", "guestsock.service")
HOST_UID = 1000
TICK = os.sysconf("SC_CLK_TCK")

FLOODER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
static double elapsed(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}
int main(int argc, char **argv) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    double seconds = atof(argv[2]);
    /* benches/targets.py's non-blocking flooders: "nonblocking" third. */
    int flags = argc > 3 && argv[3][0] == 'n' ? SOCK_NONBLOCK : 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long made = 0, tried = 0;
    while ((++tried & 63) != 0 || elapsed(&start) < seconds) {
        int fd = socket(AF_UNIX, SOCK_STREAM | flags, 0);
        if (fd < 0) { perror("socket"); return 1; }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) made++;
        close(fd);
    }
    printf("%ld %ld\n", made, tried);
    return 0;
}
"""

NEIGHBOUR = r"""
import json, socket, sys, time
path, secs, blocking = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "blocking"
# On a VM's own listener (benches/own_listeners.py), the agent's preamble first.
first = b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=1\r\n" if sys.argv[4:] == ["vm"] else b""
BUDGET = 2.0
times, eagain, errors = [], 0, 0
end = time.monotonic() + secs
while time.monotonic() < end:
    start = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    try:
        if blocking:
            s.connect(path)
            s.settimeout(10)
        else:
            s.setblocking(False)
            s.connect(path)
            s.settimeout(BUDGET)
        s.sendall(first + b"GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            if not blocking:
                left = BUDGET - (time.monotonic() - start)
                if left <= 0:
                    raise TimeoutError
                s.settimeout(left)
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


def shipped():
    """Nice= and CPUWeight= from the unit's [Service] (the last of each)."""
    section, nice, weight = "", None, None
    for line in open(UNIT):
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and not line.startswith(("#", ";")) and "=" in line:
            key, value = (p.strip() for p in line.split("=", 1))
            if key == "Nice":
                nice = int(value)
            elif key == "CPUWeight":
                weight = int(value)
    if nice is None or weight is None:
        sys.exit(f"{UNIT} lacks Nice= or CPUWeight= in [Service]")
    return nice, weight


def mounts():
    """(v2 mount, v1 cpu mount or None), from /proc/self/mountinfo."""
    v2, v1cpu = None, None
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ")
        fstype, _, opts = right.split()[:3]
        point = left.split()[4]
        if fstype == "cgroup2" and v2 is None:
            v2 = point
        elif fstype == "cgroup" and "cpu" in opts.split(",") and v1cpu is None:
            v1cpu = point
    if v2 is None:
        sys.exit("no cgroup2 mount")
    return v2, v1cpu


def cpu_group(name, weight):
    """A fresh cgroup with the cpu controller given `weight` as systemd
    would: (its directory, the file written, the value)."""
    v2, v1cpu = mounts()
    if v1cpu is not None:
        d, f, v = os.path.join(v1cpu, name), "cpu.shares", weight * 1024 // 100
    else:
        if "cpu" not in open(os.path.join(v2, "cgroup.controllers")).read().split():
            sys.exit("no cgroup hierarchy on this host has the cpu controller")
        control = os.path.join(v2, "cgroup.subtree_control")
        if "cpu" not in open(control).read().split():
            with open(control, "w") as fh:
                fh.write("+cpu")
        d, f, v = os.path.join(v2, name), "cpu.weight", weight
    os.mkdir(d)
    with open(os.path.join(d, f), "w") as fh:
        fh.write(str(v))
    return d, f, v


def in_cgroup(group, argv, uid=None, **kw):
    """Starts argv inside cgroup directory `group`, as `uid` if given."""
    procs = os.path.join(group, "cgroup.procs")
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + argv
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs] + argv, **kw)


def remove_groups(groups):
    """Kills what is left in each cgroup directory and removes it."""
    for g in groups:
        try:
            with open(os.path.join(g, "cgroup.kill"), "w") as fh:
                fh.write("1")
        except OSError:
            pass
        for _ in range(200):
            try:
                os.rmdir(g)
                break
            except OSError:
                time.sleep(0.02)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def nice_of(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])


def start_server(work, label, nice=None, procs=None, flags=("--rate-limit", "0")):
    sock, admin = os.path.join(work, label, "guest.sock"), os.path.join(work, label, "admin.sock")
    os.makedirs(os.path.join(work, label))

    def as_systemd():
        if procs is not None:
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", os.path.join(work, label, "state"),
                               "--instances", os.path.join(work, "instances.json"),
                               *flags, "--log-level", "error"],
                              stderr=subprocess.DEVNULL, preexec_fn=as_systemd)
    for _ in range(500):
        if os.path.exists(admin):
            break
        time.sleep(0.02)
    return {"label": label, "proc": server, "sock": sock, "admin": admin}


def pct(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the neighbour and the flooders live in real cgroups")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if shutil.which("setpriv") is None:
        sys.exit("setpriv is missing: apt-get install util-linux")
    nice, weight = shipped()
    work = tempfile.mkdtemp(prefix="guestsock-priority-bench-")
    v2, _ = mounts()
    tag = f"gsprio-{os.getpid()}"
    groups = {n: os.path.join(v2, f"{tag}-{n}") for n in ("near", "flood", "stranger", "host")}
    for g in groups.values():
        os.mkdir(g)
    prio_dir, prio_file, prio_value = cpu_group(f"{tag}-server", weight)
    flooder = os.path.join(work, "flooder")
    with open(flooder + ".c", "w") as fh:
        fh.write(FLOODER)
    subprocess.run(["cc", "-O2", "-o", flooder, flooder + ".c"], check=True)
    os.chmod(work, 0o755)
    instances = {"instances": [
        {"name": "neighbour", "match": {"cgroup": "/" + os.path.basename(groups["near"])},
         "config": {"user.who": "neighbour"}},
        {"name": "flood", "match": {"cgroup": "/" + os.path.basename(groups["flood"])}},
    ]}
    with open(os.path.join(work, "instances.json"), "w") as fh:
        json.dump(instances, fh)
    servers = [start_server(work, "nice 0"),
               start_server(work, "shipped", nice, os.path.join(prio_dir, "cgroup.procs"))]
    for s in servers:
        s["nice"] = nice_of(s["proc"].pid)
    rows = []
    try:
        for flooders in (0, 1, 2, 6):
            for s in servers:
                rows.append(run(s, flooders, flooder, groups))
    finally:
        for s in servers:
            s["proc"].terminate()
            s["proc"].wait()
        remove_groups(list(groups.values()) + [prio_dir])
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; {SECONDS:.0f} s per row; nice 0: nice {servers[0]['nice']}, this script's cpu cgroup; "
          f"shipped: nice {servers[1]['nice']}, {prio_file} {prio_value} (Nice={nice}, CPUWeight={weight})\n")
    print("| server | flooders | non-blocking neighbour: errors (EAGAIN) | p50 | p99 "
          "| blocking neighbour: errors | p50 | p99 | admin p99 "
          "| flood connects/s accepted of attempted | server CPU per flood connection |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        nb, b = r["nb"], r["b"]
        per = f"{r['cpu_us']:.1f} µs" if r["made"] else "-"
        print(f"| {r['label']} | {r['flooders']} | {nb['errors'] + nb['eagain']} of {nb['tries']} "
              f"({nb['eagain']}) | {nb['p50']:.2f} ms | {nb['p99']:.2f} ms "
              f"| {b['errors'] + b['eagain']} of {b['tries']} | {b['p50']:.2f} ms | {b['p99']:.2f} ms "
              f"| {r['admin_p99']:.2f} ms | {r['made_rate']:,.0f} of {r['tried_rate']:,.0f} | {per} |")


def neighbour_stats(raw):
    times = sorted(t * 1000 for t in raw["times"])
    return {"errors": raw["errors"], "eagain": raw["eagain"],
            "tries": len(times) + raw["errors"] + raw["eagain"],
            "p50": pct(times, 0.50), "p99": pct(times, 0.99)}


def run(server, flooders, flooder, groups):
    sock, admin, pid = server["sock"], server["admin"], server["proc"].pid
    kinds = [(groups["flood"], None), (groups["stranger"], None), (groups["host"], HOST_UID)]
    ticks0 = cpu_ticks(pid)
    procs = [in_cgroup(*kinds[i % 3][:1], [flooder, sock, str(SECONDS + 1.0)], uid=kinds[i % 3][1],
                       stdout=subprocess.PIPE) for i in range(flooders)]
    time.sleep(0.5)
    near = [in_cgroup(groups["near"], ["python3", "-c", NEIGHBOUR, sock, str(SECONDS), mode],
                      stdout=subprocess.PIPE) for mode in ("nonblocking", "blocking")]
    a = socket.socket(socket.AF_UNIX)
    a.connect(admin)
    a.settimeout(10)
    admin_times = []
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        start = time.monotonic()
        a.sendall(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            got += a.recv(65536)
        admin_times.append((time.monotonic() - start) * 1000)
        time.sleep(0.02)
    a.close()
    nb, b = (json.loads(p.communicate()[0]) for p in near)
    counts = [p.communicate()[0].split() for p in procs]
    made = sum(int(c[0]) for c in counts)
    tried = sum(int(c[1]) for c in counts)
    time.sleep(0.5)  # the backlog drains; the server's last accepts count
    ticks = cpu_ticks(pid) - ticks0
    span = SECONDS + 1.0
    return {"label": server["label"], "flooders": flooders,
            "nb": neighbour_stats(nb), "b": neighbour_stats(b),
            "admin_p99": pct(sorted(admin_times), 0.99),
            "made": made, "made_rate": made / span, "tried_rate": tried / span,
            "cpu_us": ticks / TICK * 1e6 / made if made else 0.0}


if __name__ == "__main__":
    main()
