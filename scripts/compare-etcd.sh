#!/usr/bin/env bash
# Issue 6's comparison: poncho and etcd 3.4 side by side on this machine,
# driven by the same load generator with the same workload. Each system runs
# as 3 nodes on loopback with fsync on (both defaults), data on the same
# disk; the workloads are writes (set: --mix set:1) and linearizable reads
# (get: --mix get:1, after every key is written once), and issue 14's
# transactions (txn: --mix txn:1, 2 compares and 2 puts, after the keys
# are written), watch fan-out (watch: WATCHERS watches of the keys' prefix,
# one per connection, spread over the 3 nodes, while the CLIENTS write) and
# lease keepalives (lease: LEASES leases granted first, then the CLIENTS
# renew random ones at the leader). WORKLOADS picks which run (default all:
# "set get txn watch lease"). Prints a table with the ratio poncho/etcd;
# asserts nothing.
#
# etcd is driven through its HTTP/JSON gRPC gateway (poncho-bench --target
# etcd), which costs etcd transcoding work that its native gRPC clients do
# not pay. To size that, the script ends with `etcdctl check perf` (native
# gRPC writes) next to a gateway run of the same shape (its clients, 1 KiB
# values); CHECK_PERF=none skips it.
#
#   scripts/compare-etcd.sh
#   DURATION=30 CLIENTS=64 KEYS=10000 VALUE_SIZE=100 PIPELINE=1 CHECK_PERF=l scripts/compare-etcd.sh
#   WORKLOADS="txn watch lease" WATCHERS=1000 WATCH_STREAMS=1000 LEASES=10000 LEASE_TTL=60 CHECK_PERF=none scripts/compare-etcd.sh
#
# Run it on an otherwise idle machine: the "others CPU" column shows what
# other processes took meanwhile, and a warning follows the table if that
# disturbed a run.
#
# Installs etcd-server and etcd-client with apt-get if etcd or etcdctl is
# missing (Debian bookworm has 3.4.23; run as root, or with sudo at hand).
# On a host that runs systemd, installing the package also starts a system
# etcd on port 2379; this script uses other ports and leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-100}
PIPELINE=${PIPELINE:-1}
CHECK_PERF=${CHECK_PERF:-l}
WORKLOADS=${WORKLOADS:-set get txn watch lease}
WATCHERS=${WATCHERS:-1000}
WATCH_STREAMS=${WATCH_STREAMS:-}
LEASES=${LEASES:-10000}
LEASE_TTL=${LEASE_TTL:-60}
BIN=$PWD/target/release
for w in $WORKLOADS; do
  case $w in
    set | get | txn | watch | lease) ;;
    *) echo "WORKLOADS: unknown workload $w (give some of: set get txn watch lease)" >&2; exit 1 ;;
  esac
done
[ -n "${WORKLOADS// /}" ] || { echo "WORKLOADS is empty" >&2; exit 1; }
# Whether WORKLOADS holds $1.
wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd-server and etcd-client with apt-get..."
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
cargo build --release -q -p poncho-server -p poncho-bench
others=$( (pgrep -x poncho-server; pgrep -x etcd) | wc -l || true)
[ "$others" = 0 ] || echo "warning: $others poncho-server or etcd processes not started by this script are running; they share the machine"

DIR=$(mktemp -d /tmp/compare-etcd.XXXXXX)
# The peers authenticate with a cluster secret, as a real cluster does.
(umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$DIR/secret")
PIDS=()
perf_pid=""
bench_pid=""
stop_all() {
  local pid
  [ -z "$bench_pid" ] || kill "$bench_pid" 2>/dev/null || true
  [ -z "$perf_pid" ] || kill "$perf_pid" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$DIR"' EXIT
trap 'exit 130' INT TERM

# poncho-bench, waited for in a way that a signal to this script interrupts.
bench() {
  local rc=0
  "$BIN/poncho-bench" "$@" &
  bench_pid=$!
  wait "$bench_pid" || rc=$?
  bench_pid=""
  return "$rc"
}

# CPU seconds (user + system) used so far by the given processes.
# (utime and stime: fields 14 and 15 of /proc/PID/stat, in clock ticks.)
cpu_of() {
  local pid
  for pid in "$@"; do sed 's/^.*) //' "/proc/$pid/stat"; done |
    awk -v hz="$(getconf CLK_TCK)" '{ t += $12 + $13 } END { printf "%.2f\n", t / hz }'
}

# CPU seconds all processes on the machine have used (user, nice, system;
# not interrupts, where the kernel handles loopback packets, nor steal).
machine_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4) / hz }' /proc/stat
}

# One measured run: poncho-bench's JSON summary, with the servers' CPU
# seconds during the run added, and the CPU that neither they nor the load
# generator used (other processes on this machine), in $DIR/NAME.json.
measure() {
  local name=$1
  shift
  local before after machine_before machine_after
  before=$(cpu_of "${PIDS[@]}")
  machine_before=$(machine_cpu)
  bench "$@" --json --quiet >"$DIR/$name.raw"
  after=$(cpu_of "${PIDS[@]}")
  machine_after=$(machine_cpu)
  python3 - "$DIR/$name.raw" "$before" "$after" "$machine_before" "$machine_after" >"$DIR/$name.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
servers = float(sys.argv[3]) - float(sys.argv[2])
bench = run["bench_cpu_percent"] * run["seconds"] / 100
run["server_cpu_seconds"] = servers
run["other_cpu_percent"] = max(0.0, 100 * (float(sys.argv[5]) - float(sys.argv[4]) - servers - bench) / run["seconds"])
print(json.dumps(run))
PY
  python3 - "$DIR/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w = r.get("watch")
watch = f", {w['events_per_sec']:,.0f} watch events/s, {w['errors']} watch errors" if w else ""
print(f"  {sys.argv[2]}: {r['ops_per_sec']:,.0f} ops/s, {r['errors']} errors{watch}, {r['seconds']:.1f} s")
PY
}

WORKLOAD=(--clients "$CLIENTS" --pipeline "$PIPELINE" --duration "$DURATION" --keys "$KEYS" --value-size "$VALUE_SIZE")

# The WORKLOADS against one cluster, in this order: writes; every key
# written once (not measured); linearizable reads; transactions; watch
# fan-out; lease keepalives.
run_workloads() {
  local system=$1
  shift
  if wants set; then
    measure "$system-writes" "$@" "${WORKLOAD[@]}" --mix set:1
  fi
  if wants get || wants txn; then
    bench "$@" "${WORKLOAD[@]}" --mix set:1 --preload --requests 0 --quiet >/dev/null
  fi
  if wants get; then
    measure "$system-reads" "$@" "${WORKLOAD[@]}" --mix get:1
  fi
  if wants txn; then
    measure "$system-txn" "$@" "${WORKLOAD[@]}" --mix txn:1
  fi
  if wants watch; then
    measure "$system-watch" "$@" "${WORKLOAD[@]}" --mix set:1 --watchers "$WATCHERS" ${WATCH_STREAMS:+--watch-streams "$WATCH_STREAMS"}
  fi
  if wants lease; then
    measure "$system-lease" "$@" "${WORKLOAD[@]}" --leases "$LEASES" --lease-ttl "$LEASE_TTL" --mix keepalive:1
  fi
}

# ---- poncho ----
PONCHO_PEERS="1=127.0.0.1:9311,2=127.0.0.1:9312,3=127.0.0.1:9313"
PONCHO_CLUSTER=127.0.0.1:9311,127.0.0.1:9312,127.0.0.1:9313
for i in 1 2 3; do
  extra=""
  [ "$i" = 1 ] && extra=is_leader
  "$BIN/poncho-server" --id "$i" --port "931$i" --peers "$PONCHO_PEERS" --cluster-secret-file "$DIR/secret" --data-dir "$DIR/poncho$i" $extra \
    >>"$DIR/poncho$i.log" 2>&1 &
  PIDS+=($!)
done
leader=""
for _ in $(seq 300); do
  for i in 1 2 3; do
    if reply=$(exec 3<>"/dev/tcp/127.0.0.1/931$i" && printf '{"msg_type":"STATUS"}\n' >&3 && timeout 1 head -n1 <&3) \
      && [[ $reply == *'"role":"leader"'* ]]; then
      leader=127.0.0.1:931$i
    fi 2>/dev/null
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "poncho: no leader after 30 s" >&2; tail -5 "$DIR"/poncho*.log >&2; exit 1; }
echo "poncho: 3 nodes, leader $leader"
run_workloads poncho --cluster "$PONCHO_CLUSTER"
stop_all

# ---- etcd ----
ETCD_PEERS="e1=http://127.0.0.1:23811,e2=http://127.0.0.1:23812,e3=http://127.0.0.1:23813"
ETCD_CLUSTER=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$DIR/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2381$i" --initial-advertise-peer-urls "http://127.0.0.1:2381$i" \
    --initial-cluster "$ETCD_PEERS" --initial-cluster-state new --initial-cluster-token compare-etcd \
    --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --logger zap --log-outputs "$DIR/etcd$i.log" \
    >>"$DIR/etcd$i.out" 2>&1 &
  PIDS+=($!)
done
healthy=""
for _ in $(seq 300); do
  if etcdctl --endpoints="$ETCD_CLUSTER" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; then
    healthy=yes
    break
  fi
  sleep 0.1
done
[ -n "$healthy" ] || { echo "etcd: not healthy after 30 s" >&2; tail -5 "$DIR"/etcd*.log "$DIR"/etcd*.out >&2; exit 1; }
echo "etcd: 3 nodes healthy"
etcdctl --endpoints="$ETCD_CLUSTER" endpoint status -w table | sed 's/^/  /'
run_workloads etcd --target etcd --cluster "$ETCD_CLUSTER"

# ---- the gateway's cost: native gRPC writes (etcdctl check perf) next to
# gateway writes of the same shape ----
if [ "$CHECK_PERF" != none ]; then
  # etcdctl check perf: CLIENTS clients (each its own gRPC connection),
  # a 256-byte key and a 1 KiB value per put, 60 s, rate-limited at LIMIT/s.
  case $CHECK_PERF in
    s) perf_clients=50 perf_limit=150 ;;
    m) perf_clients=200 perf_limit=1000 ;;
    l) perf_clients=500 perf_limit=8000 ;;
    xl) perf_clients=1000 perf_limit=15000 ;;
    *) echo "CHECK_PERF must be s, m, l, xl or none" >&2; exit 1 ;;
  esac
  ulimit -n 65536 2>/dev/null || true
  echo "etcdctl check perf --load=$CHECK_PERF (native gRPC: $perf_clients clients, 1 KiB values, 60 s, at most $perf_limit writes/s)..."
  etcd_leader=$(python3 - "$DIR" <<'PY'
import glob, json, os, sys
print(json.load(open(sorted(glob.glob(os.path.join(sys.argv[1], "etcd-*.json")))[0]))["server"])
PY
)
  etcdctl --endpoints="$etcd_leader" check perf --load="$CHECK_PERF" >"$DIR/check-perf.txt" 2>&1 &
  perf_pid=$!
  # The servers' CPU over seconds 5 to 55 of the 60 s run: steady state,
  # without its setup or the deletion of its keys afterwards.
  sleep 5
  before=$(cpu_of "${PIDS[@]}")
  client_before=$(cpu_of "$perf_pid")
  sleep 50
  after=$(cpu_of "${PIDS[@]}")
  client_after=$(cpu_of "$perf_pid")
  wait "$perf_pid" || true
  perf_pid=""
  tr '\r' '\n' <"$DIR/check-perf.txt" | grep -E '^(PASS|FAIL|Slowest|Stddev|Throughput)' | sed 's/^/  /'
  python3 - "$DIR/check-perf.txt" "$before" "$after" "$client_before" "$client_after" >"$DIR/check-perf.json" <<'PY'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
m = re.search(r"Throughput (?:is|too low:) (\d+) writes/s", text)
print(json.dumps({
    "ops_per_sec": int(m.group(1)) if m else None,
    "server_cpu_percent": 100 * (float(sys.argv[3]) - float(sys.argv[2])) / 50,
    "client_cpu_percent": 100 * (float(sys.argv[5]) - float(sys.argv[4])) / 50,
}))
PY
  measure etcd-gateway-1k --target etcd --cluster "$ETCD_CLUSTER" --clients "$perf_clients" \
    --duration "$DURATION" --keys "$KEYS" --value-size 1024 --mix set:1
fi
stop_all
slow_syncs=$(cat "$DIR"/etcd?.log | grep -c 'slow fdatasync' || true)
slow_applies=$(cat "$DIR"/etcd?.log | grep -c 'apply request took too long' || true)

# ---- the table ----
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "machine: $(nproc) cores, ${cpu_model:-unknown CPU}, $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r), data on $(df -T "$DIR" | awk 'NR == 2 {print $2}') ($(df "$DIR" | awk 'NR == 2 {print $1}'))"
echo "poncho: $("$BIN/poncho-server" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ', with local changes')), $(rustc --version)"
echo "etcd:   $(etcd --version | sed -n 's/^etcd Version: //p') ($(etcd --version | sed -n 's/^Go Version: //p')), etcdctl $(etcdctl version | sed -n 's/^etcdctl version: //p')"
echo "each: 3 nodes on 127.0.0.1, fsync on, $CLIENTS clients, pipeline $PIPELINE, $VALUE_SIZE-byte values, keys from $KEYS, ${DURATION} s per run;"
echo "      poncho-bench drives both (etcd through its HTTP/JSON gateway, at the leader)"
wants watch && echo "      watch: $WATCHERS watches of the prefix key: on ${WATCH_STREAMS:-$(( WATCHERS < 1000 ? WATCHERS : 1000 ))} connections over the 3 nodes, while the $CLIENTS clients write"
wants lease && echo "      lease: $LEASES leases (TTL $LEASE_TTL s) granted first; the $CLIENTS clients renew random ones at the leader"
echo
python3 - "$DIR" "$CHECK_PERF" "$slow_syncs" "$slow_applies" "$WORKLOADS" <<'PY'
import json, os, sys
d, check_perf, workloads = sys.argv[1], sys.argv[2], sys.argv[5].split()
def load(name):
    return json.load(open(os.path.join(d, name + ".json")))
def ms(x):
    return f"{x:.2f} ms"
rows = [("set", "writes (set)", "writes", "set"), ("get", "linearizable reads (get)", "reads", "get"),
        ("txn", "transactions (txn)", "txn", "txn"), ("watch", "watch events delivered", "watch", None),
        ("lease", "lease keepalives", "lease", "keepalive")]
rows = [r[1:] for r in rows if r[0] in workloads]
def figures(r, op):
    """Throughput, latencies and operations served of a run: for watch
    fan-out, delivered events and put-to-event latency."""
    if op is None:
        w = r["watch"]
        return w["events_per_sec"], w, w["events"], w["errors"] + r["errors"]
    return r["ops_per_sec"], r["by_op"].get(op, {"p50_ms": 0, "p99_ms": 0, "p999_ms": 0}), r["ops"], r["errors"]
print(f"{'workload':<26} {'system':<7} {'throughput':>12} {'p50':>9} {'p99':>9} {'p99.9':>9} {'errors':>7} {'bench CPU':>10} {'servers CPU':>12} {'server CPU/op':>14} {'others CPU':>11}")
for label, kind, op in rows:
    runs = {s: load(f"{s}-{kind}") for s in ("poncho", "etcd")}
    for system, r in runs.items():
        rate, h, ops, errors = figures(r, op)
        servers = 100 * r["server_cpu_seconds"] / r["seconds"]
        per_op = 1e6 * r["server_cpu_seconds"] / max(ops, 1)
        print(f"{label if system == 'poncho' else '':<26} {system:<7} {rate:>10,.0f}/s {ms(h['p50_ms']):>9} {ms(h['p99_ms']):>9} {ms(h['p999_ms']):>9} {errors:>7} {r['bench_cpu_percent']:>9.0f}% {servers:>11.0f}% {per_op:>11.0f} us {r['other_cpu_percent']:>10.0f}%")
        if op is None:
            w = r["watch"]
            print(f"{'':<26} {'':<7} writes {r['ops_per_sec']:,.0f}/s; of writes x watchers {100 * w['delivered_during_run']:.1f}% delivered during the run, {100 * w['delivered_fraction']:.1f}% after {w['drain_seconds']:.1f} s more; {w['streams_lost']} streams lost, put-to-event max {ms(w['max_ms'])}")
    (pr, ph, _, _), (er, eh, _, _) = figures(runs["poncho"], op), figures(runs["etcd"], op)
    ratio = pr / er if er else float("inf")
    p99p, p99e = ph["p99_ms"], eh["p99_ms"]
    print(f"{'':<26} {'ratio':<7} {ratio:>11.2f}x {'':>9} {p99e / p99p if p99p else 0:>8.2f}x  (throughput poncho/etcd; p99 etcd/poncho)")
print()
print("servers CPU: user+system time of the 3 nodes together over the run, in % of one core;")
print("server CPU/op: that time divided by the operations served (watch: by the events delivered). bench CPU: the load generator's;")
print("others CPU: what other processes used meanwhile (kernel threads included; anything well above 0 disturbed the run).")
if any(op is None for _, _, op in rows):
    print("watch: events delivered per second of the run, each event to each watch counting once; p50-p99.9 are put-to-event")
    print("latency (from when the writer built the put to when the watcher read the event), the late events read after the")
    print("writers were done (up to poncho-bench's --watch-drain, 5 s) included: a watcher falling behind shows here.")
others = max(load(f"{s}-{k}")["other_cpu_percent"] for s in ("poncho", "etcd") for _, k, _ in rows)
if others > 25:
    print(f"WARNING: other processes used up to {others:.0f}% of a core during a run: these figures are disturbed.")
print(f"etcd logged {sys.argv[3]} 'slow fdatasync' and {sys.argv[4]} 'apply request took too long' warnings.")
if check_perf != "none":
    native = load("check-perf")
    gw = load("etcd-gateway-1k")
    print()
    print("etcd's HTTP/JSON gateway against native gRPC, writes of 1 KiB values:")
    n = native["ops_per_sec"]
    print(f"  native gRPC  (etcdctl check perf --load={check_perf}):   {n or 0:>8,}/s  servers CPU {native['server_cpu_percent']:.0f}%, {10_000 * native['server_cpu_percent'] / max(n or 1, 1):.0f} us/op; client CPU {native['client_cpu_percent']:.0f}% (seconds 5-55)")
    print(f"  HTTP gateway (poncho-bench --target etcd, same clients): {gw['ops_per_sec']:>8,.0f}/s  servers CPU {100 * gw['server_cpu_seconds'] / gw['seconds']:.0f}%, {1e6 * gw['server_cpu_seconds'] / max(gw['ops'], 1):.0f} us/op; client CPU {gw['bench_cpu_percent']:.0f}%, p99 {gw['by_op']['set']['p99_ms']:.2f} ms")
    if n:
        print(f"  native / gateway throughput: {n / gw['ops_per_sec']:.2f}x")
PY
