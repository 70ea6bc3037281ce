package dev.lifeline;

import java.io.IOException;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.Objects;
import java.util.Random;
import java.util.concurrent.atomic.AtomicLong;
import javax.net.ssl.SSLSocketFactory;

/**
 * A client that keeps one connection to a Lifeline server alive, with the same
 * rules as the Rust client ({@code lifeline::client}) and {@code web/lifeline.js}.
 *
 * <p>{@link #start()} starts one background thread, the client's thread. It owns
 * the socket and goes through {@link State#CONNECTING} (TCP, TLS when configured,
 * {@code <login>}, wait for {@code <welcome>}), {@link State#ONLINE} and
 * {@link State#WAITING} until it reaches {@link State#STOPPED}:
 *
 * <ul>
 *   <li>ONLINE: it pings every {@code interval} of the welcome, the first time
 *       {@code phase-ms} after it; answers the server's probes; hands messages to
 *       the listener; and counts the server lost once no frame has come from it
 *       for {@code interval × misses}: a frozen server, not only a closed socket.
 *   <li>WAITING: after a connection ends or an attempt fails, a random delay in
 *       {@code [0, min(cap, base·2^failures)]} (exponential backoff with full
 *       jitter), or the server's {@code retry-ms} when its {@code <bye>} gave one.
 *   <li>STOPPED: {@link #close()}; a {@code replaced} or {@code kicked} bye; an
 *       {@code auth-failed} or {@code bad-id} error. Reconnecting would undo what
 *       the server decided, or fail the same way. The thread ends.
 * </ul>
 *
 * <p>The thread blocks in {@code read} with a timeout set to the next thing it has
 * to do (ping, loss deadline, connect deadline), so an idle client costs no
 * wakeups between heartbeats. Listener callbacks run on this thread, in order.
 * {@link #send}, {@link #ack} write on the thread that calls them.
 */
public final class LifelineClient implements AutoCloseable {

    /** Where the client stands. */
    public enum State {
        /** Connecting, logging in, waiting for the welcome. */
        CONNECTING,
        /** Welcomed: messages flow, heartbeats run. */
        ONLINE,
        /** Backing off before the next attempt. */
        WAITING,
        /** Stopped for good; the client's thread has ended or is ending. */
        STOPPED
    }

    /**
     * What the client reports. Every method is called on the client's thread,
     * one call at a time, in the order things happened; do not block in them
     * (post UI work to the main thread). An exception thrown here goes to the
     * thread's uncaught-exception handler and the client carries on.
     */
    public interface Listener {
        /**
         * The state changed. {@code reason}: for WAITING, the server's bye reason
         * (e.g. "shutdown", "timeout"), the error code the server closed with,
         * "lost" (the server was silent for interval × misses), "closed" (the
         * connection ended without a bye), "connect-failed", "bad-frame" (the
         * server sent something unreadable) or "network-changed"; for STOPPED,
         * "replaced", "kicked", "auth-failed", "bad-id", "failed" (a bug in this
         * client; the exception follows to the uncaught-exception handler), or
         * null after {@link LifelineClient#close()}; otherwise null.
         */
        default void onState(State state, String reason) {}

        /**
         * A message: from the client {@code from} ("admin" for a push), with id
         * {@code id} (null when the sender gave none), the text unescaped. A
         * message id already delivered recently is not delivered again. Call
         * {@link LifelineClient#ack(String)} once it is processed.
         */
        default void onMessage(String from, String id, String text) {}

        /**
         * An {@code <error>} from the server, e.g. "offline" with {@code ref} the
         * id of a message whose receiver is not online. {@code ref} may be null.
         */
        default void onError(String code, String ref, String text) {}
    }

    /** A builder for a client of {@code host:port} that logs in as {@code id}. */
    public static Builder builder(String host, int port, String id) {
        return new Builder(host, port, id);
    }

    /** Settings of a {@link LifelineClient}; only host, port and id are required. */
    public static final class Builder {
        // Package-private: Settings reads and checks them when the client is built.
        final String host;
        final int port;
        final String id;
        String token;
        /** When the token expires, Unix seconds; null for a token that does not. */
        Long exp;
        /** The heartbeat interval asked for; 0: the server's own. */
        long intervalMillis;
        SSLSocketFactory tls;
        Listener listener = new Listener() {};
        long backoffBaseMillis = 500;
        long backoffCapMillis = 30_000;
        long connectTimeoutMillis = 10_000;

        private Builder(String host, int port, String id) {
            this.host = Objects.requireNonNull(host, "host");
            this.port = port;
            this.id = Objects.requireNonNull(id, "id");
        }

        /**
         * A login token minted for this id (lowercase hex HMAC-SHA256 of the id
         * under the server's secret), for a server that has an auth secret. The
         * secret itself never belongs on a device.
         */
        public Builder token(String token) {
            this.token = Objects.requireNonNull(token, "token");
            this.exp = null;
            return this;
        }

        /**
         * An expiring login token (protocol 1.2): lowercase hex HMAC-SHA256 of
         * {@code id + "|" + exp} under the server's secret, valid until the Unix
         * second {@code exp}. Past it the login is refused ("auth-failed") and
         * the client stops: get a fresh token from the back end and build anew.
         */
        public Builder token(String token, long exp) {
            this.token = Objects.requireNonNull(token, "token");
            this.exp = exp;
            return this;
        }

        /**
         * The heartbeat interval to ask the server for (protocol 1.2), e.g. a
         * long one for a phone on battery. The server grants one within its
         * range; {@link LifelineClient#intervalMillis()} says which.
         */
        public Builder interval(Duration interval) {
            this.intervalMillis = Objects.requireNonNull(interval, "interval").toMillis();
            if (intervalMillis <= 0) {
                throw new IllegalArgumentException("interval must be at least 1 ms, not " + interval);
            }
            return this;
        }

        /**
         * Connect with TLS through this factory (e.g. {@code SSLContext.getSocketFactory()}).
         * The server's certificate must name the host given to the builder.
         */
        public Builder tls(SSLSocketFactory factory) {
            this.tls = Objects.requireNonNull(factory, "factory");
            return this;
        }

        public Builder listener(Listener listener) {
            this.listener = Objects.requireNonNull(listener, "listener");
            return this;
        }

        /** Ceiling of the first reconnect delay, doubled per failed attempt; default 500 ms. */
        public Builder backoffBaseMillis(long millis) {
            this.backoffBaseMillis = millis;
            return this;
        }

        /** No backoff delay is longer than this; default 30 s. */
        public Builder backoffCapMillis(long millis) {
            this.backoffCapMillis = millis;
            return this;
        }

        /** Bound on TCP connect, TLS handshake and the wait for the welcome together; default 10 s. */
        public Builder connectTimeoutMillis(long millis) {
            this.connectTimeoutMillis = millis;
            return this;
        }

        /** @throws IllegalArgumentException for an invalid id, port, token or timing */
        public LifelineClient build() {
            return new LifelineClient(new Settings(this));
        }
    }

    // ------------------------------------------------------------------
    // Behind the API: Settings (the checked builder), ClientThread (the client's
    // thread and its states), Connection (one connection's frames and heartbeat).

    /** Message ids remembered to drop redeliveries; a redelivery follows a reconnect closely. */
    private static final int RECENT_IDS = 1024;

    private final Settings settings;
    private final RecentIds recentIds = new RecentIds(RECENT_IDS);
    private final AtomicLong sentMessages = new AtomicLong();
    /** Tells this client's message ids from those of an earlier run, whose counter also started at 1. */
    private final String messageIdTag;
    private final ClientThread clientThread;

    private LifelineClient(Settings settings) {
        this.settings = settings;
        SecureRandom seeds = new SecureRandom();
        this.messageIdTag = Long.toString(seeds.nextLong() >>> 24, 36);
        Random jitter = new Random(seeds.nextLong());
        this.clientThread = new ClientThread(settings, recentIds, jitter);
    }

    /**
     * Starts the client's thread, which connects at once; returns at once.
     *
     * @throws IllegalStateException if started before or closed
     */
    public void start() {
        clientThread.start();
    }

    /**
     * The heartbeat interval the server granted in its last welcome, in ms (the
     * one asked for with {@link Builder#interval}, clamped into the server's
     * range); 0 before the first welcome.
     */
    public long intervalMillis() {
        return clientThread.grantedIntervalMillis();
    }

    /** The current state. Before {@link #start()} it is WAITING. */
    public State state() {
        return clientThread.state();
    }

    /**
     * Sends {@code text} to client {@code to}; returns the message id it used
     * ({@code "<id>-<counter>-<tag>"}, unique per client instance). The frame is
     * written on the calling thread. Delivery is at most once: the server drops
     * a message whose receiver is offline and says so with an "offline" error
     * naming this id.
     *
     * @throws IllegalStateException unless ONLINE, or when the connection fails during the write
     * @throws IllegalArgumentException for an invalid recipient id, or text with a character XML does not allow
     */
    public String send(String to, String text) {
        requireId(to, Settings.MAX_ID_LENGTH, "recipient id");
        Xml.requireXmlText(Objects.requireNonNull(text, "text"));
        Link link = clientThread.online();
        State now = clientThread.state();
        if (now != State.ONLINE || link == null) {
            throw new IllegalStateException("cannot send while " + now);
        }
        String messageId = settings.id + "-" + sentMessages.incrementAndGet() + "-" + messageIdTag;
        try {
            link.write(ClientFrames.msg(to, messageId, text));
        } catch (IOException e) {
            // The client's thread sees the socket closed and reconnects.
            link.abort();
            throw new IllegalStateException("the connection failed while sending", e);
        }
        return messageId;
    }

    /**
     * Confirms that message {@code messageId} has been processed; messages are
     * not acked automatically. Written on the calling thread when ONLINE. When
     * not ONLINE, or if the write fails, the ack is remembered instead: the
     * server redelivers an unacked push after the reconnect, and the client
     * answers that copy with this ack.
     *
     * @throws IllegalArgumentException for an invalid message id
     */
    public void ack(String messageId) {
        requireId(messageId, Settings.MAX_MESSAGE_ID_LENGTH, "message id");
        recentIds.acked(messageId);
        Link link = clientThread.online();
        if (link == null) {
            return;
        }
        try {
            link.write(ClientFrames.ack(messageId));
        } catch (IOException e) {
            link.abort();
        }
    }

    /**
     * The app saw a new network: reconnect now instead of waiting out the
     * backoff. A connection or attempt under way is dropped (its path most
     * likely went with the old network, and proving that would take up to
     * interval × misses); the failure count starts again. No effect before
     * {@link #start()} or after {@link #close()}.
     */
    public void networkChanged() {
        clientThread.networkChanged();
    }

    /**
     * Stops for good: says {@code <bye/>} when ONLINE over plain TCP (the
     * client's thread does, so no network I/O happens on the caller's thread),
     * closes the socket, and returns once the client's thread has ended
     * (at once when called from a listener callback: the thread stops when the
     * callback returns). The state is then STOPPED. Calling it again does nothing.
     */
    @Override
    public void close() {
        clientThread.close();
    }

    /** 1 to {@code max} characters of A-Z a-z 0-9 _ . : @ -, the server's id alphabet. */
    static void requireId(String value, int max, String what) {
        Objects.requireNonNull(value, what);
        boolean valid = !value.isEmpty() && value.length() <= max;
        for (int i = 0; valid && i < value.length(); i++) {
            char c = value.charAt(i);
            valid = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                    || c == '_' || c == '.' || c == ':' || c == '@' || c == '-';
        }
        if (!valid) {
            throw new IllegalArgumentException(
                    what + " \"" + value + "\" is not 1 to " + max + " characters of A-Z a-z 0-9 _ . : @ -");
        }
    }
}
