# shellcheck shell=bash
# etcd (Debian's etcd-server, v3 API) on private ports with its own data dir:
# the coordination backend of several cinderbak daemons (tooz's etcd3gw
# driver talks to its gRPC gateway over HTTP). The system unit the Debian
# package installs is never touched.

etcd_ready() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$PORT_ETCD/health"; }

etcd_up() {
    running "$RUN/etcd.pid" && return 0
    need_port_free "$PORT_ETCD" "etcd client"
    need_port_free "$PORT_ETCD_PEER" "etcd peer"
    mkdir -p "$STATE/etcd"
    launch etcd /usr/bin/etcd --name localstack --data-dir "$STATE/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$PORT_ETCD" \
        --advertise-client-urls "http://127.0.0.1:$PORT_ETCD" \
        --listen-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" \
        --initial-advertise-peer-urls "http://127.0.0.1:$PORT_ETCD_PEER" \
        --initial-cluster "localstack=http://127.0.0.1:$PORT_ETCD_PEER" \
        --log-level warn
    STARTED=1
    wait_until 60 "etcd startup" "$LOGS/etcd.out" -- etcd_ready
}

etcd_down() { stop_pidfile 10 "$RUN/etcd.pid" || true; }
