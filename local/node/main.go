// Command k3s is the Kubernetes node of airflow-k3s's local image source (IMAGES=local).
//
// The Go module proxy that these machines reach does not serve k3s or the forks its go.mod
// replaces to (github.com/k3s-io/kubernetes, ...), so this program assembles the same Kubernetes
// minor from upstream modules the way k3s does: one multicall binary at /bin/k3s that is
//
//	k3s server [flags]        the node: certificates, containerd, etcd, kube-apiserver,
//	                          kube-controller-manager, kube-scheduler, kubelet and kube-proxy,
//	                          the manifests folder kept applied, kubeconfig written
//	                          (internal/node: all of the node's logic, tested without Kubernetes)
//	k3s agent [flags]         a node that joins the server ($K3S_URL, $K3S_TOKEN) by the kubelet's
//	                          TLS bootstrap: containerd, kubelet and kube-proxy
//	k3s kubectl ... | kubectl the kubectl of the same release (default kubeconfig: k3s's)
//	k3s ctr ... | ctr         containerd's ctr against the node's containerd socket
//	k3s <component> ...       one component (the server starts each as its own process)
//
// It accepts the k3s flags that docker-compose.yml and the agents' services pass, reads
// /etc/rancher/k3s/config.yaml and config.yaml.d/*.yaml like k3s, and rejects flags it does not
// implement with one line.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"

	"airflow-k3s/node/internal/node"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	node.KubernetesVersion = version.Get().GitVersion
	name, args := node.Subcommand(os.Args)
	os.Exit(run(name, args))
}

func run(name string, args []string) int {
	switch name {
	case "server":
		return node.ServerMain(args)
	case "agent":
		return node.AgentMain(args)
	case "kubectl":
		return kubectlMain(args)
	case "ctr":
		return ctrMain(args)
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	case "kube-apiserver":
		return component(apiserver.NewAPIServerCommand(), args)
	case "kube-controller-manager":
		return component(controllermanager.NewControllerManagerCommand(), args)
	case "kube-scheduler":
		return component(scheduler.NewSchedulerCommand(), args)
	case "kubelet":
		return component(kubelet.NewKubeletCommand(context.Background()), args)
	case "kube-proxy":
		return component(proxy.NewProxyCommand(), args)
	case "--version", "-v", "version":
		fmt.Printf("k3s version %s (airflow-k3s local node %s)\n", node.KubernetesVersion, node.NodeVersion)
		fmt.Printf("kubernetes %s, %s, containerd %s, coredns %s\n",
			node.KubernetesVersion, version.Get().GoVersion, node.ContainerdVersion, node.CorednsVersion)
		return 0
	case "help", "--help", "-h":
		fmt.Println("usage: k3s server [flags] | k3s agent [flags] | k3s kubectl ... | k3s ctr ... | k3s --version")
		return 0
	default:
		fmt.Fprintf(os.Stderr, "k3s: unknown command %q (this node implements: server, agent, kubectl, ctr, --version)\n", name)
		return 2
	}
}

func component(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

// kubectlMain is kubectl, defaulting to the node's admin kubeconfig as k3s's kubectl does.
func kubectlMain(args []string) int {
	if os.Getenv("KUBECONFIG") == "" && !hasFlag(args, "kubeconfig") {
		if _, err := os.Stat(node.DefaultKubeconfig); err == nil {
			os.Setenv("KUBECONFIG", node.DefaultKubeconfig)
		}
	}
	cmd := kubectlcmd.NewDefaultKubectlCommand()
	cmd.SetArgs(args)
	if err := cli.RunNoErrOutput(cmd); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

// ctrMain runs containerd's ctr against the node's containerd, in Kubernetes' namespace.
func ctrMain(args []string) int {
	argv := []string{"ctr", "--address", node.ContainerdSocket}
	if os.Getenv("CONTAINERD_NAMESPACE") == "" && !hasFlag(args, "namespace") && !hasFlag(args, "n") {
		argv = append(argv, "--namespace", "k8s.io")
	}
	err := syscall.Exec(node.CtrBinary, append(argv, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "k3s ctr: cannot run %s: %v\n", node.CtrBinary, err)
	return 1
}

// hasFlag reports whether args contain --name or -name, with or without "=value".
func hasFlag(args []string, name string) bool {
	for _, arg := range args {
		if arg == "--" {
			return false
		}
		trimmed := strings.TrimLeft(arg, "-")
		if trimmed != arg && (trimmed == name || strings.HasPrefix(trimmed, name+"=")) {
			return true
		}
	}
	return false
}
