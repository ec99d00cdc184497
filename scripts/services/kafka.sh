#!/usr/bin/env bash
# Makes sure the Kafka-protocol broker the tests use answers (KAFKA_BROKERS, default
# 127.0.0.1:9092): starts a local tansu broker (in-memory storage) when nothing answers there
# (never restarts a running one), installing tansu with cargo when it is missing (cached
# outside the clone, so the next run finds it), and exits non-zero, saying why, when the
# broker cannot become reachable.
#
#   scripts/services/kafka.sh
#
# TANSU_VERSION pins the broker; TASKER_MQ_CACHE (default ~/.cache/tasker-mq) holds it.
set -euo pipefail

brokers="${KAFKA_BROKERS:-127.0.0.1:9092}"
first="${brokers%%,*}"
host="${first%:*}"
port="${first##*:}"
[ "$port" = "$first" ] && port=9092
version="${TANSU_VERSION:-0.6.0}"
cache="${TASKER_MQ_CACHE:-$HOME/.cache/tasker-mq}"
root="$cache/tansu-$version"
bin="$root/bin/tansu"
log="${TANSU_LOG:-/tmp/tasker-tansu-$port.log}"

# A TCP connect alone proves nothing: send a Kafka ApiVersions v0 request (api key 18,
# correlation id 7, client id "tk") and expect a response carrying correlation id 7.
reachable() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x07\x00\x02tk" >&3
    answer=$(head -c 8 <&3 | od -An -tx1 | tr -d " \n")
    [ "${answer:8:8}" = "00000007" ]' "$host" "$port" 2>/dev/null
}

if reachable; then
  echo "kafka: a Kafka-protocol broker answers on $host:$port"
  exit 0
fi

case "$host" in
  127.0.0.1 | localhost | ::1) ;;
  *)
    echo "kafka: $host:$port does not answer and is not local, so it cannot be started here" >&2
    exit 1
    ;;
esac

if [ ! -x "$bin" ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "kafka: tansu is not installed at $bin and cargo is missing to install it" >&2
    exit 1
  fi
  echo "kafka: installing tansu $version into $root (a one-off build, ~10-20 min)"
  target="$(mktemp -d /tmp/tansu-build.XXXXXX)"
  # memory:// storage is the dynostore engine; nothing else is needed for tests.
  if ! CARGO_TARGET_DIR="$target" cargo install tansu --version "$version" --locked \
      --no-default-features --features dynostore --root "$root" >"$target.log" 2>&1; then
    tail -20 "$target.log" >&2
    rm -rf "$target"
    echo "kafka: installing tansu failed (log above)" >&2
    exit 1
  fi
  rm -rf "$target" "$target.log"
fi

echo "kafka: nothing answers on $host:$port; starting tansu (memory storage, log $log)"
# Detached in its own session, stdin/stdout/stderr redirected and every other inherited
# descriptor closed, so a caller waiting on a pipe (CI) is not held open by the broker.
setsid -f bash -c '
  for fd in /proc/$$/fd/*; do
    n="${fd##*/}"
    [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"
  done
  exec "$0" broker --listener-url "tcp://$1:$2" --advertised-listener-url "tcp://$1:$2" \
    --storage-engine memory://tansu/' "$bin" "$host" "$port" </dev/null >>"$log" 2>&1

for _ in $(seq 1 60); do
  if reachable; then
    echo "kafka: tansu started, answering on $host:$port"
    exit 0
  fi
  sleep 0.5
done
echo "kafka: tansu did not answer on $host:$port within 30 s; last lines of $log:" >&2
tail -20 "$log" >&2 || true
exit 1
