#!/usr/bin/env bash
# Learning on one GPU within a fixed wall-clock budget: several launcher runs side by side on the same device,
# each stopped by `run.minutes` (then evaluated as at the end of a run), their summaries and curves in OUTDIR.
#   bash bench/gpu_learning.sh [OUTDIR] [MINUTES]
# Runs (all on the GPU at once, so each gets a share of it; the figures are for that sharing):
#   defusal_gpu  the full defusal world, 256 worlds x 3 agents, size12m in bf16 (configs defusal + defusal_gpu)
#   defusal_s    the full defusal world, 64 worlds x 3 agents, the small CPU model (configs defusal)
#   grid_task    grid_task_s, the one-word stream of the CPU preset (configs grid_task)
#   grid_task_6  grid_task_s with the whole 6-token sentence every step (token_len 6, repeat_every 1)
# SKIP="grid_task_6 ..." leaves runs out; EXTRA="--key value ..." is added to every run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/gpu_learning}"
MINUTES="${2:-7}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION="${MEM_FRACTION:-0.2}"
export LWM_JAX_CACHE="$OUT_DIR/.jax_cache"
PY="${PYTHON:-python3}"
PLATFORM="${PLATFORM:-gpu}"
# The hard limit leaves time for the evaluation after the budget.
LIMIT=$(( ${MINUTES%.*} * 60 + ${EVAL_S:-150} ))

declare -A RUNS=(
  [defusal_gpu]="--configs defusal defusal_gpu --run.eval_episodes 256"
  [defusal_s]="--configs defusal --env.num_envs 64 --run.eval_episodes 256"
  [grid_task]="--configs grid_task"
  [grid_task_6]="--configs grid_task --env.options.token_len 6 --env.options.repeat_every 1"
)
for name in "${!RUNS[@]}"; do
  if [[ " ${SKIP:-} " == *" $name "* ]]; then continue; fi
  # shellcheck disable=SC2086
  timeout -s TERM "$LIMIT" "$PY" -m launch.train ${RUNS[$name]} --jax.platform "$PLATFORM" --logdir "$OUT_DIR/$name" \
    --run.minutes "$MINUTES" --ckpt.enabled false ${EXTRA:-} > "$OUT_DIR/$name.log" 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
  if [[ " ${SKIP:-} " == *" $name "* ]]; then continue; fi
  echo "=== $name"
  tail -n 4 "$OUT_DIR/$name.log"
  [[ -f "$OUT_DIR/$name/summary.json" ]] && "$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" \
    "$OUT_DIR/$name/summary.json"
done
echo "=== done"
