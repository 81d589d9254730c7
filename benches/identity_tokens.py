#!/usr/bin/env python3
"""Identity tokens under load, against a release build of guestsock, as root
(real cgroups; wrk from Debian, reaching the unix socket through
benches/unixshim.c).

    cargo build --release && python3 benches/identity_tokens.py [SECONDS] [ROUNDS]

For ROUNDS rounds (default 3) of SECONDS each (default 10), alternating in
the same run:
- wrk -t1 -c64 keep-alive `GET /1.0` from a process in one instance's
  cgroup: requests per second and the server's CPU per request;
- wrk -t1 -c64 keep-alive `GET /1.0/identity/token?audience=bench` (with
  `Guestsock-Identity: true`) from the same cgroup: tokens per second and
  the server's CPU per token (loop and signer thread together);
- during each, and once with nothing else running, a neighbour in another
  instance's cgroup asks `GET /1.0` on its own keep-alive connection, one
  request after another (2 ms apart), timing each: p50, p99 and worst.
guestsock runs with --rate-limit 0 (a container minting flat out would
otherwise get 429s past 100 a second, which is the point of the limit but
not what is measured here). One token from the run is checked to be a JWT.
Prints a Markdown table of the medians over the rounds.
"""
import json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("GUESTSOCK_BIN") or os.path.join(HERE, "..", "target", "release", "guestsock")
PORT = 18081
TICK = os.sysconf("SC_CLK_TCK")


def cgroup_root():
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return fields[4]
    raise SystemExit("no cgroup v2 mount")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def in_cgroup(group):
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', group]


def wrk(group, shim, sock, path, headers):
    cmd = in_cgroup(group) + ["env", f"SHIM_PORT={PORT}", f"SHIM_PATH={sock}", f"LD_PRELOAD={shim}",
                              "wrk", "-t1", "-c64", f"-d{SECONDS:g}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(f"http://127.0.0.1:{PORT}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise SystemExit(f"wrk saw errors: {out}")
    return rate, total


NEIGHBOUR = r"""
import json, socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(10)
times = []
end = time.monotonic() + secs
request = b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n"
while time.monotonic() < end:
    start = time.monotonic()
    s.sendall(request)
    reply = b""
    while not (b"\r\n\r\n" in reply and reply.endswith(b"}\n")):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        reply += chunk
    if not reply.startswith(b"HTTP/1.1 200"):
        raise SystemExit(reply[:200])
    times.append(time.monotonic() - start)
    time.sleep(0.002)
print(json.dumps(times))
"""


def neighbour(group, sock, secs, out):
    cmd = in_cgroup(group) + [sys.executable, "-c", NEIGHBOUR, sock, str(secs)]
    out.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))


def quantiles(times):
    times = sorted(times)
    return (statistics.median(times) * 1e3, times[int(len(times) * 0.99)] * 1e3, times[-1] * 1e3)


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes real cgroups")
    for tool in ("wrk", "gcc"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    work = tempfile.mkdtemp(prefix="guestsock-tokens-")
    root = cgroup_root()
    groups = {name: os.path.join(root, f"guestsock-bench-{name}-{os.getpid()}") for name in ("minter", "neighbour")}
    for path in groups.values():
        os.mkdir(path)
    shim = os.path.join(work, "unixshim.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", shim, os.path.join(HERE, "unixshim.c"), "-ldl"], check=True)
    instances = [{"name": name, "match": {"cgroup": "/" + os.path.basename(path)}} for name, path in groups.items()]
    with open(os.path.join(work, "instances.json"), "w") as f:
        json.dump({"instances": instances}, f)
    sock = os.path.join(work, "guest", "sock")
    server = subprocess.Popen([BIN, "serve", "--socket", sock, "--admin-socket", os.path.join(work, "admin.sock"),
                               "--state-dir", os.path.join(work, "state"), "--instances", os.path.join(work, "instances.json"),
                               "--rate-limit", "0", "--max-per-instance", "100000"],
                              stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(work, "admin.sock")):
            if time.time() > deadline:
                raise SystemExit("guestsock did not start")
            time.sleep(0.05)
        time.sleep(0.2)
        # One token, looked at: a compact JWS for the minter's instance.
        sample = subprocess.run(in_cgroup(groups["minter"]) + ["curl", "-s", "--unix-socket", sock, "-H", "Guestsock-Identity: true",
                                "http://lxd/1.0/identity/token?audience=bench"], capture_output=True, text=True, check=True).stdout
        assert sample.count(".") == 2 and sample.startswith("eyJ"), sample
        rows = {"idle": [], "get": [], "token": []}
        for _ in range(ROUNDS):
            for kind in ("idle", "get", "token"):
                times = []
                before = cpu_seconds(server.pid)
                if kind == "idle":
                    neighbour(groups["neighbour"], sock, SECONDS, times)
                    rows[kind].append((None, None, quantiles(times[0])))
                    continue
                thread = threading.Thread(target=neighbour, args=(groups["neighbour"], sock, SECONDS - 1, times))
                thread.start()
                if kind == "get":
                    rate, total = wrk(groups["minter"], shim, sock, "/1.0", [])
                else:
                    rate, total = wrk(groups["minter"], shim, sock, "/1.0/identity/token?audience=bench",
                                      ["Guestsock-Identity: true"])
                thread.join()
                cpu = (cpu_seconds(server.pid) - before) / total * 1e6
                rows[kind].append((rate, cpu, quantiles(times[0])))
        print(f"settings: wrk -t1 -c64 -d{SECONDS:g}s keep-alive, {ROUNDS} rounds, medians; "
              "neighbour: one keep-alive GET /1.0 every 2 ms from another instance's cgroup; "
              "guestsock --rate-limit 0")
        print()
        print("| load from one instance (64 connections) | requests/s | server CPU per request | neighbour GET /1.0 p50 | p99 | worst |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        names = {"idle": "none", "get": "`GET /1.0` flat out", "token": "`GET /1.0/identity/token` flat out"}
        for kind in ("idle", "get", "token"):
            results = rows[kind]
            rate = statistics.median(r[0] for r in results) if results[0][0] is not None else None
            cpu = statistics.median(r[1] for r in results) if results[0][1] is not None else None
            p50 = statistics.median(r[2][0] for r in results)
            p99 = statistics.median(r[2][1] for r in results)
            worst = max(r[2][2] for r in results)
            print(f"| {names[kind]} | {'-' if rate is None else f'{rate:,.0f}'} | "
                  f"{'-' if cpu is None else f'{cpu:.1f} µs'} | {p50:.2f} ms | {p99:.2f} ms | {worst:.2f} ms |")
        print()
        print("worst neighbour latency is the worst over all rounds; every other cell is the median of the rounds")
    finally:
        server.terminate()
        server.wait()
        for path in groups.values():
            try:
                open(os.path.join(path, "cgroup.kill"), "w").write("1")
                time.sleep(0.1)
                os.rmdir(path)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
