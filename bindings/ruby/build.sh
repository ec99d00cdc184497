#!/usr/bin/env bash
# Builds the native extension of the Ruby binding with cargo alone (no gem registry needed) and
# copies it to lib/tasker_core/tasker_messaging_native.so, where `require "tasker_core"` (with
# -Ilib) finds it.
#
#   bindings/ruby/build.sh            # debug build (tests)
#   bindings/ruby/build.sh --release  # optimized build (benchmarks, production)
#
# Installs the Ruby toolchain first when it is missing (scripts/services/ruby.sh). Builds into
# the repository's target dir (CARGO_TARGET_DIR overrides it), so the dependencies the main
# workspace already compiled with the same features are reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

profile=debug
cargo_args=()
case "${1:-}" in
  "") ;;
  --release) profile=release; cargo_args+=(--release) ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

"$root/scripts/services/ruby.sh" >/dev/null

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cd "$here"
cargo build --locked "${cargo_args[@]}"

built="$CARGO_TARGET_DIR/$profile/libtasker_messaging_native.so"
dest="$here/lib/tasker_core/tasker_messaging_native.so"
[ -f "$built" ] || { echo "build.sh: $built was not built" >&2; exit 1; }
# Copy then rename: a process that has the old library loaded keeps its (unlinked) file.
cp "$built" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "build.sh: $profile extension at ${dest#"$root"/}"
