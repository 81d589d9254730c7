#!/usr/bin/env python3
"""Many websocket subscribers, each connected as a different instance, with
Python's websocket-client over the guestsock unix socket.

    python3 ws_subscribers.py SOCKET PER_INSTANCE < "cgroup.procs-path name" lines

For each line, the process moves itself into that cgroup (so the server
identifies the connection as that instance at accept), opens PER_INSTANCE
subscriptions to /1.0/events and completes their handshakes. It prints
"ready" and waits for a line on stdin (the test then changes user.who of
every instance to the instance's name). It then reads one event from every
connection, checks that its value names the connection's own instance, and
checks that nothing else arrives on any of them. Prints "ok N" or exits
non-zero with what went wrong.
"""
import json
import os
import resource
import select
import socket
import sys

import websocket


def main():
    path, per = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pairs = [line.split() for line in sys.stdin.readline().strip().split(";") if line]
    conns = []
    for procs, name in pairs:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        for _ in range(per):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            ws = websocket.create_connection("ws://lxd/1.0/events", socket=s, timeout=30)
            conns.append((name, ws))
    print("ready", flush=True)
    sys.stdin.readline()
    for name, ws in conns:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                break
        event = json.loads(data)
        if event["type"] != "config" or event["metadata"]["key"] != "user.who":
            sys.exit(f"{name}: unexpected event {event}")
        if event["metadata"]["value"] != name:
            sys.exit(f"{name}: got another instance's event: {event}")
    # Nothing more may arrive (pings aside) on any connection.
    by_fd = {ws.sock.fileno(): (name, ws) for name, ws in conns}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(500):
        name, ws = by_fd[fd]
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            sys.exit(f"{name}: a second event arrived: {data!r}")
    print(f"ok {len(conns)}", flush=True)


if __name__ == "__main__":
    main()
