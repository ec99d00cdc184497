#!/usr/bin/env bash
# Makes the machine's PostgreSQL usable by the tests: starts the cluster when it is down, waits
# until it accepts connections, and makes sure the test database exists. pgmq's SQL itself is
# installed by the provider (install_sql = true in the tests), offline.
#
#   scripts/services/postgres.sh
#
# Environment: DATABASE_URL (default postgres://postgres:postgres@127.0.0.1:5432/test).
# Exits non-zero, saying why, when PostgreSQL cannot be made ready.
set -euo pipefail

url="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
# The database named in the URL, and the same server's maintenance database.
db="${url##*/}"
db="${db%%\?*}"
admin_url="${url%/*}/postgres"

fail() {
  echo "postgres.sh: $*" >&2
  exit 1
}

command -v psql >/dev/null || fail "psql is not installed (apt-get install postgresql-client)"

ready() { pg_isready -q -d "$admin_url" 2>/dev/null; }

if ! ready; then
  echo "postgres.sh: PostgreSQL is not accepting connections; starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 || true
    done
  else
    fail "PostgreSQL is down and pg_ctlcluster is not available to start it"
  fi
  for _ in $(seq 1 60); do
    ready && break
    sleep 0.5
  done
  ready || fail "PostgreSQL did not accept connections within 30 s at ${url#*@} (see /var/log/postgresql)"
fi

[[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || fail "unexpected database name in DATABASE_URL: $db"
exists="$(psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" \
  || fail "cannot query PostgreSQL as given by DATABASE_URL"
if [ "$exists" != "1" ]; then
  psql "$admin_url" -qc "CREATE DATABASE \"$db\"" || fail "cannot create database $db"
  echo "postgres.sh: created database $db"
fi
psql "$url" -qtAc "SELECT 1" >/dev/null || fail "cannot connect to database $db"
echo "postgres.sh: PostgreSQL ready, database $db"
