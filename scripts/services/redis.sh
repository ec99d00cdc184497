#!/usr/bin/env bash
# Makes sure the Redis servers the tests use answer:
#  * the standalone server (REDIS_URL, default redis://127.0.0.1:6379), started when it is down
#    (never restarted when it runs);
#  * a 3-master Redis Cluster on 127.0.0.1:7000-7002 (REDIS_CLUSTER_PORTS), started from the
#    machine's redis-server in its own folders ($HOME/.cache/tasker-mq/redis-cluster, or /tmp)
#    and joined with `redis-cli --cluster create` when it is not up and healthy
#    (`cluster info` says cluster_state:ok).
# Installs redis-server when it is missing (apt-get, as root). Exits non-zero, saying why, when
# a server cannot become reachable. The password is never printed.
#
#   scripts/services/redis.sh
set -euo pipefail

url="${REDIS_URL:-redis://127.0.0.1:6379}"
authority="${url#*://}"
authority="${authority%%/*}"
authority="${authority%%\?*}"
userinfo=""
case "$authority" in *@*) userinfo="${authority%@*}" ;; esac
authority="${authority##*@}"
host="${authority%%:*}"
port="${authority##*:}"
[ "$port" = "$authority" ] && port=6379
password="${userinfo#*:}"
[ "$password" = "$userinfo" ] && password=""
cluster_ports="${REDIS_CLUSTER_PORTS:-7000 7001 7002}"

# PING in the Redis protocol (AUTH first when the URL has a password); a TCP connect alone
# could be anything. Answers +PONG (or -NOAUTH when a password is needed and wrong).
ping() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    if [ -n "$2" ]; then printf "AUTH %s\r\n" "$2" >&3; head -c 1 <&3 >/dev/null; read -r _ <&3; fi
    printf "PING\r\n" >&3
    read -r reply <&3
    [ "${reply%$'"'"'\r'"'"'}" = "+PONG" ]' "$1" "$2" "${3:-}" 2>/dev/null
}

ensure_installed() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis: installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis: redis-server is not installed (apt-get install redis-server)" >&2
    exit 1
  fi
}

# --- the standalone server
if ping "$host" "$port" "$password"; then
  echo "redis: reachable on $host:$port"
else
  case "$host" in
    127.0.0.1 | localhost | ::1) ;;
    *)
      echo "redis: $host:$port is unreachable and not local, so it cannot be started here" >&2
      exit 1
      ;;
  esac
  ensure_installed
  echo "redis: down on $host:$port; starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  dir=/var/lib/redis
  log=/var/log/redis/ci.log
  [ -w "$dir" ] || dir="$(mktemp -d)"
  [ -w "$(dirname "$log")" ] || log="$dir/redis.log"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no \
    --dir "$dir" --logfile "$log" ${password:+--requirepass "$password"}
  ok=""
  for _ in $(seq 1 30); do
    if ping "$host" "$port" "$password"; then ok=1; break; fi
    sleep 0.5
  done
  if [ -z "$ok" ]; then
    echo "redis: still unreachable on $host:$port after starting; see $log" >&2
    exit 1
  fi
  echo "redis: started, reachable on $host:$port"
fi

# --- the cluster
cluster_ok() {
  for p in $cluster_ports; do
    redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

ensure_installed
if cluster_ok; then
  echo "redis cluster: healthy on ports $cluster_ports"
  exit 0
fi

base="${HOME:-/tmp}/.cache/tasker-mq/redis-cluster"
mkdir -p "$base" 2>/dev/null || base="/tmp/tasker-mq-redis-cluster"
nodes=()
for p in $cluster_ports; do
  nodes+=("127.0.0.1:$p")
  if ping 127.0.0.1 "$p"; then continue; fi
  mkdir -p "$base/$p"
  echo "redis cluster: starting the node on port $p ($base/$p)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
    --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 5000 --dir "$base/$p" \
    --save "" --appendonly no --logfile "$base/$p/redis.log"
done
for p in $cluster_ports; do
  for _ in $(seq 1 30); do
    if ping 127.0.0.1 "$p"; then break; fi
    sleep 0.5
  done
  if ! ping 127.0.0.1 "$p"; then
    echo "redis cluster: the node on port $p does not answer; see $base/$p/redis.log" >&2
    exit 1
  fi
done

# Restarted nodes that kept their nodes-*.conf rejoin by themselves; give them a moment.
for _ in $(seq 1 10); do
  cluster_ok && break
  sleep 0.5
done
if ! cluster_ok; then
  known=$(redis-cli -p "${cluster_ports%% *}" cluster info | grep '^cluster_known_nodes' | tr -dc 0-9)
  if [ "${known:-1}" != "1" ]; then
    # A half-formed cluster from an earlier run: start over (these nodes are the tests' own).
    echo "redis cluster: resetting a cluster that is not healthy"
    for p in $cluster_ports; do
      redis-cli -p "$p" flushall >/dev/null 2>&1 || true
      redis-cli -p "$p" cluster reset hard >/dev/null
    done
  fi
  echo "redis cluster: creating it from ${nodes[*]}"
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
fi
for _ in $(seq 1 60); do
  if cluster_ok; then
    echo "redis cluster: healthy on ports $cluster_ports"
    exit 0
  fi
  sleep 0.5
done
echo "redis cluster: cluster_state is not ok after 30 s; see $base/*/redis.log" >&2
exit 1
