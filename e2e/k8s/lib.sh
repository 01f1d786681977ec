#!/usr/bin/env bash
# Shared by cluster.sh and images.sh (sourced, after they set SCRIPT to their name):
# where the repository and the build cache are, and how progress and failures are
# reported (on stderr: cluster.sh's stdout is only the export lines).
# shellcheck disable=SC2034 # the variables are the sourcing scripts'

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
K8S="$REPO/e2e/k8s"
# Built binaries and images, kept across bring-ups (with Go's own caches).
CACHE="${DYNAMO_K8S_CACHE:-/var/cache/dynamo-k8s}"
BIN="$CACHE/bin"

# shellcheck disable=SC2154 # SCRIPT is the sourcing script's
log() { printf '[%s %s] %s\n' "$SCRIPT" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '[%s] FAILED: %s\n' "$SCRIPT" "$*" >&2
  exit 1
}
