#!/usr/bin/env bash
# The Kubernetes end-to-end suite, for a machine with a Docker engine, kind, kubectl and
# helm: builds both images, creates a kind cluster, installs the chart, applies a
# 3-node DynamoCluster, writes keys through the client Service, scales to 5 and back to
# 3 with `kubectl scale`, checks every key after each step, and deletes the cluster.
# Every wait is bounded; the first failure stops the run with the cluster's state.
#
#   bash e2e/kind.sh                 # create, test, delete the kind cluster
#   KEEP=1 bash e2e/kind.sh          # leave the kind cluster running afterwards
#
# It cannot run on the project's build machines (no Docker engine); CI checks it with
# `bash -n` and shellcheck (.ci/static-checks). See e2e/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER="${KIND_CLUSTER:-dynamo-e2e}"
OPERATOR_NS="${OPERATOR_NS:-dynamo-system}"
NS="${NS:-dynamo-e2e}"
CLUSTER=small
TAG="${TAG:-e2e}"
KEYS="${KEYS:-50}"
TIMEOUT="${TIMEOUT:-600}" # seconds for each wait
LOCAL_PORT="${LOCAL_PORT:-17000}"

log() { printf '\n== %s ==\n' "$*"; }
fail() {
  echo "FAIL: $*" >&2
  kubectl -n "$NS" get dynamocluster,statefulset,pods,pvc -o wide >&2 || true
  kubectl -n "$NS" describe dynamocluster "$CLUSTER" >&2 || true
  kubectl -n "$OPERATOR_NS" logs deployment/dynamo-operator --tail=200 >&2 || true
  exit 1
}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind.sh needs $tool on PATH" >&2; exit 2; }
done

port_forward_pid=""
cleanup() {
  if [[ -n "$port_forward_pid" ]]; then kill "$port_forward_pid" 2>/dev/null || true; fi
  if [[ -z "${KEEP:-}" ]]; then kind delete cluster --name "$KIND_CLUSTER" || true; fi
}
trap cleanup EXIT

# Polls `$@` once a second until it succeeds or TIMEOUT seconds pass.
wait_for() {
  local what="$1"
  shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
    sleep 1
  done
  echo "ok: $what"
}

# The cluster is Running with exactly $1 ring members and $1 ready nodes, for the
# current generation.
cluster_settled() {
  local want="$1" status
  status="$(kubectl -n "$NS" get dynamocluster "$CLUSTER" -o \
    jsonpath='{.status.phase} {.status.members} {.status.readyNodes} {.status.observedGeneration} {.metadata.generation}')"
  read -r phase members ready observed generation <<<"$status"
  [[ "$phase" == Running && "$members" == "$want" && "$ready" == "$want" && "$observed" == "$generation" ]]
}

# dynamoctl from the node image, on the host network so it reaches the port-forward.
dynamoctl() {
  docker run --rm --network host --entrypoint /usr/local/bin/dynamoctl \
    "dynamo-node:$TAG" --endpoint "127.0.0.1:$LOCAL_PORT" --timeout 10s "$@"
}

start_port_forward() {
  if [[ -n "$port_forward_pid" ]]; then kill "$port_forward_pid" 2>/dev/null || true; fi
  kubectl -n "$NS" port-forward "svc/$CLUSTER" "$LOCAL_PORT:7000" >/dev/null 2>&1 &
  port_forward_pid=$!
  wait_for "port-forward to svc/$CLUSTER" client_reachable
}

# dynamoctl exits 0 (found) or 1 (no such key) when the cluster answered, 3 when not.
client_reachable() {
  local rc=0
  dynamoctl get e2e-probe-key >/dev/null 2>&1 || rc=$?
  [[ $rc -eq 0 || $rc -eq 1 ]]
}

check_keys() {
  local i value
  for ((i = 0; i < KEYS; i++)); do
    value="$(dynamoctl get "key-$i")" || fail "get key-$i after $1"
    [[ "$value" == "value-$i" ]] || fail "key-$i is '$value' after $1, want 'value-$i'"
  done
  echo "ok: all $KEYS keys read back after $1"
}

log "build images (tag $TAG)"
docker build --target node -t "dynamo-node:$TAG" .
docker build --target operator -t "dynamo-operator:$TAG" .

log "kind cluster $KIND_CLUSTER"
if ! kind get clusters | grep -qx "$KIND_CLUSTER"; then
  kind create cluster --name "$KIND_CLUSTER" --wait "${TIMEOUT}s"
fi
kind load docker-image --name "$KIND_CLUSTER" "dynamo-node:$TAG" "dynamo-operator:$TAG"

log "helm install the operator"
helm upgrade --install dynamo-operator charts/dynamo-operator \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository=dynamo-operator --set image.tag="$TAG" \
  --set image.pullPolicy=Never \
  --wait --timeout "${TIMEOUT}s"
kubectl wait --for=condition=Established crd/dynamoclusters.dynamo.example.org \
  --timeout="${TIMEOUT}s"

log "apply a 3-node DynamoCluster"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
sed -e "s|image: dynamo-node:dev|image: dynamo-node:$TAG|" \
  -e "s|imagePullPolicy: IfNotPresent|imagePullPolicy: Never|" \
  e2e/manifests/small-cluster.yaml | kubectl -n "$NS" apply -f -
wait_for "DynamoCluster $CLUSTER Running with 3 members" cluster_settled 3

log "write $KEYS keys through the client Service"
start_port_forward
for ((i = 0; i < KEYS; i++)); do
  dynamoctl put "key-$i" "value-$i" >/dev/null || fail "put key-$i"
done
check_keys "the writes"

log "scale to 5"
kubectl -n "$NS" scale dynamocluster "$CLUSTER" --replicas=5
wait_for "DynamoCluster $CLUSTER Running with 5 members" cluster_settled 5
start_port_forward
check_keys "scaling to 5"

log "scale back to 3"
kubectl -n "$NS" scale dynamocluster "$CLUSTER" --replicas=3
wait_for "DynamoCluster $CLUSTER Running with 3 members" cluster_settled 3
wait_for "StatefulSet $CLUSTER shrunk to 3" \
  test "$(kubectl -n "$NS" get statefulset "$CLUSTER" -o jsonpath='{.spec.replicas}')" = 3
start_port_forward
check_keys "scaling back to 3"

log "delete the DynamoCluster"
kubectl -n "$NS" delete dynamocluster "$CLUSTER" --timeout="${TIMEOUT}s"
wait_for "StatefulSet $CLUSTER gone" \
  bash -c "! kubectl -n '$NS' get statefulset '$CLUSTER'"
# retainOnDelete: false in the manifest, so the volumes go with the cluster.
wait_for "volume claims of $CLUSTER gone" \
  bash -c "test -z \"\$(kubectl -n '$NS' get pvc -l app.kubernetes.io/instance=$CLUSTER -o name)\""

log "passed"
