# Build: a full Rust toolchain; run: a slim Debian with only the binary and routes.toml.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# jemalloc (the relay's allocator) builds its C sources with make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
# jemalloc's settings are build-time environment (.cargo/config.toml).
COPY .cargo ./.cargo
COPY src ./src
# Declared bench targets must exist for cargo to read the manifest; they are not built.
COPY benches ./benches
RUN cargo build --release --locked && strip target/release/playrelay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/playrelay --create-home playrelay
COPY --from=build /src/target/release/playrelay /usr/local/bin/playrelay
COPY routes.toml /etc/playrelay/routes.toml
USER 10001:10001
WORKDIR /var/lib/playrelay
ENV PLAYRELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["playrelay"]
CMD ["run", "--config", "/etc/playrelay/routes.toml"]
