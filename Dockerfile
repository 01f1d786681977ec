# syntax=docker/dockerfile:1.7
# One multi-stage build, one target per image:
#   docker build --target node -t dynamo-node .
# The operator image gets its own target when the operator crate lands.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate; nothing else is installed.
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds, so a source
# change recompiles only the workspace crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/dynamo-node target/release/dynamoctl /out/

# Small, non-root runtime: glibc and CA certificates, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS node
COPY --from=build /out/dynamo-node /out/dynamoctl /usr/local/bin/
# Client API, internode/admin API, HTTP (metrics, probes).
EXPOSE 7000 7001 7002
ENV DYNAMO_LISTEN=0.0.0.0:7000 \
    DYNAMO_INTERNODE_LISTEN=0.0.0.0:7001 \
    DYNAMO_HTTP_LISTEN=0.0.0.0:7002 \
    DYNAMO_DATA_DIR=/var/lib/dynamo
VOLUME ["/var/lib/dynamo"]
USER nonroot:nonroot
# Set DYNAMO_NODE_ID and DYNAMO_ADVERTISE (the pod's stable DNS name:7001) per node;
# the operator does.
ENTRYPOINT ["/usr/local/bin/dynamo-node"]
