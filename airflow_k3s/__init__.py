"""airflow-k3s: Airflow 3 with the KubernetesExecutor on k3s, in one docker-compose.yml.

The task library behind tasks.py. Modules, in the order a request goes through them:

- settings: configuration (environment, .env, defaults read from docker-compose.yml)
- exits: exit codes and the error every module raises for a user's mistake
- shell: the one runner of external commands (verbose echo, one-line failures, polling)
- boundary: the Stack a task makes once: settings, Docker and compose, kubectl, the API, S3
- docker: Docker and the stack's compose project (services, health, logs, exec, images)
- cluster: kubectl, the kubeconfig copies, pods and their diagnostics
- airflow_api: the Airflow REST API client
- generated: what the task library generates and parses (.env, worker Secret, kubeconfigs)
- userfiles: the user's DAGs folder, requirements, pod template and worker base, checked
- images: building, pulling and pushing images; the local image source (IMAGES=local)
- lifecycle: the stack's life cycle (secrets, up, down, clean, status, kubeconfig)
- airflow_objects: connections, variables and pools from airflow/settings.yaml
- dag_checks: DAG files imported in the worker image, a task's pod, a task run once as a pod
- runs: triggering DAG runs, following them, reporting them
- doctor: checks of the machine, and one policy that judges them
- container: what runs inside the Airflow containers (imports only shell and generated)
"""
