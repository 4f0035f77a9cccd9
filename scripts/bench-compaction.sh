#!/usr/bin/env bash
# Issue 5's benchmark: 1,000,000 writes over 1,000 keys with 100-byte values
# on a 3-node cluster (fsync on), then each node's data directory size and
# resident memory, then the time from `kill -9` of every node to a restarted
# cluster serving a linearizable read. Prints figures; asserts nothing.
#
#   scripts/bench-compaction.sh [WRITES]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
WRITES=${1:-1000000}
KEYS=${KEYS:-1000}
BIN=target/release
cargo build --release -q -p poncho-server -p poncho-bench
DIR=$(mktemp -d /tmp/poncho-compaction.XXXXXX)
# The peers authenticate with a cluster secret, as a real cluster does.
(umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$DIR/secret")
PEERS="1=127.0.0.1:9201,2=127.0.0.1:9202,3=127.0.0.1:9203"
PIDS=()
start() {
  local i=$1 extra=""
  [ "$i" = 1 ] && extra=is_leader
  "$BIN/poncho-server" --id "$i" --port "920$i" --peers "$PEERS" --cluster-secret-file "$DIR/secret" --data-dir "$DIR/n$i" $extra >>"$DIR/n$i.log" 2>&1 &
  PIDS[$i]=$!
}
stop_all() { for i in 1 2 3; do kill -9 "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true; done; }
trap 'stop_all; grep -h "event loop paused" "$DIR"/n1.log | tail -3; rm -rf "$DIR"' EXIT
for i in 1 2 3; do start "$i"; done
sleep 1
echo "writing $WRITES entries (1,000 keys, 100-byte values, 64 clients)..."
"$BIN/poncho-bench" --cluster 127.0.0.1:9201,127.0.0.1:9202,127.0.0.1:9203 --clients 64 \
  --requests "$WRITES" --duration 100000 --keys "${KEYS:-1000}" --value-size 100 --quiet
python3 - "$WRITES" <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", 9201))
s.sendall((json.dumps({"msg_type": "SET", "payload": {"key": "final", "value": sys.argv[1]}}) + "\n").encode())
print("final write:", s.makefile().readline().strip())
PY
sleep 2
for i in 1 2 3; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[$i]}/status")
  size=$(du -sk "$DIR/n$i" | cut -f1)
  echo "node $i: data directory $((size / 1024)) MiB ($size KiB), resident memory $((rss / 1024)) MiB ($rss KiB)"
done
ls -la "$DIR/n1" | sed 's/^/  n1: /'
stop_all
start_ns=$(date +%s%N)
for i in 1 2 3; do start "$i"; done
python3 - <<'PY'
import json, socket, time
deadline = time.time() + 30
while time.time() < deadline:
    for port in (9201, 9202, 9203):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
            s.settimeout(1)
            s.sendall(b'{"msg_type":"GET","payload":{"key":"final"}}\n')
            reply = json.loads(s.makefile().readline())
            if reply.get("msg_type") == "GET":
                print("linearizable read after restart:", reply["payload"])
                raise SystemExit(0)
        except (OSError, ValueError):
            pass
    time.sleep(0.01)
raise SystemExit("no read within 30 s")
PY
end_ns=$(date +%s%N)
echo "kill -9 of every node -> restarted cluster serving a linearizable read: $(( (end_ns - start_ns) / 1000000 )) ms"
grep -h "recovered term" "$DIR"/n*.log | tail -3
