#!/usr/bin/env python3
"""guestsock at 65,536 instances, beside a previous release in the same run
where that is the comparison (docs: BENCHMARKS.md, "65,536 instances").

    cargo build --release
    python3 benches/scale.py [N] [OLD_BINARY]

N defaults to 65536. OLD_BINARY (optional) is a release build of an earlier
guestsock (for example `git worktree add /tmp/old <commit> && cargo build
--release` there): it is measured beside this one where the figure is a
comparison. Every instance has a uid-range rule and two small config keys;
instance 0 claims this process's uid, so this process is its guest.

Figures:
  register   N instances registered durably by 64 concurrent admin clients
             (benches/admin_post.c: keep-alive connections, one POST per
             instance, each answered only once durable)
  batch      N instances in one batch call (POST /1.0/instances with
             {"instances": [...]}), durable when answered
  cold       cold start at N instances: exec to the first answer
  handoff    SIGHUP handoff at N instances under 4 guest client loops
             (connect, GET, close): worst request latency and failures
  rss        server RSS per registered instance
  cpu        server CPU per request (keep-alive GETs, and one GET per new
             connection) with N instances vs 1
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
OLD = sys.argv[2] if len(sys.argv) > 2 else None
NEW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "guestsock")
ME = os.getuid()


def instance(i):
    first = ME if i == 0 else 1_000_000 + i * 16
    return {"name": f"i{i}", "match": {"uid_range": [first, 1 if i == 0 else 16]},
            "root_uid": first, "config": {"user.a": "x" * 8, "user.b": "y" * 8}}


class Server:
    def __init__(self, binary, tmp=None, extra=()):
        self.tmp = tmp or tempfile.mkdtemp(prefix="guestsock-scale-")
        self.binary = binary
        self.admin = os.path.join(self.tmp, "admin.sock")
        self.guest = os.path.join(self.tmp, "guest", "sock")
        self.state = os.path.join(self.tmp, "state")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--socket", self.guest, "--admin-socket", self.admin,
             "--state-dir", self.state, "--rate-limit", "0", "--max-per-instance", "100000",
             *extra],
            stderr=open(os.path.join(self.tmp, "stderr"), "a"))
        self.ready = self.wait_answer()

    def wait_answer(self):
        while True:
            try:
                status, _ = call(self.admin, "GET", "/1.0")
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {open(os.path.join(self.tmp, 'stderr')).read()}")
            time.sleep(0.001)

    def rss_kib(self, pid=None):
        with open(f"/proc/{pid or self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def cpu_ns(self, pid=None):
        with open(f"/proc/{pid or self.proc.pid}/schedstat") as f:
            return int(f.read().split()[0])

    def stop(self, keep=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        for pid in serving(self.state):
            os.kill(pid, signal.SIGTERM)
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def serving(state):
    out = subprocess.run(["pgrep", "-f", state], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def read_reply(s, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        rest += chunk
    return status, rest[:length], rest[length:]


def call(path, method, url, body=b"", keep=None):
    s = keep or socket.socket(socket.AF_UNIX)
    if keep is None:
        s.connect(path)
    conn = "keep-alive" if keep else "close"
    s.sendall(f"{method} {url} HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status, reply, _ = read_reply(s)
    if keep is None:
        s.close()
    return status, reply


def admin_post():
    """benches/admin_post.c, compiled once: the concurrent clients in C, so
    that their own cost does not hide the server's."""
    binary = os.path.join(tempfile.gettempdir(), "guestsock-admin-post")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "admin_post.c")
    subprocess.run(["cc", "-O2", "-pthread", "-o", binary, source], check=True)
    return binary


def register_concurrently(server, n, clients=64):
    bodies = "".join(json.dumps(instance(i)) + "\n" for i in range(n))
    out = subprocess.run([admin_post(), server.admin, str(clients)], input=bodies,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"registration failed: {out.stderr[:300]}")
    return float(out.stdout)


def register_batch(server, n):
    body = json.dumps({"instances": [instance(i) for i in range(n)]}).encode()
    start = time.monotonic()
    status, reply = call(server.admin, "POST", "/1.0/instances", body)
    took = time.monotonic() - start
    if status != 200:
        raise SystemExit(f"batch failed: {reply[:300]}")
    return took


def handoff_under_load(server, seconds=2.0):
    stop = threading.Event()
    results = []

    def loop():
        worst, failures, count = 0.0, 0, 0
        while not stop.is_set():
            t = time.monotonic()
            try:
                status, body = call(server.guest, "GET", "/1.0/config/user.a")
                ok = status == 200 and body == b"x" * 8
            except OSError:
                ok = False
            worst = max(worst, time.monotonic() - t)
            failures += not ok
            count += 1
        results.append((worst, failures, count))

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGHUP)
    server.proc.wait(timeout=60)
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return (max(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results))


def cpu_per_request(server, requests=20000, connections=4000):
    """Server CPU ns per request: keep-alive GETs on one connection, then
    one GET per new connection."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(server.guest)
    before = server.cpu_ns()
    for _ in range(requests):
        status, _ = call(server.guest, "GET", "/1.0/config/user.a", keep=s)
        assert status == 200, status
    keep_alive = (server.cpu_ns() - before) / requests
    s.close()
    before = server.cpu_ns()
    for _ in range(connections):
        status, _ = call(server.guest, "GET", "/1.0/config/user.a")
        assert status == 200, status
    per_conn = (server.cpu_ns() - before) / connections
    return keep_alive, per_conn


def measure(binary, label, n, register_all):
    print(f"== {label} ({binary})", flush=True)
    row = {}
    server = Server(binary)
    base_rss = server.rss_kib()
    row["register"] = register_concurrently(server, n) if register_all else None
    if row["register"] is not None:
        print(f"  {n} registered by 64 concurrent clients: {row['register']:.2f} s", flush=True)
        row["rss"] = (server.rss_kib() - base_rss) * 1024 / n
        print(f"  RSS per instance: {row['rss']:.0f} bytes", flush=True)
    tmp = server.tmp
    server.stop(keep=True)
    if row["register"] is not None:
        colds = []
        for _ in range(5):
            server = Server(binary, tmp)
            colds.append(server.ready)
            server.stop(keep=True)
        colds.sort()
        row["cold"] = colds[2]
        print(f"  cold start at {n}: median {colds[2] * 1000:.0f} ms, best {colds[0] * 1000:.0f} ms "
              f"(5 starts)", flush=True)
        server = Server(binary, tmp)
        worst, failures, count = handoff_under_load(server)
        row["handoff"] = (worst, failures, count)
        print(f"  SIGHUP under 4 client loops: worst {worst * 1000:.0f} ms, "
              f"{failures} failures of {count}", flush=True)
        for pid in serving(server.state):
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def main():
    new = measure(NEW, "this build", N, True)
    old = measure(OLD, "the earlier release", N, True) if OLD else None

    print(f"== this build: one batch of {N}", flush=True)
    server = Server(NEW)
    took = register_batch(server, N)
    print(f"  batch of {N}: {took:.2f} s (durable when answered)", flush=True)
    many = cpu_per_request(server)
    server.stop()
    server = Server(NEW)
    register_batch(server, 1)
    one = cpu_per_request(server)
    server.stop()
    print(f"  CPU per request, keep-alive: {many[0] / 1000:.1f} us at {N} vs "
          f"{one[0] / 1000:.1f} us at 1 ({many[0] / one[0]:.2f}x)")
    print(f"  CPU per request, new connection each: {many[1] / 1000:.1f} us at {N} vs "
          f"{one[1] / 1000:.1f} us at 1 ({many[1] / one[1]:.2f}x)")
    if old:
        print(f"== ratio: registering {N} with 64 clients, earlier release / this build: "
              f"{old['register'] / new['register']:.1f}x")


if __name__ == "__main__":
    main()
