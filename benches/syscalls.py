#!/usr/bin/env python3
"""Where a flood's microseconds go: the server's CPU and system calls per
flood connection or refused request, for each shape of flood, against a
release build of guestsock, as root (real cgroups).

    cargo build --release && python3 benches/syscalls.py [SECONDS]

GUESTSOCK_BIN=path runs another build. For each shape, the flood runs twice
for SECONDS (default 3): once bare, to read the server's CPU time per unit
from /proc/PID/stat (user and system apart), and once with `strace -c -f -p`
attached, to count the system calls per unit and their share of the time in
the kernel (strace slows each call, so its times are shares, not figures).
Shapes:

- connect+close from a cgroup of no instance (tests/flood/connect_close.c);
- connect+close from a registered instance's cgroup (the same program);
- a fresh connection per `GET /1.0` from a registered instance (the way Go and
  cloud-init ask), answered 200;
- a pipeline of 200 `GET /1.0` from a registered instance over its rate
  (`--rate-limit 1 --rate-burst 1`), answered 429 (and closed at the fourth refusal, so the flooder reconnects);
- the same from a cgroup of no instance, answered 403.
"""
import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("GUESTSOCK_BIN") or os.path.join(HERE, "..", "target", "release", "guestsock")
FLOOD_SRC = os.path.join(HERE, "..", "tests", "flood", "connect_close.c")
TICK = os.sysconf("SC_CLK_TCK")

# Fresh connection per GET, or a pipeline of DEPTH requests read back, again
# and again; prints how many connections and answers it had.
CLIENT = r"""
import socket, sys, time
path, secs, depth = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
req = b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n"
conns = answers = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    # A connection that waits for its rate (back-pressure) ends with the run.
    s.settimeout(max(0.05, end - time.monotonic()))
    try:
        s.connect(path)
        conns += 1
        if depth == 1:
            s.sendall(b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
        else:
            s.sendall(req * depth)
        got = b""
        # Until the server closes (after a refusal, or the only answer) or
        # has answered the whole pipeline; a reset after the last refusal
        # (the rest of the pipeline unread) ends it too.
        while got.count(b"HTTP/1.1 ") < depth and time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        answers += got.count(b"HTTP/1.1 ")
    except OSError:
        pass
    finally:
        s.close()
print(conns, answers)
"""


def cgroup_root():
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ")
        if right.split()[0] == "cgroup2":
            return left.split()[4]
    sys.exit("no cgroup2 mount")


def in_cgroup(group, argv, **kw):
    procs = os.path.join(group, "cgroup.procs")
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs] + argv, **kw)


def cpu(pid):
    """The server's user and system CPU seconds so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def flood(shape, flooder, sock, groups):
    """Runs one shape's flood for SECONDS; returns (connections, answers)."""
    group = groups["bad"] if shape["from"] == "instance" else groups["none"]
    if shape["kind"] == "connect_close":
        p = in_cgroup(group, [flooder, sock, str(SECONDS)], stdout=subprocess.PIPE)
        made = int(p.communicate()[0] or 0)
        return made, 0
    p = in_cgroup(group, ["python3", "-c", CLIENT, sock, str(SECONDS), str(shape["depth"])],
                  stdout=subprocess.PIPE)
    conns, answers = map(int, p.communicate()[0].split())
    return conns, answers


def strace_counts(path):
    """syscall -> (calls, share of the traced time)."""
    out = {}
    for line in open(path):
        m = re.match(r"\s*([\d.]+)\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(2)), float(m.group(1)))
    return out


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the flooders live in real cgroups, and strace attaches to the server")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if not shutil.which("strace"):
        sys.exit("strace is missing: apt-get install strace")
    work = tempfile.mkdtemp(prefix="guestsock-syscalls-")
    root = cgroup_root()
    groups = {n: os.path.join(root, f"gssys-{os.getpid()}-{n}") for n in ("bad", "none")}
    for g in groups.values():
        os.mkdir(g)
    flooder = os.path.join(work, "connect_close")
    subprocess.run(["cc", "-O2", "-o", flooder, FLOOD_SRC], check=True)
    instances = {"instances": [
        {"name": "flood", "match": {"cgroup": "/" + os.path.basename(groups["bad"])}},
    ]}
    with open(os.path.join(work, "instances.json"), "w") as f:
        json.dump(instances, f)
    shapes = [
        {"name": "connect+close, no instance", "kind": "connect_close", "from": "none", "rate": "0"},
        {"name": "connect+close, registered", "kind": "connect_close", "from": "instance", "rate": "0"},
        {"name": "fresh connection per GET, 200", "kind": "get", "depth": 1, "from": "instance", "rate": "0"},
        {"name": "pipelined 200 deep, 429", "kind": "get", "depth": 200, "from": "instance", "rate": "1"},
        {"name": "pipelined 200 deep, 403", "kind": "get", "depth": 200, "from": "none", "rate": "0"},
    ]
    rows = []
    try:
        for shape in shapes:
            rows.append(measure(shape, flooder, work, groups))
    finally:
        for g in groups.values():
            for _ in range(100):
                try:
                    os.rmdir(g)
                    break
                except OSError:
                    time.sleep(0.02)
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"server CPU and system calls per unit, {SECONDS:.0f} s per flood ({version})\n")
    print("| flood | unit | units/s | µs CPU per unit (user + system) | system calls per unit (strace -c) |")
    print("| --- | --- | ---: | ---: | --- |")
    for r in rows:
        calls = ", ".join(f"{name} {n:.2f} ({share:.0f}%)" for name, n, share in r["calls"][:8])
        print(f"| {r['name']} | {r['unit']} | {r['rate']:,.0f} | {r['us']:.1f} ({r['user']:.1f} + {r['sys']:.1f}) | {calls} |")


def start_server(work, rate):
    sock, admin = os.path.join(work, "guest.sock"), os.path.join(work, "admin.sock")
    for p in (sock, admin):
        if os.path.exists(p):
            os.unlink(p)
    state = os.path.join(work, "state")
    shutil.rmtree(state, ignore_errors=True)
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", state,
                               "--instances", os.path.join(work, "instances.json"),
                               "--rate-limit", rate, "--rate-burst", "1", "--log-level", "error"],
                              stderr=subprocess.DEVNULL)
    for _ in range(250):
        if os.path.exists(admin):
            break
        time.sleep(0.02)
    return server, sock


def measure(shape, flooder, work, groups):
    # Bare: the CPU per unit.
    server, sock = start_server(work, shape["rate"])
    try:
        u0, s0 = cpu(server.pid)
        conns, answers = flood(shape, flooder, sock, groups)
        u1, s1 = cpu(server.pid)
    finally:
        server.terminate()
        server.wait()
    per_connection = shape["kind"] == "connect_close" or shape["depth"] == 1
    unit, units = ("connection", conns) if per_connection else ("answer", answers)
    units = max(units, 1)
    # Traced: the calls per unit.
    server, sock = start_server(work, shape["rate"])
    out = os.path.join(work, "strace.txt")
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(server.pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        t_conns, t_answers = flood(shape, flooder, sock, groups)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
        server.terminate()
        server.wait()
    t_units = max(t_conns if unit == "connection" else t_answers, 1)
    counts = strace_counts(out)
    calls = sorted(((name, n / t_units, share) for name, (n, share) in counts.items()),
                   key=lambda c: -c[1])
    user, sys_ = (u1 - u0) * 1e6 / units, (s1 - s0) * 1e6 / units
    return {"name": shape["name"], "unit": unit, "rate": units / SECONDS,
            "us": user + sys_, "user": user, "sys": sys_, "calls": calls}


if __name__ == "__main__":
    main()
