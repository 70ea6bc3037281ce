package dev.lifeline;

import java.io.IOException;
import java.net.SocketTimeoutException;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;

/**
 * One connection, from the login sent to its end, on the client's thread: reads
 * and parses the server's frames, keeps the heartbeat, hands messages and errors
 * to the listener, and says how the connection ended.
 */
final class Connection {
    /** What a connection needs from the client's thread that runs it. */
    interface Owner {
        /** close() was called (or the thread interrupted): say bye and end. */
        boolean isCloseRequested();

        /** The welcome came: the client is ONLINE on {@code link}, with the granted interval. */
        void welcomed(Link link, long intervalMillis);
    }

    /** Longest server frame accepted; the server's own limit is far lower (16 KiB by default). */
    private static final int MAX_FRAME_BYTES = 1 << 20;
    private static final int READ_CHUNK_BYTES = 16 * 1024;
    /**
     * Longest wait a server may ask for (heartbeat window, retry-ms), as in the
     * Rust client: larger values mean nothing useful and could overflow.
     */
    private static final long LONGEST_SERVER_WAIT_MILLIS = TimeUnit.DAYS.toMillis(100);

    private static final Set<String> TERMINAL_BYES = set("replaced", "kicked");
    private static final Set<String> TERMINAL_ERRORS = set("auth-failed", "bad-id");
    /** Errors the server closes the connection after; the reason a WAITING reports. */
    private static final Set<String> CLOSING_ERRORS = set("bad-frame", "frame-too-large", "not-logged-in");

    private final Owner owner;
    private final String id;
    private final LifelineClient.Listener listener;
    private final RecentIds recentIds;
    private final Link link;
    private final long connectDeadline;
    private final FrameParser parser = new FrameParser(MAX_FRAME_BYTES);
    /** Set by the welcome. */
    private Heartbeat heartbeat;
    /** An error the server closes after, once it came. */
    private String closingError;

    Connection(Owner owner, Settings settings, RecentIds recentIds, Link link, long connectDeadline) {
        this.owner = owner;
        this.id = settings.id;
        this.listener = settings.listener;
        this.recentIds = recentIds;
        this.link = link;
        this.connectDeadline = connectDeadline;
    }

    Ending serve() {
        byte[] chunk = new byte[READ_CHUNK_BYTES];
        try {
            while (true) {
                if (owner.isCloseRequested()) {
                    return sayBye();
                }
                Ending timedOut = onTimers(System.nanoTime());
                if (timedOut != null) {
                    return timedOut;
                }
                link.socket.setSoTimeout(Deadlines.millisUntil(nextWakeup()));
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
                    if (owner.isCloseRequested()) {
                        return sayBye();
                    }
                }
            }
        } catch (BadFrameException e) {
            return Ending.retry(e.tooLarge ? "frame-too-large" : "bad-frame", heartbeat != null);
        } catch (IOException e) {
            return ended();
        }
    }

    /** The socket closed under us: by the server, the network, or close(). */
    private Ending ended() {
        if (owner.isCloseRequested()) {
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

    /** When this connection ends unless the server is heard: the connect deadline, then the loss deadline. */
    private long nextDeadline() {
        return heartbeat == null ? connectDeadline : heartbeat.lostAt();
    }

    /** The deadlines: connect, server lost, ping due. Returns an ending when one has passed. */
    private Ending onTimers(long now) throws IOException {
        if (heartbeat == null) {
            return now - connectDeadline >= 0 ? Ending.retry("connect-failed", false) : null;
        }
        if (heartbeat.isLost(now)) {
            return Ending.retry("lost", true);
        }
        if (heartbeat.isPingDue(now)) {
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
        owner.welcomed(link, interval);
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
                    // An app thread may hold the socket; wait for it no longer than the
                    // deadline this thread watches. Before the welcome (only a broken
                    // server sends a msg then) that is the connect deadline.
                    link.writeWithin(ClientFrames.ack(messageId), nextDeadline());
                    return;
                case NEW:
                default:
                    break;
            }
        }
        listener.onMessage(from, messageId, frame.text);
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
        listener.onError(code, frame.attribute("ref"), frame.text);
        if (TERMINAL_ERRORS.contains(code)) {
            return Ending.terminal(code);
        }
        if (CLOSING_ERRORS.contains(code)) {
            closingError = code;
        }
        return null;
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

    private static Set<String> set(String... values) {
        return Collections.unmodifiableSet(new HashSet<>(Arrays.asList(values)));
    }
}
