package node

// The node's certificates (pki.go makes them) and the kubeconfigs of its users.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
)

// ---------------------------------------------------------------- certificates and kubeconfigs

func (n *Node) writePKI() error {
	c, l := n.cfg, n.l
	serverCA, err := EnsureCA(l.TLS("server-ca"), "airflow-k3s-server-ca")
	if err != nil {
		return err
	}
	clientCA, err := EnsureCA(l.TLS("client-ca"), "airflow-k3s-client-ca")
	if err != nil {
		return err
	}
	// The request-header CA signs the API server's front-proxy client (aggregated APIs), and the
	// controller-manager and scheduler read it from the extension-apiserver-authentication
	// ConfigMap for their own authentication.
	requestHeaderCA, err := EnsureCA(l.TLS("request-header-ca"), "airflow-k3s-request-header-ca")
	if err != nil {
		return err
	}
	if _, err := EnsureLeaf(l.TLS("client-auth-proxy"), requestHeaderCA,
		CertSpec{CommonName: "system:auth-proxy", Client: true}); err != nil {
		return err
	}
	dns, ips := apiServerSANs(c)
	if made, err := EnsureLeaf(l.TLS("serving-kube-apiserver"), serverCA,
		CertSpec{CommonName: "kube-apiserver", DNSNames: dns, IPs: ips, Server: true}); err != nil {
		return err
	} else if made {
		log.Printf("API server certificate for %s, %s", strings.Join(dns, ", "), joinIPs(ips))
	}
	nodeIP := net.ParseIP(c.NodeIP)
	if _, err := EnsureLeaf(l.Agent("serving-kubelet"), serverCA, CertSpec{
		CommonName: c.NodeName, DNSNames: []string{c.NodeName, "localhost"},
		IPs: []net.IP{nodeIP, net.ParseIP("127.0.0.1")}, Server: true,
	}); err != nil {
		return err
	}
	for _, cc := range clientCerts(l, c.NodeName) {
		if _, err := EnsureLeaf(cc.base, clientCA, CertSpec{CommonName: cc.commonName, Orgs: cc.orgs, Client: true}); err != nil {
			return err
		}
	}
	if err := EnsureKey(l.TLS("service.key")); err != nil {
		return err
	}
	if err := n.writeEtcdPKI(); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	local := fmt.Sprintf("https://127.0.0.1:%d", c.HTTPSPort)
	for file, base := range map[string]string{
		l.Cred("admin.kubeconfig"):      l.TLS("client-admin"),
		l.Cred("controller.kubeconfig"): l.TLS("client-controller"),
		l.Cred("scheduler.kubeconfig"):  l.TLS("client-scheduler"),
		l.Agent("kubelet.kubeconfig"):   l.Agent("client-kubelet"),
		l.Agent("kubeproxy.kubeconfig"): l.Agent("client-kube-proxy"),
	} {
		kc := Kubeconfig{Server: local, CAPEM: serverCA.CertPEM, CertFile: base + ".crt", KeyFile: base + ".key"}
		if err := writeFile(file, kc.Render(), 0o600); err != nil {
			return err
		}
	}
	// The client n.apiReady uses: the admin's certificate, the server CA.
	admin, err := tls.LoadX509KeyPair(l.TLS("client-admin.crt"), l.TLS("client-admin.key"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(serverCA.Cert)
	n.tls = &tls.Config{Certificates: []tls.Certificate{admin}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	return nil
}

// adminKubeconfig is the kubeconfig k3s writes to /etc/rancher/k3s/k3s.yaml: certificates inline.
func (n *Node) adminKubeconfig() ([]byte, error) {
	ca, err := os.ReadFile(n.l.TLS("server-ca.crt"))
	if err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(n.l.TLS("client-admin.crt"))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(n.l.TLS("client-admin.key"))
	if err != nil {
		return nil, err
	}
	kc := Kubeconfig{Server: fmt.Sprintf("https://127.0.0.1:%d", n.cfg.HTTPSPort), CAPEM: ca, CertPEM: cert, KeyPEM: key}
	return kc.Render(), nil
}

func (n *Node) writeKubeconfigOutput() error {
	data, err := n.adminKubeconfig()
	if err != nil {
		return err
	}
	mode := os.FileMode(0o600)
	if n.cfg.KubeconfigMode != "" {
		m, _ := strconv.ParseUint(n.cfg.KubeconfigMode, 8, 32)
		mode = os.FileMode(m)
	}
	if err := writeFile(DefaultKubeconfig, data, mode); err != nil {
		return err
	}
	if n.cfg.KubeconfigOutput != "" {
		if err := writeFile(n.cfg.KubeconfigOutput, data, mode); err != nil {
			return err
		}
		log.Printf("admin kubeconfig written to %s (mode %o)", n.cfg.KubeconfigOutput, mode)
	}
	return nil
}

func joinIPs(ips []net.IP) string {
	parts := make([]string, len(ips))
	for i, ip := range ips {
		parts[i] = ip.String()
	}
	return strings.Join(parts, ", ")
}

// writeEtcdPKI: etcd's own CA (k3s's etcd/server-ca), etcd's serving certificate on loopback, and
// the client certificate the API server and the node's health check present; etcd refuses any
// client without one.
func (n *Node) writeEtcdPKI() error {
	l := n.l
	ca, err := EnsureCA(l.Etcd("server-ca"), "airflow-k3s-etcd-server-ca")
	if err != nil {
		return err
	}
	if _, err := EnsureLeaf(l.Etcd("server-client"), ca, CertSpec{
		CommonName: "etcd-server", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Client: true,
	}); err != nil {
		return err
	}
	if _, err := EnsureLeaf(l.Etcd("client"), ca, CertSpec{CommonName: "etcd-client", Client: true}); err != nil {
		return err
	}
	client, err := tls.LoadX509KeyPair(l.Etcd("client.crt"), l.Etcd("client.key"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	n.etcdTLS = &tls.Config{Certificates: []tls.Certificate{client}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	return nil
}
