package dev.lifeline;

/** The server sent bytes that are not a well-formed frame; the connection cannot go on. */
final class BadFrameException extends Exception {
    private static final long serialVersionUID = 1L;

    /** The frame was longer than the parser's bound (not malformed, just too big to hold). */
    final boolean tooLarge;

    BadFrameException(String message) {
        this(message, false);
    }

    BadFrameException(String message, boolean tooLarge) {
        super(message);
        this.tooLarge = tooLarge;
    }
}
