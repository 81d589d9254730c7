#!/usr/bin/env python3
"""SIGHUP handoffs against a release build, as root.

    cargo build --release && python3 benches/handoff.py

1. Stuck guests: a guest holds 32 never-read 1 MiB answers (then, in a second
   run, 32 request heads it never finishes) while an admin writer (PUT on
   fresh connections) and a neighbour instance's client (GET on fresh
   connections, another uid) run; SIGHUP. Prints the slowest admin call and
   neighbour request in the 3 s after the SIGHUP, the errors, how long until
   the successor's pid was in the pid file, and how long the old process
   lived on.
2. kill -9 of the old process 0, 0.05, 0.2, 0.5 and 1 s after the successor
   exists (3,000 instances to read, a never-read answer held, writers
   running): prints whether a server answers, after how long, whether the
   pid file names it, and whether every acknowledged write is there.
"""
import json, os, signal, socket, subprocess, sys, tempfile, threading, time, shutil

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "guestsock")
NEIGHBOUR_UID = 54321


def request(path, method, uri, body=b"", timeout=20):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(f"{method} {uri} HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 "):
        raise OSError(f"no answer: {data[:40]!r}")
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def start(tmp, instances, extra=()):
    with open(os.path.join(tmp, "i.json"), "w") as f:
        json.dump({"instances": instances}, f)
    admin = os.path.join(tmp, "admin.sock")
    server = subprocess.Popen([BIN, "serve", "--socket", os.path.join(tmp, "guest", "sock"),
                               "--admin-socket", admin, "--state-dir", os.path.join(tmp, "state"),
                               "--instances", os.path.join(tmp, "i.json"), *extra],
                              stderr=open(os.path.join(tmp, "log"), "w"))
    while True:
        try:
            request(admin, "GET", "/1.0")
            return server
        except OSError:
            time.sleep(0.01)


def serving(tmp):
    out = subprocess.run(["pgrep", "-f", os.path.join(tmp, "state")], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def pid_file(tmp):
    try:
        return int(open(os.path.join(tmp, "guestsock.pid")).read())
    except (OSError, ValueError):
        return None


class Loop(threading.Thread):
    """Calls `call` until stopped, keeping (when, latency, ok)."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.samples, self.stop = call, [], threading.Event()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            t = time.monotonic()
            try:
                ok = self.call(n)
            except OSError:
                ok = False
                time.sleep(0.005)
            self.samples.append((t, time.monotonic() - t, ok, n))


NEIGHBOUR = r"""
import socket, sys, time
path, since, until = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
worst, errors, at, before = 0.0, 0, 0.0, 0.0
while time.time() < until:
    t = time.monotonic()
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(path)
        s.sendall(b"GET /1.0/config/user.k HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            c = s.recv(65536)
            if not c: break
            data += c
        s.close()
        errors += not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"v"))
    except OSError:
        errors += 1
    took = time.monotonic() - t
    if time.time() - took < since:
        before = max(before, took)
    elif took > worst:
        worst, at = took, time.time()
print(errors, worst, at, before)
"""


def stuck_run(kind):
    tmp = tempfile.mkdtemp(prefix="guestsock-handoff-")
    os.chmod(tmp, 0o755)
    uid = os.getuid()
    server = start(tmp, [
        {"name": "stuck", "match": {"uid_range": [uid, 1]}, "root_uid": uid},
        {"name": "neighbour", "match": {"uid_range": [NEIGHBOUR_UID, 1]}, "config": {"user.k": "v"}},
        {"name": "w0", "match": {"uid_range": [2_000_000, 10]}},
    ], ["--rate-limit", "0", "--max-per-instance", "1000"])
    guest, admin = os.path.join(tmp, "guest", "sock"), os.path.join(tmp, "admin.sock")
    try:
        assert request(admin, "PUT", "/1.0/instances/stuck/config/user.big", b"x" * (1 << 20))[0] == 200
        held = []
        for _ in range(32):
            s = socket.socket(socket.AF_UNIX)
            s.connect(guest)
            s.sendall(b"GET /1.0/config/user.big HTTP/1.1\r\nHost: lxd\r\n\r\n" if kind == "answers"
                      else b"GET /1.0 HTTP/1.1\r\nHost: l")
            held.append(s)
        writer = Loop(lambda n: request(admin, "PUT", "/1.0/instances/w0/config/user.n", str(n).encode())[0] == 200)
        writer.start()
        until = time.time() + 4
        # Counted from 0.5 s before the SIGHUP (the client's own start is not).
        since = time.time() + 0.5
        neighbour = subprocess.Popen(["setpriv", f"--reuid={NEIGHBOUR_UID}", f"--regid={NEIGHBOUR_UID}",
                                      "--clear-groups", "/usr/bin/python3", "-c", NEIGHBOUR, guest,
                                      str(since), str(until)],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        old = server.pid
        hup, hup_wall = time.monotonic(), time.time()
        os.kill(old, signal.SIGHUP)
        while pid_file(tmp) in (None, old):
            time.sleep(0.001)
        took_over = time.monotonic() - hup
        server.wait()
        old_lived = time.monotonic() - hup
        errors, worst, worst_at, before = neighbour.communicate()[0].split()
        writer.stop.set()
        writer.join()
        window = [s for s in writer.samples if s[0] >= hup - 0.5]
        slowest = max(s[1] for s in window)
        slowest_at = next(s[0] for s in window if s[1] == slowest) - hup
        ordered = sorted(s[1] for s in window)
        p99 = ordered[int(len(ordered) * 0.99)]
        baseline = [s[1] for s in writer.samples if s[0] < hup - 0.5]
        base_worst = max(baseline) if baseline else 0
        failed = sum(not s[2] for s in writer.samples)
        acked = max(s[3] for s in writer.samples if s[2])
        stored = json.loads(request(admin, "GET", "/1.0/instances/w0")[1])["metadata"]["config"]["user.n"]
        print(f"32 never-read 1 MiB answers" if kind == "answers" else "32 slow request heads", end=": ")
        print(f"successor's pid in the pid file {took_over * 1000:.0f} ms after SIGHUP; old process exited "
              f"after {old_lived:.1f} s; slowest admin PUT {slowest * 1000:.1f} ms ({slowest_at:+.2f} s from the SIGHUP; "
              f"99th percentile {p99 * 1000:.1f} ms; slowest in the second before {base_worst * 1000:.1f} ms; {len(window)} calls, "
              f"{failed} failed, last acked {acked}, stored {stored}); neighbour slowest GET "
              f"{float(worst) * 1000:.1f} ms ({float(worst_at) - hup_wall:+.2f} s from the SIGHUP; {float(before) * 1000:.1f} ms "
              f"before that), {errors} errors")
    finally:
        for p in serving(tmp):
            os.kill(p, signal.SIGTERM)
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


def kill_run(delay):
    tmp = tempfile.mkdtemp(prefix="guestsock-handoff-")
    uid = os.getuid()
    instances = [{"name": f"w{w}", "match": {"uid_range": [2_000_000 + w * 10, 10]}} for w in range(2)]
    instances += [{"name": f"i{i}", "match": {"uid_range": [3_000_000 + i * 10, 10]},
                   "config": {"user.a": "x"}} for i in range(3000)]
    instances.append({"name": "stuck", "match": {"uid_range": [uid, 1]}, "config": {"user.big": "x" * (1 << 20)}})
    server = start(tmp, instances, ["--rate-limit", "0"])
    guest, admin = os.path.join(tmp, "guest", "sock"), os.path.join(tmp, "admin.sock")
    try:
        held = socket.socket(socket.AF_UNIX)
        held.connect(guest)
        held.sendall(b"GET /1.0/config/user.big HTTP/1.1\r\nHost: lxd\r\n\r\n")
        writers = [Loop(lambda n, w=w: request(admin, "PUT", f"/1.0/instances/w{w}/config/user.n",
                                               str(n).encode())[0] == 200) for w in range(2)]
        for w in writers:
            w.start()
        time.sleep(0.3)
        old = server.pid
        os.kill(old, signal.SIGHUP)
        while len(serving(tmp)) < 2:
            time.sleep(0.001)
        time.sleep(delay)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        server.wait()
        answered = None
        while time.monotonic() - killed < 20:
            try:
                if request(admin, "GET", "/1.0", timeout=1)[0] == 200:
                    answered = time.monotonic() - killed
                    break
            except OSError:
                time.sleep(0.005)
        time.sleep(0.2)
        for w in writers:
            w.stop.set()
            w.join()
        pids = serving(tmp)
        kept = answered is not None and all(
            int(json.loads(request(admin, "GET", f"/1.0/instances/w{w}")[1])["metadata"]["config"]["user.n"])
            >= max(s[3] for s in writers[w].samples if s[2]) for w in range(2))
        print(f"kill -9 {delay * 1000:.0f} ms after the successor started: "
              + (f"a server answers {answered * 1000:.0f} ms after the kill" if answered is not None else "NO SERVER")
              + f"; pid file names it: {pids == [pid_file(tmp)]}; every acknowledged write kept: {kept}")
    finally:
        for p in serving(tmp):
            os.kill(p, signal.SIGTERM)
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    stuck_run("answers")
    stuck_run("heads")
    for delay in (0, 0.05, 0.2, 0.5, 1):
        kill_run(delay)
