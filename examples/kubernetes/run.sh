#!/bin/bash
# Runs the evaluation and statistics Indexed Jobs, waits for both, then the merge Job.
#   examples/kubernetes/run.sh          (kubectl pointed at the cluster and namespace to use; the claim of
#                                        volume.yaml holding a checkout at /work/rome-webgpu)
set -euo pipefail
here=$(dirname "$0")

# Waits until every named Job is Complete; stops at once when one is Failed (its backoffLimit spent), where
# `kubectl wait --for=condition=complete` would wait out its whole timeout.
wait_jobs() {
  local job state
  while :; do
    local complete=0
    for job in "$@"; do
      state=$(kubectl get "job/$job" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
      case " $state " in
        *" Failed "*)
          echo "job $job failed: kubectl describe job/$job; kubectl logs job/$job" >&2
          return 1
          ;;
        *" Complete "*) complete=$((complete + 1)) ;;
      esac
    done
    [ "$complete" -eq "$#" ] && return 0
    sleep 30
  done
}

kubectl apply -f "$here/volume.yaml"
kubectl apply -f "$here/eval-indexed-job.yaml" -f "$here/stats-indexed-job.yaml"
wait_jobs rome-eval rome-stats
kubectl apply -f "$here/merge-job.yaml"
wait_jobs rome-merge
kubectl logs job/rome-merge
