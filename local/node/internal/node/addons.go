package node

// Manifests the node writes into its own manifests folder at every start, as k3s does with its
// packaged components: RBAC the node's components need, and CoreDNS (unless --disable=coredns).

import (
	"fmt"
	"strings"
)

// defaultCoreDNSImage is imported at start from the image's own tarball (local/node/build.sh
// sets this name from versions.env).
var defaultCoreDNSImage = "docker.io/airflow-k3s/coredns:v1.14.7-local"

// nodeRBAC lets the API server reach the kubelet API (logs, exec, port-forward): its kubelet
// client certificate's user gets the built-in role for exactly that.
const nodeRBAC = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: airflow-k3s-node:kube-apiserver-kubelet-api
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:kube-apiserver
`

// corednsManifest: CoreDNS answering for the cluster domain and forwarding the rest to the
// kubelet's resolv.conf (the entrypoint's DNS bridge to Docker's resolver, so compose service
// names resolve in pods). NodeHosts maps the node's name to its IP, as k3s does.
func corednsManifest(c *Config, image string) string {
	return strings.NewReplacer(
		"@DOMAIN@", c.ClusterDomain,
		"@DNS_IP@", c.ClusterDNS,
		"@IMAGE@", image,
		"@NODE_HOSTS@", fmt.Sprintf("%s %s", c.NodeIP, c.NodeName),
	).Replace(corednsTemplate)
}

const corednsTemplate = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
data:
  Corefile: |
    .:53 {
        errors
        health
        ready
        kubernetes @DOMAIN@ in-addr.arpa ip6.arpa {
          pods insecure
          fallthrough in-addr.arpa ip6.arpa
        }
        hosts /etc/coredns/NodeHosts {
          ttl 60
          reload 15s
          fallthrough
        }
        prometheus :9153
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
        loadbalance
    }
  NodeHosts: |
    @NODE_HOSTS@
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    app.kubernetes.io/managed-by: airflow-k3s-node
spec:
  replicas: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      tolerations:
      - key: CriticalAddonsOnly
        operator: Exists
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      containers:
      - name: coredns
        image: @IMAGE@
        imagePullPolicy: IfNotPresent
        args: ["-conf", "/etc/coredns/Corefile"]
        resources:
          requests: {cpu: 50m, memory: 70Mi}
          limits: {memory: 170Mi}
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities:
            add: [NET_BIND_SERVICE]
            drop: [ALL]
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 60
          periodSeconds: 10
          failureThreshold: 3
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
          failureThreshold: 3
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items:
          - {key: Corefile, path: Corefile}
          - {key: NodeHosts, path: NodeHosts}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/cluster-service: "true"
    kubernetes.io/name: CoreDNS
    app.kubernetes.io/managed-by: airflow-k3s-node
spec:
  selector:
    k8s-app: kube-dns
  clusterIP: @DNS_IP@
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`
