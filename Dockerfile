# syntax=docker/dockerfile:1.7
# One multi-stage build, one target per image:
#   docker build --target node     -t dynamo-node .
#   docker build --target operator -t dynamo-operator .
#
# Dependencies are compiled in a layer of their own (cargo-chef), keyed only on the
# manifests and Cargo.lock: a source change rebuilds the workspace crates, not the
# dependency tree. Every crate comes from Cargo.lock (`--locked`), cargo-chef itself at a
# pinned version; protoc comes from the protoc-bin-vendored crate.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The dependency recipe: the workspace's manifests and lock file, sources stubbed out.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS deps
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json

# Each image builds only its own package, so one target never waits on the other.
FROM deps AS build-node
COPY . .
RUN cargo build --release --locked -p dynamo-node -p dynamoctl --bin dynamo-node --bin dynamoctl \
 && mkdir -p /out \
 && cp target/release/dynamo-node target/release/dynamoctl /out/

FROM deps AS build-operator
COPY . .
RUN cargo build --release --locked -p dynamo-operator --bin dynamo-operator \
 && mkdir -p /out \
 && cp target/release/dynamo-operator /out/

# Small, non-root runtimes: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build-operator /out/dynamo-operator /usr/local/bin/dynamo-operator
# /metrics, /healthz, /readyz (--http-listen, 0.0.0.0:8080 by default).
EXPOSE 8080
# Numeric (distroless `nonroot`), so the kubelet can check runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dynamo-operator"]

# The node image is the last stage, so a plain `docker build .` still builds it.
FROM gcr.io/distroless/cc-debian12:nonroot AS node
COPY --from=build-node /out/dynamo-node /out/dynamoctl /usr/local/bin/
# Client API, internode/admin API, HTTP (metrics, probes).
EXPOSE 7000 7001 7002
ENV DYNAMO_LISTEN=0.0.0.0:7000 \
    DYNAMO_INTERNODE_LISTEN=0.0.0.0:7001 \
    DYNAMO_HTTP_LISTEN=0.0.0.0:7002 \
    DYNAMO_DATA_DIR=/var/lib/dynamo
VOLUME ["/var/lib/dynamo"]
# Numeric (distroless `nonroot`), so the kubelet can check runAsNonRoot.
USER 65532:65532
# Set DYNAMO_NODE_ID and DYNAMO_ADVERTISE (the pod's stable DNS name:7001) per node, and
# DYNAMO_INTERNODE_TOKEN_FILE (the cluster secret; a node listening on 0.0.0.0 refuses to
# start without it or mutual TLS); the operator does.
ENTRYPOINT ["/usr/local/bin/dynamo-node"]
