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
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
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
