package org.dynamo.ycsb;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.Vector;
import java.util.concurrent.atomic.AtomicLong;

import redis.clients.jedis.Jedis;
import redis.clients.jedis.Pipeline;
import redis.clients.jedis.Response;
import site.ycsb.ByteIterator;
import site.ycsb.DB;
import site.ycsb.DBException;
import site.ycsb.Status;
import site.ycsb.StringByteIterator;

/**
 * YCSB binding for a replicated Redis whose writes count only once they are on
 * {@code redis.wait.replicas} replicas as well as the primary: YCSB's stock redis binding
 * (not on Maven Central, and it never WAITs) with {@code WAIT} after every write.
 *
 * <p>Records are hashes, as in the stock binding: a read is {@code HGETALL} (or
 * {@code HMGET} of the fields asked for), an insert or update {@code HSET} of the fields.
 * Every write is sent in one pipeline with {@code WAIT replicas timeout}: one round trip,
 * like a Dynamo put that returns once W replicas have it. The write is an
 * {@link Status#ERROR} when {@code WAIT} reports fewer replicas than asked for (its
 * timeout, {@code redis.wait.timeout.ms}, passed first). With the primary and
 * its replicas on {@code appendfsync always}, {@code WAIT 1} means the write is on two
 * copies, the primary's fsynced; Redis 7.0 (Debian 12's) has no {@code WAITAOF}, which
 * would also wait for the replica's fsync.
 *
 * <p>Unlike the stock binding, inserts do not add the key to a sorted-set index for scans
 * (no workload run here scans), and scan answers NOT_IMPLEMENTED. Reads and writes go to
 * the primary, as in the stock binding (replicas lag).
 *
 * <p>Properties: {@code redis.host} (default 127.0.0.1), {@code redis.port} (6379),
 * {@code redis.password}, {@code redis.timeout} (ms, 10000), {@code redis.wait.replicas}
 * (1; 0 sends no WAIT), {@code redis.wait.timeout.ms} (1000).
 */
public class RedisWaitClient extends DB {
    private static final AtomicLong SHORT_WAITS = new AtomicLong();

    static {
        Runtime.getRuntime().addShutdownHook(new Thread(() ->
                System.err.println("[REDIS-BINDING] writes_short_of_replicas=" + SHORT_WAITS)));
    }

    private Jedis jedis;
    private int replicas;
    private long waitTimeoutMillis;

    @Override
    public void init() throws DBException {
        Properties props = getProperties();
        String host = props.getProperty("redis.host", "127.0.0.1");
        int port = Integer.parseInt(props.getProperty("redis.port", "6379"));
        int timeout = Integer.parseInt(props.getProperty("redis.timeout", "10000"));
        replicas = Integer.parseInt(props.getProperty("redis.wait.replicas", "1"));
        waitTimeoutMillis = Long.parseLong(props.getProperty("redis.wait.timeout.ms", "1000"));
        try {
            jedis = new Jedis(host, port, timeout);
            String password = props.getProperty("redis.password");
            if (password != null) {
                jedis.auth(password);
            }
            long connected = connectedReplicas(jedis.info("replication"));
            if (connected < replicas) {
                throw new DBException("redis at " + host + ":" + port + " has " + connected
                        + " connected replicas, redis.wait.replicas is " + replicas);
            }
        } catch (RuntimeException e) {
            throw new DBException("redis at " + host + ":" + port + ": " + e);
        }
    }

    static long connectedReplicas(String info) {
        for (String line : info.split("\r?\n")) {
            if (line.startsWith("connected_slaves:")) {
                return Long.parseLong(line.substring("connected_slaves:".length()).trim());
            }
        }
        return 0;
    }

    @Override
    public void cleanup() {
        if (jedis != null) {
            jedis.close();
        }
    }

    @Override
    public Status read(String table, String key, Set<String> fields,
                       Map<String, ByteIterator> result) {
        try {
            if (fields == null) {
                StringByteIterator.putAllAsByteIterators(result, jedis.hgetAll(key));
            } else {
                String[] names = fields.toArray(new String[0]);
                List<String> values = jedis.hmget(key, names);
                for (int i = 0; i < names.length; i++) {
                    if (values.get(i) != null) {
                        result.put(names[i], new StringByteIterator(values.get(i)));
                    }
                }
            }
            return result.isEmpty() ? Status.NOT_FOUND : Status.OK;
        } catch (RuntimeException e) {
            return Status.ERROR;
        }
    }

    @Override
    public Status insert(String table, String key, Map<String, ByteIterator> values) {
        return update(table, key, values);
    }

    @Override
    public Status update(String table, String key, Map<String, ByteIterator> values) {
        try (Pipeline pipeline = jedis.pipelined()) {
            return waited(pipeline, pipeline.hset(key, StringByteIterator.getStringMap(values)));
        } catch (RuntimeException e) {
            return Status.ERROR;
        }
    }

    @Override
    public Status delete(String table, String key) {
        try (Pipeline pipeline = jedis.pipelined()) {
            return waited(pipeline, pipeline.del(key));
        } catch (RuntimeException e) {
            return Status.ERROR;
        }
    }

    /**
     * Sends the queued write with WAIT behind it; OK once the write succeeded and WAIT
     * counted enough replicas (a failed write throws from {@code written.get()}).
     */
    private Status waited(Pipeline pipeline, Response<Long> written) {
        Response<Long> acknowledged = replicas > 0
                ? pipeline.waitReplicas(replicas, waitTimeoutMillis) : null;
        pipeline.sync();
        written.get();
        if (acknowledged != null && acknowledged.get() < replicas) {
            SHORT_WAITS.incrementAndGet();
            return Status.ERROR;
        }
        return Status.OK;
    }

    @Override
    public Status scan(String table, String startkey, int recordcount, Set<String> fields,
                       Vector<HashMap<String, ByteIterator>> result) {
        return Status.NOT_IMPLEMENTED;
    }
}
