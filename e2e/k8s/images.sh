#!/usr/bin/env bash
# The e2e cluster's container images, built without a registry or a Docker engine:
# root filesystems assembled from the workspace's release binaries, the components'
# binaries (built by cluster.sh from their Go modules) and Debian's packages, turned
# into OCI image archives by umoci, for `ctr images import`.
#
#   dynamo-node:dev, dynamo-operator:dev  the runtime contract of the Dockerfile's `node`
#       and `operator` stages (images/*.contract: user 65532, entrypoint, environment,
#       ports, volume) on the glibc runtime distroless/cc-debian12 is made of (libc6,
#       libgcc-s1, libstdc++6, libssl3 and netbase from Debian 12, CA certificates,
#       /etc/passwd with nonroot 65532). The Dockerfile stays the production build;
#       e2e/tests/image_contract.rs fails when the two drift.
#   registry.k8s.io/pause:3.10.1          Kubernetes' pause.c, static (gcc)
#   registry.k8s.io/coredns/coredns       the CoreDNS binary, user 65532 as upstream's
#   rancher/local-path-provisioner, busybox (its helper pods' image, busybox-static)
#
# Output: $DYNAMO_K8S_CACHE/images/<image>.tar, <image>.name (the name the archive's
# tag is imported under) and <image>.oci (the OCI layout the archive holds). Run by
# `cluster.sh build|up|images`; needs root (file ownership in the layers).
set -euo pipefail

SCRIPT=images.sh
# shellcheck source=e2e/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT="$CACHE/images"
WORK="$CACHE/image-work"
# Where cargo puts the release binaries.
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
# The Debian 12 packages distroless/cc-debian12 installs that a binary can need.
BASE_DEBS=(libc6 libgcc-s1 libstdc++6 libssl3 netbase)


mkdir -p "$OUT" "$WORK"

# The glibc runtime root filesystem, from the packages' own files (dpkg-deb -x), kept
# while the package versions are the same.
base_rootfs() {
  local debs="$CACHE/debs" rootfs="$WORK/cc-debian12" key
  mkdir -p "$debs"
  key="$(for deb in "${BASE_DEBS[@]}"; do dpkg-query -W -f='${Package}=${Version}\n' "$deb" 2>/dev/null || echo "$deb"; done | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$rootfs.key" 2>/dev/null)" == "$key" && -d "$rootfs" ]]; then
    echo "$rootfs"
    return
  fi
  log "assembling the glibc runtime from Debian packages: ${BASE_DEBS[*]}"
  rm -rf "$rootfs" "${debs:?}"/*.deb
  local deb
  # apt's downloader runs as _apt: let it write there.
  chown _apt "$debs" 2>/dev/null || true
  local deb version
  for deb in "${BASE_DEBS[@]}"; do
    # The installed version when the archive still has it (the runtime the binaries
    # were linked against here), else the archive's candidate.
    version="$(dpkg-query -W -f='${Version}' "$deb" 2>/dev/null || true)"
    (cd "$debs" && { [[ -n "$version" ]] && apt-get download -qq "$deb=$version" 2>/dev/null; } ||
      apt-get download -qq "$deb") >&2 ||
      (apt-get update -qq >&2 && cd "$debs" && apt-get download -qq "$deb" >&2) ||
      die "apt-get download $deb failed"
  done
  mkdir -p "$rootfs"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
  rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"
  chown 65532:65532 "$rootfs/home/nonroot"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  fi
  # The users and groups of distroless's `nonroot` variant.
  cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
  echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
  echo "$key" >"$rootfs.key"
  echo "$rootfs"
}

# oci NAME TAG LAYER_DIR... -- UMOCI_CONFIG_ARGS...: an OCI archive with one layer per
# directory (each inserted at /), the config, and NAME:TAG as its import name.
oci() {
  local name="$1" tag="$2" file layout
  shift 2
  file="$(basename "$name")"
  # Kept beside the archive: e2e/tests/image_contract.rs reads the config from it.
  layout="$OUT/$file.oci"
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  while [[ $# -gt 0 && "$1" != -- ]]; do
    umoci insert --image "$layout:$tag" "$1" / >/dev/null
    shift
  done
  [[ "${1:-}" == -- ]] && shift
  umoci config --image "$layout:$tag" --os linux --architecture amd64 \
    --clear=config.cmd --clear=config.entrypoint --clear=config.env "$@"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$OUT/$file.tar" .
  echo "$name" >"$OUT/$file.name"
  log "image $name:$tag ($(du -h "$OUT/$file.tar" | cut -f1))"
}

# A dynamo image from its contract file: the glibc runtime, then the binaries.
dynamo_image() {
  local contract="$K8S/images/$1.contract" base="$2"
  local name="" user="" entrypoint="" config=() key value binaries
  binaries="$WORK/$1-binaries"
  rm -rf "$binaries"
  mkdir -p "$binaries"
  while read -r key value; do
    case "$key" in
      '' | '#'*) ;;
      name) name="$value" ;;
      base) ;; # the runtime base rootfs stands for it
      copy)
        local source dest
        read -r source dest <<<"$value"
        [[ -x "$TARGET/release/$source" ]] || die "$TARGET/release/$source is missing"
        install -D -m 0755 "$TARGET/release/$source" "$binaries$dest"
        ;;
      expose) config+=(--config.exposedports "$value/tcp") ;;
      env) config+=(--config.env "$value") ;;
      volume) config+=(--config.volume "$value") ;;
      user) user="$value" ;;
      entrypoint) entrypoint="$value" ;;
      *) die "$contract: unknown key '$key'" ;;
    esac
  done <"$contract"
  [[ -n "$name" && -n "$user" && -n "$entrypoint" ]] || die "$contract lacks name, user or entrypoint"
  oci "$name" dev "$base" "$binaries" -- \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.workingdir /home/nonroot \
    --config.user "$user" --config.entrypoint "$entrypoint" "${config[@]}"
  rm -rf "$binaries"
}

# A one-binary image: the file at PATH in an otherwise empty root filesystem.
static_image() {
  local name="$1" tag="$2" source="$3" path="$4"
  shift 4
  local root
  root="$WORK/$(basename "$name")-root"
  rm -rf "$root"
  install -D -m 0755 "$source" "$root$path"
  mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
  oci "$name" "$tag" "$root" -- "$@"
  rm -rf "$root"
}

pause_image() {
  local k8s_module
  k8s_module="$(cd "$K8S/components/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  gcc -Os -static -DVERSION=3.10.1 -o "$WORK/pause" "$k8s_module/build/pause/linux/pause.c"
  static_image registry.k8s.io/pause 3.10.1 "$WORK/pause" /pause \
    --config.entrypoint /pause --config.user 65535:65535
}

busybox_image() {
  local root="$WORK/busybox-root" applet
  rm -rf "$root"
  install -D -m 0755 /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
  oci docker.io/library/busybox latest "$root" -- \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd sh
  rm -rf "$root"
}

[[ $EUID -eq 0 ]] || die "building the images needs root (file ownership in the layers)"
command -v umoci >/dev/null || die "umoci is missing (apt-get install umoci)"

log "release binaries of the workspace (cargo build --release)"
(cd "$REPO" && cargo build --release --locked -p dynamo-node -p dynamoctl -p dynamo-operator \
  --bin dynamo-node --bin dynamoctl --bin dynamo-operator) >&2 ||
  die "cargo build --release failed"

base="$(base_rootfs)"
dynamo_image dynamo-node "$base"
dynamo_image dynamo-operator "$base"
pause_image
static_image registry.k8s.io/coredns/coredns v1.13.1 "$BIN/coredns" /coredns \
  --config.entrypoint /coredns --config.user 65532:65532
static_image docker.io/rancher/local-path-provisioner v0.0.30 "$BIN/local-path-provisioner" \
  /usr/bin/local-path-provisioner \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.entrypoint local-path-provisioner
busybox_image
