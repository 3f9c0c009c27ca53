#!/bin/bash
# Wall and CPU time of `dfcil report` on a folder of runs, at --jobs 1 and 2, optionally against
# another source tree (a git worktree of an earlier commit), twice in alternation; checks that
# every report is byte-identical to the first.
#   bash benchmarks/report_speed.sh RUNS [OLD_SRC]
# e.g. git worktree add /tmp/old da0a0aa && bash benchmarks/report_speed.sh \
#        benchmarks/results/suites/mini-rev2 /tmp/old/src
set -euo pipefail
runs=${1:?usage: report_speed.sh RUNS [OLD_SRC]}
old=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
variants=(new1 new2)
[ -n "$old" ] && variants=(old "${variants[@]}")
for repeat in 1 2; do
  for v in "${variants[@]}"; do
    case $v in
      old) src=$old; extra=();;
      new1) src=$here/src; extra=(--jobs 1);;
      new2) src=$here/src; extra=(--jobs 2);;
    esac
    rm -rf "$work/$v"
    /usr/bin/time -f "$v repeat $repeat: wall %e s, user %U s, sys %S s" \
      env PYTHONPATH="$src" python -m dfcil report "$runs" -o "$work/$v" "${extra[@]}" > /dev/null
  done
done
for v in "${variants[@]:1}"; do
  diff -rq "$work/${variants[0]}" "$work/$v" > /dev/null && echo "$v: identical to ${variants[0]}" \
    || echo "$v: DIFFERS from ${variants[0]}"
done
rm -rf "$work"
