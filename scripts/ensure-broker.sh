#!/usr/bin/env bash
# Make sure a RabbitMQ answers on $AMQP_HOST:$AMQP_PORT (default 127.0.0.1:5672).
# Starts a local `rabbitmq-server -detached` when the port is closed and the binary exists.
set -euo pipefail
host=${AMQP_HOST:-127.0.0.1}
port=${AMQP_PORT:-5672}

port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if port_open; then
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  cat >&2 <<MSG
No RabbitMQ answers on $host:$port and rabbitmq-server is not installed.
Get one, then run this again:
  Debian/Ubuntu:  sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached
  Docker:         docker run -d -p 5672:5672 -p 15672:15672 rabbitmq:3-management
  or point AMQP_URL (and AMQP_HOST/AMQP_PORT for this check) at a broker you have.
MSG
  exit 1
fi
echo "RabbitMQ is not answering on $host:$port; starting rabbitmq-server -detached" >&2
rabbitmq-server -detached || true
for _ in $(seq 1 90); do
  if port_open; then
    # The port opens before the broker accepts connections for every vhost.
    command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl await_startup >/dev/null 2>&1 || true
    echo "RabbitMQ is up on $host:$port" >&2
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not come up on $host:$port within 90 s; see /var/log/rabbitmq/" >&2
exit 1
