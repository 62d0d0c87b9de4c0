package node

// containerd's config (version 3, containerd 2.x), the registry mirrors of registries.yaml as
// containerd hosts.toml files (what k3s does with the same file), and the CNI network.

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// defaultPauseImage is the sandbox image this node imports at start (local/node/build.sh makes
// it from Debian's catatonit and sets this name from versions.env): pods never pull it.
var defaultPauseImage = "docker.io/airflow-k3s/pause:catatonit-local"

func containerdConfig(c *Config, l Layout) string {
	return fmt.Sprintf(`# Written by the airflow-k3s node at every start.
version = 3
root = %q
state = "/run/k3s/containerd"

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # true where the node may not lower oom_score_adj (no CAP_SYS_RESOURCE): containerd then gives
  # pod sandboxes and containers no score below its own instead of failing to start them.
  restrict_oom_score_adj = %t
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
`, l.ContainerdRoot(), ContainerdSocket, c.PauseImage, l.ContainerdHostsDir(), c.RestrictOOMScoreAdj,
		cniBinDir, l.CNIConfDir())
}

// Registries is the part of k3s's registries.yaml this node implements: mirrors and their
// endpoints. (configs: auth and TLS settings per registry are refused with a clear error.)
type Registries struct {
	Mirrors map[string]struct {
		Endpoint []string `json:"endpoint"`
	} `json:"mirrors"`
	Configs map[string]any `json:"configs"`
}

// LoadRegistries reads registries.yaml; a missing file means no mirrors.
func LoadRegistries(path string) (*Registries, error) {
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return &Registries{}, nil
	} else if err != nil {
		return nil, err
	}
	var regs Registries
	if err := yaml.UnmarshalStrict(raw, &regs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(regs.Configs) > 0 {
		return nil, fmt.Errorf("%s: 'configs' (registry auth and TLS) is not implemented by this node; only 'mirrors'", path)
	}
	return &regs, nil
}

// HostsFiles renders one hosts.toml per mirrored registry (path relative to the certs.d dir).
// Endpoints are tried in order. The registry's own https endpoint comes last as "server", as in
// k3s, unless disableDefault: then the last endpoint is the server and nothing else is tried, so
// a missing image reads "not found" rather than an HTTPS error from a registry that speaks HTTP.
func (r *Registries) HostsFiles(disableDefault bool) (map[string]string, error) {
	files := map[string]string{}
	names := make([]string, 0, len(r.Mirrors))
	for name := range r.Mirrors {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		endpoints := r.Mirrors[name].Endpoint
		for _, endpoint := range endpoints {
			u, err := url.Parse(endpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, fmt.Errorf("mirror %q: endpoint %q is not an http(s) URL", name, endpoint)
			}
		}
		server := "https://" + name
		if name == "*" {
			server = ""
		}
		hosts := endpoints
		if disableDefault && len(endpoints) > 0 {
			server, hosts = endpoints[len(endpoints)-1], endpoints[:len(endpoints)-1]
		}
		var b strings.Builder
		b.WriteString("# Written by the airflow-k3s node from registries.yaml at every start.\n")
		if server != "" {
			fmt.Fprintf(&b, "server = %q\n", server)
		}
		for _, host := range hosts {
			fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", host)
		}
		dir := name
		if name == "*" {
			dir = "_default"
		}
		files[filepath.Join(dir, "hosts.toml")] = b.String()
	}
	return files, nil
}

// cniConfig is the pod network of a node: a bridge with host-local addresses from the node's pod
// subnet, and hostPort support (portmap). k3s uses flannel over the same kind of bridge; nodes
// that are containers on one Docker network need no overlay, only routes (routes.go). ipMasq is
// off: the node masquerades what leaves the cluster's pod network itself (routes.go), so that
// traffic between pods of different nodes keeps its pod addresses.
func cniConfig(podCIDR string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "airflow-k3s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, podCIDR)
}
