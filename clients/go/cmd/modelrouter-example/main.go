// Command modelrouter-example routes a query with modelrouter and, with -complete,
// streams the answer of the chosen tier.
//
//	go run ./cmd/modelrouter-example -addr localhost:50051 "What are your business hours?"
//	go run ./cmd/modelrouter-example -complete -max-tokens 64 "Compare plan A vs plan B"
//	go run ./cmd/modelrouter-example -traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "hi"
//	go run ./cmd/modelrouter-example -ca ca.crt -cert client.crt -key client.key -api-key "$KEY" "hi"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	routerv1 "github.com/modelrouter/modelrouter/clients/go/gen/modelrouter/v1"
	"github.com/modelrouter/modelrouter/clients/go/modelrouter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("modelrouter-example", flag.ContinueOnError)
	flags.SetOutput(stderr)
	addr := flags.String("addr", "localhost:50051", "modelrouter server address")
	doComplete := flags.Bool("complete", false, "also run the chosen tier and stream its answer")
	maxTokens := flags.Uint("max-tokens", 0, "upper bound on completion tokens (0: the tier's default)")
	tier := flags.String("tier", "", "force this tier instead of the router's choice")
	timeout := flags.Duration("timeout", 30*time.Second, "deadline of the call")
	traceparent := flags.String("traceparent", "", "W3C traceparent to continue (the server's spans join this trace)")
	summaryJSON := flags.Bool("summary-json", false, "with -complete, end with the summary as one line of JSON")
	var tlsOpts modelrouter.TLSOptions
	useTLS := flags.Bool("tls", false, "speak TLS with the system's roots (implied by -ca)")
	flags.StringVar(&tlsOpts.CAFile, "ca", "", "PEM bundle of the CAs to trust (TLS)")
	flags.StringVar(&tlsOpts.CertFile, "cert", "", "PEM client certificate (mutual TLS)")
	flags.StringVar(&tlsOpts.KeyFile, "key", "", "PEM key of the client certificate")
	flags.StringVar(&tlsOpts.ServerName, "server-name", "", "name to check the server's certificate against")
	key := flags.String("api-key", "", "API key, sent as 'authorization: Bearer KEY' (needs TLS)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	prompt := strings.Join(flags.Args(), " ")
	if prompt == "" {
		fmt.Fprintln(stderr, "usage: modelrouter-example [flags] PROMPT")
		return 2
	}

	transport := grpc.WithTransportCredentials(insecure.NewCredentials())
	if *useTLS || tlsOpts != (modelrouter.TLSOptions{}) {
		var err error
		if transport, err = modelrouter.WithTLS(tlsOpts); err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
	}
	opts := []grpc.DialOption{transport}
	if *key != "" {
		opts = append(opts, modelrouter.WithAPIKey(*key))
	}
	client, err := modelrouter.Dial(*addr, opts...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *traceparent != "" {
		ctx = modelrouter.WithTraceparent(ctx, *traceparent)
	}

	req := modelrouter.Prompt(prompt)
	if *tier != "" {
		req.Hints = &routerv1.TierHints{Tier: *tier}
	}
	if !*doComplete {
		d, err := client.Route(ctx, req)
		if err != nil {
			return fail(stderr, err)
		}
		printDecision(stdout, d)
		return 0
	}

	stream, err := client.Complete(ctx, &routerv1.CompleteRequest{
		Route:      req,
		Generation: &routerv1.GenerationOptions{MaxTokens: uint32(*maxTokens)},
	})
	if err != nil {
		return fail(stderr, err)
	}
	out := &modelrouter.Completion{}
	for event, err := range stream.Events() {
		if err != nil {
			fmt.Fprintln(stdout)
			return fail(stderr, err)
		}
		fmt.Fprint(stdout, out.Add(event))
		switch e := event.GetEvent().(type) {
		case *routerv1.CompleteEvent_Decision:
			printDecision(stdout, e.Decision)
		case *routerv1.CompleteEvent_Escalation:
			fmt.Fprintf(stdout, "escalated %s -> %s (%s)\n", e.Escalation.GetFromTier(), e.Escalation.GetToTier(),
				e.Escalation.GetAttempt().GetOutcome())
		}
	}
	s := out.Summary
	fmt.Fprintf(stdout, "\nanswered by %s (%s): %d prompt + %d completion tokens, $%.6f (strongest tier: $%.6f), %.1f ms\n",
		s.GetTier(), s.GetModel(), s.GetUsage().GetPromptTokens(), s.GetUsage().GetCompletionTokens(),
		s.GetCostUsd(), s.GetStrongestTierCostUsd(), s.GetDurationMs())
	if *summaryJSON {
		line, err := protojson.Marshal(s)
		if err != nil {
			return fail(stderr, err)
		}
		fmt.Fprintf(stdout, "%s\n", line)
	}
	return 0
}

func printDecision(w io.Writer, d *routerv1.RoutingDecision) {
	fmt.Fprintf(w, "tier %s (%s on %s), score %.3f, %s, decided in %.1f us, request %s\n",
		d.GetTier(), d.GetModel(), d.GetBackend(), d.GetScore(), d.GetReason(), d.GetDecisionMicros(), d.GetRequestId())
}

func fail(stderr io.Writer, err error) int {
	if st, ok := status.FromError(err); ok && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "modelrouter: %s: %s\n", st.Code(), st.Message())
		if delay, ok := modelrouter.RetryDelay(err); ok {
			fmt.Fprintf(stderr, "modelrouter: retry in %s\n", delay)
		}
	} else {
		fmt.Fprintln(stderr, "modelrouter:", err)
	}
	return 1
}
