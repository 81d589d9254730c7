#!/usr/bin/env python3
"""Listeners of an instance's own (issue 25, item 4), as root, on a release
build:

    cargo build --release && python3 benches/own_listeners.py [SECONDS] [LISTENERS]

Part 1, fairness: one server (started by hand, nice 0, beside the flooders),
rows of SECONDS each (default 5). Flooders are connect+close loops
(benches/targets.py's, blocking), 2 or 6 of them, each on a listener of its
own: a VM's vsock socket (`<uds>_1024`, the script standing in for the VMM)
or a container's socket directory (from that container's cgroup); and, for
the comparison, the same flooders on the shared socket. Meanwhile three
neighbours (benches/targets.py's) ask for their key 40 times a second on a
fresh connection with a NON-BLOCKING connect and a 2 s budget (an error is
EAGAIN, a timeout or a wrong answer): a VM on its own vsock listener (the
agent's preamble first),
a container on its own socket directory, and a container on the shared
socket.

Part 2, scale: LISTENERS (default 1024) VM instances, each with a vsock
listener, registered through the admin API in one batch: the time the batch
takes, the server's RSS and open descriptors before and after (per
listener), and a SIGHUP handoff's stall (the longest a VM neighbour's
request waits across it, and the time from SIGHUP to the successor's pid
in the pid file).
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pipeline_flood  # noqa: E402
import priority  # noqa: E402
import targets  # noqa: E402

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
LISTENERS = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
BIN = priority.BIN
PREAMBLE = b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=1\r\n"

def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(work, instances):
    path = os.path.join(work, "instances.json")
    with open(path, "w") as fh:
        json.dump({"instances": instances}, fh)
    sock, adm = os.path.join(work, "guest", "sock"), os.path.join(work, "admin.sock")
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", adm,
                               "--state-dir", os.path.join(work, "state"), "--instances", path,
                               "--log-level", "error"], stderr=subprocess.DEVNULL)
    for _ in range(1000):
        if os.path.exists(os.path.join(work, "guestsock.pid")) or os.path.exists(adm):
            break
        time.sleep(0.01)
    time.sleep(0.3)
    return server, sock, adm


def stats(raw):
    n = priority.neighbour_stats(raw)
    return n["errors"] + n["eagain"], n["tries"], n["p99"]


def fairness(work, v2, tag):
    groups = {g: os.path.join(v2, f"{tag}-{g}") for g in ("near-c", "near-s") + tuple(f"flood{i}" for i in range(6))}
    for g in groups.values():
        os.mkdir(g)
    vmdir = os.path.join(work, "vms")
    os.mkdir(vmdir)
    uds = lambda name: os.path.join(vmdir, f"{name}.sock")  # noqa: E731
    own = lambda name: os.path.join(work, "own", name)  # noqa: E731
    instances = [
        {"name": "near-vm", "type": "virtual-machine", "config": {"user.who": "neighbour"},
         "listeners": [{"vsock": {"uds": uds("near-vm"), "vmm_uid": 0}}]},
        {"name": "near-c", "match": {"cgroup": "/" + os.path.basename(groups["near-c"])},
         "config": {"user.who": "neighbour"}, "listeners": [{"socket_dir": {"dir": own("near-c")}}]},
        {"name": "near-s", "match": {"cgroup": "/" + os.path.basename(groups["near-s"])},
         "config": {"user.who": "neighbour"}},
    ]
    for i in range(6):
        instances.append({"name": f"flood-vm{i}", "type": "virtual-machine",
                          "listeners": [{"vsock": {"uds": uds(f"flood-vm{i}"), "vmm_uid": 0}}]})
        instances.append({"name": f"flood-c{i}", "match": {"cgroup": "/" + os.path.basename(groups[f"flood{i}"])},
                          "guest_access": "any", "listeners": [{"socket_dir": {"dir": own(f"flood-c{i}")}}]})
    flooder = os.path.join(work, "flooder")
    with open(flooder + ".c", "w") as fh:
        fh.write(targets.FLOODER)
    subprocess.run(["cc", "-O2", "-o", flooder, flooder + ".c"], check=True)
    server, sock, _ = start(work, instances)
    rows = []
    try:
        for where in ("own VM listeners", "own socket dirs", "the shared socket"):
            for n in (0, 2, 6):
                if n == 0 and where != "own VM listeners":
                    continue
                floods = []
                for i in range(n):
                    group = groups[f"flood{i}"]
                    path = {"own VM listeners": uds(f"flood-vm{i}") + "_1024",
                            "own socket dirs": os.path.join(own(f"flood-c{i}"), "sock"),
                            "the shared socket": sock}[where]
                    floods.append(priority.in_cgroup(group, [flooder, path, str(SECONDS + 1.0), "blocking"],
                                                     stdout=subprocess.PIPE, text=True))
                time.sleep(0.5)
                # benches/targets.py's neighbour: non-blocking, 40 a second.
                asks = [(groups["near-c"], uds("near-vm") + "_1024", ["vm"]),
                        (groups["near-c"], os.path.join(own("near-c"), "sock"), []),
                        (groups["near-s"], sock, [])]
                near = [priority.in_cgroup(group, [sys.executable, "-c", targets.NEIGHBOUR, path,
                                                   str(SECONDS), "nonblocking", *vm],
                                           stdout=subprocess.PIPE)
                        for group, path, vm in asks]
                got = [stats(json.loads(p.communicate()[0])) for p in near]
                made = sum(int((f.communicate()[0] or "0 0").split()[0]) for f in floods)
                rows.append((where, n, got, made / (SECONDS + 1.0)))
    finally:
        server.terminate()
        server.wait()
        priority.remove_groups(groups.values())
    print("| flooders | on | VM neighbour, own vsock listener: errors, p99 | container neighbour, own socket dir | "
          "container neighbour, shared socket | flood connections/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for where, n, got, rate in rows:
        cells = " | ".join(f"{e} of {t}, {p:.1f} ms" for e, t, p in got)
        print(f"| {n} | {where if n else '-'} | {cells} | {rate:,.0f} |")


def scale(work):
    vmdir = os.path.join(work, "vms")
    os.makedirs(vmdir, exist_ok=True)
    near_uds = os.path.join(vmdir, "near.sock")
    server, _, adm = start(work, [{"name": "near", "type": "virtual-machine", "config": {"user.who": "neighbour"},
                                   "listeners": [{"vsock": {"uds": near_uds, "vmm_uid": 0}}]}])
    pid = server.pid
    rss0, fds0 = targets.rss_kib(pid), fds(pid)
    batch = {"instances": [{"name": f"vm{i}", "type": "virtual-machine",
                            "listeners": [{"vsock": {"uds": os.path.join(vmdir, f"vm{i}.sock"), "vmm_uid": 0}}]}
                           for i in range(LISTENERS)]}
    start_t = time.monotonic()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(adm)
        status = pipeline_flood.request(s, "POST", "/1.0/instances", json.dumps(batch).encode())
    took = time.monotonic() - start_t
    assert status == 200, status
    time.sleep(0.5)
    rss1, fds1 = targets.rss_kib(pid), fds(pid)
    made = sum(1 for i in range(LISTENERS) if os.path.exists(os.path.join(vmdir, f"vm{i}.sock_1024")))
    # A SIGHUP while a VM neighbour asks: its slowest request across it.
    result = {}
    stop = threading.Event()

    def ask():
        worst, errors = 0.0, 0
        while not stop.is_set():
            t = time.monotonic()
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(near_uds + "_1024")
                    s.sendall(PREAMBLE + b"GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if not data.endswith(b"neighbour"):
                        errors += 1
            except OSError:
                errors += 1
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.005)
        result["worst"], result["errors"] = worst, errors

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)
    pid_file = os.path.join(work, "guestsock.pid")
    hup = time.monotonic()
    os.kill(pid, signal.SIGHUP)
    successor = None
    while time.monotonic() - hup < 30:
        try:
            p = int(open(pid_file).read().strip())
            if p != pid:
                successor = p
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    handoff = time.monotonic() - hup
    time.sleep(1.5)
    stop.set()
    asker.join()
    server.wait()
    fds2 = fds(successor) if successor else 0
    if successor:
        os.kill(successor, signal.SIGTERM)
        for _ in range(500):
            if not os.path.exists(f"/proc/{successor}"):
                break
            time.sleep(0.01)
    print(f"\n{LISTENERS} VM instances with a vsock listener each, registered in one batch: "
          f"{took * 1000:.0f} ms ({took / LISTENERS * 1e6:.0f} µs each); {made} sockets made")
    print(f"server RSS {rss0:,} KiB -> {rss1:,} KiB ({(rss1 - rss0) * 1024 / LISTENERS:,.0f} bytes per listener); "
          f"descriptors {fds0} -> {fds1} ({(fds1 - fds0) / LISTENERS:.2f} per listener); the successor holds {fds2}")
    print(f"SIGHUP with {LISTENERS + 1} instance listeners: the successor's pid in the pid file after "
          f"{handoff * 1000:.0f} ms; a VM neighbour's slowest request across it {result['worst'] * 1000:.1f} ms, "
          f"{result['errors']} errors")


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: real cgroups")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    v2, _ = priority.mounts()
    tag = f"gsown-{os.getpid()}"
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; {SECONDS:.0f} s per row; server at nice 0, beside the flooders\n")
    for part in (lambda w: fairness(w, v2, tag), scale):
        work = tempfile.mkdtemp(prefix="guestsock-own-")
        os.chmod(work, 0o755)
        try:
            part(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
