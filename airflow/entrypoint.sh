#!/usr/bin/env bash
# Entrypoint of the Airflow and worker images.
# - In the Airflow services that talk to the cluster (AIRFLOW_K3S_KUBECONFIG_SRC set): wait for the
#   kubeconfig kube-credentials writes (this service's own ServiceAccount token, in the executor's
#   namespace) and copy it for Airflow (server https://k3s:6443, TLS verification kept).
# - With AIRFLOW_K3S_ADMIN_PASSWORD set: write the simple auth manager's passwords file.
# - Then run the command: `python ...`, `bash ...` etc. as given (worker pods get
#   `python -m airflow.sdk.execution_time.execute_workload ...`), anything else as `airflow <args>`.
set -euo pipefail

if [[ -n "${AIRFLOW_K3S_KUBECONFIG_SRC:-}" ]]; then
  python -m airflow_k3s.container kubeconfig \
    --src "${AIRFLOW_K3S_KUBECONFIG_SRC}" \
    --dst "${AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE:-/opt/airflow/kube/config}" \
    --server "${AIRFLOW_K3S_KUBECONFIG_SERVER:-https://k3s:6443}" \
    --namespace "${AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE:-default}" \
    --timeout "${AIRFLOW_K3S_KUBECONFIG_TIMEOUT:-600}"
fi
if [[ -n "${AIRFLOW_K3S_ADMIN_PASSWORD:-}" ]]; then
  python -m airflow_k3s.container passwords-file \
    --path "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-/opt/airflow/auth/passwords.json}"
fi

case "${1:-}" in
  python | python3 | bash | sh | airflow | kubectl | pip) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
