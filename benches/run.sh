#!/usr/bin/env bash
# guestsock's end-to-end benchmarks, each beside its baseline in the same run
# so that the result is a ratio that holds on a noisy machine.
#
#   bash benches/run.sh            (as root: real cgroups; installs wrk, nginx)
#
# Settings: DURATION (s per wrk run, default 10), ROUNDS (alternating runs
# per row, medians reported, default 3), CONNS (keep-alive connections,
# default 64), INSTANCES (registered, default 4096), GUESTSOCK_BIN_BEFORE (an
# older build: when set, it is run beside this one on the same registry and
# the per-request rows compare the two, this build (A) against it (B)),
# GUESTSOCK_BIN (the build to measure; default: target/release/guestsock,
# built first).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
INSTANCES=${INSTANCES:-4096}
PORT=18080

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx >/dev/null
fi
if [ -z "${GUESTSOCK_BIN:-}" ]; then
    cargo build --release -q
    GUESTSOCK_BIN=target/release/guestsock
fi
mkdir -p target/bench
gcc -O2 -shared -fPIC -o target/bench/unixshim.so benches/unixshim.c -ldl
gcc -O2 -o target/bench/ceiling benches/ceiling.c

work=$(mktemp -d /tmp/guestsock-bench-XXXXXX)
cgroot=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
bench_cg="$cgroot/guestsock-bench-$$"
mkdir "$bench_cg"
cleanup() {
    kill "${GS_PID:-}" "${NGINX_PID:-}" "${CEILING_PID:-}" "${GS1_PID:-}" "${GS0_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    echo 1 > "$bench_cg/cgroup.kill" 2>/dev/null || true
    sleep 0.2
    rmdir "$bench_cg" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The registry: the benchmark's own cgroup is one instance among $INSTANCES.
python3 - "$work/instances.json" "/guestsock-bench-$$" "$INSTANCES" <<'PY'
import json, sys
path, own, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
instances = [{"name": "bench", "match": {"cgroup": own}, "config": {"user.foo": "bar"}}]
instances += [{"name": f"c{i}", "match": {"cgroup": f"/lxc.payload.c{i}"},
               "config": {"user.foo": "bar"}} for i in range(n - 1)]
json.dump({"instances": instances}, open(path, "w"))
PY

# Caps and the rate limit are lifted so that one wrk process can drive it.
GS_FLAGS=(--rate-limit 0 --max-per-instance 100000)
"$GUESTSOCK_BIN" serve --socket "$work/gs/sock" --admin-socket "$work/admin.sock" \
    --state-dir "$work/state" --instances "$work/instances.json" "${GS_FLAGS[@]}" 2>"$work/gs.log" &
GS_PID=$!

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen unix:$work/nginx.sock;
        default_type application/json;
        location = /1.0 {
            return 200 '{"api_version":"1.0","auth":"untrusted","instance_type":"container","location":"host","state":"Started"}\n';
        }
        location = /1.0/config/user.foo {
            default_type application/octet-stream;
            return 200 'bar';
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
NGINX_PID=$!
for _ in $(seq 100); do
    [ -S "$work/gs/sock" ] && [ -S "$work/nginx.sock" ] && break
    sleep 0.1
done
sleep 0.5
nginx_worker=$(pgrep -P "$NGINX_PID" | head -1)

# CPU ticks (utime + stime) of a process.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run NAME SOCKET PID PATH [wrk args...]: prints "requests/s cpu-µs-per-request".
run() {
    local sock=$1 pid=$2 path=$3
    shift 3
    local before after out
    before=$(ticks "$pid")
    out=$(sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$bench_cg" \
        env SHIM_PORT=$PORT SHIM_PATH="$sock" LD_PRELOAD="$PWD/target/bench/unixshim.so" \
        wrk -t1 -d"${DURATION}s" "$@" "http://127.0.0.1:$PORT$path" 2>&1)
    after=$(ticks "$pid")
    local rps total
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    total=$(awk '/requests in/ { print $1 }' <<<"$out")
    local errors
    errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    [ -n "$errors" ] && echo "  ($errors)" >&2
    awk -v r="$rps" -v t="$total" -v c="$((after - before))" -v hz="$hz" \
        'BEGIN { printf "%.0f %.2f\n", r, (t > 0 ? c / hz * 1e6 / t : 0) }'
}

echo "guestsock $("$GUESTSOCK_BIN" help >/dev/null && git rev-parse --short HEAD 2>/dev/null), nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(nproc) cores, $(uname -r)"
echo "settings: wrk -t1 -d${DURATION}s, $ROUNDS rounds (medians); $INSTANCES registered cgroup instances; guestsock ${GS_FLAGS[*]}; nginx 1 worker"
printf '%-44s %12s %12s %8s %14s %14s %8s\n' scenario "A req/s" "B req/s" ratio "A µs CPU/req" "B µs CPU/req" ratio

# compare NAME SOCK_A PID_A SOCK_B PID_B PATH [wrk args...]: runs A and B
# alternately $ROUNDS times and prints the medians: throughput, CPU per
# request, and the median of the per-round ratios A/B.
compare() {
    local name=$1 sock_a=$2 pid_a=$3 sock_b=$4 pid_b=$5
    shift 5
    local rounds=()
    for _ in $(seq "$ROUNDS"); do
        read -r a ac < <(run "$sock_a" "$pid_a" "$@")
        read -r b bc < <(run "$sock_b" "$pid_b" "$@")
        rounds+=("$a $b $ac $bc")
    done
    printf '%s\n' "${rounds[@]}" | awk -v name="$name" '
        function median(v, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        { n++; a[n] = $1; b[n] = $2; ac[n] = $3; bc[n] = $4; r[n] = ($2 ? $1 / $2 : 0); rc[n] = ($4 ? $3 / $4 : 0) }
        END { printf "%-44s %12d %12d %8.2f %14.2f %14.2f %8.2f\n", name, median(a, n), median(b, n), median(r, n), median(ac, n), median(bc, n), median(rc, n) }'
}

GS=("$work/gs/sock" "$GS_PID")
NGINX=("$work/nginx.sock" "$nginx_worker")
echo "guestsock (A) against nginx (B):"
compare "keep-alive GET /1.0 (-c$CONNS)" "${GS[@]}" "${NGINX[@]}" /1.0 -c"$CONNS"
compare "keep-alive GET /1.0/config/user.foo (-c$CONNS)" "${GS[@]}" "${NGINX[@]}" /1.0/config/user.foo -c"$CONNS"
compare "connection per request GET /1.0 (-c16)" "${GS[@]}" "${NGINX[@]}" /1.0 -c16 -H "Connection: close"
# Pipelined: 16 requests per write (benches/pipeline.lua). On 2 cores this
# is the load where the server, not wrk, is the bottleneck.
compare "pipelined GET /1.0, 16 per write (-c$CONNS)" "${GS[@]}" "${NGINX[@]}" /1.0 -c"$CONNS" \
    -s benches/pipeline.lua

# What wrk can drive at all: a server that only reads and writes a fixed
# answer (benches/ceiling.c) against nginx. When this ratio is near 1, the
# load generator, not the server, sets the keep-alive throughput. Then
# guestsock against that bare read/write loop: one request per syscall
# pair is the physical limit of CPU per keep-alive request.
target/bench/ceiling "$work/ceiling.sock" &
CEILING_PID=$!
for _ in $(seq 50); do [ -S "$work/ceiling.sock" ] && break; sleep 0.1; done
echo "the load generator's ceiling: benches/ceiling.c (A) against nginx (B):"
compare "keep-alive GET /1.0 (-c$CONNS)" "$work/ceiling.sock" "$CEILING_PID" "${NGINX[@]}" /1.0 -c"$CONNS"
echo "the physical limit: guestsock (A) against benches/ceiling.c (B):"
compare "keep-alive GET /1.0 (-c$CONNS)" "${GS[@]}" "$work/ceiling.sock" "$CEILING_PID" /1.0 -c"$CONNS"
kill "$CEILING_PID"

# Identity cost: the same connection-per-request run against a guestsock
# with one registered instance instead of $INSTANCES.
python3 - "$work/one.json" "/guestsock-bench-$$" <<'PY'
import json, sys
json.dump({"instances": [{"name": "bench", "match": {"cgroup": sys.argv[2]},
                          "config": {"user.foo": "bar"}}]}, open(sys.argv[1], "w"))
PY
"$GUESTSOCK_BIN" serve --socket "$work/gs1/sock" --admin-socket "$work/admin1.sock" \
    --state-dir "$work/state1" --instances "$work/one.json" "${GS_FLAGS[@]}" 2>>"$work/gs.log" &
GS1_PID=$!
for _ in $(seq 100); do [ -S "$work/gs1/sock" ] && break; sleep 0.1; done
sleep 0.3
echo "identity cost: guestsock with $INSTANCES instances (A) against guestsock with 1 (B):"
compare "connection per request GET /1.0 (-c16)" "${GS[@]}" "$work/gs1/sock" "$GS1_PID" /1.0 -c16 -H "Connection: close"
kill "$GS1_PID"

# This build against an older one (GUESTSOCK_BIN_BEFORE), same registry and
# flags: what a change costs per request, in both directions.
if [ -n "${GUESTSOCK_BIN_BEFORE:-}" ]; then
    "$GUESTSOCK_BIN_BEFORE" serve --socket "$work/gs0/sock" --admin-socket "$work/admin0.sock" \
        --state-dir "$work/state0" --instances "$work/instances.json" "${GS_FLAGS[@]}" 2>>"$work/gs.log" &
    GS0_PID=$!
    for _ in $(seq 100); do [ -S "$work/gs0/sock" ] && break; sleep 0.1; done
    sleep 0.3
    echo "this build (A) against $GUESTSOCK_BIN_BEFORE (B), $INSTANCES instances each:"
    compare "keep-alive GET /1.0 (-c$CONNS)" "${GS[@]}" "$work/gs0/sock" "$GS0_PID" /1.0 -c"$CONNS"
    compare "connection per request GET /1.0 (-c16)" "${GS[@]}" "$work/gs0/sock" "$GS0_PID" /1.0 -c16 -H "Connection: close"
    kill "$GS0_PID"
fi
