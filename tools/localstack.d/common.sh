# shellcheck shell=bash
# Shared helpers for tools/localstack: logging, timing, waiting, process control.
# Sourced by tools/localstack; expects STATE, LOGS, RUN to be set.

# Every process the stack starts carries LOCALSTACK_OWNER=<state dir> in its
# environment. `down` and `status` use that mark (never a process name) to
# find what belongs to this stack, even when a pid file is lost.
OWNER_VAR=LOCALSTACK_OWNER

log() { printf '[localstack] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the last lines of each log file given (that exists), to stderr.
show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf '%s\n' "----- last 40 lines of $f -----" >&2
        tail -n 40 "$f" >&2
    done
}

fail_with_logs() {  # fail_with_logs MESSAGE LOGFILE...
    local msg=$1; shift
    show_logs "$@"
    die "$msg"
}

# --- timing -------------------------------------------------------------
TIMINGS=()
T_TOTAL_START=$EPOCHREALTIME
T_PHASE_START=
T_PHASE_NAME=

phase() {  # phase NAME: end the current phase (if any), start a new one
    phase_end
    T_PHASE_NAME=$1
    T_PHASE_START=$EPOCHREALTIME
    log "== $1"
}

phase_end() {
    [[ -n $T_PHASE_NAME ]] || return 0
    local secs
    secs=$(elapsed "$T_PHASE_START")
    TIMINGS+=("$(printf '%-28s %7.1f s' "$T_PHASE_NAME" "$secs")")
    T_PHASE_NAME=
}

elapsed() {  # elapsed START_EPOCHREALTIME -> seconds, one decimal
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

print_timings() {
    phase_end
    local line
    log "timings:"
    for line in "${TIMINGS[@]}"; do
        printf '  %s\n' "$line" >&2
    done
    printf '  %-28s %7.1f s\n' total "$(elapsed "$T_TOTAL_START")" >&2
}

# --- waiting ------------------------------------------------------------
# wait_until TIMEOUT DESCRIPTION LOGFILES -- COMMAND...
# Run COMMAND every 0.5 s until it succeeds; after TIMEOUT seconds print the
# tails of LOGFILES (space separated) and exit non-zero.
wait_until() {
    local timeout=$1 what=$2 logs=$3
    shift 3
    [[ ${1:-} == -- ]] && shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            # shellcheck disable=SC2086  # logs is a space separated list
            fail_with_logs "timed out after ${timeout}s waiting for $what" $logs
        fi
        sleep 0.5
    done
}

# --- processes ----------------------------------------------------------
pid_of() {  # pid_of PIDFILE -> prints the pid (first line) if the file exists
    [[ -s $1 ]] || return 1
    local pid
    read -r pid <"$1" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$pid"
}

# True if PID runs and carries our owner mark (so a recycled pid is never ours).
is_ours() {
    local pid=$1
    grep -qzxF "$OWNER_VAR=$STATE" "/proc/$pid/environ" 2>/dev/null
}

running() {  # running PIDFILE: the process in PIDFILE is alive and ours
    local pid
    pid=$(pid_of "$1") || return 1
    is_ours "$pid"
}

# launch NAME COMMAND...: start COMMAND in its own session (pid == pgid),
# stdout/stderr to $LOGS/NAME.out, pid to $RUN/NAME.pid, with the owner mark.
# fd 9 (the lock of tools/localstack) is closed so daemons don't hold it.
launch() {
    local name=$1; shift
    env "$OWNER_VAR=$STATE" setsid "$@" >>"$LOGS/$name.out" 2>&1 </dev/null 9>&- &
    echo $! >"$RUN/$name.pid"
}

# Run a command with the owner mark (for daemons that fork into the background).
owned() { env "$OWNER_VAR=$STATE" "$@" 9>&-; }

# All pids that carry our owner mark.
owned_pids() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        is_ours "$pid" && printf '%s\n' "$pid"
    done
    return 0
}

# Send SIG to a pid, or to its whole process group when it leads one.
signal_pid() {
    local sig=$1 pid=$2 pgid
    pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || return 0
    if [[ $pgid == "$pid" ]]; then
        kill "-$sig" -- "-$pid" 2>/dev/null || true
    else
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

# stop_pids TIMEOUT PID...: SIGTERM (process groups), wait up to TIMEOUT s,
# then SIGKILL whatever is left. Returns 1 if SIGKILL was needed.
stop_pids() {
    local timeout=$1; shift
    local pid left deadline
    (($# > 0)) || return 0
    for pid in "$@"; do signal_pid TERM "$pid"; done
    deadline=$((SECONDS + timeout))
    while :; do
        left=()
        for pid in "$@"; do is_ours "$pid" && left+=("$pid"); done
        ((${#left[@]} == 0)) && return 0
        ((SECONDS >= deadline)) && break
        sleep 0.25
    done
    log "SIGKILL after ${timeout}s: ${left[*]}"
    for pid in "${left[@]}"; do signal_pid KILL "$pid"; done
    sleep 0.5
    return 1
}

# stop_pidfile TIMEOUT PIDFILE...: stop the (owned) processes named in pid
# files. Returns 0 if they all ended on SIGTERM, 1 if SIGKILL was needed,
# 2 if none of them was running.
stop_pidfile() {
    local timeout=$1; shift
    local f pid pids=()
    for f in "$@"; do
        pid=$(pid_of "$f") || continue
        is_ours "$pid" && pids+=("$pid")
    done
    ((${#pids[@]})) || return 2
    stop_pids "$timeout" "${pids[@]}"
}

# Fail if a TCP port on 127.0.0.1 is already taken (by someone else).
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

need_port_free() {  # need_port_free PORT WHAT
    port_free "$1" || die "port $1 (for $2) is already in use by another process: $(ss -Hltnp "sport = :$1" | head -1)"
}

random_secret() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
