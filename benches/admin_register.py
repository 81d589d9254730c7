#!/usr/bin/env python3
"""Registers N instances one admin call at a time (each waiting for its 2xx,
so each is fsynced before the next starts), then with C concurrent clients,
against a release build of guestsock, and prints the time each took.

    cargo build --release && python3 benches/admin_register.py [N] [C]

The state directory is a temporary one on the same file system as /tmp.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, threading, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
C = int(sys.argv[2]) if len(sys.argv) > 2 else 8
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "guestsock")


def call(path, method, url, body):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(f"{method} {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    if not reply.startswith(b"HTTP/1.1 200"):
        raise SystemExit(reply[:200])


def run(label, names, clients):
    tmp = tempfile.mkdtemp(prefix="guestsock-bench-")
    admin = os.path.join(tmp, "admin.sock")
    server = subprocess.Popen([BIN, "serve", "--socket", os.path.join(tmp, "g", "sock"),
                               "--admin-socket", admin, "--state-dir", os.path.join(tmp, "state")],
                              stderr=subprocess.DEVNULL)
    while not os.path.exists(admin):
        time.sleep(0.01)
    time.sleep(0.1)
    bodies = [json.dumps({"name": n, "match": {"cgroup": f"/bench/{n}"},
                          "config": {"user.foo": "bar"}}).encode() for n in names]
    start = time.monotonic()

    def work(part):
        for body in part:
            call(admin, "POST", "/1.0/instances", body)

    threads = [threading.Thread(target=work, args=(bodies[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    server.terminate()
    server.wait()
    files = len(os.listdir(os.path.join(tmp, "state", "instances")))
    shutil.rmtree(tmp)
    print(f"{label}: {len(names)} instances in {took:.2f} s "
          f"({took / len(names) * 1000:.2f} ms per call, {files} files on disk)")


run("one call at a time", [f"c{i}" for i in range(N)], 1)
run(f"{C} concurrent clients", [f"c{i}" for i in range(N)], C)
