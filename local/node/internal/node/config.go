package node

// The node's configuration: the k3s server and agent flags it implements, read like k3s reads them
// (config file, then config.yaml.d drop-ins in name order, then the command line; list flags add
// up). A key of a config file that only the server knows is ignored by an agent, as k3s does (one
// config.yaml.d serves both); a key neither knows is refused.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Roles: what a Config configures.
const (
	RoleServer = "server"
	RoleAgent  = "agent"
)

// Config is everything `k3s server` or `k3s agent` can be told.
type Config struct {
	Role             string
	DataDir          string
	NodeName         string
	NodeIP           string
	TLSSANs          []string
	Disable          []string
	ResolvConf       string
	KubeconfigOutput string
	KubeconfigMode   string
	ClusterCIDR      string
	ServiceCIDR      string
	ClusterDNS       string
	ClusterDomain    string
	HTTPSPort        int
	PauseImage       string
	RegistriesFile   string
	// DisableDefaultRegistryEndpoint: pull from a mirrored registry through its mirror endpoints
	// only, without containerd's fallback to https://<registry> (k3s's flag of the same name).
	DisableDefaultRegistryEndpoint bool
	// RestrictOOMScoreAdj: containerd never asks for an oom_score_adj below its own (needed where
	// the node lacks CAP_SYS_RESOURCE: lowering the score is refused there). Not a k3s flag: k3s
	// sets this containerd option itself when it runs in a user namespace.
	RestrictOOMScoreAdj bool
	KubeletArgs         []string
	APIServerArgs       []string
	ControllerArgs      []string
	SchedulerArgs       []string
	KubeProxyArgs       []string
	EtcdArgs            []string
	// NodeLabels ("key=value") and NodeTaints ("key[=value]:Effect") the kubelet registers the
	// node with (k3s's --node-label and --node-taint).
	NodeLabels []string
	NodeTaints []string
	// ServerURL: the API server an agent joins (k3s's --server, $K3S_URL).
	ServerURL string
	// Token: the shared secret of the server and its agents (k3s's --token, $K3S_TOKEN, or the
	// content of --token-file): both derive the bootstrap token from it (join.go).
	Token     string
	TokenFile string
	// IgnoredKeys: config-file keys of the other role, ignored (logged at start).
	IgnoredKeys []string
}

// Addons the node deploys itself, which --disable can switch off. The other names k3s knows are
// accepted and have nothing to switch off: this node never runs them.
var (
	nodeAddons     = []string{"coredns"}
	absentK3sAddon = []string{"traefik", "servicelb", "metrics-server", "local-storage", "runtimes"}
)

type listFlag struct{ values *[]string }

func (l listFlag) String() string { return "" }
func (l listFlag) Set(value string) error {
	*l.values = append(*l.values, value)
	return nil
}

// flagSet: the flags of role; for an agent, also the server's own flags on a second set (bound to
// c, so that c gets their defaults: the agent replaces them with the server's values when it
// joins), which tells which config-file keys to ignore.
func (c *Config) flagSet(role string, output io.Writer) (fs, serverOnly *flag.FlagSet) {
	fs = flag.NewFlagSet("k3s "+role, flag.ContinueOnError)
	fs.SetOutput(output)
	c.Role = role
	c.commonFlags(fs)
	switch role {
	case RoleServer:
		c.serverFlags(fs)
	case RoleAgent:
		fs.StringVar(&c.ServerURL, "server", "", "the server to join, https://host:port ($K3S_URL)")
		serverOnly = flag.NewFlagSet("k3s server", flag.ContinueOnError)
		c.serverFlags(serverOnly)
	}
	return fs, serverOnly
}

// commonFlags: the flags of both roles (k3s's names).
func (c *Config) commonFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, "data-dir", "/var/lib/rancher/k3s", "data directory")
	fs.StringVar(&c.NodeName, "node-name", "", "node name (default: $K3S_NODE_NAME, else the hostname)")
	fs.StringVar(&c.NodeIP, "node-ip", "", "node IPv4 address (default: the default route's interface)")
	fs.StringVar(&c.ResolvConf, "resolv-conf", "", "resolv.conf for the kubelet (pods with dnsPolicy Default, CoreDNS upstream)")
	fs.StringVar(&c.PauseImage, "pause-image", defaultPauseImage, "pod sandbox image")
	fs.StringVar(&c.RegistriesFile, "private-registry", "/etc/rancher/k3s/registries.yaml", "registry mirrors")
	fs.BoolVar(&c.DisableDefaultRegistryEndpoint, "disable-default-registry-endpoint", false,
		"no fallback to the registry's own https endpoint for mirrored registries")
	fs.BoolVar(&c.RestrictOOMScoreAdj, "restrict-oom-score-adj", false,
		"containerd never lowers a container's oom_score_adj below its own")
	fs.Var(listFlag{&c.KubeletArgs}, "kubelet-arg", "extra kubelet flag (name=value)")
	fs.Var(listFlag{&c.KubeProxyArgs}, "kube-proxy-arg", "extra kube-proxy flag")
	fs.Var(listFlag{&c.NodeLabels}, "node-label", "label the node registers with (key=value; repeatable)")
	fs.Var(listFlag{&c.NodeTaints}, "node-taint", "taint the node registers with (key=value:Effect; repeatable)")
	fs.StringVar(&c.Token, "token", "", "shared secret agents join with ($K3S_TOKEN)")
	fs.StringVar(&c.TokenFile, "token-file", "", "file holding the token ($K3S_TOKEN_FILE)")
}

// serverFlags: the flags only a server has.
func (c *Config) serverFlags(fs *flag.FlagSet) {
	fs.Var(listFlag{&c.TLSSANs}, "tls-san", "extra name or IP in the API server's certificate")
	fs.Var(listFlag{&c.Disable}, "disable", "do not deploy this packaged component")
	fs.StringVar(&c.KubeconfigOutput, "write-kubeconfig", "", "write the admin kubeconfig here too")
	fs.StringVar(&c.KubeconfigMode, "write-kubeconfig-mode", "", "file mode of that kubeconfig (octal)")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", "10.42.0.0/16", "pod network")
	fs.StringVar(&c.ServiceCIDR, "service-cidr", "10.43.0.0/16", "service network")
	fs.StringVar(&c.ClusterDNS, "cluster-dns", "10.43.0.10", "CoreDNS service IP")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "cluster domain")
	fs.IntVar(&c.HTTPSPort, "https-listen-port", 6443, "API server port")
	fs.Var(listFlag{&c.APIServerArgs}, "kube-apiserver-arg", "extra kube-apiserver flag")
	fs.Var(listFlag{&c.ControllerArgs}, "kube-controller-manager-arg", "extra kube-controller-manager flag")
	fs.Var(listFlag{&c.SchedulerArgs}, "kube-scheduler-arg", "extra kube-scheduler flag")
	fs.Var(listFlag{&c.EtcdArgs}, "etcd-arg", "extra etcd flag")
}

// k3s's short flag names and environment variables, for the flags that have them.
var (
	flagAliases = map[string]string{"o": "write-kubeconfig", "s": "server", "t": "token", "d": "data-dir", "i": "node-ip"}
	flagEnv     = map[string]string{
		"server":                "K3S_URL",
		"token":                 "K3S_TOKEN",
		"token-file":            "K3S_TOKEN_FILE",
		"node-name":             "K3S_NODE_NAME",
		"node-ip":               "K3S_NODE_IP",
		"resolv-conf":           "K3S_RESOLV_CONF",
		"write-kubeconfig":      "K3S_KUBECONFIG_OUTPUT",
		"write-kubeconfig-mode": "K3S_KUBECONFIG_MODE",
		"data-dir":              "K3S_DATA_DIR",
	}
)

// LoadConfig reads the environment, the config file and its drop-ins, then args: `k3s server`'s.
func LoadConfig(args []string, getenv func(string) string, configFile string) (*Config, error) {
	return loadConfig(RoleServer, args, getenv, configFile)
}

// LoadAgentConfig is LoadConfig for `k3s agent`.
func LoadAgentConfig(args []string, getenv func(string) string, configFile string) (*Config, error) {
	return loadConfig(RoleAgent, args, getenv, configFile)
}

func loadConfig(role string, args []string, getenv func(string) string, configFile string) (*Config, error) {
	cfg := &Config{}
	var usage strings.Builder
	fs, serverOnly := cfg.flagSet(role, &usage)
	for name, env := range flagEnv {
		if fs.Lookup(name) == nil {
			continue
		}
		if value := getenv(env); value != "" {
			if err := fs.Set(name, value); err != nil {
				return nil, fmt.Errorf("$%s: %w", env, err)
			}
		}
	}
	files, err := configFiles(configFile)
	if err != nil {
		return nil, err
	}
	for _, file := range files {
		ignored, err := applyConfigFile(fs, serverOnly, file)
		if err != nil {
			return nil, err
		}
		cfg.IgnoredKeys = append(cfg.IgnoredKeys, ignored...)
	}
	for i, arg := range args {
		if short, ok := strings.CutPrefix(arg, "-"); ok && !strings.HasPrefix(short, "-") {
			name, value, hasValue := strings.Cut(short, "=")
			if long, ok := flagAliases[name]; ok {
				args[i] = "--" + long
				if hasValue {
					args[i] += "=" + value
				}
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errors.New(strings.TrimSpace(usage.String()))
		}
		return nil, fmt.Errorf("%v (this node implements the k3s flags listed by `k3s %s --help`)", err, role)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return cfg, cfg.validate()
}

// configFiles: the config file, then <file>.d/*.yaml in name order (those that exist).
func configFiles(configFile string) ([]string, error) {
	var files []string
	if _, err := os.Stat(configFile); err == nil {
		files = append(files, configFile)
	}
	dropins, err := filepath.Glob(configFile + ".d/*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(dropins)
	return append(files, dropins...), nil
}

// applyConfigFile sets flags from one YAML file: keys are flag names (a trailing "+" means the
// same, list values add up anyway), values are strings, numbers, booleans or lists of them. Keys
// of ignore (the server's flags, for an agent) are skipped and returned.
func applyConfigFile(fs, ignore *flag.FlagSet, path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for key := range doc {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var ignored []string
	for _, key := range keys {
		name := strings.TrimSuffix(key, "+")
		if fs.Lookup(name) == nil && ignore != nil && ignore.Lookup(name) != nil {
			ignored = append(ignored, path+": "+key)
			continue
		}
		if fs.Lookup(name) == nil {
			return nil, fmt.Errorf("%s: unknown key %q (this node implements the k3s flags listed by `%s --help`)", path, key, fs.Name())
		}
		values := []any{doc[key]}
		if list, ok := doc[key].([]any); ok {
			values = list
		}
		for _, value := range values {
			text := fmt.Sprint(value)
			if b, ok := value.(bool); ok {
				text = strconv.FormatBool(b)
			}
			if err := fs.Set(name, text); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", path, key, err)
			}
		}
	}
	return ignored, nil
}

func (c *Config) validate() error {
	var known []string
	known = append(known, nodeAddons...)
	known = append(known, absentK3sAddon...)
	var disable []string
	for _, entry := range c.Disable {
		for _, name := range strings.Split(entry, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			if !contains(known, name) {
				return fmt.Errorf("--disable=%s: unknown component (known: %s)", name, strings.Join(known, ", "))
			}
			disable = append(disable, name)
		}
	}
	c.Disable = disable
	for _, cidr := range []string{c.ClusterCIDR, c.ServiceCIDR} {
		if _, _, err := net.ParseCIDR(cidr); err != nil {
			return fmt.Errorf("bad CIDR %q: %w", cidr, err)
		}
	}
	if net.ParseIP(c.ClusterDNS) == nil {
		return fmt.Errorf("--cluster-dns=%s is not an IP address", c.ClusterDNS)
	}
	if c.NodeIP != "" && net.ParseIP(c.NodeIP).To4() == nil {
		return fmt.Errorf("--node-ip=%s is not an IPv4 address", c.NodeIP)
	}
	if c.KubeconfigMode != "" {
		if _, err := strconv.ParseUint(c.KubeconfigMode, 8, 32); err != nil {
			return fmt.Errorf("--write-kubeconfig-mode=%s is not an octal file mode", c.KubeconfigMode)
		}
	}
	if _, err := c.Labels(); err != nil {
		return err
	}
	if _, err := c.Taints(); err != nil {
		return err
	}
	if err := c.readToken(); err != nil {
		return err
	}
	if c.Role == RoleAgent {
		return c.validateAgent()
	}
	return nil
}

// readToken: --token-file's content when --token is not given (k3s's order).
func (c *Config) readToken() error {
	if c.Token != "" || c.TokenFile == "" {
		return nil
	}
	raw, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	c.Token = strings.TrimSpace(string(raw))
	if c.Token == "" {
		return fmt.Errorf("--token-file=%s is empty", c.TokenFile)
	}
	return nil
}

func (c *Config) validateAgent() error {
	if c.ServerURL == "" {
		return errors.New("an agent needs the server to join: --server or $K3S_URL (https://k3s:6443)")
	}
	u, err := url.Parse(c.ServerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("--server=%s: want https://host:port", c.ServerURL)
	}
	c.ServerURL = "https://" + u.Host
	if c.Token == "" {
		return errors.New("an agent needs the server's token: --token, --token-file or $K3S_TOKEN (the server's K3S_TOKEN)")
	}
	return nil
}

// Labels parses --node-label. A kubelet may give its own node only some labels in the
// kubernetes.io and k8s.io namespaces (the NodeRestriction admission plugin refuses the rest, and
// the kubelet refuses to start with them): those are refused here, with the rule, before anything
// starts. Labels of other prefixes (airflow-k3s/pool, example.com/x) and without one are fine.
func (c *Config) Labels() (map[string]string, error) {
	labels := map[string]string{}
	for _, entry := range c.NodeLabels {
		key, value, ok := strings.Cut(entry, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("--node-label=%s: want key=value", entry)
		}
		if err := checkLabelKey(key); err != nil {
			return nil, fmt.Errorf("--node-label=%s: %w", entry, err)
		}
		if len(value) > 63 || strings.ContainsAny(value, " ,/:=") {
			return nil, fmt.Errorf("--node-label=%s: a label value is at most 63 characters of [A-Za-z0-9_.-]", entry)
		}
		labels[key] = value
	}
	return labels, nil
}

// kubeletLabels: the labels of the kubernetes.io namespace a kubelet may set on its node, by key
// or by prefix (k8s.io/kubelet's IsKubeletLabel, Kubernetes 1.36).
var (
	kubeletLabels = []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
		"failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
		"beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type", "kubernetes.io/os",
		"kubernetes.io/arch", "beta.kubernetes.io/os", "beta.kubernetes.io/arch"}
	kubeletLabelNamespaces = []string{"kubelet.kubernetes.io", "node.kubernetes.io"}
)

func checkLabelKey(key string) error {
	prefix, name, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		prefix, name = "", key
	}
	if name == "" || len(name) > 63 || strings.ContainsAny(name, " ,/:=") || len(prefix) > 253 || strings.ContainsAny(prefix, " ,:=") {
		return errors.New("not a label key ([prefix/]name, name at most 63 characters)")
	}
	kubernetes := func(ns string) bool {
		return ns == "kubernetes.io" || strings.HasSuffix(ns, ".kubernetes.io") || ns == "k8s.io" || strings.HasSuffix(ns, ".k8s.io")
	}
	if !kubernetes(prefix) || contains(kubeletLabels, key) {
		return nil
	}
	for _, ns := range kubeletLabelNamespaces {
		if prefix == ns || strings.HasSuffix(prefix, "."+ns) {
			return nil
		}
	}
	return fmt.Errorf("a kubelet may not set this label on its own node (NodeRestriction): in the kubernetes.io and k8s.io namespaces only %s and the prefixes %s are allowed; use a prefix of your own (airflow-k3s/pool=...)",
		strings.Join(kubeletLabels, ", "), strings.Join(kubeletLabelNamespaces, ", "))
}

// Taint is one --node-taint.
type Taint struct{ Key, Value, Effect string }

// Taints parses --node-taint: key=value:Effect or key:Effect.
func (c *Config) Taints() ([]Taint, error) {
	var taints []Taint
	for _, entry := range c.NodeTaints {
		kv, effect, ok := strings.Cut(entry, ":")
		key, value, _ := strings.Cut(kv, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("--node-taint=%s: want key=value:Effect", entry)
		}
		if err := checkLabelKey(key); err != nil && !strings.Contains(err.Error(), "NodeRestriction") {
			return nil, fmt.Errorf("--node-taint=%s: %w", entry, err)
		}
		switch effect {
		case "NoSchedule", "PreferNoSchedule", "NoExecute":
		default:
			return nil, fmt.Errorf("--node-taint=%s: the effect is NoSchedule, PreferNoSchedule or NoExecute", entry)
		}
		taints = append(taints, Taint{Key: key, Value: value, Effect: effect})
	}
	return taints, nil
}

// Disabled reports whether --disable named this component.
func (c *Config) Disabled(name string) bool { return contains(c.Disable, name) }

func contains(list []string, value string) bool {
	for _, item := range list {
		if item == value {
			return true
		}
	}
	return false
}

// APIServiceIP is the first address of the service network: the "kubernetes" service.
func (c *Config) APIServiceIP() net.IP {
	_, network, _ := net.ParseCIDR(c.ServiceCIDR)
	ip := network.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+1)
}

// PodSubnet is this node's pod subnet: the first /24 of the cluster network (one node).
func (c *Config) PodSubnet() string {
	_, network, _ := net.ParseCIDR(c.ClusterCIDR)
	ip := network.IP.To4()
	return fmt.Sprintf("%d.%d.%d.0/24", ip[0], ip[1], ip[2])
}

// ResolveNode fills NodeName and NodeIP where the flags left them empty.
func (c *Config) ResolveNode(hostname func() (string, error), defaultIP func() (string, error)) error {
	if c.NodeName == "" {
		name, err := hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		c.NodeName = strings.ToLower(name)
	}
	if c.NodeIP == "" {
		ip, err := defaultIP()
		if err != nil {
			return fmt.Errorf("node IP (set --node-ip): %w", err)
		}
		c.NodeIP = ip
	}
	return nil
}
