package node

// The server's approval of kubelet serving certificates (signer kubernetes.io/kubelet-serving).
// The controller-manager's csrapproving approves kubelet client certificates only; serving
// certificates are left to the cluster, because whoever approves one vouches for the names in it.
// The server CA signs them, the CA the API server verifies kubelets with, and the one clients
// verify the API server with: so a certificate is approved only for a node's own name and its own
// addresses, requested by that node itself, and never for a name of the API server.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"slices"
	"strings"
	"time"
)

const kubeletServingSigner = "kubernetes.io/kubelet-serving"

// apiCSR is the part of a CertificateSigningRequest the loop reads.
type apiCSR struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Request    []byte   `json:"request"` // PEM (base64 in JSON)
		SignerName string   `json:"signerName"`
		Username   string   `json:"username"`
		Groups     []string `json:"groups"`
		Usages     []string `json:"usages"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type string `json:"type"`
		} `json:"conditions"`
	} `json:"status"`
}

func (c apiCSR) pending() bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == "Approved" || cond.Type == "Denied" || cond.Type == "Failed" {
			return false
		}
	}
	return true
}

// servingCSRNode: the node a kubelet serving CSR is for, from its requester (the API server sets
// spec.username: the kubelet's client certificate), or an error if it is no node's.
func servingCSRNode(csr apiCSR) (string, error) {
	if csr.Spec.SignerName != kubeletServingSigner {
		return "", fmt.Errorf("signer %s", csr.Spec.SignerName)
	}
	name, ok := strings.CutPrefix(csr.Spec.Username, "system:node:")
	if !ok || name == "" || !slices.Contains(csr.Spec.Groups, "system:nodes") {
		return "", fmt.Errorf("requested by %s (groups %s), not by a node", csr.Spec.Username, strings.Join(csr.Spec.Groups, ","))
	}
	return name, nil
}

// approveServingCSR decides on a kubelet serving CSR: nil to approve, else why not. node is the
// requester's Node; reserved are names and IPs no node may have a certificate for (the API
// server's).
func approveServingCSR(csr apiCSR, node *apiNode, reserved []string) error {
	name, err := servingCSRNode(csr)
	if err != nil {
		return err
	}
	if node == nil || node.Metadata.Name != name {
		return fmt.Errorf("node %s is not registered", name)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return errors.New("spec.request is no PEM certificate request")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return fmt.Errorf("spec.request: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return fmt.Errorf("spec.request: %w", err)
	}
	if req.Subject.CommonName != csr.Spec.Username {
		return fmt.Errorf("CN %q is not the requester %s", req.Subject.CommonName, csr.Spec.Username)
	}
	if !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return fmt.Errorf("organization %v is not [system:nodes]", req.Subject.Organization)
	}
	if len(req.EmailAddresses) > 0 || len(req.URIs) > 0 {
		return errors.New("e-mail or URI names")
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return errors.New("no DNS name or IP address")
	}
	names := []string{name}
	ips := []string{}
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case "Hostname", "InternalDNS", "ExternalDNS":
			names = append(names, a.Address)
		case "InternalIP", "ExternalIP":
			ips = append(ips, a.Address)
		}
	}
	for _, dns := range req.DNSNames {
		if !slices.Contains(names, dns) || slices.Contains(reserved, dns) {
			return fmt.Errorf("DNS name %s is not node %s's (%s)", dns, name, strings.Join(names, ", "))
		}
	}
	for _, ip := range req.IPAddresses {
		if !slices.Contains(ips, ip.String()) || slices.Contains(reserved, ip.String()) {
			return fmt.Errorf("IP %s is not node %s's (%s)", ip, name, strings.Join(ips, ", "))
		}
	}
	if !slices.Contains(csr.Spec.Usages, "server auth") {
		return errors.New("no server auth usage")
	}
	for _, usage := range csr.Spec.Usages {
		if !slices.Contains([]string{"digital signature", "key encipherment", "server auth"}, usage) {
			return fmt.Errorf("usage %q", usage)
		}
	}
	return nil
}

// approveServingCSRs: every few seconds, the pending kubelet serving CSRs, approved or left
// pending with one line saying why (the kubelet asks again; a CSR nobody approves expires).
func (n *Node) approveServingCSRs(ctx context.Context, api *apiClient, interval time.Duration) {
	dns, ips := apiServerSANs(n.cfg)
	reserved := slices.Clone(dns)
	for _, ip := range ips {
		reserved = append(reserved, ip.String())
	}
	said := map[string]string{} // CSR -> the last reason it was not approved
	for {
		var list struct {
			Items []apiCSR `json:"items"`
		}
		if err := api.get(ctx, "/apis/certificates.k8s.io/v1/certificatesigningrequests", &list); err != nil && ctx.Err() == nil {
			log.Printf("serving certificates: cannot list CSRs: %v", err)
		}
		for _, csr := range list.Items {
			if csr.Spec.SignerName == kubeletServingSigner && csr.pending() {
				n.decideServingCSR(ctx, api, csr, reserved, said)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func (n *Node) decideServingCSR(ctx context.Context, api *apiClient, csr apiCSR, reserved []string, said map[string]string) {
	var node *apiNode
	if name, err := servingCSRNode(csr); err == nil {
		// A node that is not registered yet (nil) may be in a moment: the CSR is decided again.
		node, err = api.node(ctx, name)
		if err != nil && !isHTTP(err, 404) {
			log.Printf("serving certificates: CSR %s: cannot read node %s: %v", csr.Metadata.Name, name, err)
			return
		}
	}
	if err := approveServingCSR(csr, node, reserved); err != nil {
		if said[csr.Metadata.Name] != err.Error() {
			said[csr.Metadata.Name] = err.Error()
			log.Printf("serving certificates: CSR %s of %s NOT approved: %v", csr.Metadata.Name, csr.Spec.Username, err)
		}
		return
	}
	out, err := n.kubectl(ctx, "certificate", "approve", csr.Metadata.Name)
	if err != nil {
		log.Printf("serving certificates: approving CSR %s failed: %v: %s", csr.Metadata.Name, err, oneLine(out))
		return
	}
	delete(said, csr.Metadata.Name)
	log.Printf("serving certificates: approved CSR %s of %s", csr.Metadata.Name, csr.Spec.Username)
}
