#!/usr/bin/env bash
# Start / stop / check the local services of the pipeline, all bound to 127.0.0.1:
#   prefect   Prefect server (UI + API)            http://127.0.0.1:${PREFECT_PORT:-4200}
#   mlflow    MLflow tracking server + UI          http://127.0.0.1:${MLFLOW_PORT:-5000}
#   serve     every deployment (python -m anyprec.flows.deploy), runs flows in this process
#
#   scripts/services.sh start [prefect|mlflow|serve ...]   (default: all three, in that order)
#   scripts/services.sh stop  [prefect|mlflow|serve ...]   (default: all three, reverse order)
#   scripts/services.sh status
#
# PIDs and logs live in .services/ (one process group per service, so stop ends its children).
# Overrides: PREFECT_PORT, MLFLOW_PORT, PARAMS, PREFECT_HOME, MLFLOW_BACKEND, MLFLOW_ARTIFACTS, SERVICES_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
STATE="${SERVICES_DIR:-$ROOT/.services}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PARAMS="${PARAMS:-$ROOT/params.yaml}"
MLFLOW_BACKEND="${MLFLOW_BACKEND:-sqlite:///$ROOT/mlflow.db}"   # = params.yaml pipeline.mlflow_tracking_uri
MLFLOW_ARTIFACTS="${MLFLOW_ARTIFACTS:-$ROOT/mlartifacts}"
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
  DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  TRANSFORMERS_OFFLINE=1
mkdir -p "$STATE"

pid_of() { cat "$STATE/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }

wait_http() {  # wait_http NAME URL SECONDS
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$2" 2>/dev/null; do
    if ((SECONDS > deadline)) || ! alive "$1"; then
      echo "$1 did not come up at $2; see $STATE/$1.log" >&2
      tail -n 20 "$STATE/$1.log" >&2 || true
      return 1
    fi
    sleep 1
  done
  echo "$1 ready: ${2%/health}"
}

launch() {  # launch NAME CMD...: new session (process group) so stop reaches every child
  local name="$1"; shift
  if alive "$name"; then echo "$name already running (pid $(pid_of "$name"))"; return 0; fi
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

start_one() {
  case "$1" in
    prefect)
      launch prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
      wait_http prefect "http://127.0.0.1:${PREFECT_PORT}/api/health" 120 ;;
    mlflow)
      launch mlflow "$BIN/mlflow" server --backend-store-uri "$MLFLOW_BACKEND" \
        --artifacts-destination "$MLFLOW_ARTIFACTS" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
      wait_http mlflow "http://127.0.0.1:${MLFLOW_PORT}/health" 120 ;;
    serve)
      launch serve "$BIN/python" -m anyprec.flows.deploy --params "$PARAMS"
      local deadline=$((SECONDS + 120))
      until grep -q "deployment run" "$STATE/serve.log" 2>/dev/null; do
        if ((SECONDS > deadline)) || ! alive serve; then
          echo "serve did not start; see $STATE/serve.log" >&2; tail -n 20 "$STATE/serve.log" >&2; return 1
        fi
        sleep 1
      done
      echo "serve ready: deployments of $PARAMS" ;;
    *) echo "unknown service $1 (prefect|mlflow|serve)" >&2; return 2 ;;
  esac
}

stop_one() {
  local name="$1" pid
  pid="$(pid_of "$name")"
  if ! alive "$name"; then echo "$name not running"; rm -f "$STATE/$name.pid"; return 0; fi
  # SIGINT first: a Prefect runner whose server is gone ignores SIGTERM while it retries.
  kill -INT -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do alive "$name" || break; sleep 0.5; done
  if alive "$name"; then kill -TERM -- "-$pid" 2>/dev/null || true; sleep 2; fi
  if alive "$name"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$STATE/$name.pid"
  echo "$name stopped"
}

cmd="${1:-status}"; shift || true
case "$cmd" in
  start) for s in "${@:-prefect mlflow serve}"; do for t in $s; do start_one "$t"; done; done
         echo "export PREFECT_API_URL=$PREFECT_API_URL   # for the prefect CLI in your shell" ;;
  stop)  for s in "${@:-serve mlflow prefect}"; do for t in $s; do stop_one "$t"; done; done ;;
  status) for s in prefect mlflow serve; do
            if alive "$s"; then echo "$s running (pid $(pid_of "$s"))"; else echo "$s stopped"; fi
          done ;;
  *) echo "usage: $0 start|stop|status [prefect|mlflow|serve ...]" >&2; exit 2 ;;
esac
