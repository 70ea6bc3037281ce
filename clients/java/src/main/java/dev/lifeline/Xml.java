package dev.lifeline;

/**
 * Escaping for the frames this client writes, and the reference rules for the
 * frames it reads. Only the five predefined entities and numeric character
 * references exist: the protocol never expands anything else.
 */
final class Xml {
    private Xml() {}

    /** Escapes text for element content. */
    static String escapeText(String text) {
        StringBuilder out = new StringBuilder(text.length() + 16);
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '&': out.append("&amp;"); break;
                case '<': out.append("&lt;"); break;
                // "]]>" is forbidden in content; escaping every '>' is simpler than finding it.
                case '>': out.append("&gt;"); break;
                // A literal CR would reach the receiver's parser as LF (XML end-of-line
                // normalisation); a reference survives as CR.
                case '\r': out.append("&#13;"); break;
                default: out.append(c);
            }
        }
        return out.toString();
    }

    /** Escapes text for a double-quoted attribute value. */
    static String escapeAttribute(String text) {
        StringBuilder out = new StringBuilder(text.length() + 16);
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '&': out.append("&amp;"); break;
                case '<': out.append("&lt;"); break;
                case '>': out.append("&gt;"); break;
                case '"': out.append("&quot;"); break;
                // Literal whitespace in an attribute is normalised to a space by the reader.
                case '\t': out.append("&#9;"); break;
                case '\n': out.append("&#10;"); break;
                case '\r': out.append("&#13;"); break;
                default: out.append(c);
            }
        }
        return out.toString();
    }

    /**
     * Throws IllegalArgumentException unless every character of {@code text}
     * may appear in an XML 1.0 document. The server refuses a whole frame (and
     * closes the connection) over one such character, so it is refused here,
     * where the caller can still react.
     */
    static void requireXmlText(String text) {
        for (int i = 0; i < text.length(); ) {
            int codePoint = text.codePointAt(i);
            if (!isXmlChar(codePoint)) {
                throw new IllegalArgumentException(String.format(
                        "text holds U+%04X at index %d, which XML does not allow", codePoint, i));
            }
            i += Character.charCount(codePoint);
        }
    }

    /** XML 1.0's Char production; a lone surrogate is not a character at all. */
    static boolean isXmlChar(int codePoint) {
        return codePoint == 0x9 || codePoint == 0xA || codePoint == 0xD
                || (codePoint >= 0x20 && codePoint <= 0xD7FF)
                || (codePoint >= 0xE000 && codePoint <= 0xFFFD)
                || (codePoint >= 0x10000 && codePoint <= 0x10FFFF);
    }

    /**
     * The text a reference stands for: {@code name} is what stands between
     * '&' and ';' (e.g. "amp", "#233", "#x2713").
     */
    static String resolveReference(String name) throws BadFrameException {
        switch (name) {
            case "lt": return "<";
            case "gt": return ">";
            case "amp": return "&";
            case "apos": return "'";
            case "quot": return "\"";
            default: break;
        }
        if (name.startsWith("#")) {
            boolean hex = name.startsWith("#x");
            String digits = name.substring(hex ? 2 : 1);
            // Bounded length before parsing, so an absurd reference cannot overflow.
            if (!digits.isEmpty() && digits.length() <= 8 && allDigits(digits, hex)) {
                int codePoint = Integer.parseInt(digits, hex ? 16 : 10);
                if (isXmlChar(codePoint)) {
                    return new String(Character.toChars(codePoint));
                }
            }
            throw new BadFrameException("bad character reference &" + name + ";");
        }
        throw new BadFrameException("reference to an undeclared entity &" + name + ";");
    }

    private static boolean allDigits(String digits, boolean hex) {
        // ASCII only: Character.digit and Integer.parseInt also take other scripts' digits.
        for (int i = 0; i < digits.length(); i++) {
            char c = digits.charAt(i);
            boolean decimal = c >= '0' && c <= '9';
            boolean hexLetter = (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            if (!decimal && !(hex && hexLetter)) {
                return false;
            }
        }
        return true;
    }
}
