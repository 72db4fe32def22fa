#!/bin/bash
# Submits the evaluation and statistics arrays (N tasks each) and the merge that waits for both.
#   examples/slurm/submit.sh [N]        run from the repository's root; OUT, LIMIT, METHOD, ... as the
#                                       .sbatch files say (exported to the jobs); the jobs' output goes to
#                                       LOGS (default $OUT/logs)
set -euo pipefail
N=${1:-4}
export OUT=${OUT:-$PWD/out/slurm}
logs=${LOGS:-$OUT/logs}
mkdir -p "$logs"
here=$(dirname "$0")
# Fetch Deno once before the tasks start, so that N tasks do not race to fill npx's cache.
npx -y deno@2.9.6 --version >/dev/null
array=(--parsable --array=0-$((N - 1)) --export=ALL --output "$logs/%x-%A_%a.out")
eval_job=$(sbatch "${array[@]}" "$here/eval.sbatch")
stats_job=$(sbatch "${array[@]}" "$here/stats.sbatch")
merge_job=$(sbatch --parsable --dependency=afterok:$eval_job:$stats_job --export=ALL \
  --output "$logs/%x-%j.out" "$here/merge.sbatch")
echo "eval array $eval_job, stats array $stats_job, merge $merge_job; results in $OUT, logs in $logs"
