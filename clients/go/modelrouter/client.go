// Package modelrouter is a small client for the modelrouter gRPC service.
//
// A Client wraps one gRPC connection and is safe for concurrent use. Route asks
// which model tier should answer a query; Complete also runs that tier and
// streams the answer. Errors are gRPC status errors: inspect them with
// status.Code and status.Convert.
package modelrouter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	routerv1 "github.com/modelrouter/modelrouter/clients/go/gen/modelrouter/v1"
)

// ServiceName is the fully qualified gRPC service name, as health and reflection report it.
const ServiceName = "modelrouter.v1.ModelRouter"

// RequestIDKey is the response metadata key of the request id: a trailer on Route and on
// errors (capture it with grpc.Trailer), a header on Complete's stream.
const RequestIDKey = "x-request-id"

// TraceparentKey is the request metadata key of a W3C Trace Context traceparent.
const TraceparentKey = "traceparent"

// WithTraceparent returns a context whose calls carry a W3C traceparent
// ("00-" + 32 hex digits of trace id + "-" + 16 of parent span id + "-01" when sampled).
// A server with tracing on continues that trace: its Route, Complete, attempt and
// upstream-call spans get the caller's trace id. A caller instrumented with
// OpenTelemetry (otelgrpc's client handler) sends it without this helper.
func WithTraceparent(ctx context.Context, traceparent string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, TraceparentKey, traceparent)
}

// Client calls a modelrouter server.
type Client struct {
	conn   *grpc.ClientConn // set by Dial, which owns it; nil when built by New
	router routerv1.ModelRouterClient
	health healthpb.HealthClient
}

// Dial creates a client for target ("host:port" or any gRPC target).
//
// Pass the transport credentials as an option, for example
// grpc.WithTransportCredentials(insecure.NewCredentials()) for plaintext.
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("modelrouter: connect to %s: %w", target, err)
	}
	c := New(conn)
	c.conn = conn
	return c, nil
}

// New creates a client on an existing connection, which the caller keeps and closes.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{router: routerv1.NewModelRouterClient(conn), health: healthpb.NewHealthClient(conn)}
}

// Close closes the connection opened by Dial; it does nothing for a client built by New.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Prompt returns a request that routes a single query.
func Prompt(text string) *routerv1.RouteRequest {
	return &routerv1.RouteRequest{Prompt: text}
}

// Chat returns a request that routes a conversation; its last user turn is what is routed.
func Chat(messages ...*routerv1.Message) *routerv1.RouteRequest {
	return &routerv1.RouteRequest{Messages: messages}
}

// System returns a system turn.
func System(content string) *routerv1.Message {
	return &routerv1.Message{Role: "system", Content: content}
}

// User returns a user turn.
func User(content string) *routerv1.Message { return &routerv1.Message{Role: "user", Content: content} }

// Assistant returns an assistant turn.
func Assistant(content string) *routerv1.Message {
	return &routerv1.Message{Role: "assistant", Content: content}
}

// Route returns the tier that should answer req, without calling any model.
func (c *Client) Route(ctx context.Context, req *routerv1.RouteRequest, opts ...grpc.CallOption) (*routerv1.RoutingDecision, error) {
	resp, err := c.router.Route(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	return resp.GetDecision(), nil
}

// Feedback rates the answer given under requestID (rating in [0, 1]) and reports
// whether the server knew that request id.
func (c *Client) Feedback(ctx context.Context, requestID string, rating float64, comment string, opts ...grpc.CallOption) (bool, error) {
	resp, err := c.router.Feedback(ctx, &routerv1.FeedbackRequest{RequestId: requestID, Rating: rating, Comment: comment}, opts...)
	if err != nil {
		return false, err
	}
	return resp.GetKnownRequest(), nil
}

// Stats returns satisfaction, escalation, errors, latency and cost per tier and model,
// read from the server's store. A nil req counts every stored request; set
// SinceUnixSeconds and Tenant to narrow it. FAILED_PRECONDITION means the server keeps
// no store (`store: null`).
func (c *Client) Stats(ctx context.Context, req *routerv1.GetStatsRequest, opts ...grpc.CallOption) (*routerv1.GetStatsResponse, error) {
	if req == nil {
		req = &routerv1.GetStatsRequest{}
	}
	return c.router.GetStats(ctx, req, opts...)
}

// Config returns the server's tiers, prices, thresholds and routing model version.
func (c *Client) Config(ctx context.Context, opts ...grpc.CallOption) (*routerv1.GetConfigResponse, error) {
	return c.router.GetConfig(ctx, &routerv1.GetConfigRequest{}, opts...)
}

// Health returns the serving status the server reports for service ("" for the whole server).
func (c *Client) Health(ctx context.Context, service string, opts ...grpc.CallOption) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service}, opts...)
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// Complete starts a Complete call; read its events with Recv, Events or Collect.
//
// The call lives as long as ctx: cancel ctx to abandon the stream.
func (c *Client) Complete(ctx context.Context, req *routerv1.CompleteRequest, opts ...grpc.CallOption) (*CompleteStream, error) {
	stream, err := c.router.Complete(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	return &CompleteStream{stream: stream}, nil
}

// CompleteStream is one Complete call in progress.
type CompleteStream struct {
	stream grpc.ServerStreamingClient[routerv1.CompleteEvent]
}

// Recv returns the next event, or io.EOF after the last one.
func (s *CompleteStream) Recv() (*routerv1.CompleteEvent, error) {
	return s.stream.Recv()
}

// Events returns the stream's events in order; a failure is yielded once, as the last error.
func (s *CompleteStream) Events() iter.Seq2[*routerv1.CompleteEvent, error] {
	return func(yield func(*routerv1.CompleteEvent, error) bool) {
		for {
			event, err := s.stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(event, err) || err != nil {
				return
			}
		}
	}
}

// RequestID returns the request id the server answered under (waits for the response headers).
func (s *CompleteStream) RequestID() (string, error) {
	md, err := s.stream.Header()
	if err != nil {
		return "", err
	}
	return firstValue(md, RequestIDKey), nil
}

// Completion is a Complete call read to its end (or as far as it got).
type Completion struct {
	// Decision is the routing decision, always the first event.
	Decision *routerv1.RoutingDecision
	// Escalations lists each tier abandoned before any of its text was sent.
	Escalations []*routerv1.Escalation
	// Summary has the usage, cost, answering tier and every attempt; nil when the
	// stream failed before the server sent it.
	Summary *routerv1.CompletionSummary
	text    strings.Builder
}

// Text returns the answer: every delta received, in order.
func (c *Completion) Text() string { return c.text.String() }

// Add folds one event into the completion and returns the text it carried, if any.
func (c *Completion) Add(event *routerv1.CompleteEvent) string {
	switch e := event.GetEvent().(type) {
	case *routerv1.CompleteEvent_Decision:
		c.Decision = e.Decision
	case *routerv1.CompleteEvent_Delta:
		c.text.WriteString(e.Delta.GetText())
		return e.Delta.GetText()
	case *routerv1.CompleteEvent_Escalation:
		c.Escalations = append(c.Escalations, e.Escalation)
	case *routerv1.CompleteEvent_Summary:
		c.Summary = e.Summary
	}
	return ""
}

// Collect reads the stream to its end, calling onText (if not nil) with each delta.
//
// On failure it returns what arrived before the error together with the error.
func (s *CompleteStream) Collect(onText func(string)) (*Completion, error) {
	out := &Completion{}
	for event, err := range s.Events() {
		if err != nil {
			return out, err
		}
		if text := out.Add(event); text != "" && onText != nil {
			onText(text)
		}
	}
	return out, nil
}

func firstValue(md metadata.MD, key string) string {
	if values := md.Get(key); len(values) > 0 {
		return values[0]
	}
	return ""
}

// RequestID returns the request id from response metadata captured with grpc.Trailer
// (Route, errors) or grpc.Header.
func RequestID(md metadata.MD) string {
	return firstValue(md, RequestIDKey)
}
