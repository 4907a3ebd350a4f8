// Package testserver starts a real `modelrouter serve` for the client tests.
package testserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 20 * time.Second
)

// Main starts `modelrouter serve` with the shared test configuration and one worker, hands
// it to use, runs the package's tests, stops the server and exits (non-zero when the tests
// failed or the server did not stop cleanly). Call it from TestMain.
func Main(m *testing.M, use func(*Server)) {
	server, err := Start("--config", Config(), "--workers", "1")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start modelrouter serve:", err)
		os.Exit(1)
	}
	use(server)
	code := m.Run()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "modelrouter serve did not stop cleanly:", err)
		code = 1
	}
	if code != 0 {
		fmt.Fprintln(os.Stderr, "--- server output ---\n"+server.Output())
	}
	os.Exit(code)
}

// Server is a running `modelrouter serve` process.
type Server struct {
	// Addr is the loopback "host:port" the server listens on.
	Addr string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
	// The server's own state directory ($XDG_STATE_HOME): its store starts empty.
	state string
	dial  []grpc.DialOption
}

// Options are what StartWith adds to a plain start.
type Options struct {
	// Env is added to the server's environment ("NAME=value").
	Env []string
	// Dial are the options of the connection that waits for SERVING (TLS, for example);
	// default: plaintext.
	Dial []grpc.DialOption
}

// Binary returns the modelrouter command: $MODELROUTER_BIN, else `modelrouter` on PATH.
func Binary() (string, error) {
	if bin := os.Getenv("MODELROUTER_BIN"); bin != "" {
		return bin, nil
	}
	bin, err := exec.LookPath("modelrouter")
	if err != nil {
		return "", errors.New("modelrouter not found: set MODELROUTER_BIN or put the command on PATH")
	}
	return bin, nil
}

// Config returns the path of the shared test configuration (clients/testdata/server.yaml).
func Config() string { return Testdata("server.yaml") }

// Testdata returns the path of a file in clients/testdata.
func Testdata(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", name)
}

// Start runs `modelrouter serve` with args on a free loopback port and waits until it is SERVING.
func Start(args ...string) (*Server, error) {
	return StartWith(Options{}, args...)
}

// StartWith is Start with an environment and the dial options of the health check.
func StartWith(opts Options, args ...string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	// The free port is found by binding and releasing it; another process may take it in
	// between, so a server that exits during start-up is retried on a new port.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := start(bin, port, args, opts)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(bin string, port int, args []string, opts Options) (*Server, error) {
	argv := append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port)}, args...)
	state, err := os.MkdirTemp("", "modelrouter-client-state-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, argv...)
	cmd.Env = append(append(os.Environ(), "XDG_STATE_HOME="+state), opts.Env...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		os.RemoveAll(state)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	dial := opts.Dial
	if dial == nil {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, log: log, done: make(chan error, 1), state: state, dial: dial}
	go func() { s.done <- cmd.Wait() }()
	if err := s.waitServing(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%s %v: %w\n--- server output ---\n%s", bin, argv, err, log.String())
	}
	return s, nil
}

func (s *Server) waitServing() error {
	conn, err := grpc.NewClient(s.Addr, s.dial...)
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("server exited during start-up: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not SERVING after %s", startTimeout)
}

// Output returns everything the server printed so far.
func (s *Server) Output() string { return s.log.String() }

// Stop sends SIGTERM, waits for the graceful stop (SIGKILL after a timeout) and returns the exit error.
func (s *Server) Stop() error {
	defer os.RemoveAll(s.state)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("server did not stop within %s of SIGTERM; killed", stopTimeout)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects the server's output; the process writes while tests read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
