package dev.modelrouter.testing;

import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/** A real {@code modelrouter serve} on a free loopback port, for the tests. */
public final class TestServer implements AutoCloseable {
  private static final Duration START_TIMEOUT = Duration.ofSeconds(60);
  private static final Duration STOP_TIMEOUT = Duration.ofSeconds(20);

  private final Process process;
  private final Path log;
  private final String address;
  // The server's own state directory ($XDG_STATE_HOME): its store starts empty.
  private final Path state;
  private final ChannelCredentials credentials;

  private TestServer(
      Process process, Path log, String address, Path state, ChannelCredentials credentials) {
    this.process = process;
    this.log = log;
    this.address = address;
    this.state = state;
    this.credentials = credentials;
  }

  /** Return the modelrouter command: $MODELROUTER_BIN, else modelrouter on PATH. */
  public static String binary() {
    String bin = System.getenv("MODELROUTER_BIN");
    if (bin != null && !bin.isEmpty()) {
      return bin;
    }
    for (String dir : System.getenv().getOrDefault("PATH", "").split(File.pathSeparator)) {
      File candidate = new File(dir, "modelrouter");
      if (candidate.canExecute()) {
        return candidate.getPath();
      }
    }
    throw new IllegalStateException(
        "modelrouter not found: set MODELROUTER_BIN or put the command on PATH");
  }

  /** Start {@code modelrouter serve} with the shared test configuration and one worker. */
  public static TestServer start() throws IOException, InterruptedException {
    String config = System.getProperty("modelrouter.testConfig", "../testdata/server.yaml");
    return start(config, Map.of(), InsecureChannelCredentials.create());
  }

  /**
   * Start {@code modelrouter serve} with a configuration, more environment, and the credentials
   * of the health checks that wait for it to serve.
   */
  public static TestServer start(
      String config, Map<String, String> env, ChannelCredentials credentials)
      throws IOException, InterruptedException {
    IllegalStateException last = null;
    // The free port is found by binding and releasing it; another process may take it in
    // between, so a server that exits during start-up is retried on a new port.
    for (int attempt = 0; attempt < 3; attempt++) {
      int port = freePort();
      List<String> argv = new ArrayList<>(List.of(binary(), "serve", "--host", "127.0.0.1",
          "--port", Integer.toString(port), "--config", config, "--workers", "1"));
      Path log = Files.createTempFile("modelrouter-serve-", ".log");
      Path state = Files.createTempDirectory("modelrouter-client-state-");
      ProcessBuilder builder = new ProcessBuilder(argv).redirectErrorStream(true)
          .redirectOutput(log.toFile());
      builder.environment().put("XDG_STATE_HOME", state.toString());
      builder.environment().putAll(env);
      Process process = builder.start();
      TestServer server = new TestServer(process, log, "127.0.0.1:" + port, state, credentials);
      try {
        server.waitServing();
        return server;
      } catch (IllegalStateException e) {
        server.close();
        last = e;
      }
    }
    throw last;
  }

  /** Return the "host:port" the server listens on. */
  public String address() {
    return address;
  }

  /** Return everything the server printed so far. */
  public String output() {
    try {
      return Files.readString(log);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private void waitServing() throws InterruptedException {
    ManagedChannel channel = Grpc.newChannelBuilder(address, credentials).build();
    try {
      HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(channel);
      Instant deadline = Instant.now().plus(START_TIMEOUT);
      while (Instant.now().isBefore(deadline)) {
        if (!process.isAlive()) {
          throw new IllegalStateException(
              "modelrouter serve exited with " + process.exitValue() + ":\n" + output());
        }
        try {
          HealthCheckResponse reply = health.withDeadlineAfter(500, TimeUnit.MILLISECONDS)
              .check(HealthCheckRequest.getDefaultInstance());
          if (reply.getStatus() == HealthCheckResponse.ServingStatus.SERVING) {
            return;
          }
        } catch (StatusRuntimeException notYet) {
          // Not listening yet: poll again.
        }
        Thread.sleep(100);
      }
      throw new IllegalStateException("modelrouter serve not SERVING after " + START_TIMEOUT
          + ":\n" + output());
    } finally {
      channel.shutdownNow();
    }
  }

  /** Stop with SIGTERM (forcibly after a timeout) and return the exit code. */
  public int stop() throws InterruptedException {
    process.destroy();
    if (!process.waitFor(STOP_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS)) {
      process.destroyForcibly().waitFor();
      throw new IllegalStateException("modelrouter serve ignored SIGTERM for " + STOP_TIMEOUT);
    }
    return process.exitValue();
  }

  /** Stop the server if it still runs (waiting for it) and delete its log. */
  @Override
  public void close() {
    try {
      if (process.isAlive()) {
        stop();
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
    try {
      Files.deleteIfExists(log);
      try (var paths = Files.walk(state)) {
        for (Path path : paths.sorted(Comparator.reverseOrder()).toList()) {
          Files.deleteIfExists(path);
        }
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    }
  }
}
