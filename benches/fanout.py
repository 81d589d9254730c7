#!/usr/bin/env python3
"""Event fan-out against a release build of guestsock, as root (real cgroups).

    cargo build --release && python3 benches/fanout.py [INSTANCES] [PER]

1. INSTANCES instances with PER websocket subscribers each (the process moves
   itself into each instance's cgroup to connect), one config change to each
   instance, sent one after another: per change, the time from sending the
   admin PUT to each of its subscribers holding the frame (median, worst).
2. The same changes sent all at once over 64 admin connections: the time
   from the first PUT to the last subscriber's frame (bound by the admin
   calls, each of which waits for its fsync).
3. One instance with INSTANCES * PER subscribers, one change: the time from
   the admin PUT to the last subscriber's frame (the fan-out of one event).
"""
import os, resource, select, shutil, socket, statistics, subprocess, sys, tempfile, time, json

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
PER = int(sys.argv[2]) if len(sys.argv) > 2 else 2
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "guestsock")
HANDSHAKE = (b"GET /1.0/events?type=config HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def cgroup_root():
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ")
        if right.split()[0] == "cgroup2":
            return left.split()[4]


def put(admin, name, value):
    body = value.encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect(admin)
    s.sendall(f"PUT /1.0/instances/{name}/config/user.x HTTP/1.1\r\nHost: x\r\n"
              f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def last_fanout(admin):
    """(frames, seconds) of the server's last fan-out, from its metrics."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(admin)
    s.sendall(b"GET /1.0/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    values = {}
    for line in data.decode().splitlines():
        for name in ("guestsock_fanout_seconds", "guestsock_fanout_frames"):
            if line.startswith(name + '{which="last"}'):
                values[name] = float(line.split()[-1])
    return int(values["guestsock_fanout_frames"]), values["guestsock_fanout_seconds"]


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root = cgroup_root()
    tmp = tempfile.mkdtemp(prefix="guestsock-fanout-")
    groups = [f"guestsock-fanout-{os.getpid()}-{i}" for i in range(N)]
    for g in groups:
        os.mkdir(os.path.join(root, g))
    json.dump({"instances": [{"name": f"i{i}", "match": {"cgroup": "/" + g}}
                             for i, g in enumerate(groups)]}, open(os.path.join(tmp, "i.json"), "w"))
    sock, admin = os.path.join(tmp, "g", "sock"), os.path.join(tmp, "admin.sock")
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", admin,
                               "--state-dir", os.path.join(tmp, "state"), "--instances",
                               os.path.join(tmp, "i.json"), "--rate-limit", "0",
                               "--max-per-instance", str(N * PER + 10)],
                              stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(admin):
            time.sleep(0.01)
        time.sleep(0.2)
        subs = {}  # fd -> (instance index, socket)
        for i, g in enumerate(groups):
            with open(os.path.join(root, g, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            for _ in range(PER):
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(HANDSHAKE)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += s.recv(4096)
                s.setblocking(False)
                subs[s.fileno()] = (i, s)
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        poller = select.epoll()
        for fd in subs:
            poller.register(fd, select.EPOLLIN)

        def drain(wanted, deadline):
            got = {}
            while len(got) < wanted and time.monotonic() < deadline:
                for fd, _ in poller.poll(1):
                    i, s = subs[fd]
                    if s.recv(65536):
                        got.setdefault(fd, time.monotonic())
            return got

        # 1: one change at a time.
        latencies = []
        for i in range(N):
            sent = time.monotonic()
            ack = put(admin, f"i{i}", f"a{i}")
            got = drain(PER, sent + 5)
            latencies += [t - sent for t in got.values()]
            ack.recv(4096)
            ack.close()
        latencies.sort()
        print(f"{N} instances x {PER} subscribers, one change at a time: delivery after the "
              f"admin call, median {statistics.median(latencies) * 1000:.3f} ms, "
              f"worst {latencies[-1] * 1000:.3f} ms ({len(latencies)} frames)")

        # 2: every change at once over 64 admin connections.
        start = time.monotonic()
        pending = [put(admin, f"i{i}", f"b{i}") for i in range(min(N, 64))]
        nxt = len(pending)
        got = {}
        while (len(got) < N * PER) and time.monotonic() < start + 60:
            for fd, _ in poller.poll(0):
                i, s = subs[fd]
                if s.recv(65536):
                    got.setdefault(fd, time.monotonic())
            for k, p in enumerate(pending):
                if p is None:
                    continue
                try:
                    p.setblocking(False)
                    if p.recv(4096):
                        p.close()
                        pending[k] = put(admin, f"i{nxt}", f"b{nxt}") if nxt < N else None
                        nxt += 1
                except BlockingIOError:
                    pass
        last = max(got.values()) - start if got else float("nan")
        print(f"{N} changes sent over 64 admin connections: all {len(got)} of {N * PER} "
              f"subscribers had their frame {last * 1000:.1f} ms after the first was sent "
              f"(this includes each admin call's fsync)")
        # 3: one change, every subscriber of one instance.
        for fd, (i, s) in list(subs.items()):
            poller.unregister(fd)
            s.close()
        subs.clear()
        with open(os.path.join(root, groups[0], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for _ in range(N * PER):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(HANDSHAKE)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            s.setblocking(False)
            subs[s.fileno()] = (0, s)
            poller.register(s.fileno(), select.EPOLLIN)
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        times, server_side = [], []
        for round in range(5):
            sent = time.monotonic()
            ack = put(admin, "i0", f"c{round}")
            got = drain(N * PER, sent + 10)
            times.append(max(got.values()) - sent if len(got) == N * PER else float("nan"))
            ack.recv(4096)
            ack.close()
            server_side.append(last_fanout(admin))
        print(f"one change to an instance with {N * PER} subscribers: all had the frame after "
              f"{statistics.median(times) * 1000:.1f} ms (median of 5; best "
              f"{min(times) * 1000:.1f} ms; measured by one Python client reading all of them)")
        frames, seconds = max(server_side, key=lambda fs: fs[1])
        print(f"  server side (guestsock_fanout_seconds): every frame in its subscriber's socket "
              f"after median {statistics.median(s for _, s in server_side) * 1000:.2f} ms, "
              f"worst {seconds * 1000:.2f} ms ({frames} frames)")
    finally:
        server.terminate()
        server.wait()
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for g in groups:
            try:
                os.rmdir(os.path.join(root, g))
            except OSError:
                pass
        shutil.rmtree(tmp)


main()
