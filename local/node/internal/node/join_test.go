package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"k8s.io/cluster-bootstrap/token/jws"
	"sigs.k8s.io/yaml"
)

// The agent service the task library renders (IMAGES=local), with the local config drop-in.
func agentConfigForTest(t *testing.T, extra ...string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	must(t, os.MkdirAll(file+".d", 0o755))
	must(t, os.WriteFile(filepath.Join(file+".d", "50-airflow-k3s-local.yaml"),
		[]byte("kubelet-arg:\n  - fail-cgroupv1=false\nrestrict-oom-score-adj: true\ntls-san: [k3s]\ndisable: [traefik]\n"), 0o644))
	args := append([]string{"--node-name=agent-highmem-1", "--node-label=airflow-k3s/pool=highmem", "--node-label=k=v",
		"--node-taint=airflow-k3s/pool=gpu:NoSchedule", "--kubelet-arg=registry-qps=0", "--resolv-conf=/r"}, extra...)
	env := map[string]string{"K3S_URL": "https://k3s:6443", "K3S_TOKEN": "s3cr3t-s3cr3t-s3cr3t"}
	return LoadAgentConfig(args, func(k string) string { return env[k] }, file)
}

func TestAgentFlagsEnvironmentAndConfigFiles(t *testing.T) {
	cfg, err := agentConfigForTest(t)
	must(t, err)
	if cfg.Role != RoleAgent || cfg.ServerURL != "https://k3s:6443" || cfg.Token != "s3cr3t-s3cr3t-s3cr3t" || cfg.NodeName != "agent-highmem-1" {
		t.Fatalf("got %+v", cfg)
	}
	if strings.Join(cfg.KubeletArgs, " ") != "fail-cgroupv1=false registry-qps=0" || !cfg.RestrictOOMScoreAdj {
		t.Fatalf("kubelet args %v, restrict %v", cfg.KubeletArgs, cfg.RestrictOOMScoreAdj)
	}
	// Server-only keys of a shared drop-in are ignored (and said), not applied.
	if len(cfg.IgnoredKeys) != 2 || len(cfg.TLSSANs) != 0 || len(cfg.Disable) != 0 {
		t.Fatalf("ignored %v, tls-san %v, disable %v", cfg.IgnoredKeys, cfg.TLSSANs, cfg.Disable)
	}
	// Until the server says otherwise, the server's defaults.
	if cfg.ClusterCIDR != "10.42.0.0/16" || cfg.ClusterDNS != "10.43.0.10" {
		t.Fatalf("defaults: %+v", cfg)
	}
	labels, err := cfg.Labels()
	must(t, err)
	taints, err := cfg.Taints()
	must(t, err)
	if labels["airflow-k3s/pool"] != "highmem" || labels["k"] != "v" || len(taints) != 1 ||
		taints[0] != (Taint{Key: "airflow-k3s/pool", Value: "gpu", Effect: "NoSchedule"}) {
		t.Fatalf("labels %v, taints %v", labels, taints)
	}
}

func TestAgentRefusesWhatItCannotDo(t *testing.T) {
	for extra, want := range map[string]string{
		"--tls-san=x": "flag provided but not defined: -tls-san",
		"--node-label=node-role.kubernetes.io/worker=true": "NodeRestriction",
		"--node-label=nolabel":                             "want key=value",
		"--node-taint=a=b:Sometimes":                       "NoSchedule, PreferNoSchedule or NoExecute",
		"--server=http://k3s:6443":                         "want https://host:port",
	} {
		if _, err := agentConfigForTest(t, extra); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error with %q, got %v", extra, want, err)
		}
	}
	for _, ok := range []string{"--node-label=node.kubernetes.io/pool=a", "--node-label=topology.kubernetes.io/zone=z", "--node-label=example.com/x=y"} {
		if _, err := agentConfigForTest(t, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	must(t, os.WriteFile(file, []byte("no-such-key: 1\n"), 0o644))
	env := map[string]string{"K3S_URL": "https://k3s:6443", "K3S_TOKEN": "x"}
	if _, err := LoadAgentConfig(nil, func(k string) string { return env[k] }, file); err == nil || !strings.Contains(err.Error(), `unknown key "no-such-key"`) {
		t.Errorf("a key neither role knows must be refused: %v", err)
	}
	if _, err := LoadAgentConfig(nil, func(k string) string { return map[string]string{"K3S_URL": "https://k3s:6443"}[k] }, "/nonexistent"); err == nil || !strings.Contains(err.Error(), "K3S_TOKEN") {
		t.Errorf("no token: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	must(t, os.WriteFile(tokenFile, []byte("from-a-file\n"), 0o600))
	cfg, err := LoadAgentConfig([]string{"-s", "https://k3s:6443/", "--token-file=" + tokenFile}, noEnv, "/nonexistent")
	must(t, err)
	if cfg.Token != "from-a-file" || cfg.ServerURL != "https://k3s:6443" {
		t.Errorf("token %q, server %q", cfg.Token, cfg.ServerURL)
	}
}

func TestBootstrapTokenIsDerivedTheSameEverywhere(t *testing.T) {
	format := regexp.MustCompile(`^[a-z0-9]{6}$`)
	secretFormat := regexp.MustCompile(`^[a-z0-9]{16}$`)
	id, secret := BootstrapToken("Zx8u1Qm6c2Yp0sTq4RvL9wJe3KdHbNfA")
	id2, secret2 := BootstrapToken("Zx8u1Qm6c2Yp0sTq4RvL9wJe3KdHbNfA")
	id3, secret3 := BootstrapToken("Zx8u1Qm6c2Yp0sTq4RvL9wJe3KdHbNfB")
	if !format.MatchString(id) || !secretFormat.MatchString(secret) {
		t.Fatalf("%s.%s is not a bootstrap token", id, secret)
	}
	if id != id2 || secret != secret2 || id == id3 || secret == secret3 {
		t.Fatalf("derivation: %s.%s %s.%s %s.%s", id, secret, id2, secret2, id3, secret3)
	}
	manifest := bootstrapTokenSecret(id, secret)
	var doc struct {
		Metadata struct{ Name, Namespace string }
		Type     string
		Data     map[string]string
	}
	must(t, yaml.Unmarshal([]byte(manifest), &doc))
	decoded := map[string]string{}
	for k, v := range doc.Data {
		raw, err := base64.StdEncoding.DecodeString(v)
		must(t, err)
		decoded[k] = string(raw)
	}
	if doc.Metadata.Name != "bootstrap-token-"+id || doc.Metadata.Namespace != "kube-system" || doc.Type != "bootstrap.kubernetes.io/token" ||
		decoded["token-id"] != id || decoded["token-secret"] != secret || decoded["usage-bootstrap-authentication"] != "true" ||
		decoded["usage-bootstrap-signing"] != "true" || decoded["auth-extra-groups"] != bootstrapGroup {
		t.Fatalf("secret: %+v %v", doc, decoded)
	}
}

// joinDocs renders the server's join manifests and returns them by kind/name.
func joinDocs(t *testing.T, cfg *Config, serverCA, clientCA []byte) map[string]map[string]any {
	t.Helper()
	docs := map[string]map[string]any{}
	for _, text := range strings.Split(joinManifests(cfg, serverCA, clientCA), "\n---\n") {
		var doc map[string]any
		must(t, yaml.Unmarshal([]byte(text), &doc))
		meta := doc["metadata"].(map[string]any)
		docs[doc["kind"].(string)+"/"+meta["name"].(string)] = doc
	}
	return docs
}

func testCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := EnsureCA(filepath.Join(t.TempDir(), name), name)
	must(t, err)
	return ca
}

func stringData(doc map[string]any) map[string]string {
	data := map[string]string{}
	for k, v := range doc["data"].(map[string]any) {
		data[k] = v.(string)
	}
	return data
}

func TestClusterInfoSignedByTheTokenVerifiesAndAWrongTokenFails(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s", "--node-ip=172.18.0.5"}, noEnv, "/nonexistent")
	must(t, err)
	serverCA, clientCA := testCA(t, "server-ca"), testCA(t, "client-ca")
	docs := joinDocs(t, cfg, serverCA.CertPEM, clientCA.CertPEM)
	data := stringData(docs["ConfigMap/cluster-info"])
	id, secret := BootstrapToken("right")
	// What the controller-manager's bootstrapsigner adds: the library's own signer.
	sig, err := jws.ComputeDetachedSignature(data["kubeconfig"], id, secret)
	must(t, err)
	data[jwsKeyPrefix+id] = sig
	ca, err := verifyClusterInfo(data, id, secret)
	must(t, err)
	if !samePEMCerts(ca, serverCA.CertPEM) {
		t.Fatal("the CA from cluster-info is not the server CA")
	}
	wrongID, wrongSecret := BootstrapToken("wrong")
	if _, err := verifyClusterInfo(data, wrongID, wrongSecret); err == nil || !strings.Contains(err.Error(), "signed with bootstrap token "+id+", not with "+wrongID) {
		t.Errorf("another token's id: %v", err)
	}
	if _, err := verifyClusterInfo(map[string]string{"kubeconfig": data["kubeconfig"]}, id, secret); err == nil || !strings.Contains(err.Error(), "not signed yet") {
		t.Errorf("not signed yet: %v", err)
	}
	if _, err := verifyClusterInfo(data, id, wrongSecret); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("the right id with a wrong secret: %v", err)
	}
	tampered := map[string]string{"kubeconfig": strings.Replace(data["kubeconfig"], "server: https://k3s:6443", "server: https://evil:6443", 1), jwsKeyPrefix + id: sig}
	if _, err := verifyClusterInfo(tampered, id, secret); err == nil {
		t.Error("a changed kubeconfig must not verify")
	}
}

func TestDiscoveryOverHTTPS(t *testing.T) {
	serverCA := testCA(t, "server-ca")
	id, secret := BootstrapToken("tok")
	kubeconfig := string(Kubeconfig{Server: "https://k3s:6443", CAPEM: serverCA.CertPEM}.RenderCluster())
	sig, err := jws.ComputeDetachedSignature(kubeconfig, id, secret)
	must(t, err)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != clusterInfoPath || r.Header.Get("Authorization") != "" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"message":"Unauthorized"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]string{"kubeconfig": kubeconfig, jwsKeyPrefix + id: sig}})
	}))
	defer srv.Close()
	ca, err := discover(context.Background(), srv.URL, id, secret)
	must(t, err)
	if !samePEMCerts(ca, serverCA.CertPEM) {
		t.Fatal("discovered CA")
	}
	client, err := clientFromKubeconfigBytes(t, srv)
	must(t, err)
	var out map[string]any
	if err := client.get(context.Background(), "/api", &out); !isHTTP(err, 401) || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("want HTTP 401 with the server's message, got %v", err)
	}
}

func clientFromKubeconfigBytes(t *testing.T, srv *httptest.Server) (*apiClient, error) {
	t.Helper()
	caPEM := pemBlock("CERTIFICATE", srv.Certificate().Raw)
	file := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(file, Kubeconfig{Server: srv.URL, CAPEM: caPEM, Token: "a.b"}.Render(), 0o600))
	return clientFromKubeconfig(file)
}

func TestAgentTakesTheServersSettings(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s", "--cluster-cidr=10.52.0.0/16", "--cluster-dns=10.53.0.10", "--service-cidr=10.53.0.0/16"}, noEnv, "/nonexistent")
	must(t, err)
	serverCA, clientCA := testCA(t, "server-ca"), testCA(t, "client-ca")
	docs := joinDocs(t, cfg, serverCA.CertPEM, clientCA.CertPEM)
	agent, err := agentConfigForTest(t)
	must(t, err)
	ca, err := applyAgentConfig(agent, stringData(docs["ConfigMap/"+agentConfigName]))
	must(t, err)
	if !samePEMCerts(ca, clientCA.CertPEM) || agent.ClusterCIDR != "10.52.0.0/16" || agent.ClusterDNS != "10.53.0.10" || agent.ServiceCIDR != "10.53.0.0/16" {
		t.Fatalf("agent %+v", agent)
	}
	// Who may read what: anonymous only cluster-info; the agents' config the bootstrappers and nodes.
	binding := docs["RoleBinding/airflow-k3s:bootstrap-signer-clusterinfo"]
	if s := binding["subjects"].([]any)[0].(map[string]any); s["name"] != "system:anonymous" {
		t.Errorf("cluster-info reader: %v", s)
	}
	role := docs["Role/airflow-k3s:bootstrap-signer-clusterinfo"]["rules"].([]any)[0].(map[string]any)
	if names := role["resourceNames"].([]any); len(names) != 1 || names[0] != "cluster-info" {
		t.Errorf("anonymous may read %v", names)
	}
	for _, want := range []string{"ClusterRoleBinding/airflow-k3s:kubelet-bootstrap", "ClusterRoleBinding/airflow-k3s:node-autoapprove-bootstrap",
		"ClusterRoleBinding/airflow-k3s:node-autoapprove-certificate-rotation", "ClusterRoleBinding/airflow-k3s:node-proxier"} {
		if docs[want] == nil {
			t.Errorf("%s missing", want)
		}
	}
	if !strings.Contains(authenticationConfig(), "  - path: /api/v1/namespaces/kube-public/configmaps/cluster-info\n") ||
		strings.Count(authenticationConfig(), "path:") != 1 {
		t.Errorf("anonymous must be admitted on cluster-info only:\n%s", authenticationConfig())
	}
}

// csrFor makes a kubelet serving CSR object as the API server would show it.
func csrFor(t *testing.T, requester, cn string, dns []string, ips []string) apiCSR {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	template := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}}, DNSNames: dns}
	for _, ip := range ips {
		template.IPAddresses = append(template.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, template, key)
	must(t, err)
	var csr apiCSR
	csr.Metadata.Name = "csr-x"
	csr.Spec.Request = pemBlock("CERTIFICATE REQUEST", der)
	csr.Spec.SignerName = kubeletServingSigner
	csr.Spec.Username = requester
	csr.Spec.Groups = []string{"system:nodes", "system:authenticated"}
	csr.Spec.Usages = []string{"digital signature", "server auth"}
	return csr
}

func TestServingCSRsAreApprovedOnlyForTheNodesOwnNames(t *testing.T) {
	var node apiNode
	node.Metadata.Name = "agent-1"
	_ = json.Unmarshal([]byte(`{"addresses":[{"type":"InternalIP","address":"172.18.0.7"},{"type":"Hostname","address":"agent-1"}]}`), &node.Status)
	reserved := []string{"k3s", "kubernetes", "127.0.0.1", "10.43.0.1", "172.18.0.5"}
	good := csrFor(t, "system:node:agent-1", "system:node:agent-1", []string{"agent-1"}, []string{"172.18.0.7"})
	if err := approveServingCSR(good, &node, reserved); err != nil {
		t.Fatalf("the node's own CSR: %v", err)
	}
	notANode := csrFor(t, "system:bootstrap:abcdef", "system:node:agent-1", []string{"agent-1"}, nil)
	notANode.Spec.Groups = []string{"system:bootstrappers"}
	for name, c := range map[string]struct {
		csr  apiCSR
		want string
	}{
		"wrong CN":         {csrFor(t, "system:node:agent-1", "system:node:agent-2", []string{"agent-1"}, nil), "is not the requester"},
		"foreign IP":       {csrFor(t, "system:node:agent-1", "system:node:agent-1", []string{"agent-1"}, []string{"172.18.0.9"}), "IP 172.18.0.9 is not node agent-1's"},
		"foreign DNS":      {csrFor(t, "system:node:agent-1", "system:node:agent-1", []string{"agent-1", "postgres"}, nil), "DNS name postgres"},
		"the API server's": {csrFor(t, "system:node:agent-1", "system:node:agent-1", []string{"k3s"}, nil), "DNS name k3s"},
		"not a node":       {notANode, "not by a node"},
		"no names":         {csrFor(t, "system:node:agent-1", "system:node:agent-1", nil, nil), "no DNS name or IP"},
	} {
		if err := approveServingCSR(c.csr, &node, reserved); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want %q, got %v", name, c.want, err)
		}
	}
	if err := approveServingCSR(good, nil, reserved); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("an unregistered node: %v", err)
	}
	clientUsage := good
	clientUsage.Spec.Usages = []string{"digital signature", "server auth", "client auth"}
	if err := approveServingCSR(clientUsage, &node, reserved); err == nil {
		t.Error("a client usage must not be approved")
	}
	// A node's address that is also the API server's stays refused.
	node.Status.Addresses[0].Address = "172.18.0.5"
	if err := approveServingCSR(csrFor(t, "system:node:agent-1", "system:node:agent-1", nil, []string{"172.18.0.5"}), &node, reserved); err == nil {
		t.Error("the API server's IP must not be approved")
	}
}

func TestRoutesToOtherNodesPods(t *testing.T) {
	var nodes []apiNode
	must(t, json.Unmarshal([]byte(`[
	 {"metadata":{"name":"k3s"},"spec":{"podCIDR":"10.42.0.0/24","podCIDRs":["10.42.0.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"172.18.0.5"}]}},
	 {"metadata":{"name":"agent-1"},"spec":{"podCIDR":"10.42.1.0/24"},"status":{"addresses":[{"type":"Hostname","address":"agent-1"},{"type":"InternalIP","address":"172.18.0.7"}]}},
	 {"metadata":{"name":"agent-2"},"spec":{"podCIDR":"10.42.2.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"172.18.0.8"}]}},
	 {"metadata":{"name":"agent-3"},"spec":{},"status":{"addresses":[{"type":"InternalIP","address":"172.18.0.9"}]}}
	]`), &nodes))
	wanted := wantedRoutes(nodes, "agent-1")
	if len(wanted) != 2 || wanted["10.42.0.0/24"] != "172.18.0.5" || wanted["10.42.2.0/24"] != "172.18.0.8" {
		t.Fatalf("wanted %v", wanted)
	}
	current := parseRoutes("10.42.0.0/24 via 172.18.0.5 dev eth0 \n10.42.2.0/24 via 172.18.0.6 dev eth0 \n10.42.3.0/24 via 172.18.0.10 dev eth0 \n")
	replace, remove := routeChanges(current, wanted)
	if len(replace) != 1 || replace[0] != [2]string{"10.42.2.0/24", "172.18.0.8"} || strings.Join(remove, ",") != "10.42.3.0/24" {
		t.Fatalf("replace %v, remove %v", replace, remove)
	}
	if r, d := routeChanges(wanted, wanted); len(r)+len(d) != 0 {
		t.Fatalf("nothing to do, got %v %v", r, d)
	}
	rules := masqueradeRules("10.42.0.0/16")
	if strings.Join(rules[0], " ") != "-A "+masqChain+" -d 10.42.0.0/16 -j RETURN" || rules[len(rules)-1][len(rules[len(rules)-1])-1] != "MASQUERADE" {
		t.Fatalf("masquerade rules %v", rules)
	}
	if !strings.Contains(cniConfig("10.42.1.0/24"), `"ipMasq": false`) {
		t.Fatal("the bridge plugin must not masquerade pod-to-pod traffic")
	}
}

func TestAgentKubeletAndKubeProxy(t *testing.T) {
	cfg, err := agentConfigForTest(t)
	must(t, err)
	cfg.NodeIP = "172.18.0.7"
	l := Layout{DataDir: "/var/lib/rancher/k3s"}
	args := agentKubeletArgs(cfg, l)
	for _, want := range []string{"--bootstrap-kubeconfig=/var/lib/rancher/k3s/agent/bootstrap.kubeconfig",
		"--kubeconfig=/var/lib/rancher/k3s/agent/kubelet.kubeconfig", "--cert-dir=/var/lib/rancher/k3s/agent/pki",
		"--hostname-override=agent-highmem-1", "--node-ip=172.18.0.7", "--node-labels=airflow-k3s/pool=highmem,k=v",
		"--fail-cgroupv1=false", "--registry-qps=0"} {
		if !contains(args, want) {
			t.Errorf("kubelet lacks %s: %v", want, args)
		}
	}
	config := agentKubeletConfig(cfg, l)
	for _, want := range []string{"rotateCertificates: true", "serverTLSBootstrap: true", "clientCAFile: /var/lib/rancher/k3s/agent/client-ca.crt",
		"registerWithTaints:\n- key: \"airflow-k3s/pool\"\n  value: \"gpu\"\n  effect: NoSchedule\n"} {
		if !strings.Contains(config, want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, config)
		}
	}
	if strings.Contains(config, "tlsCertFile") {
		t.Error("an agent's serving certificate comes by CSR")
	}
	var parsed map[string]any
	must(t, yaml.Unmarshal([]byte(config), &parsed))
	if !strings.Contains(agentKubeProxyConfig(cfg, l), "kubeconfig: /var/lib/rancher/k3s/agent/kubelet.kubeconfig") {
		t.Error("an agent's kube-proxy uses the node's credential")
	}
}

func TestServerFlagsForJoiningAgents(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s", "--node-ip=172.18.0.5"}, func(k string) string {
		return map[string]string{"K3S_TOKEN": "shared"}[k]
	}, "/nonexistent")
	must(t, err)
	if cfg.Token != "shared" {
		t.Fatalf("the server reads K3S_TOKEN: %q", cfg.Token)
	}
	l := Layout{DataDir: "/d"}
	api := apiServerArgs(cfg, l)
	for _, want := range []string{"--enable-bootstrap-token-auth=true", "--authentication-config=/d/server/etc/authentication-config.yaml",
		"--kubelet-certificate-authority=/d/server/tls/server-ca.crt", "--client-ca-file=/d/server/tls/client-ca.crt"} {
		if !contains(api, want) {
			t.Errorf("kube-apiserver lacks %s", want)
		}
	}
	for _, arg := range api {
		if strings.HasPrefix(arg, "--anonymous-auth") {
			t.Errorf("%s conflicts with the authentication config", arg)
		}
	}
	cm := controllerManagerArgs(cfg, l)
	for _, want := range []string{"--controllers=*,bootstrapsigner,tokencleaner", "--allocate-node-cidrs=true",
		"--cluster-cidr=10.42.0.0/16", "--node-cidr-mask-size=24",
		"--cluster-signing-kubelet-client-cert-file=/d/server/tls/client-ca.crt",
		"--cluster-signing-kubelet-serving-cert-file=/d/server/tls/server-ca.crt",
		"--cluster-signing-kubelet-serving-key-file=/d/server/tls/server-ca.key",
		"--cluster-signing-kube-apiserver-client-cert-file=/d/server/tls/client-ca.crt"} {
		if !contains(cm, want) {
			t.Errorf("kube-controller-manager lacks %s", want)
		}
	}
	for _, arg := range cm {
		if strings.HasPrefix(arg, "--cluster-signing-cert-file") || strings.HasPrefix(arg, "--cluster-signing-key-file") {
			t.Errorf("%s cannot go with per-signer files", arg)
		}
	}
	if strings.Contains(kubeletConfig(cfg, l), "serverTLSBootstrap") || !strings.Contains(kubeletConfig(cfg, l), "tlsCertFile: /d/agent/serving-kubelet.crt") {
		t.Error("the server's kubelet keeps the certificates the node makes")
	}
}

func TestKubeletCredentialsOfAnotherClusterAreStale(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := testCA(t, "server-ca"), testCA(t, "client-ca"), testCA(t, "other-ca")
	certDir := filepath.Join(dir, "pki")
	must(t, os.MkdirAll(certDir, 0o755))
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	leaf := func(name string, ca *CA, server bool) {
		base := filepath.Join(dir, name)
		_, err := EnsureLeaf(base, ca, CertSpec{CommonName: "system:node:a", Client: !server, Server: server})
		must(t, err)
		crt, _ := os.ReadFile(base + ".crt")
		key, _ := os.ReadFile(base + ".key")
		must(t, os.WriteFile(filepath.Join(certDir, name+".pem"), append(crt, key...), 0o600))
	}
	leaf("kubelet-client-2026", clientCA, false)
	leaf("kubelet-server-2026", serverCA, true)
	must(t, os.WriteFile(kubeconfig, Kubeconfig{Server: "https://k3s:6443", CAPEM: serverCA.CertPEM,
		CertFile: filepath.Join(certDir, "kubelet-client-2026.pem"), KeyFile: filepath.Join(certDir, "kubelet-client-2026.pem")}.Render(), 0o600))
	if stale := staleKubeletCredentials(kubeconfig, certDir, serverCA.CertPEM, clientCA.CertPEM); len(stale) != 0 {
		t.Fatalf("this cluster's credentials are not stale: %v", stale)
	}
	// The server's data was wiped: new CAs.
	stale := staleKubeletCredentials(kubeconfig, certDir, otherCA.CertPEM, otherCA.CertPEM)
	if len(stale) != 3 {
		t.Fatalf("want the kubeconfig and both certificates stale, got %v", stale)
	}
}

func TestARestartedAgentRejoinsWithItsOwnCredentialOrDropsIt(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s"}, noEnv, "/nonexistent")
	must(t, err)
	clientCA := testCA(t, "client-ca")
	data := stringData(joinDocs(t, cfg, clientCA.CertPEM, clientCA.CertPEM)["ConfigMap/"+agentConfigName])
	accept := true
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !accept || r.URL.Path != agentConfigPath || r.Header.Get("Authorization") != "Bearer node-credential" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": data})
	}))
	defer srv.Close()
	agent, err := agentConfigForTest(t, "--server="+srv.URL)
	must(t, err)
	n := &Node{cfg: agent, l: Layout{DataDir: t.TempDir()}}
	if serverCA, _, err := n.rejoin(context.Background()); serverCA != nil || err != nil {
		t.Fatalf("no kubeconfig: join with the token, got %v %v", serverCA, err)
	}
	kubeconfig := n.l.Agent("kubelet.kubeconfig")
	certPEM := pemBlock("CERTIFICATE", srv.Certificate().Raw)
	must(t, os.MkdirAll(n.l.KubeletCertDir(), 0o755))
	must(t, os.WriteFile(filepath.Join(n.l.KubeletCertDir(), "kubelet-client-current.pem"), []byte("x"), 0o600))
	must(t, os.WriteFile(kubeconfig, Kubeconfig{Server: srv.URL, CAPEM: certPEM, Token: "node-credential"}.Render(), 0o600))
	serverCA, gotClientCA, err := n.rejoin(context.Background())
	must(t, err)
	if !samePEMCerts(serverCA, certPEM) || !samePEMCerts(gotClientCA, clientCA.CertPEM) {
		t.Fatal("rejoin: the CAs")
	}
	accept = false
	if serverCA, _, err := n.rejoin(context.Background()); serverCA != nil || err != nil {
		t.Fatalf("a refused credential: join with the token, got %v %v", serverCA, err)
	}
	for _, file := range []string{kubeconfig, filepath.Join(n.l.KubeletCertDir(), "kubelet-client-current.pem")} {
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Errorf("%s must be removed: %v", file, err)
		}
	}
}
