package dev.modelrouter.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.DescriptorProtos.FileDescriptorProto;
import com.google.protobuf.InvalidProtocolBufferException;
import dev.modelrouter.testing.TestServer;
import dev.modelrouter.v1.AttemptOutcome;
import dev.modelrouter.v1.CompleteEvent;
import dev.modelrouter.v1.CompleteRequest;
import dev.modelrouter.v1.CompletionSummary;
import dev.modelrouter.v1.DecisionReason;
import dev.modelrouter.v1.Escalation;
import dev.modelrouter.v1.GenerationOptions;
import dev.modelrouter.v1.GetConfigResponse;
import dev.modelrouter.v1.GetStatsRequest;
import dev.modelrouter.v1.GetStatsResponse;
import dev.modelrouter.v1.ModelRouterGrpc;
import dev.modelrouter.v1.RouteRequest;
import dev.modelrouter.v1.RouterProto;
import dev.modelrouter.v1.RoutingDecision;
import dev.modelrouter.v1.TierConfig;
import dev.modelrouter.v1.TierHints;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.reflection.v1alpha.ServerReflectionGrpc;
import io.grpc.reflection.v1alpha.ServerReflectionRequest;
import io.grpc.reflection.v1alpha.ServerReflectionResponse;
import io.grpc.reflection.v1alpha.ServiceResponse;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The client against a real {@code modelrouter serve} (clients/testdata/server.yaml). */
class ModelRouterClientTest {
  private static final List<String> TIERS = List.of("cheap", "strong", "expert");
  private static TestServer server;
  private ModelRouterClient client;

  @BeforeAll
  static void startServer() throws Exception {
    server = TestServer.start();
  }

  @AfterAll
  static void stopServer() throws Exception {
    String output = server.output();
    int code = server.stop();
    server.close();
    assertEquals(0, code, "modelrouter serve did not stop cleanly:\n" + output);
  }

  @BeforeEach
  void connect() {
    client = ModelRouterClient.connect(server.address()).withTimeout(Duration.ofSeconds(30));
  }

  @AfterEach
  void disconnect() {
    client.close();
  }

  private static void checkDecision(RoutingDecision d) {
    assertTrue(d.getTierIndex() < TIERS.size(), "tier index " + d.getTierIndex());
    assertEquals(TIERS.get(d.getTierIndex()), d.getTier());
    assertFalse(d.getModel().isEmpty() || d.getBackend().isEmpty(), d.toString());
    assertFalse(d.getModelVersion().isEmpty() || d.getRequestId().isEmpty(), d.toString());
    assertTrue(d.getScore() >= 0 && d.getScore() <= 1, "score " + d.getScore());
    assertEquals(5, d.getLevelProbabilitiesCount());
    double sum = d.getLevelProbabilitiesList().stream().mapToDouble(Double::doubleValue).sum();
    assertEquals(1.0, sum, 1e-6);
    assertTrue(d.getEstimatedPromptTokens() > 0 && d.getEstimatedCostUsd() > 0, d.toString());
    assertTrue(d.getStrongestTierCostUsd() >= d.getEstimatedCostUsd(), d.toString());
    assertFalse(d.getReason() == DecisionReason.DECISION_REASON_UNSPECIFIED);
  }

  @Test
  void routesAPromptAndReturnsTheRequestIdTrailer() throws InterruptedException {
    AtomicReference<Metadata> headers = new AtomicReference<>();
    AtomicReference<Metadata> trailers = new AtomicReference<>();
    ManagedChannel channel =
        Grpc.newChannelBuilder(server.address(), InsecureChannelCredentials.create()).build();
    try {
      ModelRouterClient capturing = ModelRouterClient.of(ClientInterceptors.intercept(channel,
          MetadataUtils.newCaptureMetadataInterceptor(headers, trailers)));
      RoutingDecision d = capturing.route(ModelRouterClient.prompt("What are your business hours?"));
      checkDecision(d);
      Metadata.Key<String> key =
          Metadata.Key.of(ModelRouterClient.REQUEST_ID_KEY, Metadata.ASCII_STRING_MARSHALLER);
      assertEquals(d.getRequestId(), trailers.get().get(key));
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  @Test
  void sendsTheTraceparentOnEveryCallOfATracedClient() throws InterruptedException {
    Metadata.Key<String> key =
        Metadata.Key.of(ModelRouterClient.TRACEPARENT_KEY, Metadata.ASCII_STRING_MARSHALLER);
    List<String> sent = new ArrayList<>();
    ClientInterceptor recording = new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(
          MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
        return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
          @Override
          public void start(Listener<R> listener, Metadata headers) {
            sent.add(String.valueOf(headers.get(key)));
            super.start(listener, headers);
          }
        };
      }
    };
    ManagedChannel channel =
        Grpc.newChannelBuilder(server.address(), InsecureChannelCredentials.create()).build();
    try {
      String traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
      ModelRouterClient plain = ModelRouterClient.of(ClientInterceptors.intercept(channel, recording))
          .withTimeout(Duration.ofSeconds(30));
      ModelRouterClient traced = plain.withTraceparent(traceparent);
      checkDecision(traced.route(ModelRouterClient.prompt("What are your business hours?")));
      try (CompletionStream stream = traced.complete(CompleteRequest.newBuilder()
          .setRoute(ModelRouterClient.prompt("hi"))
          .setGeneration(GenerationOptions.newBuilder().setMaxTokens(4))
          .build())) {
        stream.collect(text -> { });
      }
      plain.route(ModelRouterClient.prompt("hi"));
      assertEquals(List.of(traceparent, traceparent, "null"), sent);
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  @Test
  void routesMessagesAndEchoesTheRequestId() {
    RouteRequest request = ModelRouterClient.chat(
            ModelRouterClient.system("You are a support assistant."),
            ModelRouterClient.user("I was charged twice."),
            ModelRouterClient.assistant("Sorry to hear that. Which card?"),
            ModelRouterClient.user("Analyze this error log and suggest a fix: NPE in worker 3"))
        .toBuilder()
        .setRequestId("java-client-messages-1")
        .setTenant("java-tests")
        .putMetadata("suite", "java")
        .build();
    RoutingDecision d = client.route(request);
    checkDecision(d);
    assertEquals("java-client-messages-1", d.getRequestId());
  }

  @Test
  void honoursAForcedTier() {
    RouteRequest request = ModelRouterClient.prompt("hi").toBuilder()
        .setHints(TierHints.newBuilder().setTier("expert")).build();
    RoutingDecision d = client.route(request);
    assertEquals("expert", d.getTier());
    assertEquals(DecisionReason.DECISION_REASON_FORCED, d.getReason());
  }

  private static CompleteRequest completeRequest(String tier) {
    return CompleteRequest.newBuilder()
        .setRoute(ModelRouterClient.prompt("How do I reset my password with 2FA enabled?")
            .toBuilder().setHints(TierHints.newBuilder().setTier(tier)))
        .setGeneration(GenerationOptions.newBuilder().setMaxTokens(64))
        .build();
  }

  /** Read a stream to its end, keeping the raw events, and check their order. */
  private static Completion readInOrder(CompletionStream stream) {
    List<CompleteEvent> events = new ArrayList<>();
    Completion completion = new Completion();
    while (stream.hasNext()) {
      CompleteEvent event = stream.next();
      events.add(event);
      completion.add(event);
    }
    assertTrue(events.size() >= 3, "want a decision, text and a summary: " + events);
    assertTrue(events.get(0).hasDecision(), "first event: " + events.get(0));
    assertTrue(events.get(events.size() - 1).hasSummary(), "last event: " + events);
    boolean sawText = false;
    for (CompleteEvent e : events.subList(1, events.size() - 1)) {
      if (e.hasDelta()) {
        sawText = true;
      } else if (e.hasEscalation()) {
        assertFalse(sawText, "escalation after text was sent: " + events);
      } else {
        throw new AssertionError("unexpected event in the middle of the stream: " + e);
      }
    }
    return completion;
  }

  @Test
  void streamsACompletionToTheEnd() {
    Completion c;
    try (CompletionStream stream = client.complete(completeRequest("strong"))) {
      c = readInOrder(stream);
    }
    checkDecision(c.decision());
    CompletionSummary s = c.summary();
    assertFalse(c.text().isEmpty());
    assertEquals(c.text().codePointCount(0, c.text().length()), s.getDeliveredChars());
    assertEquals("strong", s.getTier());
    assertFalse(s.getFinishReason().isEmpty());
    assertTrue(s.getDurationMs() > 0);
    assertTrue(s.getUsage().getPromptTokens() > 0 && s.getUsage().getCompletionTokens() > 0,
        s.getUsage().toString());
    assertTrue(c.escalations().isEmpty());
    assertEquals(1, s.getAttemptsCount());
    assertEquals(AttemptOutcome.ATTEMPT_OUTCOME_OK, s.getAttempts(0).getOutcome());
  }

  @Test
  void escalatesFromAnUnreachableTier() {
    Completion c;
    try (CompletionStream stream = client.complete(completeRequest("cheap"))) {
      c = readInOrder(stream);
    }
    assertEquals(1, c.escalations().size(), c.escalations().toString());
    Escalation e = c.escalations().get(0);
    assertEquals("cheap", e.getFromTier());
    assertEquals("strong", e.getToTier());
    assertEquals(AttemptOutcome.ATTEMPT_OUTCOME_CONNECT_ERROR, e.getAttempt().getOutcome());
    CompletionSummary s = c.summary();
    assertEquals("strong", s.getTier());
    assertEquals(2, s.getAttemptsCount());
    assertEquals(AttemptOutcome.ATTEMPT_OUTCOME_OK, s.getAttempts(1).getOutcome());
    assertFalse(c.text().isEmpty());
    assertTrue(s.getUsage().getCompletionTokens() > 0);
  }

  @Test
  void collectsTheWholeAnswer() {
    StringBuilder streamed = new StringBuilder();
    Completion c;
    CompleteRequest request = CompleteRequest.newBuilder()
        .setRoute(ModelRouterClient.prompt("Compare plan A vs plan B for my usage pattern"))
        .build();
    try (CompletionStream stream = client.complete(request)) {
      c = stream.collect(streamed::append);
    }
    assertNotNull(c.summary());
    assertFalse(c.text().isEmpty());
    assertEquals(c.text(), streamed.toString());
  }

  @Test
  void aDeadlineExpiresMidStream() {
    // The test server's demo backend waits 200 ms before its first token.
    ModelRouterClient hurried = client.withTimeout(Duration.ofMillis(50));
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> {
      try (CompletionStream stream = hurried.complete(completeRequest("strong"))) {
        stream.collect(null);
      }
    });
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
  }

  @Test
  void aCancelledStreamEndsWithCancelled() {
    CompleteRequest request = CompleteRequest.newBuilder()
        .setRoute(ModelRouterClient.prompt("Summarize the history of Rome")).build();
    try (CompletionStream stream = client.complete(request)) {
      assertTrue(stream.next().hasDecision());
      stream.cancel();
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> {
        while (stream.hasNext()) {
          stream.next();
        }
      });
      assertEquals(Status.Code.CANCELLED, e.getStatus().getCode());
    }
    // The server carries on serving after the cancellation.
    checkDecision(client.route(ModelRouterClient.prompt("still there?")));
  }

  @Test
  void anEmptyPromptIsInvalidArgument() {
    RouteRequest empty =
        ModelRouterClient.prompt("").toBuilder().setRequestId("java-client-empty-1").build();
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> client.route(empty));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().contains("prompt"), e.getStatus().toString());
    Metadata.Key<String> key =
        Metadata.Key.of(ModelRouterClient.REQUEST_ID_KEY, Metadata.ASCII_STRING_MARSHALLER);
    assertEquals("java-client-empty-1", e.getTrailers().get(key));

    CompleteRequest request =
        CompleteRequest.newBuilder().setRoute(ModelRouterClient.prompt("")).build();
    e = assertThrows(StatusRuntimeException.class, () -> {
      try (CompletionStream stream = client.complete(request)) {
        stream.collect(null);
      }
    });
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().contains("prompt"), e.getStatus().toString());
  }

  @Test
  void anUnknownTierHintIsInvalidArgument() {
    RouteRequest request = ModelRouterClient.prompt("hello").toBuilder()
        .setHints(TierHints.newBuilder().setMinTier("platinum")).build();
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> client.route(request));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().contains("platinum"), e.getStatus().toString());
  }

  @Test
  void readsTheConfigAndTakesFeedback() {
    GetConfigResponse config = client.config();
    assertEquals(TIERS,
        config.getTiersList().stream().map(TierConfig::getName).collect(Collectors.toList()));
    assertFalse(config.getModelVersion().isEmpty());
    RoutingDecision d = client.route(ModelRouterClient.prompt("What's the weather tomorrow?"));
    client.feedback(d.getRequestId(), 1.0, "good answer");
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> client.feedback("", 1.0, ""));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
  }

  @Test
  void statsCountTheRatedRequests() throws InterruptedException {
    RouteRequest request = ModelRouterClient.prompt("What are your business hours?").toBuilder()
        .setRequestId("java-stats-1").setTenant("java-stats").build();
    client.route(request);
    client.feedback("java-stats-1", 0.9, "fine");
    GetStatsRequest ask = GetStatsRequest.newBuilder().setTenant("java-stats").build();
    // Records reach the store within the server's flush interval.
    Instant deadline = Instant.now().plusSeconds(30);
    GetStatsResponse stats = client.stats(ask);
    while (stats.getTotal().getRated() != 1) {
      assertTrue(Instant.now().isBefore(deadline), "the rating never reached the stats: " + stats);
      Thread.sleep(50);
      stats = client.stats(ask);
    }
    assertEquals(1, stats.getTotal().getRequests());
    assertEquals(0.9, stats.getTotal().getMeanRating());
    assertEquals(1.0, stats.getTotal().getSatisfaction());
    assertEquals(1, stats.getTiersCount());
    assertEquals(0.7, stats.getSatisfiedAt());
    assertEquals("sqlite", stats.getStore().getKind());
    assertTrue(client.stats(GetStatsRequest.getDefaultInstance()).getTotal().getRequests() >= 1);
  }

  @Test
  void reportsHealth() {
    assertEquals(ServingStatus.SERVING, client.health(""));
    assertEquals(ServingStatus.SERVING, client.health(ModelRouterGrpc.SERVICE_NAME));
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> client.health("no.such.Service"));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
  }

  // v1alpha is what ghz and older grpcurl builds speak.
  @Test
  void reflectionDescribesTheService() throws Exception {
    ManagedChannel channel =
        Grpc.newChannelBuilder(server.address(), InsecureChannelCredentials.create()).build();
    try {
      BlockingQueue<Object> replies = new LinkedBlockingQueue<>();
      StreamObserver<ServerReflectionRequest> requests = ServerReflectionGrpc.newStub(channel)
          .serverReflectionInfo(new StreamObserver<ServerReflectionResponse>() {
            @Override
            public void onNext(ServerReflectionResponse value) {
              replies.add(value);
            }

            @Override
            public void onError(Throwable t) {
              replies.add(t);
            }

            @Override
            public void onCompleted() {}
          });
      requests.onNext(ServerReflectionRequest.newBuilder().setListServices("").build());
      List<String> services = reply(replies).getListServicesResponse().getServiceList().stream()
          .map(ServiceResponse::getName).collect(Collectors.toList());
      assertTrue(services.containsAll(List.of(ModelRouterGrpc.SERVICE_NAME,
          "grpc.health.v1.Health")), services.toString());
      // ghz asks for the method itself, grpcurl for the service: both must resolve.
      for (String symbol : List.of(ModelRouterGrpc.SERVICE_NAME,
          ModelRouterGrpc.SERVICE_NAME + ".Route")) {
        requests.onNext(
            ServerReflectionRequest.newBuilder().setFileContainingSymbol(symbol).build());
        ServerReflectionResponse file = reply(replies);
        assertTrue(describesService(file), symbol + ": " + file);
      }
      requests.onCompleted();
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private static ServerReflectionResponse reply(BlockingQueue<Object> replies)
      throws InterruptedException {
    Object reply = replies.poll(10, TimeUnit.SECONDS);
    if (reply instanceof ServerReflectionResponse response) {
      return response;
    }
    throw new AssertionError("no reflection reply: " + reply);
  }

  private static boolean describesService(ServerReflectionResponse response)
      throws InvalidProtocolBufferException {
    for (var raw : response.getFileDescriptorResponse().getFileDescriptorProtoList()) {
      FileDescriptorProto file = FileDescriptorProto.parseFrom(raw);
      for (var service : file.getServiceList()) {
        String name = file.getPackage() + "." + service.getName();
        if (name.equals(ModelRouterGrpc.SERVICE_NAME) && service.getMethodCount() == 5) {
          return true;
        }
      }
    }
    return false;
  }

  @Test
  void methodsMatchTheProto() {
    Map<String, MethodDescriptor<?, ?>> methods = Map.of(
        "Route", ModelRouterGrpc.getRouteMethod(), "Complete", ModelRouterGrpc.getCompleteMethod(),
        "Feedback", ModelRouterGrpc.getFeedbackMethod(),
        "GetConfig", ModelRouterGrpc.getGetConfigMethod(),
        "GetStats", ModelRouterGrpc.getGetStatsMethod());
    var service = RouterProto.getDescriptor().findServiceByName("ModelRouter");
    assertEquals(service.getFullName(), ModelRouterGrpc.SERVICE_NAME);
    assertEquals(service.getMethods().size(), methods.size());
    assertEquals(service.getMethods().size(),
        ModelRouterGrpc.getServiceDescriptor().getMethods().size());
    for (var declared : service.getMethods()) {
      MethodDescriptor<?, ?> method = methods.get(declared.getName());
      assertEquals(service.getFullName() + "/" + declared.getName(), method.getFullMethodName());
      assertEquals(declared.isServerStreaming(),
          method.getType() == MethodDescriptor.MethodType.SERVER_STREAMING);
    }
  }
}
