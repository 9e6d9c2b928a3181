#!/usr/bin/env bash
# The design document's automated scenario test: starts the real services, drives them with curl
# and checks what a user would see, in 8 suites:
#   1 Health Checks  2 Success Scenarios  3 Service A Down  4 Invalid Requests  5 Service B Down
#   6 Timeout Scenarios (2-second timeout)  7 Concurrent Requests  8 Error Response Format
#
#   source venv/bin/activate; ./test_scenarios.sh     # as the document says
#   ./test_scenarios.sh                               # also works: uses ./venv/bin/python if present
#   MODE=gunicorn ./test_scenarios.sh                 # production server instead of the dev server
#   TEST_A_PORT=18080 TEST_B_PORT=18081 ./test_scenarios.sh   # fixed ports instead of free ones
#   FORCE_COLOR=1 / NO_COLOR=1                        # colours on/off regardless of the terminal
#   KEEP_LOGS=1                                       # keep the temp dir with the logs on success too
#
# The services run on free ports (never 8080/8081, which a user may already be running), each in
# its own process group, and are stopped by a trap on exit, Ctrl+C or SIGTERM. The last line of
# the output is "N passed, M failed"; the exit status is non-zero when anything failed.
# shellcheck disable=SC2319  # "condition; ok=$?; check DESC "$ok"" is how conditions become checks
set -u
set -o pipefail
cd "$(dirname "$0")" || exit 2
REPO=$(pwd)

# ----------------------------------------------------------------------------------------------
# Interpreter and mode
# ----------------------------------------------------------------------------------------------
MODE=${MODE:-dev}
if [ -n "${VIRTUAL_ENV:-}" ] && command -v python >/dev/null 2>&1; then
    PY=$(command -v python)               # the activated venv, as the document requires
elif [ -x "$REPO/venv/bin/python" ]; then
    PY="$REPO/venv/bin/python"            # not activated: use the project's venv anyway
elif command -v python3 >/dev/null 2>&1; then
    PY=$(command -v python3)
    echo "warning: no virtual environment found; using $PY" >&2
else
    echo "error: no python found: create the venv first (see the README)" >&2
    exit 2
fi
case "$MODE" in
    dev) ;;
    gunicorn)
        GUNICORN="$(dirname "$PY")/gunicorn"
        if [ ! -x "$GUNICORN" ]; then
            GUNICORN=$(command -v gunicorn) || { echo "error: MODE=gunicorn but gunicorn is not installed" >&2; exit 2; }
        fi
        ;;
    *) echo "error: MODE must be dev or gunicorn, got '$MODE'" >&2; exit 2 ;;
esac
for tool in curl setsid ss xargs; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required" >&2; exit 2; }
done

# The checks assume the document's defaults (2 s budget, 4096-byte msg limit, text logs): drop any
# tuning a user may have exported so it cannot leak into the services started here.
for var in $(compgen -e); do
    case "$var" in
        SERVICE_*|FAULT_*|UPSTREAM_*|RETRY_*|BREAKER_*|DRAIN_*|OTEL_*|PROMETHEUS_MULTIPROC_DIR|\
        MAX_MSG_BYTES|LOG_LEVEL|LOG_FORMAT|LOG_PROBES) unset "$var" ;;
    esac
done
export PYTHONUNBUFFERED=1 PYTHONIOENCODING=utf-8

# ----------------------------------------------------------------------------------------------
# Output: colours, counters, PASS/FAIL lines
# ----------------------------------------------------------------------------------------------
if [ -n "${FORCE_COLOR:-}" ] || { [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; }; then
    GREEN=$'\033[32m' RED=$'\033[31m' YELLOW=$'\033[33m' BOLD=$'\033[1m' RESET=$'\033[0m'
else
    GREEN='' RED='' YELLOW='' BOLD='' RESET=''
fi
SUITE_NAMES=()
SUITE_PASSED=()
SUITE_FAILED=()
SUITE=-1
TOTAL_PASSED=0
TOTAL_FAILED=0
FINISHED=0

suite() {
    SUITE=$((SUITE + 1))
    SUITE_NAMES[SUITE]=$1
    SUITE_PASSED[SUITE]=0
    SUITE_FAILED[SUITE]=0
    printf '\n%s== %s ==%s\n' "$BOLD" "$1" "$RESET"
}
pass() {
    SUITE_PASSED[SUITE]=$((SUITE_PASSED[SUITE] + 1))
    TOTAL_PASSED=$((TOTAL_PASSED + 1))
    printf '  %sPASS%s %s\n' "$GREEN" "$RESET" "$1"
}
fail() {
    SUITE_FAILED[SUITE]=$((SUITE_FAILED[SUITE] + 1))
    TOTAL_FAILED=$((TOTAL_FAILED + 1))
    printf '  %sFAIL%s %s\n' "$RED" "$RESET" "$1"
    if [ -n "${2:-}" ]; then
        printf '       %s\n' "$(printf '%s' "$2" | head -c 400 | tr '\n' ' ')"
    fi
}
note() { printf '  %s..%s %s\n' "$YELLOW" "$RESET" "$1"; }
# check DESC CONDITION-EXIT-STATUS [DETAIL]: PASS when the condition (already run) returned 0.
check() { if [ "$2" -eq 0 ]; then pass "$1"; else fail "$1" "${3:-}"; fi; }

now_ms() {  # wall-clock milliseconds, for deadlines
    if [ -n "${EPOCHREALTIME:-}" ]; then
        local t=${EPOCHREALTIME//[!0-9]/}
        echo $((10#$t / 1000))
    else
        date +%s%3N
    fi
}
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }  # float a < b

# ----------------------------------------------------------------------------------------------
# Ports, temp dir, process management
# ----------------------------------------------------------------------------------------------
STARTED_MS=$(now_ms)
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/echo-scenarios.XXXXXX") || exit 2
WORK="$LOG_DIR/responses"
mkdir -p "$WORK"
: >"$WORK/errors.tsv"

port_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

if [ -n "${TEST_A_PORT:-}" ] || [ -n "${TEST_B_PORT:-}" ]; then
    A_PORT=${TEST_A_PORT:?TEST_A_PORT and TEST_B_PORT must be given together}
    B_PORT=${TEST_B_PORT:?TEST_A_PORT and TEST_B_PORT must be given together}
else
    # Two distinct free ports, both bound at once so they cannot come out equal.
    read -r A_PORT B_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
fi
for port in "$A_PORT" "$B_PORT"; do
    if port_listening "$port"; then
        echo "error: port $port is already in use; pick others with TEST_A_PORT/TEST_B_PORT" >&2
        rm -rf "$LOG_DIR"
        exit 2
    fi
done
A_URL="http://127.0.0.1:$A_PORT"
B_URL="http://127.0.0.1:$B_PORT"

A_PID='' B_PID='' A_LOG='' B_LOG=''
START_N=0
STOP_RC=0

# Is PID a live (non-zombie) process? /proc/PID/stat's state follows the last ')'.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}
# wait_for LIMIT_MS COMMAND...: poll COMMAND every 50 ms until it succeeds; 1 if LIMIT_MS passes first.
wait_for() {
    local deadline=$(($(now_ms) + $1))
    shift
    until "$@"; do
        [ "$(now_ms)" -ge "$deadline" ] && return 1
        sleep 0.05
    done
    return 0
}
gone() { ! alive "$1"; }
# Poll until PID is gone or LIMIT_MS passes.
wait_gone() { wait_for "$2" gone "$1"; }

# start_service a|b [VAR=value ...]: start it in its own session/process group with the
# document's command, then wait for /health. Sets A_PID/A_LOG or B_PID/B_LOG.
start_service() {
    local name=$1
    shift
    START_N=$((START_N + 1))
    local log="$LOG_DIR/service_$name.$START_N.log" port=$A_PORT
    [ "$name" = b ] && port=$B_PORT
    local cmd=("$PY" "service_$name/app.py")
    local extra=()
    if [ "$MODE" = gunicorn ]; then
        cmd=("$GUNICORN" -c gunicorn.conf.py "service_$name.app:create_app()")
        extra=("PROMETHEUS_MULTIPROC_DIR=$LOG_DIR/metrics-$name.$START_N")
    fi
    # env and setsid both exec (no fork: a background job is not a group leader), so $! is the
    # service's own PID and also its process-group ID.
    env SERVICE_A_PORT="$A_PORT" SERVICE_B_PORT="$B_PORT" SERVICE_A_URL="$A_URL" \
        "${extra[@]}" "$@" setsid "${cmd[@]}" >"$log" 2>&1 </dev/null &
    local pid=$!
    if [ "$name" = a ]; then A_PID=$pid A_LOG=$log; else B_PID=$pid B_LOG=$log; fi
    # Readiness: poll /health every 50 ms, give up after 15 s or as soon as the process dies.
    local deadline=$(($(now_ms) + 15000)) code
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 0.5 "http://127.0.0.1:$port/health" 2>/dev/null)
        if [ "$code" = 200 ]; then
            # It answers, so setsid has long run: the service must lead its own process group,
            # or signalling "the group" below would miss it.
            local pgid
            pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
            [ "$pgid" = "$pid" ] && return 0
            fail "start service $name" "pid $pid is not its own process group ($pgid)"
            return 1
        fi
        if ! alive "$pid"; then
            fail "start service $name" "it exited during start-up; log $log: $(tail -n 5 "$log")"
            return 1
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            fail "start service $name" "/health not 200 after 15 s; log $log: $(tail -n 5 "$log")"
            return 1
        fi
        sleep 0.05
    done
}

# stop_service a|b SIGNAL: signal the service's process group (SIGINT = the document's Ctrl+C),
# wait up to 15 s, then SIGKILL what is left of the group. STOP_RC gets the exit status.
stop_service() {
    local name=$1 sig=$2 pid
    if [ "$name" = a ]; then pid=$A_PID; A_PID=''; else pid=$B_PID; B_PID=''; fi
    [ -n "$pid" ] || return 0
    kill -CONT -- "-$pid" 2>/dev/null  # a frozen (SIGSTOPped) service cannot shut down
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null  # group, else the PID
    if ! wait_gone "$pid" 15000; then
        echo "warning: service $name (pid $pid) ignored SIG$sig for 15 s; killing its group" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 5000
    fi
    wait "$pid" 2>/dev/null
    STOP_RC=$?
    kill -KILL -- "-$pid" 2>/dev/null  # stray members of our own group (gunicorn workers)
    return 0
}

port_closed() { ! port_listening "$1"; }
# Poll until nothing listens on PORT (the listener closes a moment after the process exits).
wait_port_closed() { wait_for "${2:-5000}" port_closed "$1"; }

print_logs() {
    printf '\n%sLogs are in %s%s\n' "$BOLD" "$LOG_DIR" "$RESET"
    local log
    for log in "$LOG_DIR"/service_*.log; do
        [ -f "$log" ] || continue
        printf -- '--- tail of %s ---\n' "$log"
        tail -n 15 "$log"
    done
}

summary() {
    FINISHED=1
    local i elapsed=$(( ($(now_ms) - STARTED_MS) / 100 ))
    printf '\n%sSummary%s (MODE=%s, %d.%ds)\n' "$BOLD" "$RESET" "$MODE" $((elapsed / 10)) $((elapsed % 10))
    for i in "${!SUITE_NAMES[@]}"; do
        local colour=$GREEN
        [ "${SUITE_FAILED[i]}" -gt 0 ] && colour=$RED
        printf '  %s%-40s %3d passed, %d failed%s\n' "$colour" "${SUITE_NAMES[i]}" \
            "${SUITE_PASSED[i]}" "${SUITE_FAILED[i]}" "$RESET"
    done
    if [ "$TOTAL_FAILED" -gt 0 ]; then
        printf '%sFAILED%s\n' "$RED" "$RESET"
    else
        printf '%sALL PASSED%s\n' "$GREEN" "$RESET"
    fi
    # The last line, alone, for CI.
    printf '%d passed, %d failed\n' "$TOTAL_PASSED" "$TOTAL_FAILED"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_service a TERM
    stop_service b TERM
    local job
    for job in $(jobs -p); do kill "$job" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$FINISHED" = 0 ]; then
        # Interrupted or aborted before the summary: say so, keep the logs.
        [ "$rc" -eq 0 ] && rc=1
        [ "$SUITE" -ge 0 ] || suite "Start-up"
        fail "the run was aborted (exit status $rc) before all suites ran"
        print_logs
        summary
    elif [ "$rc" -eq 0 ] && [ -z "${KEEP_LOGS:-}" ]; then
        rm -rf "$LOG_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------------------------
# HTTP helpers
# ----------------------------------------------------------------------------------------------
REQ_N=0
# req LABEL URL [curl args...]: one request. Sets STATUS, BODY (exact bytes), CTYPE, TIME (s),
# RC (curl's exit code), HDRS (file with the response headers). Error answers (>= 400) are
# recorded for suite 8, which checks every one of them.
req() {
    local label=$1
    shift
    REQ_N=$((REQ_N + 1))
    local out="$WORK/r$REQ_N" meta
    meta=$(curl -sS --globoff --max-time "${REQ_MAX_TIME:-10}" -o "$out.body" -D "$out.hdr" \
        -w '%{http_code} %{time_total} %{content_type}' "$@" 2>"$out.err")
    RC=$?
    STATUS='' TIME='' CTYPE=''
    read -r STATUS TIME CTYPE <<<"$meta"
    BODY=$(cat "$out.body" 2>/dev/null; printf x)
    BODY=${BODY%x}
    HDRS="$out.hdr"
    if [ "${STATUS:-0}" -ge 400 ] 2>/dev/null; then
        printf '%s\t%s\t%s\t%s\n' "$label" "$STATUS" "$CTYPE" "$out.body" >>"$WORK/errors.tsv"
    fi
}
# expect LABEL STATUS BODY: check the last response's status and exact body.
expect() {
    local label=$1 want_status=$2 want_body=$3
    if [ "$RC" -ne 0 ]; then
        fail "$label" "curl failed (exit $RC): $(cat "$WORK/r$REQ_N.err")"
    elif [ "$STATUS" = "$want_status" ] && [ "$BODY" = "$want_body" ]; then
        pass "$label -> $want_status $(printf '%s' "$want_body" | head -c 90)"
    else
        fail "$label" "want $want_status $want_body, got $STATUS $BODY"
    fi
}
expect_json_ctype() {
    case "$CTYPE" in
        application/json*) pass "$1 has Content-Type application/json" ;;
        *) fail "$1 has Content-Type application/json" "got '$CTYPE'" ;;
    esac
}
# json_field FIELD: a top-level string field of BODY ('' if absent or not JSON).
json_field() {
    "$PY" -c 'import json, sys
try:
    v = json.loads(sys.argv[1]).get(sys.argv[2], "")
except Exception:
    v = ""
print(v if isinstance(v, str) else json.dumps(v), end="")' "$BODY" "$1"
}
# to_json: the services' compact JSON of B's success body for msg $1.
b_body() {
    "$PY" -c 'import json, sys
m = sys.argv[1]
print(json.dumps({"msg": m, "echo_response": {"echo": m}}, ensure_ascii=False, separators=(",", ":")), end="")' "$1"
}
a_body() {
    "$PY" -c 'import json, sys
print(json.dumps({"echo": sys.argv[1]}, ensure_ascii=False, separators=(",", ":")), end="")' "$1"
}
header() { grep -i "^$1:" "$HDRS" | head -n1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }

# B's /metrics shows at least one request in flight besides the /metrics scrape itself, i.e. the
# slow /call-echo started in the background has reached B.
b_call_in_flight() {
    local n
    n=$(curl -s --max-time 0.5 "$B_URL/metrics" 2>/dev/null | awk '$1 == "http_requests_in_flight" { print $2 }')
    [ -n "$n" ] && ! lt "$n" 2
}
wait_b_in_flight() { wait_for 5000 b_call_in_flight; }

# slow_call_case LABEL: /call-echo while A cannot answer in time. Checks B's /health stays fast
# while the call is in flight, then that the call ends in 503 + a timeout within the budget.
slow_call_case() {
    local label=$1 check_a_health=${2:-no}
    local out="$WORK/slow$REQ_N"
    REQ_N=$((REQ_N + 1))
    curl -sS --max-time 10 -o "$out.body" -w '%{http_code} %{time_total}' \
        "$B_URL/call-echo?msg=slow" >"$out.meta" 2>"$out.err" &
    local slow_pid=$!
    wait_b_in_flight
    ok=$?
    check "$label: the call is in flight in B (B's /metrics)" "$ok"
    req "B /health" "$B_URL/health" --max-time 2
    if [ "$STATUS" = 200 ] && lt "$TIME" 0.3; then
        pass "$label: B /health answers 200 in ${TIME}s (< 0.3 s) while the call waits"
    else
        fail "$label: B /health answers 200 in < 0.3 s while the call waits" "got $STATUS in ${TIME}s"
    fi
    if [ "$check_a_health" = yes ]; then
        req "A /health" "$A_URL/health" --max-time 2
        if [ "$STATUS" = 200 ] && lt "$TIME" 0.3; then
            pass "$label: A /health answers 200 in ${TIME}s while A sleeps on the slow echo"
        else
            fail "$label: A /health answers 200 in < 0.3 s while A sleeps on the slow echo" "got $STATUS in ${TIME}s"
        fi
    fi
    wait "$slow_pid"
    local status time
    read -r status time <"$out.meta"
    BODY=$(cat "$out.body")
    printf '%s\t%s\t%s\t%s\n' "$label: /call-echo" "$status" "application/json" "$out.body" >>"$WORK/errors.tsv"
    local error details
    error=$(json_field error)
    details=$(json_field details)
    if [ "$status" = 503 ] && [ "$error" = "Service A unavailable" ]; then
        pass "$label: /call-echo -> 503 \"Service A unavailable\""
    else
        fail "$label: /call-echo -> 503 \"Service A unavailable\"" "got $status $BODY"
    fi
    case "$details" in
        *[Tt]imeout*|*"timed out"*) pass "$label: details name the timeout: $details" ;;
        *) fail "$label: details name the timeout" "got details '$details'" ;;
    esac
    if ! lt "$time" 1.8 && lt "$time" 2.6; then
        pass "$label: answered after ${time}s (the 2 s budget, < 2.6 s)"
    else
        fail "$label: answered after 1.8-2.6 s (the 2 s budget)" "took ${time}s"
    fi
}

# ----------------------------------------------------------------------------------------------
printf '%sDistributed Echo System: scenario tests%s\n' "$BOLD" "$RESET"
printf 'MODE=%s  python=%s  A=%s  B=%s  logs=%s\n' "$MODE" "$PY" "$A_URL" "$B_URL" "$LOG_DIR"

# ==============================================================================================
suite "1 Health Checks"
start_service a || exit 1
start_service b || exit 1
req "A /health" "$A_URL/health"
expect "A GET /health" 200 '{"status":"ok"}'
expect_json_ctype "A /health"
req "B /health" "$B_URL/health"
expect "B GET /health" 200 '{"status":"ok"}'
expect_json_ctype "B /health"
req "B /health" "$B_URL/health" -H 'X-Request-ID: scenario-health-1'
got_id=$(header X-Request-ID)
[ "$got_id" = scenario-health-1 ]
ok=$?
check "B echoes the client's X-Request-ID header" "$ok" "got '$got_id'"

# ==============================================================================================
suite "2 Success Scenarios"
req "A /echo" "$A_URL/echo?msg=hello"
expect "A GET /echo?msg=hello" 200 '{"echo":"hello"}'
expect_json_ctype "A /echo"
req "A /echo empty" "$A_URL/echo?msg="
expect "A GET /echo?msg=" 200 '{"echo":""}'
req "A /echo no msg" "$A_URL/echo"
expect "A GET /echo" 200 '{"echo":""}'
req "B /call-echo" "$B_URL/call-echo?msg=hello"
expect "B GET /call-echo?msg=hello" 200 '{"msg":"hello","echo_response":{"echo":"hello"}}'
expect_json_ctype "B /call-echo"

three_kb=$(printf '0123456789abcdef%.0s' $(seq 1 192))   # 3072 bytes
hard_messages=(
    "hello world"
    "a&b=c#d%e+f?g/h"
    "100% sure + 50%25 & more"
    "quotes \" ' \` and back\\slash"
    "<script>alert('x')</script>&amp;"
    '{"msg":"inner","list":[1,2,3],"echo":null}'
    "héllo wörld — 你好 🚀 ∑"
    "$three_kb"
)
for m in "${hard_messages[@]}"; do
    shown=$(printf '%s' "$m" | head -c 40)
    [ "${#m}" -gt 40 ] && shown="$shown... (${#m} chars)"
    req "A /echo hard msg" --get --data-urlencode "msg=$m" "$A_URL/echo"
    want=$(a_body "$m")
    if [ "$RC" -eq 0 ] && [ "$STATUS" = 200 ] && [ "$BODY" = "$want" ]; then
        pass "A round-trips: $shown"
    else
        fail "A round-trips: $shown" "got $STATUS $BODY"
    fi
    req "B /call-echo hard msg" --get --data-urlencode "msg=$m" "$B_URL/call-echo"
    want=$(b_body "$m")
    if [ "$RC" -eq 0 ] && [ "$STATUS" = 200 ] && [ "$BODY" = "$want" ]; then
        pass "B round-trips through A: $shown"
    else
        fail "B round-trips through A: $shown" "got $STATUS $BODY"
    fi
done
limit_msg=$(printf 'x%.0s' $(seq 1 4096))
req "B /call-echo 4096 bytes" "$B_URL/call-echo?msg=$limit_msg"
[ "$STATUS" = 200 ] && [ "$BODY" = "$(b_body "$limit_msg")" ]
ok=$?
check "B accepts a msg of exactly 4096 bytes (the limit) -> 200" "$ok" "got $STATUS"

# ==============================================================================================
suite "3 Service A Down"
stop_service a INT   # the document's Ctrl+C in Terminal 1
[ "$STOP_RC" = 0 ]
ok=$?
check "A stops on Ctrl+C (SIGINT) with exit status 0" "$ok" "exit status $STOP_RC"
wait_port_closed "$A_PORT"
ok=$?
check "A's port $A_PORT is closed" "$ok"
req "B /health" "$B_URL/health"
expect "B /health still answers while A is down" 200 '{"status":"ok"}'
breaker_seen=0
for i in 1 2 3 4 5 6 7 8; do
    req "B /call-echo, A down" "$B_URL/call-echo?msg=hello"
    error=$(json_field error)
    details=$(json_field details)
    if [ "$STATUS" = 503 ] && [ "$error" = "Service A unavailable" ] && [[ $details == "Connection error:"* ]]; then
        pass "call $i -> 503 Service A unavailable, details: $(printf '%s' "$details" | head -c 80)"
    else
        fail "call $i -> 503 Service A unavailable, details starting 'Connection error:'" "got $STATUS $BODY"
    fi
    if [[ $details == *"(circuit breaker open"* ]]; then
        breaker_seen=$i
        break
    fi
done
if [ "$breaker_seen" -gt 0 ]; then
    pass "the circuit breaker opens after repeated failures (call $breaker_seen) and keeps the cause"
    retry_after=$(header Retry-After)
    [[ $retry_after =~ ^[1-9][0-9]*$ ]]
    ok=$?
    check "the breaker's 503 carries a Retry-After header ($retry_after)" "$ok" "got '$retry_after'"
    if lt "$TIME" 0.3; then
        pass "the open breaker answers at once (${TIME}s), without waiting on A"
    else
        fail "the open breaker answers at once (< 0.3 s)" "took ${TIME}s"
    fi
else
    fail "the circuit breaker opens within 8 calls while A is down" "last details: $details"
fi
grep -q "WARNING service_b outbound GET $A_URL/echo .*failed" "$B_LOG"
ok=$?
check "B logs the failed outbound call (URL, timeout, error)" "$ok"
# Recovery: A comes back; after the breaker's 3 s reset one probe goes through and B heals.
start_service a || exit 1
deadline=$(($(now_ms) + 8000))
recovered=''
while [ "$(now_ms)" -lt "$deadline" ]; do
    req "B /call-echo, recovering" "$B_URL/call-echo?msg=back" --max-time 3
    if [ "$STATUS" = 200 ]; then recovered=$BODY; break; fi
    sleep 0.1
done
[ "$recovered" = '{"msg":"back","echo_response":{"echo":"back"}}' ]
ok=$?
check "B serves /call-echo again within 8 s of A restarting" "$ok" "last: $STATUS $BODY"

# ==============================================================================================
suite "4 Invalid Requests"
req "B /call-echo missing msg" "$B_URL/call-echo"
expect "B GET /call-echo (no msg)" 400 "{\"error\":\"Missing 'msg' parameter\"}"
req "B /call-echo empty msg" "$B_URL/call-echo?msg="
expect "B GET /call-echo?msg=" 400 "{\"error\":\"Missing 'msg' parameter\"}"
req "B /call-echo other param" "$B_URL/call-echo?message=hello"
expect "B GET /call-echo?message=hello (wrong name)" 400 "{\"error\":\"Missing 'msg' parameter\"}"
for svc in A B; do
    if [ "$svc" = A ]; then base=$A_URL path=/echo; else base=$B_URL path=/call-echo; fi
    req "$svc unknown path" "$base/no-such-path"
    expect "$svc GET /no-such-path" 404 '{"error":"Not found"}'
    req "$svc POST" -X POST "$base$path?msg=hello"
    expect "$svc POST $path" 405 '{"error":"Method not allowed"}'
    allow=$(header Allow)
    [[ $allow == *GET* ]]
    ok=$?
    check "$svc 405 names the allowed methods (Allow: $allow)" "$ok" "got '$allow'"
    req "$svc bad percent" "$base$path?msg=%ZZ"
    expect "$svc GET $path?msg=%ZZ" 400 "{\"error\":\"Invalid percent-encoding in 'msg' parameter\"}"
    req "$svc bad percent at end" "$base$path?msg=abc%4"
    expect "$svc GET $path?msg=abc%4" 400 "{\"error\":\"Invalid percent-encoding in 'msg' parameter\"}"
    req "$svc bad utf-8" "$base$path?msg=%FF%FE"
    expect "$svc GET $path?msg=%FF%FE" 400 "{\"error\":\"Invalid UTF-8 in 'msg' parameter\"}"
    req "$svc msg 4097 bytes" "$base$path?msg=${limit_msg}y"
    expect "$svc msg of 4097 bytes" 414 "{\"error\":\"'msg' parameter too long: 4097 bytes, the limit is 4096\"}"
    huge=$(printf 'z%.0s' $(seq 1 70000))
    req "$svc 70 KB request line" "$base$path?msg=$huge"
    error=$(json_field error)
    [ "$STATUS" = 414 ] && [ -n "$error" ]
    ok=$?
    check "$svc 70 KB request line -> 414 JSON ($error)" "$ok" "got $STATUS $BODY"
done

# ==============================================================================================
suite "5 Service B Down"
stop_service b INT   # the document's Ctrl+C in Terminal 2
[ "$STOP_RC" = 0 ]
ok=$?
check "B stops on Ctrl+C (SIGINT) with exit status 0" "$ok" "exit status $STOP_RC"
wait_port_closed "$B_PORT"
ok=$?
check "B's port $B_PORT is closed" "$ok"
req "B /health, B down" "$B_URL/health" --max-time 3
[ "$RC" = 7 ]
ok=$?
check "curl $B_URL/health fails with exit code 7 (connection refused)" "$ok" "curl exit code $RC: $(cat "$WORK/r$REQ_N.err")"
grep -qi "failed to connect" "$WORK/r$REQ_N.err"
ok=$?
check "curl reports the failed connection: $(head -c 90 "$WORK/r$REQ_N.err")" "$ok" "$(cat "$WORK/r$REQ_N.err")"
req "B /call-echo, B down" "$B_URL/call-echo?msg=hello" --max-time 3
[ "$RC" = 7 ]
ok=$?
check "curl $B_URL/call-echo fails with exit code 7" "$ok" "curl exit code $RC"
req "A /echo, B down" "$A_URL/echo?msg=alone"
expect "A keeps serving on its own while B is down" 200 '{"echo":"alone"}'

# ==============================================================================================
suite "6 Timeout Scenarios (2-second timeout)"
stop_service a INT
wait_port_closed "$A_PORT"
start_service a FAULT_DELAY_MS=3000 || exit 1
start_service b || exit 1
note "A answers /echo after 3 s (FAULT_DELAY_MS=3000); B's budget is 2 s"
slow_call_case "A slow (3 s)" yes
grep -q "WARNING service_b outbound GET $A_URL/echo timeout=.* -> failed timeout after" "$B_LOG"
ok=$?
check "B logs the outbound call as failed with a timeout (URL, timeout, outcome)" "$ok" \
    "$(grep "WARNING service_b outbound" "$B_LOG" | tail -n 1)"
stop_service a INT
wait_port_closed "$A_PORT"
start_service a || exit 1
req "B /call-echo" "$B_URL/call-echo?msg=before"
expect "with a normal A again, B /call-echo works" 200 '{"msg":"before","echo_response":{"echo":"before"}}'
note "freezing A with SIGSTOP on its process group (accepts connections, never answers)"
kill -STOP -- "-$A_PID"
slow_call_case "A frozen"
kill -CONT -- "-$A_PID"
req "B /call-echo after SIGCONT" "$B_URL/call-echo?msg=thawed"
expect "after SIGCONT, B /call-echo works again" 200 '{"msg":"thawed","echo_response":{"echo":"thawed"}}'

# ==============================================================================================
suite "7 Concurrent Requests"
N=24
conc="$WORK/concurrent"
mkdir -p "$conc"
a_lines_before=$(grep -c 'INFO service_a GET /echo 200 ' "$A_LOG")
t0=$(now_ms)
# Bounded: N curls at once, each with its own 10 s limit.
# shellcheck disable=SC2016  # $1..$3 are the inner bash's arguments
seq 1 "$N" | xargs -P "$N" -I{} bash -c \
    'curl -sS --max-time 10 -o "$1/$3.body" -w "%{http_code}" "$2/call-echo?msg=concurrent%20$3%20%C3%BC" >"$1/$3.code" 2>"$1/$3.err"' \
    _ "$conc" "$B_URL" {}
elapsed_ms=$(($(now_ms) - t0))
good=0 bad=''
for i in $(seq 1 "$N"); do
    want="{\"msg\":\"concurrent $i ü\",\"echo_response\":{\"echo\":\"concurrent $i ü\"}}"
    if [ "$(cat "$conc/$i.code" 2>/dev/null)" = 200 ] && [ "$(cat "$conc/$i.body" 2>/dev/null)" = "$want" ]; then
        good=$((good + 1))
    else
        bad="$bad #$i: $(cat "$conc/$i.code" 2>/dev/null) $(cat "$conc/$i.body" "$conc/$i.err" 2>/dev/null | head -c 120);"
    fi
done
[ "$good" = "$N" ]
ok=$?
check "$N parallel /call-echo: $good/$N answered 200 with their own msg (${elapsed_ms} ms in all)" "$ok" "$bad"
# Every call reached A exactly once (no lost or duplicated calls); poll briefly for the log lines.
deadline=$(($(now_ms) + 3000))
while :; do
    a_lines=$(( $(grep -c 'INFO service_a GET /echo 200 ' "$A_LOG") - a_lines_before ))
    [ "$a_lines" -ge "$N" ] || [ "$(now_ms)" -ge "$deadline" ] && break
    sleep 0.05
done
[ "$a_lines" = "$N" ]
ok=$?
check "A logged exactly $N /echo 200 lines for them" "$ok" "got $a_lines"
req "B /health" "$B_URL/health"
expect "B is healthy after the burst" 200 '{"status":"ok"}'

# ==============================================================================================
suite "8 Error Response Format"
# One access line per request: a msg and a path with an encoded newline (and a forged log line
# after it) must each produce exactly one line in B's log, with the newline escaped.
rid="scenario-log-$$-$RANDOM"
forged='2024-01-01 12:00:00 INFO service_b GET /forged 200 0.01ms'
req "B /call-echo newline msg" --get --data-urlencode "msg=line1
$forged" -H "X-Request-ID: $rid" "$B_URL/call-echo"
[ "$STATUS" = 200 ] && [ "$BODY" = "$(b_body "line1
$forged")" ]
ok=$?
check "B /call-echo with %0A in msg -> 200 and the exact msg back" "$ok" "got $STATUS $BODY"
rid2="scenario-log2-$$-$RANDOM"
req "B newline path" -H "X-Request-ID: $rid2" "$B_URL/x%0A2024-01-01%2012:00:00%20INFO%20service_b%20GET%20/forged%20200"
[ "$STATUS" = 404 ]
ok=$?
check "B GET /x%0A... -> 404" "$ok" "got $STATUS"
deadline=$(($(now_ms) + 3000))
while :; do
    n1=$(grep -c "INFO service_b GET /call-echo 200 .*request_id=$rid\$" "$B_LOG")
    n2=$(grep -c "INFO service_b GET /x.*404 .*request_id=$rid2\$" "$B_LOG")
    [ "$n1" -ge 1 ] && [ "$n2" -ge 1 ] || [ "$(now_ms)" -ge "$deadline" ] && break
    sleep 0.05
done
[ "$n1" = 1 ]
ok=$?
check "B's log has exactly one access line for the %0A msg request" "$ok" "found $n1"
[ "$n2" = 1 ]
ok=$?
check "B's log has exactly one access line for the %0A path request" "$ok" "found $n2"
grep -q "GET /x\\\\n2024-01-01" "$B_LOG"
ok=$?
check "the newline in the path is logged escaped as \\n" "$ok" "$(grep "request_id=$rid2" "$B_LOG")"
! grep -q "^2024-01-01 12:00:00 INFO service_b GET /forged" "$B_LOG"
ok=$?
check "no forged line starts in B's log" "$ok"
n3=$(grep -c "INFO service_a GET /echo 200 .*request_id=$rid\$" "$A_LOG")
[ "$n3" = 1 ]
ok=$?
check "A logged exactly one line for B's call, with B's request ID" "$ok" "found $n3"
# Every line any service wrote in this run is one record in the document's format
# ("%(asctime)s %(levelname)s %(name)s %(message)s"): nothing else prints raw lines in between.
record='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [A-Za-z_.]+ '
for log in "$LOG_DIR"/service_*.log; do
    stray=$(grep -vE "$record" "$log" | head -n 3)
    [ -z "$stray" ]
    ok=$?
    check "every line of $(basename "$log") is a record in the document's log format" "$ok" "stray: $stray"
done

# The 503s while A is down, in the same shape.
stop_service a INT
wait_port_closed "$A_PORT"
req "B /call-echo, A down (format)" "$B_URL/call-echo?msg=hello"
"$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(not (list(d)==["error","details"] and d["details"].startswith("Connection error:")))' "$BODY" 2>/dev/null
ok=$?
check "A down: 503 body is {\"error\",\"details\"} JSON" "$ok" "got $BODY"

# Every error answer seen in this whole run: JSON object with a string "error" (and a string
# "details" when present), Content-Type application/json.
results=$("$PY" - "$WORK/errors.tsv" <<'PYEOF'
import json, sys
seen = {}
lines = [line.rstrip("\n").split("\t") for line in open(sys.argv[1], encoding="utf-8")]
for label, status, _, _ in lines:
    seen[(label, status)] = seen.get((label, status), 0) + 1
reported = set()
for label, status, ctype, path in lines:
    key = (label, status)
    what = f"{label} ({status})" + (f" x{seen[key]}" if seen[key] > 1 else "")
    try:
        body = json.loads(open(path, "rb").read())
    except Exception as exc:
        print(f"FAIL\t{what}: body is not JSON: {exc}")
        continue
    problems = []
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        problems.append("no non-empty string 'error' key")
    elif "details" in body and not isinstance(body["details"], str):
        problems.append("'details' is not a string")
    elif set(body) - {"error", "details"}:
        problems.append(f"unexpected keys {sorted(set(body) - {'error', 'details'})}")
    if not ctype.startswith("application/json"):
        problems.append(f"Content-Type is {ctype!r}")
    if problems:
        print("FAIL\t" + what + ": " + "; ".join(problems))
    elif key not in reported:  # one PASS line per kind of request, however often it was sent
        reported.add(key)
        print("PASS\t" + what)
PYEOF
)
count=0
while IFS=$'\t' read -r verdict text; do
    [ -n "$verdict" ] || continue
    count=$((count + 1))
    if [ "$verdict" = PASS ]; then pass "error JSON + application/json: $text"; else fail "error format: $text"; fi
done <<<"$results"
total=$(wc -l <"$WORK/errors.tsv")
[ "$count" -ge 20 ]
ok=$?
check "suite 8 checked every error answer of the run ($total answers, $count kinds)" "$ok" "only $count kinds"

# ==============================================================================================
suite "Teardown"
a_pid=$A_PID b_pid=$B_PID
stop_service a TERM
stop_service b TERM
[ "$STOP_RC" = 0 ]
ok=$?
check "B exits 0 on SIGTERM (graceful shutdown)" "$ok" "exit status $STOP_RC"
for pid in $a_pid $b_pid; do
    ! kill -0 -- "-$pid" 2>/dev/null
    ok=$?
    check "no process left in the group $pid" "$ok"
done
wait_port_closed "$A_PORT" 3000
wait_port_closed "$B_PORT" 3000
listening=$(ss -Hltn "( sport = :$A_PORT or sport = :$B_PORT )" 2>/dev/null)
[ -z "$listening" ]
ok=$?
check "ss -ltn: nothing listens on $A_PORT or $B_PORT any more" "$ok" "$listening"

[ "$TOTAL_FAILED" -gt 0 ] && print_logs
summary
[ "$TOTAL_FAILED" -eq 0 ]
