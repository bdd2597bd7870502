#!/usr/bin/env bash
# start_mlflow.sh - real MLflow tracking server on loopback for CI (idempotent, pid file).
set -euo pipefail
D=${MLFLOW_CI_DIR:-/tmp/electra-ci}; PORT=${MLFLOW_CI_PORT:-5055}; MLFLOW=${MLFLOW_BIN:-$(command -v mlflow)}
PID=$D/mlflow_server.pid; URL=http://127.0.0.1:$PORT
if [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null && curl -fsS "$URL/health" >/dev/null 2>&1; then
  echo "mlflow already up at $URL"; exit 0; fi
if ss -Hltn "sport = :$PORT" | grep -q .; then echo "port $PORT busy"; exit 1; fi
mkdir -p "$D/artifacts" "$D/log"; t0=$(date +%s.%N)
# job execution off: otherwise 1 job runner + 7 huey consumers (~1.4 GB more RSS, 10-15 s more start)
# --allowed-hosts: Host headers other than localhost/127.0.0.1/private IPs get 403 on /api (not /health)
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$MLFLOW" server \
  --backend-store-uri "sqlite:///$D/mlflow.db" --default-artifact-root "$D/artifacts" \
  --host 127.0.0.1 --port "$PORT" --workers 1 \
  --allowed-hosts "localhost:*,127.0.0.1:*,$(hostname -s):*,ci-n*" \
  > "$D/log/mlflow_server.log" 2>&1 < /dev/null &
echo $! > "$PID"
for _ in $(seq 1200); do curl -fsS "$URL/health" >/dev/null 2>&1 && break
  kill -0 "$(cat "$PID")" 2>/dev/null || { tail -20 "$D/log/mlflow_server.log"; exit 1; }; sleep 0.1; done
curl -fsS "$URL/health" >/dev/null || { echo "mlflow not healthy after 120 s"; exit 1; }
echo "mlflow up at $URL in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s (pid $(cat "$PID"))"
