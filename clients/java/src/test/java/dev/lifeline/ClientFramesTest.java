package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.List;
import org.junit.jupiter.api.Test;

/** What the client writes, byte for byte, and that its escaping survives the reader. */
class ClientFramesTest {
    @Test
    void encodesClientFramesByteExact() {
        assertEquals("<login id=\"a\"/>", ClientFrames.login("a", null));
        assertEquals("<login id=\"a\" token=\"ff00\"/>", ClientFrames.login("a", "ff00"));
        assertEquals("<login id=\"a\" token=\"ff00\" exp=\"1900000000\" interval=\"60000\"/>",
                ClientFrames.login("a", "ff00", 1_900_000_000L, 60_000));
        assertEquals("<login id=\"a\" interval=\"500\"/>", ClientFrames.login("a", null, null, 500));
        assertEquals("<msg to=\"b\" id=\"a-1-x\">x &amp; &lt;y&gt; \"q\" &#13;\n</msg>",
                ClientFrames.msg("b", "a-1-x", "x & <y> \"q\" \r\n"));
        assertEquals("<ack id=\"p-lqu5m2o0-7\"/>", ClientFrames.ack("p-lqu5m2o0-7"));
        assertEquals("<heartbeat mode=\"ping\" seq=\"3\"/>", ClientFrames.ping(3));
        assertEquals("<heartbeat mode=\"pong\" seq=\"41\"/>", ClientFrames.pong("41"));
        assertEquals("<heartbeat mode=\"pong\"/>", ClientFrames.pong(null));
        // A seq that is not a number is not echoed into the frame.
        assertEquals("<heartbeat mode=\"pong\"/>", ClientFrames.pong("1\"/><bye/"));
        assertEquals("<login id=\"a\" token=\"&quot;&lt;&amp;&#10;\"/>", ClientFrames.login("a", "\"<&\n"));
    }

    @Test
    void escapedTextReadsBackUnchanged() throws Exception {
        String[] texts = {"", "plain", "a & b < c > d", "]]>", "<![CDATA[x]]>", "&amp; already", "cr\r lf\n crlf\r\n tab\t",
            "\u00e9\u2713\uD83D\uDE00", "'single' \"double\""};
        for (String text : texts) {
            byte[] frame = ("<msg from=\"a\">" + Xml.escapeText(text) + "</msg>").getBytes(StandardCharsets.UTF_8);
            List<Frame> frames = new FrameParser(4096).feed(frame, 0, frame.length);
            assertEquals(text, frames.get(0).text, "round trip of " + text);
        }
    }

    @Test
    void refusesTextXmlCannotCarry() {
        String[] refused = {"\u0000", "bell \u0007", "\uFFFE", "lone \uD83D surrogate", "\uDE00"};
        for (String text : refused) {
            assertThrows(IllegalArgumentException.class, () -> Xml.requireXmlText(text), "accepted " + text);
        }
        Xml.requireXmlText("tab\t lf\n cr\r \u00e9 \uD83D\uDE00 \uFFFD");
    }

    @Test
    void checksIdsAsTheServerDoes() {
        LifelineClient.requireId("a-Z_0.9:@", 64, "id");
        LifelineClient.requireId("x".repeat(64), 64, "id");
        String[] refused = {"", "has space", "x".repeat(65), "\u00e9", "a/b", "<a>"};
        for (String id : refused) {
            assertThrows(IllegalArgumentException.class, () -> LifelineClient.requireId(id, 64, "id"), "accepted " + id);
        }
    }
}
