package modelrouter_test

import (
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	routerv1 "github.com/modelrouter/modelrouter/clients/go/gen/modelrouter/v1"
	"github.com/modelrouter/modelrouter/clients/go/internal/testserver"
	"github.com/modelrouter/modelrouter/clients/go/modelrouter"
)

// server is the one `modelrouter serve` every test in this package talks to.
var server *testserver.Server

func TestMain(m *testing.M) {
	testserver.Main(m, func(s *testserver.Server) { server = s })
}

func dial(t *testing.T) *modelrouter.Client {
	t.Helper()
	client, err := modelrouter.Dial(server.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var tierNames = []string{"cheap", "strong", "expert"} // clients/testdata/server.yaml

func checkDecision(t *testing.T, d *routerv1.RoutingDecision) {
	t.Helper()
	if d == nil {
		t.Fatal("no decision")
	}
	if int(d.GetTierIndex()) >= len(tierNames) || d.GetTier() != tierNames[d.GetTierIndex()] {
		t.Errorf("tier %q at index %d, want one of %v at its index", d.GetTier(), d.GetTierIndex(), tierNames)
	}
	if d.GetModel() == "" || d.GetBackend() == "" || d.GetModelVersion() == "" || d.GetRequestId() == "" {
		t.Errorf("decision lacks model, backend, model version or request id: %v", d)
	}
	if s := d.GetScore(); s < 0 || s > 1 {
		t.Errorf("score %v outside [0, 1]", s)
	}
	probs := d.GetLevelProbabilities()
	sum := 0.0
	for _, p := range probs {
		sum += p
	}
	if len(probs) != 5 || math.Abs(sum-1) > 1e-6 {
		t.Errorf("level probabilities %v: want 5 summing to 1", probs)
	}
	if d.GetEstimatedPromptTokens() == 0 || d.GetEstimatedCostUsd() <= 0 || d.GetStrongestTierCostUsd() < d.GetEstimatedCostUsd() {
		t.Errorf("cost estimate: %d tokens, $%v on the tier, $%v on the strongest",
			d.GetEstimatedPromptTokens(), d.GetEstimatedCostUsd(), d.GetStrongestTierCostUsd())
	}
	if d.GetReason() == routerv1.DecisionReason_DECISION_REASON_UNSPECIFIED {
		t.Error("decision reason unspecified")
	}
}

func TestRoutePrompt(t *testing.T) {
	client := dial(t)
	var trailer metadata.MD
	d, err := client.Route(testContext(t), modelrouter.Prompt("What are your business hours?"), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	checkDecision(t, d)
	if got := modelrouter.RequestID(trailer); got != d.GetRequestId() {
		t.Errorf("x-request-id trailer %q, decision request id %q", got, d.GetRequestId())
	}
}

func TestRouteMessagesEchoesRequestID(t *testing.T) {
	client := dial(t)
	req := modelrouter.Chat(
		modelrouter.System("You are a support assistant."),
		modelrouter.User("I was charged twice."),
		modelrouter.Assistant("Sorry to hear that. Which card?"),
		modelrouter.User("Analyze this error log and suggest a fix: panic: nil map write in worker 3"),
	)
	req.RequestId = "go-client-messages-1"
	req.Tenant = "go-tests"
	req.Metadata = map[string]string{"suite": "go"}
	d, err := client.Route(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	checkDecision(t, d)
	if d.GetRequestId() != "go-client-messages-1" {
		t.Errorf("request id %q, want the caller's", d.GetRequestId())
	}
}

func TestRouteForcedTier(t *testing.T) {
	client := dial(t)
	req := modelrouter.Prompt("hi")
	req.Hints = &routerv1.TierHints{Tier: "expert"}
	d, err := client.Route(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if d.GetTier() != "expert" || d.GetReason() != routerv1.DecisionReason_DECISION_REASON_FORCED {
		t.Errorf("tier %q reason %v, want expert FORCED", d.GetTier(), d.GetReason())
	}
}

func complete(t *testing.T, ctx context.Context, client *modelrouter.Client, tier string) (*modelrouter.Completion, []*routerv1.CompleteEvent, error) {
	t.Helper()
	req := &routerv1.CompleteRequest{
		Route:      modelrouter.Prompt("How do I reset my password with 2FA enabled?"),
		Generation: &routerv1.GenerationOptions{MaxTokens: 64},
	}
	req.Route.Hints = &routerv1.TierHints{Tier: tier}
	stream, err := client.Complete(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Keep the raw order of events too: checkOrder asserts it.
	out := &modelrouter.Completion{}
	var events []*routerv1.CompleteEvent
	for event, err := range stream.Events() {
		if err != nil {
			return out, events, err
		}
		events = append(events, event)
		out.Add(event)
	}
	return out, events, nil
}

func checkOrder(t *testing.T, events []*routerv1.CompleteEvent) {
	t.Helper()
	if len(events) < 3 {
		t.Fatalf("%d events, want a decision, text and a summary", len(events))
	}
	if events[0].GetDecision() == nil {
		t.Errorf("first event %v, want the decision", events[0])
	}
	if events[len(events)-1].GetSummary() == nil {
		t.Errorf("last event %v, want the summary", events[len(events)-1])
	}
	sawText := false
	for _, e := range events[1 : len(events)-1] {
		switch {
		case e.GetDelta() != nil:
			sawText = true
		case e.GetEscalation() != nil:
			if sawText {
				t.Error("escalation after text was sent: the router must never switch models once committed")
			}
		default:
			t.Errorf("unexpected event in the middle of the stream: %v", e)
		}
	}
}

func TestCompleteStreamsToTheEnd(t *testing.T) {
	client := dial(t)
	out, events, err := complete(t, testContext(t), client, "strong")
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, events)
	checkDecision(t, out.Decision)
	s := out.Summary
	if out.Text() == "" || s.GetDeliveredChars() != uint64(utf8.RuneCountInString(out.Text())) {
		t.Errorf("text %q, summary says %d characters delivered", out.Text(), s.GetDeliveredChars())
	}
	if s.GetTier() != "strong" || s.GetFinishReason() == "" || s.GetDurationMs() <= 0 {
		t.Errorf("summary %v: want tier strong, a finish reason and a duration", s)
	}
	if u := s.GetUsage(); u.GetPromptTokens() == 0 || u.GetCompletionTokens() == 0 {
		t.Errorf("usage %v: want prompt and completion tokens", u)
	}
	if len(out.Escalations) != 0 || len(s.GetAttempts()) != 1 || s.GetAttempts()[0].GetOutcome() != routerv1.AttemptOutcome_ATTEMPT_OUTCOME_OK {
		t.Errorf("escalations %v attempts %v: want one OK attempt", out.Escalations, s.GetAttempts())
	}
}

func TestCompleteEscalatesFromAnUnreachableTier(t *testing.T) {
	client := dial(t)
	out, events, err := complete(t, testContext(t), client, "cheap")
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, events)
	if len(out.Escalations) != 1 {
		t.Fatalf("escalations %v, want one from cheap", out.Escalations)
	}
	esc := out.Escalations[0]
	if esc.GetFromTier() != "cheap" || esc.GetToTier() != "strong" ||
		esc.GetAttempt().GetOutcome() != routerv1.AttemptOutcome_ATTEMPT_OUTCOME_CONNECT_ERROR {
		t.Errorf("escalation %v: want cheap -> strong after CONNECT_ERROR", esc)
	}
	s := out.Summary
	if s.GetTier() != "strong" || len(s.GetAttempts()) != 2 || s.GetAttempts()[1].GetOutcome() != routerv1.AttemptOutcome_ATTEMPT_OUTCOME_OK {
		t.Errorf("summary %v: want strong answering on the second attempt", s)
	}
	if s.GetUsage().GetCompletionTokens() == 0 || out.Text() == "" {
		t.Errorf("no answer after escalating: text %q usage %v", out.Text(), s.GetUsage())
	}
}

func TestCollectReturnsTheWholeAnswer(t *testing.T) {
	client := dial(t)
	stream, err := client.Complete(testContext(t), &routerv1.CompleteRequest{Route: modelrouter.Prompt("Compare plan A vs plan B for my usage pattern")})
	if err != nil {
		t.Fatal(err)
	}
	var streamed strings.Builder
	out, err := stream.Collect(func(text string) { streamed.WriteString(text) })
	if err != nil {
		t.Fatal(err)
	}
	id, err := stream.RequestID()
	if err != nil || id == "" || id != out.Decision.GetRequestId() {
		t.Errorf("request id header %q (%v), decision %q", id, err, out.Decision.GetRequestId())
	}
	if out.Text() == "" || out.Text() != streamed.String() || out.Summary == nil {
		t.Errorf("collected %q, streamed %q, summary %v", out.Text(), streamed.String(), out.Summary)
	}
}

func TestDeadlineExpiresMidStream(t *testing.T) {
	client := dial(t)
	// Connect first: on a loaded machine, setting up the connection can take the whole
	// 50 ms, and the deadline must expire while the stream waits for the model.
	if _, err := client.Route(testContext(t), modelrouter.Prompt("warm up")); err != nil {
		t.Fatal(err)
	}
	// The test server's demo backend waits 200 ms before its first token.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _, err := complete(t, ctx, client, "strong")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("error %v, want DEADLINE_EXCEEDED", err)
	}
}

func TestCancelledStream(t *testing.T) {
	client := dial(t)
	ctx, cancel := context.WithCancel(testContext(t))
	stream, err := client.Complete(ctx, &routerv1.CompleteRequest{Route: modelrouter.Prompt("Summarize the history of Rome")})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetDecision() == nil {
		t.Fatalf("first event %v, error %v: want the decision", first, err)
	}
	cancel()
	for {
		_, err = stream.Recv()
		if err != nil {
			break
		}
	}
	if status.Code(err) != codes.Canceled {
		t.Fatalf("error %v after cancelling, want CANCELLED", err)
	}
	// The server carries on serving after the cancellation.
	if _, err := client.Route(testContext(t), modelrouter.Prompt("still there?")); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyPromptIsInvalidArgument(t *testing.T) {
	client := dial(t)
	req := modelrouter.Prompt("")
	req.RequestId = "go-client-empty-1"
	var trailer metadata.MD
	_, err := client.Route(testContext(t), req, grpc.Trailer(&trailer))
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "prompt") {
		t.Fatalf("status %v %q, want INVALID_ARGUMENT naming the prompt", st.Code(), st.Message())
	}
	if got := modelrouter.RequestID(trailer); got != "go-client-empty-1" {
		t.Errorf("x-request-id trailer of the error %q, want the caller's", got)
	}

	stream, err := client.Complete(testContext(t), &routerv1.CompleteRequest{Route: modelrouter.Prompt("")})
	if err == nil {
		_, err = stream.Recv()
	}
	st = status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "prompt") {
		t.Fatalf("Complete: status %v %q, want INVALID_ARGUMENT naming the prompt", st.Code(), st.Message())
	}
}

func TestUnknownTierHintIsInvalidArgument(t *testing.T) {
	client := dial(t)
	req := modelrouter.Prompt("hello")
	req.Hints = &routerv1.TierHints{MinTier: "platinum"}
	_, err := client.Route(testContext(t), req)
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "platinum") {
		t.Fatalf("status %v %q, want INVALID_ARGUMENT naming the tier", st.Code(), st.Message())
	}
}

func TestConfigAndFeedback(t *testing.T) {
	client := dial(t)
	ctx := testContext(t)
	cfg, err := client.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tier := range cfg.GetTiers() {
		names = append(names, tier.GetName())
	}
	if strings.Join(names, ",") != strings.Join(tierNames, ",") || cfg.GetModelVersion() == "" {
		t.Errorf("config tiers %v version %q", names, cfg.GetModelVersion())
	}
	d, err := client.Route(ctx, modelrouter.Prompt("What's the weather tomorrow?"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Feedback(ctx, d.GetRequestId(), 1.0, "good answer"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Feedback(ctx, "", 1.0, ""); status.Code(err) != codes.InvalidArgument {
		t.Errorf("feedback without a request id: %v, want INVALID_ARGUMENT", err)
	}
}

func TestStatsCountTheRatedRequests(t *testing.T) {
	client := dial(t)
	ctx := testContext(t)
	req := modelrouter.Prompt("What are your business hours?")
	req.RequestId, req.Tenant = "go-stats-1", "go-stats"
	if _, err := client.Route(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Feedback(ctx, "go-stats-1", 0.9, "fine"); err != nil {
		t.Fatal(err)
	}
	tenant := "go-stats"
	// Records reach the store within the server's flush interval.
	for {
		stats, err := client.Stats(ctx, &routerv1.GetStatsRequest{Tenant: &tenant})
		if err != nil {
			t.Fatal(err)
		}
		total := stats.GetTotal()
		if total.GetRated() == 1 {
			if total.GetRequests() != 1 || total.GetMeanRating() != 0.9 || total.GetSatisfaction() != 1 {
				t.Errorf("total %v, want one request rated 0.9 and satisfied", total)
			}
			if len(stats.GetTiers()) != 1 || stats.GetSatisfiedAt() != 0.7 || stats.GetStore().GetKind() != "sqlite" {
				t.Errorf("stats %v, want one tier row, satisfied_at 0.7, a sqlite store", stats)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the rating never reached the stats: %v", stats)
		case <-time.After(50 * time.Millisecond):
		}
	}
	all, err := client.Stats(ctx, nil)
	if err != nil || all.GetTotal().GetRequests() < 1 {
		t.Errorf("stats of every tenant: %v %v", all, err)
	}
}

func TestHealth(t *testing.T) {
	client := dial(t)
	for _, service := range []string{"", modelrouter.ServiceName} {
		got, err := client.Health(testContext(t), service)
		if err != nil || got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v %v, want SERVING", service, got, err)
		}
	}
	if _, err := client.Health(testContext(t), "no.such.Service"); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown service: %v, want NOT_FOUND", err)
	}
}

func TestReflectionDescribesTheService(t *testing.T) {
	conn, err := grpc.NewClient(server.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// v1alpha is what ghz and older grpcurl builds speak.
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	list := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	services := map[string]bool{}
	for _, s := range list.GetListServicesResponse().GetService() {
		services[s.GetName()] = true
	}
	if !services[modelrouter.ServiceName] || !services[healthpb.Health_ServiceDesc.ServiceName] {
		t.Errorf("reflection lists %v, want %s and the health service", services, modelrouter.ServiceName)
	}
	// ghz asks for the method itself, grpcurl for the service: both must resolve.
	for _, symbol := range []string{modelrouter.ServiceName, modelrouter.ServiceName + ".Route"} {
		file := ask(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol},
		})
		if !describesService(t, file) {
			t.Errorf("reflection did not describe %s with its %d methods for symbol %s: %v", modelrouter.ServiceName, serviceMethods(), symbol, file)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("reflection stream did not end cleanly: %v", err)
	}
}

// serviceMethods returns the number of methods of the generated service (unary and streaming).
func serviceMethods() int {
	return len(routerv1.ModelRouter_ServiceDesc.Methods) + len(routerv1.ModelRouter_ServiceDesc.Streams)
}

func describesService(t *testing.T, resp *reflectionpb.ServerReflectionResponse) bool {
	t.Helper()
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatal(err)
		}
		for _, svc := range fd.GetService() {
			if fd.GetPackage()+"."+svc.GetName() == modelrouter.ServiceName && len(svc.GetMethod()) == serviceMethods() {
				return true
			}
		}
	}
	return false
}

func TestRouteBatchAnswersEachRequestInOrder(t *testing.T) {
	client := dial(t)
	ctx := testContext(t)
	forced := modelrouter.Prompt("hi")
	forced.Hints = &routerv1.TierHints{Tier: "expert"}
	mine := modelrouter.Prompt("What are your business hours?")
	mine.RequestId = "go-batch-1"
	reqs := []*routerv1.RouteRequest{
		mine,
		modelrouter.Prompt("   "),
		forced,
		modelrouter.Chat(modelrouter.System("no user turn")),
		modelrouter.Prompt("Analyze this error log and suggest a fix: panic: nil map write"),
	}
	var trailer metadata.MD
	results, err := client.RouteBatch(ctx, reqs, grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(reqs) {
		t.Fatalf("%d results for %d requests", len(results), len(reqs))
	}
	if modelrouter.RequestID(trailer) == "" {
		t.Error("no x-request-id trailer on the batch")
	}
	ids := map[string]bool{}
	for i, r := range results {
		// What Route says of the same request, one by one.
		d, routeErr := client.Route(ctx, reqs[i])
		if routeErr != nil {
			if r.Err == nil || status.Code(r.Err) != status.Code(routeErr) || status.Convert(r.Err).Message() != status.Convert(routeErr).Message() {
				t.Errorf("request %d: batch says %v, Route says %v", i, r.Err, routeErr)
			}
			if status.Code(r.Err) != codes.InvalidArgument || r.Decision != nil {
				t.Errorf("request %d: want INVALID_ARGUMENT and no decision, got %v, %v", i, r.Err, r.Decision)
			}
		} else {
			if r.Err != nil {
				t.Fatalf("request %d: batch error %v, Route decided", i, r.Err)
			}
			checkDecision(t, r.Decision)
			if r.Decision.GetTier() != d.GetTier() || r.Decision.GetScore() != d.GetScore() {
				t.Errorf("request %d: batch %s (%v), Route %s (%v)", i, r.Decision.GetTier(), r.Decision.GetScore(), d.GetTier(), d.GetScore())
			}
		}
		if r.RequestID == "" || ids[r.RequestID] {
			t.Errorf("request %d: request id %q empty or repeated", i, r.RequestID)
		}
		ids[r.RequestID] = true
	}
	if results[0].RequestID != "go-batch-1" {
		t.Errorf("request id %q, want the caller's", results[0].RequestID)
	}
	if results[2].Decision.GetTier() != "expert" {
		t.Errorf("forced tier: got %q", results[2].Decision.GetTier())
	}
}

func TestRouteBatchOverTheLimitFails(t *testing.T) {
	client := dial(t)
	reqs := make([]*routerv1.RouteRequest, modelrouter.MaxBatch+1)
	for i := range reqs {
		reqs[i] = modelrouter.Prompt("hi")
	}
	_, err := client.RouteBatch(testContext(t), reqs)
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "requests:") {
		t.Fatalf("want INVALID_ARGUMENT naming requests, got %v", err)
	}
	results, err := client.RouteBatch(testContext(t), nil)
	if err != nil || len(results) != 0 {
		t.Fatalf("empty batch: %v, %v", results, err)
	}
}
