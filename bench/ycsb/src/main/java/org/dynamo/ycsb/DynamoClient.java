package org.dynamo.ycsb;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.Vector;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import site.ycsb.ByteArrayByteIterator;
import site.ycsb.ByteIterator;
import site.ycsb.DB;
import site.ycsb.DBException;
import site.ycsb.Status;

/**
 * YCSB binding for this repository's Dynamo, over the node's HTTP API
 * ({@code GET/PUT/DELETE /v1/kv/{key}}, README "Run a local cluster").
 *
 * <p>YCSB makes one instance per client thread, so an instance is one client session: one
 * keep-alive HTTP/1.1 connection ({@link HttpTransport}) to one node, the threads spread
 * round-robin over {@code dynamo.endpoints}. Any node coordinates or forwards a request
 * (server-driven routing, Dynamo section 4.5). A record's fields are one value
 * ({@link Records}).
 *
 * <p>What makes it a Dynamo client rather than a put/get loop:
 * <ul>
 *   <li>A read returns every version: one ({@code 200}, the value) or several
 *       ({@code 300}, all siblings in the body, each decoded and merged by
 *       {@link Records#merge}). The binding counts reads that met siblings.</li>
 *   <li>Contexts (Dynamo section 4.4): the session remembers, per key, the context (and
 *       record) of its last read of the key or its last write to it, in a bounded LRU map
 *       ({@code dynamo.contextcache} keys, default 1000). An update of a key the session
 *       has seen carries that context and writes the whole record, the one it read with
 *       the updated fields applied: workload F's read-modify-write, which reads first,
 *       therefore always replaces what it read. An insert, and an update of a key the
 *       session has not seen, is blind (no context): it is concurrent with the stored
 *       versions and becomes a sibling beside them, as in Dynamo, holding only the
 *       fields it wrote; reads merge it back in.</li>
 *   <li>A delete carries the remembered context when there is one.</li>
 * </ul>
 *
 * <p>Any answer but 200/300 (read), 404 (read: NOT_FOUND) or 204 (write) is
 * {@link Status#ERROR}, as is a transport failure; {@code 409} (too many siblings) is
 * counted apart. At exit the JVM prints one line,
 * {@code [DYNAMO-BINDING] reads=... with_siblings=... max_versions=... ...}, which
 * bench/ycsb.py reads.
 *
 * <p>Properties: {@code dynamo.endpoints} (required: comma-separated
 * {@code http://host:port} HTTP endpoints, {@code host:port} also accepted),
 * {@code dynamo.timeout.ms} (per request, default 10000), {@code dynamo.contextcache}
 * (keys remembered per thread, default 1000; 0 makes every write blind),
 * {@code dynamo.http} ({@code raw}, the default, or {@code jdk}: see {@link HttpTransport}).
 */
public class DynamoClient extends DB {
    /** The header that carries the opaque client context (standard base64). */
    static final String CONTEXT_HEADER = "X-Dynamo-Context";

    private static final AtomicInteger NEXT_ENDPOINT = new AtomicInteger();
    private static final Stats STATS = new Stats();

    private HttpTransport http;
    private ContextCache seen;

    /** What a session last saw of a key: the context, and the record it covered. */
    private static final class Seen {
        final String context;
        final SortedMap<String, byte[]> record;

        Seen(String context, SortedMap<String, byte[]> record) {
            this.context = context;
            this.record = record;
        }
    }

    /** Least recently used keys go first once the map holds {@code capacity}. */
    private static final class ContextCache extends LinkedHashMap<String, Seen> {
        private final int capacity;

        ContextCache(int capacity) {
            super(16, 0.75f, true);
            this.capacity = capacity;
        }

        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Seen> eldest) {
            return size() > capacity;
        }

        void remember(String key, String context, SortedMap<String, byte[]> record) {
            if (capacity > 0 && context != null && !context.isEmpty()) {
                put(key, new Seen(context, record));
            }
        }
    }

    @Override
    public void init() throws DBException {
        Properties props = getProperties();
        String endpoints = props.getProperty("dynamo.endpoints");
        if (endpoints == null || endpoints.isBlank()) {
            throw new DBException("dynamo.endpoints is required (comma-separated http://host:port)");
        }
        List<String> bases = new ArrayList<>();
        for (String endpoint : endpoints.split(",")) {
            endpoint = endpoint.trim();
            if (endpoint.isEmpty()) {
                continue;
            }
            if (!endpoint.contains("://")) {
                endpoint = "http://" + endpoint;
            }
            bases.add(endpoint.replaceAll("/+$", ""));
        }
        if (bases.isEmpty()) {
            throw new DBException("dynamo.endpoints names no endpoint");
        }
        String base = bases.get(Math.floorMod(NEXT_ENDPOINT.getAndIncrement(), bases.size()));
        Duration timeout = Duration.ofMillis(Long.parseLong(props.getProperty("dynamo.timeout.ms", "10000")));
        seen = new ContextCache(Integer.parseInt(props.getProperty("dynamo.contextcache", "1000")));
        try {
            http = HttpTransport.open(props.getProperty("dynamo.http", "raw"), base, timeout);
        } catch (IllegalArgumentException e) {
            throw new DBException(e.getMessage());
        }
    }

    @Override
    public void cleanup() {
        if (http != null) {
            http.close();
        }
    }

    private static String path(String key) {
        return "/v1/kv/" + percentEncode(key);
    }

    @Override
    public Status read(String table, String key, Set<String> fields,
                       Map<String, ByteIterator> result) {
        HttpTransport.Reply reply;
        try {
            reply = http.exchange("GET", path(key), null, null);
        } catch (IOException | InterruptedException e) {
            return STATS.error("GET " + key, e);
        }
        SortedMap<String, byte[]> record;
        try {
            switch (reply.status()) {
                case 200:
                    record = Records.decode(reply.body());
                    STATS.read(1);
                    break;
                case 300:
                    List<byte[]> siblings = Siblings.parse(reply.text());
                    record = Records.merge(siblings);
                    STATS.read(siblings.size());
                    break;
                case 404:
                    STATS.notFound.incrementAndGet();
                    seen.remove(key);
                    return Status.NOT_FOUND;
                default:
                    return STATS.error("GET " + key, reply);
            }
        } catch (IllegalArgumentException e) {
            return STATS.error("GET " + key, "undecodable value: " + e.getMessage());
        }
        seen.remember(key, reply.context(), record);
        for (Map.Entry<String, byte[]> field : record.entrySet()) {
            if (fields == null || fields.contains(field.getKey())) {
                result.put(field.getKey(), new ByteArrayByteIterator(field.getValue()));
            }
        }
        return Status.OK;
    }

    @Override
    public Status scan(String table, String startkey, int recordcount, Set<String> fields,
                       Vector<HashMap<String, ByteIterator>> result) {
        return Status.NOT_IMPLEMENTED; // a hash-partitioned store has no key order
    }

    @Override
    public Status update(String table, String key, Map<String, ByteIterator> values) {
        Seen last = seen.get(key);
        SortedMap<String, byte[]> record = last == null ? new TreeMap<>() : new TreeMap<>(last.record);
        for (Map.Entry<String, ByteIterator> field : values.entrySet()) {
            record.put(field.getKey(), field.getValue().toArray());
        }
        return write(key, record, last == null ? null : last.context);
    }

    @Override
    public Status insert(String table, String key, Map<String, ByteIterator> values) {
        SortedMap<String, byte[]> record = new TreeMap<>();
        for (Map.Entry<String, ByteIterator> field : values.entrySet()) {
            record.put(field.getKey(), field.getValue().toArray());
        }
        return write(key, record, null);
    }

    private Status write(String key, SortedMap<String, byte[]> record, String context) {
        HttpTransport.Reply reply;
        try {
            reply = http.exchange("PUT", path(key), context, Records.encode(record));
        } catch (IOException | InterruptedException e) {
            return STATS.error("PUT " + key, e);
        }
        if (reply.status() != 204) {
            if (reply.status() == 409) {
                STATS.conflicts.incrementAndGet();
            }
            return STATS.error("PUT " + key, reply);
        }
        (context == null ? STATS.blindWrites : STATS.contextWrites).incrementAndGet();
        seen.remember(key, reply.context(), record);
        return Status.OK;
    }

    @Override
    public Status delete(String table, String key) {
        Seen last = seen.remove(key);
        try {
            HttpTransport.Reply reply =
                    http.exchange("DELETE", path(key), last == null ? null : last.context, null);
            return reply.status() == 204 ? Status.OK : STATS.error("DELETE " + key, reply);
        } catch (IOException | InterruptedException e) {
            return STATS.error("DELETE " + key, e);
        }
    }

    /** Percent-encodes everything but RFC 3986's unreserved characters. */
    static String percentEncode(String key) {
        StringBuilder out = new StringBuilder(key.length() + 8);
        for (byte b : key.getBytes(StandardCharsets.UTF_8)) {
            int c = b & 0xFF;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                    || c == '-' || c == '_' || c == '.' || c == '~') {
                out.append((char) c);
            } else {
                out.append('%').append(Character.toUpperCase(Character.forDigit(c >> 4, 16)))
                        .append(Character.toUpperCase(Character.forDigit(c & 0xF, 16)));
            }
        }
        return out.toString();
    }

    /** Counters over every thread of the JVM, printed once at exit. */
    private static final class Stats {
        final AtomicLong reads = new AtomicLong();
        final AtomicLong withSiblings = new AtomicLong();
        final AtomicLong versions = new AtomicLong();
        final AtomicLong maxVersions = new AtomicLong();
        final AtomicLong notFound = new AtomicLong();
        final AtomicLong contextWrites = new AtomicLong();
        final AtomicLong blindWrites = new AtomicLong();
        final AtomicLong conflicts = new AtomicLong();
        final AtomicLong errors = new AtomicLong();

        Stats() {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> System.err.println(
                    "[DYNAMO-BINDING] reads=" + reads + " with_siblings=" + withSiblings
                    + " versions=" + versions + " max_versions=" + maxVersions
                    + " not_found=" + notFound + " context_writes=" + contextWrites
                    + " blind_writes=" + blindWrites + " conflicts=" + conflicts
                    + " errors=" + errors)));
        }

        void read(int count) {
            reads.incrementAndGet();
            versions.addAndGet(count);
            if (count > 1) {
                withSiblings.incrementAndGet();
            }
            maxVersions.accumulateAndGet(count, Math::max);
        }

        Status error(String what, HttpTransport.Reply reply) {
            return error(what, "HTTP " + reply.status() + " " + reply.text());
        }

        Status error(String what, Exception e) {
            if (e instanceof InterruptedException) {
                Thread.currentThread().interrupt();
            }
            return error(what, e);
        }

        /** Counts an error; prints the first few, so a broken run says why. */
        Status error(String what, String why) {
            if (errors.incrementAndGet() <= 10) {
                System.err.println("[DYNAMO-BINDING] " + what + ": " + why);
            }
            return Status.ERROR;
        }
    }
}
