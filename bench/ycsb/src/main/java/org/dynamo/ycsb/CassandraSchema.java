package org.dynamo.ycsb;

import java.util.concurrent.TimeUnit;

import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Host;
import com.datastax.driver.core.Session;

/**
 * Creates YCSB's keyspace and table on a fresh Cassandra cluster, as YCSB's Cassandra
 * README says (no cqlsh needed):
 *
 * <pre>
 * CREATE KEYSPACE ycsb WITH replication = {'class': 'SimpleStrategy', 'replication_factor': RF};
 * CREATE TABLE ycsb.usertable (y_id varchar PRIMARY KEY, field0 varchar, ..., fieldN-1 varchar);
 * </pre>
 *
 * <p>Usage: {@code CassandraSchema HOSTS NODES RF FIELDCOUNT TIMEOUT_SECONDS}. It first
 * waits, within the timeout, until the driver sees NODES nodes up, then creates the
 * schema and waits for every node to agree on it. Exit status 1 with a message otherwise.
 */
public final class CassandraSchema {
    private CassandraSchema() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 5) {
            System.err.println("usage: CassandraSchema HOSTS NODES RF FIELDCOUNT TIMEOUT_SECONDS");
            System.exit(2);
        }
        String[] hosts = args[0].split(",");
        int nodes = Integer.parseInt(args[1]);
        int replicationFactor = Integer.parseInt(args[2]);
        int fieldCount = Integer.parseInt(args[3]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[4]));
        try (Cluster cluster = Cluster.builder().addContactPoints(hosts).build();
             Session session = cluster.connect()) {
            long up = 0;
            while ((up = cluster.getMetadata().getAllHosts().stream().filter(Host::isUp).count()) < nodes) {
                if (System.nanoTime() > deadline) {
                    fail("only " + up + " of " + nodes + " Cassandra nodes up: "
                            + cluster.getMetadata().getAllHosts());
                }
                Thread.sleep(200);
            }
            session.execute("CREATE KEYSPACE IF NOT EXISTS ycsb WITH replication = "
                    + "{'class': 'SimpleStrategy', 'replication_factor': " + replicationFactor + "}");
            StringBuilder table = new StringBuilder(
                    "CREATE TABLE IF NOT EXISTS ycsb.usertable (y_id varchar PRIMARY KEY");
            for (int i = 0; i < fieldCount; i++) {
                table.append(", field").append(i).append(" varchar");
            }
            session.execute(table.append(")").toString());
            while (!cluster.getMetadata().checkSchemaAgreement()) {
                if (System.nanoTime() > deadline) {
                    fail("the Cassandra nodes did not agree on the schema in time");
                }
                Thread.sleep(200);
            }
            System.out.println("keyspace ycsb (RF=" + replicationFactor + ") and table usertable ("
                    + fieldCount + " fields) ready on " + up + " nodes");
        } catch (RuntimeException e) {
            fail(e.toString());
        }
    }

    private static void fail(String why) {
        System.err.println("CassandraSchema: " + why);
        System.exit(1);
    }
}
