package node

// A small client of the API server for the node's own loops (routes, serving-certificate
// approval, the agent's join): HTTPS and JSON, no client-go, so that the node's logic stays quick
// to build and test. Writes that happen rarely (approving a CSR, patching a node) go through
// kubectl instead, as the rest of the node does.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// apiClient talks to one API server as one user.
type apiClient struct {
	server string
	http   *http.Client
	token  string // a bearer token, if the user is one (the bootstrap token)
}

// newAPIClient: tlsConfig says whom to trust and, if it has a certificate, who we are.
func newAPIClient(server string, tlsConfig *tls.Config, token string) *apiClient {
	return &apiClient{
		server: server,
		http:   &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}, Timeout: 15 * time.Second},
		token:  token,
	}
}

// httpError is an answer other than 200, with the API server's message.
type httpError struct {
	Code int
	Msg  string
}

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Code, e.Msg) }

func isHTTP(err error, code int) bool {
	var h *httpError
	return errors.As(err, &h) && h.Code == code
}

// get reads path into out (JSON).
func (a *apiClient) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.server+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var status struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &status) != nil || status.Message == "" {
			status.Message = oneLine(body)
		}
		return &httpError{Code: resp.StatusCode, Msg: status.Message}
	}
	return json.Unmarshal(body, out)
}

// kubeconfigFile is the part of a kubeconfig the node reads: the first cluster and user (the
// kubeconfigs it reads, its own and the kubelet's, have one of each).
type kubeconfigFile struct {
	Clusters []struct {
		Cluster struct {
			Server string `json:"server"`
			CAData string `json:"certificate-authority-data"`
			CAFile string `json:"certificate-authority"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		User struct {
			CertFile string `json:"client-certificate"`
			KeyFile  string `json:"client-key"`
			CertData string `json:"client-certificate-data"`
			KeyData  string `json:"client-key-data"`
			Token    string `json:"token"`
		} `json:"user"`
	} `json:"users"`
}

func parseKubeconfig(raw []byte) (*kubeconfigFile, error) {
	var kc kubeconfigFile
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, err
	}
	if len(kc.Clusters) == 0 || kc.Clusters[0].Cluster.Server == "" {
		return nil, errors.New("no cluster in the kubeconfig")
	}
	return &kc, nil
}

// caPEM: the cluster's CA certificate(s), inline or from the file named.
func (k *kubeconfigFile) caPEM() ([]byte, error) {
	cluster := k.Clusters[0].Cluster
	if cluster.CAData != "" {
		return base64.StdEncoding.DecodeString(cluster.CAData)
	}
	if cluster.CAFile != "" {
		return os.ReadFile(cluster.CAFile)
	}
	return nil, errors.New("the kubeconfig names no certificate authority")
}

// clientFromKubeconfig: a client as the kubeconfig's user. A certificate in files is read again
// at every new connection, so a rotated certificate (the kubelet's) is picked up.
func clientFromKubeconfig(path string) (*apiClient, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kc, err := parseKubeconfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ca, err := kc.caPEM()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no CA certificate in it", path)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	var token string
	if len(kc.Users) > 0 {
		user := kc.Users[0].User
		token = user.Token
		switch {
		case user.CertData != "":
			certPEM, err1 := base64.StdEncoding.DecodeString(user.CertData)
			keyPEM, err2 := base64.StdEncoding.DecodeString(user.KeyData)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		case user.CertFile != "":
			certFile, keyFile := user.CertFile, user.KeyFile
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				pair, err := tls.LoadX509KeyPair(certFile, keyFile)
				return &pair, err
			}
		}
	}
	return newAPIClient(kc.Clusters[0].Cluster.Server, cfg, token), nil
}

// apiNode is the part of a Node the node's loops read.
type apiNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
	Status struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

// address: the node's first address of this type ("" if none).
func (n apiNode) address(kind string) string {
	for _, a := range n.Status.Addresses {
		if a.Type == kind {
			return a.Address
		}
	}
	return ""
}

func (a *apiClient) node(ctx context.Context, name string) (*apiNode, error) {
	var node apiNode
	if err := a.get(ctx, "/api/v1/nodes/"+name, &node); err != nil {
		return nil, err
	}
	return &node, nil
}

func (a *apiClient) nodes(ctx context.Context) ([]apiNode, error) {
	var list struct {
		Items []apiNode `json:"items"`
	}
	if err := a.get(ctx, "/api/v1/nodes", &list); err != nil {
		return nil, err
	}
	return list.Items, nil
}
