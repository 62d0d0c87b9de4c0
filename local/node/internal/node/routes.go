package node

// The pod network across nodes, as kind's kindnetd makes it: every node is a container on one
// Docker network, each node's pods are on its own bridge in its own /24 (spec.podCIDR), and every
// node keeps a route to each other node's /24 via that node's address on the Docker network. No
// overlay, no encapsulation: Docker's bridge carries the pod addresses between the containers.
//
// Masquerading: the bridge CNI plugin's ipMasq would rewrite the source of everything leaving the
// node's /24, pod-to-pod traffic to other nodes included (it works, but pods would see the node's
// address instead of the pod's). So the CNI config turns ipMasq off and the node masquerades only
// what leaves the cluster's pod network (compose services, the internet), as kindnetd's
// ip-masq-agent does: traffic between pods keeps its pod addresses on every node.

import (
	"context"
	"fmt"
	"log"
	"net"
	"sort"
	"strings"
	"time"
)

const (
	// routeProtocol marks the routes the loop owns (a protocol number iproute2's rt_protos leaves
	// free): it replaces and deletes those only, never a route someone else made.
	routeProtocol = "200"
	masqChain     = "AIRFLOW-K3S-MASQ"
)

// wantedRoutes: pod CIDR -> next hop, for every node but self that has both a pod CIDR and an
// InternalIP (IPv4).
func wantedRoutes(nodes []apiNode, self string) map[string]string {
	wanted := map[string]string{}
	for _, node := range nodes {
		if node.Metadata.Name == self {
			continue
		}
		via := net.ParseIP(node.address("InternalIP"))
		cidrs := node.Spec.PodCIDRs
		if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
			cidrs = []string{node.Spec.PodCIDR}
		}
		for _, cidr := range cidrs {
			_, network, err := net.ParseCIDR(cidr)
			if err != nil || network.IP.To4() == nil || via == nil || via.To4() == nil {
				continue
			}
			wanted[network.String()] = via.String()
		}
	}
	return wanted
}

// routeChanges: what turns current into wanted (both pod CIDR -> next hop): routes to replace
// (new or with another next hop) and routes to delete, sorted.
func routeChanges(current, wanted map[string]string) (replace [][2]string, remove []string) {
	for cidr, via := range wanted {
		if current[cidr] != via {
			replace = append(replace, [2]string{cidr, via})
		}
	}
	for cidr := range current {
		if _, ok := wanted[cidr]; !ok {
			remove = append(remove, cidr)
		}
	}
	sort.Slice(replace, func(i, j int) bool { return replace[i][0] < replace[j][0] })
	sort.Strings(remove)
	return replace, remove
}

// parseRoutes reads `ip -4 -o route show proto N`: "10.42.1.0/24 via 172.18.0.5 dev eth0 ...".
func parseRoutes(out string) map[string]string {
	routes := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		for i := 1; i+1 < len(fields); i++ {
			if fields[i] == "via" {
				routes[fields[0]] = fields[i+1]
			}
		}
	}
	return routes
}

// routeLoop keeps the routes to the other nodes' pods every interval, until ctx ends.
func (n *Node) routeLoop(ctx context.Context, api *apiClient, interval time.Duration) {
	lastErr := ""
	for {
		if err := n.syncRoutes(ctx, api); err != nil && ctx.Err() == nil && err.Error() != lastErr {
			log.Printf("pod routes: %v (tried again every %s)", err, interval)
			lastErr = err.Error()
		} else if err == nil {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func (n *Node) syncRoutes(ctx context.Context, api *apiClient) error {
	nodes, err := api.nodes(ctx)
	if err != nil {
		return fmt.Errorf("cannot list nodes: %w", err)
	}
	out, err := n.sup.Run(ctx, "ip route show", []string{"ip", "-4", "-o", "route", "show", "proto", routeProtocol}, nil)
	if err != nil {
		return fmt.Errorf("%v: %s", err, oneLine(out))
	}
	replace, remove := routeChanges(parseRoutes(string(out)), wantedRoutes(nodes, n.cfg.NodeName))
	var failed []string
	for _, r := range replace {
		out, err := n.sup.Run(ctx, "ip route replace", []string{"ip", "route", "replace", r[0], "via", r[1], "proto", routeProtocol}, nil)
		if err != nil {
			failed = append(failed, fmt.Sprintf("ip route replace %s via %s: %v: %s", r[0], r[1], err, oneLine(out)))
			continue
		}
		log.Printf("pod routes: %s via %s", r[0], r[1])
	}
	for _, cidr := range remove {
		out, err := n.sup.Run(ctx, "ip route del", []string{"ip", "route", "del", cidr, "proto", routeProtocol}, nil)
		if err != nil {
			failed = append(failed, fmt.Sprintf("ip route del %s: %v: %s", cidr, err, oneLine(out)))
			continue
		}
		log.Printf("pod routes: %s removed (its node is gone)", cidr)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return nil
}

// masqueradeRules: the rules of the node's nat chain, in order, that masquerade what its pods send
// out of the cluster's pod network, and nothing else (the bridge plugin's ipMasq rule, minus the
// traffic between pods of different nodes).
func masqueradeRules(clusterCIDR string) [][]string {
	return [][]string{
		{"-A", masqChain, "-d", clusterCIDR, "-j", "RETURN"},
		{"-A", masqChain, "-d", "224.0.0.0/4", "-j", "RETURN"},
		{"-A", masqChain, "-j", "MASQUERADE"},
	}
}

// setupMasquerade writes masqueradeRules into its own chain (flushed and refilled: idempotent)
// and hooks it into POSTROUTING for the node's pod CIDR once. It uses `iptables`, the tool and
// backend the CNI plugins use.
func (n *Node) setupMasquerade(ctx context.Context, podCIDR string) error {
	ipt := func(args ...string) error {
		out, err := n.sup.Run(ctx, "iptables", append([]string{"iptables", "-w", "5", "-t", "nat"}, args...), nil)
		if err != nil {
			return fmt.Errorf("iptables -t nat %s: %v: %s", strings.Join(args, " "), err, oneLine(out))
		}
		return nil
	}
	_ = ipt("-N", masqChain) // exists after a restart
	if err := ipt("-F", masqChain); err != nil {
		return err
	}
	for _, rule := range masqueradeRules(n.cfg.ClusterCIDR) {
		if err := ipt(rule...); err != nil {
			return err
		}
	}
	hook := []string{"POSTROUTING", "-s", podCIDR, "-m", "comment", "--comment", "airflow-k3s: pods leaving the pod network", "-j", masqChain}
	if ipt(append([]string{"-C"}, hook...)...) != nil {
		if err := ipt(append([]string{"-A"}, hook...)...); err != nil {
			return err
		}
	}
	log.Printf("pod network: %s masqueraded when leaving %s (pod-to-pod traffic between nodes keeps its addresses)", podCIDR, n.cfg.ClusterCIDR)
	return nil
}
