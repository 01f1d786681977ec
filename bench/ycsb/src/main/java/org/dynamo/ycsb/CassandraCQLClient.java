package org.dynamo.ycsb;

import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.Vector;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.ColumnDefinitions;
import com.datastax.driver.core.ConsistencyLevel;
import com.datastax.driver.core.HostDistance;
import com.datastax.driver.core.PoolingOptions;
import com.datastax.driver.core.PreparedStatement;
import com.datastax.driver.core.ResultSet;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SocketOptions;
import com.datastax.driver.core.querybuilder.Insert;
import com.datastax.driver.core.querybuilder.QueryBuilder;
import com.datastax.driver.core.querybuilder.Select;
import com.datastax.driver.core.querybuilder.Update;
import site.ycsb.ByteArrayByteIterator;
import site.ycsb.ByteIterator;
import site.ycsb.DB;
import site.ycsb.DBException;
import site.ycsb.Status;

/**
 * YCSB binding for Apache Cassandra over CQL: a port of YCSB 0.17.0's
 * {@code site.ycsb.db.CassandraCQLClient} (the {@code cassandra-binding} module, which is
 * not published on Maven Central) on the same DataStax 3.x driver API.
 *
 * <p>Kept from the original: one driver {@code Cluster}/{@code Session} shared by every
 * client thread (the driver is asynchronous and pools its connections), prepared
 * statements cached per field set, the table layout ({@code y_id varchar PRIMARY KEY,
 * field0 varchar, ...}), values bound as strings, an update that sets only the given
 * columns, and the property names: {@code hosts}, {@code port},
 * {@code cassandra.keyspace}, {@code cassandra.readconsistencylevel},
 * {@code cassandra.writeconsistencylevel}, {@code cassandra.maxconnections},
 * {@code cassandra.coreconnections}, {@code cassandra.connecttimeoutmillis},
 * {@code cassandra.readtimeoutmillis}. Changed: the consistency levels default to QUORUM
 * (YCSB's default is ONE; bench/ycsb.py sets QUORUM explicitly anyway), column order is
 * sorted so a cached statement always binds in its own order, a read copies exactly the
 * column's bytes, and scans, tracing, SSL and authentication are left out.
 */
public class CassandraCQLClient extends DB {
    public static final String YCSB_KEY = "y_id";

    private static final AtomicInteger INIT_COUNT = new AtomicInteger();
    private static final AtomicInteger ERRORS = new AtomicInteger();
    private static Cluster cluster;
    private static Session session;
    private static ConsistencyLevel readConsistency = ConsistencyLevel.QUORUM;
    private static ConsistencyLevel writeConsistency = ConsistencyLevel.QUORUM;

    private static final ConcurrentMap<Set<String>, PreparedStatement> READS = new ConcurrentHashMap<>();
    private static final ConcurrentMap<Set<String>, PreparedStatement> INSERTS = new ConcurrentHashMap<>();
    private static final ConcurrentMap<Set<String>, PreparedStatement> UPDATES = new ConcurrentHashMap<>();
    private static final AtomicReference<PreparedStatement> READ_ALL = new AtomicReference<>();
    private static final AtomicReference<PreparedStatement> DELETE = new AtomicReference<>();

    @Override
    public void init() throws DBException {
        INIT_COUNT.incrementAndGet();
        synchronized (INIT_COUNT) {
            if (cluster != null) {
                return;
            }
            Properties props = getProperties();
            String hosts = props.getProperty("hosts");
            if (hosts == null) {
                throw new DBException("required property \"hosts\" missing for CassandraCQLClient");
            }
            int port = Integer.parseInt(props.getProperty("port", "9042"));
            String keyspace = props.getProperty("cassandra.keyspace", "ycsb");
            readConsistency = ConsistencyLevel.valueOf(
                    props.getProperty("cassandra.readconsistencylevel", "QUORUM"));
            writeConsistency = ConsistencyLevel.valueOf(
                    props.getProperty("cassandra.writeconsistencylevel", "QUORUM"));
            try {
                Cluster.Builder builder = Cluster.builder().withPort(port)
                        .addContactPoints(hosts.split(","));
                String maxConnections = props.getProperty("cassandra.maxconnections");
                String coreConnections = props.getProperty("cassandra.coreconnections");
                if (maxConnections != null || coreConnections != null) {
                    PoolingOptions pooling = new PoolingOptions();
                    if (maxConnections != null) {
                        pooling.setMaxConnectionsPerHost(HostDistance.LOCAL,
                                Integer.parseInt(maxConnections));
                    }
                    if (coreConnections != null) {
                        pooling.setCoreConnectionsPerHost(HostDistance.LOCAL,
                                Integer.parseInt(coreConnections));
                    }
                    builder.withPoolingOptions(pooling);
                }
                SocketOptions socket = new SocketOptions();
                String connectTimeout = props.getProperty("cassandra.connecttimeoutmillis");
                if (connectTimeout != null) {
                    socket.setConnectTimeoutMillis(Integer.parseInt(connectTimeout));
                }
                String readTimeout = props.getProperty("cassandra.readtimeoutmillis");
                if (readTimeout != null) {
                    socket.setReadTimeoutMillis(Integer.parseInt(readTimeout));
                }
                builder.withSocketOptions(socket);
                cluster = builder.build();
                session = cluster.connect(keyspace);
            } catch (RuntimeException e) {
                if (cluster != null) {
                    cluster.close();
                    cluster = null;
                }
                throw new DBException(e);
            }
        }
    }

    @Override
    public void cleanup() throws DBException {
        synchronized (INIT_COUNT) {
            int left = INIT_COUNT.decrementAndGet();
            if (left <= 0 && cluster != null) {
                READS.clear();
                INSERTS.clear();
                UPDATES.clear();
                READ_ALL.set(null);
                DELETE.set(null);
                session.close();
                cluster.close();
                cluster = null;
                session = null;
            }
            if (left < 0) {
                throw new DBException("cleanup() called more than init()");
            }
        }
    }

    @Override
    public Status read(String table, String key, Set<String> fields,
                       Map<String, ByteIterator> result) {
        try {
            PreparedStatement statement = fields == null ? READ_ALL.get() : READS.get(fields);
            if (statement == null) {
                Select.Builder select;
                if (fields == null) {
                    select = QueryBuilder.select().all();
                } else {
                    Select.Selection selection = QueryBuilder.select();
                    for (String column : new TreeSet<>(fields)) {
                        selection.column(column);
                    }
                    select = selection;
                }
                statement = session.prepare(select.from(table)
                        .where(QueryBuilder.eq(YCSB_KEY, QueryBuilder.bindMarker())).limit(1));
                statement.setConsistencyLevel(readConsistency);
                PreparedStatement earlier = fields == null
                        ? READ_ALL.getAndSet(statement)
                        : READS.putIfAbsent(new TreeSet<>(fields), statement);
                if (earlier != null) {
                    statement = earlier;
                }
            }
            ResultSet rows = session.execute(statement.bind(key));
            if (rows.isExhausted()) {
                return Status.NOT_FOUND;
            }
            Row row = rows.one();
            for (ColumnDefinitions.Definition column : row.getColumnDefinitions()) {
                ByteBuffer value = row.getBytesUnsafe(column.getName());
                if (value == null) {
                    result.put(column.getName(), null);
                } else {
                    byte[] bytes = new byte[value.remaining()];
                    value.duplicate().get(bytes);
                    result.put(column.getName(), new ByteArrayByteIterator(bytes));
                }
            }
            return Status.OK;
        } catch (RuntimeException e) {
            return failed("read " + key, e);
        }
    }

    @Override
    public Status scan(String table, String startkey, int recordcount, Set<String> fields,
                       Vector<HashMap<String, ByteIterator>> result) {
        return Status.NOT_IMPLEMENTED;
    }

    @Override
    public Status update(String table, String key, Map<String, ByteIterator> values) {
        try {
            Set<String> fields = new TreeSet<>(values.keySet());
            PreparedStatement statement = UPDATES.get(fields);
            if (statement == null) {
                Update update = QueryBuilder.update(table);
                for (String field : fields) {
                    update.with(QueryBuilder.set(field, QueryBuilder.bindMarker()));
                }
                update.where(QueryBuilder.eq(YCSB_KEY, QueryBuilder.bindMarker()));
                statement = prepare(UPDATES, fields, update.toString());
            }
            Object[] bound = new Object[fields.size() + 1];
            int i = 0;
            for (String field : fields) {
                bound[i++] = values.get(field).toString();
            }
            bound[i] = key;
            session.execute(statement.bind(bound));
            return Status.OK;
        } catch (RuntimeException e) {
            return failed("update " + key, e);
        }
    }

    @Override
    public Status insert(String table, String key, Map<String, ByteIterator> values) {
        try {
            Set<String> fields = new TreeSet<>(values.keySet());
            PreparedStatement statement = INSERTS.get(fields);
            if (statement == null) {
                Insert insert = QueryBuilder.insertInto(table)
                        .value(YCSB_KEY, QueryBuilder.bindMarker());
                for (String field : fields) {
                    insert.value(field, QueryBuilder.bindMarker());
                }
                statement = prepare(INSERTS, fields, insert.toString());
            }
            Object[] bound = new Object[fields.size() + 1];
            bound[0] = key;
            int i = 1;
            for (String field : fields) {
                bound[i++] = values.get(field).toString();
            }
            session.execute(statement.bind(bound));
            return Status.OK;
        } catch (RuntimeException e) {
            return failed("insert " + key, e);
        }
    }

    @Override
    public Status delete(String table, String key) {
        try {
            PreparedStatement statement = DELETE.get();
            if (statement == null) {
                statement = session.prepare(QueryBuilder.delete().from(table)
                        .where(QueryBuilder.eq(YCSB_KEY, QueryBuilder.bindMarker())));
                statement.setConsistencyLevel(writeConsistency);
                PreparedStatement earlier = DELETE.getAndSet(statement);
                if (earlier != null) {
                    statement = earlier;
                }
            }
            session.execute(statement.bind(key));
            return Status.OK;
        } catch (RuntimeException e) {
            return failed("delete " + key, e);
        }
    }

    /** Counts a failed operation; prints the first few, so a broken run says why. */
    private static Status failed(String what, RuntimeException e) {
        if (ERRORS.incrementAndGet() <= 10) {
            System.err.println("[CASSANDRA-BINDING] " + what + ": " + e);
        }
        return Status.ERROR;
    }

    private static PreparedStatement prepare(ConcurrentMap<Set<String>, PreparedStatement> cache,
                                             Set<String> fields, String cql) {
        PreparedStatement statement = session.prepare(cql);
        statement.setConsistencyLevel(writeConsistency);
        PreparedStatement earlier = cache.putIfAbsent(fields, statement);
        return earlier != null ? earlier : statement;
    }
}
