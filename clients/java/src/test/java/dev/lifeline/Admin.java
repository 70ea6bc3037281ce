package dev.lifeline;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** The server's admin HTTP API, as the tests need it: status and body, every request bounded in time. */
final class Admin {
    static final class Reply {
        final int status;
        final String body;

        Reply(int status, String body) {
            this.status = status;
            this.body = body;
        }

        /** A top-level string field of the JSON body; null when absent. */
        String field(String name) {
            Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*\"([^\"]*)\"").matcher(body);
            return m.find() ? m.group(1) : null;
        }

        @Override
        public String toString() {
            return status + " " + body;
        }
    }

    private Admin() {}

    /** The value of an unlabelled metric in GET /metrics (Prometheus text format). */
    static long metric(InetSocketAddress admin, String name) throws IOException {
        Reply metrics = request(admin, "GET", "/metrics", null);
        Matcher m = Pattern.compile("(?m)^" + Pattern.quote(name) + " (\\d+)$").matcher(metrics.body);
        if (!m.find()) {
            throw new AssertionError("no metric " + name + " in " + metrics);
        }
        return Long.parseLong(m.group(1));
    }

    static Reply request(InetSocketAddress admin, String method, String path, String body) throws IOException {
        URL url = new URL("http://" + admin.getHostString() + ":" + admin.getPort() + path);
        HttpURLConnection http = (HttpURLConnection) url.openConnection();
        http.setRequestMethod(method);
        http.setConnectTimeout(5000);
        http.setReadTimeout(5000);
        if (body != null) {
            http.setDoOutput(true);
            try (OutputStream out = http.getOutputStream()) {
                out.write(body.getBytes(StandardCharsets.UTF_8));
            }
        }
        int status = http.getResponseCode();
        InputStream stream = status >= 400 ? http.getErrorStream() : http.getInputStream();
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        if (stream != null) {
            try (InputStream in = stream) {
                byte[] chunk = new byte[4096];
                int read;
                while ((read = in.read(chunk)) > 0) {
                    bytes.write(chunk, 0, read);
                }
            }
        }
        http.disconnect();
        return new Reply(status, new String(bytes.toByteArray(), StandardCharsets.UTF_8));
    }
}
