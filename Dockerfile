# AIOKA Webhooks: one image for every service; the command chooses which one runs.
#
#   docker build -t aioka-webhooks:latest .
#   docker run --rm aioka-webhooks:latest                       # aioka-gateway (the default)
#   docker run --rm aioka-webhooks:latest aioka-fanout
#   docker run --rm aioka-webhooks:latest aioka-delivery
#   docker run --rm aioka-webhooks:latest aioka migrate         # admin CLI
#
# Settings come from AIOKA__SECTION__KEY environment variables (defaults are compiled in from
# config/default.toml). AIOKA__SECURITY__SECRET_KEY has no default and must be supplied.
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# target/ and the cargo registry live in cache mounts (not in any layer), so the binaries are
# copied out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin aioka-gateway --bin aioka-fanout --bin aioka-delivery --bin aioka \
 && mkdir -p /out \
 && cp target/release/aioka-gateway target/release/aioka-fanout \
       target/release/aioka-delivery target/release/aioka /out/

FROM ${RUNTIME_IMAGE}
# ca-certificates: delivery trusts the system roots (rustls-native-certs) for HTTPS targets.
# curl: for container health checks against the admin ports (docker-compose.yml).
# /ca: where docker-compose.yml's demo CA volume is mounted; a new named volume copies the
# ownership of the directory it is mounted on, so the unprivileged user can write the CA there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 aioka \
 && useradd --system --uid 10001 --gid aioka --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin aioka \
 && install -d -o 10001 -g 10001 -m 0755 /ca
COPY --from=builder /out/ /usr/local/bin/
# Inside a container the loopback-only defaults are useless: listen on every interface.
ENV AIOKA__GATEWAY__LISTEN=0.0.0.0:8080 \
    AIOKA__GATEWAY__ADMIN_LISTEN=0.0.0.0:9090 \
    AIOKA__FANOUT__HEALTH_LISTEN=0.0.0.0:9091 \
    AIOKA__DELIVERY__HEALTH_LISTEN=0.0.0.0:9092
# 8080: gateway API only. Admin ports (/healthz, /readyz, /metrics): 9090 gateway,
# 9091 fanout, 9092 delivery.
EXPOSE 8080 9090 9091 9092
USER 10001:10001
ENTRYPOINT []
CMD ["aioka-gateway"]
