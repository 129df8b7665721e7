#!/usr/bin/env bash
# The GPU figures of the README in one go (about 6 minutes on one H100/H200):
#   bash bench/gpu_suite.sh [OUTDIR]
# 1. bench/train_step.py: size12m in bfloat16 and float32, size50m in bfloat16 (batch 16 x 64, 64x64 RGB + tokens);
# 2. bench/defusal_speed.py: rounds/s of the JAX defusal world on the accelerator (1 to 65,536 worlds);
# 3. launch.train end to end: defusal + defusal_gpu (256 worlds x 3 agents on the device, size12m, bf16) for a
#    few hundred updates: time to the first update, updates/s, agent-steps/s.
# Each step has its own time limit and the suite goes on when one fails; every output lands in OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/gpu_suite}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
PLATFORM="${PLATFORM:-gpu}"  # PLATFORM=cpu TS_SPECS=debug:float32 EXTRA="..." for a smoke test

step() {  # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"; shift 2
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "=== $name: skipped (SKIP)"; return; fi
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.log"
  echo "=== $name: rc $rc after $((SECONDS - t0)) s"
}

"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/versions.log"
import importlib, platform
for m in ("jax", "jaxlib", "flax", "optax", "chex", "orbax.checkpoint", "numpy", "dm_env", "minigrid"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", e)
import jax
print("python", platform.python_version(), "devices", jax.devices())
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT_DIR/versions.log"

# Pass 1 compiles the three train steps side by side into a persistent cache (cold compile seconds, three
# compiles sharing the host's cores); pass 2 times them one after another, loading the compiled steps from it.
export LWM_JAX_CACHE="$OUT_DIR/.jax_cache"
read -r -a TS <<< "${TS_SPECS:-size12m:bfloat16 size12m:float32 size50m:bfloat16}"
for spec in "${TS[@]}"; do
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 240 "$PY" bench/train_step.py --preset "${spec%%:*}" --platform "$PLATFORM" \
    --dtype "${spec##*:}" --updates 1 --warmup 0 --cache > "$OUT_DIR/compile_${spec/:/_}.log" 2>&1 &
done
wait
grep -H "compile " "$OUT_DIR"/compile_*.log
for spec in "${TS[@]}"; do
  step "ts_${spec/:/_}" 90 "$PY" bench/train_step.py --preset "${spec%%:*}" --platform "$PLATFORM" --dtype "${spec##*:}" \
    --updates 30 --cache
done
step defusal_speed 90 "$PY" bench/defusal_speed.py --worlds 1 4096 65536 --round_budget 20000000
step train_defusal_gpu 200 "$PY" -m launch.train --configs defusal defusal_gpu --jax.platform "$PLATFORM" \
  --logdir "$OUT_DIR/defusal_gpu" --run.steps 110000 --run.log_every 15 --ckpt.enabled false ${EXTRA:-}
cp "$OUT_DIR/defusal_gpu/summary.json" "$OUT_DIR/defusal_gpu_summary.json" 2>/dev/null || true
grep -h '^{' "$OUT_DIR"/ts_*.log > "$OUT_DIR/train_step.jsonl" 2>/dev/null || true
echo "=== done"
