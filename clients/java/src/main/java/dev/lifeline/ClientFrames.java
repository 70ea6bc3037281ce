package dev.lifeline;

/** The frames this client writes, escaped and ready for the wire. */
final class ClientFrames {
    static final String BYE = "<bye/>";
    /** A server probe's seq is echoed only when it is a plain number (the server sends u64s). */
    private static final int LONGEST_SEQ = 20;

    private ClientFrames() {}

    static String login(String id, String token) {
        return login(id, token, null, 0);
    }

    /** With protocol 1.2's {@code exp} (null: none) and {@code interval} (0: none). */
    static String login(String id, String token, Long exp, long intervalMillis) {
        StringBuilder frame = new StringBuilder("<login id=\"").append(Xml.escapeAttribute(id)).append('"');
        if (token != null) {
            frame.append(" token=\"").append(Xml.escapeAttribute(token)).append('"');
        }
        if (exp != null) {
            frame.append(" exp=\"").append(exp).append('"');
        }
        if (intervalMillis > 0) {
            frame.append(" interval=\"").append(intervalMillis).append('"');
        }
        return frame.append("/>").toString();
    }

    static String msg(String to, String messageId, String text) {
        return "<msg to=\"" + Xml.escapeAttribute(to) + "\" id=\"" + Xml.escapeAttribute(messageId) + "\">"
                + Xml.escapeText(text) + "</msg>";
    }

    static String ack(String messageId) {
        return "<ack id=\"" + Xml.escapeAttribute(messageId) + "\"/>";
    }

    static String ping(long seq) {
        return "<heartbeat mode=\"ping\" seq=\"" + seq + "\"/>";
    }

    /** The answer to a probe; {@code seq} is the probe's, or null when it had none. */
    static String pong(String seq) {
        if (seq == null || !isNumber(seq)) {
            return "<heartbeat mode=\"pong\"/>";
        }
        return "<heartbeat mode=\"pong\" seq=\"" + seq + "\"/>";
    }

    private static boolean isNumber(String text) {
        if (text.isEmpty() || text.length() > LONGEST_SEQ) {
            return false;
        }
        for (int i = 0; i < text.length(); i++) {
            if (text.charAt(i) < '0' || text.charAt(i) > '9') {
                return false;
            }
        }
        return true;
    }
}
