# shellcheck shell=bash disable=SC2034,SC2086  # T_* are read by run.sh (which sources this file); $GW_PIN is split on purpose
# Signalbox in ../shared/bench-peers: one node worker, pinned like the peers, serving a pinned
# signed snapshot (bench/peers/signalbox_pin.py) through its OpenAI-compatible HTTP door, with
# every production feature on (API key checked, policy routing, evidence written, Prometheus
# metrics observed per request).
#   TARGET_DIRS=$PWD/bench/peers TARGETS="direct litellm portkey floor-minproxy signalbox" ../shared/bench-peers/run.sh
# Uses this checkout's .venv (make test or make run creates it).
_signalbox_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SIGNALBOX_PY="${SIGNALBOX_PY:-$_signalbox_root/.venv/bin/python}"
SIGNALBOX_HTTP_PORT=${SIGNALBOX_HTTP_PORT:-19300}
SIGNALBOX_GRPC_PORT=${SIGNALBOX_GRPC_PORT:-19301}
SIGNALBOX_METRICS_PORT=${SIGNALBOX_METRICS_PORT:-19302}
_signalbox_dir="$RUN/signalbox"
T_DESC="Signalbox node, 1 worker, HTTP door (auth, policy routing, evidence, metrics on)"
T_URL_FAST="http://127.0.0.1:$SIGNALBOX_HTTP_PORT/v1/chat/completions"
T_URL_SLOW="$T_URL_FAST"
T_MODEL_FAST=gpt-4o-mini
T_MODEL_SLOW=gpt-4o-mini-slow
T_READY_TIMEOUT=60
"$SIGNALBOX_PY" "$_signalbox_root/bench/peers/signalbox_pin.py" "$_signalbox_dir" "$MOCK_URL" "$MOCK_SLOW_URL" \
  || log "signalbox: could not write the pinned snapshot"
T_HEADERS_FAST=("Authorization: Bearer $(cat "$_signalbox_dir/api-key" 2>/dev/null)")
T_HEADERS_SLOW=("${T_HEADERS_FAST[@]}")

t_version() { "$SIGNALBOX_PY" -c 'import importlib.metadata as m; print("signalbox", m.version("signalbox"))'; }

t_install() {
  [ -x "$SIGNALBOX_PY" ] || { echo "no $SIGNALBOX_PY: run make test or make run in $_signalbox_root first"; return 1; }
}

t_start() {
  ( exec env SIGNALBOX_LOG_LEVEL=WARNING $GW_PIN "$SIGNALBOX_PY" -m signalbox dataplane serve \
      --listen "127.0.0.1:$SIGNALBOX_GRPC_PORT" --http-listen "127.0.0.1:$SIGNALBOX_HTTP_PORT" \
      --metrics-listen "127.0.0.1:$SIGNALBOX_METRICS_PORT" \
      --snapshot "$_signalbox_dir/pin.bin" --trust-key "$_signalbox_dir/trust-key.pem" \
      --data-dir "$_signalbox_dir/node" --node-id bench-node --mode on-prem --workers 1 \
  ) > "$LOG_DIR/signalbox.log" 2>&1 &
  T_PID=$!
}
