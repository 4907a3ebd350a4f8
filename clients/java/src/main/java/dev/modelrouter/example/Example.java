package dev.modelrouter.example;

import dev.modelrouter.client.Completion;
import dev.modelrouter.client.CompletionStream;
import dev.modelrouter.client.ModelRouterClient;
import dev.modelrouter.v1.CompleteEvent;
import dev.modelrouter.v1.CompleteRequest;
import dev.modelrouter.v1.CompletionSummary;
import dev.modelrouter.v1.Escalation;
import dev.modelrouter.v1.GenerationOptions;
import dev.modelrouter.v1.RouteRequest;
import dev.modelrouter.v1.RoutingDecision;
import dev.modelrouter.v1.TierHints;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * Route a query with modelrouter and, with {@code -complete}, stream the chosen tier's answer.
 *
 * <pre>
 * mvn -q compile exec:java -Dexec.args="-addr localhost:50051 'What are your business hours?'"
 * mvn -q compile exec:java -Dexec.args="-complete -max-tokens 64 'Compare plan A vs plan B'"
 * </pre>
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) {
    System.exit(run(args, System.out, System.err));
  }

  /** Run the example with args, printing to out and err; return the exit code. */
  public static int run(String[] args, PrintStream out, PrintStream err) {
    String addr = "localhost:50051";
    String tier = "";
    boolean complete = false;
    int maxTokens = 0;
    String traceparent = "";
    Duration timeout = Duration.ofSeconds(30);
    List<String> words = new ArrayList<>();
    try {
      for (int i = 0; i < args.length; i++) {
        switch (args[i]) {
          case "-addr" -> addr = args[++i];
          case "-tier" -> tier = args[++i];
          case "-complete" -> complete = true;
          case "-max-tokens" -> maxTokens = Integer.parseInt(args[++i]);
          case "-timeout-ms" -> timeout = Duration.ofMillis(Long.parseLong(args[++i]));
          case "-traceparent" -> traceparent = args[++i];
          default -> words.add(args[i]);
        }
      }
    } catch (ArrayIndexOutOfBoundsException | NumberFormatException e) {
      words.clear();
    }
    if (words.isEmpty()) {
      err.println("usage: Example [-addr HOST:PORT] [-tier NAME] [-complete] [-max-tokens N]"
          + " [-timeout-ms MS] [-traceparent 00-TRACEID-SPANID-01] PROMPT");
      return 2;
    }

    try (ModelRouterClient client = ModelRouterClient.connect(addr)) {
      ModelRouterClient calls = client.withTimeout(timeout);
      if (!traceparent.isEmpty()) {
        // The server's spans of these calls join the caller's trace.
        calls = calls.withTraceparent(traceparent);
      }
      RouteRequest.Builder route = ModelRouterClient.prompt(String.join(" ", words)).toBuilder();
      if (!tier.isEmpty()) {
        route.setHints(TierHints.newBuilder().setTier(tier));
      }
      if (!complete) {
        printDecision(out, calls.route(route.build()));
        return 0;
      }
      CompleteRequest request =
          CompleteRequest.newBuilder()
              .setRoute(route)
              .setGeneration(GenerationOptions.newBuilder().setMaxTokens(maxTokens))
              .build();
      Completion completion = new Completion();
      try (CompletionStream stream = calls.complete(request)) {
        while (stream.hasNext()) {
          CompleteEvent event = stream.next();
          out.print(completion.add(event));
          if (event.hasDecision()) {
            printDecision(out, event.getDecision());
          } else if (event.hasEscalation()) {
            Escalation e = event.getEscalation();
            out.printf("escalated %s -> %s (%s)%n", e.getFromTier(), e.getToTier(),
                e.getAttempt().getOutcome());
          }
        }
      }
      CompletionSummary s = completion.summary();
      out.printf(
          "%nanswered by %s (%s): %d prompt + %d completion tokens, $%.6f (strongest tier:"
              + " $%.6f), %.1f ms%n",
          s.getTier(), s.getModel(), s.getUsage().getPromptTokens(),
          s.getUsage().getCompletionTokens(), s.getCostUsd(), s.getStrongestTierCostUsd(),
          s.getDurationMs());
      return 0;
    } catch (StatusRuntimeException e) {
      out.println();
      err.printf("modelrouter: %s: %s%n", e.getStatus().getCode(), e.getStatus().getDescription());
      return 1;
    }
  }

  private static void printDecision(PrintStream out, RoutingDecision d) {
    out.printf("tier %s (%s on %s), score %.3f, %s, decided in %.1f us, request %s%n",
        d.getTier(), d.getModel(), d.getBackend(), d.getScore(), d.getReason(),
        d.getDecisionMicros(), d.getRequestId());
  }
}
