#!/usr/bin/env bash
# The whole test suite, from a fresh clone: starts the services the tests need (failing, not
# skipping, when one cannot be reached), then runs every test of the workspace and the
# conformance suite of every provider, printing each case's outcome.
#
#   scripts/test.sh
#
# Environment: DATABASE_URL, AMQP_URL, REDIS_URL, NATS_URL, SQS_ENDPOINT_URL, KAFKA_BROKERS
# override the local defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services: one script per backend the compiled providers need. Each starts its server when it
# is down and exits non-zero (with the reason) when it cannot.
for service in scripts/services/*.sh; do
  [ -e "$service" ] || continue
  echo "== service: $(basename "$service" .sh)"
  "$service"
done

echo "== unit and integration tests"
cargo test --workspace --all-features --no-fail-fast -- --skip conformance_

# The Ruby binding (bindings/ruby): builds the extension into this target dir, reusing the
# dependencies compiled above, then runs its minitest suite (in-memory, PGMQ, RabbitMQ, and
# the CLI as the Rust end of the interop tests). scripts/services/ruby.sh installed Ruby.
echo "== ruby binding"
bindings/ruby/test.sh

echo "== conformance suite (one line per case)"
cargo test --workspace --all-features --no-fail-fast --test 'conformance_*' -- --nocapture --test-threads 1

# Stress mode: every case 4 times at once, each copy on its own queues (cases in turn); nothing
# lost, no duplicate within a lease. Measured per binary: in-memory 17 s, PGMQ 36 s, RabbitMQ
# quorum + classic 61 s, the in-memory stacks ~35 s, Redis + Redis Cluster 40-51 s, Kafka 46 s,
# NATS 15 s, SQS standard + FIFO on moto (one request at a time) about 3 min.
echo "== conformance suite, stress mode (CONFORMANCE_PARALLEL=4)"
CONFORMANCE_PARALLEL=4 cargo test --workspace --all-features --no-fail-fast --test 'conformance_*' -- --nocapture --test-threads 1
