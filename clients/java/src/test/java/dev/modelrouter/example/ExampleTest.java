package dev.modelrouter.example;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.modelrouter.testing.TestServer;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The example command against a real {@code modelrouter serve}. */
class ExampleTest {
  private static TestServer server;

  @BeforeAll
  static void startServer() throws Exception {
    server = TestServer.start();
  }

  @AfterAll
  static void stopServer() throws Exception {
    server.close();
  }

  private record Result(int code, String out, String err) {}

  private static Result run(String... args) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    String[] argv = new String[args.length + 2];
    argv[0] = "-addr";
    argv[1] = server.address();
    System.arraycopy(args, 0, argv, 2, args.length);
    int code = Example.run(argv, new PrintStream(out, true, StandardCharsets.UTF_8),
        new PrintStream(err, true, StandardCharsets.UTF_8));
    return new Result(code, out.toString(StandardCharsets.UTF_8),
        err.toString(StandardCharsets.UTF_8));
  }

  @Test
  void routes() {
    Result r = run("What are your business hours?");
    assertEquals(0, r.code(), r.toString());
    assertTrue(r.out().startsWith("tier ") && r.out().contains("score "), r.toString());
  }

  @Test
  void streamsAnEscalatedAnswer() {
    Result r = run("-complete", "-tier", "cheap", "-max-tokens", "32", "How do I reset it?");
    assertEquals(0, r.code(), r.toString());
    assertTrue(r.out().contains("escalated cheap -> strong"), r.toString());
    assertTrue(r.out().contains("answered by strong"), r.toString());
  }

  @Test
  void reportsInvalidArgument() {
    Result r = run("-tier", "platinum", "hello");
    assertEquals(1, r.code(), r.toString());
    assertTrue(r.err().contains("INVALID_ARGUMENT"), r.toString());
  }
}
