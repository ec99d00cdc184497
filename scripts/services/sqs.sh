#!/usr/bin/env bash
# Makes sure the local SQS endpoint the tests use answers (SQS_ENDPOINT_URL, default
# http://127.0.0.1:4566): moto in server mode (PyPI `moto[server]`), installed with pip when
# missing and started in the background when nothing answers (never restarts a running one),
# one request at a time (see below).
# Exits non-zero, saying why, when it cannot become reachable.
#
#   scripts/services/sqs.sh
set -euo pipefail

url="${SQS_ENDPOINT_URL:-http://127.0.0.1:4566}"
authority="${url#*://}"
authority="${authority%%/*}"
authority="${authority##*@}" # user info (static test keys) is never printed
host="${authority%%:*}"
port="${authority##*:}"
[ "$port" = "$authority" ] && port=80
endpoint="http://$host:$port/"
log="${TMPDIR:-/tmp}/tasker-moto-$port.log"

# A TCP connect is not enough: ask for ListQueues in SQS's JSON protocol (what aws-sdk-sqs
# speaks) and expect a JSON answer naming QueueUrls (or an empty list).
reachable() {
  local body
  body=$(curl -s -m 3 -X POST "$endpoint" \
    -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Target: AmazonSQS.ListQueues' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=x' \
    -d '{}' 2>/dev/null) || return 1
  case "$body" in
    \{*) [[ "$body" != *'"__type"'* ]] ;;
    *) return 1 ;;
  esac
}

if reachable; then
  echo "sqs: reachable on $host:$port"
  exit 0
fi

case "$host" in
  127.0.0.1 | localhost | ::1) ;;
  *)
    echo "sqs: $host:$port does not answer SQS and is not local, so it cannot be started here" >&2
    exit 1
    ;;
esac

if ! command -v curl >/dev/null 2>&1; then
  echo "sqs: curl is needed to check the endpoint (apt-get install curl)" >&2
  exit 1
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "sqs: $python is not installed; moto (PyPI moto[server]) needs Python 3" >&2
  exit 1
fi
if ! "$python" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; then
  echo "sqs: installing moto[server] with $python -m pip"
  "$python" -m pip install -q 'moto[server]' || {
    echo "sqs: pip install 'moto[server]' failed" >&2
    exit 1
  }
  command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
  if ! "$python" -c 'import moto.server' >/dev/null 2>&1; then
    echo "sqs: moto[server] was installed but $python cannot import moto.server" >&2
    exit 1
  fi
fi

if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "sqs: something else listens on $host:$port and does not answer SQS; not touching it" >&2
  exit 1
fi

# moto_server as `moto_server -H host -p port` would start it, but serving one request at a
# time: moto's ReceiveMessage is not atomic across its request threads (two concurrent
# receives can lease the same message), which real SQS does not do.
launcher='
import sys
import moto.server as server
run_simple = server.run_simple
server.run_simple = lambda *a, **k: run_simple(*a, **dict(k, threaded=False))
server.main(sys.argv[1:])
'
echo "sqs: nothing answers on $host:$port; starting moto (single-threaded; log: $log)"
# Detached from this shell: own session, no inherited descriptors beyond the log.
setsid nohup "$python" -c "$launcher" -H "$host" -p "$port" </dev/null >"$log" 2>&1 3>&- 4>&- 5>&- &
for _ in $(seq 1 60); do
  if reachable; then
    echo "sqs: moto started, reachable on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "sqs: moto did not answer SQS on $host:$port within 60 s; see $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
