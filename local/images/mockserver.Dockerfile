# IMAGES=local: mockserver/mockserver:5.15.0 from the same software: MockServer's own jar
# (org.mock-server:mockserver-netty:5.15.0, jar-with-dependencies, the artifact the upstream image
# is built from) from Maven Central, checked against its SHA-256, on Debian's Java 17 runtime. The
# compose service's environment (MOCKSERVER_SERVER_PORT, MOCKSERVER_INITIALIZATION_JSON_PATH) and
# expectations file work unchanged. Move MOCKSERVER_VERSION together with docker-compose.yml's pin.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless ca-certificates curl \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /tmp/extra-ca/
ARG MOCKSERVER_VERSION=5.15.0
ARG MOCKSERVER_SHA256=bf5cf50cb5bf8ef99ea372e78b5ceddcc6eb6a051f3b5b1d3e62c7b812c92aeb
ARG MAVEN_REPOSITORY=https://repo1.maven.org/maven2
# The optional extra CA bundle joins the system bundle for the download only.
RUN cp /etc/ssl/certs/ca-certificates.crt /tmp/ca.crt \
    && if [ -s /tmp/extra-ca/ca-bundle.crt ]; then cat /tmp/extra-ca/ca-bundle.crt >>/tmp/ca.crt; fi \
    && jar="mockserver-netty-${MOCKSERVER_VERSION}-jar-with-dependencies.jar" \
    && curl -fsSL --cacert /tmp/ca.crt -o /mockserver-netty-jar-with-dependencies.jar \
        "${MAVEN_REPOSITORY}/org/mock-server/mockserver-netty/${MOCKSERVER_VERSION}/${jar}" \
    && echo "${MOCKSERVER_SHA256}  /mockserver-netty-jar-with-dependencies.jar" | sha256sum -c - \
    && rm -rf /tmp/extra-ca /tmp/ca.crt
# The upstream image's non-root user.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent mockserver
USER 10001:10001
EXPOSE 1080
ENTRYPOINT ["java", "-Dfile.encoding=UTF-8", "-cp", "/mockserver-netty-jar-with-dependencies.jar", "org.mockserver.cli.Main"]
CMD ["-serverPort", "1080"]
