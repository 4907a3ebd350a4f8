package testserver

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RequireRedisEnv makes a missing redis-server a failure instead of a skip (CI sets it).
const RequireRedisEnv = "MODELROUTER_REQUIRE_REDIS"

// Redis is a redis-server of a test: a free loopback port, a data directory with an
// append-only file synced on every write, so that a SIGKILL loses nothing.
type Redis struct {
	Port int
	dir  string
	bin  string
	cmd  *exec.Cmd
}

// FindRedis returns the redis-server command, or an error when it is not installed.
func FindRedis() (string, error) {
	if bin, err := exec.LookPath("redis-server"); err == nil {
		return bin, nil
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	return "", errors.New("redis-server not found (apt-get install redis-server; scripts/install_redis.sh)")
}

// StartRedis starts a redis-server with its data in dir.
func StartRedis(dir string) (*Redis, error) {
	bin, err := FindRedis()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Redis{Port: port, dir: dir, bin: bin}
	return r, r.Start()
}

// URL returns the redis:// URL of the server.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// Start (re)starts the server on its port and data directory and waits until it answers.
func (r *Redis) Start() error {
	r.cmd = exec.Command(r.bin,
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--logfile", filepath.Join(r.dir, "redis.log"), "--daemonize", "no")
	if err := r.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if r.ping() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Kill()
	log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	return fmt.Errorf("redis-server did not answer within %s:\n%s", startTimeout, log)
}

func (r *Redis) ping() bool {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.Port), 500*time.Millisecond)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (r *Redis) Kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// Stop stops the server if it runs.
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = r.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			_ = r.cmd.Process.Kill()
			<-done
		}
		r.cmd = nil
	}
}
