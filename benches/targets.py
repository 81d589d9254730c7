#!/usr/bin/env python3
"""Fairness round 3's targets (issue 23, item 4), measured side by side in one
run on one build, as root (real cgroups), each row marked met or missed:

    cargo build --release && python3 benches/targets.py [SECONDS]
    GUESTSOCK_BIN_BEFORE=/path/to/old/guestsock python3 benches/targets.py

Two servers at once, on sockets of their own, both with the default rate
limit: one at the priority dist/guestsock.service gives it (its Nice= and a
fresh cgroup with its CPUWeight=, as benches/priority.py applies them), one
as started by hand (nice 0, beside the flooders). Rows of SECONDS each
(default 5):

- connect+close floods (1, 2 and 6 processes; blocking and non-blocking
  connects; from a registered instance, a cgroup of no instance, and a host
  user, uid 1000, in a cgroup of no instance): every shape against the
  shipped server, and 1 and 2 flooders against the nice-0 one;
- pipelined floods, 1 and 2 processes, 200 GETs deep, reading every answer
  (benches/pipeline_flood.py's flooder), from the same three kinds of caller,
  against the shipped server.

In every row: two neighbours (two more registered instances, each in a cgroup
of its own) ask for their key on a fresh connection 40 times a second, one
with a NON-BLOCKING connect and a 2 s budget for the whole answer (Go,
cloud-init, Python with a timeout: a full backlog is an error), one with a
blocking connect; an admin connection opened before the flood asks GET /1.0
every 20 ms, a second one makes a durable PUT every 50 ms, and a new admin
connection is opened for one GET every 100 ms. After each row the server's
RSS is read from /proc. At the end each server gets SIGTERM in the middle of
6 connect+close and 2 pipelined flooders, and the time to its exit is taken.

Then `bash benches/run.sh` (its own servers, 4096 instances registered) for
the per-request CPU against nginx and against the bare epoll loop; with
GUESTSOCK_BIN_BEFORE set it also compares this build with that one
(TARGETS_SKIP_CPU=1 leaves run.sh out). GUESTSOCK_BIN names the build to
measure (default target/release/guestsock).
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pipeline_flood  # noqa: E402
import priority  # noqa: E402

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
BIN = priority.BIN
HOST_UID = 1000

# priority.py's connect+close loop, blocking or (third argument
# "nonblocking") non-blocking, printing connects completed and tried
# (EAGAIN from a full backlog is the difference).
FLOODER = priority.FLOODER

# The neighbour: priority.py's, paced to 40 requests a second (inside the
# default rate limit, as a real neighbour is).
NEIGHBOUR = priority.NEIGHBOUR.replace("time.sleep(0.002)", "time.sleep(0.025)")
assert NEIGHBOUR != priority.NEIGHBOUR


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def admin_fresh(path, secs, out):
    """A new admin connection for one GET /1.0, every 100 ms."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(path)
                status = pipeline_flood.request(s, "GET", "/1.0")
        except OSError:
            status = 0
        out.append((time.monotonic() - start, status))
        time.sleep(0.1)


def start_flood(shape, kind, n, sock, flooder, groups, secs):
    group, uid = {"registered": (groups["flood"], None), "unknown": (groups["stranger"], None),
                  "host user": (groups["host"], HOST_UID)}[kind]
    if shape == "pipelined":
        argv = [sys.executable, "-c", pipeline_flood.FLOODER, sock, str(secs)]
    else:
        argv = [flooder, sock, str(secs), shape]
    return [priority.in_cgroup(group, argv, uid=uid, stdout=subprocess.PIPE, text=True)
            for _ in range(n)]


def row(server, shape, kind, n, flooder, groups):
    sock, admin, pid = server["sock"], server["admin"], server["proc"].pid
    secs = SECONDS
    ticks0 = priority.cpu_ticks(pid)
    gets, puts, fresh = [], [], []
    # The admin's long-lived connections are open before the flood starts.
    threads = [threading.Thread(target=pipeline_flood.admin_loop,
                                args=(admin, "GET", None, 0.02, secs + 0.5, gets)),
               threading.Thread(target=pipeline_flood.admin_loop,
                                args=(admin, "PUT", "user.n", 0.05, secs + 0.5, puts)),
               threading.Thread(target=admin_fresh, args=(admin, secs + 0.5, fresh))]
    for t in threads:
        t.start()
    floods = start_flood(shape, kind, n, sock, flooder, groups, secs + 1.0)
    time.sleep(0.5)
    near = [priority.in_cgroup(groups[g], [sys.executable, "-c", NEIGHBOUR, sock, str(secs), mode],
                               stdout=subprocess.PIPE)
            for g, mode in (("near", "nonblocking"), ("near2", "blocking"))]
    nb, b = (priority.neighbour_stats(json.loads(p.communicate()[0])) for p in near)
    for t in threads:
        t.join()
    counts = [(f.communicate()[0] or "0 0").split() for f in floods]
    time.sleep(0.3)
    ticks = priority.cpu_ticks(pid) - ticks0
    a_ms = sorted(x * 1000 for x, _ in gets)
    p_ms = sorted(x * 1000 for x, _ in puts)
    f_ms = sorted(x * 1000 for x, _ in fresh)
    if shape == "pipelined":  # its flooder prints answers read, connections made
        made = tried = sum(int(c[1]) for c in counts)
    else:  # connects completed, connects tried
        made, tried = sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)
    return {"server": server["label"], "shape": shape, "kind": kind, "n": n, "nb": nb, "b": b,
            "admin_get_p99": priority.pct(a_ms, 0.99), "admin_get_max": a_ms[-1] if a_ms else float("nan"),
            "admin_put_p99": priority.pct(p_ms, 0.99), "fresh_admin_max": f_ms[-1] if f_ms else float("nan"),
            "admin_errors": sum(1 for _, s in gets + puts + fresh if s != 200),
            "made": made, "tried": tried, "secs": secs + 1.0,
            "cpu_s": ticks / priority.TICK, "rss_kib": rss_kib(pid)}


def sigterm(server, flooder, groups):
    """SIGTERM in the middle of 6 connect+close and 2 pipelined flooders:
    seconds until the server has exited."""
    floods = start_flood("blocking", "unknown", 6, server["sock"], flooder, groups, 3.0)
    floods += start_flood("pipelined", "registered", 2, server["sock"], flooder, groups, 3.0)
    time.sleep(1.0)
    start = time.monotonic()
    server["proc"].send_signal(signal.SIGTERM)
    server["proc"].wait()
    took = time.monotonic() - start
    for f in floods:
        f.communicate()
    return took


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the neighbours and the flooders live in real cgroups")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if shutil.which("setpriv") is None:
        sys.exit("setpriv is missing: apt-get install util-linux")
    nice, weight = priority.shipped()
    work = tempfile.mkdtemp(prefix="guestsock-targets-")
    v2, _ = priority.mounts()
    tag = f"gstargets-{os.getpid()}"
    groups = {g: os.path.join(v2, f"{tag}-{g}") for g in ("near", "near2", "flood", "stranger", "host")}
    for g in groups.values():
        os.mkdir(g)
    prio_dir, prio_file, prio_value = priority.cpu_group(f"{tag}-server", weight)
    flooder = os.path.join(work, "flooder")
    with open(flooder + ".c", "w") as fh:
        fh.write(FLOODER)
    subprocess.run(["cc", "-O2", "-o", flooder, flooder + ".c"], check=True)
    os.chmod(work, 0o755)
    instances = {"instances": [
        {"name": "neighbour", "match": {"cgroup": "/" + os.path.basename(groups["near"])},
         "config": {"user.who": "neighbour"}},
        {"name": "neighbour2", "match": {"cgroup": "/" + os.path.basename(groups["near2"])},
         "config": {"user.who": "neighbour"}},
        {"name": "flood", "match": {"cgroup": "/" + os.path.basename(groups["flood"])},
         "guest_access": "any"},
    ]}
    with open(os.path.join(work, "instances.json"), "w") as fh:
        json.dump(instances, fh)
    # Both servers with the default rate limit (priority.py lifts it): the
    # pipelined flood from a registered instance is answered 429.
    servers = []
    for label, n, procs in (("shipped", nice, os.path.join(prio_dir, "cgroup.procs")),
                            ("nice 0", None, None)):
        s = priority.start_server(work, label, n, procs, flags=[])
        servers.append(s)
    shipped_s, hand_s = servers
    for s in servers:
        s["nice"] = priority.nice_of(s["proc"].pid)
        s["rss0"] = rss_kib(s["proc"].pid)
    kinds = ("registered", "unknown", "host user")
    rows, terms = [], {}
    try:
        for kind in kinds:
            for shape in ("blocking", "nonblocking"):
                for n in (1, 2, 6):
                    rows.append(row(shipped_s, shape, kind, n, flooder, groups))
                for n in (1, 2):
                    rows.append(row(hand_s, shape, kind, n, flooder, groups))
        for kind in kinds:
            for n in (1, 2):
                rows.append(row(shipped_s, "pipelined", kind, n, flooder, groups))
        for s in servers:
            s["rss_end"] = rss_kib(s["proc"].pid)
            terms[s["label"]] = sigterm(s, flooder, groups)
    finally:
        for s in servers:
            if s["proc"].poll() is None:
                s["proc"].kill()
                s["proc"].wait()
        priority.remove_groups(list(groups.values()) + [prio_dir])
        shutil.rmtree(work, ignore_errors=True)

    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; {SECONDS:.0f} s per row; shipped: nice {shipped_s['nice']}, {prio_file} "
          f"{prio_value} (Nice={nice}, CPUWeight={weight}); nice 0: nice {hand_s['nice']}\n")
    print("| server | flood | from | non-blocking neighbour errors | p99 | blocking neighbour errors | p99 "
          "| admin GET p99 / worst | admin PUT p99 | new admin connection worst | admin errors "
          "| flood connections/s made of tried | server CPU | RSS after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        nb, b = r["nb"], r["b"]
        print(f"| {r['server']} | {r['n']} x {r['shape']} | {r['kind']} "
              f"| {nb['errors'] + nb['eagain']} of {nb['tries']} | {nb['p99']:.1f} ms "
              f"| {b['errors'] + b['eagain']} of {b['tries']} | {b['p99']:.1f} ms "
              f"| {r['admin_get_p99']:.1f} / {r['admin_get_max']:.1f} ms | {r['admin_put_p99']:.1f} ms "
              f"| {r['fresh_admin_max']:.1f} ms | {r['admin_errors']} "
              f"| {r['made'] / r['secs']:,.0f} of {r['tried'] / r['secs']:,.0f} "
              f"| {r['cpu_s']:.2f} s of {r['secs']:.0f} | {r['rss_kib']:,} KiB |")
    for s in servers:
        print(f"\n{s['label']}: RSS {s['rss0']:,} KiB at the start, {s['rss_end']:,} KiB after every row "
              f"(largest {max(r['rss_kib'] for r in rows if r['server'] == s['label']):,} KiB); "
              f"SIGTERM under 6 connect+close and 2 pipelined flooders: exited in {terms[s['label']]:.3f} s")

    def worst(rs, f):
        return max((f(r) for r in rs), default=float("nan"))

    def errs(rs):
        return sum(r["nb"]["errors"] + r["nb"]["eagain"] + r["b"]["errors"] + r["b"]["eagain"] for r in rs)

    def err_rate(rs):
        tries = sum(r["nb"]["tries"] for r in rs)
        return sum(r["nb"]["errors"] + r["nb"]["eagain"] for r in rs) / tries if tries else float("nan")

    conn = [r for r in rows if r["server"] == "shipped" and r["shape"] != "pipelined"]
    hand1 = [r for r in rows if r["server"] == "nice 0" and r["n"] == 1]
    hand2 = [r for r in rows if r["server"] == "nice 0" and r["n"] == 2]
    pipe = [r for r in rows if r["shape"] == "pipelined"]
    p99 = lambda r: max(r["nb"]["p99"], r["b"]["p99"])  # noqa: E731
    print("\n| target | measured | |\n| --- | --- | --- |")
    checks = [
        ("shipped priority, 1/2/6 connect+close flooders: neighbour 0 errors", f"{errs(conn)} errors", errs(conn) == 0),
        ("... and p99 under 20 ms", f"worst p99 {worst(conn, p99):.1f} ms", worst(conn, p99) < 20),
        ("nice 0, 1 flooder: 0 errors", f"{errs(hand1)} errors", errs(hand1) == 0),
        ("nice 0, 2 flooders: at most 1% errors (non-blocking neighbour)", f"{err_rate(hand2) * 100:.1f}% in the worst case's sum",
         err_rate(hand2) <= 0.01),
        ("... and p99 under 50 ms", f"worst p99 {worst(hand2, p99):.1f} ms", worst(hand2, p99) < 50),
        ("pipelined floods: neighbour p99 under 20 ms", f"worst p99 {worst(pipe, p99):.1f} ms, {errs(pipe)} errors",
         worst(pipe, p99) < 20 and errs(pipe) == 0),
        ("pipelined floods: admin GET p99 under 20 ms", f"worst {worst(pipe, lambda r: r['admin_get_p99']):.1f} ms",
         worst(pipe, lambda r: r["admin_get_p99"]) < 20),
        ("pipelined floods: admin durable PUT p99 under 50 ms", f"worst {worst(pipe, lambda r: r['admin_put_p99']):.1f} ms",
         worst(pipe, lambda r: r["admin_put_p99"]) < 50),
        ("every flood: the admin connection opened before it answered under 100 ms",
         f"worst {worst(rows, lambda r: r['admin_get_max']):.1f} ms", worst(rows, lambda r: r["admin_get_max"]) < 100),
        ("every flood: a new admin connection answered under 100 ms",
         f"worst {worst(rows, lambda r: r['fresh_admin_max']):.1f} ms, {sum(r['admin_errors'] for r in rows)} admin errors",
         worst(rows, lambda r: r["fresh_admin_max"]) < 100 and sum(r["admin_errors"] for r in rows) == 0),
        ("SIGTERM honoured within 1 s under a flood", ", ".join(f"{k} {v:.3f} s" for k, v in terms.items()),
         max(terms.values()) < 1.0),
        ("server RSS bounded", f"largest {worst(rows, lambda r: r['rss_kib']):,} KiB", worst(rows, lambda r: r["rss_kib"]) < 64 * 1024),
    ]
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {verdict(ok)} |")
    sys.stdout.flush()

    if os.environ.get("TARGETS_SKIP_CPU"):
        return
    print("\nper-request CPU (bash benches/run.sh; its own servers):", flush=True)
    env = dict(os.environ, GUESTSOCK_BIN=BIN)
    subprocess.run(["bash", os.path.join(HERE, "run.sh")], check=True, env=env)


if __name__ == "__main__":
    main()
