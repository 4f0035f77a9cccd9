#!/usr/bin/env bash
# A local poncho cluster in one command.
#
#   scripts/cluster.sh [--nodes N] [--base-port P] [--own-ips] [--data DIR] [--no-shell]
#       Builds poncho, starts N nodes (default 5) with node 1 given the
#       is_leader hint, node K on 127.0.0.1:(P+K) (default P=8000, so
#       8001..8005) or, with --own-ips, on 127.0.0.K:(P+K). Each node's data
#       and log live in DIR/node-K/ and DIR/node-K.log (default DIR:
#       ./cluster-data). Then opens poncho-shell on the cluster; when the
#       shell exits, or on Ctrl-C, every node is stopped cleanly (SIGTERM).
#       With --no-shell it prints how to connect and runs until Ctrl-C.
#   scripts/cluster.sh stop [--data DIR]    stops a cluster started elsewhere
#   scripts/cluster.sh clean [--data DIR]   removes DIR (refuses while running)
#
# Data survives between runs: a second start reuses it (the cluster comes back
# with its keys); `clean` starts over. Starting while a cluster from the same
# DIR runs, or while a port is taken, is refused with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=5
BASE_PORT=8000
DATA=cluster-data
SHELL_TOO=1
OWN_IPS=0
COMMAND=start
while [ $# -gt 0 ]; do
  case "$1" in
    start|stop|clean) COMMAND=$1 ;;
    --nodes) NODES=$2; shift ;;
    --base-port) BASE_PORT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --no-shell) SHELL_TOO=0 ;;
    --own-ips) OWN_IPS=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$NODES" in ''|*[!0-9]*) echo "cluster.sh: --nodes takes a number" >&2; exit 2 ;; esac
if [ "$NODES" -lt 1 ] || [ "$NODES" -gt 9 ]; then
  echo "cluster.sh: --nodes must be 1 to 9" >&2; exit 2
fi
PIDFILE="$DATA/cluster.pids"

running_pids() {
  [ -f "$PIDFILE" ] || return 0
  while read -r pid; do
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
  done < "$PIDFILE"
}

stop_nodes() {
  local pids
  pids=$(running_pids)
  [ -n "$pids" ] || { rm -f "$PIDFILE"; return 0; }
  echo "stopping nodes: $(echo $pids)"
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(running_pids)" ] && break
    sleep 0.1
  done
  pids=$(running_pids)
  if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
  rm -f "$PIDFILE"
}

case "$COMMAND" in
  stop) stop_nodes; exit 0 ;;
  clean)
    if [ -n "$(running_pids)" ]; then
      echo "cluster.sh: a cluster is running from $DATA; stop it first (scripts/cluster.sh stop)" >&2
      exit 1
    fi
    rm -rf "$DATA"; echo "removed $DATA"; exit 0 ;;
esac

if [ -n "$(running_pids)" ]; then
  echo "cluster.sh: a cluster from $DATA is already running (pids $(echo $(running_pids)));" >&2
  echo "  stop it with Ctrl-C in its terminal or scripts/cluster.sh stop" >&2
  exit 1
fi

addr() { if [ "$OWN_IPS" = 1 ]; then echo "127.0.0.$1:$((BASE_PORT + $1))"; else echo "127.0.0.1:$((BASE_PORT + $1))"; fi; }
port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

PEERS=""
CLUSTER=""
for k in $(seq "$NODES"); do
  a=$(addr "$k")
  if ! port_free "$a"; then
    echo "cluster.sh: $a is already in use; pick another --base-port" >&2
    exit 1
  fi
  PEERS="$PEERS${PEERS:+,}$k=$a"
  CLUSTER="$CLUSTER${CLUSTER:+,}$a"
done

echo "building poncho (release)..."
cargo build --release -q -p poncho-server -p poncho-shell

mkdir -p "$DATA"
if [ -n "$(ls -A "$DATA" 2>/dev/null | grep -v cluster.pids)" ]; then
  echo "reusing the data in $DATA (scripts/cluster.sh clean to start fresh)"
fi
: > "$PIDFILE"
trap 'stop_nodes' EXIT
trap 'exit 130' INT TERM

for k in $(seq "$NODES"); do
  a=$(addr "$k")
  hint=""
  [ "$k" = 1 ] && hint=is_leader
  target/release/poncho-server --id "$k" --host "${a%:*}" --port "${a#*:}" --peers "$PEERS" \
    --data-dir "$DATA/node-$k" $hint >>"$DATA/node-$k.log" 2>&1 &
  echo $! >> "$PIDFILE"
done

# Wait until every node listens and one leads.
for _ in $(seq 100); do
  if target/release/poncho-shell --cluster "$CLUSTER" --timeout 200ms leader >/dev/null 2>&1; then break; fi
  sleep 0.1
done
LEADER=$(target/release/poncho-shell --cluster "$CLUSTER" --timeout 5s leader 2>/dev/null || echo "none yet")

echo
echo "poncho: $NODES nodes running (leader: $LEADER)"
for k in $(seq "$NODES"); do
  echo "  node $k  $(addr "$k")  data $DATA/node-$k  log $DATA/node-$k.log"
done
echo
echo "connect with:  target/release/poncho-shell --cluster $CLUSTER"
echo "stop with:     Ctrl-C here (data is kept; scripts/cluster.sh clean removes it)"
echo

if [ "$SHELL_TOO" = 1 ] && [ -t 0 ]; then
  target/release/poncho-shell --cluster "$CLUSTER" || true
else
  echo "running; press Ctrl-C to stop"
  while [ -n "$(running_pids)" ]; do sleep 1; done
  echo "cluster.sh: every node has exited; see the logs in $DATA" >&2
  exit 1
fi
