#!/usr/bin/env bash
# Makes sure the NATS servers the tests use answer with JetStream enabled:
#  * the single node (NATS_URL, default 127.0.0.1:4222), started as SERVICES.md says when
#    it is down (never restarted when running);
#  * a three-node JetStream cluster on 127.0.0.1:4231-4233 (routes 6231-6233, servers n1..n3,
#    cluster "tasker"), stores under $HOME/.cache/tasker-mq/nats-cluster, started when not
#    already up; the conformance suite runs on it with three replicas.
# Installs Debian's nats-server when it is missing. Exits non-zero, saying why, when a server
# cannot become reachable.
#
#   scripts/services/nats.sh
set -euo pipefail

url="${NATS_URL:-nats://127.0.0.1:4222}"
authority="${url#*://}"
authority="${authority%%,*}"
authority="${authority%%/*}"
authority="${authority##*@}"
host="${authority%%:*}"
port="${authority##*:}"
[ "$port" = "$authority" ] && port=4222

# Speaks the NATS protocol: the server's first line is INFO {...}; JetStream must be on, and
# the JetStream API must answer an account-info request (a cluster answers once it has a
# meta leader).
jetstream_ready() {
  timeout 4 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    IFS= read -r -t 2 info <&3 || exit 1
    case "$info" in INFO*\"jetstream\":true*) ;; *) exit 1 ;; esac
    printf "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.tasker_probe 1\r\nPUB \$JS.API.INFO _INBOX.tasker_probe 0\r\n\r\nPING\r\n" >&3
    while IFS= read -r -t 3 line <&3; do
      case "$line" in
        *account_info_response*\"error\":*) exit 1 ;;
        *account_info_response*) exit 0 ;;
      esac
    done
    exit 1' "$1" "$2" 2>/dev/null
}

ensure_binary() {
  if command -v nats-server >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nats: installing nats-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats: nats-server is not installed (apt-get install nats-server)" >&2
    exit 1
  fi
}

wait_ready() { # host port what
  for _ in $(seq 1 60); do
    if jetstream_ready "$1" "$2"; then
      return 0
    fi
    sleep 0.5
  done
  echo "nats: $3 on $1:$2 does not answer with JetStream after starting" >&2
  return 1
}

# --- the single node ---
if jetstream_ready "$host" "$port"; then
  echo "nats: JetStream reachable on $host:$port"
else
  case "$host" in
    127.0.0.1 | localhost) ;;
    *)
      echo "nats: $host:$port is unreachable and not local, so it cannot be started here" >&2
      exit 1
      ;;
  esac
  ensure_binary
  echo "nats: down on $host:$port; starting it"
  mkdir -p /var/lib/nats-server 2>/dev/null || true
  bin="$(command -v nats-server)"
  if command -v start-stop-daemon >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec "$bin" -- \
      -a 127.0.0.1 -p "$port" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  else
    setsid nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd /var/lib/nats-server \
      -l /var/log/nats-server.log >/dev/null 2>&1 < /dev/null &
  fi
  wait_ready "$host" "$port" "the single node"
  echo "nats: started, JetStream reachable on $host:$port"
fi

# --- the three-node cluster ---
cluster_dir="${NATS_CLUSTER_DIR:-${HOME:-/tmp}/.cache/tasker-mq/nats-cluster}"
mkdir -p "$cluster_dir" 2>/dev/null || cluster_dir="/tmp/tasker-mq-nats-cluster"
routes="nats://127.0.0.1:6231,nats://127.0.0.1:6232,nats://127.0.0.1:6233"
started=0
for i in 1 2 3; do
  p=$((4230 + i))
  if timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$p" 2>/dev/null; then
    continue
  fi
  ensure_binary
  mkdir -p "$cluster_dir/n$i"
  echo "nats: starting cluster node n$i on 127.0.0.1:$p"
  setsid nohup "$(command -v nats-server)" -a 127.0.0.1 -p "$p" -js -sd "$cluster_dir/n$i" \
    --server_name "n$i" --cluster_name tasker --cluster "nats://127.0.0.1:$((6230 + i))" \
    --routes "$routes" -l "$cluster_dir/n$i.log" >/dev/null 2>&1 < /dev/null &
  started=1
done
for i in 1 2 3; do
  wait_ready 127.0.0.1 $((4230 + i)) "cluster node n$i" || exit 1
done
if [ "$started" = 1 ]; then
  echo "nats: cluster started, JetStream reachable on 127.0.0.1:4231-4233"
else
  echo "nats: cluster reachable on 127.0.0.1:4231-4233"
fi
