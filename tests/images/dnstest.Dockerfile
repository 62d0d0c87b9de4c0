# Test image for tests/integration/test_dns_bridge.py: stands in for the k3s container's network
# side (k3s itself cannot run here). Both iptables backends (the iptables package ships
# iptables-legacy* and iptables-nft*), iproute2 for the network namespace that plays a pod, and
# dig to query DNS over udp and tcp. k3s/entrypoint.sh is mounted at run time, not copied in.
ARG DEBIAN_IMAGE=airflow-k3s/debian:bookworm-local
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iptables iproute2 dnsutils \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["sleep", "infinity"]
