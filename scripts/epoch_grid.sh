#!/usr/bin/env bash
# Issue 29's grid (configs/epoch.yaml) with issue 31's curves (configs/recexplainer-align.yaml) after google, in
# batches, most informative first; every call resumes what an earlier one left, so rerun this after any stop:
#   setsid nohup scripts/epoch_grid.sh >> runs/logs/epoch-drive.log 2>&1 &
# BENCH_SRC=/path/to/src runs the bench from another checkout (a git worktree of a tested commit), so editing this
# one does not change the code under running workers. Waits for a bench already running on the same output.
set -u
cd "$(dirname "$0")/.."
[ -n "${BENCH_SRC:-}" ] && export PYTHONPATH="$BENCH_SRC"
while pgrep -f "explainrec bench configs/epoch.yaml" > /dev/null; do sleep 60; done
B=".venv/bin/explainrec bench configs/epoch.yaml --jobs 2"
$B --only 'google/gavamoe/seed0' --only 'google/mmp-refer/seed0'
$B --only 'google/base/seed0' --only 'google/base/seed1' --only 'google/gavamoe/seed1'
$B --only 'google/base/seed2' --only 'google/gavamoe/seed2'
$B --only 'google/*/seed0'
$B --only 'google/*/seed1'
$B --only 'google/*/seed2'
.venv/bin/explainrec bench configs/recexplainer-align.yaml --jobs 2
$B --only 'amazon/*/seed0'
$B --only 'amazon/*/seed1'
$B --only 'amazon/*/seed2'
