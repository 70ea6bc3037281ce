package dev.lifeline;

/** The frames this client writes, escaped and ready for the wire. */
final class ClientFrames {
    static final String BYE = "<bye/>";
    /** A server probe's seq is echoed only when it is a plain number (the server sends u64s). */
    private static final int LONGEST_SEQ = 20;

    private ClientFrames() {}

    static String login(String id, String token) {
        String tokenAttribute = token == null ? "" : " token=\"" + Xml.escapeAttribute(token) + "\"";
        return "<login id=\"" + Xml.escapeAttribute(id) + "\"" + tokenAttribute + "/>";
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
