#!/usr/bin/env bash
# Make sure a Redis answers on $REDIS_HOST:$REDIS_PORT (default 127.0.0.1:6379): the tests of
# the optional progress record (WORKER_STATE_REDIS_URL) use it, each under its own key prefix.
# Starts a local `redis-server --daemonize yes` when the port is closed and the binary exists.
set -euo pipefail
host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}

port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if port_open; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  cat >&2 <<MSG
No Redis answers on $host:$port and redis-server is not installed.
  Debian/Ubuntu:  sudo apt-get install redis-server
  Docker:         docker run -d -p 6379:6379 redis:7
MSG
  exit 1
fi
echo "Redis is not answering on $host:$port; starting redis-server --daemonize yes" >&2
redis-server --bind "$host" --port "$port" --daemonize yes --save '' --appendonly no >/dev/null
for _ in $(seq 1 30); do
  if port_open; then
    echo "Redis is up on $host:$port" >&2
    exit 0
  fi
  sleep 1
done
echo "Redis did not come up on $host:$port within 30 s" >&2
exit 1
