#!/bin/bash
# Runs the evaluation and statistics Indexed Jobs, waits for both, then the merge Job.
#   examples/kubernetes/run.sh          (kubectl pointed at the cluster and namespace to use; the claim of
#                                        volume.yaml holding a checkout at /work/rome-webgpu)
set -euo pipefail
here=$(dirname "$0")
kubectl apply -f "$here/volume.yaml"
kubectl apply -f "$here/eval-indexed-job.yaml" -f "$here/stats-indexed-job.yaml"
kubectl wait --for=condition=complete --timeout=48h job/rome-eval job/rome-stats
kubectl apply -f "$here/merge-job.yaml"
kubectl wait --for=condition=complete --timeout=1h job/rome-merge
kubectl logs job/rome-merge
