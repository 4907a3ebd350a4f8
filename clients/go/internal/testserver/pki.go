package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is a set of certificates made at test time, written as PEM files into Dir:
//
//	ca.crt                      the CA of the server and of the trusted clients
//	server.crt, server.key      the server, for 127.0.0.1, ::1 and localhost
//	client.crt, client.key      a client certificate signed by ca.crt
//	other-ca.crt                another CA
//	other-client.crt/.key       a client certificate signed by other-ca.crt
type PKI struct {
	Dir string
}

// Path returns the path of one of the PKI's files.
func (p PKI) Path(name string) string { return filepath.Join(p.Dir, name) }

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewPKI makes the CAs and certificates and writes them into dir.
func NewPKI(dir string) (PKI, error) {
	p := PKI{Dir: dir}
	ca, err := p.authority("modelrouter test CA", "ca.crt")
	if err != nil {
		return p, err
	}
	other, err := p.authority("someone else's CA", "other-ca.crt")
	if err != nil {
		return p, err
	}
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "modelrouter"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if err := p.issue(ca, server, "server"); err != nil {
		return p, err
	}
	for _, c := range []struct {
		by   authority
		name string
	}{{ca, "client"}, {other, "other-client"}} {
		client := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "go-client-test"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := p.issue(c.by, client, c.name); err != nil {
			return p, err
		}
	}
	return p, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return n
}

func (p PKI) authority(name, file string) (authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authority{}, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-5 * time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return authority{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return authority{}, err
	}
	return authority{cert, key}, writePEM(p.Path(file), "CERTIFICATE", der)
}

func (p PKI) issue(by authority, template *x509.Certificate, name string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	template.SerialNumber = serial()
	template.NotBefore = time.Now().Add(-5 * time.Minute)
	template.NotAfter = time.Now().Add(24 * time.Hour)
	template.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, template, by.cert, &key.PublicKey, by.key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(p.Path(name+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(p.Path(name+".key"), "PRIVATE KEY", keyDER)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
