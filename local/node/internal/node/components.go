package node

// The command lines and config files of the node's components: pure functions of Config and
// Layout (unit-tested in components_test.go). Flag choices follow what k3s passes to the same
// components; each deviation says why.

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// extraArgs turns k3s's "name=value" extra-arg entries into flags.
func extraArgs(entries []string) []string {
	args := make([]string, 0, len(entries))
	for _, entry := range entries {
		args = append(args, "--"+strings.TrimLeft(entry, "-"))
	}
	return args
}

func etcdArgs(c *Config, l Layout) []string {
	return append([]string{
		"--name=" + c.NodeName,
		"--data-dir=" + l.EtcdDir(),
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=" + c.NodeName + "=" + etcdPeerURL,
		// A node has one member and keeps its data on a volume; a restarted container with a new
		// name or IP must find the same member, so it is named after the node and on loopback.
		"--initial-cluster-state=new",
		"--client-cert-auth=true",
		"--trusted-ca-file=" + l.Etcd("server-ca.crt"),
		"--cert-file=" + l.Etcd("server-client.crt"),
		"--key-file=" + l.Etcd("server-client.key"),
		"--listen-metrics-urls=http://127.0.0.1:2381",
		"--log-level=warn",
		"--quota-backend-bytes=2147483648",
		"--auto-compaction-mode=periodic",
		"--auto-compaction-retention=1h",
	}, extraArgs(c.EtcdArgs)...)
}

func apiServerArgs(c *Config, l Layout) []string {
	return append([]string{
		"--advertise-address=" + c.NodeIP,
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(c.HTTPSPort),
		"--etcd-servers=" + etcdClientURL,
		"--etcd-cafile=" + l.Etcd("server-ca.crt"),
		"--etcd-certfile=" + l.Etcd("client.crt"),
		"--etcd-keyfile=" + l.Etcd("client.key"),
		"--storage-backend=etcd3",
		"--service-cluster-ip-range=" + c.ServiceCIDR,
		"--allow-privileged=true",
		// Anonymous requests only for kube-public/cluster-info (join.go: authenticationConfig);
		// agents join with bootstrap tokens (join.go).
		"--authentication-config=" + l.ServerEtc("authentication-config.yaml"),
		"--enable-bootstrap-token-auth=true",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--client-ca-file=" + l.TLS("client-ca.crt"),
		"--tls-cert-file=" + l.TLS("serving-kube-apiserver.crt"),
		"--tls-private-key-file=" + l.TLS("serving-kube-apiserver.key"),
		"--kubelet-certificate-authority=" + l.TLS("server-ca.crt"),
		"--kubelet-client-certificate=" + l.TLS("client-kube-apiserver.crt"),
		"--kubelet-client-key=" + l.TLS("client-kube-apiserver.key"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc." + c.ClusterDomain,
		"--api-audiences=https://kubernetes.default.svc." + c.ClusterDomain,
		"--service-account-key-file=" + l.TLS("service.key"),
		"--service-account-signing-key-file=" + l.TLS("service.key"),
		"--requestheader-client-ca-file=" + l.TLS("request-header-ca.crt"),
		"--requestheader-allowed-names=system:auth-proxy",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + l.TLS("client-auth-proxy.crt"),
		"--proxy-client-key-file=" + l.TLS("client-auth-proxy.key"),
		"--profiling=false",
		"--endpoint-reconciler-type=lease",
	}, extraArgs(c.APIServerArgs)...)
}

// clientFlags: the kubeconfig a controller talks to the API server with, and authenticates and
// authorizes its own clients (metrics, healthz) through.
func clientFlags(kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
	}
}

func controllerManagerArgs(c *Config, l Layout) []string {
	return append(append(clientFlags(l.Cred("controller.kubeconfig")),
		"--secure-port=10257",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+l.TLS("service.key"),
		"--root-ca-file="+l.TLS("server-ca.crt"),
		// The bootstrap token's signer (cluster-info's JWS) and cleaner, off by default (join.go).
		"--controllers=*,bootstrapsigner,tokencleaner",
		// One CA per signer, each the one its certificates are checked with: client certificates
		// by the API server's --client-ca-file, kubelet serving certificates by its
		// --kubelet-certificate-authority. (No legacy-unknown signer: nothing here asks for it.)
		"--cluster-signing-kube-apiserver-client-cert-file="+l.TLS("client-ca.crt"),
		"--cluster-signing-kube-apiserver-client-key-file="+l.TLS("client-ca.key"),
		"--cluster-signing-kubelet-client-cert-file="+l.TLS("client-ca.crt"),
		"--cluster-signing-kubelet-client-key-file="+l.TLS("client-ca.key"),
		"--cluster-signing-kubelet-serving-cert-file="+l.TLS("server-ca.crt"),
		"--cluster-signing-kubelet-serving-key-file="+l.TLS("server-ca.key"),
		"--service-cluster-ip-range="+c.ServiceCIDR,
		// Every node gets a /24 of the cluster network (spec.podCIDR): its CNI config and the other
		// nodes' routes to its pods follow it. The server's own node has the first (PodSubnet),
		// set before this starts (Node.ensurePodCIDR).
		"--allocate-node-cidrs=true",
		"--cluster-cidr="+c.ClusterCIDR,
		"--node-cidr-mask-size=24",
		"--configure-cloud-routes=false",
	), extraArgs(c.ControllerArgs)...)
}

func schedulerArgs(c *Config, l Layout) []string {
	args := append(clientFlags(l.Cred("scheduler.kubeconfig")), "--secure-port=10259")
	return append(args, extraArgs(c.SchedulerArgs)...)
}

func kubeletArgs(c *Config, l Layout) []string {
	args := []string{
		"--config=" + l.Agent("kubelet-config.yaml"),
		"--kubeconfig=" + l.Agent("kubelet.kubeconfig"),
		"--hostname-override=" + c.NodeName,
		"--node-ip=" + c.NodeIP,
		"--root-dir=" + kubeletRootDir,
	}
	return append(append(args, nodeLabelsArg(c)...), extraArgs(c.KubeletArgs)...)
}

// agentKubeletArgs: an agent's kubelet joins with the bootstrap kubeconfig (join.go) and keeps
// the kubeconfig it writes after its CSR at k3s's path.
func agentKubeletArgs(c *Config, l Layout) []string {
	args := []string{
		"--config=" + l.Agent("kubelet-config.yaml"),
		"--bootstrap-kubeconfig=" + l.Agent("bootstrap.kubeconfig"),
		"--kubeconfig=" + l.Agent("kubelet.kubeconfig"),
		"--cert-dir=" + l.KubeletCertDir(),
		"--hostname-override=" + c.NodeName,
		"--node-ip=" + c.NodeIP,
		"--root-dir=" + kubeletRootDir,
	}
	return append(append(args, nodeLabelsArg(c)...), extraArgs(c.KubeletArgs)...)
}

// nodeLabelsArg: --node-labels from --node-label, sorted (Config.Labels refused the labels a
// kubelet may not set on itself).
func nodeLabelsArg(c *Config) []string {
	labels, _ := c.Labels()
	if len(labels) == 0 {
		return nil
	}
	pairs := make([]string, 0, len(labels))
	for key, value := range labels {
		pairs = append(pairs, key+"="+value)
	}
	sort.Strings(pairs)
	return []string{"--node-labels=" + strings.Join(pairs, ",")}
}

// kubeletConfig is the KubeletConfiguration (v1beta1) of the server's node: certificates made by
// the node itself (credentials.go).
func kubeletConfig(c *Config, l Layout) string {
	return kubeletConfigWith(c, l.TLS("client-ca.crt"), fmt.Sprintf("tlsCertFile: %s\ntlsPrivateKeyFile: %s\n",
		l.Agent("serving-kubelet.crt"), l.Agent("serving-kubelet.key")))
}

// agentKubeletConfig: an agent's kubelet gets its client certificate by CSR and renews it
// (rotateCertificates), and its serving certificate by CSR too (serverTLSBootstrap: the server
// approves it, csr.go); it checks the API server's client certificate with the server's client CA
// (from airflow-k3s-agent-config).
func agentKubeletConfig(c *Config, l Layout) string {
	return kubeletConfigWith(c, l.Agent("client-ca.crt"), "rotateCertificates: true\nserverTLSBootstrap: true\n")
}

func kubeletConfigWith(c *Config, clientCA, tlsLines string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
clusterDNS:
- %s
clusterDomain: %s
containerRuntimeEndpoint: unix://%s
resolvConf: %s
%shealthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
failSwapOn: false
serializeImagePulls: false
# k3s's eviction thresholds: a developer's disk is often fuller than a server's.
evictionHard:
  imagefs.available: 5%%
  nodefs.available: 5%%
evictionMinimumReclaim:
  imagefs.available: 10%%
  nodefs.available: 10%%
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 80
%s`, clientCA, c.ClusterDNS, c.ClusterDomain, ContainerdSocket, c.ResolvConf, tlsLines, registerWithTaints(c))
}

// registerWithTaints: --node-taint as the kubelet config's registerWithTaints (the kubelet
// registers the node with them; the flag of the same name is deprecated).
func registerWithTaints(c *Config) string {
	taints, _ := c.Taints()
	if len(taints) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("registerWithTaints:\n")
	for _, t := range taints {
		fmt.Fprintf(&b, "- key: %q\n  value: %q\n  effect: %s\n", t.Key, t.Value, t.Effect)
	}
	return b.String()
}

func kubeProxyArgs(c *Config, l Layout) []string {
	return append([]string{"--config=" + l.Agent("kube-proxy-config.yaml")}, extraArgs(c.KubeProxyArgs)...)
}

// kubeProxyConfig: iptables mode like k3s, as kube-proxy's own user (the server's node).
// conntrack.maxPerCore 0 leaves the host's conntrack table size alone (the node shares the host's
// kernel; kind does the same).
func kubeProxyConfig(c *Config, l Layout) string {
	return kubeProxyConfigWith(c, l.Agent("kubeproxy.kubeconfig"))
}

// agentKubeProxyConfig: an agent's kube-proxy uses the node's own credential (the kubelet's
// kubeconfig; nodes are bound to system:node-proxier, join.go), as k3s agents do.
func agentKubeProxyConfig(c *Config, l Layout) string {
	return kubeProxyConfigWith(c, l.Agent("kubelet.kubeconfig"))
}

func kubeProxyConfigWith(c *Config, kubeconfig string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
clusterCIDR: %s
mode: iptables
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
`, kubeconfig, c.NodeName, c.ClusterCIDR)
}
