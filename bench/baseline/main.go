// Command baseline is a no-op gRPC server with modelrouter's Route signature: it answers
// every Route with the same fixed decision, so ghz measures the ceiling of the gRPC stack
// on this machine. It serves health and reflection like modelrouter, so the same ghz
// command (which finds the method by reflection) runs against both.
//
//	go run . -addr 127.0.0.1:50061
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	routerv1 "github.com/modelrouter/modelrouter/clients/go/gen/modelrouter/v1"
)

// fixed is a decision of the size modelrouter returns for a typical query.
var fixed = &routerv1.RouteResponse{Decision: &routerv1.RoutingDecision{
	RequestId:             "00000000-0000-4000-8000-000000000000",
	Tier:                  "cheap",
	TierIndex:             0,
	Model:                 "demo-cheap",
	Backend:               "demo",
	Score:                 0.12,
	LevelProbabilities:    []float64{0.61, 0.27, 0.08, 0.03, 0.01},
	Reason:                routerv1.DecisionReason_DECISION_REASON_SCORE,
	EstimatedPromptTokens: 48,
	EstimatedCostUsd:      1.152e-05,
	StrongestTierCostUsd:  7.2e-04,
	ModelVersion:          "baseline",
	DecisionMicros:        0,
}}

type noop struct {
	routerv1.UnimplementedModelRouterServer
}

// Route returns the fixed decision without looking at the request.
func (noop) Route(_ context.Context, _ *routerv1.RouteRequest) (*routerv1.RouteResponse, error) {
	return fixed, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	flag.Parse()

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	routerv1.RegisterModelRouterServer(srv, noop{})
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus(routerv1.ModelRouter_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, healthSrv)
	reflection.Register(srv)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		srv.GracefulStop()
	}()
	// The benchmark reads the bound address from this line.
	fmt.Printf("listening on %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
