#!/usr/bin/env bash
# Makes sure the RabbitMQ broker the tests use answers (AMQP_URL, default 127.0.0.1:5672):
# starts the local broker when it is down (never restarts a running one) and exits non-zero,
# saying why, when it cannot become reachable.
#
#   scripts/services/rabbitmq.sh
set -euo pipefail

url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# host and port of the URL (userinfo and path dropped; the password is never printed).
authority="${url#*://}"
authority="${authority%%/*}"
authority="${authority##*@}"
host="${authority%%:*}"
port="${authority##*:}"
[ "$port" = "$authority" ] && port=5672
# The node name Debian's rabbitmq-env.conf gives; rabbitmqctl needs it when started by hand.
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"

# A TCP connect alone can succeed through a proxy: speak the AMQP 0-9-1 greeting and expect
# the broker's first method frame (type 1, connection.start).
reachable() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    first=$(head -c 1 <&3 | od -An -tx1 | tr -d " ")
    [ "$first" = "01" ]' "$host" "$port" 2>/dev/null
}

if reachable; then
  echo "rabbitmq: reachable on $host:$port"
  exit 0
fi

case "$host" in
  127.0.0.1 | localhost | ::1) ;;
  *)
    echo "rabbitmq: $host:$port is unreachable and not local, so it cannot be started here" >&2
    exit 1
    ;;
esac

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "rabbitmq: installing rabbitmq-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "rabbitmq: rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2
    exit 1
  fi
fi

echo "rabbitmq: down on $host:$port; starting it"
rabbitmq-server -detached || true
if ! timeout 90 rabbitmqctl await_startup >/dev/null 2>&1; then
  echo "rabbitmq: the node $RABBITMQ_NODENAME did not finish starting within 90 s" >&2
fi
for _ in $(seq 1 60); do
  if reachable; then
    echo "rabbitmq: started, reachable on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: still unreachable on $host:$port after starting; see /var/log/rabbitmq/" >&2
exit 1
