package dev.lifeline;

/** How a connection or an attempt ended: the one input of the decision what comes next. */
final class Ending {
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
