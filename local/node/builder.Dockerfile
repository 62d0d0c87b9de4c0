# The Go builder of the local node image (IMAGES=local): Debian, a C toolchain (cgo: etcd's and
# the kubelet's user lookups, containerd) and the Go toolchain from the Go module proxy, where Go
# publishes its releases as the module golang.org/toolchain. local/node/build.sh runs in it.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# catatonit: the pause process that build.sh packs into the pod sandbox image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl unzip gcc libc6-dev catatonit \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
# Optional extra CA bundle (TLS-inspecting networks), as for pip: see extra-ca/README.md. Added
# to the system bundle, which curl and Go both read. (Build context: local/node/extra-ca.)
COPY . /tmp/extra-ca/
RUN if [ -s /tmp/extra-ca/ca-bundle.crt ]; then cat /tmp/extra-ca/ca-bundle.crt >>/etc/ssl/certs/ca-certificates.crt; fi \
    && rm -rf /tmp/extra-ca
ARG GO_VERSION=1.26.8
ARG GOPROXY=https://proxy.golang.org
RUN curl -fsSL -o /tmp/go.zip "${GOPROXY%%,*}/golang.org/toolchain/@v/v0.0.1-go${GO_VERSION}.linux-amd64.zip" \
    && unzip -q /tmp/go.zip -d /tmp/go \
    && mv "/tmp/go/golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-amd64" /usr/local/go \
    && rm -rf /tmp/go /tmp/go.zip \
    && /usr/local/go/bin/go version
ENV PATH=/usr/local/go/bin:$PATH \
    GOPROXY=${GOPROXY} \
    GOTOOLCHAIN=local \
    GOMODCACHE=/cache/mod \
    GOCACHE=/cache/build
WORKDIR /src
