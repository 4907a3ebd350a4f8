package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/modelrouter/modelrouter/clients/go/internal/testserver"
)

var server *testserver.Server

func TestMain(m *testing.M) {
	testserver.Main(m, func(s *testserver.Server) { server = s })
}

func runExample(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"-addr", server.Addr}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestExampleRoutes(t *testing.T) {
	code, out, errOut := runExample(t, "What are your business hours?")
	if code != 0 || !strings.HasPrefix(out, "tier ") || !strings.Contains(out, "score ") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestExampleStreamsAnEscalatedAnswer(t *testing.T) {
	code, out, errOut := runExample(t, "-complete", "-tier", "cheap", "-max-tokens", "32", "How do I reset my password?")
	if code != 0 || !strings.Contains(out, "escalated cheap -> strong") || !strings.Contains(out, "answered by strong") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestExampleReportsInvalidArgument(t *testing.T) {
	code, _, errOut := runExample(t, "-tier", "platinum", "hello")
	if code != 1 || !strings.Contains(errOut, "InvalidArgument") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestExampleTLSFlags(t *testing.T) {
	code, _, errOut := runExample(t, "-ca", "/nonexistent/ca.crt", "hello")
	if code != 2 || !strings.Contains(errOut, "CA bundle") {
		t.Fatalf("a missing CA file: exit %d, stderr %q", code, errOut)
	}
	// TLS to the plaintext test server fails cleanly.
	code, _, errOut = runExample(t, "-tls", "-timeout", "5s", "hello")
	if code != 1 || !strings.Contains(errOut, "Unavailable") {
		t.Fatalf("TLS to a plaintext port: exit %d, stderr %q", code, errOut)
	}
}
