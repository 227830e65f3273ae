# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hub-bridge
# The image listens on 0.0.0.0, where the example's public demo token is refused: drop that agent.
RUN sed '/^\[agents\.demo\]$/,/^api_token = /d' config/hub-bridge.example.toml > /src/hub-bridge.toml

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hub-bridge
COPY --from=build /src/target/release/hub-bridge /usr/local/bin/hub-bridge
COPY --from=build /src/hub-bridge.toml /etc/hub-bridge/hub-bridge.toml
USER hub-bridge
# /healthz, /readyz, /metrics; listen on all interfaces inside the container.
ENV HUB_HTTP__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["hub-bridge", "--config", "/etc/hub-bridge/hub-bridge.toml"]
CMD ["run"]
