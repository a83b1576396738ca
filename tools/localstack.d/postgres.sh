# shellcheck shell=bash
# PostgreSQL: a private cluster under the state dir, run as user postgres
# (it refuses root), TCP on 127.0.0.1 only, trust auth, fsync off.

pg_data() { printf '%s/postgres/data\n' "$STATE"; }

as_postgres() {  # as_postgres COMMAND...: run as postgres, with our owner mark
    local cmd
    printf -v cmd '%q ' "$@"
    timeout 120 su postgres -s /bin/sh -c "cd / && exec env $OWNER_VAR=$(printf %q "$STATE") $cmd" 9>&-
}

pg_psql() { timeout 30 "$PGBIN/psql" -h 127.0.0.1 -p "$PORT_PG" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

pg_up() {
    local data
    data=$(pg_data)
    if running "$data/postmaster.pid" && pg_psql -c 'select 1' >/dev/null 2>&1; then
        return 0
    fi
    su postgres -s /bin/sh -c "test -x $(printf %q "$STATE")" ||
        die "user postgres cannot enter $STATE (put LOCALSTACK_DIR under a world-traversable path)"
    mkdir -p "$STATE/postgres" "$RUN/postgres"
    chown postgres:postgres "$STATE/postgres" "$RUN/postgres"
    # pg_ctl opens the log file as postgres: create it first, owned by postgres.
    touch "$LOGS/postgres.log"
    chown postgres:postgres "$LOGS/postgres.log"
    if [[ ! -f $data/PG_VERSION ]]; then
        rm -rf "$data"
        as_postgres "$PGBIN/initdb" -D "$data" -A trust -U postgres --no-sync >>"$LOGS/postgres.log" 2>&1 ||
            fail_with_logs "initdb failed" "$LOGS/postgres.log"
    fi
    need_port_free "$PORT_PG" postgresql
    rm -f "$data/postmaster.pid"   # stale: its process is gone or not ours
    as_postgres "$PGBIN/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -c port=$PORT_PG -c unix_socket_directories=$RUN/postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || fail_with_logs "postgresql failed to start" "$LOGS/postgres.log"
    STARTED=1
    wait_until 30 "postgresql" "$LOGS/postgres.log" -- pg_psql -c 'select 1'
    if [[ -z $(pg_psql -c "select 1 from pg_database where datname = 'cinder'") ]]; then
        pg_psql -c 'create database cinder' || die "could not create database cinder"
    fi
}

pg_down() {
    local data
    data=$(pg_data)
    if running "$data/postmaster.pid"; then
        as_postgres "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    stop_pidfile 5 "$data/postmaster.pid" || true
}
