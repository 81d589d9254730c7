#!/usr/bin/env python3
"""Server memory per idle connection: opens N keep-alive connections (each
having made one request), then N websocket event subscribers, against a
release build of guestsock, and prints the growth of the server's RSS
divided by N for each.

    cargo build --release && python3 benches/idle_memory.py [N]
"""
import json, os, resource, shutil, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "guestsock")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def recv_until(s, marker):
    data = b""
    while marker not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"closed early: {data!r}")
        data += chunk
    return data


KEEP_ALIVE = b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\n\r\n"
WEBSOCKET = (b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def measure(label, request, answered):
    """Starts a fresh server, opens N connections that each send `request`
    and wait for `answered`, and prints the RSS growth per connection."""
    tmp = tempfile.mkdtemp(prefix="guestsock-idle-")
    sock = os.path.join(tmp, "guest", "sock")
    uid = os.getuid()
    with open(os.path.join(tmp, "i.json"), "w") as f:
        json.dump({"instances": [{"name": "c1", "match": {"uid_range": [uid, 1]},
                                  "root_uid": uid, "config": {"user.foo": "bar"}}]}, f)
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket",
                               os.path.join(tmp, "admin.sock"), "--state-dir",
                               os.path.join(tmp, "state"), "--instances",
                               os.path.join(tmp, "i.json"), "--rate-limit", "0",
                               "--max-per-instance", str(N + 10)], stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.01)
    time.sleep(0.2)
    conns = []
    base = rss_kib(server.pid)
    for _ in range(N):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(request)
        recv_until(s, answered)
        conns.append(s)
    time.sleep(0.5)
    after = rss_kib(server.pid)
    print(f"{N} idle {label}: {(after - base) * 1024 / N:.0f} bytes of server RSS each "
          f"({base} -> {after} KiB)")
    for s in conns:
        s.close()
    server.terminate()
    server.wait()
    shutil.rmtree(tmp)


def measure_nginx():
    """The baseline: nginx (one worker) with N idle keep-alive connections,
    each having had one request answered; the worker's RSS growth per
    connection."""
    if not shutil.which("nginx"):
        print("nginx not installed: no baseline (apt-get install nginx)")
        return
    tmp = tempfile.mkdtemp(prefix="nginx-idle-")
    sock = os.path.join(tmp, "nginx.sock")
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections {N + 100}; }}
http {{ access_log off; keepalive_timeout 300s;
  server {{ listen unix:{sock}; location / {{ return 200 'bar'; }} }} }}""")
    master = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp],
                              stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.01)
    time.sleep(0.3)
    worker = int(subprocess.check_output(["pgrep", "-P", str(master.pid)]).split()[0])
    conns = []
    base = rss_kib(worker)
    for _ in range(N):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(KEEP_ALIVE)
        recv_until(s, b"bar")
        conns.append(s)
    time.sleep(0.5)
    after = rss_kib(worker)
    print(f"{N} idle keep-alive connections to nginx (baseline): {(after - base) * 1024 / N:.0f} "
          f"bytes of worker RSS each ({base} -> {after} KiB)")
    for s in conns:
        s.close()
    master.terminate()
    master.wait()
    shutil.rmtree(tmp)


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    measure("keep-alive connections (one request answered)", KEEP_ALIVE, b"bar")
    measure("websocket subscribers", WEBSOCKET, b"\r\n\r\n")
    measure_nginx()


main()
