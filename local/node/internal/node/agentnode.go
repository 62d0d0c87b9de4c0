package node

// `k3s agent`: a node that joins a server (join.go says how), started in this order, each step
// logged:
//
//  1. configuration: flags, $K3S_URL, $K3S_TOKEN, $K3S_NODE_NAME, config.yaml and config.yaml.d
//     (keys only a server has are ignored, as k3s does)
//  2. containerd (config, registry mirrors), then the images the node needs
//  3. join: the server's CA by discovery (cluster-info, its JWS checked with the token), the
//     server's settings (airflow-k3s-agent-config), the bootstrap kubeconfig; credentials of
//     another cluster removed. An agent that joined before reads the settings with its kubelet's
//     credential instead, and needs neither the token nor discovery (a changed K3S_TOKEN does not
//     cut off nodes that joined)
//  4. kubelet: it gets its certificate by CSR (or keeps the valid one it has) and registers the
//     node; once the server's controller-manager has given the node its pod CIDR, the CNI config
//     for it and the masquerade rule
//  5. kube-proxy, with the node's credential
//  6. the routes to the other nodes' pods kept (routes.go)
//
// Supervision (a component that exits is started again), SIGTERM and exit codes as the server's.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// AgentMain is `k3s agent`.
func AgentMain(args []string) int {
	log.SetFlags(log.Ldate | log.Ltime | log.Lmicroseconds)
	log.SetPrefix("airflow-k3s node: ")
	cfg, err := LoadAgentConfig(args, os.Getenv, configFile)
	if err != nil {
		log.Printf("ERROR: %v", err)
		return 2
	}
	if err := cfg.ResolveNode(os.Hostname, defaultRouteIP); err != nil {
		log.Printf("ERROR: %v", err)
		return 2
	}
	n := &Node{cfg: cfg, l: Layout{DataDir: cfg.DataDir}, sup: NewSupervisor()}
	if err := n.run(n.agentStartUp, n.agentLoops); err != nil {
		log.Printf("ERROR: %v", err)
		return 1
	}
	return 0
}

func (n *Node) agentStartUp(ctx context.Context) error {
	c, l := n.cfg, n.l
	step("containerd")
	if err := n.writeContainerdConfig(); err != nil {
		return err
	}
	// The pod CIDR is the server's to give (step 4): until then no CNI config, so no pod starts
	// with an address of an earlier registration.
	if err := os.Remove(n.cniConfFile()); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx); err != nil {
		return err
	}

	step("join " + c.ServerURL)
	if err := n.join(ctx); err != nil {
		return err
	}

	step("kubelet")
	if _, err := n.start("kubelet", "kubelet", agentKubeletArgs(c, l)); err != nil {
		return err
	}
	podCIDR, err := n.waitPodCIDR(ctx)
	if err != nil {
		return err
	}
	if err := writeFile(n.cniConfFile(), []byte(cniConfig(podCIDR)), 0o644); err != nil {
		return err
	}
	if err := n.setupMasquerade(ctx, podCIDR); err != nil {
		return err
	}

	step("kube-proxy")
	_, err = n.start("kube-proxy", "kube-proxy", kubeProxyArgs(c, l))
	return err
}

func (n *Node) agentLoops(ctx context.Context) {
	api, err := clientFromKubeconfig(n.l.Agent("kubelet.kubeconfig"))
	if err != nil { // it was read a moment ago (waitPodCIDR)
		log.Printf("ERROR: pod routes: %v", err)
		return
	}
	go n.routeLoop(ctx, api, 5*time.Second)
	go n.watchCredential(ctx, api, 10*time.Second, 2*time.Minute)
	step("running; routes to other nodes' pods kept")
}

// watchCredential: if the server refuses the node's credential for a while (its data was wiped:
// another CA; the certificate expired while the node was cut off), the kubelet cannot recover on
// its own. Then the node stops, loudly; started again, it joins anew with the token (rejoin).
func (n *Node) watchCredential(ctx context.Context, api *apiClient, every, patience time.Duration) {
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		_, err := api.node(ctx, n.cfg.NodeName)
		var unknownCA *tls.CertificateVerificationError
		if !isHTTP(err, 401) && !errors.As(err, &unknownCA) {
			since = time.Time{}
			continue
		}
		if since.IsZero() {
			since = time.Now()
			log.Printf("the server refuses this node's credential: %v (the node stops if this lasts %s, and joins anew when started again)", err, patience)
		}
		if time.Since(since) >= patience {
			n.broken <- fmt.Errorf("the server has refused this node's credential for %s (%v): stopping; started again, the node joins anew with the token", patience, err)
			return
		}
	}
}

// join does steps 1-3 of join.go's agent side, and writes the files the kubelet and kube-proxy
// start with. An agent that joined before rejoins with its own credential (rejoin); one that
// has none, or one the server no longer accepts, joins with the token.
func (n *Node) join(ctx context.Context) error {
	serverCA, clientCA, err := n.rejoin(ctx)
	if err != nil {
		return err
	}
	if serverCA == nil {
		if serverCA, clientCA, err = n.tokenJoin(ctx); err != nil {
			return err
		}
	}
	c, l := n.cfg, n.l
	log.Printf("the server's settings: cluster CIDR %s, service CIDR %s, DNS %s (%s)", c.ClusterCIDR, c.ServiceCIDR, c.ClusterDNS, c.ClusterDomain)
	id, secret := BootstrapToken(c.Token)
	bootstrap := Kubeconfig{Server: c.ServerURL, CAPEM: serverCA, Token: id + "." + secret}
	files := []struct {
		path string
		text string
		mode os.FileMode
	}{
		{l.Agent("bootstrap.kubeconfig"), string(bootstrap.Render()), 0o600},
		{l.Agent("client-ca.crt"), string(clientCA), 0o644},
		{l.Agent("server-ca.crt"), string(serverCA), 0o644},
		{l.Agent("kubelet-config.yaml"), agentKubeletConfig(c, l), 0o644},
		{l.Agent("kube-proxy-config.yaml"), agentKubeProxyConfig(c, l), 0o644},
	}
	for _, f := range files {
		if err := writeFile(f.path, []byte(f.text), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// errNotAccepted: the server refuses the kubelet's credential (another cluster's, or expired).
var errNotAccepted = errors.New("the server does not accept the kubelet's credential")

// rejoin: an agent whose kubelet has a kubeconfig for this server reads the server's settings
// with it (nodes may), over TLS verified with the CA in it: no token and no discovery needed, so
// it rejoins as itself even if the server's token has changed since. It returns no CAs when there
// is no such kubeconfig, or the server does not accept it: its files are then removed, and the
// agent joins with the token.
func (n *Node) rejoin(ctx context.Context) (serverCA, clientCA []byte, err error) {
	c, l := n.cfg, n.l
	kubeconfig := l.Agent("kubelet.kubeconfig")
	raw, err := os.ReadFile(kubeconfig)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	var api *apiClient
	kc, err := parseKubeconfig(raw)
	if err == nil {
		serverCA, err = kc.caPEM()
	}
	if err == nil && kc.Clusters[0].Cluster.Server != c.ServerURL {
		err = fmt.Errorf("it is for %s, not %s", kc.Clusters[0].Cluster.Server, c.ServerURL)
	}
	if err == nil {
		api, err = clientFromKubeconfig(kubeconfig)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err == nil {
		err = waitFor(ctx, 5*time.Minute, "the server's "+agentConfigName+" (with the kubelet's credential)", func(ctx context.Context) error {
			err := api.get(ctx, agentConfigPath, &cm)
			var unknownCA *tls.CertificateVerificationError
			if isHTTP(err, 401) || errors.As(err, &unknownCA) {
				return fatal{fmt.Errorf("%w: %v", errNotAccepted, err)}
			}
			return err
		})
		if ctx.Err() != nil || (err != nil && !errors.Is(err, errNotAccepted)) {
			return nil, nil, err // the server did not answer
		}
	}
	if err == nil {
		clientCA, err = applyAgentConfig(c, cm.Data)
	}
	if err == nil {
		log.Printf("rejoined as node %s with the kubelet's credential (%s; no CSR while it is valid)", c.NodeName, kubeconfig)
		return serverCA, clientCA, nil
	}
	log.Printf("%s cannot be used (%v): removing it and the kubelet's client certificates; joining with the token", kubeconfig, err)
	stale, _ := filepath.Glob(filepath.Join(l.KubeletCertDir(), "kubelet-client-*"))
	for _, file := range append(stale, kubeconfig) {
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	return nil, nil, nil
}

// tokenJoin: discovery and the server's settings with the bootstrap token (join.go, steps 1-2).
func (n *Node) tokenJoin(ctx context.Context) (serverCA, clientCA []byte, err error) {
	c, l := n.cfg, n.l
	id, secret := BootstrapToken(c.Token)
	said := ""
	err = waitFor(ctx, 5*time.Minute, "the server's cluster-info, signed with bootstrap token "+id, func(ctx context.Context) error {
		ca, err := discover(ctx, c.ServerURL, id, secret)
		if err != nil && strings.Contains(err.Error(), "does not verify") {
			return fatal{err} // a wrong token does not get right by waiting
		}
		if err != nil && err.Error() != said { // each new reason once, while waiting
			said = err.Error()
			log.Printf("discovery: %v (trying again)", err)
		}
		serverCA = ca
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	pool, err := certPool(serverCA)
	if err != nil {
		return nil, nil, err
	}
	log.Printf("discovery: the server's CA %s (cluster-info's signature verified with the token)", fingerprint(serverCA))

	// From here on the server is verified: the bootstrap token may be sent to it.
	api := newAPIClient(c.ServerURL, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, id+"."+secret)
	var cm struct {
		Data map[string]string `json:"data"`
	}
	err = waitFor(ctx, 2*time.Minute, "the server's "+agentConfigName, func(ctx context.Context) error {
		return api.get(ctx, agentConfigPath, &cm)
	})
	if err != nil {
		return nil, nil, err
	}
	if clientCA, err = applyAgentConfig(c, cm.Data); err != nil {
		return nil, nil, err
	}
	// Certificates another cluster signed (a serving certificate, left by a kubeconfig that
	// rejoin removed) would be kept by the kubelet while they have not expired.
	for file, why := range staleKubeletCredentials(l.Agent("kubelet.kubeconfig"), l.KubeletCertDir(), serverCA, clientCA) {
		log.Printf("removing %s: %s (the kubelet requests a new certificate)", file, why)
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	log.Printf("the kubelet requests its client certificate (a CSR as system:bootstrap:%s)", id)
	return serverCA, clientCA, nil
}

// waitPodCIDR waits for the kubelet's kubeconfig (written after its CSR), the node's registration
// and the pod CIDR the server's controller-manager gives it.
func (n *Node) waitPodCIDR(ctx context.Context) (string, error) {
	var podCIDR string
	err := waitFor(ctx, 5*time.Minute, "the node's registration and pod CIDR", func(ctx context.Context) error {
		api, err := clientFromKubeconfig(n.l.Agent("kubelet.kubeconfig"))
		if err != nil {
			return fmt.Errorf("no kubelet credential yet: %w", err)
		}
		node, err := api.node(ctx, n.cfg.NodeName)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.cfg.NodeName, err)
		}
		if node.Spec.PodCIDR == "" {
			return fmt.Errorf("node %s is registered, without a pod CIDR yet (the server's controller-manager gives it)", n.cfg.NodeName)
		}
		podCIDR = node.Spec.PodCIDR
		return nil
	})
	if err == nil {
		log.Printf("node %s: pod CIDR %s", n.cfg.NodeName, podCIDR)
	}
	return podCIDR, err
}

// fingerprint: SHA-256 of the CA's public key (SubjectPublicKeyInfo), kubeadm's
// --discovery-token-ca-cert-hash format.
func fingerprint(pemData []byte) string {
	certs, err := parseCerts(pemData)
	if err != nil {
		return "(unreadable)"
	}
	sum := sha256.Sum256(certs[0].RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
