#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for the tests: a fresh cluster in a temporary directory,
# listening on 127.0.0.1 at a random free port and on a unix socket in that directory, tuned
# for speed over durability (fsync, synchronous_commit and full_page_writes off).
#
# Sourced (what scripts/test.sh does):
#   source scripts/test-postgres.sh
#   warp_test_pg_start          # exports WARP_TEST_DSN, WARP_TEST_PGBIN, WARP_TEST_PGDIR
#   trap warp_test_pg_stop EXIT # stops the server and removes its directory
# Run:
#   scripts/test-postgres.sh run COMMAND [ARG...]  # start, run COMMAND with the variables, stop
#   scripts/test-postgres.sh start                 # start; print `export ...` lines for eval
#   scripts/test-postgres.sh stop DIR              # stop the server of DIR (WARP_TEST_PGDIR)
#   scripts/test-postgres.sh pause DIR             # stop it (pg_ctl -m fast), keep DIR and its data
#   scripts/test-postgres.sh resume DIR            # start a paused server again on the same port
# pause and resume simulate a database outage (tests/outage_pg_test.cpp); they need DIR and act
# only on a directory this script made.
#
# WARP_TEST_DSN is a libpq conninfo for database warp_test as the superuser `postgres`, e.g.
# `host=/tmp/warp-pg.AbC123 port=41234 user=postgres dbname=warp_test`; tests create their own
# databases through it. WARP_TEST_PGBIN is the server's bin directory (pg_ctl, psql, ...).
# As root the cluster belongs to the `postgres` user (initdb refuses root); otherwise to the
# current user. Override the bin directory with WARP_TEST_PGBIN; WARP_TEST_PG_CONF holds extra
# postgresql.conf lines.

warp_test_pg__log() { echo "test-postgres: $*" >&2; }

# Runs its arguments as the cluster's owner.
warp_test_pg__as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

warp_test_pg_start() {
  local pgbin=${WARP_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
  if [[ ! -x $pgbin/initdb || ! -x $pgbin/pg_ctl ]]; then
    warp_test_pg__log "no PostgreSQL server binaries in $pgbin (install postgresql-15)"
    return 1
  fi
  if [[ $(id -u) -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    warp_test_pg__log "running as root but there is no 'postgres' user to own the cluster"
    return 1
  fi

  local dir
  # /tmp rather than $TMPDIR: the socket path must stay under 108 bytes.
  dir=$(mktemp -d /tmp/warp-pg.XXXXXX) || return 1
  # A marker so that stop removes only directories this script made.
  touch "$dir/.warp-test-postgres"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir" "$dir/.warp-test-postgres"
  fi

  # The superuser is called `postgres` whoever owns the cluster, so the DSN is the same.
  if ! warp_test_pg__as_owner "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust \
    --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1; then
    warp_test_pg__log "initdb failed:"
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    return 1
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF

# scripts/test-postgres.sh: a throwaway server for tests.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
EOF
  # Extra settings from the caller (bench/run.sh preloads pg_stat_statements this way).
  if [[ -n ${WARP_TEST_PG_CONF:-} ]]; then
    printf '%s\n' "$WARP_TEST_PG_CONF" >>"$dir/data/postgresql.conf"
  fi

  # Pick a random port; if the server cannot bind it (taken meanwhile), try another one.
  local port="" attempt candidate
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    candidate=$((20000 + RANDOM % 40000))
    if warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $candidate" start >/dev/null 2>&1; then
      port=$candidate
      break
    fi
    warp_test_pg__log "server did not start on port $candidate (attempt $attempt), retrying"
    warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true
  done
  if [[ -z $port ]]; then
    warp_test_pg__log "could not start PostgreSQL; its log:"
    cat "$dir/server.log" >&2 || true
    rm -rf "$dir"
    return 1
  fi

  if ! "$pgbin/createdb" -h "$dir" -p "$port" -U postgres warp_test; then
    warp_test_pg__log "createdb warp_test failed"
    warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
    return 1
  fi

  # For resume: a restarted server must come back where its clients look for it.
  echo "$port" >"$dir/port"

  export WARP_TEST_PGDIR=$dir
  export WARP_TEST_PGBIN=$pgbin
  export WARP_TEST_DSN="host=$dir port=$port user=postgres dbname=warp_test"
  warp_test_pg__log "PostgreSQL on 127.0.0.1:$port and $dir ($WARP_TEST_DSN)"
}

# Stops the server of DIR (default $WARP_TEST_PGDIR) and removes DIR. Never fails, so that it
# can run from an EXIT trap without changing the exit status.
warp_test_pg_stop() {
  local dir=${1:-${WARP_TEST_PGDIR:-}}
  local pgbin=${WARP_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
  if [[ -z $dir || ! -f $dir/.warp-test-postgres ]]; then
    return 0
  fi
  if [[ -f $dir/data/postmaster.pid ]]; then
    warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 ||
      warp_test_pg__log "pg_ctl stop failed for $dir"
  fi
  rm -rf "$dir"
  if [[ ${WARP_TEST_PGDIR:-} == "$dir" ]]; then
    unset WARP_TEST_PGDIR WARP_TEST_DSN
  fi
  return 0
}

# The cluster directory DIR if this script made it; otherwise logs why not and fails.
warp_test_pg__own_dir() {
  if [[ -z ${1:-} || ! -f $1/.warp-test-postgres ]]; then
    warp_test_pg__log "not a directory of scripts/test-postgres.sh: '${1:-}'"
    return 1
  fi
}

# Stops the server of DIR (mode fast: sessions are terminated, as in a restart) and keeps DIR,
# its data and its port for warp_test_pg_resume.
warp_test_pg_pause() {
  local dir=${1:-}
  local pgbin=${WARP_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
  warp_test_pg__own_dir "$dir" || return 1
  if ! warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" -w -t 60 stop -m fast >/dev/null; then
    warp_test_pg__log "pg_ctl stop failed for $dir"
    return 1
  fi
}

# Starts the paused server of DIR again on the port it had.
warp_test_pg_resume() {
  local dir=${1:-}
  local pgbin=${WARP_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
  warp_test_pg__own_dir "$dir" || return 1
  local port
  port=$(cat "$dir/port") || return 1
  if ! warp_test_pg__as_owner "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port" start >/dev/null; then
    warp_test_pg__log "could not start PostgreSQL of $dir on port $port again; its log:"
    tail -n 20 "$dir/server.log" >&2 || true
    return 1
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    start)
      warp_test_pg_start
      printf 'export WARP_TEST_PGDIR=%q WARP_TEST_PGBIN=%q WARP_TEST_DSN=%q\n' \
        "$WARP_TEST_PGDIR" "$WARP_TEST_PGBIN" "$WARP_TEST_DSN"
      ;;
    stop)
      warp_test_pg_stop "${2:-}"
      ;;
    pause)
      warp_test_pg_pause "${2:-}"
      ;;
    resume)
      warp_test_pg_resume "${2:-}"
      ;;
    run)
      shift
      if (($# == 0)); then
        echo "usage: $0 run COMMAND [ARG...]" >&2
        exit 64
      fi
      warp_test_pg_start
      trap warp_test_pg_stop EXIT
      status=0
      "$@" || status=$?
      exit "$status"
      ;;
    *)
      echo "usage: $0 start | stop DIR | pause DIR | resume DIR | run COMMAND [ARG...]" >&2
      exit 64
      ;;
  esac
fi
