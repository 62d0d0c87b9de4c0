#!/bin/sh
# IMAGES=local only: the part of the official postgres image's entrypoint this project relies on.
# First start (empty data dir): initdb with POSTGRES_USER/POSTGRES_PASSWORD, scram-sha-256 for
# network clients, listen on all addresses, create POSTGRES_DB. Later starts keep the data.
# Ends by exec'ing postgres, so it is PID 1 and gets the stop signal itself.
set -eu

if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
  PGDATA="${PGDATA:-/var/lib/postgresql/data}"
  export PGDATA
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
      echo "postgres-entrypoint: POSTGRES_PASSWORD is empty: refusing to initialise" >&2
      exit 1
    fi
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pwfile"
    printf '\n# postgres-entrypoint: network clients need a password\nhost all all all scram-sha-256\n' \
      >>"$PGDATA/pg_hba.conf"
    printf "\n# postgres-entrypoint\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
      # A server on the socket only, to create the database, then stopped again.
      pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
      psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres --no-psqlrc \
        --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
      pg_ctl -D "$PGDATA" -m fast -w stop
    fi
    echo "postgres-entrypoint: initialised $PGDATA (user $user, database $db)"
  fi
fi

exec "$@"
