package dev.modelrouter.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.RetryInfo;
import dev.modelrouter.testing.Pki;
import dev.modelrouter.testing.TestServer;
import dev.modelrouter.v1.CompleteRequest;
import dev.modelrouter.v1.RoutingDecision;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.protobuf.StatusProto;
import java.io.IOException;
import java.time.Duration;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * TLS, mutual TLS, API keys and a tenant's rate limit against a real {@code modelrouter
 * serve} (clients/testdata/server-tls.yaml) on certificates made for the test.
 */
class TlsTest {
  // The API keys of server-tls.yaml (test values; the file lists their SHA-256 digests).
  private static final String CLIENTS_KEY = "mrk_clients-test-key";
  private static final String LIMITED_KEY = "mrk_limited-test-key";

  private static Pki pki;
  private static TestServer server;

  @BeforeAll
  static void startServer() throws Exception {
    pki = Pki.create();
    String config = System.getProperty("modelrouter.testConfig", "../testdata/server.yaml")
        .replace("server.yaml", "server-tls.yaml");
    server = TestServer.start(config, Map.of("MODELROUTER_TEST_TLS_DIR", pki.dir().toString()),
        trusted().credentials());
  }

  @AfterAll
  static void stopServer() throws Exception {
    if (server != null) {
      assertEquals(0, server.stop(), server.output());
      server.close();
    }
  }

  private static TlsOptions trusted() {
    return TlsOptions.trusting(pki.path("ca.crt"))
        .withClientCertificate(pki.path("client.crt"), pki.path("client.key"));
  }

  private static Status.Code routeCode(ModelRouterClient client) {
    try {
      client.withTimeout(Duration.ofSeconds(10)).route(ModelRouterClient.prompt("hello"));
      return Status.Code.OK;
    } catch (StatusRuntimeException e) {
      return e.getStatus().getCode();
    }
  }

  @Test
  void mutualTlsWithAKeyRoutesAndCompletes() throws IOException {
    try (ModelRouterClient connection = ModelRouterClient.connect(server.address(), trusted())) {
      ModelRouterClient client = connection.withApiKey(CLIENTS_KEY).withTimeout(Duration.ofSeconds(30));
      RoutingDecision d = client.route(ModelRouterClient.prompt("What are your business hours?"));
      assertTrue(d.getTier().length() > 0);
      CompleteRequest request =
          CompleteRequest.newBuilder().setRoute(ModelRouterClient.prompt("hi")).build();
      try (CompletionStream stream = client.complete(request)) {
        assertNotNull(stream.collect(text -> { }).summary());
      }
      // Health stays open without a key.
      assertEquals(ServingStatus.SERVING, connection.health(""));
    }
  }

  @Test
  void aServerNameOverrideIsCheckedAgainstTheCertificate() throws IOException {
    try (ModelRouterClient ok = ModelRouterClient.connect(server.address(),
            trusted().withServerName("localhost"));
        ModelRouterClient wrong = ModelRouterClient.connect(server.address(),
            trusted().withServerName("elsewhere.example"))) {
      assertEquals(Status.Code.OK, routeCode(ok.withApiKey(CLIENTS_KEY)));
      assertEquals(Status.Code.UNAVAILABLE, routeCode(wrong.withApiKey(CLIENTS_KEY)));
    }
  }

  @Test
  void plaintextToTheTlsPortFails() {
    try (ModelRouterClient client = ModelRouterClient.connect(server.address())) {
      assertEquals(Status.Code.UNAVAILABLE, routeCode(client));
    }
  }

  @Test
  void aClientTrustingAnotherCaFails() throws IOException {
    TlsOptions wrongCa = TlsOptions.trusting(pki.path("other-ca.crt"))
        .withClientCertificate(pki.path("client.crt"), pki.path("client.key"));
    try (ModelRouterClient client = ModelRouterClient.connect(server.address(), wrongCa)) {
      assertEquals(Status.Code.UNAVAILABLE, routeCode(client.withApiKey(CLIENTS_KEY)));
    }
  }

  @Test
  void aClientCertificateFromAnotherCaIsRefused() throws IOException {
    TlsOptions foreign = TlsOptions.trusting(pki.path("ca.crt"))
        .withClientCertificate(pki.path("other-client.crt"), pki.path("other-client.key"));
    try (ModelRouterClient client = ModelRouterClient.connect(server.address(), foreign)) {
      assertEquals(Status.Code.UNAVAILABLE, routeCode(client.withApiKey(CLIENTS_KEY)));
    }
  }

  @Test
  void keysDecideWhoMayCallWhat() throws IOException {
    try (ModelRouterClient client = ModelRouterClient.connect(server.address(), trusted())) {
      assertEquals(Status.Code.UNAUTHENTICATED, routeCode(client));
      assertEquals(Status.Code.UNAUTHENTICATED, routeCode(client.withApiKey("mrk_unknown")));
      StatusRuntimeException denied = assertThrows(StatusRuntimeException.class,
          () -> client.withApiKey(LIMITED_KEY).config());
      assertEquals(Status.Code.PERMISSION_DENIED, denied.getStatus().getCode());
    }
  }

  @Test
  void overTheTenantsRateIsResourceExhaustedWithRetryInfo() throws Exception {
    try (ModelRouterClient connection = ModelRouterClient.connect(server.address(), trusted())) {
      ModelRouterClient client = connection.withApiKey(LIMITED_KEY).withTimeout(Duration.ofSeconds(10));
      StatusRuntimeException refused = null;
      for (int i = 0; i < 3 && refused == null; i++) { // a burst of 2, then 0.2 a second
        try {
          client.route(ModelRouterClient.prompt("hi"));
        } catch (StatusRuntimeException e) {
          refused = e;
        }
      }
      assertNotNull(refused, "three calls in a row were all admitted");
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, refused.getStatus().getCode());
      // The standard way: StatusProto.fromThrowable and the RetryInfo detail.
      com.google.rpc.Status status = StatusProto.fromThrowable(refused);
      assertNotNull(status, "no grpc-status-details-bin");
      RetryInfo info = null;
      for (Any detail : status.getDetailsList()) {
        if (detail.is(RetryInfo.class)) {
          info = detail.unpack(RetryInfo.class);
        }
      }
      assertNotNull(info, "no RetryInfo in " + status);
      Duration delay = Duration.ofSeconds(
          info.getRetryDelay().getSeconds(), info.getRetryDelay().getNanos());
      assertTrue(!delay.isNegative() && !delay.isZero() && delay.compareTo(Duration.ofSeconds(5)) <= 0,
          "retry delay " + delay);
      assertEquals(delay, ModelRouterClient.retryDelay(refused).orElseThrow());
      assertTrue(ModelRouterClient.retryDelay(Status.INTERNAL.asRuntimeException()).isEmpty());
    }
  }

  @Test
  void aClientCertificateNeedsItsKey() {
    assertThrows(IllegalArgumentException.class,
        () -> new TlsOptions(pki.path("ca.crt"), pki.path("client.crt"), null, null));
  }
}
