# IMAGES=local only: stands in for registry:2 with the same software, Debian's docker-registry
# (CNCF distribution 2.8.2), the same config file path, port 5000 and storage at /var/lib/registry.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
# wget: the healthcheck of docker-compose.yml. The server runs as its own unprivileged user.
# hadolint ignore=DL3008
RUN groupadd --system --gid 10002 registry \
    && useradd --system --uid 10002 --gid registry --no-create-home --home-dir /var/lib/registry registry \
    && apt-get update \
    && apt-get install -y --no-install-recommends docker-registry wget ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/registry \
    && chown registry:registry /var/lib/registry
COPY registry-config.yml /etc/docker/registry/config.yml
USER 10002:10002
VOLUME ["/var/lib/registry"]
EXPOSE 5000
ENTRYPOINT ["/usr/bin/docker-registry", "serve"]
CMD ["/etc/docker/registry/config.yml"]
