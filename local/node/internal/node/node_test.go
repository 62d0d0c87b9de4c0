package node

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) string { return "" }

func TestFlagsOfTheComposeFileAreAccepted(t *testing.T) {
	args := []string{"--node-name=k3s", "--tls-san=k3s", "--disable=traefik", "--disable=servicelb",
		"--disable=metrics-server", "--disable=local-storage", "--disable-default-registry-endpoint",
		"--resolv-conf=/etc/rancher/k3s/resolv.conf"}
	env := map[string]string{"K3S_KUBECONFIG_OUTPUT": "/output/kubeconfig.yaml", "K3S_KUBECONFIG_MODE": "644"}
	cfg, err := LoadConfig(args, func(k string) string { return env[k] }, filepath.Join(t.TempDir(), "none.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "k3s" || cfg.KubeconfigOutput != "/output/kubeconfig.yaml" || cfg.KubeconfigMode != "644" {
		t.Fatalf("got %+v", cfg)
	}
	if !cfg.DisableDefaultRegistryEndpoint || cfg.Disabled("coredns") || !cfg.Disabled("traefik") {
		t.Fatalf("got %+v", cfg)
	}
}

func TestConfigDropInsAddUp(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	must(t, os.WriteFile(file, []byte("kubelet-arg: [max-pods=50]\n"), 0o644))
	must(t, os.MkdirAll(file+".d", 0o755))
	must(t, os.WriteFile(filepath.Join(file+".d", "50-local.yaml"),
		[]byte("kubelet-arg+:\n  - fail-cgroupv1=false\nrestrict-oom-score-adj: true\n"), 0o644))
	cfg, err := LoadConfig([]string{"--kubelet-arg=v=2"}, noEnv, file)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"max-pods=50", "fail-cgroupv1=false", "v=2"}
	if strings.Join(cfg.KubeletArgs, " ") != strings.Join(want, " ") || !cfg.RestrictOOMScoreAdj {
		t.Fatalf("kubelet args %v, restrict %v", cfg.KubeletArgs, cfg.RestrictOOMScoreAdj)
	}
	args := kubeletArgs(cfg, Layout{DataDir: "/d"})
	if !contains(args, "--fail-cgroupv1=false") {
		t.Fatalf("kubelet args: %v", args)
	}
}

func TestUnknownFlagsAndKeysAreRefusedClearly(t *testing.T) {
	if _, err := LoadConfig([]string{"--flannel-backend=none"}, noEnv, "/nonexistent"); err == nil ||
		!strings.Contains(err.Error(), "flannel-backend") {
		t.Fatalf("want an error naming the flag, got %v", err)
	}
	if _, err := LoadConfig([]string{"--disable=trafik"}, noEnv, "/nonexistent"); err == nil ||
		!strings.Contains(err.Error(), "unknown component") {
		t.Fatalf("got %v", err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	must(t, os.WriteFile(file, []byte("cluster-init: true\n"), 0o644))
	if _, err := LoadConfig(nil, noEnv, file); err == nil || !strings.Contains(err.Error(), `unknown key "cluster-init"`) {
		t.Fatalf("got %v", err)
	}
}

func TestMirrorWithoutDefaultEndpoint(t *testing.T) {
	file := filepath.Join(t.TempDir(), "registries.yaml")
	must(t, os.WriteFile(file, []byte("mirrors:\n  \"registry:5000\":\n    endpoint:\n      - \"http://registry:5000\"\n"), 0o644))
	regs, err := LoadRegistries(file)
	if err != nil {
		t.Fatal(err)
	}
	with, _ := regs.HostsFiles(false)
	without, _ := regs.HostsFiles(true)
	got := with["registry:5000/hosts.toml"]
	if !strings.Contains(got, `server = "https://registry:5000"`) || !strings.Contains(got, `[host."http://registry:5000"]`) {
		t.Fatalf("with the default endpoint:\n%s", got)
	}
	got = without["registry:5000/hosts.toml"]
	if !strings.Contains(got, `server = "http://registry:5000"`) || strings.Contains(got, "https") || strings.Contains(got, "[host.") {
		t.Fatalf("without the default endpoint:\n%s", got)
	}
	must(t, os.WriteFile(file, []byte("configs:\n  registry:5000:\n    auth: {username: a}\n"), 0o644))
	if _, err := LoadRegistries(file); err == nil || !strings.Contains(err.Error(), "not implemented") {
		t.Fatalf("configs must be refused, got %v", err)
	}
}

func TestLeafIsRemadeOnlyWhenItsNamesChange(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(filepath.Join(dir, "ca"), "test-ca")
	must(t, err)
	spec := CertSpec{CommonName: "kube-apiserver", DNSNames: []string{"k3s"}, IPs: []net.IP{net.ParseIP("10.0.0.2")}, Server: true}
	made, err := EnsureLeaf(filepath.Join(dir, "leaf"), ca, spec)
	must(t, err)
	again, err := EnsureLeaf(filepath.Join(dir, "leaf"), ca, spec)
	must(t, err)
	spec.IPs = []net.IP{net.ParseIP("10.0.0.3")}
	moved, err := EnsureLeaf(filepath.Join(dir, "leaf"), ca, spec)
	must(t, err)
	if !made || again || !moved {
		t.Fatalf("made %v, again %v, after a new node IP %v", made, again, moved)
	}
	same, err := EnsureCA(filepath.Join(dir, "ca"), "test-ca")
	must(t, err)
	if !same.Cert.Equal(ca.Cert) {
		t.Fatal("the CA must be kept across starts")
	}
}

func TestAPIServerNamesCoverHostContainersAndPods(t *testing.T) {
	cfg, err := LoadConfig([]string{"--tls-san=k3s", "--node-name=k3s", "--node-ip=172.18.0.5"}, noEnv, "/nonexistent")
	must(t, err)
	dns, ips := apiServerSANs(cfg)
	for _, name := range []string{"k3s", "localhost", "kubernetes.default.svc.cluster.local"} {
		if !contains(dns, name) {
			t.Errorf("%s missing from %v", name, dns)
		}
	}
	if joinIPs(ips) != "127.0.0.1, 10.43.0.1, 172.18.0.5" {
		t.Errorf("IPs: %s", joinIPs(ips))
	}
}

func TestApplierAppliesChangesAndDeletesRemovedFiles(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "sub", ".hidden"), 0o755))
	for name, text := range map[string]string{
		"a.yaml": "a", "sub/b.yaml": "b", "sub/.hidden/c.yaml": "c", "skipped.yaml": "d",
		"skipped.yaml.skip": "", "notes.txt": "e",
	} {
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	var calls []string
	a := &Applier{Dir: dir, Kubectl: func(_ context.Context, args ...string) ([]byte, error) {
		file := args[len(args)-1]
		if strings.HasPrefix(file, dir) {
			file = strings.TrimPrefix(file, dir+"/")
		} else {
			raw, _ := os.ReadFile(file)
			file = "removed:" + string(raw)
		}
		calls = append(calls, args[0]+" "+file)
		return []byte("ok"), nil
	}}
	a.Pass(context.Background())
	a.Pass(context.Background()) // nothing changed: nothing applied
	must(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("a2"), 0o644))
	must(t, os.Remove(filepath.Join(dir, "sub", "b.yaml")))
	a.Pass(context.Background())
	want := "apply a.yaml|apply sub/b.yaml|apply a.yaml|delete removed:b"
	if strings.Join(calls, "|") != want {
		t.Fatalf("calls %v, want %s", calls, want)
	}
}

func TestVersionsMatchGoMod(t *testing.T) {
	env, err := os.ReadFile("../../versions.env")
	must(t, err)
	mod, err := os.ReadFile("../../go.mod")
	must(t, err)
	versions := map[string]string{}
	for _, line := range strings.Split(string(env), "\n") {
		if key, value, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			versions[key] = value
		}
	}
	for module, key := range map[string]string{"k8s.io/kubernetes": "KUBERNETES_VERSION", "go.etcd.io/etcd/server/v3": "ETCD_VERSION"} {
		if !strings.Contains(string(mod), module+" "+versions[key]) {
			t.Errorf("go.mod does not require %s %s (versions.env %s)", module, versions[key], key)
		}
	}
	if !strings.Contains(defaultCoreDNSImage, versions["COREDNS_VERSION"]) {
		t.Errorf("CoreDNS image %s does not carry COREDNS_VERSION %s", defaultCoreDNSImage, versions["COREDNS_VERSION"])
	}
}

func TestSubcommandFromArgv0(t *testing.T) {
	for argv, want := range map[string]string{"/bin/kubectl get pods": "kubectl", "/bin/k3s server --x": "server", "k3s": "help"} {
		name, _ := Subcommand(strings.Fields(argv))
		if name != want {
			t.Errorf("%s: got %s, want %s", argv, name, want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestComponentFlagsTheNodeRelieson(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s", "--node-ip=172.18.0.5", "--resolv-conf=/r"}, noEnv, "/nonexistent")
	must(t, err)
	l := Layout{DataDir: "/d"}
	api := apiServerArgs(cfg, l)
	for _, want := range []string{"--advertise-address=172.18.0.5", "--etcd-servers=" + etcdClientURL,
		"--requestheader-client-ca-file=/d/server/tls/request-header-ca.crt", "--authorization-mode=Node,RBAC",
		"--kubelet-certificate-authority=/d/server/tls/server-ca.crt"} {
		if !contains(api, want) {
			t.Errorf("kube-apiserver lacks %s", want)
		}
	}
	for name, args := range map[string][]string{"controller-manager": controllerManagerArgs(cfg, l), "scheduler": schedulerArgs(cfg, l)} {
		if !contains(args, "--leader-elect=false") || !contains(args, "--bind-address=127.0.0.1") {
			t.Errorf("%s: %v", name, args)
		}
	}
	kubelet := kubeletConfig(cfg, l)
	for _, want := range []string{"cgroupDriver: cgroupfs", "resolvConf: /r", "- 10.43.0.10", "containerRuntimeEndpoint: unix://" + ContainerdSocket} {
		if !strings.Contains(kubelet, want) {
			t.Errorf("kubelet config lacks %q", want)
		}
	}
	if !strings.Contains(containerdConfig(cfg, l), "restrict_oom_score_adj = false") {
		t.Error("restrict_oom_score_adj must follow the flag")
	}
	cfg.RestrictOOMScoreAdj = true
	if !strings.Contains(containerdConfig(cfg, l), "restrict_oom_score_adj = true") {
		t.Error("restrict_oom_score_adj must follow the flag")
	}
	if !strings.Contains(cniConfig(cfg.PodSubnet()), `"subnet": "10.42.0.0/24"`) {
		t.Error("the CNI subnet is the node's pod subnet")
	}
}

func TestEtcdServesOnlyClientsWithItsCertificates(t *testing.T) {
	cfg, err := LoadConfig([]string{"--node-name=k3s", "--node-ip=172.18.0.5", "--resolv-conf=/r"}, noEnv, "/nonexistent")
	must(t, err)
	l := Layout{DataDir: "/d"}
	if !strings.HasPrefix(etcdClientURL, "https://127.0.0.1:") {
		t.Fatalf("etcd's client URL is %s", etcdClientURL)
	}
	etcd := etcdArgs(cfg, l)
	for _, want := range []string{"--client-cert-auth=true", "--trusted-ca-file=/d/server/tls/etcd/server-ca.crt",
		"--cert-file=/d/server/tls/etcd/server-client.crt", "--key-file=/d/server/tls/etcd/server-client.key",
		"--listen-client-urls=" + etcdClientURL} {
		if !contains(etcd, want) {
			t.Errorf("etcd lacks %s", want)
		}
	}
	api := apiServerArgs(cfg, l)
	for _, want := range []string{"--etcd-cafile=/d/server/tls/etcd/server-ca.crt",
		"--etcd-certfile=/d/server/tls/etcd/client.crt", "--etcd-keyfile=/d/server/tls/etcd/client.key"} {
		if !contains(api, want) {
			t.Errorf("kube-apiserver lacks %s", want)
		}
	}
	n := &Node{cfg: cfg, l: Layout{DataDir: t.TempDir()}}
	must(t, n.writeEtcdPKI())
	if n.etcdTLS == nil || len(n.etcdTLS.Certificates) != 1 || n.etcdTLS.RootCAs == nil {
		t.Fatalf("the node's etcd client: %+v", n.etcdTLS)
	}
	for _, name := range []string{"server-ca.key", "server-client.key", "client.key"} {
		info, err := os.Stat(n.l.Etcd(name))
		must(t, err)
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %o", name, info.Mode().Perm())
		}
	}
}

func TestACertificateWithAnotherKeyIsMadeAnew(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(filepath.Join(dir, "ca"), "test-ca")
	must(t, err)
	spec := CertSpec{CommonName: "etcd-client", Client: true}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, base := range []string{a, b} {
		_, err := EnsureLeaf(base, ca, spec)
		must(t, err)
	}
	other, err := os.ReadFile(b + ".key")
	must(t, err)
	must(t, os.WriteFile(a+".key", other, 0o600)) // a's certificate, b's key
	if _, _, _, err := loadPair(a); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Fatalf("a mismatched pair loaded: %v", err)
	}
	made, err := EnsureLeaf(a, ca, spec)
	must(t, err)
	if !made {
		t.Fatal("a mismatched pair must be made anew")
	}
	if _, _, _, err := loadPair(a); err != nil {
		t.Fatalf("after: %v", err)
	}
}

func TestAComponentThatExitsIsStartedAgainWithBackoffThenGivenUp(t *testing.T) {
	r := NewRestartPolicy()
	now := time.Now()
	var delays []time.Duration
	for i := 0; i < r.Max; i++ {
		d, err := r.Next("kubelet", now.Add(time.Duration(i)*time.Second))
		must(t, err)
		delays = append(delays, d)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	if _, err := r.Next("kubelet", now.Add(10*time.Second)); err == nil {
		t.Fatal("the sixth exit within the window must stop the node")
	}
	if d, err := r.Next("etcd", now); err != nil || d != time.Second {
		t.Fatalf("each component counts its own exits: %v %v", d, err)
	}
	later := NewRestartPolicy()
	for i := 0; i < 10; i++ { // one exit every 10 minutes is no crash loop
		d, err := later.Next("kube-proxy", now.Add(time.Duration(i)*10*time.Minute))
		if err != nil || d != time.Second {
			t.Fatalf("exit %d: %v %v", i, d, err)
		}
	}
}
