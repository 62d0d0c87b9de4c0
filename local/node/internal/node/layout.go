package node

// Where the node keeps its files (k3s's layout where k3s has one), and the kubeconfigs.

import (
	"encoding/base64"
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

const (
	ContainerdSocket = "/run/k3s/containerd/containerd.sock"
	kubeletRootDir   = "/var/lib/kubelet"
	cniBinDir        = "/usr/lib/cni"
	builtinImagesDir = "/usr/share/airflow-k3s/images"
	// etcd serves its clients (the API server, the node's health check) over TLS and asks each
	// for a certificate of its own CA, as k3s's etcd does; its one member's peer URL stays on
	// loopback.
	etcdClientURL = "https://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
)

// Layout names every file and folder of one node.
type Layout struct{ DataDir string }

func (l Layout) path(parts ...string) string {
	return filepath.Join(append([]string{l.DataDir}, parts...)...)
}

func (l Layout) TLS(name string) string       { return l.path("server", "tls", name) }
func (l Layout) Cred(name string) string      { return l.path("server", "cred", name) }
func (l Layout) Agent(name string) string     { return l.path("agent", name) }
func (l Layout) Manifests() string            { return l.path("server", "manifests") }
func (l Layout) Etcd(name string) string      { return l.path("server", "tls", "etcd", name) }
func (l Layout) EtcdDir() string              { return l.path("server", "db", "etcd") }
func (l Layout) ContainerdRoot() string       { return l.path("agent", "containerd") }
func (l Layout) ContainerdConfig() string     { return l.path("agent", "etc", "containerd", "config.toml") }
func (l Layout) ContainerdHostsDir() string   { return l.path("agent", "etc", "containerd", "certs.d") }
func (l Layout) CNIConfDir() string           { return l.path("agent", "etc", "cni", "net.d") }
func (l Layout) ImagesDir() string            { return l.path("agent", "images") }
func (l Layout) Logs(name string) string      { return l.path("agent", "logs", name) }
func (l Layout) ServerEtc(name string) string { return l.path("server", "etc", name) }

// KubeletCertDir: an agent's kubelet keeps its certificates here (got by CSR, rotated by itself).
func (l Layout) KubeletCertDir() string { return l.path("agent", "pki") }

// Kubeconfig is one user's kubeconfig for the API server at server.
type Kubeconfig struct {
	Server   string
	CAPEM    []byte
	CertFile string
	KeyFile  string
	CertPEM  []byte // inline instead of CertFile/KeyFile when set
	KeyPEM   []byte
	Token    string // a bearer token instead of a certificate when set
}

// Render writes the kubeconfig YAML (one cluster, user and context, all named "default" as in
// k3s's k3s.yaml).
func (k Kubeconfig) Render() []byte {
	var user string
	if k.Token != "" {
		user = fmt.Sprintf("    token: %s\n", k.Token)
	} else if k.CertPEM != nil {
		user = fmt.Sprintf("    client-certificate-data: %s\n    client-key-data: %s\n",
			base64.StdEncoding.EncodeToString(k.CertPEM), base64.StdEncoding.EncodeToString(k.KeyPEM))
	} else {
		user = fmt.Sprintf("    client-certificate: %s\n    client-key: %s\n", k.CertFile, k.KeyFile)
	}
	return []byte(strings.Join([]string{
		strings.TrimSuffix(string(k.RenderCluster()), "\nusers: []\n"),
		"contexts:",
		"- name: default",
		"  context:",
		"    cluster: default",
		"    user: default",
		"current-context: default",
		"preferences: {}",
		"users:",
		"- name: default",
		"  user:",
	}, "\n") + "\n" + user)
}

// RenderCluster: the kubeconfig of the cluster alone, no user (kube-public/cluster-info's).
func (k Kubeconfig) RenderCluster() []byte {
	return []byte(strings.Join([]string{
		"apiVersion: v1",
		"kind: Config",
		"clusters:",
		"- name: default",
		"  cluster:",
		"    certificate-authority-data: " + base64.StdEncoding.EncodeToString(k.CAPEM),
		"    server: " + k.Server,
		"users: []",
	}, "\n") + "\n")
}

// Users of the cluster and their certificates: file base name under server/tls or agent, CN, groups.
type clientCert struct {
	base, commonName string
	orgs             []string
}

func clientCerts(l Layout, nodeName string) []clientCert {
	return []clientCert{
		{l.TLS("client-admin"), "system:admin", []string{"system:masters"}},
		{l.TLS("client-controller"), "system:kube-controller-manager", nil},
		{l.TLS("client-scheduler"), "system:kube-scheduler", nil},
		{l.TLS("client-kube-apiserver"), "system:kube-apiserver", nil},
		{l.Agent("client-kubelet"), "system:node:" + nodeName, []string{"system:nodes"}},
		{l.Agent("client-kube-proxy"), "system:kube-proxy", nil},
	}
}

// apiServerSANs: every name the API server is reached by, from the host, containers and pods.
func apiServerSANs(c *Config) ([]string, []net.IP) {
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc." + c.ClusterDomain, c.NodeName}
	ips := []net.IP{net.ParseIP("127.0.0.1"), c.APIServiceIP(), net.ParseIP(c.NodeIP)}
	for _, san := range c.TLSSANs {
		for _, name := range strings.Split(san, ",") {
			name = strings.TrimSpace(name)
			if ip := net.ParseIP(name); ip != nil {
				ips = append(ips, ip)
			} else if name != "" {
				dns = append(dns, name)
			}
		}
	}
	return dedupe(dns), dedupeIPs(ips)
}

func dedupe(values []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range values {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func dedupeIPs(ips []net.IP) []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	for _, ip := range ips {
		if !seen[ip.String()] {
			seen[ip.String()] = true
			out = append(out, ip)
		}
	}
	return out
}
