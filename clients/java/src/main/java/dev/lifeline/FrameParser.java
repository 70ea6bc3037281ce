package dev.lifeline;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Cuts the server's byte stream into frames (a frame is one complete top-level
 * XML element) and decodes each one. No I/O: bytes in, frames out.
 *
 * <p>A small state machine scans the stream byte by byte and remembers where it
 * stopped, so a frame split across reads at any byte, or many frames in one
 * read, give the same frames, and no byte is scanned twice. Every byte that
 * shapes the structure ({@code < > / ! ? - [ ]} and quotes) is ASCII, and UTF-8
 * never uses ASCII values inside a multi-byte character, so the scanner can work
 * on bytes: a character cut by the end of a read completes with the next one,
 * and a frame is decoded from UTF-8 only once it is whole.
 *
 * <p>Between frames, whitespace, comments, processing instructions and the XML
 * declaration are skipped; any other text, a DOCTYPE or a CDATA section is an
 * error. The text of a frame is its character data with references resolved,
 * CDATA sections taken verbatim, and nested markup passed through as written
 * (only a sender that did not escape its text puts any there); comments and
 * processing instructions inside it are dropped.
 */
final class FrameParser {
    // Where the scanner stands.
    private static final int BETWEEN_FRAMES = 0;
    private static final int AFTER_LT = 1;
    private static final int START_TAG = 2;
    private static final int END_TAG = 3;
    /** After "<!", inside the "--" or "[CDATA[" that must follow. */
    private static final int AFTER_BANG = 4;
    private static final int COMMENT = 5;
    private static final int CDATA = 6;
    /** "<?" up to "?>": the XML declaration or another processing instruction. */
    private static final int PROCESSING = 7;
    /** Character data inside a frame. */
    private static final int CONTENT = 8;

    private static final byte[] COMMENT_OPENING = {'-', '-'};
    private static final byte[] CDATA_OPENING = {'[', 'C', 'D', 'A', 'T', 'A', '['};
    /** A unit buffer grown past this is dropped after its frame, so one big frame does not pin memory. */
    private static final int RETAINED_CAPACITY = 4096;

    private final int maxFrameBytes;
    private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT);

    /** The bytes of the unit being scanned: a frame, or markup between frames. */
    private byte[] unit = new byte[512];
    private int unitLength;
    private int scan = BETWEEN_FRAMES;
    /** Elements open in the current frame. */
    private int depth;
    /** Inside an attribute value: its quote; otherwise 0. */
    private byte quote;
    /** In a tag, the last byte outside a value was '/', so '>' ends an empty element. */
    private boolean slashBeforeGt;
    private byte[] bangOpening;
    private int bangMatched;
    /** How much of a closing "-->", "]]>" or "?>" has been seen. */
    private int closingRun;

    /** @param maxFrameBytes the longest frame (or markup between frames) accepted, in bytes */
    FrameParser(int maxFrameBytes) {
        if (maxFrameBytes < 16) {
            throw new IllegalArgumentException("maxFrameBytes must be at least 16");
        }
        this.maxFrameBytes = maxFrameBytes;
    }

    /**
     * Scans {@code length} more bytes of the stream; returns the frames they
     * complete, in order. After an exception the stream cannot be resumed.
     */
    List<Frame> feed(byte[] bytes, int offset, int length) throws BadFrameException {
        List<Frame> frames = Collections.emptyList();
        for (int i = offset; i < offset + length; i++) {
            byte b = bytes[i];
            if (scan == BETWEEN_FRAMES) {
                if (isSpace(b)) {
                    continue;
                }
                if (b != '<') {
                    throw new BadFrameException("text outside a frame");
                }
            }
            keep(b);
            Frame frame = step(b);
            if (frame != null) {
                if (frames.isEmpty()) {
                    frames = new ArrayList<>(2);
                }
                frames.add(frame);
            }
        }
        return frames;
    }

    private void keep(byte b) throws BadFrameException {
        if (unitLength == maxFrameBytes) {
            throw new BadFrameException("server frame longer than " + maxFrameBytes + " bytes", true);
        }
        if (unitLength == unit.length) {
            unit = Arrays.copyOf(unit, Math.min(maxFrameBytes, unit.length * 2));
        }
        unit[unitLength++] = b;
    }

    /** Advances the scanner over {@code b}, already kept; returns a frame if {@code b} ended one. */
    private Frame step(byte b) throws BadFrameException {
        switch (scan) {
            case BETWEEN_FRAMES: // b is the '<' that starts a unit
                scan = AFTER_LT;
                return null;
            case AFTER_LT:
                if (b == '/') {
                    if (depth == 0) {
                        throw new BadFrameException("end tag outside a frame");
                    }
                    scan = END_TAG;
                } else if (b == '!') {
                    scan = AFTER_BANG;
                    bangOpening = null;
                    bangMatched = 0;
                } else if (b == '?') {
                    scan = PROCESSING;
                    closingRun = 0;
                } else if (isNameStart(b)) {
                    scan = START_TAG;
                    quote = 0;
                    slashBeforeGt = false;
                } else {
                    throw new BadFrameException("'<' that starts no markup");
                }
                return null;
            case START_TAG:
                if (quote != 0) {
                    if (b == quote) {
                        quote = 0;
                    } else if (b == '<') {
                        throw new BadFrameException("'<' in an attribute value");
                    }
                    return null;
                }
                if (b == '"' || b == '\'') {
                    quote = b;
                    slashBeforeGt = false;
                    return null;
                }
                if (b == '<') {
                    throw new BadFrameException("'<' inside a tag");
                }
                if (b != '>') {
                    slashBeforeGt = b == '/';
                    return null;
                }
                if (!slashBeforeGt) {
                    depth++;
                    scan = CONTENT;
                    return null;
                }
                return elementClosed();
            case END_TAG:
                if (b == '<') {
                    throw new BadFrameException("'<' inside an end tag");
                }
                if (b != '>') {
                    return null;
                }
                depth--;
                return elementClosed();
            case AFTER_BANG:
                if (bangOpening == null) {
                    if (b == '-') {
                        bangOpening = COMMENT_OPENING;
                    } else if (b == '[' && depth > 0) {
                        bangOpening = CDATA_OPENING;
                    } else if (b == '[') {
                        throw new BadFrameException("CDATA outside a frame");
                    } else {
                        // DOCTYPE, ENTITY, ...: declarations are never accepted (no entity expansion, ever).
                        throw new BadFrameException("DOCTYPE or other declaration");
                    }
                } else if (b != bangOpening[bangMatched]) {
                    throw new BadFrameException("malformed '<!' markup");
                }
                bangMatched++;
                if (bangMatched == bangOpening.length) {
                    scan = bangOpening == COMMENT_OPENING ? COMMENT : CDATA;
                    closingRun = 0;
                }
                return null;
            case COMMENT:
                if (b == '-') {
                    closingRun++;
                } else if (b == '>' && closingRun >= 2) {
                    markupClosed();
                } else {
                    closingRun = 0;
                }
                return null;
            case CDATA:
                if (b == ']') {
                    closingRun++;
                } else if (b == '>' && closingRun >= 2) {
                    scan = CONTENT;
                } else {
                    closingRun = 0;
                }
                return null;
            case PROCESSING:
                if (b == '>' && closingRun == 1) {
                    markupClosed();
                } else {
                    closingRun = b == '?' ? 1 : 0;
                }
                return null;
            case CONTENT:
                if (b == '<') {
                    scan = AFTER_LT;
                }
                return null;
            default:
                throw new IllegalStateException("scanner state " + scan);
        }
    }

    /** A comment or PI ended: between frames it is dropped, inside one it stays part of the frame. */
    private void markupClosed() {
        if (depth == 0) {
            scan = BETWEEN_FRAMES;
            unitLength = 0;
        } else {
            scan = CONTENT;
        }
    }

    /** An element ended; if it was the top-level one, the unit is a whole frame. */
    private Frame elementClosed() throws BadFrameException {
        if (depth > 0) {
            scan = CONTENT;
            return null;
        }
        scan = BETWEEN_FRAMES;
        String xml = decodeUtf8(unit, unitLength);
        unitLength = 0;
        if (unit.length > RETAINED_CAPACITY) {
            unit = new byte[512];
        }
        return parseElement(xml);
    }

    private String decodeUtf8(byte[] bytes, int length) throws BadFrameException {
        try {
            return utf8.reset().decode(ByteBuffer.wrap(bytes, 0, length)).toString();
        } catch (CharacterCodingException e) {
            throw new BadFrameException("invalid UTF-8 in a frame");
        }
    }

    // ------------------------------------------------------------------
    // Decoding one whole frame. The scanner has checked its outline (tags
    // balanced in number, quotes closed, ends with '>'), so these only check
    // the details.

    static Frame parseElement(String xml) throws BadFrameException {
        int nameEnd = nameEnd(xml, 1);
        String name = xml.substring(1, nameEnd);
        Map<String, String> attributes = new LinkedHashMap<>();
        int i = nameEnd;
        while (true) {
            int afterName = i;
            i = skipSpace(xml, i);
            if (xml.startsWith("/>", i)) {
                if (i + 2 != xml.length()) {
                    throw new BadFrameException("text after <" + name + "/>");
                }
                return new Frame(name, attributes, "");
            }
            if (xml.charAt(i) == '>') {
                i++;
                break;
            }
            int keyEnd = nameEnd(xml, i);
            if (i == afterName || keyEnd == i) {
                throw new BadFrameException("malformed attribute in <" + name + ">");
            }
            String key = xml.substring(i, keyEnd);
            i = skipSpace(xml, keyEnd);
            if (xml.charAt(i) != '=') {
                throw new BadFrameException("attribute " + key + " of <" + name + "> has no value");
            }
            i = skipSpace(xml, i + 1);
            char quote = xml.charAt(i);
            if (quote != '"' && quote != '\'') {
                throw new BadFrameException("attribute " + key + " of <" + name + "> is not quoted");
            }
            int close = xml.indexOf(quote, i + 1);
            if (attributes.put(key, attributeValue(xml.substring(i + 1, close))) != null) {
                throw new BadFrameException("attribute " + key + " twice in <" + name + ">");
            }
            i = close + 1;
        }
        int endTag = xml.lastIndexOf("</");
        String endName = xml.substring(endTag + 2, xml.length() - 1).trim();
        if (!endName.equals(name)) {
            throw new BadFrameException("<" + name + "> closed by </" + endName + ">");
        }
        return new Frame(name, attributes, text(xml, i, endTag));
    }

    private static String text(String xml, int from, int to) throws BadFrameException {
        StringBuilder out = new StringBuilder(to - from);
        Deque<String> open = new ArrayDeque<>();
        int i = from;
        while (i < to) {
            char c = xml.charAt(i);
            if (c == '&') {
                int semicolon = xml.indexOf(';', i);
                if (semicolon < 0 || semicolon >= to) {
                    throw new BadFrameException("'&' that starts no reference");
                }
                out.append(Xml.resolveReference(xml.substring(i + 1, semicolon)));
                i = semicolon + 1;
            } else if (c != '<') {
                out.append(c);
                i++;
            } else if (xml.startsWith("<![CDATA[", i)) {
                int end = xml.indexOf("]]>", i + 9);
                out.append(xml, i + 9, end);
                i = end + 3;
            } else if (xml.startsWith("<!--", i)) {
                i = xml.indexOf("-->", i + 4) + 3;
            } else if (xml.startsWith("<?", i)) {
                i = xml.indexOf("?>", i + 2) + 2;
            } else {
                int end = tagEnd(xml, i);
                String tag = xml.substring(i, end + 1);
                if (tag.startsWith("</")) {
                    String closing = tag.substring(2, tag.length() - 1).trim();
                    if (!closing.equals(open.poll())) {
                        throw new BadFrameException("mismatched end tag " + tag);
                    }
                } else if (!tag.endsWith("/>")) {
                    open.push(tag.substring(1, nameEnd(tag, 1)));
                }
                out.append(tag);
                i = end + 1;
            }
        }
        return out.toString();
    }

    /** Attribute-value normalisation: references resolved, each literal line break or tab a space. */
    private static String attributeValue(String raw) throws BadFrameException {
        if (raw.indexOf('&') < 0 && raw.indexOf('\t') < 0 && raw.indexOf('\n') < 0 && raw.indexOf('\r') < 0) {
            return raw;
        }
        StringBuilder out = new StringBuilder(raw.length());
        int i = 0;
        while (i < raw.length()) {
            char c = raw.charAt(i);
            if (c == '&') {
                int semicolon = raw.indexOf(';', i);
                if (semicolon < 0) {
                    throw new BadFrameException("'&' that starts no reference in an attribute");
                }
                out.append(Xml.resolveReference(raw.substring(i + 1, semicolon)));
                i = semicolon + 1;
                continue;
            }
            // CR LF is one line break, so one space.
            if (c == '\r' && i + 1 < raw.length() && raw.charAt(i + 1) == '\n') {
                i++;
            }
            out.append(c == '\t' || c == '\n' || c == '\r' ? ' ' : c);
            i++;
        }
        return out.toString();
    }

    /** Index of the '>' that ends the tag starting at {@code start}, skipping quoted values. */
    private static int tagEnd(String xml, int start) {
        char quote = 0;
        for (int i = start + 1; i < xml.length(); i++) {
            char c = xml.charAt(i);
            if (quote != 0) {
                if (c == quote) {
                    quote = 0;
                }
            } else if (c == '"' || c == '\'') {
                quote = c;
            } else if (c == '>') {
                return i;
            }
        }
        return xml.length() - 1;
    }

    private static int nameEnd(String xml, int start) {
        int i = start;
        while (i < xml.length() && "/>=<\"'& \t\r\n".indexOf(xml.charAt(i)) < 0) {
            i++;
        }
        return i;
    }

    private static int skipSpace(String xml, int start) {
        int i = start;
        while (i < xml.length() && isSpace(xml.charAt(i))) {
            i++;
        }
        return i;
    }

    private static boolean isSpace(byte b) {
        return b == ' ' || b == '\t' || b == '\n' || b == '\r';
    }

    private static boolean isSpace(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
    }

    /** A byte an element name may start with: a letter, '_', ':' or any non-ASCII character. */
    private static boolean isNameStart(byte b) {
        return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b == '_' || b == ':' || b < 0;
    }
}
