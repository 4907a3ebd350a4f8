package modelrouter_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	routerv1 "github.com/modelrouter/modelrouter/clients/go/gen/modelrouter/v1"
	"github.com/modelrouter/modelrouter/clients/go/internal/testserver"
	"github.com/modelrouter/modelrouter/clients/go/modelrouter"
)

// The API keys of clients/testdata/server-tls.yaml (test values; it lists their digests).
const (
	clientsKey = "mrk_clients-test-key"
	limitedKey = "mrk_limited-test-key"
)

// tlsServer starts `modelrouter serve` with TLS, mutual TLS, API keys and a rate-limited
// tenant (clients/testdata/server-tls.yaml) on certificates made for this test.
func tlsServer(t *testing.T) (*testserver.Server, testserver.PKI) {
	t.Helper()
	pki, err := testserver.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	trusted := mustTLS(t, modelrouter.TLSOptions{
		CAFile: pki.Path("ca.crt"), CertFile: pki.Path("client.crt"), KeyFile: pki.Path("client.key"),
	})
	s, err := testserver.StartWith(
		testserver.Options{Env: []string{"MODELROUTER_TEST_TLS_DIR=" + pki.Dir}, Dial: []grpc.DialOption{trusted}},
		"--config", testserver.Testdata("server-tls.yaml"), "--workers", "1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("server did not stop cleanly: %v\n%s", err, s.Output())
		}
	})
	return s, pki
}

func mustTLS(t *testing.T, o modelrouter.TLSOptions) grpc.DialOption {
	t.Helper()
	option, err := modelrouter.WithTLS(o)
	if err != nil {
		t.Fatal(err)
	}
	return option
}

func dialWith(t *testing.T, addr string, opts ...grpc.DialOption) *modelrouter.Client {
	t.Helper()
	client, err := modelrouter.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func routeCode(t *testing.T, client *modelrouter.Client) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Route(ctx, modelrouter.Prompt("What are your business hours?"))
	return status.Code(err)
}

func TestTLSAndAPIKeys(t *testing.T) {
	s, pki := tlsServer(t)
	trusted := modelrouter.TLSOptions{
		CAFile: pki.Path("ca.crt"), CertFile: pki.Path("client.crt"), KeyFile: pki.Path("client.key"),
	}

	t.Run("mutual TLS with a key routes as the key's tenant", func(t *testing.T) {
		client := dialWith(t, s.Addr, mustTLS(t, trusted), modelrouter.WithAPIKey(clientsKey))
		ctx := testContext(t)
		d, err := client.Route(ctx, modelrouter.Prompt("What are your business hours?"))
		if err != nil {
			t.Fatal(err)
		}
		checkDecision(t, d)
		stream, err := client.Complete(ctx, &routerv1.CompleteRequest{Route: modelrouter.Prompt("hi")})
		if err != nil {
			t.Fatal(err)
		}
		out, err := stream.Collect(nil)
		if err != nil || out.Summary == nil {
			t.Fatalf("Complete over mutual TLS: %v (summary %v)", err, out.Summary)
		}
	})

	t.Run("a server name override checks the certificate against that name", func(t *testing.T) {
		named := trusted
		named.ServerName = "localhost"
		client := dialWith(t, s.Addr, mustTLS(t, named), modelrouter.WithAPIKey(clientsKey))
		if code := routeCode(t, client); code != codes.OK {
			t.Fatalf("ServerName localhost (in the certificate): %v, want OK", code)
		}
		named.ServerName = "elsewhere.example"
		client = dialWith(t, s.Addr, mustTLS(t, named), modelrouter.WithAPIKey(clientsKey))
		if code := routeCode(t, client); code != codes.Unavailable {
			t.Fatalf("ServerName not in the certificate: %v, want Unavailable", code)
		}
	})

	t.Run("plaintext to the TLS port fails", func(t *testing.T) {
		client := dialWith(t, s.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if code := routeCode(t, client); code != codes.Unavailable {
			t.Fatalf("plaintext: %v, want Unavailable", code)
		}
	})

	t.Run("a client trusting another CA fails", func(t *testing.T) {
		wrong := trusted
		wrong.CAFile = pki.Path("other-ca.crt")
		client := dialWith(t, s.Addr, mustTLS(t, wrong), modelrouter.WithAPIKey(clientsKey))
		if code := routeCode(t, client); code != codes.Unavailable {
			t.Fatalf("wrong CA: %v, want Unavailable", code)
		}
	})

	t.Run("a client certificate from another CA is refused", func(t *testing.T) {
		foreign := trusted
		foreign.CertFile, foreign.KeyFile = pki.Path("other-client.crt"), pki.Path("other-client.key")
		client := dialWith(t, s.Addr, mustTLS(t, foreign), modelrouter.WithAPIKey(clientsKey))
		if code := routeCode(t, client); code != codes.Unavailable {
			t.Fatalf("foreign client certificate: %v, want Unavailable", code)
		}
	})

	t.Run("no key is Unauthenticated, health stays open", func(t *testing.T) {
		client := dialWith(t, s.Addr, mustTLS(t, trusted))
		if code := routeCode(t, client); code != codes.Unauthenticated {
			t.Fatalf("no key: %v, want Unauthenticated", code)
		}
		got, err := client.Health(testContext(t), "")
		if err != nil || got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health without a key: %v %v", got, err)
		}
	})

	t.Run("a method the key may not call is PermissionDenied", func(t *testing.T) {
		client := dialWith(t, s.Addr, mustTLS(t, trusted), modelrouter.WithAPIKey(limitedKey))
		_, err := client.Config(testContext(t))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("GetConfig with a Route-only key: %v, want PermissionDenied", err)
		}
	})

	t.Run("over the tenant's rate: ResourceExhausted with RetryInfo", func(t *testing.T) {
		client := dialWith(t, s.Addr, mustTLS(t, trusted), modelrouter.WithAPIKey(limitedKey))
		ctx := testContext(t)
		var err error
		for i := 0; i < 3 && err == nil; i++ { // a burst of 2, then 0.2 a second
			_, err = client.Route(ctx, modelrouter.Prompt("hi"))
		}
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.ResourceExhausted {
			t.Fatalf("third call in a row: %v, want ResourceExhausted", err)
		}
		// The standard way: status.FromError and its Details.
		var info *errdetails.RetryInfo
		for _, detail := range st.Details() {
			if found, ok := detail.(*errdetails.RetryInfo); ok {
				info = found
			}
		}
		if info == nil {
			t.Fatalf("no RetryInfo in %v", st.Details())
		}
		delay := info.GetRetryDelay().AsDuration()
		if delay <= 0 || delay > 5*time.Second {
			t.Errorf("retry delay %v, want within the 5 s a token takes", delay)
		}
		if helper, ok := modelrouter.RetryDelay(err); !ok || helper != delay {
			t.Errorf("RetryDelay = %v, %v; want %v", helper, ok, delay)
		}
		if _, ok := modelrouter.RetryDelay(status.Error(codes.Internal, "x")); ok {
			t.Error("RetryDelay found a delay in a status without details")
		}
	})
}

func TestTLSOptionsErrors(t *testing.T) {
	if _, err := modelrouter.WithTLS(modelrouter.TLSOptions{CAFile: "/nonexistent/ca.crt"}); err == nil {
		t.Error("a missing CA file was accepted")
	}
	if _, err := modelrouter.WithTLS(modelrouter.TLSOptions{CertFile: "client.crt"}); err == nil {
		t.Error("a client certificate without its key was accepted")
	}
}
