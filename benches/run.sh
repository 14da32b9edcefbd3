#!/usr/bin/env bash
# End-to-end intake benchmark for rin-ship (forward, or HTTP NDJSON). See docs/benchmarks.md.
#
#   benches/run.sh                      # 1M records, level 6, 2 connections, Fluent forward
#   COMPRESSION=zstd LEVEL=1 benches/run.sh   # zstd objects, against libzstd alone
#   RECORDS=200000 LEVEL=1 CONNECTIONS=4 benches/run.sh
#   MODE=http benches/run.sh            # the same records as NDJSON bodies POSTed to the HTTP intake
#
# Environment knobs (defaults in brackets):
#   MODE [forward]     forward: `forward_load replay` of PackedForward frames (WINDOW frames in
#                      flight per connection); http: `forward_load replay-http`, one NDJSON body
#                      per frame (same tag and records), one request in flight per connection
#   HTTP_PORT [24298]  HTTP_TIME [rfc3339]  (http mode: the intake's port; `time` field as an
#                      RFC 3339 string or `epoch` seconds)
#   COMPRESSION [gzip] buffer.compression: gzip or zstd (objects .json.gz / .json.zst)
#   RECORDS [1000000]  LEVEL [6 for gzip (1 with GZIP_ENGINE=isal), 3 for zstd]  CONNECTIONS [2]  WINDOW [4]  PER_FRAME [1000]  SEED [1]
#   PORT [24299]  SHARDS [0 = one per core]  SEAL_BYTES [64MiB]  SEAL_AGE [60s]
#   CARGO_FLAGS [""]   e.g. "--no-default-features" for a build without the S3 store
#   GZIP_ENGINE [zlib] isal: buffer.gzip_engine: isal (LEVEL 1..3, CARGO_FLAGS="--features isal"),
#                      baseline `forward_load compress --codec isal`
#   SKIP_BUILD [0]     1: use the binaries already in target/
#   KEEP [0]           1: keep the run folder (data dir, NDJSON, logs) after the run
#   SERVER, BENCH      override the server binary / the forward_load bench executable
# Only ever talks to 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

RECORDS=${RECORDS:-1000000}
COMPRESSION=${COMPRESSION:-gzip}
GZIP_ENGINE=${GZIP_ENGINE:-zlib}
BASE_CODEC=$COMPRESSION
case $COMPRESSION/$GZIP_ENGINE in
    gzip/isal) LEVEL=${LEVEL:-1} ENGINE="ISA-L" EXT=gz BASE_CODEC=isal ;;
    gzip/*) LEVEL=${LEVEL:-6} ENGINE="flate2 (zlib-rs)" EXT=gz ;;
    zstd/*) LEVEL=${LEVEL:-3} ENGINE="libzstd" EXT=zst ;;
    *) echo "[run.sh] ERROR: COMPRESSION must be gzip or zstd, not $COMPRESSION" >&2; exit 1 ;;
esac
CONNECTIONS=${CONNECTIONS:-2}
WINDOW=${WINDOW:-4}
PER_FRAME=${PER_FRAME:-1000}
SEED=${SEED:-1}
PORT=${PORT:-24299}
SHARDS=${SHARDS:-0}
SEAL_BYTES=${SEAL_BYTES:-64MiB}
SEAL_AGE=${SEAL_AGE:-60s}
CARGO_FLAGS=${CARGO_FLAGS:-}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
MODE=${MODE:-forward}
HTTP_PORT=${HTTP_PORT:-24298}
HTTP_TIME=${HTTP_TIME:-rfc3339}

log() { printf '[run.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $MODE == forward || $MODE == http ]] || die "MODE must be forward or http, not $MODE"
[[ -r /proc/self/stat ]] || die "needs Linux /proc"
command -v gzip >/dev/null || die "gzip not found"
[[ $COMPRESSION != zstd ]] || command -v zstd >/dev/null || die "zstd CLI not found (apt-get install zstd)"
CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)

# ---------------------------------------------------------------------------- build
SERVER=${SERVER:-$ROOT/target/release/rin-ship}
# shellcheck disable=SC2086
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release $CARGO_FLAGS"
    cargo build --release $CARGO_FLAGS
fi
if [[ -z ${BENCH:-} ]]; then
    log "cargo bench --no-run --bench forward_load $CARGO_FLAGS"
    # shellcheck disable=SC2086
    BENCH=$(cargo bench --no-run --bench forward_load $CARGO_FLAGS --message-format=json \
        | grep -o '"executable":"[^"]*forward_load[^"]*"' | tail -n1 | sed 's/^"executable":"//; s/"$//')
fi
[[ -x $BENCH ]] || die "could not find the forward_load bench executable"
[[ -x $SERVER ]] || die "$SERVER missing (build failed?)"

# ---------------------------------------------------------------------------- data
mkdir -p bench-data
STREAM=bench-data/stream-r${RECORDS}-f${PER_FRAME}-s${SEED}.fwd
if [[ ! -s $STREAM || ! -s $STREAM.meta ]]; then
    log "generating $STREAM"
    "$BENCH" gen --records "$RECORDS" --per-frame "$PER_FRAME" --seed "$SEED" --out "$STREAM" >&2
fi
STREAM_BYTES=$(stat -c %s "$STREAM")
if [[ $MODE == http ]]; then
    # Derived from the .fwd stream (same records, same .meta for verify): one body per frame.
    HTTP_FILE=${STREAM%.fwd}-${HTTP_TIME}.ndjson-batches
    if [[ ! -s $HTTP_FILE || $STREAM -nt $HTTP_FILE ]]; then
        log "generating $HTTP_FILE"
        "$BENCH" gen-http --stream "$STREAM" --out "$HTTP_FILE" --time-format "$HTTP_TIME" >&2
    fi
    HTTP_BYTES=$(stat -c %s "$HTTP_FILE")
fi

RUN=$ROOT/bench-data/run
rm -rf "$RUN"
mkdir -p "$RUN"
DATA_DIR=$RUN/data

cat >"$RUN/config.yaml" <<EOF
data_dir: $DATA_DIR
node: bench
forward: {bind: "127.0.0.1:$PORT"}
metrics: {enabled: false}
buffer: {seal_bytes: $SEAL_BYTES, seal_age: $SEAL_AGE, compression: $COMPRESSION, compression_level: $LEVEL, shards: $SHARDS, gzip_engine: $GZIP_ENGINE}
targets: [{name: default, match: ["**"], store: local}]
EOF
WAIT_PORTS=$PORT
if [[ $MODE == http ]]; then
    echo "http: {enabled: true, bind: \"127.0.0.1:$HTTP_PORT\", time_key: time}" >>"$RUN/config.yaml"
    WAIT_PORTS="$PORT $HTTP_PORT"
fi

for p in $WAIT_PORTS; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "127.0.0.1:$p is already in use (set PORT=... / HTTP_PORT=...)"
    fi
done

# ---------------------------------------------------------------------------- cleanup
TIME_PID= SPID= SAMPLER_PID=
cleanup() {
    local rc=$?
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    if [[ -n $SPID ]] && kill -0 "$SPID" 2>/dev/null; then
        log "cleanup: killing server $SPID"
        kill -TERM "$SPID" 2>/dev/null || true
        sleep 2
        kill -KILL "$SPID" 2>/dev/null || true
    fi
    [[ -n $TIME_PID ]] && kill "$TIME_PID" 2>/dev/null || true
    if [[ $KEEP != 1 && $rc == 0 ]]; then
        rm -rf "$RUN"
    elif [[ -d $RUN ]]; then
        log "run folder kept: $RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- server
# Under GNU time when available: exact lifetime CPU (all threads) and ru_maxrss at exit.
if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%e %U %S %M' -o "$RUN/server.time" \
        "$SERVER" serve --config "$RUN/config.yaml" >"$RUN/server.log" 2>&1 &
    TIME_PID=$!
    for _ in $(seq 100); do
        SPID=$(cat "/proc/$TIME_PID/task/$TIME_PID/children" 2>/dev/null | awk '{print $1}') || true
        [[ -n $SPID ]] && break
        sleep 0.05
    done
    [[ -n $SPID ]] || die "server did not start (see $RUN/server.log)"
else
    "$SERVER" serve --config "$RUN/config.yaml" >"$RUN/server.log" 2>&1 &
    SPID=$!
fi
for p in $WAIT_PORTS; do
    log "server pid $SPID, waiting for 127.0.0.1:$p"
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        kill -0 "$SPID" 2>/dev/null || { cat "$RUN/server.log" >&2; die "server exited during startup"; }
        [[ $i == 300 ]] && die "server not listening on $p after 30s"
        sleep 0.1
    done
done

# CPU ticks (utime+stime, all threads) of the server; empty once it is gone.
cpu_ticks() {
    local st
    st=$(<"/proc/$SPID/stat") 2>/dev/null || return 0
    st=${st##*) }              # drop "pid (comm) "; fields now start at state (field 3)
    local -a f=($st)
    echo $((f[11] + f[12]))    # fields 14 and 15
}

# Sampler: every 100 ms, VmRSS / VmHWM (kB) and CPU ticks; pure bash reads, one fork (sleep).
(
    while [[ -r /proc/$SPID/status ]]; do
        rss=0 hwm=0
        while read -r k v _; do
            case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; esac
        done <"/proc/$SPID/status" 2>/dev/null || break
        st=$(<"/proc/$SPID/stat") 2>/dev/null || break
        st=${st##*) }
        f=($st)
        echo "$EPOCHREALTIME $rss $hwm $((f[11] + f[12]))"
        sleep 0.1
    done
) >"$RUN/samples.txt" 2>/dev/null &
SAMPLER_PID=$!

# ---------------------------------------------------------------------------- replay
# Whole-machine busy ticks (all cores, /proc/stat): other work on the machine skews the figures.
machine_busy() { local _c u n s _i _w q sq st _rest; read -r _c u n s _i _w q sq st _rest </proc/stat; echo $((u + n + s + q + sq + st)); }
CPU_START=$(cpu_ticks)
MACHINE_START=$(machine_busy)
T_START=$EPOCHREALTIME
set +e
if [[ $MODE == http ]]; then
    log "replay-http: $CONNECTIONS connection(s), one request in flight each"
    "$BENCH" replay-http --addr "127.0.0.1:$HTTP_PORT" --file "$HTTP_FILE" \
        --connections "$CONNECTIONS" >"$RUN/replay.out"
else
    log "replay: $CONNECTIONS connection(s), window $WINDOW"
    "$BENCH" replay --addr "127.0.0.1:$PORT" --file "$STREAM" --connections "$CONNECTIONS" \
        --window "$WINDOW" >"$RUN/replay.out"
fi
REPLAY_RC=$?
set -e
T_ACKED=$EPOCHREALTIME
CPU_ACKED=$(cpu_ticks)
MACHINE_ACKED=$(machine_busy)
cat "$RUN/replay.out" >&2

# ---------------------------------------------------------------------------- shutdown
HWM_BEFORE_TERM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SPID/status")
# Per-thread CPU so far, summed by thread name: shows which stage is busy and whether work spreads.
THREADS=$(for t in /proc/"$SPID"/task/*; do
    st=$(<"$t/stat") 2>/dev/null || continue
    name=${st#*(}; name=${name%%)*}
    st=${st##*) }; f=($st)
    echo "$name $((f[11] + f[12]))"
done | awk -v hz="$CLK_TCK" '{ c[$1] += $2; n[$1]++ }
    END { for (k in c) if (c[k] > 0) printf "%s%s=%.2f", (i++ ? " " : ""), (n[k] > 1 ? k "(x" n[k] ")" : k), c[k] / hz }')
log "SIGTERM to server"
kill -TERM "$SPID"
set +e
if [[ -n $TIME_PID ]]; then wait "$TIME_PID"; else wait "$SPID"; fi
SERVER_RC=$?
set -e
T_EXIT=$EPOCHREALTIME
SPID_DONE=$SPID
SPID=
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=
[[ $SERVER_RC == 0 ]] || log "WARNING: server exited with status $SERVER_RC"
tail -n 5 "$RUN/server.log" | sed 's/^/[server] /' >&2 || true

read -r MAX_RSS_KB LAST_HWM_KB LAST_TICKS < <(awk '
    $2 > m { m = $2 } { h = $3; t = $4 } END { print m + 0, h + 0, t + 0 }' "$RUN/samples.txt")
if [[ -s $RUN/server.time ]]; then
    read -r _ S_USER S_SYS TIME_MAXRSS_KB < <(tail -n1 "$RUN/server.time")
    SERVER_CPU=$(awk -v u="$S_USER" -v s="$S_SYS" 'BEGIN { printf "%.2f", u + s }')
else
    TIME_MAXRSS_KB=0
    SERVER_CPU=$(awk -v t="$LAST_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
fi
PEAK_RSS_KB=$(printf '%s\n' "$MAX_RSS_KB" "$LAST_HWM_KB" "${HWM_BEFORE_TERM:-0}" "$TIME_MAXRSS_KB" | sort -n | tail -n1)

# ---------------------------------------------------------------------------- output checks
OBJ_DIR=$DATA_DIR/objects
[[ -d $OBJ_DIR ]] || die "no objects folder $OBJ_DIR"
OBJECTS=$(find "$OBJ_DIR" -type f | wc -l)
OBJ_BYTES=$(find "$OBJ_DIR" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
BUFFER_LEFT=$( (find "$DATA_DIR/buffer" -mindepth 2 -type f \( -name "*.json.gz" -o -name "*.json.zst" -o -name "*.journal" \) 2>/dev/null || true) | wc -l)  # .shipped journals are kept on purpose (resend dedupe)
NDJSON=$RUN/all.ndjson
WRONG_EXT=$(find "$OBJ_DIR" -type f ! -name "*.json.$EXT" | wc -l)
# Each object by its own codec (a wrong one shows as a decode failure and a line count short).
find "$OBJ_DIR" -type f -print0 | sort -z | while IFS= read -r -d '' obj; do
    case $obj in *.zst) zstd -dcq "$obj" ;; *) gzip -dc "$obj" ;; esac
done >"$NDJSON"
NDJSON_BYTES=$(stat -c %s "$NDJSON")
LINES=$(wc -l <"$NDJSON")
CHECKS_OK=1
[[ $REPLAY_RC == 0 ]] || { log "FAIL: replay failed (missing or wrong acks / non-2xx answers)"; CHECKS_OK=0; }
[[ $SERVER_RC == 0 ]] || { log "FAIL: server exit status $SERVER_RC"; CHECKS_OK=0; }
[[ $WRONG_EXT == 0 ]] || { log "FAIL: $WRONG_EXT object(s) not named *.json.$EXT"; CHECKS_OK=0; }
[[ $LINES == "$RECORDS" ]] || { log "FAIL: $LINES NDJSON lines, expected $RECORDS"; CHECKS_OK=0; }
if ! "$BENCH" verify --meta "$STREAM.meta" --file "$NDJSON" >"$RUN/verify.out"; then
    log "FAIL: verify (see below)"; CHECKS_OK=0
fi
cat "$RUN/verify.out" >&2

# ---------------------------------------------------------------------------- baselines
log "baseline: gzip -6"
/usr/bin/time -f '%U %S' -o "$RUN/gzip.time" gzip -6 -c "$NDJSON" >"$RUN/all.gz"
GZIP_BYTES=$(stat -c %s "$RUN/all.gz")
GZIP_CPU=$(awk '{ printf "%.2f", $1 + $2 }' "$RUN/gzip.time")
rm -f "$RUN/all.gz"
log "baseline: $ENGINE level $LEVEL alone, one thread, 64 KiB writes"
"$BENCH" compress --codec "$BASE_CODEC" --level "$LEVEL" --file "$NDJSON" >"$RUN/compress.out"
FL_BYTES=$(awk '/^compress.output_bytes:/ {print $2}' "$RUN/compress.out")
FL_CPU=$(awk '/^compress.cpu_s:/ {print $2}' "$RUN/compress.out")
CLI_LABEL= CLI_BYTES=0 CLI_CPU=0
if [[ $COMPRESSION == zstd ]]; then
    CLI_LABEL="zstd -$LEVEL (CLI, one thread)"
    log "baseline: $CLI_LABEL"
    /usr/bin/time -f '%U %S' -o "$RUN/zstd.time" zstd -q -T1 "-$LEVEL" -c "$NDJSON" >"$RUN/all.zst"
    CLI_BYTES=$(stat -c %s "$RUN/all.zst")
    CLI_CPU=$(awk '{ printf "%.2f", $1 + $2 }' "$RUN/zstd.time")
    rm -f "$RUN/all.zst"
fi

# ---------------------------------------------------------------------------- report
rv() { awk -v k="$1" '$1 == k":" {print $2}' "$RUN/replay.out"; }
EVENTS=$(rv replay.events_acked)
REPLAY_WALL=$(rv replay.wall_s)
EPS=$(rv replay.events_per_s)
P50=$(rv replay.ack_latency_ms_p50)
P99=$(rv replay.ack_latency_ms_p99)
CLIENT_CPU=$(rv replay.client_cpu_s)
if [[ $MODE == http ]]; then
    TITLE="HTTP NDJSON benchmark"
    SHAPE="$CONNECTIONS connection(s) x 1 request"
    LAT_LABEL="request latency ms p50 / p99 (send -> 2xx)"
    IN_LABEL="NDJSON request file bytes (headers + bodies)"
    IN_BYTES=$HTTP_BYTES
else
    TITLE="forward benchmark"
    SHAPE="$CONNECTIONS connection(s) x window $WINDOW"
    LAT_LABEL="ack latency ms p50 / p99"
    IN_LABEL="msgpack stream bytes"
    IN_BYTES=$STREAM_BYTES
fi

awk \
    -v records="$RECORDS" -v events="${EVENTS:-0}" -v eps="${EPS:-0}" -v wall="${REPLAY_WALL:-0}" \
    -v t0="$T_START" -v tack="$T_ACKED" -v texit="$T_EXIT" \
    -v c0="${CPU_START:-0}" -v cack="${CPU_ACKED:-0}" -v hz="$CLK_TCK" \
    -v scpu="$SERVER_CPU" -v peak="$PEAK_RSS_KB" -v hwm="${HWM_BEFORE_TERM:-0}" -v maxrss="$MAX_RSS_KB" \
    -v objs="$OBJECTS" -v objbytes="$OBJ_BYTES" -v ndjson="$NDJSON_BYTES" -v streamb="$IN_BYTES" \
    -v title="$TITLE" -v shape="$SHAPE" -v latlabel="$LAT_LABEL" -v inlabel="$IN_LABEL" \
    -v gzb="$GZIP_BYTES" -v gzc="$GZIP_CPU" -v flb="$FL_BYTES" -v flc="$FL_CPU" -v level="$LEVEL" \
    -v engine="$ENGINE" -v codec="$COMPRESSION" -v clilabel="$CLI_LABEL" -v clib="$CLI_BYTES" -v clic="$CLI_CPU" \
    -v p50="${P50:-nan}" -v p99="${P99:-nan}" -v ccpu="${CLIENT_CPU:-0}" -v nproc="$NPROC" \
    -v conns="$CONNECTIONS" -v window="$WINDOW" -v left="$BUFFER_LEFT" \
    -v m0="${MACHINE_START:-0}" -v mack="${MACHINE_ACKED:-0}" '
function pf(ok) { return ok ? "PASS" : "FAIL" }
BEGIN {
    replay_cpu = (cack - c0) / hz
    busy_replay = wall > 0 ? replay_cpu / wall : 0
    shutdown_s = texit - tack
    life = texit - t0
    busy_all = life > 0 ? scpu / life : 0
    per_m = events > 0 ? scpu * 1e6 / events : 0
    rb = gzb > 0 ? objbytes / gzb : 0
    rc = flc > 0 ? scpu / flc : 0
    rc_replay = flc > 0 ? replay_cpu / flc : 0
    printf "\n== rin-ship %s: %d records, %s level %d, %s, %d cores ==\n", title, records, codec, level, shape, nproc
    printf "%-46s %16s   %s\n", "figure", "value", "target"
    printf "%-46s %16d\n", "events acked", events
    printf "%-46s %16.2f\n", "replay wall s (first send -> last ack)", wall
    printf "%-46s %16.0f\n", "events/s", eps
    printf "%-46s %16.1f / %.1f\n", latlabel, p50, p99
    printf "%-46s %16.2f\n", "shutdown s (SIGTERM -> exit)", shutdown_s
    printf "%-46s %16.2f\n", "server CPU s, lifetime (user+sys)", scpu
    printf "%-46s %16.2f\n", "server CPU s during replay", replay_cpu
    printf "%-46s %16.2f\n", "server CPU s per 1M events", per_m
    printf "%-46s %16.2f   %s (>= %.1f of %d cores)\n", "server cores busy during replay", busy_replay, pf(busy_replay >= 0.9 * nproc), 0.9 * nproc, nproc
    printf "%-46s %16.2f\n", "server + load client cores busy during replay", busy_replay + (wall > 0 ? ccpu / wall : 0)
    mbusy = (tack - t0) > 0 ? (mack - m0) / hz / (tack - t0) : 0
    other = mbusy - (tack - t0 > 0 ? (cack - c0) / hz / (tack - t0) : 0) - (wall > 0 ? ccpu / wall : 0)
    printf "%-46s %16.2f\n", "whole machine cores busy during replay", mbusy
    printf "%-46s %16.2f\n", "  of which other processes (noise)", other < 0 ? 0 : other
    printf "%-46s %16.2f\n", "server cores busy, replay start -> exit", busy_all
    printf "%-46s %16.2f\n", "load client CPU s (shares the cores)", ccpu
    printf "%-46s %16.1f   %s (<= 100 MB)\n", "peak RSS MB", peak / 1024, pf(peak / 1024 <= 100)
    printf "%-46s %16d\n", inlabel, streamb
    printf "%-46s %16d\n", "NDJSON bytes (decompressed objects)", ndjson
    printf "%-46s %16d\n", "objects", objs
    printf "%-46s %16d\n", "chunk files left in buffer after exit", left
    printf "%-46s %16d\n", "rin-ship compressed bytes (sum of objects)", objbytes
    printf "%-46s %16d\n", "gzip -6 bytes", gzb
    printf "%-46s %16.2f\n", "gzip -6 CPU s", gzc
    printf "%-46s %16d\n", engine " level " level " bytes", flb
    printf "%-46s %16.2f\n", engine " level " level " CPU s", flc
    if (clilabel != "") {
        printf "%-46s %16d\n", clilabel " bytes", clib
        printf "%-46s %16.2f\n", clilabel " CPU s", clic
    }
    # gzip: within 3% of gzip -6 (at the default level); zstd: no larger than gzip -6.
    bmax = codec == "zstd" ? 1.00 : 1.03
    printf "%-46s %16.3f   %s (<= %.2f)\n", "ratio bytes rin-ship / gzip -6", rb, pf(rb > 0 && rb <= bmax), bmax
    printf "%-46s %16.2f   %s (<= 1.30)\n", "ratio CPU rin-ship / " engine " " level, rc, pf(rc > 0 && rc <= 1.30)
    printf "%-46s %16.2f\n", "ratio CPU (replay only) / " engine " " level, rc_replay
    if (clic > 0) printf "%-46s %16.2f\n", "ratio CPU rin-ship / " clilabel, scpu / clic
    nonc = events > 0 ? (scpu - flc) * 1e6 / events : 0
    printf "%-46s %16.2f   %s (<= 0.50)\n", "non-compressor CPU s per 1M (rin-ship - alone)", nonc, pf(nonc <= 0.5)
}'

if [[ $MODE == http ]]; then
    printf '%-46s %16s\n' "HTTP requests 2xx / 503 retries" "$(rv replay.requests_ok) / $(rv replay.retries_503)"
fi
printf '%-46s %s\n' "server CPU s by thread (at last ack)" "${THREADS:-?}"

if [[ $CHECKS_OK == 1 ]]; then
    printf '%-46s %16s\n' "checks (acks, line count, ids, exit 0)" "OK"
else
    printf '%-46s %16s\n' "checks (acks, line count, ids, exit 0)" "FAILED"
    exit 1
fi
