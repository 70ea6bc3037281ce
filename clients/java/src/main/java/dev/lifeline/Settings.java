package dev.lifeline;

import javax.net.ssl.SSLSocketFactory;

/**
 * What a {@link LifelineClient.Builder} was given, checked once when the client
 * is built and fixed from then on: the client's thread reads it without locks.
 */
final class Settings {
    /** The server's limit on a client id, and so on a recipient. */
    static final int MAX_ID_LENGTH = 64;
    /** The server's limit on a message id. */
    static final int MAX_MESSAGE_ID_LENGTH = 128;

    final String host;
    final int port;
    final String id;
    /** A login token, or null for a server without an auth secret. */
    final String token;
    /** When the token expires, Unix seconds; null for a token that does not. */
    final Long exp;
    /** The heartbeat interval asked for; 0: the server's own. */
    final long askedIntervalMillis;
    /** Null for plain TCP. */
    final SSLSocketFactory tls;
    /** The app's listener, behind a guard that keeps its exceptions from the client's thread. */
    final LifelineClient.Listener listener;
    final long backoffBaseMillis;
    final long backoffCapMillis;
    final long connectTimeoutMillis;

    /** @throws IllegalArgumentException for an invalid id, port, token or timing */
    Settings(LifelineClient.Builder builder) {
        if (builder.host.isEmpty()) {
            throw new IllegalArgumentException("host is empty");
        }
        if (builder.port < 1 || builder.port > 65535) {
            throw new IllegalArgumentException("port " + builder.port + " is not in 1..65535");
        }
        LifelineClient.requireId(builder.id, MAX_ID_LENGTH, "client id");
        if (builder.token != null) {
            Xml.requireXmlText(builder.token);
        }
        if (builder.exp != null && builder.exp < 0) {
            throw new IllegalArgumentException("exp " + builder.exp + " is not a Unix time in seconds");
        }
        if (builder.backoffBaseMillis <= 0 || builder.backoffBaseMillis > builder.backoffCapMillis) {
            throw new IllegalArgumentException("backoff base must be positive and no larger than the cap");
        }
        if (builder.connectTimeoutMillis <= 0 || builder.connectTimeoutMillis > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("connect timeout must be positive and fit an int of ms");
        }
        this.host = builder.host;
        this.port = builder.port;
        this.id = builder.id;
        this.token = builder.token;
        this.exp = builder.exp;
        this.askedIntervalMillis = builder.intervalMillis;
        this.tls = builder.tls;
        this.listener = new GuardedListener(builder.listener);
        this.backoffBaseMillis = builder.backoffBaseMillis;
        this.backoffCapMillis = builder.backoffCapMillis;
        this.connectTimeoutMillis = builder.connectTimeoutMillis;
    }
}
