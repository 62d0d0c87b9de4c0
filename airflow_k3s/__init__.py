"""airflow-k3s: Airflow 3 with the KubernetesExecutor on k3s, in one docker-compose.yml.

The task library behind tasks.py. Modules, in the order a request goes through them:

- settings: configuration (environment, .env, defaults read from docker-compose.yml)
- exits: exit codes and the error every module raises for a user's mistake
- rendering: pure renderers and parsers (.env, worker Secret, kubeconfig)
- compose: the Docker and compose boundary, the only module that runs docker
- images: building, pulling and pushing images; the local image source (IMAGES=local)
- stack: the stack's life cycle (up, down, clean, status)
- cluster: the Kubernetes side (kubeconfig copies, kubectl, pods and their diagnostics)
- airflow_api: the Airflow REST API client
- runs: triggering DAG runs, following them, reporting them
- doctor: checks of the machine, and one policy that judges them
- container: what runs inside the Airflow containers (imports nothing of the above but rendering)
"""
