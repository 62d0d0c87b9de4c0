#!/bin/sh
# One shot of the kube-credentials service (docker-compose.yml): a kubeconfig for each Airflow
# service that talks to the cluster, holding its own ServiceAccount's token and nothing else.
#
# k3s applies the accounts, their Roles and their long-lived token Secrets from
# .generated/k3s/airflow-identities.yaml (airflow_k3s/identities.py); the token controller fills
# each Secret. This script waits for each token, writes <service>/kubeconfig.yaml into the volume
# that only that service mounts (owner 50000:0, the Airflow user; mode 400), and exits. Only it and
# the host read k3s's admin kubeconfig. Runs in the k3s image (kubectl, POSIX sh); idempotent.
#
# Environment (defaults in brackets):
#   AIRFLOW_K3S_NAMESPACE       the executor's namespace, where the accounts live [default]
#   AIRFLOW_K3S_ADMIN_KUBECONFIG  k3s's kubeconfig [/output/kubeconfig.yaml]
#   AIRFLOW_K3S_CREDENTIALS_DIR   one folder per service under it [/credentials]
#   AIRFLOW_K3S_SERVER          the API server as the Airflow containers reach it [https://k3s:6443]
#   AIRFLOW_K3S_TIMEOUT         seconds to wait for the kubeconfig and each token [300]
set -eu

PROG="airflow-k3s credentials"
NAMESPACE="${AIRFLOW_K3S_NAMESPACE:-default}"
ADMIN="${AIRFLOW_K3S_ADMIN_KUBECONFIG:-/output/kubeconfig.yaml}"
OUT="${AIRFLOW_K3S_CREDENTIALS_DIR:-/credentials}"
SERVER="${AIRFLOW_K3S_SERVER:-https://k3s:6443}"
TIMEOUT="${AIRFLOW_K3S_TIMEOUT:-300}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "$PROG" "$*" >&2
    exit 1
}

# Waits until "$@" prints something; prints that.
wait_for() {
    what="$1"
    shift
    waited=0
    while :; do
        if value="$("$@" 2>/dev/null)" && [ -n "$value" ]; then
            printf '%s' "$value"
            return 0
        fi
        [ "$waited" -lt "$TIMEOUT" ] || die "no $what after ${TIMEOUT} s (see the k3s service's log)"
        sleep 2
        waited=$((waited + 2))
    done
}

secret_field() { # secret, go-template of its data
    kubectl --kubeconfig "$ADMIN" --server "$SERVER" -n "$NAMESPACE" get secret "$1" \
        -o "go-template=$2"
}

wait_for "k3s's kubeconfig ($ADMIN)" cat "$ADMIN" >/dev/null
for service in airflow-scheduler airflow-apiserver airflow-triggerer; do
    secret="$service-token"
    token="$(wait_for "token in Secret $NAMESPACE/$secret" \
        secret_field "$secret" '{{if .data.token}}{{.data.token | base64decode}}{{end}}')"
    ca="$(secret_field "$secret" '{{index .data "ca.crt"}}')"
    [ -n "$ca" ] || die "Secret $NAMESPACE/$secret has no ca.crt"
    dir="$OUT/$service"
    [ -d "$dir" ] || die "$dir is not mounted"
    tmp="$dir/.kubeconfig.yaml.tmp"
    rm -f "$tmp" # a leftover is the Airflow user's, and this root may not write others' files
    (
        umask 077
        cat >"$tmp" <<EOF
# Written by kube-credentials (k3s/credentials.sh): $service's ServiceAccount token. Private.
apiVersion: v1
kind: Config
clusters:
- name: airflow-k3s
  cluster:
    server: $SERVER
    certificate-authority-data: $ca
users:
- name: $service
  user:
    token: $token
contexts:
- name: $service
  context:
    cluster: airflow-k3s
    user: $service
    namespace: $NAMESPACE
current-context: $service
EOF
    )
    chmod 400 "$tmp"
    chown 50000:0 "$tmp"
    mv -f "$tmp" "$dir/kubeconfig.yaml"
    log "$dir/kubeconfig.yaml: system:serviceaccount:$NAMESPACE:$service"
done
