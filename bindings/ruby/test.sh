#!/usr/bin/env bash
# Builds the extension (debug) and runs the binding's minitest suite in one Ruby process; the
# last line is minitest's count of runs, assertions, failures, errors and skips.
#
#   bindings/ruby/test.sh [minitest options, e.g. -n /gvl/ -v]
#
# The PGMQ and RabbitMQ tests use DATABASE_URL and AMQP_URL (local defaults); they skip when the
# server is unreachable, and fail instead under CI=true. The interop tests use the CLI,
# TASKER_CLI_BIN or target/debug/tasker-mq (built here when missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

"$here/build.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${TASKER_CLI_BIN:-}" ]; then
  export TASKER_CLI_BIN="$CARGO_TARGET_DIR/debug/tasker-mq"
  if [ ! -x "$TASKER_CLI_BIN" ]; then
    echo "test.sh: building the tasker-mq CLI for the interop tests"
    (cd "$root" && cargo build --workspace --all-features --bin tasker-mq)
  fi
fi

cd "$here"
exec ruby -w -Ilib -Itest -e 'Dir.glob("test/**/*_test.rb").sort.each { |f| require File.expand_path(f) }' -- "$@"
