package node

// The command lines and config files of the node's components: pure functions of Config and
// Layout (unit-tested in components_test.go). Flag choices follow what k3s passes to the same
// components; each deviation says why.

import (
	"fmt"
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
		"--anonymous-auth=false",
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
		"--cluster-signing-cert-file="+l.TLS("client-ca.crt"),
		"--cluster-signing-key-file="+l.TLS("client-ca.key"),
		"--cluster-cidr="+c.ClusterCIDR,
		"--service-cluster-ip-range="+c.ServiceCIDR,
		// The pod subnet is fixed (one node, PodSubnet) and written into the CNI config.
		"--allocate-node-cidrs=false",
		"--configure-cloud-routes=false",
	), extraArgs(c.ControllerArgs)...)
}

func schedulerArgs(c *Config, l Layout) []string {
	args := append(clientFlags(l.Cred("scheduler.kubeconfig")), "--secure-port=10259")
	return append(args, extraArgs(c.SchedulerArgs)...)
}

func kubeletArgs(c *Config, l Layout) []string {
	return append([]string{
		"--config=" + l.Agent("kubelet-config.yaml"),
		"--kubeconfig=" + l.Agent("kubelet.kubeconfig"),
		"--hostname-override=" + c.NodeName,
		"--node-ip=" + c.NodeIP,
		"--root-dir=" + kubeletRootDir,
	}, extraArgs(c.KubeletArgs)...)
}

// kubeletConfig is the KubeletConfiguration (v1beta1) of the node.
func kubeletConfig(c *Config, l Layout) string {
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
tlsCertFile: %s
tlsPrivateKeyFile: %s
healthzBindAddress: 127.0.0.1
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
`, l.TLS("client-ca.crt"), c.ClusterDNS, c.ClusterDomain, ContainerdSocket, c.ResolvConf,
		l.Agent("serving-kubelet.crt"), l.Agent("serving-kubelet.key"))
}

func kubeProxyArgs(c *Config, l Layout) []string {
	return append([]string{"--config=" + l.Agent("kube-proxy-config.yaml")}, extraArgs(c.KubeProxyArgs)...)
}

// kubeProxyConfig: iptables mode like k3s. conntrack.maxPerCore 0 leaves the host's conntrack
// table size alone (the node shares the host's kernel; kind does the same).
func kubeProxyConfig(c *Config, l Layout) string {
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
`, l.Agent("kubeproxy.kubeconfig"), c.NodeName, c.ClusterCIDR)
}
