package node

// `k3s server`: one Kubernetes node in this container, started in this order, each step logged:
//
//  1. configuration (flags, config.yaml, config.yaml.d) and the node's name and IP
//  2. certificates and kubeconfigs (kept across restarts, see pki.go)
//  3. containerd (config, registry mirrors, CNI network), then the images the node needs
//  4. etcd, kube-apiserver; then the node's own manifests (RBAC, CoreDNS, what agents join with:
//     join.go)
//  5. kube-scheduler, kubelet, kube-proxy; once the node has registered, its pod subnet set (the
//     first /24), then kube-controller-manager, which gives the other nodes theirs
//  6. the admin kubeconfig written where --write-kubeconfig says; the manifests folder applied
//     and kept applied; the routes to other nodes' pods kept (routes.go); kubelet serving
//     certificates of agents approved (csr.go)
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

// Run is `k3s server` once its configuration is read.
func (n *Node) Run() error {
	return n.run(n.startUp, n.serverLoops)
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
	// broken: a loop that finds the node cannot work any more says why here; the node stops
	// with that error, and the container's restart policy starts it again.
	broken chan error
}

// run starts the node with startUp, then runs loops and supervises the components until SIGTERM
// (exit 0) or until a component keeps failing (an error).
func (n *Node) run(startUp func(context.Context) error, loops func(context.Context)) error {
	c := n.cfg
	log.Printf("%s %s, IP %s, Kubernetes %s (upstream components, airflow-k3s local node %s)",
		c.Role, c.NodeName, c.NodeIP, KubernetesVersion, NodeVersion)
	for _, key := range c.IgnoredKeys {
		log.Printf("config: %s is a server setting: ignored by an agent (as k3s does)", key)
	}
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

	n.broken = make(chan error, 1)
	if err := startUp(ctx); err != nil {
		if stopped.Load() {
			n.shutdown()
			return nil
		}
		return n.fail(err)
	}
	loops(ctx)
	err = n.keep(ctx, NewRestartPolicy())
	n.shutdown()
	if stopped.Load() {
		return nil
	}
	log.Printf("ERROR: %v", err)
	return err
}

// serverLoops: what the server keeps doing while it runs.
func (n *Node) serverLoops(ctx context.Context) {
	api := n.localAPI()
	applier := &Applier{Dir: n.l.Manifests(), Kubectl: n.kubectl}
	go applier.Loop(ctx, 5*time.Second)
	go n.labelNode(ctx)
	go n.routeLoop(ctx, api, 5*time.Second)
	go n.approveServingCSRs(ctx, api, 3*time.Second)
	step("running; the manifests folder " + n.l.Manifests() + " is kept applied, routes to other nodes' pods kept, their kubelet serving CSRs checked")
}

// localAPI: the API server on loopback, as the admin.
func (n *Node) localAPI() *apiClient {
	return newAPIClient(fmt.Sprintf("https://127.0.0.1:%d", n.cfg.HTTPSPort), n.tls, "")
}

// startUp starts every component in order, waiting where the next one needs the last.
func (n *Node) startUp(ctx context.Context) error {
	c := n.cfg
	step("certificates and kubeconfigs")
	if err := n.writePKI(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if err := writeFile(n.l.ServerEtc("authentication-config.yaml"), []byte(authenticationConfig()), 0o644); err != nil {
		return err
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
	n.revokeOldBootstrapTokens(ctx)

	if err := n.setupMasquerade(ctx, c.PodSubnet()); err != nil {
		return err
	}
	step("kube-scheduler, kubelet and kube-proxy")
	for _, comp := range []struct {
		name string
		args []string
	}{
		{"kube-scheduler", schedulerArgs(c, n.l)},
		{"kubelet", kubeletArgs(c, n.l)},
		{"kube-proxy", kubeProxyArgs(c, n.l)},
	} {
		if _, err := n.start(comp.name, comp.name, comp.args); err != nil {
			return err
		}
	}
	step("the node's pod subnet " + c.PodSubnet() + ", then kube-controller-manager")
	if err := n.ensurePodCIDR(ctx); err != nil {
		return err
	}
	if _, err := n.start("kube-controller-manager", "kube-controller-manager", controllerManagerArgs(c, n.l)); err != nil {
		return err
	}
	return n.writeKubeconfigOutput()
}

// ensurePodCIDR gives the server's node its pod subnet (the first /24, in its CNI config since
// the start) once it has registered, before the controller-manager's node IPAM runs: that marks
// it taken and gives every other node another. A node registered with another subnet (a cluster
// made with another --cluster-cidr) cannot work with this CNI config: that stops the node.
func (n *Node) ensurePodCIDR(ctx context.Context) error {
	c, api := n.cfg, n.localAPI()
	var node *apiNode
	err := waitFor(ctx, 120*time.Second, "node "+c.NodeName+" to register", func(ctx context.Context) error {
		var err error
		node, err = api.node(ctx, c.NodeName)
		return err
	})
	if err != nil {
		return err
	}
	switch node.Spec.PodCIDR {
	case c.PodSubnet():
		return nil
	case "":
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, c.PodSubnet(), c.PodSubnet())
		if out, err := n.kubectl(ctx, "patch", "node", c.NodeName, "--type=merge", "-p", patch); err != nil {
			return fmt.Errorf("setting node %s's pod CIDR: %v: %s", c.NodeName, err, oneLine(out))
		}
		log.Printf("node %s: pod CIDR %s", c.NodeName, c.PodSubnet())
		return nil
	default:
		return fmt.Errorf("node %s has pod CIDR %s, but its CNI config uses %s (the first /24 of --cluster-cidr=%s): a node's pod CIDR cannot change; delete the node (kubectl delete node %s) or the cluster's data and start again",
			c.NodeName, node.Spec.PodCIDR, c.PodSubnet(), c.ClusterCIDR, c.NodeName)
	}
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
		case err := <-n.broken:
			return err
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
	serverCA, err := os.ReadFile(n.l.TLS("server-ca.crt"))
	if err != nil {
		return err
	}
	clientCA, err := os.ReadFile(n.l.TLS("client-ca.crt"))
	if err != nil {
		return err
	}
	addons := map[string]string{"rolebindings.yaml": nodeRBAC, "node-join.yaml": joinManifests(n.cfg, serverCA, clientCA)}
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
	tokenFile := filepath.Join(n.l.Manifests(), "bootstrap-token.yaml")
	if n.cfg.Token == "" {
		log.Printf("no K3S_TOKEN (--token): agents cannot join this server")
		if err := os.Remove(tokenFile); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	id, secret := BootstrapToken(n.cfg.Token)
	log.Printf("agents join with bootstrap token %s (derived from K3S_TOKEN)", id)
	return writeFile(tokenFile, []byte(bootstrapTokenSecret(id, secret)), 0o600)
}

// revokeOldBootstrapTokens deletes the node's bootstrap tokens of an earlier K3S_TOKEN: only the
// current one lets agents join (nodes that joined keep their certificates).
func (n *Node) revokeOldBootstrapTokens(ctx context.Context) {
	keep := "metadata.name!=bootstrap-token-"
	if n.cfg.Token != "" {
		id, _ := BootstrapToken(n.cfg.Token)
		keep += id
	}
	out, err := n.kubectl(ctx, "-n", "kube-system", "delete", "secret", "-l", "airflow-k3s/bootstrap-token=true",
		"--field-selector", keep, "--ignore-not-found")
	if err != nil {
		log.Printf("WARNING: cannot delete old bootstrap tokens: %v: %s", err, oneLine(out))
	} else if len(out) > 0 {
		log.Printf("old bootstrap tokens deleted: %s", oneLine(out))
	}
}

// labelNode gives the node k3s's role label once it has registered.
func (n *Node) labelNode(ctx context.Context) {
	_ = waitFor(ctx, 5*time.Minute, "the node to register", func(ctx context.Context) error {
		_, err := n.kubectl(ctx, "label", "node", n.cfg.NodeName, "--overwrite",
			"node-role.kubernetes.io/control-plane=true")
		return err
	})
}
