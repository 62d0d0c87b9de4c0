package node

// The node's configuration: the k3s server flags it implements, read like k3s reads them (config
// file, then config.yaml.d drop-ins in name order, then the command line; list flags add up).

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Config is everything `k3s server` can be told.
type Config struct {
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

func (c *Config) flagSet(output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("k3s server", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&c.DataDir, "data-dir", "/var/lib/rancher/k3s", "data directory")
	fs.StringVar(&c.NodeName, "node-name", "", "node name (default: $K3S_NODE_NAME, else the hostname)")
	fs.StringVar(&c.NodeIP, "node-ip", "", "node IPv4 address (default: the default route's interface)")
	fs.Var(listFlag{&c.TLSSANs}, "tls-san", "extra name or IP in the API server's certificate")
	fs.Var(listFlag{&c.Disable}, "disable", "do not deploy this packaged component")
	fs.StringVar(&c.ResolvConf, "resolv-conf", "", "resolv.conf for the kubelet (pods with dnsPolicy Default, CoreDNS upstream)")
	fs.StringVar(&c.KubeconfigOutput, "write-kubeconfig", "", "write the admin kubeconfig here too")
	fs.StringVar(&c.KubeconfigMode, "write-kubeconfig-mode", "", "file mode of that kubeconfig (octal)")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", "10.42.0.0/16", "pod network")
	fs.StringVar(&c.ServiceCIDR, "service-cidr", "10.43.0.0/16", "service network")
	fs.StringVar(&c.ClusterDNS, "cluster-dns", "10.43.0.10", "CoreDNS service IP")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "cluster domain")
	fs.IntVar(&c.HTTPSPort, "https-listen-port", 6443, "API server port")
	fs.StringVar(&c.PauseImage, "pause-image", defaultPauseImage, "pod sandbox image")
	fs.StringVar(&c.RegistriesFile, "private-registry", "/etc/rancher/k3s/registries.yaml", "registry mirrors")
	fs.BoolVar(&c.DisableDefaultRegistryEndpoint, "disable-default-registry-endpoint", false,
		"no fallback to the registry's own https endpoint for mirrored registries")
	fs.BoolVar(&c.RestrictOOMScoreAdj, "restrict-oom-score-adj", false,
		"containerd never lowers a container's oom_score_adj below its own")
	fs.Var(listFlag{&c.KubeletArgs}, "kubelet-arg", "extra kubelet flag (name=value)")
	fs.Var(listFlag{&c.APIServerArgs}, "kube-apiserver-arg", "extra kube-apiserver flag")
	fs.Var(listFlag{&c.ControllerArgs}, "kube-controller-manager-arg", "extra kube-controller-manager flag")
	fs.Var(listFlag{&c.SchedulerArgs}, "kube-scheduler-arg", "extra kube-scheduler flag")
	fs.Var(listFlag{&c.KubeProxyArgs}, "kube-proxy-arg", "extra kube-proxy flag")
	fs.Var(listFlag{&c.EtcdArgs}, "etcd-arg", "extra etcd flag")
	return fs
}

// k3s's short flag names and environment variables, for the flags that have them.
var (
	flagAliases = map[string]string{"o": "write-kubeconfig"}
	flagEnv     = map[string]string{
		"node-name":             "K3S_NODE_NAME",
		"node-ip":               "K3S_NODE_IP",
		"resolv-conf":           "K3S_RESOLV_CONF",
		"write-kubeconfig":      "K3S_KUBECONFIG_OUTPUT",
		"write-kubeconfig-mode": "K3S_KUBECONFIG_MODE",
		"data-dir":              "K3S_DATA_DIR",
	}
)

// LoadConfig reads the environment, the config file and its drop-ins, then args.
func LoadConfig(args []string, getenv func(string) string, configFile string) (*Config, error) {
	cfg := &Config{}
	var usage strings.Builder
	fs := cfg.flagSet(&usage)
	for name, env := range flagEnv {
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
		if err := applyConfigFile(fs, file); err != nil {
			return nil, err
		}
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
		return nil, fmt.Errorf("%v (this node implements the k3s flags listed by `k3s server --help`)", err)
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
// same, list values add up anyway), values are strings, numbers, booleans or lists of them.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for key := range doc {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		name := strings.TrimSuffix(key, "+")
		if fs.Lookup(name) == nil {
			return fmt.Errorf("%s: unknown key %q (this node implements the k3s flags listed by `k3s server --help`)", path, key)
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
				return fmt.Errorf("%s: %s: %w", path, key, err)
			}
		}
	}
	return nil
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
	return nil
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
