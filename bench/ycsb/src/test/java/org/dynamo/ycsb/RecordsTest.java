package org.dynamo.ycsb;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;

import org.junit.Test;

public class RecordsTest {
    private static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static SortedMap<String, byte[]> record(String... pairs) {
        SortedMap<String, byte[]> fields = new TreeMap<>();
        for (int i = 0; i < pairs.length; i += 2) {
            fields.put(pairs[i], b(pairs[i + 1]));
        }
        return fields;
    }

    private static void assertRecord(Map<String, byte[]> expected, Map<String, byte[]> actual) {
        assertEquals(expected.keySet(), actual.keySet());
        for (String field : expected.keySet()) {
            assertArrayEquals(field, expected.get(field), actual.get(field));
        }
    }

    @Test
    public void aRecordSurvivesEncoding() {
        SortedMap<String, byte[]> fields = record("field0", "a", "field1", "", "fïeld2", "xyz");
        assertRecord(fields, Records.decode(Records.encode(fields)));
        assertEquals(0, Records.decode(new byte[0]).size());
    }

    @Test
    public void aTruncatedRecordIsRefused() {
        byte[] encoded = Records.encode(record("field0", "value"));
        for (int cut = 1; cut < encoded.length; cut++) {
            byte[] truncated = Arrays.copyOf(encoded, cut);
            assertThrows(IllegalArgumentException.class, () -> Records.decode(truncated));
        }
    }

    @Test
    public void siblingsMergeIntoTheUnionOfTheirFieldsWhateverTheirOrder() {
        byte[] full = Records.encode(record("field0", "old0", "field1", "old1"));
        byte[] partial = Records.encode(record("field1", "new1"));
        SortedMap<String, byte[]> one = Records.merge(List.of(full, partial));
        SortedMap<String, byte[]> other = Records.merge(List.of(partial, full));
        assertRecord(one, other);
        assertEquals(2, one.size());
        assertArrayEquals(b("old0"), one.get("field0"));
    }

    @Test
    public void aThreeHundredBodyGivesEverySibling() {
        Base64.Encoder base64 = Base64.getEncoder();
        String body = "{\"explanation\":\"These versions were written concurrently: "
                + "no writer saw the others.\",\"siblings\":[\""
                + base64.encodeToString(b("eggs")) + "\", \"" + base64.encodeToString(b("milk"))
                + "\",\"\"]}";
        List<byte[]> siblings = Siblings.parse(body);
        assertEquals(3, siblings.size());
        assertArrayEquals(b("eggs"), siblings.get(0));
        assertArrayEquals(b("milk"), siblings.get(1));
        assertArrayEquals(new byte[0], siblings.get(2));
        assertEquals(0, Siblings.parse("{\"siblings\": []}").size());
        assertThrows(IllegalArgumentException.class, () -> Siblings.parse("{\"error\":\"x\"}"));
        assertThrows(IllegalArgumentException.class, () -> Siblings.parse("{\"siblings\":[\"ab"));
    }

    @Test
    public void keysArePercentEncodedExceptUnreservedCharacters() {
        assertEquals("user123", DynamoClient.percentEncode("user123"));
        assertEquals("a%2Fb%20c~", DynamoClient.percentEncode("a/b c~"));
    }

    @Test
    public void theReplicaCountComesFromInfoReplication() {
        String info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1\r\n";
        assertEquals(2, RedisWaitClient.connectedReplicas(info));
        assertEquals(0, RedisWaitClient.connectedReplicas("role:master\r\n"));
    }
}
