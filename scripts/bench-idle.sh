#!/usr/bin/env bash
# Issue 10's connection benchmark: 64 clients writing to a 3-node cluster
# (fsync on), first alone, then while 10,000 more connections are held open
# on the leader, a third of them stalled halfway through a request line.
# Prints both throughputs and the leader's resident memory with and without
# the crowd; asserts nothing.
#
#   [ROUNDS=2] scripts/bench-idle.sh [SECONDS] [IDLE]    (default 10 s, 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
IDLE=${2:-10000}
STALLED=$((IDLE / 3))
BIN=target/release
cargo build --release -q -p poncho-server -p poncho-bench
DIR=$(mktemp -d /tmp/poncho-idle.XXXXXX)
# The peers authenticate with a cluster secret, as a real cluster does.
(umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$DIR/secret")
PEERS="1=127.0.0.1:9301,2=127.0.0.1:9302,3=127.0.0.1:9303"
CLUSTER=127.0.0.1:9301,127.0.0.1:9302,127.0.0.1:9303
PIDS=()
for i in 1 2 3; do
  extra=""
  [ "$i" = 1 ] && extra=is_leader
  "$BIN/poncho-server" --id "$i" --port "930$i" --peers "$PEERS" --cluster-secret-file "$DIR/secret" --data-dir "$DIR/n$i" $extra >>"$DIR/n$i.log" 2>&1 &
  PIDS[$i]=$!
done
stop_all() { for i in 1 2 3; do kill "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true; done; }
trap 'stop_all; rm -rf "$DIR"' EXIT
sleep 1
grep -h "open-file" "$DIR/n1.log" | sed 's/^/leader: /'
rss() { awk '/VmRSS/ {print $2}' "/proc/${PIDS[1]}/status"; }
bench() {
  "$BIN/poncho-bench" --cluster "$CLUSTER" --clients 64 --duration "$SECONDS_EACH" --quiet --json "$@"
}
ROUNDS=${ROUNDS:-2}
echo "64 clients, SET, 100-byte values, ${SECONDS_EACH} s each, $ROUNDS rounds alternating; the leader is node 1"
before_rss=$(rss)
results=()
for _ in $(seq "$ROUNDS"); do
  results+=("alone" "$(bench)")
  results+=("with" "$(bench --idle "$IDLE" --stalled "$STALLED")")
done
python3 - "$IDLE" "$STALLED" "$before_rss" "${results[@]}" <<'PY'
import json, sys
idle, stalled, rss = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = sys.argv[4:]
totals = {"alone": [], "with": []}
for kind, text in zip(runs[::2], runs[1::2]):
    r = json.loads(text)
    s = r["by_op"]["set"]
    name = "alone" if kind == "alone" else f"with {idle} idle ({stalled} stalled mid-line)"
    extra = f", idle connections open at the end: {r['idle_open_at_end']} of {idle}" if kind == "with" else ""
    print(f"{name}: {r['ops_per_sec']:,.0f} writes/s, p50 {s['p50_ms']:.2f} ms, "
          f"p99 {s['p99_ms']:.2f} ms, {r['errors']} errors{extra}")
    totals[kind].append(r["ops_per_sec"])
mean = {k: sum(v) / len(v) for k, v in totals.items()}
print(f"mean: alone {mean['alone']:,.0f}/s, with the idle connections {mean['with']:,.0f}/s "
      f"(ratio {mean['with'] / mean['alone']:.2f})")
print(f"leader resident memory before: {rss // 1024} MiB")
PY
echo "leader resident memory after: $(( $(rss) / 1024 )) MiB (peak $(awk '/VmHWM/ {print $2}' "/proc/${PIDS[1]}/status") KiB)"
