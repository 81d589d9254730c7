#!/usr/bin/env python3
"""Plays systemd's part for guestsock: holds the listening sockets, starts
guestsock with them (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), waits for
READY=1 on NOTIFY_SOCKET, restarts it (SIGTERM, wait for exit, start again)
while clients keep connecting, and reports what the clients saw.

    mini_systemd.py GUESTSOCK WORKDIR INSTANCES_JSON RESTARTS

Prints one JSON object: requests, failures (with reasons), restarts done,
notifications received, and whether the socket inode stayed the same.
"""
import json, os, signal, socket, sys, threading, time

binary, work, instances, restarts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
guest_path = os.path.join(work, "guest", "sock")
admin_path = os.path.join(work, "admin.sock")
os.makedirs(os.path.dirname(guest_path), exist_ok=True)

def listener(path, mode):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, mode)
    s.listen(4096)
    return s

guest = listener(guest_path, 0o666)
admin = listener(admin_path, 0o600)
inode = os.stat(guest_path).st_ino
notify_path = os.path.join(work, "notify")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
notify.settimeout(20)
notes = []

def start():
    pid = os.fork()
    if pid == 0:
        os.dup2(guest.fileno(), 3)
        os.dup2(admin.fileno(), 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)
        env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="2",
                   LISTEN_FDNAMES="guest:admin", NOTIFY_SOCKET=notify_path)
        os.execve(binary, [binary, "serve", "--socket", guest_path, "--admin-socket", admin_path,
                           "--state-dir", os.path.join(work, "state"), "--instances", instances,
                           "--rate-limit", "0"], env)
    while True:
        msg = notify.recv(4096).decode()
        notes.append(msg)
        if "READY=1" in msg:
            return pid

stop = False
results = {"requests": 0, "failures": []}
lock = threading.Lock()

def client():
    while not stop:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(guest_path)
            s.sendall(b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            s.close()
            ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"bar")
            with lock:
                results["requests"] += 1
                if not ok:
                    results["failures"].append(data[:80].decode(errors="replace") or "EOF")
        except OSError as e:
            with lock:
                results["requests"] += 1
                results["failures"].append(str(e))

pid = start()
threads = [threading.Thread(target=client) for _ in range(4)]
for t in threads:
    t.start()
for _ in range(restarts):
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        results["failures"].append(f"guestsock exited with status {status}")
    # Connections made now wait in the backlog for the next process.
    time.sleep(0.2)
    pid = start()
time.sleep(0.3)
stop = True
for t in threads:
    t.join()
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
results["restarts"] = restarts
results["notifications"] = notes
results["same_inode"] = os.path.exists(guest_path) and os.stat(guest_path).st_ino == inode
print(json.dumps(results))
