package dev.lifeline;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Objects;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
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
        private final String host;
        private final int port;
        private final String id;
        private String token;
        /** When the token expires, Unix seconds; null for a token that does not. */
        private Long exp;
        /** The heartbeat interval asked for; 0: the server's own. */
        private long intervalMillis;
        private SSLSocketFactory tls;
        private Listener listener = new Listener() {};
        private long backoffBaseMillis = 500;
        private long backoffCapMillis = 30_000;
        private long connectTimeoutMillis = 10_000;

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
            if (host.isEmpty()) {
                throw new IllegalArgumentException("host is empty");
            }
            if (port < 1 || port > 65535) {
                throw new IllegalArgumentException("port " + port + " is not in 1..65535");
            }
            requireId(id, MAX_ID_LENGTH, "client id");
            if (token != null) {
                Xml.requireXmlText(token);
            }
            if (exp != null && exp < 0) {
                throw new IllegalArgumentException("exp " + exp + " is not a Unix time in seconds");
            }
            if (backoffBaseMillis <= 0 || backoffBaseMillis > backoffCapMillis) {
                throw new IllegalArgumentException("backoff base must be positive and no larger than the cap");
            }
            if (connectTimeoutMillis <= 0 || connectTimeoutMillis > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("connect timeout must be positive and fit an int of ms");
            }
            return new LifelineClient(this);
        }
    }

    // ------------------------------------------------------------------

    private static final int MAX_ID_LENGTH = 64;
    private static final int MAX_MESSAGE_ID_LENGTH = 128;
    /** Longest server frame accepted; the server's own limit is far lower (16 KiB by default). */
    private static final int MAX_FRAME_BYTES = 1 << 20;
    private static final int READ_CHUNK_BYTES = 16 * 1024;
    /** Message ids remembered to drop redeliveries; a redelivery follows a reconnect closely. */
    private static final int RECENT_IDS = 1024;
    /**
     * Longest wait a server may ask for (heartbeat window, retry-ms), as in the
     * Rust client: larger values mean nothing useful and could overflow.
     */
    private static final long LONGEST_SERVER_WAIT_MILLIS = TimeUnit.DAYS.toMillis(100);
    /** How long close() lets the client's thread say bye before it cuts the socket. */
    private static final long CLOSE_GRACE_MILLIS = 1000;

    private static final Set<String> TERMINAL_BYES = set("replaced", "kicked");
    private static final Set<String> TERMINAL_ERRORS = set("auth-failed", "bad-id");
    /** Errors the server closes the connection after; the reason a WAITING reports. */
    private static final Set<String> CLOSING_ERRORS = set("bad-frame", "frame-too-large", "not-logged-in");

    private final String host;
    private final int port;
    private final String id;
    private final String token;
    private final Long exp;
    private final long askedIntervalMillis;
    private final SSLSocketFactory tls;
    private final Listener listener;
    private final long backoffBaseMillis;
    private final long backoffCapMillis;
    private final long connectTimeoutMillis;

    private final RecentIds recentIds = new RecentIds(RECENT_IDS);
    private final AtomicLong sentMessages = new AtomicLong();
    /** Tells this client's message ids from those of an earlier run, whose counter also started at 1. */
    private final String messageIdTag;
    private final Random jitter;

    /** Guards the four fields below it; the client's thread waits on it while WAITING. */
    private final Object lock = new Object();
    private Thread thread;
    private boolean closeRequested;
    private boolean networkChanged;
    /**
     * The TCP socket of the attempt or connection under way, so close() and
     * networkChanged() can cut it. Under TLS it is the socket beneath: closing
     * that sends nothing, so no network I/O happens on the caller's thread.
     */
    private Socket current;

    private volatile State state = State.WAITING;
    /** The welcomed connection, for send() and ack(); null when not ONLINE. */
    private volatile Link online;
    /** The heartbeat interval of the last welcome; 0 before one. */
    private volatile long grantedIntervalMillis;

    private LifelineClient(Builder builder) {
        this.host = builder.host;
        this.port = builder.port;
        this.id = builder.id;
        this.token = builder.token;
        this.exp = builder.exp;
        this.askedIntervalMillis = builder.intervalMillis;
        this.tls = builder.tls;
        this.listener = builder.listener;
        this.backoffBaseMillis = builder.backoffBaseMillis;
        this.backoffCapMillis = builder.backoffCapMillis;
        this.connectTimeoutMillis = builder.connectTimeoutMillis;
        SecureRandom seeds = new SecureRandom();
        this.messageIdTag = Long.toString(seeds.nextLong() >>> 24, 36);
        this.jitter = new Random(seeds.nextLong());
    }

    /**
     * Starts the client's thread, which connects at once; returns at once.
     *
     * @throws IllegalStateException if started before or closed
     */
    public void start() {
        synchronized (lock) {
            if (closeRequested) {
                throw new IllegalStateException("the client is closed");
            }
            if (thread != null) {
                throw new IllegalStateException("the client is started already");
            }
            state = State.CONNECTING;
            thread = new Thread(this::run, "lifeline-client-" + id);
            // A client the app forgot to close must not keep the process alive.
            thread.setDaemon(true);
            thread.start();
        }
    }

    /**
     * The heartbeat interval the server granted in its last welcome, in ms (the
     * one asked for with {@link Builder#interval}, clamped into the server's
     * range); 0 before the first welcome.
     */
    public long intervalMillis() {
        return grantedIntervalMillis;
    }

    /** The current state. Before {@link #start()} it is WAITING. */
    public State state() {
        return state;
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
        requireId(to, MAX_ID_LENGTH, "recipient id");
        Xml.requireXmlText(Objects.requireNonNull(text, "text"));
        Link link = online;
        State now = state;
        if (now != State.ONLINE || link == null) {
            throw new IllegalStateException("cannot send while " + now);
        }
        String messageId = id + "-" + sentMessages.incrementAndGet() + "-" + messageIdTag;
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
        requireId(messageId, MAX_MESSAGE_ID_LENGTH, "message id");
        recentIds.acked(messageId);
        Link link = online;
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
        Socket cut;
        synchronized (lock) {
            if (thread == null || closeRequested) {
                return;
            }
            networkChanged = true;
            lock.notifyAll();
            cut = current;
        }
        closeQuietly(cut);
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
        Thread worker;
        Socket socket;
        synchronized (lock) {
            closeRequested = true;
            lock.notifyAll();
            worker = thread;
            socket = current;
        }
        if (worker == null) {
            // Never started: there is no client thread to report on.
            state = State.STOPPED;
            return;
        }
        if (worker == Thread.currentThread()) {
            return;
        }
        wakeReader(socket);
        if (!joinUninterruptibly(worker, CLOSE_GRACE_MILLIS)) {
            // The thread is stuck in a write (a server that stopped reading): cut it off.
            synchronized (lock) {
                socket = current;
            }
            closeQuietly(socket);
            joinUninterruptibly(worker, 0);
        }
    }

    // ------------------------------------------------------------------
    // The client's thread

    /** How a connection or an attempt ended: the one input of the decision what comes next. */
    private static final class Ending {
        static final Ending CLOSING = new Ending(null, false, true, -1, false);

        final String reason;
        /** STOPPED with the reason: the server's decision, not to be undone by reconnecting. */
        final boolean terminal;
        /** close() was called. */
        final boolean closing;
        /** The server's retry-ms, or -1. */
        final long retryMillis;
        final boolean wasOnline;

        private Ending(String reason, boolean terminal, boolean closing, long retryMillis, boolean wasOnline) {
            this.reason = reason;
            this.terminal = terminal;
            this.closing = closing;
            this.retryMillis = retryMillis;
            this.wasOnline = wasOnline;
        }

        static Ending retry(String reason, boolean wasOnline) {
            return new Ending(reason, false, false, -1, wasOnline);
        }

        static Ending retryAfter(String reason, long retryMillis, boolean wasOnline) {
            return new Ending(reason, false, false, retryMillis, wasOnline);
        }

        static Ending terminal(String reason) {
            return new Ending(reason, true, false, -1, false);
        }
    }

    private enum Wake { ELAPSED, NETWORK_CHANGED, CLOSING }

    private void run() {
        String stopReason = "failed"; // kept only if the loop throws
        try {
            stopReason = reconnectLoop();
        } finally {
            online = null;
            setState(State.STOPPED, stopReason);
        }
    }

    /** Connects, serves, backs off, again, until told to stop; returns the stop reason. */
    private String reconnectLoop() {
        Backoff backoff = new Backoff(backoffBaseMillis, backoffCapMillis, jitter);
        int failures = 0; // attempts that failed since the last welcome
        long delayMillis = 0;
        while (true) {
            Wake wake = waitOut(delayMillis);
            if (wake == Wake.CLOSING) {
                return null;
            }
            if (wake == Wake.NETWORK_CHANGED) {
                failures = 0;
            }
            setState(State.CONNECTING, null);
            Ending ending = connectAndServe();
            if (ending.terminal) {
                return ending.reason;
            }
            if (ending.closing || isCloseRequested()) {
                return null;
            }
            if (takeNetworkChanged()) {
                failures = 0;
                delayMillis = 0;
                setState(State.WAITING, "network-changed");
                continue;
            }
            failures = ending.wasOnline ? 0 : failures + 1;
            // The server's retry-ms is already a per-client random spread, so it
            // replaces the jitter for this one attempt; later failures back off.
            delayMillis = ending.retryMillis >= 0 ? ending.retryMillis : backoff.delayMillis(failures);
            setState(State.WAITING, ending.reason);
        }
    }

    /** Waits {@code delayMillis} unless close() or networkChanged() comes first. */
    private Wake waitOut(long delayMillis) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(delayMillis);
        synchronized (lock) {
            while (true) {
                if (closeRequested) {
                    return Wake.CLOSING;
                }
                if (networkChanged) {
                    networkChanged = false;
                    return Wake.NETWORK_CHANGED;
                }
                long remaining = deadline - System.nanoTime();
                if (remaining <= 0) {
                    return Wake.ELAPSED;
                }
                try {
                    lock.wait(ceilMillis(remaining));
                } catch (InterruptedException e) {
                    // As in isCloseRequested(): an interrupt stops the client.
                    closeRequested = true;
                }
            }
        }
    }

    private Ending connectAndServe() {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(connectTimeoutMillis);
        Socket plain = new Socket();
        synchronized (lock) {
            if (closeRequested) {
                return Ending.CLOSING;
            }
            // This attempt already is the reconnect a network change asks for.
            networkChanged = false;
            current = plain;
        }
        Link link = null;
        try {
            try {
                link = open(plain, deadline);
            } catch (IOException e) {
                return Ending.retry("connect-failed", false);
            }
            return new Connection(link, deadline).serve();
        } finally {
            synchronized (lock) {
                current = null;
            }
            // The TCP socket first: an SSLSocket's close waits for its record lock
            // to send close_notify, and an app thread stuck writing to a server
            // that stopped reading holds that lock until its socket is gone.
            closeQuietly(plain);
            if (link != null) {
                closeQuietly(link.socket);
            }
        }
    }

    /** TCP connect, TLS handshake when configured, login. */
    private Link open(Socket plain, long deadline) throws IOException {
        plain.connect(new InetSocketAddress(host, port), millisUntil(deadline));
        // Heartbeats are tiny and their latency is what they measure.
        plain.setTcpNoDelay(true);
        Socket socket = plain;
        if (tls != null) {
            SSLSocket secure = (SSLSocket) tls.createSocket(plain, host, port, true);
            // SSLSocketFactory checks the chain but not the name; without this a
            // valid certificate for any host would do.
            SSLParameters parameters = secure.getSSLParameters();
            parameters.setEndpointIdentificationAlgorithm("HTTPS");
            secure.setSSLParameters(parameters);
            secure.setSoTimeout(millisUntil(deadline));
            secure.startHandshake();
            socket = secure;
        }
        Link link = new Link(socket);
        link.write(ClientFrames.login(id, token, exp, askedIntervalMillis));
        return link;
    }

    /** One connection, from the login sent to its end. */
    private final class Connection {
        private final Link link;
        private final long connectDeadline;
        private final FrameParser parser = new FrameParser(MAX_FRAME_BYTES);
        /** Set by the welcome. */
        private Heartbeat heartbeat;
        /** An error the server closes after, once it came. */
        private String closingError;

        Connection(Link link, long connectDeadline) {
            this.link = link;
            this.connectDeadline = connectDeadline;
        }

        Ending serve() {
            byte[] chunk = new byte[READ_CHUNK_BYTES];
            try {
                while (true) {
                    if (isCloseRequested()) {
                        return sayBye();
                    }
                    Ending timedOut = onTimers(System.nanoTime());
                    if (timedOut != null) {
                        return timedOut;
                    }
                    link.socket.setSoTimeout(millisUntil(nextWakeup()));
                    int read;
                    try {
                        read = link.in.read(chunk);
                    } catch (SocketTimeoutException e) {
                        continue;
                    }
                    if (read < 0) {
                        return ended();
                    }
                    List<Frame> frames = parser.feed(chunk, 0, read);
                    long now = System.nanoTime();
                    if (heartbeat != null && !frames.isEmpty()) {
                        // Any frame proves the server alive, not only the pong to our ping.
                        heartbeat.heard(now);
                    }
                    for (Frame frame : frames) {
                        Ending ending = onFrame(frame, now);
                        if (ending != null) {
                            return ending;
                        }
                        if (isCloseRequested()) {
                            return sayBye();
                        }
                    }
                }
            } catch (BadFrameException e) {
                return Ending.retry(e.tooLarge ? "frame-too-large" : "bad-frame", heartbeat != null);
            } catch (IOException e) {
                return ended();
            } finally {
                online = null;
            }
        }

        /** The socket closed under us: by the server, the network, or close(). */
        private Ending ended() {
            if (isCloseRequested()) {
                return sayBye();
            }
            return Ending.retry(closingError != null ? closingError : "closed", heartbeat != null);
        }

        private Ending sayBye() {
            if (heartbeat != null) {
                link.sayBye();
            }
            return Ending.CLOSING;
        }

        private long nextWakeup() {
            return heartbeat == null ? connectDeadline : heartbeat.nextWakeup();
        }

        /** The deadlines: connect, server lost, ping due. Returns an ending when one has passed. */
        private Ending onTimers(long now) throws IOException {
            if (heartbeat == null) {
                return now - connectDeadline >= 0 ? Ending.retry("connect-failed", false) : null;
            }
            if (now - heartbeat.lostAt() >= 0) {
                return Ending.retry("lost", true);
            }
            if (now - heartbeat.nextPing >= 0) {
                link.writeUnlessBusy(ClientFrames.ping(heartbeat.pingSent(now)));
            }
            return null;
        }

        private Ending onFrame(Frame frame, long now) throws IOException, BadFrameException {
            switch (frame.name) {
                case "welcome":
                    onWelcome(frame, now);
                    return null;
                case "heartbeat":
                    if ("ping".equals(frame.attribute("mode"))) {
                        link.writeUnlessBusy(ClientFrames.pong(frame.attribute("seq")));
                    }
                    return null;
                case "msg":
                    onMsg(frame);
                    return null;
                case "bye":
                    return onBye(frame);
                case "error":
                    return onError(frame);
                default:
                    // An element a later protocol version may send.
                    return null;
            }
        }

        private void onWelcome(Frame frame, long now) throws BadFrameException {
            if (heartbeat != null) {
                return; // a second welcome changes nothing; keep the schedule
            }
            String welcomed = frame.attribute("id");
            if (!id.equals(welcomed)) {
                throw new BadFrameException("welcome for " + welcomed + ", but the login was for " + id);
            }
            long interval = millisAttribute(frame, "interval", -1);
            long misses = numberAttribute(frame, "misses", -1);
            // Both positive, or the loss deadline means nothing; their product a sane wait.
            if (interval <= 0 || misses <= 0 || misses > LONGEST_SERVER_WAIT_MILLIS / interval) {
                throw new BadFrameException("welcome without a usable interval and misses");
            }
            long phase = Math.min(millisAttribute(frame, "phase-ms", interval), interval);
            heartbeat = new Heartbeat(interval, misses, phase, now);
            grantedIntervalMillis = interval;
            online = link;
            setState(State.ONLINE, null);
        }

        private void onMsg(Frame frame) throws IOException, BadFrameException {
            String from = frame.attribute("from");
            if (from == null) {
                throw new BadFrameException("msg without from");
            }
            String messageId = frame.attribute("id");
            if (messageId != null) {
                switch (recentIds.arrived(messageId)) {
                    case PENDING:
                        return;
                    case ACKED_BEFORE:
                        link.writeWithin(ClientFrames.ack(messageId), heartbeat.lostAt());
                        return;
                    case NEW:
                    default:
                        break;
                }
            }
            try {
                listener.onMessage(from, messageId, frame.text);
            } catch (RuntimeException e) {
                toUncaughtHandler(e);
            }
        }

        private Ending onBye(Frame frame) {
            String reason = frame.attribute("reason");
            if (reason == null) {
                reason = "bye";
            }
            if (TERMINAL_BYES.contains(reason)) {
                return Ending.terminal(reason);
            }
            // A retry-ms that is no number is ignored: the connection ends anyway,
            // and the usual backoff is a safe delay.
            long retryMillis;
            try {
                retryMillis = millisAttribute(frame, "retry-ms", -1);
            } catch (BadFrameException e) {
                retryMillis = -1;
            }
            return Ending.retryAfter(reason, retryMillis, heartbeat != null);
        }

        private Ending onError(Frame frame) throws BadFrameException {
            String code = frame.attribute("code");
            if (code == null) {
                throw new BadFrameException("error without code");
            }
            try {
                listener.onError(code, frame.attribute("ref"), frame.text);
            } catch (RuntimeException e) {
                toUncaughtHandler(e);
            }
            if (TERMINAL_ERRORS.contains(code)) {
                return Ending.terminal(code);
            }
            if (CLOSING_ERRORS.contains(code)) {
                closingError = code;
            }
            return null;
        }
    }

    /**
     * The client side of the heartbeat: when to ping, and when the server counts
     * as lost ({@code last heard + interval × misses}). Times are System.nanoTime().
     */
    private static final class Heartbeat {
        private final long intervalNanos;
        private final long silenceNanos;
        long nextPing;
        private long lastHeard;
        private long seq;

        Heartbeat(long intervalMillis, long misses, long phaseMillis, long now) {
            this.intervalNanos = TimeUnit.MILLISECONDS.toNanos(intervalMillis);
            this.silenceNanos = TimeUnit.MILLISECONDS.toNanos(intervalMillis * misses);
            this.nextPing = now + TimeUnit.MILLISECONDS.toNanos(phaseMillis);
            this.lastHeard = now;
        }

        long lostAt() {
            return lastHeard + silenceNanos;
        }

        long nextWakeup() {
            return nextPing - lostAt() < 0 ? nextPing : lostAt();
        }

        void heard(long now) {
            lastHeard = now;
        }

        /** Records a ping going out now; returns its sequence number. */
        long pingSent(long now) {
            seq++;
            nextPing += intervalNanos;
            // After a stall (a suspended phone, a starved thread) ping once, not
            // once per missed slot.
            if (nextPing - now <= 0) {
                nextPing = now + intervalNanos;
            }
            return seq;
        }
    }

    /** One connection's socket. Each frame goes out in one write, one writer at a time. */
    private static final class Link {
        final Socket socket;
        final InputStream in;
        private final OutputStream out;
        private final ReentrantLock writing = new ReentrantLock();

        Link(Socket socket) throws IOException {
            this.socket = socket;
            this.in = socket.getInputStream();
            this.out = socket.getOutputStream();
        }

        void write(String frame) throws IOException {
            byte[] bytes = frame.getBytes(StandardCharsets.UTF_8);
            writing.lock();
            try {
                out.write(bytes);
                out.flush();
            } finally {
                writing.unlock();
            }
        }

        /**
         * For the client thread's heartbeat frames: skipped while another thread
         * is writing. That thread's frame tells the server we are alive just as
         * well, and the client's thread must not wait behind a write it cannot
         * bound, or nothing would watch the loss deadline.
         */
        void writeUnlessBusy(String frame) throws IOException {
            writeWithin(frame, System.nanoTime());
        }

        /**
         * Writes unless another thread holds the socket past {@code deadline}
         * (System.nanoTime()); returns whether the frame went out.
         */
        boolean writeWithin(String frame, long deadline) throws IOException {
            byte[] bytes = frame.getBytes(StandardCharsets.UTF_8);
            boolean locked;
            try {
                locked = writing.tryLock(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                // The loop takes an interrupt as close(); keep it for the loop to see.
                Thread.currentThread().interrupt();
                return false;
            }
            if (!locked) {
                return false;
            }
            try {
                out.write(bytes);
                out.flush();
                return true;
            } finally {
                writing.unlock();
            }
        }

        /** Best effort: the server logs a clean leave; if it fails, it sees the close instead. */
        void sayBye() {
            try {
                writeUnlessBusy(ClientFrames.BYE);
            } catch (IOException e) {
                // Nothing to do: the socket closes next either way.
            }
        }

        void abort() {
            closeQuietly(socket);
        }
    }

    // ------------------------------------------------------------------

    private boolean isCloseRequested() {
        synchronized (lock) {
            // Only close() should stop the client's thread, but an interrupt means
            // someone wants it gone all the same.
            if (Thread.currentThread() == thread && Thread.currentThread().isInterrupted()) {
                closeRequested = true;
            }
            return closeRequested;
        }
    }

    private boolean takeNetworkChanged() {
        synchronized (lock) {
            boolean changed = networkChanged;
            networkChanged = false;
            return changed;
        }
    }

    private void setState(State next, String reason) {
        state = next;
        try {
            listener.onState(next, reason);
        } catch (RuntimeException e) {
            toUncaughtHandler(e);
        }
    }

    /** A listener bug is the app's to see, as a crash in its own callback would be; the client goes on. */
    private static void toUncaughtHandler(RuntimeException e) {
        Thread self = Thread.currentThread();
        self.getUncaughtExceptionHandler().uncaughtException(self, e);
    }

    /**
     * Wakes the client's thread from its read so it can say bye and stop. Half-
     * closing the input ends the read with end-of-stream and leaves the output
     * open for the bye. TLS has no half-close (its records run over the socket
     * beneath), so under TLS, and before the connect completes, the socket is closed.
     */
    private void wakeReader(Socket socket) {
        if (socket == null) {
            return;
        }
        if (tls != null || !socket.isConnected()) {
            closeQuietly(socket);
            return;
        }
        try {
            socket.shutdownInput();
        } catch (IOException | UnsupportedOperationException e) {
            closeQuietly(socket);
        }
    }

    private static boolean joinUninterruptibly(Thread thread, long millis) {
        boolean interrupted = false;
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(millis);
        try {
            while (thread.isAlive()) {
                long remaining = deadline - System.nanoTime();
                if (millis > 0 && remaining <= 0) {
                    return false;
                }
                try {
                    thread.join(millis > 0 ? ceilMillis(remaining) : 0);
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            return true;
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private static void closeQuietly(Socket socket) {
        if (socket == null) {
            return;
        }
        try {
            socket.close();
        } catch (IOException e) {
            // Closing is all that was wanted; a failure leaves nothing to undo.
        }
    }

    /** A wait in milliseconds from attribute {@code name}, at most 100 days; {@code absent} when missing. */
    private static long millisAttribute(Frame frame, String name, long absent) throws BadFrameException {
        long millis = numberAttribute(frame, name, absent);
        if (millis > LONGEST_SERVER_WAIT_MILLIS) {
            throw new BadFrameException("<" + frame.name + "> with a " + name + " over 100 days");
        }
        return millis;
    }

    /** A whole number from attribute {@code name}; {@code absent} when missing. */
    private static long numberAttribute(Frame frame, String name, long absent) throws BadFrameException {
        String value = frame.attribute(name);
        if (value == null) {
            return absent;
        }
        // At most 12 digits: no overflow, and far beyond any sane value.
        if (value.isEmpty() || value.length() > 12 || !value.chars().allMatch(c -> c >= '0' && c <= '9')) {
            throw new BadFrameException("<" + frame.name + "> with a bad " + name);
        }
        return Long.parseLong(value);
    }

    /** Milliseconds from now until {@code deadline} (nanoTime), rounded up, at least 1 (0 would mean forever). */
    private static int millisUntil(long deadline) {
        long remaining = deadline - System.nanoTime();
        return (int) Math.min(Integer.MAX_VALUE, Math.max(1, ceilMillis(remaining)));
    }

    private static long ceilMillis(long nanos) {
        return (nanos + 999_999) / 1_000_000;
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

    private static Set<String> set(String... values) {
        return Collections.unmodifiableSet(new HashSet<>(Arrays.asList(values)));
    }
}
