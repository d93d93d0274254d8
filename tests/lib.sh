# Shared by the scripts that run a client test suite against a real `hearth` process (tests/python/run.sh,
# tests/python/run-dingtalk.sh, tests/node/run-dingtalk.sh, tests/python/run-feishu.sh,
# tests/node/run-feishu.sh); source it after `set -euo pipefail`.
#
# It sets ROOT (the repository) and HEARTH (target/release/hearth, or $HEARTH_BIN), and gives:
#   require_hearth                     stop unless $HEARTH is built
#   pinned_venv VENV NAME==VERSION...  a virtual environment at VENV holding exactly these versions (installed
#                                      on first use, or when a version changed); sets PY to its python
#   free_port                          print a free TCP port on 127.0.0.1
#   start_process NAME CMD...          run CMD in the background (stdout and stderr to temporary files); it is
#                                      stopped at exit if still running
#   wait_health PORT SECS [CERT]       wait until http://127.0.0.1:PORT/health answers (https, trusting the
#                                      PEM certificate CERT, when CERT is given)
#   wait_first_line SECS               wait for the process's first line on stdout; sets FIRST_LINE
#   finish STATUS                      stop the process with SIGTERM, which must exit 0; when it did not, or
#                                      STATUS (the tests' exit status) is not 0, print its log and exit
# Paths added to CLEANUP are removed at exit. Messages name the calling script.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}
SCRIPT=$(basename "$(dirname "$0")")/$(basename "$0")
CLEANUP=()
PROC_NAME=
PROC_PID=
PROC_OUT=
PROC_LOG=

_lib_exit() {
    if [[ -n $PROC_PID ]] && kill -0 "$PROC_PID" 2>/dev/null; then
        kill -TERM "$PROC_PID" 2>/dev/null || true
        wait "$PROC_PID" 2>/dev/null || true
    fi
    if [[ ${#CLEANUP[@]} -gt 0 ]]; then rm -rf "${CLEANUP[@]}"; fi
}
trap _lib_exit EXIT

require_hearth() {
    [[ -x $HEARTH ]] || { echo "$SCRIPT: $HEARTH is missing: cargo build --release -p gateway" >&2; exit 1; }
}

pinned_venv() {
    local venv=$1
    shift
    if ! "$venv/bin/python" - "$@" 2>/dev/null <<'PY'; then
import sys, importlib.metadata as m
sys.exit(any(m.version(name) != version for name, version in (a.split("==") for a in sys.argv[1:])))
PY
        echo "$SCRIPT: installing $* into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    fi
    PY=$venv/bin/python
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_process() {
    PROC_NAME=$1
    shift
    PROC_OUT=$(mktemp -t hearth-out.XXXXXX)
    PROC_LOG=$(mktemp -t hearth-log.XXXXXX)
    CLEANUP+=("$PROC_OUT" "$PROC_LOG")
    "$@" >"$PROC_OUT" 2>"$PROC_LOG" &
    PROC_PID=$!
}

# The last 50 lines of the process's stdout (when it wrote any) and stderr.
_show_log() {
    if [[ -s $PROC_OUT ]]; then
        echo "$SCRIPT: $PROC_NAME stdout (last 50 lines):" >&2
        tail -n 50 "$PROC_OUT" >&2
    fi
    echo "$SCRIPT: $PROC_NAME log (last 50 lines):" >&2
    tail -n 50 "$PROC_LOG" >&2
}

_not_ready() {
    echo "$SCRIPT: $PROC_NAME $1" >&2
    _show_log
    exit 1
}

# Run CHECK... every INTERVAL seconds until it succeeds; give up, printing the log, when the process exits or
# after SECS seconds.
_wait_until() {
    local secs=$1 interval=$2 deadline=$((SECONDS + $1))
    shift 2
    while ((SECONDS < deadline)); do
        "$@" && return 0
        kill -0 "$PROC_PID" 2>/dev/null || _not_ready "exited before it was ready"
        sleep "$interval"
    done
    _not_ready "was not ready within $secs s"
}

_answers_health() {
    local cert=${2:-}
    python3 -c '
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
urllib.request.urlopen(sys.argv[1], timeout=2, context=context)' \
        "$([[ -n $cert ]] && echo https || echo http)://127.0.0.1:$1/health" "$cert" 2>/dev/null
}

_printed_a_line() {
    [[ $(wc -l <"$PROC_OUT") -ge 1 ]]
}

wait_health() {
    _wait_until "$2" 0.2 _answers_health "$1" "${3:-}"
}

wait_first_line() {
    _wait_until "$1" 0.05 _printed_a_line
    FIRST_LINE=$(head -n 1 "$PROC_OUT")
}

finish() {
    local status=$1 proc_status=0
    kill -TERM "$PROC_PID"
    wait "$PROC_PID" || proc_status=$?
    PROC_PID=
    if [[ $status -ne 0 || $proc_status -ne 0 ]]; then
        if [[ $proc_status -ne 0 ]]; then
            echo "$SCRIPT: $PROC_NAME exited with status $proc_status after SIGTERM" >&2
        fi
        _show_log
        exit $((status != 0 ? status : 1))
    fi
}
