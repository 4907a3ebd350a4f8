package modelrouter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// TLSOptions configure TLS to a server whose gRPC port has server.tls set.
type TLSOptions struct {
	// CAFile is a PEM bundle of the CAs that may sign the server's certificate; empty
	// means the system's roots.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and its key, for a server that
	// asks for one (mutual TLS, server.tls.client_ca); both or neither.
	CertFile string
	KeyFile  string
	// ServerName overrides the name checked against the server's certificate (by default
	// the host of the target), for example when dialing an IP address or a proxy.
	ServerName string
}

// TLSConfig returns the crypto/tls configuration of the options.
func (o TLSOptions) TLSConfig() (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("modelrouter: CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("modelrouter: CA bundle %s holds no PEM certificate", o.CAFile)
		}
		config.RootCAs = pool
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("modelrouter: set both CertFile and KeyFile for a client certificate, or neither")
	}
	if o.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("modelrouter: client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

// WithTLS returns the dial option that speaks TLS (and mutual TLS with a client
// certificate) to the server: pass it to Dial instead of insecure credentials.
func WithTLS(o TLSOptions) (grpc.DialOption, error) {
	config, err := o.TLSConfig()
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

// WithAPIKey returns the dial option that sends "authorization: Bearer key" with every
// call, for a server with auth enabled. grpc-go refuses to send it over a connection
// without TLS, so that a key never crosses the network in plaintext.
func WithAPIKey(key string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(apiKey(key))
}

type apiKey string

func (k apiKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (k apiKey) RequireTransportSecurity() bool { return true }

// RetryDelay returns how long the server asked the caller to wait before retrying: the
// google.rpc.RetryInfo of an error status (RESOURCE_EXHAUSTED when a tenant is over one
// of its limits, UNAVAILABLE when the limits cannot be checked). It reads the status with
// status.FromError and its Details, as any grpc-go caller can.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}
