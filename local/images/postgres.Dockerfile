# IMAGES=local only: stands in for postgres:15 with Debian's postgresql-15 and the same contract:
# POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, data in /var/lib/postgresql/data (initdb on first
# start only), listen on all addresses, scram-sha-256 for network clients, pg_isready on PATH.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The official image's postgres user (uid/gid 999), so volumes are owned alike. Debian's package
# must not create its own "main" cluster: the entrypoint runs initdb into the volume instead.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --gid postgres --uid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data \
    && chmod 3777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER 999:999
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# Fast shutdown (like the official image): clients are disconnected, data is flushed cleanly.
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
