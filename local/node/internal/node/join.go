package node

// Joining agents to the server the Kubernetes way: kubeadm's TLS bootstrap (k3s agents instead
// fetch certificates from k3s's own supervisor API; this node has none).
//
// The server and every agent share one secret, K3S_TOKEN. Both derive the same bootstrap token
// <id>.<secret> ([a-z0-9]{6}.[a-z0-9]{16}) from it with SHA-256 (BootstrapToken), so nothing but
// K3S_TOKEN has to be handed out.
//
// Server side (joinManifests, applied from the manifests folder like the node's other manifests):
//   - the Secret kube-system/bootstrap-token-<id> (type bootstrap.kubernetes.io/token, usable for
//     authentication and signing, extra group system:bootstrappers:airflow-k3s:default-node-token):
//     with kube-apiserver --enable-bootstrap-token-auth, "Bearer <id>.<secret>" is the user
//     system:bootstrap:<id> in that group;
//   - the ConfigMap kube-public/cluster-info: a kubeconfig holding the server CA. The
//     controller-manager's bootstrapsigner adds jws-kubeconfig-<id> to it: a detached JWS (HS256)
//     of that kubeconfig keyed with the token's secret. Anonymous users may read exactly this object
//     (a Role on it; the API server's authentication config admits anonymous requests on this one
//     path and no other, see authenticationConfig);
//   - kubeadm's RBAC: the bootstrappers' group may create CSRs (system:node-bootstrapper), and the
//     controller-manager's csrapproving approves its kubelet client CSRs (nodeclient) and nodes'
//     renewals of their own (selfnodeclient); nodes may run kube-proxy (system:node-proxier);
//   - the ConfigMap kube-system/airflow-k3s-agent-config: what an agent must know of the server
//     (the client CA, with which its kubelet checks the API server's client certificate; cluster
//     and service CIDRs, DNS), readable by the bootstrappers' group and by nodes only;
//   - the controller-manager signs approved CSRs per signer: kubelet client certificates with the
//     client CA (the API server's --client-ca-file), kubelet serving certificates with the server
//     CA (the API server's --kubelet-certificate-authority, so kubectl logs/exec stay verified); it
//     gives every node a /24 of the cluster CIDR (spec.podCIDR), the server's own node the first;
//   - a loop approves the kubelet serving CSRs, which csrapproving leaves alone: a node's own, for
//     its own name and addresses only (csr.go).
//
// Agent side (Agent.join):
//  1. discovery: GET cluster-info without trusting the server yet; verify jws-kubeconfig-<id> with
//     the token's secret (only a server that knows the token can have signed it); take the CA
//     from the signed kubeconfig;
//  2. read airflow-k3s-agent-config with the bootstrap token, over TLS verified with that CA;
//  3. write the bootstrap kubeconfig (the token) and start the kubelet with it: the kubelet makes a
//     key, sends a CSR as system:bootstrap:<id>, gets its client certificate (CN
//     system:node:<name>, group system:nodes), writes kubelet.kubeconfig, registers the node and
//     renews the certificate itself (rotateCertificates); its serving certificate comes by CSR too
//     (serverTLSBootstrap), approved by the server's loop;
//  4. a restarted agent whose kubelet.kubeconfig the server still accepts rejoins as itself
//     without a CSR: it reads 2. with that credential (no token, no discovery: a changed
//     K3S_TOKEN does not cut off nodes that joined), and the kubelet uses the certificate as it
//     is while it is valid. A credential the server refuses (another cluster's CA after the
//     server's data was wiped, an expired certificate) is removed, and the agent joins as in 1-3.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"k8s.io/cluster-bootstrap/token/jws"
)

const (
	// bootstrapGroup: the extra group of the node's bootstrap token (kubeadm's is
	// system:bootstrappers:kubeadm:default-node-token).
	bootstrapGroup   = "system:bootstrappers:airflow-k3s:default-node-token"
	clusterInfoPath  = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
	agentConfigName  = "airflow-k3s-agent-config"
	agentConfigPath  = "/api/v1/namespaces/kube-system/configmaps/" + agentConfigName
	jwsKeyPrefix     = "jws-kubeconfig-"
	tokenAlphabet    = "abcdefghijklmnopqrstuvwxyz0123456789"
	tokenDerivation  = "airflow-k3s bootstrap token\x00"
	tokenIDLength    = 6
	tokenSecretLenth = 16
)

// BootstrapToken derives the bootstrap token (id, secret) from the shared token: the server and
// its agents compute the same one. Each character is a byte of SHA-256 modulo 36 (a bias of 1/64
// towards a-d, which costs a fraction of a bit of the secret's 82).
func BootstrapToken(shared string) (id, secret string) {
	sum := sha256.Sum256([]byte(tokenDerivation + shared))
	chars := make([]byte, tokenIDLength+tokenSecretLenth)
	for i := range chars {
		chars[i] = tokenAlphabet[int(sum[i])%len(tokenAlphabet)]
	}
	return string(chars[:tokenIDLength]), string(chars[tokenIDLength:])
}

// ---------------------------------------------------------------- server: the manifests

// bootstrapTokenSecret is the Secret of the token (the manifest file holding it is mode 0600).
func bootstrapTokenSecret(id, secret string) string {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-%s
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
    airflow-k3s/bootstrap-token: "true"
type: bootstrap.kubernetes.io/token
data:
  description: %s
  token-id: %s
  token-secret: %s
  usage-bootstrap-authentication: %s
  usage-bootstrap-signing: %s
  auth-extra-groups: %s
`, id, b64("agents join with it; derived from K3S_TOKEN by the airflow-k3s node"), b64(id), b64(secret),
		b64("true"), b64("true"), b64(bootstrapGroup))
}

// joinManifests: cluster-info, the agents' config and kubeadm's RBAC for joining.
func joinManifests(c *Config, serverCA, clientCA []byte) string {
	clusterInfo := Kubeconfig{Server: fmt.Sprintf("https://%s:%d", c.NodeName, c.HTTPSPort), CAPEM: serverCA}
	return strings.NewReplacer(
		"@KUBECONFIG@", indent(string(clusterInfo.RenderCluster()), "    "),
		"@CLIENT_CA@", indent(string(clientCA), "    "),
		"@CLUSTER_CIDR@", c.ClusterCIDR,
		"@SERVICE_CIDR@", c.ServiceCIDR,
		"@CLUSTER_DNS@", c.ClusterDNS,
		"@CLUSTER_DOMAIN@", c.ClusterDomain,
		"@GROUP@", bootstrapGroup,
		"@AGENT_CONFIG@", agentConfigName,
	).Replace(joinTemplate)
}

func indent(text, prefix string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix)
}

const joinTemplate = `apiVersion: v1
kind: ConfigMap
metadata:
  name: cluster-info
  namespace: kube-public
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
data:
  kubeconfig: |
@KUBECONFIG@
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: airflow-k3s:bootstrap-signer-clusterinfo
  namespace: kube-public
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [cluster-info]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: airflow-k3s:bootstrap-signer-clusterinfo
  namespace: kube-public
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: airflow-k3s:bootstrap-signer-clusterinfo
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:anonymous
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: @AGENT_CONFIG@
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
data:
  cluster-cidr: "@CLUSTER_CIDR@"
  service-cidr: "@SERVICE_CIDR@"
  cluster-dns: "@CLUSTER_DNS@"
  cluster-domain: "@CLUSTER_DOMAIN@"
  client-ca.crt: |
@CLIENT_CA@
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: airflow-k3s:agent-config-reader
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [@AGENT_CONFIG@]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: airflow-k3s:agent-config-reader
  namespace: kube-system
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: airflow-k3s:agent-config-reader
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: @GROUP@
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: airflow-k3s:kubelet-bootstrap
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-bootstrapper
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: @GROUP@
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: airflow-k3s:node-autoapprove-bootstrap
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:nodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: @GROUP@
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: airflow-k3s:node-autoapprove-certificate-rotation
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: airflow-k3s:node-proxier
  labels:
    app.kubernetes.io/managed-by: airflow-k3s-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-proxier
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
`

// authenticationConfig: the API server's AuthenticationConfiguration. Anonymous requests are
// authenticated (as system:anonymous) on the cluster-info path only; on every other path they are
// refused as with --anonymous-auth=false (conditions need Kubernetes 1.32+; GA in 1.34).
func authenticationConfig() string {
	return `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
  - path: ` + clusterInfoPath + "\n"
}

// ---------------------------------------------------------------- agent: discovery

// verifyClusterInfo checks cluster-info's data as kubeadm's token discovery does: the kubeconfig
// must carry a detached JWS made with this token, and then its CA is the cluster's.
func verifyClusterInfo(data map[string]string, id, secret string) ([]byte, error) {
	kubeconfig, ok := data["kubeconfig"]
	if !ok {
		return nil, errors.New("cluster-info holds no kubeconfig")
	}
	signature, ok := data[jwsKeyPrefix+id]
	if !ok {
		var others []string
		for key := range data {
			if other, ok := strings.CutPrefix(key, jwsKeyPrefix); ok {
				others = append(others, other)
			}
		}
		sort.Strings(others)
		if len(others) == 0 {
			return nil, fmt.Errorf("cluster-info is not signed yet (the server signs it with its bootstrap token within seconds of start; without K3S_TOKEN it has none)")
		}
		return nil, fmt.Errorf("cluster-info is signed with bootstrap token %s, not with %s, this agent's: K3S_TOKEN differs from the server's (or the server has not signed with a new one yet)",
			strings.Join(others, ", "), id)
	}
	if !jws.DetachedTokenIsValid(signature, kubeconfig, id, secret) {
		return nil, fmt.Errorf("cluster-info's signature %s%s does not verify with this token: K3S_TOKEN differs from the server's, or this is not our server", jwsKeyPrefix, id)
	}
	kc, err := parseKubeconfig([]byte(kubeconfig))
	if err != nil {
		return nil, fmt.Errorf("cluster-info: %w", err)
	}
	ca, err := kc.caPEM()
	if err != nil {
		return nil, fmt.Errorf("cluster-info: %w", err)
	}
	if _, err := parseCerts(ca); err != nil {
		return nil, fmt.Errorf("cluster-info's CA: %w", err)
	}
	return ca, nil
}

func parseCerts(pemData []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := pemData; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

func certPool(pemData []byte) (*x509.CertPool, error) {
	certs, err := parseCerts(pemData)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, cert := range certs {
		pool.AddCert(cert)
	}
	return pool, nil
}

// discover reads cluster-info from server without trusting it (that is what the JWS is for).
func discover(ctx context.Context, server, id, secret string) ([]byte, error) {
	// No CA yet: the answer is trusted only once its signature verifies.
	insecure := newAPIClient(server, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, "") //nolint:gosec // verified by JWS
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := insecure.get(ctx, clusterInfoPath, &cm); err != nil {
		return nil, fmt.Errorf("GET %s%s: %w", server, clusterInfoPath, err)
	}
	return verifyClusterInfo(cm.Data, id, secret)
}

// applyAgentConfig takes the server's settings from airflow-k3s-agent-config into c, and returns
// the client CA.
func applyAgentConfig(c *Config, data map[string]string) ([]byte, error) {
	for key, field := range map[string]*string{
		"cluster-cidr": &c.ClusterCIDR, "service-cidr": &c.ServiceCIDR,
		"cluster-dns": &c.ClusterDNS, "cluster-domain": &c.ClusterDomain,
	} {
		if data[key] == "" {
			return nil, fmt.Errorf("%s has no %s", agentConfigName, key)
		}
		*field = data[key]
	}
	for _, cidr := range []string{c.ClusterCIDR, c.ServiceCIDR} {
		if _, _, err := net.ParseCIDR(cidr); err != nil {
			return nil, fmt.Errorf("%s: %w", agentConfigName, err)
		}
	}
	if net.ParseIP(c.ClusterDNS) == nil {
		return nil, fmt.Errorf("%s: cluster-dns %q is not an IP", agentConfigName, c.ClusterDNS)
	}
	ca := []byte(data["client-ca.crt"])
	if _, err := parseCerts(ca); err != nil {
		return nil, fmt.Errorf("%s: client-ca.crt: %w", agentConfigName, err)
	}
	return ca, nil
}

// staleKubeletCredentials: the kubelet's files (kubeconfig, certificates in its cert dir) that
// another cluster's CAs signed, with why. The kubelet checks only that its certificate has not
// expired; one of a wiped and re-created server would be refused forever.
func staleKubeletCredentials(kubeconfig, certDir string, serverCA, clientCA []byte) map[string]string {
	stale := map[string]string{}
	if raw, err := os.ReadFile(kubeconfig); err == nil {
		kc, err := parseKubeconfig(raw)
		var ca []byte
		if err == nil {
			ca, err = kc.caPEM()
		}
		if err != nil || !samePEMCerts(ca, serverCA) {
			stale[kubeconfig] = "its CA is not the server's"
		}
	}
	check := func(pattern string, ca []byte, usage x509.ExtKeyUsage) {
		pool, err := certPool(ca)
		if err != nil {
			return
		}
		files, _ := filepath.Glob(filepath.Join(certDir, pattern))
		for _, file := range files {
			raw, err := os.ReadFile(file)
			if err != nil {
				continue // a dangling -current.pem link: the kubelet ignores it too
			}
			certs, err := parseCerts(raw)
			if err == nil {
				_, err = certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: certs[0].NotBefore.Add(time.Second)})
			}
			if err != nil {
				stale[file] = "not signed by this cluster's CA"
			}
		}
	}
	check("kubelet-client-*.pem", clientCA, x509.ExtKeyUsageClientAuth)
	check("kubelet-server-*.pem", serverCA, x509.ExtKeyUsageServerAuth)
	for file := range stale {
		if _, err := os.Stat(kubeconfig); err == nil && strings.Contains(filepath.Base(file), "kubelet-client-") {
			stale[kubeconfig] = "its certificate is another cluster's"
		}
	}
	return stale
}

func samePEMCerts(a, b []byte) bool {
	ca, err1 := parseCerts(a)
	cb, err2 := parseCerts(b)
	if err1 != nil || err2 != nil || len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if !ca[i].Equal(cb[i]) {
			return false
		}
	}
	return true
}
