#!/usr/bin/env bash
# Makes the Ruby toolchain the Ruby binding (bindings/ruby) needs: Debian's ruby and ruby-dev
# (headers for rb-sys), libclang-dev (bindgen) and ruby-minitest (the test runner). Installs the
# missing ones with apt-get, non-interactively; does nothing when all are there.
#
#   scripts/services/ruby.sh
#
# Exits non-zero, saying why, when a package is missing and cannot be installed (CI then fails
# instead of skipping the binding's tests).
set -euo pipefail

fail() {
  echo "ruby.sh: $*" >&2
  exit 1
}

packages=(ruby ruby-dev libclang-dev ruby-minitest)
missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$package")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "ruby.sh: installing ${missing[*]}"
  command -v apt-get >/dev/null || fail "apt-get is not available to install ${missing[*]}"
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "not root and no sudo: install ${missing[*]} by hand"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed"
fi

command -v ruby >/dev/null || fail "ruby is not on PATH after installing it"
ruby -e 'require "minitest"' 2>/dev/null || fail "ruby cannot load minitest"
ruby -e 'exit(File.exist?(File.join(RbConfig::CONFIG["rubyhdrdir"], "ruby.h")) ? 0 : 1)' \
  || fail "ruby.h not found (ruby-dev)"
echo "ruby.sh: $(ruby -e 'print RUBY_DESCRIPTION'), minitest $(ruby -e 'require "minitest"; print Minitest::VERSION')"
