# shellcheck shell=bash
# Installation: Debian packages (system-wide) and two private venvs under the
# state dir. Every step is skipped when already done, so a second `up` is fast.

APT_PACKAGES=(ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd rabbitmq-server
    e2fsprogs xfsprogs util-linux  # verification: e2fsck, xfs_repair, blkid
    etcd-server)  # coordination of several cinderbak daemons (tooz)
PG_VERSION=15
PGBIN=/usr/lib/postgresql/$PG_VERSION/bin

# A clean venv with the Debian interpreter: same ABI (cpython-311) as the
# python3-rados/python3-rbd modules that get symlinked into the Cinder venv.
# Never --system-site-packages (Debian's pyOpenSSL breaks pip's cryptography).
VENV_PYTHON=${LOCALSTACK_PYTHON:-/usr/bin/python3}
CINDER_REQS=('cinder==29.0.0' psycopg2-binary)
KEYSTONE_REQS=('keystone==30.0.0' gunicorn openstacksdk)

missing_packages() {
    local p st
    for p in "$@"; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $st == "install ok installed" ]] || printf '%s\n' "$p"
    done
    return 0
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
    [[ -x $PGBIN/postgres ]] || missing+=("postgresql-$PG_VERSION")
    ((${#missing[@]} == 0)) && return 0
    log "apt: installing ${missing[*]}"
    APT_RAN=1
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get -o DPkg::Lock::Timeout=600 update -q >"$LOGS/apt.log" 2>&1 ||
        fail_with_logs "apt-get update failed" "$LOGS/apt.log"
    timeout 1800 apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing[@]}" >>"$LOGS/apt.log" 2>&1 ||
        fail_with_logs "apt-get install failed" "$LOGS/apt.log"
}

# venv_build DIR NAME REQUIREMENT...: (re)create DIR unless its marker says
# it already holds exactly these requirements and constraints. The
# constraints file (constraints-NAME.txt) pins every dependency to the
# versions the stack was verified with.
venv_build() {
    local dir=$1 name=$2; shift 2
    local marker=$dir/.localstack-reqs want constraints=$LIB/constraints-$name.txt
    want="$* $(sha256sum <"$constraints")"
    if [[ -f $marker && $(<"$marker") == "$want" ]]; then
        return 0
    fi
    if [[ -f $marker ]] && venv_in_use "$name"; then
        touch "$LOGS/pip-$name.skipped"
        return 0
    fi
    local start=$EPOCHREALTIME
    rm -rf "$dir"
    "$VENV_PYTHON" -m venv "$dir" &&
        timeout 1200 "$dir/bin/pip" install -q --disable-pip-version-check -c "$constraints" "$@" &&
        printf '%s\n' "$want" >"$marker" &&
        elapsed "$start" >"$LOGS/pip-$name.seconds"
}

venv_in_use() {  # venv_in_use cinder|keystone: does a service run from it?
    local svc
    if [[ $1 == keystone ]]; then
        running "$RUN/keystone.pid"
        return
    fi
    for svc in api scheduler volume backup; do
        running "$RUN/cinder-$svc.pid" && return 0
    done
    return 1
}

install_all() {
    mkdir -p "$LOGS"
    local cj kj
    rm -f "$LOGS"/pip-*.seconds "$LOGS"/pip-*.skipped
    # pip (network + unpack) runs alongside apt; both are I/O bound.
    venv_build "$CINDER_VENV" cinder "${CINDER_REQS[@]}" >"$LOGS/pip-cinder.log" 2>&1 &
    cj=$!
    venv_build "$KEYSTONE_VENV" keystone "${KEYSTONE_REQS[@]}" >"$LOGS/pip-keystone.log" 2>&1 &
    kj=$!
    local start=$EPOCHREALTIME
    APT_RAN=0
    apt_install
    ((APT_RAN)) && TIMINGS+=("$(printf '%-28s %7.1f s' "  apt" "$(elapsed "$start")")")
    wait "$cj" || fail_with_logs "pip install for cinder failed" "$LOGS/pip-cinder.log"
    wait "$kj" || fail_with_logs "pip install for keystone failed" "$LOGS/pip-keystone.log"
    local n
    for n in cinder keystone; do
        [[ -f $LOGS/pip-$n.skipped ]] &&
            log "note: the $n venv's requirements changed but its services run; not rebuilt now (down, then up, rebuilds it)"
        [[ -s $LOGS/pip-$n.seconds ]] &&
            TIMINGS+=("$(printf '%-28s %7.1f s' "  pip $n (parallel)" "$(<"$LOGS/pip-$n.seconds")")")
    done
    "$LIB/link-ceph-bindings" "$CINDER_VENV/bin/python" >/dev/null ||
        die "could not link the rados/rbd bindings into $CINDER_VENV"
}
