# shellcheck shell=bash disable=SC2034,SC2086  # T_* are read by run.sh (which sources this file); $GW_PIN is split on purpose
# bench/lean_door.py in ../shared/bench-peers: not a node but a measuring stick (bench/README.md,
# "--lean"). The node's HTTP server, upstream client and evidence log doing only the work every
# request must have done (the key checked, the body parsed, one evidence record, the answer
# encoded), pinned like the peers, so the node's figures can be set against the work's in one run:
#   TARGET_DIRS=$PWD/bench/peers TARGETS="direct floor-minproxy signalbox-lean signalbox" ../shared/bench-peers/run.sh
# Uses this checkout's .venv (make test or make run creates it).
_lean_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LEAN_PY="${LEAN_PY:-$_lean_root/.venv/bin/python}"
LEAN_PORT=${LEAN_PORT:-19310}
LEAN_KEY=sbx_lean_bench_key
T_DESC="lean door (bench/lean_door.py): the node's components doing the mandatory work only"
T_URL_FAST="http://127.0.0.1:$LEAN_PORT/v1/chat/completions"
T_URL_SLOW="$T_URL_FAST"
T_MODEL_FAST=gpt-4o-mini
T_MODEL_SLOW=gpt-4o-mini-slow
T_READY_TIMEOUT=60
T_HEADERS_FAST=("Authorization: Bearer $LEAN_KEY")
T_HEADERS_SLOW=("${T_HEADERS_FAST[@]}")

t_version() { echo "lean_door.py"; }

t_install() {
  [ -x "$LEAN_PY" ] || { echo "no $LEAN_PY: run make test or make run in $_lean_root first"; return 1; }
}

t_start() {
  ( exec $GW_PIN "$LEAN_PY" "$_lean_root/bench/lean_door.py" --port "$LEAN_PORT" --key "$LEAN_KEY" \
      --upstream "$MOCK_URL" --slow-upstream "$MOCK_SLOW_URL" --data-dir "$RUN/signalbox-lean" \
  ) > "$LOG_DIR/signalbox-lean.log" 2>&1 &
  T_PID=$!
}
