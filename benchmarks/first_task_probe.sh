#!/bin/bash
# The first task of the half-base mini split (10 classes, 20 epochs, seed 0) alone, with one of the
# two changes of revision 2 undone in each probe (PyTorch's head init on the revision-2 network; ABD's
# network with R-DFCIL's head init N(0, 0.001^2)), to find which makes it fit slower than revision 1
# did; the setting with both is the suite's own half-base first task (FINDINGS.md, "The first task
# on the corrected network"). Each run is stopped once its first task is evaluated (its log.jsonl then
# holds every first-task epoch and the test accuracy).
#   DFCIL_DATA=../shared/data bash benchmarks/first_task_probe.sh OUT_DIR
set -u
out=${1:?usage: first_task_probe.sh OUT_DIR}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
probe() {  # name, overrides...
  local name=$1; shift
  local dir=$out/$name
  [ -f "$dir/done" ] && return
  rm -rf "$dir"
  python -m dfcil run configs/mini.yaml -o "$dir" --set seed=0 --set scenario.num_tasks=3 \
    --set scenario.base_classes=10 --set method.name=finetune --set runtime.progress=false \
    --set runtime.num_threads=1 "$@" &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if grep -q '"event": "eval", "task": 1' "$dir/log.jsonl" 2>/dev/null; then
      kill $pid; wait $pid; touch "$dir/done"; return
    fi
    sleep 10
  done
  echo "first_task_probe: $name ended before its first task was evaluated" >&2
  return 1
}
probe rdfcil-head-default --set model.head_init_std=null
probe abd-head-0.001 --set model.resnet32_variant=abd
