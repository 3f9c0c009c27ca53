#!/usr/bin/env bash
# The prepared GPU check of issue 9, for one call of a lent GPU machine (about 9 minutes):
#   1. benchmarks/method_speed.py on the GPU for finetune and rdfcil, eager and with
#      train.compile=true (step ms, images/s, GFLOP/s against the measured bf16 peak);
#   2. the full R-DFCIL CIFAR-100 B0 N=5 run (paper budgets: 160 epochs, 5,000 generator steps,
#      40 refinement epochs) for RUN_SECONDS, keeping its log (per-epoch time, generator steps/s)
#      so the whole run's time can be read off even if it does not finish.
# Needs CIFAR-100 (cifar100-jpg.tar.gz) in $DFCIL_DATA (default .gpu-data/, an ignored folder to
# carry: `mkdir -p .gpu-data && cp ../shared/data/cifar100-jpg.tar.gz .gpu-data/`).
# Everything that comes back is written under $OUT (default /tmp/gpu-session): at most 8 files.
# The package runs from src/ (no install); the GPU image has torch, numpy, PyYAML, Pillow, tqdm.
# MODE=suite instead runs `dfcil suite SUITE` (default suites/mini.yaml) with JOBS processes
# sharing the GPU (default 8) for SUITE_SECONDS, adopting the complete runs already committed in
# benchmarks/results/suites/<name>, and returns the suite's new runs (no checkpoints) as
# $OUT/suite.tar.gz, to unpack into benchmarks/results/suites/<name> here; rerun to go on.
#   device run: bash benchmarks/gpu_session.sh            (carry: [".gpu-data"], timeout_s: 600)
#   device run: MODE=suite bash benchmarks/gpu_session.sh (carry: [".gpu-data"], timeout_s: 600)
# COMPILE_SET replaces the compiled measurement's overrides (default "train.compile=true"; CUDA
# graphs: "train.compile=true train.compile_mode=reduce-overhead").
# MODE=full runs the whole R-DFCIL CIFAR-100 B0 N=5 run (RUN_SET applies) in .gpu-run/ (ignored,
# so it stays on the warm machine between calls) for at most FULL_SECONDS (default 560), resuming
# it when .gpu-run/ already holds one: call again within the machine's 30 s warm period to go on.
# metrics.json's wall_time_s adds up the calls' training time. Returns log.jsonl, run.json and,
# once finished, metrics.json.
#   device run: MODE=full bash benchmarks/gpu_session.sh  (carry: [".gpu-data"], timeout_s: 600)
#   on a CPU, to try the script: SPEED_SECONDS=60 RUN_SECONDS=60 RUN_SET="train.epochs=1" bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DFCIL_DATA=${DFCIL_DATA:-$PWD/.gpu-data}
SPEED_SECONDS=${SPEED_SECONDS:-150}
RUN_SECONDS=${RUN_SECONDS:-270}
RUN_SET=${RUN_SET:-}
mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
git log -1 --format='commit %H' 2>/dev/null || true

if [ "${MODE:-speed}" = suite ]; then
    SUITE=${SUITE:-suites/mini.yaml}
    name=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$SUITE")
    committed="benchmarks/results/suites/$name"
    rm -rf /tmp/gpu-suite && mkdir -p /tmp/gpu-suite
    JOBS=${JOBS:-8}
    echo "== suite $SUITE, $JOBS jobs, for at most ${SUITE_SECONDS:-500} s"
    adopt=()
    [ -d "$committed" ] && adopt=(--adopt "$committed")
    timeout "${SUITE_SECONDS:-500}" python3 -m dfcil suite "$SUITE" -o /tmp/gpu-suite --jobs "$JOBS" "${adopt[@]}" \
        || echo "suite: exit $?"
    python3 -m dfcil suite "$SUITE" -o /tmp/gpu-suite --status
    # the runs completed here (not the adopted ones), without checkpoints
    new=$(python3 -c '
import json, sys
from pathlib import Path
from dfcil.suite import run_state
for run in sorted(Path(sys.argv[1]).iterdir()):
    suite = run / "suite.json"
    if run_state(run) == "complete" and suite.exists() and "adopted_from" not in json.loads(suite.read_text()):
        print(run.name)
' /tmp/gpu-suite)
    [ -n "$new" ] && tar -C /tmp/gpu-suite --exclude=checkpoints -czf "$OUT/suite.tar.gz" $new
    exit 0
fi

summarise_log() {  # per-phase epoch times and generator speed of a run's log.jsonl
python3 - "$1" <<'EOF'
import json, sys
from collections import defaultdict
try:
    records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
except OSError:
    sys.exit("no log")
epochs = defaultdict(list)
for r in records:
    if r.get("event") == "epoch":
        epochs[(r["task"], r["phase"])].append(r["time_s"])
for (task, phase), times in sorted(epochs.items()):
    print(f"task {task} {phase}: {len(times)} epochs, mean {sum(times) / len(times):.2f} s/epoch")
for r in records:
    if r.get("event") == "synthesis" and r.get("step", 0) % 1000 == 0:
        print(f"task {r['task']} synthesis step {r['step']}: {r['steps_per_s']:.1f} steps/s")
EOF
}

if [ "${MODE:-speed}" = full ]; then
    sets=(--set method.name=rdfcil --set runtime.progress=false)
    for item in $RUN_SET; do sets+=(--set "$item"); done
    if [ -f .gpu-run/run.json ]; then
        echo "== resuming the R-DFCIL run in .gpu-run for at most ${FULL_SECONDS:-560} s"
        cmd=(python3 -m dfcil run --resume .gpu-run)
    else
        echo "== R-DFCIL CIFAR-100 B0 N=5, full budgets, in .gpu-run for at most ${FULL_SECONDS:-560} s"
        cmd=(python3 -m dfcil run configs/cifar100/b0_n5.yaml -o .gpu-run "${sets[@]}")
    fi
    start=$(date +%s)
    timeout "${FULL_SECONDS:-560}" "${cmd[@]}"
    echo "run: exit $? after $(( $(date +%s) - start )) s"
    mkdir -p "$OUT/run"
    cp .gpu-run/log.jsonl .gpu-run/run.json "$OUT/run/" 2>/dev/null
    if cp .gpu-run/metrics.json "$OUT/run/" 2>/dev/null; then
        python3 -c "import json; m = json.load(open('.gpu-run/metrics.json')); print({k: m.get(k) for k in
            ('complete', 'wall_time_s', 'last_accuracy', 'average_incremental_accuracy', 'forgetting')})"
    fi
    summarise_log .gpu-run/log.jsonl
    python3 benchmarks/run_projection.py .gpu-run
    exit 0
fi

mkdir -p "$OUT/eager" "$OUT/compile" "$OUT/run"
echo "== method speed, eager"
timeout "$SPEED_SECONDS" python3 benchmarks/method_speed.py --methods finetune rdfcil --out "$OUT/eager" \
    || echo "method_speed eager: exit $?"
echo "== method speed, train.compile=true"
# inductor needs triton on a GPU, and triton a C compiler for its launchers
if python3 -c "import triton" 2>/dev/null && { command -v cc || command -v gcc; } >/dev/null; then
    compile_sets=()
    for item in ${COMPILE_SET:-train.compile=true}; do compile_sets+=(--set "$item"); done
    echo "${compile_sets[*]}"
    timeout "$SPEED_SECONDS" python3 benchmarks/method_speed.py --methods finetune rdfcil --out "$OUT/compile" \
        "${compile_sets[@]}" || echo "method_speed compile: exit $?"
else
    echo "skipped: no triton or no C compiler here"
fi
rm -f "$OUT"/eager/*.md "$OUT"/compile/*.md  # rebuilt from the JSON here; keeps the file count down

echo "== R-DFCIL CIFAR-100 B0 N=5, full budgets, for at most ${RUN_SECONDS} s"
rm -rf /tmp/gpu-run
sets=(--set method.name=rdfcil --set runtime.progress=false)
for item in $RUN_SET; do sets+=(--set "$item"); done
start=$(date +%s)
timeout "$RUN_SECONDS" python3 -m dfcil run configs/cifar100/b0_n5.yaml -o /tmp/gpu-run "${sets[@]}"
echo "run: exit $? after $(( $(date +%s) - start )) s"
cp /tmp/gpu-run/log.jsonl /tmp/gpu-run/run.json "$OUT/run/" 2>/dev/null
cp /tmp/gpu-run/metrics.json "$OUT/run/" 2>/dev/null
summarise_log /tmp/gpu-run/log.jsonl
python3 benchmarks/run_projection.py /tmp/gpu-run
