#!/bin/sh
# Builds the binaries and image tarballs of the local node image, inside the builder image
# (local/node/builder.Dockerfile), into OUT (default /out). Called by the task library
# (airflow_k3s/images.py) as:
#   docker run --rm -v airflow-k3s-go-cache:/cache -v local/node:/src:ro -v local/node/_build:/out \
#     airflow-k3s/go:<version>-local /src/build.sh /out
# The Go module and build caches live in the cache volume, so a rebuild compiles only what changed.
#
# What it builds (versions: local/node/versions.env, the one place they are set):
#   k3s                      this module: upstream Kubernetes $KUBERNETES_VERSION components,
#                            multicall (main.go), with the version ldflags of Kubernetes' build
#   containerd, ctr, shim    github.com/containerd/containerd/v2 $CONTAINERD_VERSION
#   coredns                  github.com/coredns/coredns $COREDNS_VERSION
#   images/pause.tar         Debian's catatonit in pause mode, the pod sandbox image
#   images/coredns.tar       the coredns binary as an image
set -eu

OUT="${1:-/out}"
SRC="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$SRC/versions.env"
export GOMODCACHE="${GOMODCACHE:-/cache/mod}" GOCACHE="${GOCACHE:-/cache/build}"
export GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local
say() { printf 'node build: %s\n' "$*" >&2; }
timed() {
    _what="$1"
    shift
    _start="$(date +%s)"
    "$@"
    say "$_what: $(($(date +%s) - _start)) s"
}

# The module must be built from a writable copy: go writes nothing into the source, but a
# read-only bind mount of the checkout is what we are given.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$SRC/." "$work/"
rm -rf "$work/_build"
cd "$work"
mkdir -p "$OUT/images"

say "go $(go env GOVERSION), Kubernetes $KUBERNETES_VERSION, containerd $CONTAINERD_VERSION, CoreDNS $COREDNS_VERSION"
timed "go mod download" go mod download
# The node's logic (internal/node, tools) imports no Kubernetes package: vet and tests are quick.
timed "go vet and unit tests of the node" sh -c 'go vet ./internal/... ./tools/... && go test -count=1 ./internal/...'

major="${KUBERNETES_VERSION#v}"
minor="${major#*.}"
major="${major%%.*}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
pkg=airflow-k3s/node/internal/node
ldflags="$ldflags -X $pkg.NodeVersion=$NODE_VERSION -X $pkg.ContainerdVersion=$CONTAINERD_VERSION"
ldflags="$ldflags -X $pkg.CorednsVersion=$COREDNS_VERSION"
ldflags="$ldflags -X $pkg.defaultPauseImage=docker.io/$PAUSE_IMAGE -X $pkg.defaultCoreDNSImage=docker.io/$COREDNS_IMAGE"
# Kubernetes' own build tags for a node without cloud providers (k3s uses the same set).
timed "k3s (kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, kubectl, etcd)" \
    env CGO_ENABLED=1 go build -tags "providerless netcgo osusergo" -ldflags "$ldflags" -o "$OUT/k3s" .

ctrd=github.com/containerd/containerd/v2/cmd
ctrd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
timed "containerd and ctr" env CGO_ENABLED=1 GOBIN="$OUT" go install -tags "urfave_cli_no_docs no_btrfs" \
    -ldflags "$ctrd_ldflags" "$ctrd/containerd@$CONTAINERD_VERSION" "$ctrd/ctr@$CONTAINERD_VERSION"
# The shim is static and leaves gRPC out, as containerd's Makefile builds it.
timed "containerd-shim-runc-v2" env CGO_ENABLED=0 GOBIN="$OUT" go install -tags "urfave_cli_no_docs no_grpc" \
    -ldflags "$ctrd_ldflags" "$ctrd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
timed "coredns" env CGO_ENABLED=0 GOBIN="$OUT" go install -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION"

# shellcheck disable=SC2016 # the script's $1..$3 are expanded by the inner sh
timed "image tarballs" sh -c '
    go run ./tools/imagetar -o "$1/images/pause.tar" -tag "$2" -entrypoint /pause,-P -user 65535:65535 \
        -add /usr/bin/catatonit=/pause
    go run ./tools/imagetar -o "$1/images/coredns.tar" -tag "$3" -entrypoint /coredns -user 65532:65532 \
        -add "$1/coredns=/coredns"
' images "$OUT" "$PAUSE_IMAGE" "$COREDNS_IMAGE"
rm -f "$OUT/coredns"
ls -l "$OUT" "$OUT/images" >&2
