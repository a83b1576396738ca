# shellcheck shell=bash
# PostgreSQL: a private cluster under the state dir, run as user postgres
# (it refuses root), TCP on 127.0.0.1 only, trust auth, fsync off.

# PostgreSQL refuses to run as root, and user postgres must be able to
# reach its data, socket and log: under the state dir when it can traverse
# it, else in a directory of its own named after the state dir.
pg_root() {
    if su postgres -s /bin/sh -c "test -x $(printf %q "$STATE")"; then
        printf '%s/postgres\n' "$STATE"
    else
        printf '/var/lib/postgresql/localstack-%s\n' \
            "$(printf %s "$STATE" | sha1sum | cut -c1-12)"
    fi
}

pg_data() { printf '%s/data\n' "$(pg_root)"; }

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
    local root log
    root=$(pg_root)
    log=$root/postgres.log
    mkdir -p "$root/run"
    chown postgres:postgres "$root" "$root/run"
    # pg_ctl opens the log file as postgres: create it first, owned by postgres.
    touch "$log"
    chown postgres:postgres "$log"
    [[ $log == "$LOGS/postgres.log" ]] || ln -sfn "$log" "$LOGS/postgres.log"
    if [[ ! -f $data/PG_VERSION ]]; then
        rm -rf "$data"
        as_postgres "$PGBIN/initdb" -D "$data" -A trust -U postgres --no-sync >>"$log" 2>&1 ||
            fail_with_logs "initdb failed" "$log"
    fi
    need_port_free "$PORT_PG" postgresql
    rm -f "$data/postmaster.pid"   # stale: its process is gone or not ours
    as_postgres "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -c port=$PORT_PG -c unix_socket_directories=$root/run -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || fail_with_logs "postgresql failed to start" "$log"
    STARTED=1
    wait_until 30 "postgresql" "$log" -- pg_psql -c 'select 1'
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

pg_purge() {  # the data dir outside the state dir, if it had to be there
    local root
    root=$(pg_root)
    [[ $root == "$STATE/postgres" ]] || rm -rf -- "$root"
}
