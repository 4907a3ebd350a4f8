package dev.modelrouter.client;

import io.grpc.ChannelCredentials;
import io.grpc.TlsChannelCredentials;
import java.io.IOException;
import java.nio.file.Path;

/**
 * TLS to a server whose gRPC port has {@code server.tls} set: the CAs to trust, a client
 * certificate for mutual TLS, and a server name override.
 *
 * <pre>{@code
 * TlsOptions tls = TlsOptions.trusting(Path.of("ca.crt"))
 *     .withClientCertificate(Path.of("client.crt"), Path.of("client.key"))
 *     .withServerName("modelrouter.internal");
 * ModelRouterClient client = ModelRouterClient.connect("10.0.0.7:50051", tls);
 * }</pre>
 *
 * @param caFile a PEM bundle of the CAs that may sign the server's certificate; null: the
 *     JDK's default trust store
 * @param certFile the PEM client certificate (chain) for mutual TLS, or null
 * @param keyFile its PEM (PKCS#8) private key, or null
 * @param serverName the name checked against the server's certificate instead of the
 *     target's host (dialing an IP address or a proxy), or null
 */
public record TlsOptions(Path caFile, Path certFile, Path keyFile, String serverName) {
  public TlsOptions {
    if ((certFile == null) != (keyFile == null)) {
      throw new IllegalArgumentException(
          "set both the client certificate and its key, or neither");
    }
  }

  /** Return options that trust the CAs of a PEM bundle. */
  public static TlsOptions trusting(Path caFile) {
    return new TlsOptions(caFile, null, null, null);
  }

  /** Return options that trust the JDK's default trust store. */
  public static TlsOptions systemRoots() {
    return new TlsOptions(null, null, null, null);
  }

  /** Return these options with a client certificate and key (mutual TLS). */
  public TlsOptions withClientCertificate(Path certFile, Path keyFile) {
    return new TlsOptions(caFile, certFile, keyFile, serverName);
  }

  /** Return these options checking the server's certificate against {@code name}. */
  public TlsOptions withServerName(String name) {
    return new TlsOptions(caFile, certFile, keyFile, name);
  }

  /** Return the channel credentials of these options. */
  public ChannelCredentials credentials() throws IOException {
    TlsChannelCredentials.Builder builder = TlsChannelCredentials.newBuilder();
    if (caFile != null) {
      builder.trustManager(caFile.toFile());
    }
    if (certFile != null) {
      builder.keyManager(certFile.toFile(), keyFile.toFile());
    }
    return builder.build();
  }
}
