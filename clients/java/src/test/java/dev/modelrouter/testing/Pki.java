package dev.modelrouter.testing;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Certificates made at test time with {@code openssl}, as PEM files in a directory.
 *
 * <pre>
 * ca.crt                      the CA of the server and of the trusted clients
 * server.crt, server.key      the server, for 127.0.0.1, ::1 and localhost
 * client.crt, client.key      a client certificate signed by ca.crt
 * other-ca.crt                another CA
 * other-client.crt/.key       a client certificate signed by other-ca.crt
 * </pre>
 */
public final class Pki {
  private final Path dir;

  private Pki(Path dir) {
    this.dir = dir;
  }

  /** Make the CAs and certificates in a new temporary directory. */
  public static Pki create() throws IOException, InterruptedException {
    Pki pki = new Pki(Files.createTempDirectory("modelrouter-pki-"));
    pki.authority("ca", "modelrouter test CA");
    pki.authority("other-ca", "someone else's CA");
    pki.issue("ca", "server", "modelrouter",
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n");
    pki.issue("ca", "client", "java-client-test", "extendedKeyUsage=clientAuth\n");
    pki.issue("other-ca", "other-client", "java-client-test", "extendedKeyUsage=clientAuth\n");
    return pki;
  }

  /** Return the directory of the files. */
  public Path dir() {
    return dir;
  }

  /** Return the path of one of the files. */
  public Path path(String name) {
    return dir.resolve(name);
  }

  private void authority(String name, String commonName) throws IOException, InterruptedException {
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", path(name + ".key").toString(), "-out", path(name + ".crt").toString(),
        "-days", "1", "-subj", "/CN=" + commonName,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  }

  private void issue(String ca, String name, String commonName, String extensions)
      throws IOException, InterruptedException {
    Path csr = path(name + ".csr");
    Path ext = path(name + ".ext");
    Files.writeString(ext, extensions, StandardCharsets.UTF_8);
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", path(name + ".key").toString(), "-out", csr.toString(),
        "-subj", "/CN=" + commonName);
    openssl("x509", "-req", "-in", csr.toString(), "-CA", path(ca + ".crt").toString(),
        "-CAkey", path(ca + ".key").toString(), "-set_serial",
        Long.toString(System.nanoTime()), "-days", "1", "-extfile", ext.toString(),
        "-out", path(name + ".crt").toString());
  }

  private static void openssl(String... args) throws IOException, InterruptedException {
    List<String> argv = new ArrayList<>(List.of("openssl"));
    argv.addAll(List.of(args));
    Process process = new ProcessBuilder(argv).redirectErrorStream(true).start();
    String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    if (process.waitFor() != 0) {
      throw new IOException(String.join(" ", argv) + " failed:\n" + output);
    }
  }
}
