package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The frame parser byte for byte: every way of cutting the stream gives the same frames. */
class FrameParserTest {
    /**
     * Every kind of frame, with what lies between frames and inside them:
     * a declaration, comments, CRLF, references, CDATA, nested markup, and
     * UTF-8 characters of two, three and four bytes (so cuts fall inside them).
     */
    static final String STREAM = "<?xml version=\"1.0\"?>\n"
            + "<welcome id=\"a\" interval=\"5000\" misses=\"5\" phase-ms=\"120\"/>\r\n"
            + "<!-- between -><x frames -->"
            + "<heartbeat mode=\"ping\" seq=\"7\"/><heartbeat mode='pong'/>"
            + "<msg from=\"b\" id=\"m1\">h\u00e9llo &amp; &#x2713; &#233; \uD83D\uDE00 <i>x</i><!-- c -->"
            + "<![CDATA[<raw> a]><b & ]]]></msg>\t"
            + "<error code=\"offline\" ref=\"m&quot;2\">b is not &lt;online&gt;</error>"
            + "<future x=\"a > b\"><deep/></future>"
            + "<bye reason=\"shutdown\" retry-ms=\"1500\"/>";

    static List<Frame> expected() {
        return Arrays.asList(
                frame("welcome", "", "id", "a", "interval", "5000", "misses", "5", "phase-ms", "120"),
                frame("heartbeat", "", "mode", "ping", "seq", "7"),
                frame("heartbeat", "", "mode", "pong"),
                frame("msg", "h\u00e9llo & \u2713 \u00e9 \uD83D\uDE00 <i>x</i><raw> a]><b & ]", "from", "b", "id", "m1"),
                frame("error", "b is not <online>", "code", "offline", "ref", "m\"2"),
                frame("future", "<deep/>", "x", "a > b"),
                frame("bye", "", "reason", "shutdown", "retry-ms", "1500"));
    }

    static Frame frame(String name, String text, String... attributes) {
        Map<String, String> map = new LinkedHashMap<>();
        for (int i = 0; i < attributes.length; i += 2) {
            map.put(attributes[i], attributes[i + 1]);
        }
        return new Frame(name, map, text);
    }

    /** Feeds {@code stream} in pieces that end at {@code cuts} (ascending), as reads would deliver it. */
    static List<Frame> parseCut(byte[] stream, int... cuts) throws BadFrameException {
        FrameParser parser = new FrameParser(4096);
        List<Frame> frames = new ArrayList<>();
        int start = 0;
        for (int i = 0; i <= cuts.length; i++) {
            int end = i < cuts.length ? cuts[i] : stream.length;
            frames.addAll(parser.feed(stream, start, end - start));
            start = end;
        }
        return frames;
    }

    @Test
    void decodesEveryFrameInOneRead() throws Exception {
        assertEquals(expected(), parseCut(STREAM.getBytes(StandardCharsets.UTF_8)));
    }

    @Test
    void everySingleCutGivesTheSameFrames() throws Exception {
        byte[] stream = STREAM.getBytes(StandardCharsets.UTF_8);
        for (int cut = 1; cut < stream.length; cut++) {
            assertEquals(expected(), parseCut(stream, cut), "cut at byte " + cut);
        }
    }

    @Test
    void byteByByteGivesTheSameFrames() throws Exception {
        byte[] stream = STREAM.getBytes(StandardCharsets.UTF_8);
        int[] everyByte = new int[stream.length - 1];
        for (int i = 0; i < everyByte.length; i++) {
            everyByte[i] = i + 1;
        }
        assertEquals(expected(), parseCut(stream, everyByte));
    }

    @Test
    void randomSplitsGiveTheSameFrames() throws Exception {
        byte[] stream = STREAM.getBytes(StandardCharsets.UTF_8);
        Random random = new Random(17);
        for (int round = 0; round < 500; round++) {
            int[] cuts = random.ints(1 + random.nextInt(12), 1, stream.length).sorted().distinct().toArray();
            assertEquals(expected(), parseCut(stream, cuts), "cuts " + Arrays.toString(cuts));
        }
    }

    @Test
    void cutsInsideEveryMultiByteCharacterAreHeld() throws Exception {
        // Two, three and four bytes: each cut inside one must wait for the rest.
        String text = "\u00e9\u2713\uD83D\uDE00";
        byte[] stream = ("<msg from=\"b\">" + text + "</msg>").getBytes(StandardCharsets.UTF_8);
        int textStart = "<msg from=\"b\">".length();
        for (int cut = textStart + 1; cut < textStart + 9; cut++) {
            FrameParser parser = new FrameParser(4096);
            assertTrue(parser.feed(stream, 0, cut).isEmpty(), "a frame before its end, cut at " + cut);
            List<Frame> frames = parser.feed(stream, cut, stream.length - cut);
            assertEquals(Arrays.asList(frame("msg", text, "from", "b")), frames, "cut at " + cut);
        }
    }

    @Test
    void refusesWhatAServerMustNotSend() {
        String[] refused = {
            "hello",
            "<!DOCTYPE x><bye reason=\"x\"/>",
            "<msg from=\"b\">&bogus;</msg>",
            "<msg from=\"b\">a & b</msg>",
            "<msg from=\"b\">&#0;</msg>",
            "<msg from=\"b\">&#x110000;</msg>",
            "<a></b>",
            "<a><b></a></b>",
            "</a>",
            "<![CDATA[x]]>",
            "<a x=\"1\" x=\"2\"/>",
            "<a x=1/>",
            "<a x=\"<\"/>",
            "< a/>",
        };
        for (String text : refused) {
            assertThrows(BadFrameException.class, () -> parseCut(text.getBytes(StandardCharsets.UTF_8)),
                    "accepted " + text);
        }
        byte[][] invalidUtf8 = {
            {(byte) 0xff},
            {(byte) 0xc0, (byte) 0xaf}, // an overlong '/'
            {(byte) 0xed, (byte) 0xa0, (byte) 0x80}, // a UTF-16 surrogate encoded in UTF-8
        };
        for (byte[] bad : invalidUtf8) {
            ByteArrayOutputStream frame = new ByteArrayOutputStream();
            frame.writeBytes("<msg from=\"b\">".getBytes(StandardCharsets.UTF_8));
            frame.writeBytes(bad);
            frame.writeBytes("</msg>".getBytes(StandardCharsets.UTF_8));
            assertThrows(BadFrameException.class, () -> parseCut(frame.toByteArray()),
                    "accepted invalid UTF-8 " + Arrays.toString(bad));
        }
    }

    @Test
    void boundsAFrameThatNeverEnds() throws Exception {
        byte[] endless = ("<msg from=\"b\">" + "x".repeat(5000)).getBytes(StandardCharsets.UTF_8);
        BadFrameException e = assertThrows(BadFrameException.class, () -> parseCut(endless));
        assertTrue(e.tooLarge, e.getMessage());
        // A comment between frames is held to the same bound.
        byte[] endlessComment = ("<!--" + "x".repeat(5000)).getBytes(StandardCharsets.UTF_8);
        assertTrue(assertThrows(BadFrameException.class, () -> parseCut(endlessComment)).tooLarge);
        // Whitespace between frames is never held, so it never accumulates.
        byte[] spaces = (" ".repeat(10_000) + "<bye reason=\"x\"/>").getBytes(StandardCharsets.UTF_8);
        assertEquals(Arrays.asList(frame("bye", "", "reason", "x")), parseCut(spaces));
    }

    @Test
    void normalisesAttributeWhitespaceAndKeepsContentAsWritten() throws Exception {
        byte[] stream = "<msg from=\"a\tb\r\nc\" id='x&#10;y'>line 1\r\nline&#13;2</msg>".getBytes(StandardCharsets.UTF_8);
        assertEquals(Arrays.asList(frame("msg", "line 1\r\nline\r2", "from", "a b c", "id", "x\ny")), parseCut(stream));
    }
}
