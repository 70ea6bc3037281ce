package dev.lifeline;

import static dev.lifeline.LifelineClient.State.ONLINE;
import static dev.lifeline.LifelineClient.State.STOPPED;
import static dev.lifeline.LifelineClient.State.WAITING;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.util.Base64;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The TLS path against a scripted TLS server and against the real Lifeline
 * server with TLS on, with throwaway certificates from the JDK's keytool.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class TlsTest {
    static final long WAIT_MILLIS = 5000;
    static final char[] PASSWORD = "changeit".toCharArray();

    /** A PKCS12 key store with one self-signed key pair whose certificate names {@code subjectAltName}. */
    static KeyStore selfSigned(Path dir, String subjectAltName) throws Exception {
        return selfSigned(dir, subjectAltName, "EC", "-groupname", "secp256r1");
    }

    /** As above, with the key algorithm and its size or curve given. */
    static KeyStore selfSigned(Path dir, String subjectAltName, String keyalg, String sizeFlag, String size)
            throws Exception {
        File store = dir.resolve("server-" + keyalg + "-" + subjectAltName.replaceAll("[^a-z0-9]", "_") + ".p12")
                .toFile();
        String keytool = System.getProperty("java.home") + File.separator + "bin" + File.separator + "keytool";
        Process process = new ProcessBuilder(keytool, "-genkeypair", "-alias", "server", "-keyalg", keyalg,
                sizeFlag, size, "-dname", "CN=lifeline test", "-ext", "san=" + subjectAltName,
                "-validity", "2", "-storetype", "PKCS12", "-keystore", store.getPath(),
                "-storepass", new String(PASSWORD), "-keypass", new String(PASSWORD))
                .redirectErrorStream(true).start();
        String output = new String(process.getInputStream().readAllBytes());
        assertTrue(process.waitFor(30, TimeUnit.SECONDS) && process.exitValue() == 0, "keytool: " + output);
        KeyStore keys = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(store)) {
            keys.load(in, PASSWORD);
        }
        return keys;
    }

    static SSLContext serverContext(KeyStore keys) throws Exception {
        KeyManagerFactory factory = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        factory.init(keys, PASSWORD);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(factory.getKeyManagers(), null, null);
        return context;
    }

    /** A client context that trusts exactly the certificate in {@code keys}. */
    static SSLContext trusting(KeyStore keys) throws Exception {
        Certificate certificate = keys.getCertificate("server");
        KeyStore anchors = KeyStore.getInstance("PKCS12");
        anchors.load(null, null);
        anchors.setCertificateEntry("server", certificate);
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(anchors);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, factory.getTrustManagers(), null);
        return context;
    }

    static FakeServer tlsServer(KeyStore keys) throws Exception {
        return new FakeServer(serverContext(keys).getServerSocketFactory()
                .createServerSocket(0, 50, InetAddress.getLoopbackAddress()));
    }

    @Test
    void logsInOverTlsAndCloses(@TempDir Path dir) throws Exception {
        KeyStore keys = selfSigned(dir, "ip:127.0.0.1");
        Recorder recorder = new Recorder();
        try (FakeServer server = tlsServer(keys);
                LifelineClient client = LifelineClient.builder("127.0.0.1", server.port(), "alice")
                        .tls(trusting(keys).getSocketFactory()).listener(recorder).build()) {
            client.start();
            try (RawPeer peer = server.acceptLogin("alice", WAIT_MILLIS)) {
                peer.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
                peer.send("<msg from=\"bob\" id=\"b-1\">over TLS</msg>");
                assertEquals("over TLS", recorder.awaitMessage("b-1", 0, WAIT_MILLIS).text);
                client.send("bob", "back");
                assertEquals("back", peer.expect("msg", WAIT_MILLIS).text);

                client.close();
                assertEquals(STOPPED, client.state());
                assertTrue(peer.awaitClosed(WAIT_MILLIS), "the TLS connection stayed open after close()");
            }
        }
    }

    @Test
    void refusesACertificateForAnotherHost(@TempDir Path dir) throws Exception {
        KeyStore keys = selfSigned(dir, "dns:elsewhere.invalid");
        Recorder recorder = new Recorder();
        try (FakeServer server = tlsServer(keys);
                LifelineClient client = LifelineClient.builder("127.0.0.1", server.port(), "alice")
                        .tls(trusting(keys).getSocketFactory()).listener(recorder)
                        .backoffBaseMillis(5000).backoffCapMillis(5000).build()) {
            client.start();
            try (RawPeer peer = server.accept(WAIT_MILLIS)) {
                // The chain is trusted, the name is not: no login may cross.
                assertNull(peer.next(WAIT_MILLIS), "the client logged in to a server for another name");
            }
            assertEquals("connect-failed", recorder.awaitState(WAITING, 0, WAIT_MILLIS).reason);
        }
    }

    /** Writes {@code der} as one PEM block of {@code type}. */
    static Path pem(Path file, String type, byte[] der) throws Exception {
        String body = Base64.getMimeEncoder(64, "\n".getBytes()).encodeToString(der);
        Files.writeString(file, "-----BEGIN " + type + "-----\n" + body + "\n-----END " + type + "-----\n");
        return file;
    }

    @Test
    void logsInToTheRealServerOverTls(@TempDir Path dir) throws Exception {
        // RSA: the JDK writes EC private keys without their public key, which
        // the server's crypto (ring) requires; openssl's EC keys carry it.
        KeyStore keys = selfSigned(dir, "ip:127.0.0.1", "RSA", "-keysize", "2048");
        Path cert = pem(dir.resolve("server.pem"), "CERTIFICATE", keys.getCertificate("server").getEncoded());
        Path key = pem(dir.resolve("server.key"), "PRIVATE KEY", keys.getKey("server", PASSWORD).getEncoded());
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start(
                        "LIFELINE_TLS_CERT", cert.toString(), "LIFELINE_TLS_KEY", key.toString());
                LifelineClient client = LifelineClient.builder("127.0.0.1", server.address.getPort(), "java-tls")
                        .tls(trusting(keys).getSocketFactory()).listener(recorder).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            // A message to itself crosses the server and comes back over TLS.
            String id = client.send("java-tls", "round trip over TLS");
            assertEquals("round trip over TLS", recorder.awaitMessage(id, 0, WAIT_MILLIS).text);
            client.close();
            assertEquals(STOPPED, client.state());
        }
    }
}
