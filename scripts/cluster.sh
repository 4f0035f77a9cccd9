#!/usr/bin/env bash
# A local poncho cluster in one command.
#
#   scripts/cluster.sh [--nodes N] [--base-port P] [--own-ips] [--data DIR] [--no-shell]
#                      [--no-build] [-- SERVER-FLAG...]
#       Builds poncho (unless --no-build), starts N nodes (default 5) with
#       node 1 given the is_leader hint, node K on 127.0.0.1:(P+K) (default
#       P=8000, so 8001..8005) or, with --own-ips, on 127.0.0.K:(P+K), each
#       with the SERVER-FLAGs after `--` too. Each node's data and log live in
#       DIR/node-K/ and DIR/node-K.log (default DIR: ./cluster-data). It
#       prints each node's PID, then opens poncho-shell on the cluster.
#       The nodes run in sessions of their own: the terminal's signals
#       (Ctrl-C, Ctrl-\, closing it) never reach them. Ctrl-C in the shell
#       cancels the command or the line; leaving the shell (exit, Ctrl-D, or
#       closing the terminal) stops every node cleanly (SIGTERM).
#       With --no-shell it prints how to connect and runs until Ctrl-C, which
#       stops every node cleanly (SIGTERM).
#   scripts/cluster.sh restart K [--data DIR]
#       stops node K (if running) and starts it again with the flags it was
#       started with (less the is_leader hint, which is for a fresh cluster)
#   scripts/cluster.sh add [--data DIR]
#       starts a new node K (the next number never used in DIR) on port P+K,
#       with the flags of the others but `--join` (the lowest-numbered running
#       node) instead of --peers, adds it as a learner (`member add K ADDR
#       --learner`), waits up to 60 s until `member promote K` succeeds (it is
#       refused until the learner has caught up), and prints its PID
#   scripts/cluster.sh remove K [--force] [--data DIR]
#       runs `member remove K` (--force: even if it leaves fewer healthy
#       voters than a quorum) and, once the removal is committed, stops node K
#       (SIGTERM); its number is never used again. With auth enabled, add and
#       remove log in as $PONCHO_USER with $PONCHO_PASSWORD (root).
#   scripts/cluster.sh stop [--data DIR]    stops a cluster started elsewhere
#   scripts/cluster.sh clean [--data DIR]   removes DIR; refuses while any node
#       holds a data directory in it (its DIR/node-K/LOCK), whoever started it
#
# Data survives between runs: a second start reuses it (the cluster comes back
# with its keys, and with the nodes `add` added, less those `remove` removed);
# `clean` starts over. Starting while a cluster from the same
# DIR runs, while a node holds a data directory in DIR, or while a port is
# taken, is refused with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=5
BASE_PORT=8000
DATA=cluster-data
SHELL_TOO=1
OWN_IPS=0
BUILD=1
COMMAND=start
TARGET=""
FORCE=0
SERVER_FLAGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    start|stop|clean|add) COMMAND=$1 ;;
    restart|remove)
      COMMAND=$1
      case "${2:--}" in -*) echo "cluster.sh: $1 takes a node number" >&2; exit 2 ;; esac
      TARGET=$2; shift ;;
    --force) FORCE=1 ;;
    --nodes) NODES=$2; shift ;;
    --base-port) BASE_PORT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --no-shell) SHELL_TOO=0 ;;
    --no-build) BUILD=0 ;;
    --own-ips) OWN_IPS=1 ;;
    --) shift; SERVER_FLAGS=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$NODES" in ''|*[!0-9]*) echo "cluster.sh: --nodes takes a number" >&2; exit 2 ;; esac
if [ "$NODES" -lt 1 ] || [ "$NODES" -gt 9 ]; then
  echo "cluster.sh: --nodes must be 1 to 9" >&2; exit 2
fi
BIN="${CARGO_TARGET_DIR:-target}/release"
# One line per node started from DIR: "K PID".
PIDFILE="$DATA/cluster.pids"

# Whether PID is a running poncho-server (not a process that reused the PID
# of one that exited).
is_node() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/cmdline" ] || return 0
  grep -qa poncho-server "/proc/$1/cmdline"
}

# "K PID" for each node started from DIR that still runs.
running_nodes() {
  [ -f "$PIDFILE" ] || return 0
  local k pid
  while read -r k pid; do
    if [ -n "$pid" ] && is_node "$pid"; then echo "$k $pid"; fi
  done < "$PIDFILE"
}

running_pids() { running_nodes | awk '{ print $2 }'; }

# The PID of node K, if it was started from DIR and runs.
node_pid() { running_nodes | awk -v k="$1" '$1 == k { print $2 }'; }

# "node-K (pid P)" for each data directory in DIR whose lock a live process
# holds (the server flocks DIR/node-K/LOCK for its whole life and writes its
# PID there), whoever started it.
held_dirs() {
  local lock pid
  for lock in "$DATA"/node-*/LOCK; do
    [ -f "$lock" ] || continue
    if ! flock -n "$lock" true 2>/dev/null; then
      pid=$(head -n1 "$lock" 2>/dev/null || true)
      echo "$(basename "$(dirname "$lock")") (pid ${pid:-unknown})"
    fi
  done
}

# Replaces node K's line in the PID file (or adds it).
record_pid() {
  local k=$1 pid=$2
  { [ -f "$PIDFILE" ] && grep -v "^$k " "$PIDFILE" || true; echo "$k $pid"; } > "$PIDFILE.tmp"
  mv "$PIDFILE.tmp" "$PIDFILE"
}

# SIGTERM to PIDs, then SIGKILL to those still running after 5 s.
stop_pids() {
  local pids="$*" left
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 50); do
    left=""
    for pid in $pids; do is_node "$pid" && left="$left $pid"; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  kill -KILL $left 2>/dev/null || true
}

stop_nodes() {
  local pids
  pids=$(running_pids)
  [ -n "$pids" ] || { rm -f "$PIDFILE"; return 0; }
  echo "stopping nodes: $(echo $pids)"
  stop_pids $pids
  rm -f "$PIDFILE"
}

# Starts node K with the arguments saved in DIR/node-K.args, in a session
# of its own (setsid, no controlling terminal), and records its PID.
# Arguments after K are added for this start only. Sets LAUNCHED to the PID.
launch() {
  local k=$1 args=()
  shift
  mapfile -t args < "$DATA/node-$k.args"
  # A job of this non-interactive script is never a process group leader,
  # so setsid execs the server in place: $! is the server's PID.
  setsid "$BIN/poncho-server" "${args[@]}" "$@" </dev/null >>"$DATA/node-$k.log" 2>&1 &
  LAUNCHED=$!
  record_pid "$k" "$LAUNCHED"
}

# The value after FLAG in node K's saved arguments.
saved_arg() {
  local k=$1 flag=$2 prev="" arg
  while read -r arg; do
    if [ "$prev" = "$flag" ]; then echo "$arg"; return 0; fi
    prev=$arg
  done < "$DATA/node-$k.args"
}

# Waits up to 10 s until node K (PID) accepts connections on ADDR.
wait_listening() {
  local k=$1 pid=$2 a=$3
  for _ in $(seq 100); do
    if [ -z "$pid" ] || ! is_node "$pid"; then
      echo "cluster.sh: node $k exited during startup; the end of $DATA/node-$k.log:" >&2
      tail -n 5 "$DATA/node-$k.log" >&2
      return 1
    fi
    if ! port_free "$a"; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: node $k (pid $pid) does not listen on $a after 10 s; see $DATA/node-$k.log" >&2
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# How long `add` waits for the new learner to catch up and be promoted.
PROMOTE_WAIT=60
# The most nodes DIR may ever have had (numbers are never used twice).
MAX_NODE=99
SHELL_BIN="$BIN/poncho-shell"

# Node K's client address, from its saved arguments.
saved_addr() { echo "$(saved_arg "$1" --host):$(saved_arg "$1" --port)"; }

# The addresses of the nodes started from DIR that run, for --cluster.
cluster_addrs() {
  running_nodes | sort -n | while read -r k _; do saved_addr "$k"; done | paste -sd, -
}

# The node numbers DIR has ever had (each has a DIR/node-K.args).
known_nodes() {
  local f k
  for f in "$DATA"/node-*.args; do
    [ -f "$f" ] || continue
    k=${f##*/node-}; k=${k%.args}
    case "$k" in ''|*[!0-9]*) ;; *) echo "$k" ;; esac
  done | sort -n
}

# Node K's arguments as a member joining through JOIN: those of node FROM,
# less what is FROM's own (--id, --host, --port, --data-dir, --peers,
# --join), with K's own and --join JOIN (no is_leader hint).
joiner_args() {
  local k=$1 a=$2 join=$3 from=$4 skip=0 arg
  printf '%s\n' --id "$k" --host "${a%:*}" --port "${a#*:}" --join "$join" --data-dir "$DATA/node-$k"
  while IFS= read -r arg; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$arg" in
      --id|--host|--port|--data-dir|--peers|--join) skip=1 ;;
      *) printf '%s\n' "$arg" ;;
    esac
  done < "$DATA/node-$from.args"
}

# `poncho-shell --cluster CLUSTER ARGS...`, its output and errors on stdout.
ask_cluster() { "$SHELL_BIN" --cluster "$CLUSTER" "$@" 2>&1; }

# Retries `member promote K` until it succeeds or PROMOTE_WAIT seconds pass;
# only LEARNER_NOT_READY and CHANGE_IN_PROGRESS are worth waiting out.
promote_when_ready() {
  local k=$1 out deadline=$((SECONDS + PROMOTE_WAIT))
  while :; do
    if out=$(ask_cluster --timeout 5s member promote "$k"); then return 0; fi
    case "$out" in
      *LEARNER_NOT_READY*|*CHANGE_IN_PROGRESS*) ;;
      *) echo "cluster.sh: member promote $k failed: $out" >&2; return 1 ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster.sh: node $k is still a learner after $PROMOTE_WAIT s: $out" >&2
      return 1
    fi
    sleep 0.5
  done
}

# `add`: a new node K, started with --join, added as a learner, promoted.
add_node() {
  CLUSTER=$(cluster_addrs)
  if [ -z "$CLUSTER" ]; then
    echo "cluster.sh: no node started from $DATA runs; start the cluster first" >&2
    exit 1
  fi
  local from k a join out
  from=$(running_nodes | sort -n | awk 'NR == 1 { print $1 }')
  join=$(saved_addr "$from")
  k=$(( $(known_nodes | tail -n1) + 1 ))
  if [ "$k" -gt "$MAX_NODE" ]; then
    echo "cluster.sh: $DATA has had $MAX_NODE nodes, the most this script numbers" >&2
    exit 1
  fi
  # Node K on port P+K, P being node 1's port less 1; on 127.0.0.K if the
  # cluster was started with --own-ips (a node off 127.0.0.1 says so).
  local base host=127.0.0.1 n
  base=$(saved_arg 1 --port)
  case "$base" in ''|*[!0-9]*)
    echo "cluster.sh: node 1's saved arguments ($DATA/node-1.args) name no --port" >&2
    exit 1 ;;
  esac
  base=$((base - 1))
  for n in $(known_nodes); do
    [ "$(saved_arg "$n" --host)" = 127.0.0.1 ] || host=127.0.0.$k
  done
  a=$host:$((base + k))
  if ! port_free "$a"; then
    echo "cluster.sh: $a, node $k's address, is already in use" >&2
    exit 1
  fi
  joiner_args "$k" "$a" "$join" "$from" > "$DATA/node-$k.args"
  launch "$k"
  wait_listening "$k" "$LAUNCHED" "$a" || exit 1
  echo "node $k started: pid $LAUNCHED on $a, joining through $join"
  if ! out=$(ask_cluster --timeout 10s member add "$k" "$a" --learner); then
    echo "cluster.sh: member add $k $a --learner failed: $out" >&2
    echo "  stopping node $k (pid $LAUNCHED); \`member list\` shows whether it was added" >&2
    stop_pids "$LAUNCHED"
    exit 1
  fi
  : > "$DATA/node-$k.added"
  echo "node $k added as a learner; waiting (up to $PROMOTE_WAIT s) to promote it"
  if ! promote_when_ready "$k"; then
    echo "  node $k keeps running as a learner (pid $LAUNCHED):" \
      "\`member promote $k\` once \`member list\` shows it caught up" >&2
    exit 1
  fi
  echo "node $k added: pid $LAUNCHED on $a (a voter)"
}

# `remove K`: `member remove K`, then, once it is committed, node K stopped.
remove_node() {
  local k=$1 out pid
  if [ -f "$DATA/node-$k.removed" ]; then
    echo "cluster.sh: node $k was removed already" >&2
    exit 1
  fi
  CLUSTER=$(cluster_addrs)
  if [ -z "$CLUSTER" ]; then
    echo "cluster.sh: no node started from $DATA runs; start the cluster first" >&2
    exit 1
  fi
  local force=()
  [ "$FORCE" = 1 ] && force=(--force)
  if ! out=$(ask_cluster --timeout 10s member remove "$k" ${force[@]+"${force[@]}"}); then
    echo "cluster.sh: member remove $k failed; node $k is left as it is: $out" >&2
    exit 1
  fi
  : > "$DATA/node-$k.removed"
  pid=$(node_pid "$k")
  if [ -n "$pid" ]; then
    echo "stopping node $k (pid $pid)"
    stop_pids "$pid"
  fi
  { grep -v "^$k " "$PIDFILE" || true; } > "$PIDFILE.tmp"
  mv "$PIDFILE.tmp" "$PIDFILE"
  echo "node $k removed (its number is not used again; scripts/cluster.sh add starts a new node)"
}

case "$COMMAND" in
  stop) stop_nodes; exit 0 ;;
  clean)
    if [ -n "$(running_pids)" ]; then
      echo "cluster.sh: a cluster is running from $DATA (pids $(echo $(running_pids)));" \
        "stop it first (scripts/cluster.sh stop)" >&2
      exit 1
    fi
    held=$(held_dirs)
    if [ -n "$held" ]; then
      echo "cluster.sh: not removing $DATA: a server holds a data directory in it:" \
        $held >&2
      exit 1
    fi
    rm -rf "$DATA"; echo "removed $DATA"; exit 0 ;;
  add) add_node; exit 0 ;;
  restart|remove)
    case "$TARGET" in ''|*[!0-9]*) echo "cluster.sh: $COMMAND takes a node number" >&2; exit 2 ;; esac
    if [ ! -f "$DATA/node-$TARGET.args" ]; then
      echo "cluster.sh: node $TARGET was never started from $DATA" >&2
      exit 1
    fi
    [ "$COMMAND" = remove ] && { remove_node "$TARGET"; exit 0; }
    if [ -f "$DATA/node-$TARGET.removed" ]; then
      echo "cluster.sh: node $TARGET was removed from the cluster (its number is not" \
        "used again); scripts/cluster.sh add starts a new node" >&2
      exit 1
    fi
    old=$(node_pid "$TARGET")
    if [ -n "$old" ]; then
      echo "stopping node $TARGET (pid $old)"
      stop_pids "$old"
    fi
    # A process lets go of its files a moment after it stops looking like
    # a server (its memory goes first): wait for the lock too.
    for _ in $(seq 50); do
      held=$(held_dirs | grep "^node-$TARGET " || true)
      [ -z "$held" ] && break
      sleep 0.1
    done
    if [ -n "$held" ]; then
      echo "cluster.sh: another server holds node $TARGET's data directory: $held" >&2
      exit 1
    fi
    a=$(saved_arg "$TARGET" --host):$(saved_arg "$TARGET" --port)
    launch "$TARGET"
    wait_listening "$TARGET" "$LAUNCHED" "$a"
    echo "node $TARGET restarted: pid $LAUNCHED on $a"
    exit 0 ;;
esac

if [ -n "$(running_pids)" ]; then
  echo "cluster.sh: a cluster from $DATA is already running (pids $(echo $(running_pids)));" >&2
  echo "  stop it with Ctrl-C in its terminal or scripts/cluster.sh stop" >&2
  exit 1
fi
held=$(held_dirs)
if [ -n "$held" ]; then
  echo "cluster.sh: a server started elsewhere holds a data directory in $DATA:" $held >&2
  exit 1
fi

addr() { if [ "$OWN_IPS" = 1 ]; then echo "127.0.0.$1:$((BASE_PORT + $1))"; else echo "127.0.0.1:$((BASE_PORT + $1))"; fi; }

# Whether node K was removed from the cluster (`remove K`), or added to it
# (`add`): a start from data DIR already has skips the one and starts the
# other again, with the arguments it was added with.
removed() { [ -f "$DATA/node-$1.removed" ]; }
added_nodes() {
  local k
  for k in $(known_nodes); do
    if [ -f "$DATA/node-$k.added" ] && ! removed "$k"; then echo "$k"; fi
  done
}

PEERS=""
CLUSTER=""
for k in $(seq "$NODES"); do
  a=$(addr "$k")
  PEERS="$PEERS${PEERS:+,}$k=$a"
  removed "$k" && continue
  if ! port_free "$a"; then
    echo "cluster.sh: $a is already in use; pick another --base-port" >&2
    exit 1
  fi
  CLUSTER="$CLUSTER${CLUSTER:+,}$a"
done
for k in $(added_nodes); do
  a=$(saved_addr "$k")
  if ! port_free "$a"; then
    echo "cluster.sh: $a, where node $k (added) listens, is already in use" >&2
    exit 1
  fi
  CLUSTER="$CLUSTER${CLUSTER:+,}$a"
done

if [ "$BUILD" = 1 ]; then
  echo "building poncho (release)..."
  cargo build --release -q -p poncho-server -p poncho-shell
fi

mkdir -p "$DATA"
if [ -n "$(ls -A "$DATA" 2>/dev/null | grep -v -e cluster.pids -e cluster-secret -e cluster-token)" ]; then
  echo "reusing the data in $DATA (scripts/cluster.sh clean to start fresh)"
fi
# The cluster's secret (peers prove they know it) and its token (its
# cluster id derives from it), made once per data directory: a cluster
# started from another data directory is another cluster, and its nodes and
# these refuse each other.
SECRET="$(cd "$DATA" && pwd)/cluster-secret"
if [ ! -s "$SECRET" ]; then
  (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$SECRET"; echo >> "$SECRET")
fi
if [ ! -s "$DATA/cluster-token" ]; then
  echo "local-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" > "$DATA/cluster-token"
fi
TOKEN=$(cat "$DATA/cluster-token")
: > "$PIDFILE"
# Not under `set -e`: a hung-up terminal fails every echo, and the nodes
# must be stopped all the same.
trap 'set +e; stop_nodes' EXIT
trap 'exit 130' INT
trap 'exit 131' QUIT
trap 'exit 143' TERM
trap 'exit 129' HUP

STARTED=()
for k in $(seq "$NODES"); do
  removed "$k" && continue
  STARTED+=("$k")
  a=$(addr "$k")
  # What `restart K` starts the node with again (one argument per line).
  printf '%s\n' --id "$k" --host "${a%:*}" --port "${a#*:}" --peers "$PEERS" \
    --data-dir "$DATA/node-$k" --cluster-secret-file "$SECRET" \
    --initial-cluster-token "$TOKEN" ${SERVER_FLAGS[@]+"${SERVER_FLAGS[@]}"} > "$DATA/node-$k.args"
  hint=()
  [ "$k" = 1 ] && hint=(is_leader)
  launch "$k" ${hint[@]+"${hint[@]}"}
done
for k in $(added_nodes); do
  STARTED+=("$k")
  launch "$k"
done

# Wait until every node listens and one leads.
for k in "${STARTED[@]}"; do
  pid=$(node_pid "$k")
  wait_listening "$k" "$pid" "$(saved_addr "$k")" || exit 1
done
for _ in $(seq 100); do
  if "$BIN/poncho-shell" --cluster "$CLUSTER" --timeout 200ms leader >/dev/null 2>&1; then break; fi
  sleep 0.1
done
LEADER=$("$BIN/poncho-shell" --cluster "$CLUSTER" --timeout 5s leader 2>/dev/null || echo "none yet")
# A node that lost its port to someone else's server exits only now.
for k in "${STARTED[@]}"; do
  pid=$(node_pid "$k")
  wait_listening "$k" "$pid" "$(saved_addr "$k")" || exit 1
done

echo
echo "poncho: ${#STARTED[@]} nodes running (leader: $LEADER)"
running_nodes | sort -n | while read -r k pid; do
  echo "  node $k  $(saved_addr "$k")  pid $pid  data $DATA/node-$k  log $DATA/node-$k.log"
done
echo
echo "connect with:  $BIN/poncho-shell --cluster $CLUSTER"
restart="scripts/cluster.sh restart K"
[ "$DATA" = cluster-data ] || restart="$restart --data $DATA"
echo "restart one:   $restart  (with its flags)"
echo

if [ "$SHELL_TOO" = 1 ] && [ -t 0 ]; then
  echo "stop with:     exit or Ctrl-D in the shell (data is kept; scripts/cluster.sh clean removes it)"
  echo "               Ctrl-C cancels the command or line in the shell; the nodes never see it"
  echo
  # Ctrl-C reaches this script too (the shell runs in its process group):
  # let the shell have it. A trap, unlike an ignored signal, is not
  # inherited by the shell.
  trap ':' INT
  "$BIN/poncho-shell" --cluster "$CLUSTER" || true
else
  echo "stop with:     Ctrl-C here (data is kept; scripts/cluster.sh clean removes it)"
  echo
  echo "running; press Ctrl-C to stop"
  # Twice empty, so a `restart K` of the only node between its stop and its
  # start is not taken for the end.
  while [ -n "$(running_pids)" ] || { sleep 2; [ -n "$(running_pids)" ]; }; do sleep 1; done
  echo "cluster.sh: every node has exited; see the logs in $DATA" >&2
  exit 1
fi
