package dev.modelrouter.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.RetryInfo;
import dev.modelrouter.v1.CompleteEvent;
import dev.modelrouter.v1.CompleteRequest;
import dev.modelrouter.v1.FeedbackRequest;
import dev.modelrouter.v1.GetConfigRequest;
import dev.modelrouter.v1.GetConfigResponse;
import dev.modelrouter.v1.GetStatsRequest;
import dev.modelrouter.v1.GetStatsResponse;
import dev.modelrouter.v1.Message;
import dev.modelrouter.v1.ModelRouterGrpc;
import dev.modelrouter.v1.RouteRequest;
import dev.modelrouter.v1.RoutingDecision;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.MetadataUtils;
import java.io.IOException;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.TimeUnit;

/**
 * A client for the modelrouter gRPC service; thread-safe.
 *
 * <p>{@link #route} asks which model tier should answer a query; {@link #complete} also runs
 * that tier and streams the answer. Failures are {@link io.grpc.StatusRuntimeException}s: an
 * empty prompt or an unknown tier is {@code INVALID_ARGUMENT}, an overloaded server {@code
 * RESOURCE_EXHAUSTED}, a passed deadline {@code DEADLINE_EXCEEDED}.
 *
 * <p>It wraps the generated {@link ModelRouterGrpc} blocking stub; use {@link
 * ModelRouterGrpc#newStub} or {@link ModelRouterGrpc#newFutureStub} for asynchronous calls.
 */
public final class ModelRouterClient implements AutoCloseable {
  /**
   * The response metadata key of the request id: a trailer on Route and on errors, a header on
   * Complete's stream.
   */
  public static final String REQUEST_ID_KEY = "x-request-id";

  /** The request metadata key of a W3C Trace Context traceparent. */
  public static final String TRACEPARENT_KEY = "traceparent";

  private static final Metadata.Key<String> TRACEPARENT =
      Metadata.Key.of(TRACEPARENT_KEY, Metadata.ASCII_STRING_MARSHALLER);

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final Channel channel;
  private final ManagedChannel owned;
  private final Duration timeout;
  private final Metadata headers;
  private final ModelRouterGrpc.ModelRouterBlockingStub router;
  private final HealthGrpc.HealthBlockingStub healthChecks;

  private ModelRouterClient(Channel channel, ManagedChannel owned, Duration timeout) {
    this(channel, owned, timeout, null);
  }

  private ModelRouterClient(
      Channel channel, ManagedChannel owned, Duration timeout, Metadata headers) {
    this.channel = channel;
    this.owned = owned;
    this.timeout = timeout;
    this.headers = headers;
    ModelRouterGrpc.ModelRouterBlockingStub stub = ModelRouterGrpc.newBlockingStub(channel);
    this.router =
        headers == null
            ? stub
            : stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    this.healthChecks = HealthGrpc.newBlockingStub(channel);
  }

  /** Connect to target ("host:port") in plaintext; {@link #close} closes the connection. */
  public static ModelRouterClient connect(String target) {
    return connect(target, InsecureChannelCredentials.create());
  }

  /** Connect to target with the given credentials (TLS, for example). */
  public static ModelRouterClient connect(String target, ChannelCredentials credentials) {
    ManagedChannel channel = Grpc.newChannelBuilder(target, credentials).build();
    return new ModelRouterClient(channel, channel, null);
  }

  /**
   * Connect to target over TLS (mutual TLS when the options carry a client certificate); a
   * server name in the options overrides the authority checked against the certificate.
   */
  public static ModelRouterClient connect(String target, TlsOptions tls) throws IOException {
    ManagedChannelBuilder<?> builder = Grpc.newChannelBuilder(target, tls.credentials());
    if (tls.serverName() != null) {
      builder.overrideAuthority(tls.serverName());
    }
    ManagedChannel channel = builder.build();
    return new ModelRouterClient(channel, channel, null);
  }

  /** Use an existing channel, which the caller keeps and shuts down. */
  public static ModelRouterClient of(Channel channel) {
    return new ModelRouterClient(channel, null, null);
  }

  /** Return a client on the same channel whose every call has this deadline from its start. */
  public ModelRouterClient withTimeout(Duration timeout) {
    return new ModelRouterClient(channel, null, timeout, headers);
  }

  /**
   * Return a client on the same channel whose calls carry a W3C traceparent ("00-" + 32 hex
   * digits of trace id + "-" + 16 of parent span id + "-01" when sampled): a server with tracing
   * on continues that trace. A caller instrumented with OpenTelemetry (its grpc-java
   * instrumentation) sends it without this.
   */
  public ModelRouterClient withTraceparent(String traceparent) {
    Metadata added = new Metadata();
    if (headers != null) {
      added.merge(headers);
    }
    added.put(TRACEPARENT, traceparent);
    return new ModelRouterClient(channel, null, timeout, added);
  }

  /**
   * Return a client on the same channel whose calls carry {@code authorization: Bearer key}, for
   * a server with API keys on (send it over TLS only: a key is a password).
   */
  public ModelRouterClient withApiKey(String key) {
    Metadata added = new Metadata();
    if (headers != null) {
      added.merge(headers);
    }
    added.put(AUTHORIZATION, "Bearer " + key);
    return new ModelRouterClient(channel, null, timeout, added);
  }

  /**
   * Return how long the server asked to wait before retrying a failed call: the {@code
   * google.rpc.RetryInfo} in its status details (RESOURCE_EXHAUSTED when a tenant is over a
   * limit, UNAVAILABLE when the limits cannot be checked), read with {@link
   * StatusProto#fromThrowable}; empty when the status carries none.
   */
  public static Optional<Duration> retryDelay(Throwable error) {
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    if (status == null) {
      return Optional.empty();
    }
    for (Any detail : status.getDetailsList()) {
      if (detail.is(RetryInfo.class)) {
        try {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          return Optional.of(Duration.ofSeconds(delay.getSeconds(), delay.getNanos()));
        } catch (InvalidProtocolBufferException e) {
          return Optional.empty();
        }
      }
    }
    return Optional.empty();
  }

  /** Return a request that routes a single query. */
  public static RouteRequest prompt(String text) {
    return RouteRequest.newBuilder().setPrompt(text).build();
  }

  /** Return a request that routes a conversation; its last user turn is what is routed. */
  public static RouteRequest chat(Message... messages) {
    return RouteRequest.newBuilder().addAllMessages(List.of(messages)).build();
  }

  /** Return a system turn. */
  public static Message system(String content) {
    return Message.newBuilder().setRole("system").setContent(content).build();
  }

  /** Return a user turn. */
  public static Message user(String content) {
    return Message.newBuilder().setRole("user").setContent(content).build();
  }

  /** Return an assistant turn. */
  public static Message assistant(String content) {
    return Message.newBuilder().setRole("assistant").setContent(content).build();
  }

  /** Return the tier that should answer the request, without calling any model. */
  public RoutingDecision route(RouteRequest request) {
    return withDeadline(router).route(request).getDecision();
  }

  /** Start a Complete call; iterate or collect the returned stream, and close it when done. */
  public CompletionStream complete(CompleteRequest request) {
    // The call belongs to its own cancellable context, so the stream can abandon it.
    Context.CancellableContext context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      Iterator<CompleteEvent> events = withDeadline(router).complete(request);
      return new CompletionStream(context, events);
    } finally {
      context.detach(previous);
    }
  }

  /** Rate the answer given under requestId (0 bad to 1 good); true if the server knew it. */
  public boolean feedback(String requestId, double rating, String comment) {
    FeedbackRequest request =
        FeedbackRequest.newBuilder()
            .setRequestId(requestId)
            .setRating(rating)
            .setComment(comment)
            .build();
    return withDeadline(router).feedback(request).getKnownRequest();
  }

  /**
   * Return satisfaction, escalation, errors, latency and cost per tier and model, read from the
   * server's store; an empty request counts every stored request. FAILED_PRECONDITION means the
   * server keeps no store ({@code store: null}).
   */
  public GetStatsResponse stats(GetStatsRequest request) {
    return withDeadline(router).getStats(request);
  }

  /** Return the server's tiers, prices, thresholds and routing model version. */
  public GetConfigResponse config() {
    return withDeadline(router).getConfig(GetConfigRequest.getDefaultInstance());
  }

  /** Return the serving status the server reports for service ("" for the whole server). */
  public HealthCheckResponse.ServingStatus health(String service) {
    return withDeadline(healthChecks)
        .check(HealthCheckRequest.newBuilder().setService(service).build())
        .getStatus();
  }

  /** Close the connection opened by {@link #connect}; nothing for other clients. */
  @Override
  public void close() {
    if (owned == null) {
      return;
    }
    owned.shutdown();
    try {
      if (!owned.awaitTermination(5, TimeUnit.SECONDS)) {
        owned.shutdownNow();
      }
    } catch (InterruptedException e) {
      owned.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  // A deadline is a point in time fixed when it is set, so each call takes its own from the
  // timeout rather than the stubs carrying one from the client's creation.
  private <S extends AbstractStub<S>> S withDeadline(S stub) {
    return timeout == null ? stub : stub.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }
}
