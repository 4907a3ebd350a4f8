package modelrouter_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/modelrouter/modelrouter/clients/go/internal/testserver"
	"github.com/modelrouter/modelrouter/clients/go/modelrouter"
)

// drainConfig is the embedded default's three demo tiers, drained for 2 s on SIGTERM.
const drainConfig = `version: 1
model: builtin
server: {metrics_port: 0, drain_delay_s: 2, grace_period_s: 5}
tiers:
  - {name: cheap, model: demo-cheap, backend: demo, price: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: strong, model: demo-strong, backend: demo, price: {input_per_mtok: 2, output_per_mtok: 2}}
  - {name: expert, model: demo-expert, backend: demo, price: {input_per_mtok: 3, output_per_mtok: 3}}
backends:
  demo: {kind: demo}
`

// The README's channel settings: round_robin with client-side health checking.
const healthCheckedRoundRobin = `{"loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": "modelrouter.v1.ModelRouter"}}`

func TestAReplicaLeavesWithoutFailingACallOfAHealthCheckedRoundRobinClient(t *testing.T) {
	config := filepath.Join(t.TempDir(), "router.yaml")
	if err := os.WriteFile(config, []byte(drainConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var servers []*testserver.Server
	state := resolver.State{}
	for range 2 {
		s, err := testserver.Start("--config", config, "--workers", "1")
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
		state.Addresses = append(state.Addresses, resolver.Address{Addr: s.Addr})
	}
	leaving, staying := servers[0], servers[1]
	t.Cleanup(func() { _ = staying.Stop() })
	r := manual.NewBuilderWithScheme("drain")
	r.InitialState(state)
	client := dialWith(t, r.Scheme()+":///modelrouter",
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(healthCheckedRoundRobin),
		grpc.WithTransportCredentials(insecure.NewCredentials()))

	var mu sync.Mutex
	counts := map[codes.Code]int{}
	stop := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		hammer(ctx, 4, stop, func() {
			callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
			defer callCancel()
			_, err := client.Route(callCtx, modelrouter.Prompt("What are your business hours?"))
			mu.Lock()
			counts[status.Code(err)]++
			mu.Unlock()
		})
	}()
	time.Sleep(time.Second) // both replicas take calls
	// SIGTERM: NOT_SERVING at once, served for the 2 s drain, then refused, then gone.
	if err := leaving.Stop(); err != nil {
		t.Errorf("the leaving replica: %v\n%s", err, leaving.Output())
	}
	time.Sleep(500 * time.Millisecond) // calls go on, to the staying replica alone
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	if counts[codes.OK] == 0 || len(counts) != 1 {
		t.Errorf("calls by status while a replica left: %v; want only OK", counts)
	}
}
