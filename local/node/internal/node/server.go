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
	"sync/atomic"
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
	// etcdTLS is the node's etcd client: its certificate, etcd's CA.
	etcdTLS *tls.Config
	// specs: how each supervised component was started, to start it again.
	specs map[string]func() (*Proc, error)
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

	// SIGTERM or SIGINT at any time, start-up included: every wait ends and the node stops.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var stopped atomic.Bool
	go func() {
		sig := <-stop
		log.Printf("%s: stopping the node", sig)
		stopped.Store(true)
		cancel()
	}()

	if err := n.startUp(ctx); err != nil {
		if stopped.Load() {
			n.shutdown()
			return nil
		}
		return n.fail(err)
	}
	applier := &Applier{Dir: n.l.Manifests(), Kubectl: n.kubectl}
	go applier.Loop(ctx, 5*time.Second)
	go n.labelNode(ctx)
	step("running; the manifests folder " + n.l.Manifests() + " is kept applied")
	err = n.keep(ctx, NewRestartPolicy())
	n.shutdown()
	if stopped.Load() {
		return nil
	}
	log.Printf("ERROR: %v", err)
	return err
}

// startUp starts every component in order, waiting where the next one needs the last.
func (n *Node) startUp(ctx context.Context) error {
	c := n.cfg
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
		return err
	}
	if err := n.importImages(ctx); err != nil {
		return err
	}

	step("etcd and kube-apiserver")
	if _, err := n.start("etcd", "etcd", etcdArgs(c, n.l)); err != nil {
		return err
	}
	if err := waitFor(ctx, 60*time.Second, "etcd to be healthy", n.etcdHealthy); err != nil {
		return err
	}
	if _, err := n.start("kube-apiserver", "kube-apiserver", apiServerArgs(c, n.l)); err != nil {
		return err
	}
	if err := waitFor(ctx, 120*time.Second, "kube-apiserver to be ready", n.apiReady); err != nil {
		return err
	}
	if err := n.writeAddons(); err != nil {
		return err
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
			return err
		}
	}
	return n.writeKubeconfigOutput()
}

// keep supervises the components, each on its own, as kind's node does with systemd: one that
// exits is started again after a backoff, while the others (and the pods, which run under
// containerd's shims) go on. It returns when the node stops, or when a component keeps failing.
func (n *Node) keep(ctx context.Context, policy *RestartPolicy) error {
	exited := make(chan *Proc, 16)
	watch := func(p *Proc) { go func() { <-p.Done(); exited <- p }() }
	n.mu.Lock()
	for _, p := range n.procs {
		watch(p)
	}
	n.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case p := <-exited:
			delay, err := policy.Next(p.Name, time.Now())
			if err != nil {
				return fmt.Errorf("%s exited (%s) %v: stopping the node (its log is above)", p.Name, describe(p.Status), err)
			}
			log.Printf("%s exited (%s): starting it again in %s", p.Name, describe(p.Status), delay)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
			again, err := n.restart(p)
			if err != nil {
				return fmt.Errorf("%s could not be started again: %w", p.Name, err)
			}
			watch(again)
		}
	}
}

// restart starts an exited component the way it was started, in its place in n.procs.
func (n *Node) restart(old *Proc) (*Proc, error) {
	n.mu.Lock()
	again := n.specs[old.Name]
	n.mu.Unlock()
	if again == nil {
		return nil, fmt.Errorf("no way to start %s known", old.Name)
	}
	p, err := again()
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	kept := n.procs[:0]
	for _, q := range n.procs {
		if q != old && q != p {
			kept = append(kept, q)
		}
	}
	n.procs = append(kept, p)
	return p, nil
}

// RestartPolicy decides, for a component that exited, how long to wait before starting it
// again: 1 s, doubling with each exit within Window up to MaxDelay; after Max exits within
// Window the node gives up (a component that cannot run is a node that cannot work).
type RestartPolicy struct {
	Window   time.Duration
	Max      int
	MaxDelay time.Duration
	exits    map[string][]time.Time
}

func NewRestartPolicy() *RestartPolicy {
	return &RestartPolicy{Window: 5 * time.Minute, Max: 5, MaxDelay: 30 * time.Second, exits: map[string][]time.Time{}}
}

// Next records an exit of name at now: the delay before the next start, or an error to give up.
func (r *RestartPolicy) Next(name string, now time.Time) (time.Duration, error) {
	var recent []time.Time
	for _, t := range r.exits[name] {
		if now.Sub(t) < r.Window {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	r.exits[name] = recent
	if len(recent) > r.Max {
		return 0, fmt.Errorf("%d times within %s", len(recent), r.Window)
	}
	delay := time.Second << (len(recent) - 1)
	if delay > r.MaxDelay {
		delay = r.MaxDelay
	}
	return delay, nil
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

// start runs this binary as component name, with its output on the node's; the supervisor
// (keep) starts it again the same way if it exits.
func (n *Node) start(label, name string, args []string) (*Proc, error) {
	launch := func() (*Proc, error) {
		p, err := n.sup.Start(label, append([]string{n.self, name}, args...), os.Environ(), os.Stderr)
		if err != nil {
			return nil, err
		}
		log.Printf("started %s (pid %d)", label, p.cmd.Process.Pid)
		return p, nil
	}
	return n.supervise(label, launch)
}

// supervise starts a component with launch, and keeps launch to start it again.
func (n *Node) supervise(label string, launch func() (*Proc, error)) (*Proc, error) {
	p, err := launch()
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.specs == nil {
		n.specs = map[string]func() (*Proc, error){}
	}
	n.specs[label] = launch
	n.procs = append(n.procs, p)
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
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: n.etcdTLS}, Timeout: 5 * time.Second}
	resp, err := client.Do(req)
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
