package org.dynamo.ycsb;

import java.util.ArrayList;
import java.util.Base64;
import java.util.List;

/**
 * The versions in the body of a Dynamo node's {@code 300 Multiple Choices} answer:
 * {@code {"explanation": "...", "siblings": ["<base64>", ...]}} (node/src/server/http.rs).
 *
 * <p>A few lines instead of a JSON library: the body is the node's own, the siblings are
 * standard base64 strings (no escapes possible), and the explanation is never read.
 */
final class Siblings {
    private Siblings() {}

    private static final String KEY = "\"siblings\"";

    /** The decoded siblings; IllegalArgumentException if the body holds no such list. */
    static List<byte[]> parse(String body) {
        int at = body.indexOf(KEY);
        if (at < 0) {
            throw new IllegalArgumentException("no \"siblings\" in a 300 body");
        }
        at = skipSpaces(body, at + KEY.length());
        at = expect(body, at, ':');
        at = expect(body, at, '[');
        List<byte[]> siblings = new ArrayList<>();
        Base64.Decoder base64 = Base64.getDecoder();
        while (true) {
            at = skipSpaces(body, at);
            if (at < body.length() && body.charAt(at) == ']') {
                return siblings;
            }
            if (!siblings.isEmpty()) {
                at = skipSpaces(body, expect(body, at, ','));
            }
            at = expect(body, at, '"');
            int end = body.indexOf('"', at);
            if (end < 0) {
                throw new IllegalArgumentException("unterminated sibling in a 300 body");
            }
            siblings.add(base64.decode(body.substring(at, end)));
            at = end + 1;
        }
    }

    private static int skipSpaces(String body, int at) {
        while (at < body.length() && Character.isWhitespace(body.charAt(at))) {
            at++;
        }
        return at;
    }

    private static int expect(String body, int at, char wanted) {
        at = skipSpaces(body, at);
        if (at >= body.length() || body.charAt(at) != wanted) {
            throw new IllegalArgumentException("expected '" + wanted + "' at " + at + " of a 300 body");
        }
        return at + 1;
    }
}
