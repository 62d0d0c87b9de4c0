package node

// Certificates and keys of the node, kept in <data-dir>/server/tls and <data-dir>/agent like
// k3s's: two CAs (server: what clients verify; client: whom the API server and kubelet trust),
// serving certificates for the API server and the kubelet, one client certificate per user, and
// the service-account signing key. Made once, kept across restarts (the kubeconfig copies that
// users hold stay valid), and a leaf is made anew only when what it must say has changed (a new
// node IP, another --tls-san) or it expires within 30 days.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// CA is a certificate authority on disk.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// CertSpec is what a leaf certificate must say.
type CertSpec struct {
	CommonName string
	Orgs       []string
	DNSNames   []string
	IPs        []net.IP
	Server     bool
	Client     bool
}

// EnsureCA loads <base>.crt/.key or makes a new CA there.
func EnsureCA(base, commonName string) (*CA, error) {
	if cert, key, certPEM, err := loadPair(base); err == nil && cert.IsCA {
		return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (delete it to make a new CA)", base, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("%s@%d", commonName, now.Unix())},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return nil, err
	}
	if err := writePair(base, der, key); err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der)}, nil
}

// EnsureLeaf keeps <base>.crt/.key when they still match spec and ca, else makes them anew.
// It reports whether it made a new certificate.
func EnsureLeaf(base string, ca *CA, spec CertSpec) (bool, error) {
	if cert, _, _, err := loadPair(base); err == nil && leafMatches(cert, ca, spec, time.Now()) {
		return false, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: spec.CommonName, Organization: spec.Orgs},
		DNSNames:     spec.DNSNames,
		IPAddresses:  spec.IPs,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  spec.extKeyUsage(),
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return false, err
	}
	return true, writePair(base, der, key)
}

func (s CertSpec) extKeyUsage() []x509.ExtKeyUsage {
	var usages []x509.ExtKeyUsage
	if s.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if s.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	return usages
}

// leafMatches: signed by ca, same subject, SANs and usages, and valid for 30 more days.
func leafMatches(cert *x509.Certificate, ca *CA, spec CertSpec, now time.Time) bool {
	if cert.CheckSignatureFrom(ca.Cert) != nil || now.Add(renewBefore).After(cert.NotAfter) {
		return false
	}
	if cert.Subject.CommonName != spec.CommonName || !sameStrings(cert.Subject.Organization, spec.Orgs) {
		return false
	}
	if !sameStrings(cert.DNSNames, spec.DNSNames) || !slices.Equal(cert.ExtKeyUsage, spec.extKeyUsage()) {
		return false
	}
	var have, want []string
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	for _, ip := range spec.IPs {
		want = append(want, ip.String())
	}
	return sameStrings(have, want)
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// EnsureKey keeps or makes a private key (the service-account signing key).
func EnsureKey(path string) error {
	if raw, err := os.ReadFile(path); err == nil {
		if _, err := parseKey(raw); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pemBlock("EC PRIVATE KEY", der), 0o600)
}

func loadPair(base string) (*x509.Certificate, crypto.Signer, []byte, error) {
	certPEM, err := os.ReadFile(base + ".crt")
	if err != nil {
		return nil, nil, nil, err
	}
	keyPEM, err := os.ReadFile(base + ".key")
	if err != nil {
		return nil, nil, nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, nil, nil, errors.New("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, nil, err
	}
	// A certificate with another key (a write cut between the two files, a hand edit) is no pair:
	// callers make both anew rather than serve a certificate nobody can use.
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, nil, errors.New(base + ".key is not the key of " + base + ".crt")
	}
	return cert, key, certPEM, nil
}

func parseKey(raw []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("no PEM key")
	}
	if key, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return key, nil
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, errors.New("not a signing key")
	}
	return signer, nil
}

func writePair(base string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(base+".key", pemBlock("EC PRIVATE KEY", keyDER), 0o600); err != nil {
		return err
	}
	return writeFile(base+".crt", pemBlock("CERTIFICATE", der), 0o644)
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// writeFile writes atomically (temp file, then rename) with the given mode, unless the file
// already holds exactly these bytes. It reports nothing: callers that care compare themselves.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return os.Chmod(path, mode)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
