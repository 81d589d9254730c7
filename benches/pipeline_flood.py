#!/usr/bin/env python3
"""A neighbour's and the admin's latency while other processes flood the
guest socket with pipelined requests, against release builds of guestsock,
as root (real cgroups). Two builds side by side in one run:

    cargo build --release && python3 benches/pipeline_flood.py [SECONDS]
    GUESTSOCK_BIN_BEFORE=/path/to/old/guestsock python3 benches/pipeline_flood.py

For each build and each flood (none; 1 and 2 processes from a registered
instance over its rate, answered 429; 1 and 2 from a cgroup of no instance,
answered 403), each flooder connects, sends 200 pipelined GETs, reads every
answer until the server closes (or resets: it closed with requests unread) or
all 200 came, and starts again, for
SECONDS (default 5). Meanwhile:

- a neighbour in another registered instance makes requests the way Go,
  cloud-init and Python with a timeout do: a fresh socket each time, a
  NON-BLOCKING connect, and a 2 s budget for the whole answer; EAGAIN at
  connect, a timeout or a wrong answer is an error;
- an admin connection opened before the flood asks GET /1.0 every 20 ms;
- a second admin connection makes a durable change (PUT of a config key)
  every 50 ms.

It prints, per build and flood: the neighbour's error rate, p50 and p99;
the admin GET's and PUT's p99; the flooders' answers per second; and the
server's CPU time per flood answer (utime+stime from /proc over the
answers the flooders read).
"""
import json, os, socket, statistics, subprocess, sys, tempfile, threading, time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
HERE = os.path.dirname(os.path.abspath(__file__))
AFTER = os.environ.get("GUESTSOCK_BIN") or os.path.join(HERE, "..", "target", "release", "guestsock")
BEFORE = os.environ.get("GUESTSOCK_BIN_BEFORE")
TICKS = os.sysconf("SC_CLK_TCK")

FLOODER = r"""
import socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
req = b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n" * 200
answers = 0
end = time.monotonic() + secs
connections = 0
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    data = b""
    try:
        s.connect(path)
        connections += 1
        s.sendall(req)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.count(b"HTTP/1.1 ") >= 200 and data.endswith(b"\n"):
                break
    except OSError:
        # A server that closes with requests unread resets the connection
        # (ECONNRESET); a full backlog refuses a connect (EAGAIN).
        pass
    finally:
        answers += data.count(b"HTTP/1.1 ")
        s.close()
print(answers, connections)
"""

NEIGHBOUR = r"""
import json, socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
times, errors, count = [], 0, 0
end = time.monotonic() + secs
while time.monotonic() < end:
    count += 1
    start = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.setblocking(False)
        s.connect(path)
        s.settimeout(2.0)
        s.sendall(b"GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            left = 2.0 - (time.monotonic() - start)
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
    except (OSError, TimeoutError):
        errors += 1
    finally:
        s.close()
    # 50 requests a second: within the default rate (100/s), as a real
    # neighbour is.
    time.sleep(0.02)
print(json.dumps({"times": times, "errors": errors, "count": count}))
"""


def cgroup_root():
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ")
        if right.split()[0] == "cgroup2" and left.split()[3] == "/":
            return left.split()[4]
    sys.exit("no cgroup2 mount")


def in_cgroup(group, argv, **kw):
    procs = os.path.join(group, "cgroup.procs")
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs] + argv, **kw)


def request(sock, method, path, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sock.sendall(head + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1])


def admin_loop(path, method, key, every, secs, out):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    end = time.monotonic() + secs
    n = 0
    while time.monotonic() < end:
        n += 1
        start = time.monotonic()
        if method == "GET":
            status = request(s, "GET", "/1.0")
        else:
            status = request(s, "PUT", f"/1.0/instances/neighbour/config/{key}", str(n).encode())
        out.append((time.monotonic() - start, status))
        time.sleep(every)


def p(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def cpu_of(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(binary, flood_kind, flooders, root):
    tmp = tempfile.mkdtemp(prefix="guestsock-bench-")
    groups = {name: os.path.join(root, f"gs-bench-{os.getpid()}-{name}") for name in ("neighbour", "flooder", "unknown")}
    for g in groups.values():
        os.mkdir(g)
    instances = {
        "instances": [
            {"name": "neighbour", "match": {"cgroup": "/" + os.path.basename(groups["neighbour"])},
             "guest_access": "any", "config": {"user.who": "neighbour"}},
            {"name": "flooder", "match": {"cgroup": "/" + os.path.basename(groups["flooder"])},
             "guest_access": "any", "config": {"user.who": "flooder"}},
        ]
    }
    inst = os.path.join(tmp, "instances.json")
    json.dump(instances, open(inst, "w"))
    sock, admin = os.path.join(tmp, "guest", "sock"), os.path.join(tmp, "admin.sock")
    # The flooder's own rate is the default (100/s, bursts of 200): a
    # pipeline of 200 uses it up, and the rest are 429s.
    server = subprocess.Popen([binary, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", os.path.join(tmp, "state"), "--instances", inst,
                               "--log-level", "error"], stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(os.path.join(tmp, "guestsock.pid")):
            break
        time.sleep(0.01)
    time.sleep(0.2)
    gets, puts = [], []
    threads = [threading.Thread(target=admin_loop, args=(admin, "GET", None, 0.02, SECONDS, gets)),
               threading.Thread(target=admin_loop, args=(admin, "PUT", "user.n", 0.05, SECONDS, puts))]
    cpu0 = cpu_of(server.pid)
    group = groups["flooder" if flood_kind == "429" else "unknown"]
    floods = [in_cgroup(group, [sys.executable, "-c", FLOODER, sock, str(SECONDS)],
                        stdout=subprocess.PIPE, text=True) for _ in range(flooders)]
    neighbour = in_cgroup(groups["neighbour"], [sys.executable, "-c", NEIGHBOUR, sock, str(SECONDS)],
                          stdout=subprocess.PIPE, text=True)
    for t in threads:
        t.start()
    answers = connections = 0
    for f in floods:
        a, c = (f.communicate()[0] or "0 0").split()
        answers, connections = answers + int(a), connections + int(c)
    result = json.loads(neighbour.communicate()[0])
    for t in threads:
        t.join()
    cpu = cpu_of(server.pid) - cpu0
    server.terminate()
    server.wait()
    for g in groups.values():
        try:
            open(os.path.join(g, "cgroup.kill"), "w").write("1")
        except OSError:
            pass
        for _ in range(100):
            try:
                os.rmdir(g)
                break
            except OSError:
                time.sleep(0.01)
    subprocess.run(["rm", "-rf", tmp])
    t = result["times"]
    return {
        "neighbour_errors": f'{result["errors"]}/{result["count"]}',
        "neighbour_p50_ms": round(p(t, 0.5) * 1000, 1),
        "neighbour_p99_ms": round(p(t, 0.99) * 1000, 1),
        "admin_get_p99_ms": round(p([x for x, _ in gets], 0.99) * 1000, 1),
        "admin_put_p99_ms": round(p([x for x, _ in puts], 0.99) * 1000, 1),
        "admin_errors": sum(1 for _, s in gets + puts if s != 200),
        "flood_answers_per_s": round(answers / SECONDS),
        "flood_connections_per_s": round(connections / SECONDS),
        "server_cpu_s": round(cpu, 2),
        "cpu_us_per_flood_answer": round(cpu / answers * 1e6, 1) if answers else None,
        "cpu_us_per_flood_connection": round(cpu / connections * 1e6, 1) if connections else None,
    }


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the neighbour and the flooders live in real cgroups")
    builds = [("after", AFTER)] + ([("before", BEFORE)] if BEFORE else [])
    for _, b in builds:
        if not os.path.exists(b):
            sys.exit(f"no binary at {b}: cargo build --release")
    root = cgroup_root()
    print(f"{SECONDS} s per row; nproc {os.cpu_count()}")
    for kind, n in [("none", 0), ("429", 1), ("429", 2), ("403", 1), ("403", 2)]:
        for name, b in builds:
            row = run(b, kind, n, root)
            print(json.dumps({"build": name, "flood": f"{n} x {kind}", **row}), flush=True)


if __name__ == "__main__":
    main()
