# shellcheck shell=bash
# RabbitMQ on private ports, with its own epmd, cookie and HOME under the
# state dir. The system instance (if any) is never touched.

RABBIT_BIN=/usr/lib/rabbitmq/bin   # not /usr/sbin: those wrappers su to the rabbitmq user

rabbit_env() {  # export the environment of our node (call in a subshell)
    local r=$STATE/rabbitmq
    export HOME=$r
    export RABBITMQ_NODENAME=localstack@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$PORT_RABBIT
    export RABBITMQ_DIST_PORT=$PORT_RABBIT_DIST
    export ERL_EPMD_PORT=$PORT_EPMD
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE=$r/mnesia
    export RABBITMQ_LOG_BASE=$LOGS/rabbitmq
    export RABBITMQ_CONFIG_FILE=$r/rabbitmq.conf
    export RABBITMQ_ENABLED_PLUGINS_FILE=$r/enabled_plugins
    export RABBITMQ_PID_FILE=$r/beam.pid
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_prepare() {
    local r=$STATE/rabbitmq
    mkdir -p "$r/mnesia" "$LOGS/rabbitmq"
    cat >"$r/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PORT_RABBIT
loopback_users.guest = true
log.console = false
log.file.level = warning
EOF
    echo '[].' >"$r/enabled_plugins"
    if [[ ! -s $r/.erlang.cookie ]]; then
        (umask 077 && random_secret >"$r/.erlang.cookie")
        chmod 400 "$r/.erlang.cookie"
    fi
}

epmd_bin() {
    command -v epmd 2>/dev/null && return 0
    local f
    for f in /usr/lib/erlang/erts-*/bin/epmd; do [[ -x $f ]] && { echo "$f"; return 0; }; done
    die "epmd not found (is rabbitmq-server installed?)"
}

rabbit_ready() { (rabbit_env && timeout 30 "$RABBIT_BIN/rabbitmqctl" -q await_startup --timeout 25); }

# rabbit_launch: start epmd and the node unless they run (no waiting), so the
# Erlang boot overlaps with the Ceph clusters' start.
rabbit_launch() {
    running "$RUN/epmd.pid" && running "$RUN/rabbitmq.pid" && return 0
    rabbit_prepare
    if ! running "$RUN/epmd.pid"; then
        need_port_free "$PORT_EPMD" epmd
        # Our own epmd, in the foreground of its own session: a pid file to stop it by.
        (rabbit_env && launch epmd "$(epmd_bin)" -port "$PORT_EPMD" -address 127.0.0.1)
    fi
    if ! running "$RUN/rabbitmq.pid"; then
        need_port_free "$PORT_RABBIT" rabbitmq
        need_port_free "$PORT_RABBIT_DIST" "rabbitmq distribution"
        (rabbit_env && launch rabbitmq "$RABBIT_BIN/rabbitmq-server")
    fi
    STARTED=1
    RABBIT_LAUNCHED=1
}

rabbit_up() {  # rabbit_up: launch if needed, then wait until the node is ready
    rabbit_launch
    ((${RABBIT_LAUNCHED:-0})) || return 0
    wait_until 120 "rabbitmq startup" "$LOGS/rabbitmq.out $LOGS/rabbitmq/localstack@localhost.log" -- rabbit_ready
    RABBIT_LAUNCHED=0
}

rabbit_down() {
    if running "$RUN/rabbitmq.pid"; then
        (rabbit_env && timeout 30 "$RABBIT_BIN/rabbitmqctl" -q stop >/dev/null 2>&1) || true
    fi
    stop_pidfile 10 "$RUN/rabbitmq.pid" || true
    stop_pidfile 5 "$RUN/epmd.pid" || true
}
