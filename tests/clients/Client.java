// The real-client suite's Java 17 HttpClient client (tests/e2e/clients.rs).
//
// Usage: java -Djdk.http.auth.tunneling.disabledSchemes= Client PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
// Prints `status=CODE body=FIRST-LINE` when the origin answered, else
// `error=...`; exits 0 only for the origin. Credentials: an Authenticator,
// which HttpClient asks only after a 407 with Proxy-Authenticate; Basic over
// CONNECT also needs jdk.http.auth.tunneling.disabledSchemes cleared (the
// JDK disables it by default).
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.Authenticator;
import java.net.InetSocketAddress;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Client {
    public static void main(String[] args) throws Exception {
        URI proxy = URI.create(args[0]);
        URI target = URI.create(args[1]);
        // A truststore holding only the test CA.
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        try (InputStream pem = new FileInputStream(args[2])) {
            trust.setCertificateEntry("test-ca", CertificateFactory.getInstance("X.509").generateCertificate(pem));
        }
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(trust);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, factory.getTrustManagers(), null);

        HttpClient.Builder builder = HttpClient.newBuilder()
                .sslContext(tls)
                .connectTimeout(Duration.ofSeconds(15))
                .proxy(ProxySelector.of(new InetSocketAddress(proxy.getHost(), proxy.getPort())));
        if (args.length > 4) {
            String user = args[3];
            char[] password = args[4].toCharArray();
            builder.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    return getRequestorType() == RequestorType.PROXY ? new PasswordAuthentication(user, password) : null;
                }
            });
        }
        HttpRequest request = HttpRequest.newBuilder(target).timeout(Duration.ofSeconds(15)).GET().build();
        try {
            HttpResponse<String> response = builder.build().send(request, HttpResponse.BodyHandlers.ofString());
            String body = response.body();
            System.out.println("status=" + response.statusCode() + " body=" + body.split("\n", 2)[0]);
        } catch (java.io.IOException error) {
            System.out.println("error=" + error.getClass().getSimpleName() + ": " + error.getMessage());
            System.exit(1);
        }
    }
}
