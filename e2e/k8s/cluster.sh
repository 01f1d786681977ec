#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, built offline from the components' own
# Go modules (e2e/k8s/components/*, pinned by go.mod/go.sum) and Debian's packages: no
# registry, no Docker engine.
#
#   eval "$(e2e/k8s/cluster.sh up)"   # build (cached), start, import images; prints
#                                     # the export lines for KUBECONFIG and PATH
#   e2e/k8s/cluster.sh down           # stop every process, remove every mount,
#                                     # namespace, interface and file `up` made
#   e2e/k8s/cluster.sh build          # only build the components (and the images)
#   e2e/k8s/cluster.sh images         # rebuild the images, import them into the cluster
#   e2e/k8s/cluster.sh status         # which components run, where the logs are
#
# Layout (see e2e/README.md):
#   * Everything runs as root in one network namespace, `dynamo-k8s`, which holds the
#     pod bridge (10.244.0.0/24), the Service range (10.96.0.0/16, kube-proxy's rules)
#     and the node address 10.250.0.2 (API server :6443, kubelet :10250). The namespace
#     has no default route, so nothing a pod sends can leave the machine. One veth pair
#     joins it to the host (10.250.0.1 here), with host routes to the pod and Service
#     ranges, so kubectl, helm and the tests on the host reach the API server, pods and
#     Services. Host ports are untouched, so tests on loopback can run beside it.
#   * State, logs and kubeconfig under $DYNAMO_K8S_DIR (/var/lib/dynamo-k8s), removed by
#     `down`; built binaries and images under $DYNAMO_K8S_CACHE (/var/cache/dynamo-k8s),
#     kept, with Go's own module and build caches, so a second `up` starts in minutes.
#   * Logs: $DYNAMO_K8S_DIR/logs/<component>.log. A wait that times out names the
#     component and prints the end of its log.
#
# Output on stdout is only the export lines; progress goes to stderr.
set -euo pipefail

SCRIPT=cluster.sh
# shellcheck source=e2e/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUN="${DYNAMO_K8S_DIR:-/var/lib/dynamo-k8s}"
NETNS=dynamo-k8s
NODE_NAME=dynamo-e2e
HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
HOST_VETH=dynk8s-host
NS_VETH=dynk8s-node
# Kubernetes release of components/kubernetes/go.mod (checked by `build`).
K8S_VERSION=v1.35.4
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
WAIT="${DYNAMO_K8S_WAIT:-180}" # seconds for each bounded wait


# Runs a command inside the cluster's network namespace (only the network: the mount
# namespace stays the host's, so the kubelet's and containerd's mounts see each other).
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

# wait_for COMPONENT WHAT CMD...: polls CMD every half second, bounded by $WAIT.
wait_for() {
  local component="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${WAIT}s waiting for $what"
      if [[ -f "$RUN/logs/$component.log" ]]; then
        log "last lines of $RUN/logs/$component.log:"
        tail -n 40 "$RUN/logs/$component.log" >&2
      fi
      die "$component: $what (timed out after ${WAIT}s; logs in $RUN/logs)"
    fi
    if [[ -f "$RUN/pids/$component.pid" ]] && ! kill -0 "$(cat "$RUN/pids/$component.pid")" 2>/dev/null; then
      log "$component exited; last lines of $RUN/logs/$component.log:"
      tail -n 40 "$RUN/logs/$component.log" >&2 || true
      die "$component exited while waiting for $what (logs in $RUN/logs)"
    fi
    sleep 0.5
  done
  log "ok: $what"
}

# start COMPONENT CMD...: a daemon in the namespace, in its own session, logging to
# logs/COMPONENT.log, its pid in pids/COMPONENT.pid.
start() {
  local component="$1"
  shift
  log "starting $component"
  setsid nsenter --net="/run/netns/$NETNS" -- "$@" >"$RUN/logs/$component.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/$component.pid"
}

# ---------------------------------------------------------------------------------
# Packages and builds

DEBS=(runc iptables conntrack umoci openssl busybox-static gcc libc6-dev)

ensure_debs() {
  local missing=() deb
  for deb in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# The build key of a component: its pinned module files and how it is built. A
# component whose key is unchanged is not rebuilt (Go's caches make a rebuild cheap,
# but linking the Kubernetes binaries still takes minutes on 2 cores).
build_key() {
  cat "$K8S/components/$1/go.mod" "$K8S/components/$1/go.sum" <(go version) <(echo "$2") | sha256sum | cut -d' ' -f1
}

build_component() {
  local name="$1" ldflags="${2:-}" out="$BIN"
  [[ "$name" == cni ]] && out="$BIN/cni"
  mkdir -p "$out" "$CACHE/stamps"
  local key
  key="$(build_key "$name" "$ldflags")"
  if [[ "$(cat "$CACHE/stamps/$name" 2>/dev/null)" == "$key" ]]; then
    return 0
  fi
  log "building $name (go build, pinned by e2e/k8s/components/$name/go.sum)"
  local started=$SECONDS
  (cd "$K8S/components/$name" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w $ldflags" -o "$out/" tool) >&2 ||
    die "building $name failed (see the go output above)"
  # go names a module-root main package after its path without the /vN suffix.
  if [[ "$name" == etcd ]]; then mv -f "$out/server" "$out/etcd"; fi
  echo "$key" >"$CACHE/stamps/$name"
  log "built $name in $((SECONDS - started))s"
}

k8s_ldflags() {
  local minor
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  local v
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "$v" "$K8S_VERSION" "$v" "$v" "$minor" "$v"
  done
  printf -- '-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z'
}

build_all() {
  command -v go >/dev/null || die "go is not installed (Go 1.25 or newer builds the components)"
  grep -q "k8s.io/kubernetes $K8S_VERSION" "$K8S/components/kubernetes/go.mod" ||
    die "components/kubernetes/go.mod does not pin $K8S_VERSION (update K8S_VERSION in cluster.sh)"
  ensure_debs
  build_component kubernetes "$(k8s_ldflags)"
  build_component etcd
  build_component containerd
  build_component cni
  build_component coredns
  build_component local-path
  build_component helm
  # The stamped binaries are the cache that matters (a component whose key is unchanged
  # is not rebuilt); Go's build cache only speeds up rebuilding one whose key changed,
  # and holds about 6 GB. CI trims it, where the disk may be nearly full.
  if [[ "${DYNAMO_K8S_TRIM_GO_CACHE:-0}" == 1 ]]; then
    log "trimming Go's build cache ($(du -sh "$(go env GOCACHE)" 2>/dev/null | cut -f1))"
    go clean -cache || log "go clean -cache failed; going on"
  fi
  bash "$K8S/images.sh" >&2 || die "building the images failed"
}

# ---------------------------------------------------------------------------------
# Certificates and kubeconfigs

openssl_quiet() { openssl "$@" 2>/dev/null; }

# cert NAME CN [O] [SAN]: an ECDSA key and a certificate signed by the cluster CA.
cert() {
  local name="$1" cn="$2" org="${3:-}" san="${4:-}" subj ext
  subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
  ext="$RUN/pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl_quiet ecparam -name prime256v1 -genkey -noout -out "$RUN/pki/$name.key"
  openssl_quiet req -new -key "$RUN/pki/$name.key" -subj "$subj" -out "$RUN/pki/$name.csr"
  openssl_quiet x509 -req -in "$RUN/pki/$name.csr" -CA "$RUN/pki/ca.crt" -CAkey "$RUN/pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$ext" -out "$RUN/pki/$name.crt"
}

# kubeconfig NAME CERT: a kubeconfig for the API server at the node address.
kubeconfig() {
  cat >"$RUN/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dynamo-e2e
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $RUN/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $RUN/pki/$2.crt
    client-key: $RUN/pki/$2.key
contexts:
- name: dynamo-e2e
  context: {cluster: dynamo-e2e, user: $2}
current-context: dynamo-e2e
EOF
}

make_pki() {
  mkdir -p "$RUN/pki"
  openssl_quiet ecparam -name prime256v1 -genkey -noout -out "$RUN/pki/ca.key"
  openssl_quiet req -x509 -new -key "$RUN/pki/ca.key" -subj "/CN=dynamo-e2e-ca" -days 30 \
    -out "$RUN/pki/ca.crt"
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin dynamo-e2e-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert proxy system:kube-proxy
  cert kubelet "system:node:$NODE_NAME" system:nodes
  openssl_quiet ecparam -name prime256v1 -genkey -noout -out "$RUN/pki/sa.key"
  openssl_quiet ec -in "$RUN/pki/sa.key" -pubout -out "$RUN/pki/sa.pub"
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig proxy proxy
  kubeconfig kubelet kubelet
}

# ---------------------------------------------------------------------------------
# The network

make_network() {
  [[ -e "/run/netns/$NETNS" ]] && die "network namespace $NETNS exists: run '$0 down' first"
  log "network namespace $NETNS, veth $HOST_VETH <-> $NS_VETH"
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip link add "$HOST_VETH" type veth peer name "$NS_VETH" netns "$NETNS"
  ip addr add "$HOST_IP/30" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  ip -n "$NETNS" addr add "$NODE_IP/30" dev "$NS_VETH"
  ip -n "$NETNS" link set "$NS_VETH" up
  ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_VETH"
  ip route add "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_VETH"
  # Inside only: routing between the veth and the pod bridge, and bridged pod traffic
  # through kube-proxy's rules (a pod reaching a Service backed by a pod on the same
  # bridge). No default route: pods reach nothing outside these two links.
  in_ns sysctl -qw net.ipv4.ip_forward=1
  if [[ -e /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null; then
    in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    log "br_netfilter is not available: a pod reaching a Service backed by a pod on the same bridge may fail"
  fi
}

# ---------------------------------------------------------------------------------
# Components

write_configs() {
  mkdir -p "$RUN/cni/net.d" "$RUN/containerd" "$RUN/etc"
  cat >"$RUN/cni/net.d/10-dynamo-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dynamo-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "10.244.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  cat >"$RUN/containerd/config.toml" <<EOF
version = 3
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"

[grpc]
  address = "$RUN/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.cri.v1.runtime']
  # These machines run root without CAP_SYS_RESOURCE (checked: CapBnd lacks it), so a
  # negative oom_score_adj (the kubelet asks -998 for sandboxes) is refused and runc
  # fails with "can't get final child's PID from pipe". Clamp it at containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '$(command -v runc)'
      Root = '$RUN/runc'
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$BIN/cni']
    conf_dir = '$RUN/cni/net.d'
    use_internal_loopback = true
EOF
  # No host resolver inside: the namespace reaches no name server, so pods get only
  # the cluster DNS (CoreDNS answers for cluster.local and nothing else).
  : >"$RUN/etc/resolv.conf"
  cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $RUN/pki/ca.crt}
authorization: {mode: Webhook}
address: $NODE_IP
readOnlyPort: 0
# The hosts may use cgroup v1 (this one is hybrid): cgroupfs, and v1 allowed
# explicitly (kubelet 1.35 refuses v1 unless told).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: $RUN/etc/resolv.conf
podLogsDir: $RUN/pod-logs
# The images were imported, not pulled: never garbage-collect them. And no eviction
# for disk at all (as kind does): the node shares the host's disk with the build, and a
# CI machine can have under 1% of it free; the kubelet then taints the node
# (disk-pressure) and nothing schedules, though the suite needs only a few hundred MB.
# A full disk still fails loudly, as a write error. Leaving out a signal here means no
# threshold for it (mergeDefaultEvictionSettings is off).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%"}
serializeImagePulls: false
# How often the kubelet syncs each pod, and with it re-projects Secret volumes: 15 s
# instead of 1 min, so each step of the suite's TLS rotation reaches the pods in seconds
# (the nodes behave the same, only later, with the default).
syncFrequency: 15s
EOF
  cat >"$RUN/proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $RUN/proxy.kubeconfig}
# Leave the host's conntrack table size alone (a global sysctl).
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
EOF
}

api() { "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" "$@"; }

start_control_plane() {
  start etcd "$BIN/etcd" --name dynamo-e2e --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster dynamo-e2e=http://127.0.0.1:2380 --unsafe-no-fsync
  wait_for etcd "etcd serving" in_ns curl -fsS http://127.0.0.1:2379/health

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --client-ca-file="$RUN/pki/ca.crt" \
    --tls-cert-file="$RUN/pki/apiserver.crt" --tls-private-key-file="$RUN/pki/apiserver.key" \
    --kubelet-client-certificate="$RUN/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$RUN/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$RUN/pki/sa.pub" \
    --service-account-signing-key-file="$RUN/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --profiling=false
  wait_for kube-apiserver "the API server ready" api get --raw /readyz

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --service-account-private-key-file="$RUN/pki/sa.key" \
    --root-ca-file="$RUN/pki/ca.crt" \
    --cluster-signing-cert-file="$RUN/pki/ca.crt" --cluster-signing-key-file="$RUN/pki/ca.key" \
    --use-service-account-credentials=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false --bind-address=127.0.0.1
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$RUN/scheduler.kubeconfig" \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" \
    --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1
}

# Imports every archive images.sh made (and the node image's second tag).
import_images() {
  log "importing images into containerd"
  local image
  for image in "$CACHE"/images/*.tar; do
    "$BIN/ctr" --address "$RUN/containerd/containerd.sock" -n k8s.io images import \
      --base-name "$(cat "${image%.tar}.name")" "$image" >/dev/null 2>"$RUN/logs/import.log" || {
      cat "$RUN/logs/import.log" >&2
      die "containerd: importing $image failed"
    }
  done
  # A second tag of the node image, for a rolling upgrade to a new image reference.
  "$BIN/ctr" --address "$RUN/containerd/containerd.sock" -n k8s.io images tag --force \
    docker.io/library/dynamo-node:dev docker.io/library/dynamo-node:upgrade >/dev/null 2>&1
}

start_node() {
  mkdir -p "$RUN/kubelet" "$RUN/pod-logs" "$RUN/runc"
  start containerd env PATH="$BIN:$PATH" "$BIN/containerd" --config "$RUN/containerd/config.toml"
  wait_for containerd "containerd serving" \
    "$BIN/ctr" --address "$RUN/containerd/containerd.sock" version
  import_images
  start kubelet "$BIN/kubelet" --config="$RUN/kubelet.yaml" \
    --kubeconfig="$RUN/kubelet.kubeconfig" --root-dir="$RUN/kubelet" \
    --cert-dir="$RUN/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
  start kube-proxy "$BIN/kube-proxy" --config="$RUN/proxy.yaml"
  wait_for kubelet "node $NODE_NAME Ready" \
    api wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
}

# The add-ons, from their upstream manifests with this cluster's images and settings.
start_addons() {
  local k8s_module lpp_module
  k8s_module="$(cd "$K8S/components/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  lpp_module="$(cd "$K8S/components/local-path" && go list -m -f '{{.Dir}}' github.com/rancher/local-path-provisioner)"
  # CoreDNS: Kubernetes' own add-on manifest. No `forward`: the namespace reaches no
  # upstream resolver, and names outside the cluster are not the tests' business.
  sed -e "s/__DNS__DOMAIN__/cluster.local/g" -e "s/__DNS__SERVER__/$DNS_SERVICE_IP/g" \
    -e "s/__DNS__MEMORY__LIMIT__/170Mi/g" -e '/__MACHINE_GENERATED_WARNING__/d' \
    -e '/forward \. \/etc\/resolv.conf {/,/}/d' \
    "$k8s_module/cluster/addons/dns/coredns/coredns.yaml.base" | api apply -f - >&2
  # local-path: upstream's manifest, volumes under $RUN/local-path, the default class.
  sed -e "s|/opt/local-path-provisioner|$RUN/local-path|" \
    "$lpp_module/deploy/local-path-storage.yaml" | api apply -f - >&2
  api annotate storageclass local-path storageclass.kubernetes.io/is-default-class=true --overwrite >&2
  # Ready pods, not the Available condition: CoreDNS's manifest allows one unavailable
  # replica of its one, so it is "Available" before it answers anything.
  wait_for kubelet "CoreDNS ready" \
    api -n kube-system wait --for=jsonpath='{.status.readyReplicas}'=1 deployment/coredns --timeout=1s
  wait_for kubelet "local-path provisioner ready" \
    api -n local-path-storage wait --for=jsonpath='{.status.readyReplicas}'=1 \
    deployment/local-path-provisioner --timeout=1s
}

print_exports() {
  mkdir -p "$RUN/bin"
  ln -sf "$BIN/kubectl" "$RUN/bin/kubectl"
  ln -sf "$BIN/helm" "$RUN/bin/helm"
  printf 'export KUBECONFIG=%q\n' "$RUN/admin.kubeconfig"
  # shellcheck disable=SC2016 # $PATH is for the shell that evals this line
  printf 'export PATH=%q:"$PATH"\n' "$RUN/bin"
}

up() {
  [[ $EUID -eq 0 ]] || die "the cluster needs root (network namespaces, mounts, cgroups)"
  local started=$SECONDS
  build_all
  if [[ -e "$RUN/pids" ]]; then die "$RUN holds a cluster: run '$0 down' first"; fi
  mkdir -p "$RUN/logs" "$RUN/pids"
  # What existed before, so `down` removes only what this cluster made.
  ls /run/netns >"$RUN/netns.before" 2>/dev/null || : >"$RUN/netns.before"
  [[ -d /var/log/containers ]] && touch "$RUN/var-log-containers.before"
  make_network
  make_pki
  write_configs
  start_control_plane
  start_node
  start_addons
  log "cluster up in $((SECONDS - started))s (Kubernetes $K8S_VERSION, logs in $RUN/logs)"
  print_exports
}

# ---------------------------------------------------------------------------------
# Tear-down: every process, mount, namespace, interface and file `up` made.

kill_pidfile() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The pod cgroups the kubelet made (cgroupfs driver: <controller>/kubepods/...).
kill_pods() {
  local dir pid
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$dir" ]] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done \
      < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
}

remove_pod_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$dir" ]] || continue
    # Deepest first; a cgroup goes once its processes have exited.
    for _ in $(seq 1 20); do
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "$dir" ]] || break
      sleep 0.25
    done
  done
}

down() {
  [[ $EUID -eq 0 ]] || die "tearing the cluster down needs root"
  log "stopping the cluster in $RUN"
  local component
  for component in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [[ -f "$RUN/pids/$component.pid" ]] && kill_pidfile "$RUN/pids/$component.pid"
  done
  kill_pods
  # The runc shims and containerd itself.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $RUN/containerd/containerd.sock" 2>/dev/null || true
  [[ -f "$RUN/pids/containerd.pid" ]] && kill_pidfile "$RUN/pids/containerd.pid"
  remove_pod_cgroups
  # Mounts under the state directory (volumes, rootfs, shm), deepest first.
  local mount
  while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done < <(awk -v run="$RUN" 'index($2, run) == 1 { print $2 }' /proc/self/mounts | sort -r)
  # Pod network namespaces containerd made (named cni-*), then ours.
  if [[ -f "$RUN/netns.before" ]]; then
    local path ns
    for path in /run/netns/cni-*; do
      [[ -e "$path" ]] || continue
      ns="$(basename "$path")"
      grep -qx "$ns" "$RUN/netns.before" && continue
      umount "/run/netns/$ns" 2>/dev/null || true
      rm -f "/run/netns/$ns"
    done
  fi
  if [[ -e "/run/netns/$NETNS" ]]; then ip netns del "$NETNS"; fi
  ip link del "$HOST_VETH" 2>/dev/null || true
  # The kubelet links container logs into /var/log/containers whatever podLogsDir is.
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$RUN/*" -delete 2>/dev/null || true
    [[ -e "$RUN/var-log-containers.before" ]] || rmdir /var/log/containers 2>/dev/null || true
  fi
  rm -rf "$RUN"
  log "cluster removed"
}

status() {
  local component pid
  for component in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    pid="$(cat "$RUN/pids/$component.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      echo "$component: running (pid $pid, log $RUN/logs/$component.log)"
    else
      echo "$component: not running"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  build) build_all ;;
  images)
    # Rebuild the images (after a code change) and import them into the running cluster.
    bash "$K8S/images.sh" >&2 || die "building the images failed"
    import_images
    ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|build|images|status" >&2
    exit 2
    ;;
esac
