#!/usr/bin/env bash
# The quickstart's main job, fully offline: set up ./.venv on first use, serve a fake Earth Engine on
# 127.0.0.1 and write a recipe-weight checkpoint in the official format, then run the pipeline on
# DirectRunner over a small region. Arguments are passed on to `python -m pipeline` (they win).
# For real Earth Engine, run `python -m pipeline` yourself (see README, "Run against Earth Engine").
set -euo pipefail
cd "$(dirname "$0")"

PORT=${PORT:-8765}
CHECKPOINT=${CHECKPOINT:-demo/dynamicvis_b_recipe.pth}
OUTPUT=${OUTPUT:-out/quickstart}

[ -x .venv/bin/python ] || bash scripts/install.sh

.venv/bin/python scripts/demo_server.py --port "$PORT" --checkpoint "$CHECKPOINT" > /dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "the fake Earth Engine server did not start" >&2; exit 1; }
  sleep 0.5
done

.venv/bin/python -m pipeline \
  --bbox 8.0,47.0,8.02,47.02 --start 2024-06-01 --end 2024-07-01 \
  --tile-px 32 --img-size 64 \
  --ee-endpoint "http://127.0.0.1:$PORT" --ee-credentials anonymous --ee-project test-project \
  --checkpoint "$CHECKPOINT" --output "$OUTPUT" --skip-existing "$@"

# A picture of what was embedded: PCA of the embeddings as RGB, one pixel per tile (see docs/MAPS_AND_SEARCH.md).
.venv/bin/python -m pipeline.map --input "$OUTPUT" --png "$OUTPUT/map.png" > /dev/null
echo "map of the embeddings: $OUTPUT/map.png"
