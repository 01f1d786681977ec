package org.dynamo.ycsb;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;

/**
 * A YCSB record (field name to value) as one Dynamo value, and back.
 *
 * <p>The format is a sequence of fields in name order, each a 2-byte big-endian name
 * length, the name in UTF-8, a 4-byte big-endian value length and the value. Nothing else:
 * a record of YCSB's default ten 100-byte fields is 1,060 bytes.
 *
 * <p>Several concurrent versions of a key (siblings, Dynamo section 4.4) merge into one
 * record by {@link #merge}: the union of their fields, a field held by several siblings
 * taking its value from the first sibling in unsigned byte order. Any client reading the
 * same siblings therefore builds the same record.
 */
final class Records {
    private Records() {}

    static byte[] encode(Map<String, byte[]> fields) {
        SortedMap<String, byte[]> sorted = fields instanceof SortedMap
                ? (SortedMap<String, byte[]>) fields : new TreeMap<>(fields);
        ByteArrayOutputStream out = new ByteArrayOutputStream(64 + 110 * sorted.size());
        for (Map.Entry<String, byte[]> field : sorted.entrySet()) {
            byte[] name = field.getKey().getBytes(StandardCharsets.UTF_8);
            byte[] value = field.getValue();
            if (name.length > 0xFFFF) {
                throw new IllegalArgumentException("field name longer than 65535 bytes");
            }
            out.write(name.length >>> 8);
            out.write(name.length);
            out.writeBytes(name);
            out.writeBytes(ByteBuffer.allocate(4).putInt(value.length).array());
            out.writeBytes(value);
        }
        return out.toByteArray();
    }

    /** The fields of one encoded record; IllegalArgumentException if it is not one. */
    static SortedMap<String, byte[]> decode(byte[] record) {
        ByteBuffer in = ByteBuffer.wrap(record);
        SortedMap<String, byte[]> fields = new TreeMap<>();
        while (in.hasRemaining()) {
            if (in.remaining() < 2) {
                throw new IllegalArgumentException("truncated field name length");
            }
            int nameLength = in.getShort() & 0xFFFF;
            if (in.remaining() < nameLength + 4) {
                throw new IllegalArgumentException("truncated field name");
            }
            byte[] name = new byte[nameLength];
            in.get(name);
            int valueLength = in.getInt();
            if (valueLength < 0 || in.remaining() < valueLength) {
                throw new IllegalArgumentException("truncated field value");
            }
            byte[] value = new byte[valueLength];
            in.get(value);
            fields.put(new String(name, StandardCharsets.UTF_8), value);
        }
        return fields;
    }

    /** One record from a key's siblings: see the class doc. */
    static SortedMap<String, byte[]> merge(List<byte[]> siblings) {
        List<byte[]> ordered = new ArrayList<>(siblings);
        ordered.sort(Arrays::compareUnsigned);
        SortedMap<String, byte[]> merged = new TreeMap<>();
        for (byte[] sibling : ordered) {
            for (Map.Entry<String, byte[]> field : decode(sibling).entrySet()) {
                merged.putIfAbsent(field.getKey(), field.getValue());
            }
        }
        return merged;
    }
}
