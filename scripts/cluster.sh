#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the failover tests, beside the machine's own broker.
#
#   scripts/cluster.sh start          start (and form) the cluster; a no-op when it runs
#   scripts/cluster.sh stop           stop every node (data kept: `start` brings it back)
#   scripts/cluster.sh status         each node: running or not, and the cluster it sees
#   scripts/cluster.sh urls           the AMQP_URL of the cluster (comma-separated)
#   scripts/cluster.sh stop-node N    stop node N (1-3) the way an operator would
#   scripts/cluster.sh kill-node N    SIGKILL node N's Erlang VM (a crash)
#   scripts/cluster.sh start-node N   start node N again; it rejoins by itself
#   scripts/cluster.sh reset          stop every node and delete the cluster's data
#
# Runs as root with the installed rabbitmq-server. Node N is scx-node-N@localhost, AMQP on
# 127.0.0.1:$((CLUSTER_BASE_PORT + N)) (5681-5683), Erlang distribution on 2568N; its config,
# mnesia, logs, feature flags and plugins live in $CLUSTER_DIR/nodeN, owned by the rabbitmq
# user. The machine's own broker (rabbit@<host>, 5672, /etc/rabbitmq) is never touched:
# every node gets its own config and env files, so nothing of /etc/rabbitmq applies.
set -euo pipefail

CLUSTER_DIR=${CLUSTER_DIR:-/var/lib/scx-rabbitmq-cluster}
CLUSTER_BASE_PORT=${CLUSTER_BASE_PORT:-5680}
CLUSTER_DIST_BASE_PORT=${CLUSTER_DIST_BASE_PORT:-25680}
NODES=(1 2 3)
RABBITMQ_BIN=/usr/lib/rabbitmq/bin
COOKIE=/var/lib/rabbitmq/.erlang.cookie
STARTUP_TIMEOUT=${CLUSTER_STARTUP_TIMEOUT:-180}

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

node_name() { echo "scx-node-$1@localhost"; }
amqp_port() { echo $((CLUSTER_BASE_PORT + $1)); }
node_dir() { echo "$CLUSTER_DIR/node$1"; }

# rabbitmqctl as root: the CLI reads the Erlang cookie from $HOME, so it needs the nodes'.
ctl() {
  local n=$1
  shift
  "$RABBITMQ_BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
}

preflight() {
  [ "$(id -u)" = 0 ] || die "run as root (the nodes run as the rabbitmq user)"
  [ -x "$RABBITMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server is not installed ($RABBITMQ_BIN)"
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user"
  [ -f "$COOKIE" ] || die "no Erlang cookie at $COOKIE (start the machine's broker once)"
  if [ ! -f "$HOME/.erlang.cookie" ]; then
    install -m 0400 "$COOKIE" "$HOME/.erlang.cookie"
  elif ! cmp -s "$COOKIE" "$HOME/.erlang.cookie"; then
    die "$HOME/.erlang.cookie differs from $COOKIE: rabbitmqctl could not reach the nodes"
  fi
}

configure() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log" "$dir/plugins-expand"
  cat >"$dir/rabbitmq.conf" <<CONF
# Node $n of the test cluster (scripts/cluster.sh); generated, edits are overwritten.
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
log.file.level = info
log.console = false
CONF
  # Replaces /etc/rabbitmq/rabbitmq-env.conf (which names the machine's node).
  cat >"$dir/rabbitmq-env.conf" <<CONF
ERL_EPMD_ADDRESS=127.0.0.1
CONF
  echo '[].' >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$CLUSTER_DIR"
  chmod 0750 "$CLUSTER_DIR"
}

running() {
  ctl "$1" ping >/dev/null 2>&1
}

launch() {
  local n=$1 dir
  dir=$(node_dir "$n")
  if running "$n"; then
    return 0
  fi
  configure "$n"
  say "starting $(node_name "$n") on 127.0.0.1:$(amqp_port "$n")"
  (cd "$dir" && runuser -u rabbitmq -- env -i \
    PATH=/usr/bin:/bin:/usr/sbin:/sbin \
    HOME=/var/lib/rabbitmq \
    LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_DIST_PORT="$((CLUSTER_DIST_BASE_PORT + n))" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$RABBITMQ_BIN/rabbitmq-server" -detached 9>&-) \
    || die "rabbitmq-server did not start for node $n; see $dir/log"
}

await_node() {
  local n=$1 deadline=$((SECONDS + STARTUP_TIMEOUT))
  # await_startup needs the Erlang VM up (it fails at once before), then waits for the app.
  until ctl "$n" await_startup --timeout "$STARTUP_TIMEOUT" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] \
      || die "node $(node_name "$n") did not boot within $STARTUP_TIMEOUT s; see $(node_dir "$n")/log"
    sleep 1
  done
}

# The nodes the first running node lists as members of its cluster (running or not).
members() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      ctl "$n" cluster_status --formatter json 2>/dev/null \
        | grep -o '"disk_nodes":\[[^]]*\]' | grep -o '[a-z0-9-]*@[a-z0-9.-]*' | xargs || true
      return
    fi
  done
}

join() {
  local n=$1
  case " $(members) " in
    *" $(node_name "$n") "*) return 0 ;;
  esac
  say "joining $(node_name "$n") to $(node_name 1)"
  local step out
  for step in stop_app reset "join_cluster $(node_name 1)" start_app; do
    # shellcheck disable=SC2086 # the step's words are its arguments
    out=$(ctl "$n" $step 2>&1) || die "rabbitmqctl $step on node $n failed: $out"
  done
  await_node "$n"
}

urls() {
  local out="" n
  for n in "${NODES[@]}"; do
    out+="${out:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"
  done
  echo "$out"
}

start() {
  local n
  # Every node first, then the waits: a node that was clustered waits at boot for its peers.
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]:1}"; do join "$n"; done
  local want have
  want=$(for n in "${NODES[@]}"; do node_name "$n"; done | sort | xargs)
  have=$(members | tr ' ' '\n' | sort | xargs)
  [ "$want" = "$have" ] || die "cluster formed as [$have], expected [$want]; try: $0 reset && $0 start"
  say "cluster up: $(urls)"
}

stop_node() {
  local n=$1
  if running "$n"; then
    say "stopping $(node_name "$n")"
    ctl "$n" stop >/dev/null
  fi
}

kill_node() {
  local n=$1 pid_file pid
  pid_file="$(node_dir "$n")/rabbitmq.pid"
  [ -f "$pid_file" ] || die "node $n has no pid file (not started by this script?)"
  pid=$(cat "$pid_file")
  if kill -0 "$pid" 2>/dev/null; then
    say "killing $(node_name "$n") (pid $pid)"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
}

status() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "$(node_name "$n") running on 127.0.0.1:$(amqp_port "$n")"
    else
      echo "$(node_name "$n") stopped"
    fi
  done
  echo "members: $(members || true)"
  echo "AMQP_URL=$(urls)"
}

node_arg() {
  case "${1:-}" in
    1 | 2 | 3) echo "$1" ;;
    *) die "which node? 1, 2 or 3" ;;
  esac
}

main() {
  local command=${1:-}
  [ "$command" = urls ] && { urls; return; }
  preflight
  mkdir -p "$CLUSTER_DIR"
  # One caller at a time: tests of several sessions may start it together.
  exec 9>"$CLUSTER_DIR.lock"
  flock 9
  case "$command" in
    start) start ;;
    stop) for n in "${NODES[@]}"; do stop_node "$n"; done ;;
    status) status ;;
    stop-node) stop_node "$(node_arg "${2:-}")" ;;
    kill-node) kill_node "$(node_arg "${2:-}")" ;;
    start-node)
      n=$(node_arg "${2:-}")
      launch "$n"
      await_node "$n"
      ;;
    reset)
      for n in "${NODES[@]}"; do stop_node "$n"; done
      rm -rf "$CLUSTER_DIR"
      ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
