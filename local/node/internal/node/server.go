package node

// `k3s server`: one Kubernetes node in this container, started in this order, each step logged:
//
//  1. configuration (flags, config.yaml, config.yaml.d) and the node's name and IP
//  2. certificates and kubeconfigs (kept across restarts, see pki.go)
//  3. containerd (config, registry mirrors, CNI network), then the images the node needs
//  4. etcd, kube-apiserver; then the node's own manifests (RBAC, CoreDNS)
//  5. kube-controller-manager, kube-scheduler, kubelet, kube-proxy
//  6. the admin kubeconfig written where --write-kubeconfig says; the manifests folder applied
//     and kept applied
//
// Every component is its own process (this same binary under another name), so each keeps its own
// flags, logs and global state, as the upstream binaries would. If one of them exits, the node
// stops them all and exits non-zero: the container's restart policy starts a clean node again.
// SIGTERM stops them in reverse order and exits 0.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	configFile = "/etc/rancher/k3s/config.yaml"
	// DefaultKubeconfig is the admin kubeconfig inside the node, kubectl's default there.
	DefaultKubeconfig = "/etc/rancher/k3s/k3s.yaml"
	// CtrBinary is containerd's client.
	CtrBinary = "/usr/local/bin/ctr"
)

// ServerMain is `k3s server`.
func ServerMain(args []string) int {
	log.SetFlags(log.Ldate | log.Ltime | log.Lmicroseconds)
	log.SetPrefix("airflow-k3s node: ")
	cfg, err := LoadConfig(args, os.Getenv, configFile)
	if err != nil {
		log.Printf("ERROR: %v", err)
		return 2
	}
	if err := cfg.ResolveNode(os.Hostname, defaultRouteIP); err != nil {
		log.Printf("ERROR: %v", err)
		return 2
	}
	n := &Node{cfg: cfg, l: Layout{DataDir: cfg.DataDir}, sup: NewSupervisor()}
	if err := n.Run(); err != nil {
		log.Printf("ERROR: %v", err)
		return 1
	}
	return 0
}

// Node is one running node.
type Node struct {
	cfg   *Config
	l     Layout
	sup   *Supervisor
	self  string
	procs []*Proc
	mu    sync.Mutex
	tls   *tls.Config
}

func (n *Node) Run() error {
	c := n.cfg
	log.Printf("node %s, IP %s, Kubernetes %s (upstream components, airflow-k3s local node %s)",
		c.NodeName, c.NodeIP, KubernetesVersion, NodeVersion)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	n.self = self
	if err := checkOOMScoreAdj(c.RestrictOOMScoreAdj); err != nil {
		return err
	}
	if c.ResolvConf == "" {
		return errors.New("no --resolv-conf: the kubelet needs a resolv.conf with a nameserver pods can reach (k3s/entrypoint.sh writes one and passes it)")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	step("certificates and kubeconfigs")
	if err := n.writePKI(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	step("configuration files of containerd, CNI, kubelet and kube-proxy")
	if err := n.writeAgentConfig(); err != nil {
		return err
	}

	step("containerd")
	if err := n.startContainerd(ctx); err != nil {
		return n.fail(err)
	}
	if err := n.importImages(ctx); err != nil {
		return n.fail(err)
	}

	step("etcd and kube-apiserver")
	if _, err := n.start("etcd", "etcd", etcdArgs(c, n.l)); err != nil {
		return n.fail(err)
	}
	if err := waitFor(ctx, 60*time.Second, "etcd to be healthy", n.etcdHealthy); err != nil {
		return n.fail(err)
	}
	if _, err := n.start("kube-apiserver", "kube-apiserver", apiServerArgs(c, n.l)); err != nil {
		return n.fail(err)
	}
	if err := waitFor(ctx, 120*time.Second, "kube-apiserver to be ready", n.apiReady); err != nil {
		return n.fail(err)
	}
	if err := n.writeAddons(); err != nil {
		return n.fail(err)
	}

	step("kube-controller-manager, kube-scheduler, kubelet and kube-proxy")
	for _, comp := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", controllerManagerArgs(c, n.l)},
		{"kube-scheduler", schedulerArgs(c, n.l)},
		{"kubelet", kubeletArgs(c, n.l)},
		{"kube-proxy", kubeProxyArgs(c, n.l)},
	} {
		if _, err := n.start(comp.name, comp.name, comp.args); err != nil {
			return n.fail(err)
		}
	}

	if err := n.writeKubeconfigOutput(); err != nil {
		return n.fail(err)
	}
	applier := &Applier{Dir: n.l.Manifests(), Kubectl: n.kubectl}
	go applier.Loop(ctx, 5*time.Second)
	go n.labelNode(ctx)
	step("running; the manifests folder " + n.l.Manifests() + " is kept applied")

	exited := make(chan *Proc, len(n.procs))
	for _, p := range n.procs {
		go func(p *Proc) { <-p.Done(); exited <- p }(p)
	}
	select {
	case sig := <-stop:
		log.Printf("%s: stopping the node", sig)
		cancel()
		n.shutdown()
		return nil
	case p := <-exited:
		cancel()
		err := fmt.Errorf("%s exited (%s): stopping the node (its log is above)", p.Name, describe(p.Status))
		log.Printf("ERROR: %v", err)
		n.shutdown()
		return err
	}
}

// Versions, set by local/node/build.sh with -ldflags -X (KubernetesVersion by main).
var (
	NodeVersion       = "dev"
	KubernetesVersion = "unknown"
	ContainerdVersion = "unknown"
	CorednsVersion    = "unknown"
)

// Subcommand returns what to run: argv[0]'s base name (a symlink such as /bin/kubectl), or for
// "k3s" its first argument.
func Subcommand(argv []string) (string, []string) {
	name := filepath.Base(argv[0])
	args := argv[1:]
	if name == "k3s" {
		if len(args) == 0 {
			return "help", nil
		}
		return args[0], args[1:]
	}
	return name, args
}

func step(what string) { log.Printf("==> %s", what) }

// fail stops what was started and returns err.
func (n *Node) fail(err error) error {
	log.Printf("ERROR: %v", err)
	n.shutdown()
	return err
}

// start runs this binary as component name, with its output on the node's.
func (n *Node) start(label, name string, args []string) (*Proc, error) {
	p, err := n.sup.Start(label, append([]string{n.self, name}, args...), os.Environ(), os.Stderr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	log.Printf("started %s (pid %d)", label, p.cmd.Process.Pid)
	return p, nil
}

// shutdown stops the components in reverse order of their start: the Kubernetes components
// together, then etcd, then containerd.
func (n *Node) shutdown() {
	n.mu.Lock()
	procs := append([]*Proc(nil), n.procs...)
	n.mu.Unlock()
	var last []*Proc
	var wg sync.WaitGroup
	for _, p := range procs {
		if p.Name == "etcd" || p.Name == "containerd" {
			last = append(last, p)
			continue
		}
		wg.Add(1)
		go func(p *Proc) { defer wg.Done(); p.Stop(5 * time.Second) }(p)
	}
	wg.Wait()
	for i := len(last) - 1; i >= 0; i-- {
		last[i].Stop(5 * time.Second)
	}
}

// kubectl runs kubectl with the admin kubeconfig.
func (n *Node) kubectl(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	argv := append([]string{n.self, "kubectl", "--kubeconfig=" + n.l.Cred("admin.kubeconfig")}, args...)
	return n.sup.Run(ctx, "kubectl "+args[0], argv, os.Environ())
}

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

// ---------------------------------------------------------------- agent: containerd and friends

func (n *Node) writeAgentConfig() error {
	c, l := n.cfg, n.l
	regs, err := LoadRegistries(c.RegistriesFile)
	if err != nil {
		return err
	}
	hosts, err := regs.HostsFiles(c.DisableDefaultRegistryEndpoint)
	if err != nil {
		return err
	}
	// The hosts dir holds exactly what registries.yaml says: stale mirrors go.
	if err := os.RemoveAll(l.ContainerdHostsDir()); err != nil {
		return err
	}
	for rel, text := range hosts {
		if err := writeFile(filepath.Join(l.ContainerdHostsDir(), rel), []byte(text), 0o644); err != nil {
			return err
		}
		log.Printf("registry mirror %s: %s", filepath.Dir(rel), oneLine([]byte(text)))
	}
	files := map[string]string{
		l.ContainerdConfig(): containerdConfig(c, l),
		filepath.Join(l.CNIConfDir(), "10-airflow-k3s.conflist"): cniConfig(c),
		l.Agent("kubelet-config.yaml"):                           kubeletConfig(c, l),
		l.Agent("kube-proxy-config.yaml"):                        kubeProxyConfig(c, l),
	}
	for path, text := range files {
		if err := writeFile(path, []byte(text), 0o644); err != nil {
			return err
		}
	}
	for _, dir := range []string{l.ImagesDir(), l.Manifests(), filepath.Dir(l.Logs("x")), kubeletRootDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	logPath := n.l.Logs("containerd.log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p, err := n.sup.Start("containerd", []string{"/usr/local/bin/containerd", "--config", n.l.ContainerdConfig()}, os.Environ(), out)
	out.Close()
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	log.Printf("started containerd (pid %d, log %s)", p.cmd.Process.Pid, logPath)
	return waitFor(ctx, 60*time.Second, "containerd to answer", func(ctx context.Context) error {
		select {
		case <-p.Done():
			return fatal{fmt.Errorf("containerd exited (%s); the end of %s:\n%s", describe(p.Status), logPath, tail(logPath, 20))}
		default:
		}
		_, err := n.sup.Run(ctx, "ctr version", []string{CtrBinary, "--address", ContainerdSocket, "version"}, nil)
		return err
	})
}

// importImages imports the image tarballs the node needs (pause, CoreDNS: built into the node
// image) and any the user put into <data-dir>/agent/images, as k3s does with airgap images.
func (n *Node) importImages(ctx context.Context) error {
	var tarballs []string
	for _, dir := range []string{builtinImagesDir, n.l.ImagesDir()} {
		found, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
		tarballs = append(tarballs, found...)
	}
	for _, tarball := range tarballs {
		started := time.Now()
		ictx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		out, err := n.sup.Run(ictx, "ctr import", []string{CtrBinary, "--address", ContainerdSocket,
			"--namespace", "k8s.io", "images", "import", "--label", "io.cri-containerd.pinned=pinned", tarball}, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("importing %s: %v: %s", tarball, err, strings.TrimSpace(string(out)))
		}
		log.Printf("imported %s in %.1f s: %s", filepath.Base(tarball), time.Since(started).Seconds(), oneLine(out))
	}
	return nil
}

// ---------------------------------------------------------------- control plane

func (n *Node) etcdHealthy(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, etcdClientURL+"/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd health: %s", resp.Status)
	}
	return nil
}

func (n *Node) apiReady(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: n.tls}, Timeout: 5 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/readyz", n.cfg.HTTPSPort), nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

// writeAddons writes the node's own manifests (k3s writes its packaged ones the same way).
func (n *Node) writeAddons() error {
	addons := map[string]string{"rolebindings.yaml": nodeRBAC}
	if !n.cfg.Disabled("coredns") {
		addons["coredns.yaml"] = corednsManifest(n.cfg, defaultCoreDNSImage)
	} else {
		_ = os.Remove(filepath.Join(n.l.Manifests(), "coredns.yaml"))
	}
	for name, text := range addons {
		if err := writeFile(filepath.Join(n.l.Manifests(), name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// labelNode gives the node k3s's role label once it has registered.
func (n *Node) labelNode(ctx context.Context) {
	_ = waitFor(ctx, 5*time.Minute, "the node to register", func(ctx context.Context) error {
		_, err := n.kubectl(ctx, "label", "node", n.cfg.NodeName, "--overwrite",
			"node-role.kubernetes.io/control-plane=true")
		return err
	})
}

// ---------------------------------------------------------------- helpers

// fatal marks an error that waitFor must not retry.
type fatal struct{ error }

// waitFor polls check until it succeeds, fails fatally, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	started := time.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			log.Printf("waited %.1f s for %s", time.Since(started).Seconds(), what)
			return nil
		}
		var f fatal
		if errors.As(err, &f) {
			return f.error
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkOOMScoreAdj: containerd gives pod sandboxes oom_score_adj -998. Where this container may
// not lower its score (no CAP_SYS_RESOURCE) that is refused, and every pod would fail to start:
// say so now, with the fix, unless containerd is told to keep scores at or above its own.
func checkOOMScoreAdj(restricted bool) error {
	const path = "/proc/self/oom_score_adj"
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil // not Linux as we know it: let containerd decide
	}
	current, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if current <= -1000 {
		return nil
	}
	lower := strconv.Itoa(current - 1)
	if err := os.WriteFile(path, []byte(lower), 0o644); err != nil {
		if restricted {
			log.Printf("this container may not lower oom_score_adj (%v): containerd keeps pods at or above %d (restrict-oom-score-adj)", err, current)
			return nil
		}
		return fmt.Errorf("this container may not lower oom_score_adj (%v), so containerd could start no pod: set restrict-oom-score-adj: true (local/node/config.yaml does) or run the container privileged", err)
	}
	_ = os.WriteFile(path, []byte(strconv.Itoa(current)), 0o644)
	return nil
}

// defaultRouteIP is the IPv4 address of the interface of the default route (/proc/net/route).
func defaultRouteIP() (string, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return "", err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 2 || fields[1] != "00000000" {
			continue
		}
		iface, err := net.InterfaceByName(fields[0])
		if err != nil {
			return "", err
		}
		addrs, err := iface.Addrs()
		if err != nil {
			return "", err
		}
		for _, addr := range addrs {
			if ipnet, ok := addr.(*net.IPNet); ok && ipnet.IP.To4() != nil {
				return ipnet.IP.String(), nil
			}
		}
		return "", fmt.Errorf("interface %s of the default route has no IPv4 address", fields[0])
	}
	return "", errors.New("no default route")
}

func tail(path string, lines int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
