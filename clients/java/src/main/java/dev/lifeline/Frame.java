package dev.lifeline;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One frame from the server: a top-level element's name, its attributes
 * (references resolved) and its text (see {@link FrameParser} for what the
 * text of an element with markup inside is).
 */
final class Frame {
    final String name;
    final Map<String, String> attributes;
    final String text;

    Frame(String name, Map<String, String> attributes, String text) {
        this.name = name;
        this.attributes = Collections.unmodifiableMap(new LinkedHashMap<>(attributes));
        this.text = text;
    }

    /** The attribute's value, or null when the frame does not carry it. */
    String attribute(String attributeName) {
        return attributes.get(attributeName);
    }

    @Override
    public boolean equals(Object other) {
        if (!(other instanceof Frame)) {
            return false;
        }
        Frame frame = (Frame) other;
        return name.equals(frame.name) && attributes.equals(frame.attributes) && text.equals(frame.text);
    }

    @Override
    public int hashCode() {
        return (name.hashCode() * 31 + attributes.hashCode()) * 31 + text.hashCode();
    }

    @Override
    public String toString() {
        return "<" + name + " " + attributes + ">" + text + "</" + name + ">";
    }
}
