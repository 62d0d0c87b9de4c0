package node

// The node side of both roles: containerd's configuration, the registry mirrors, the CNI network,
// the kubelet's and kube-proxy's files; containerd itself and the images it imports at start.

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ---------------------------------------------------------------- agent: containerd and friends

// writeAgentConfig: the server's node files. Its pod subnet is the first /24 (PodSubnet), known
// before anything starts.
func (n *Node) writeAgentConfig() error {
	c, l := n.cfg, n.l
	if err := n.writeContainerdConfig(); err != nil {
		return err
	}
	files := map[string]string{
		n.cniConfFile():                   cniConfig(c.PodSubnet()),
		l.Agent("kubelet-config.yaml"):    kubeletConfig(c, l),
		l.Agent("kube-proxy-config.yaml"): kubeProxyConfig(c, l),
	}
	for path, text := range files {
		if err := writeFile(path, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return os.MkdirAll(l.Manifests(), 0o755)
}

func (n *Node) cniConfFile() string {
	return filepath.Join(n.l.CNIConfDir(), "10-airflow-k3s.conflist")
}

// writeContainerdConfig: containerd's config and registry mirrors (registries.yaml), and the
// folders the node's components expect.
func (n *Node) writeContainerdConfig() error {
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
	if err := writeFile(l.ContainerdConfig(), []byte(containerdConfig(c, l)), 0o644); err != nil {
		return err
	}
	for _, dir := range []string{l.ImagesDir(), l.CNIConfDir(), filepath.Dir(l.Logs("x")), kubeletRootDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	logPath := n.l.Logs("containerd.log")
	p, err := n.supervise("containerd", func() (*Proc, error) {
		out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer out.Close()
		p, err := n.sup.Start("containerd", []string{"/usr/local/bin/containerd", "--config", n.l.ContainerdConfig()}, os.Environ(), out)
		if err != nil {
			return nil, err
		}
		log.Printf("started containerd (pid %d, log %s)", p.cmd.Process.Pid, logPath)
		return p, nil
	})
	if err != nil {
		return err
	}
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
