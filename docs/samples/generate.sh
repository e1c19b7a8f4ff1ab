#!/usr/bin/env bash
# Regenerate the report samples in this directory from a real run: a server on embedded
# defaults, 40 simulated cars (4 roll back, 4 defer first), one dealer remedy and one
# unreachable car recorded by the operator, then every regulator report and the audit log.
# Usage (from the repository root, after `make demo` created .venv): docs/samples/generate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/samples
BIN=.venv/bin
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$BIN/ota" serve --port 0 --data-dir "$WORK/server" --ready-file "$WORK/ready.json" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do [ -s "$WORK/ready.json" ] && break; sleep 0.2; done
API=$("$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['api_url'])" "$WORK/ready.json")
TOKEN=$(cat "$WORK/server/admin-token")

"$BIN/ota-sim" --server "$API" --token "$TOKEN" --cars 40 --fail-rate 0.1 --defer-rate 0.1 --seed 7 \
  --state-dir "$WORK/cars" --json >"$WORK/sim.json" || true  # exit 1: some cars rolled back, as intended

# The operator records what happened to two of the rolled-back cars.
ROLLED=$(curl -sf -H "Authorization: Bearer $TOKEN" "$API/api/v1/campaigns/1/progress" >/dev/null &&
  "$BIN/python" - "$WORK/server/ota.db" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT vin FROM campaign_vehicles WHERE campaign_id = 1 AND state = 'rolled_back' ORDER BY vin LIMIT 2"
).fetchall()
print(" ".join(r[0] for r in rows))
PY
)
set -- $ROLLED
if [ $# -ge 2 ]; then
  curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"outcome": "remedied_at_dealer", "evidence": "repair order RO-20931, software 2.0.0 flashed"}' \
    "$API/api/v1/campaigns/1/vehicles/$1/outcome" >/dev/null
  curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"outcome": "unreachable", "reason": "exported", "evidence": "registration cancelled, exported 2026-10"}' \
    "$API/api/v1/campaigns/1/vehicles/$2/outcome" >/dev/null
fi

# The reports are asked for by a named person (the submitter on every report), not the bootstrap token.
ANALYST=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name": "rita.regulatory", "role": "viewer"}' "$API/api/v1/tokens" |
  "$BIN/python" -c "import json,sys; print(json.load(sys.stdin)['token'])")
export OTA_SERVER=$API OTA_TOKEN=$ANALYST  # `ota reports export` asks the server
for kind in population completion vin-status notices type-approval; do
  for format in csv json pdf; do
    "$BIN/ota" reports export 1 --kind "$kind" --format "$format" --out "$OUT/$kind.$format"
  done
done
# The first page of each PDF as PNG, with pypdfium2 when at hand (PDF_RENDER_PYTHON: a Python that has it).
RENDER=${PDF_RENDER_PYTHON:-$BIN/python}
if "$RENDER" -c "import pypdfium2" 2>/dev/null; then
  "$RENDER" - "$OUT"/*.pdf <<'PY'
import sys
import pypdfium2

for path in sys.argv[1:]:
    page = pypdfium2.PdfDocument(path)[0]
    page.render(scale=1.5).to_pil().save(path.removesuffix(".pdf") + ".png")
PY
else
  echo "no pypdfium2: PDF page renders (PNG) not made" >&2
fi
curl -sf -H "Authorization: Bearer $TOKEN" "$API/api/v1/audit/export" -o "$OUT/audit.json"
cp "$WORK/sim.json" "$OUT/run-summary.json"
echo "samples written to $OUT"
