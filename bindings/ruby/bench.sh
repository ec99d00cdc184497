#!/usr/bin/env bash
# Release build of the extension, then the round-trip benchmark (bench/round_trip.rb).
#   bindings/ruby/bench.sh     (MESSAGES, BATCH, RUNS tune it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/build.sh" --release
cd "$here"
exec ruby -Ilib bench/round_trip.rb
