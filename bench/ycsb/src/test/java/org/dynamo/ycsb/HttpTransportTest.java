package org.dynamo.ycsb;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;

import java.io.BufferedReader;
import java.io.EOFException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

import org.junit.Test;

/** The raw HTTP/1.1 transport against a scripted server on loopback. */
public class HttpTransportTest {
    /** Answers each request on a connection with the next canned reply; records heads. */
    private static final class Scripted implements AutoCloseable {
        final ServerSocket server;
        final List<String> heads = new CopyOnWriteArrayList<>();
        final List<Integer> connections = new CopyOnWriteArrayList<>();
        final Thread thread;

        Scripted(String... replies) throws Exception {
            server = new ServerSocket(0, 10, InetAddress.getLoopbackAddress());
            thread = new Thread(() -> serve(replies));
            thread.setDaemon(true);
            thread.start();
        }

        private void serve(String[] replies) {
            int next = 0;
            try {
                while (next < replies.length) {
                    try (Socket socket = server.accept()) {
                        connections.add(next);
                        BufferedReader in = new BufferedReader(new InputStreamReader(
                                socket.getInputStream(), StandardCharsets.ISO_8859_1));
                        OutputStream out = socket.getOutputStream();
                        while (next < replies.length) {
                            StringBuilder head = new StringBuilder();
                            int length = 0;
                            for (String line = in.readLine(); line != null && !line.isEmpty();
                                 line = in.readLine()) {
                                head.append(line).append('\n');
                                if (line.toLowerCase().startsWith("content-length:")) {
                                    length = Integer.parseInt(line.substring(15).trim());
                                }
                            }
                            if (head.length() == 0) {
                                break; // the client closed the connection
                            }
                            char[] body = new char[length];
                            int read = 0;
                            while (read < length) {
                                read += in.read(body, read, length - read);
                            }
                            heads.add(head + new String(body));
                            String reply = replies[next++];
                            out.write(reply.getBytes(StandardCharsets.ISO_8859_1));
                            out.flush();
                            if (reply.contains("Connection: close")) {
                                break;
                            }
                        }
                    }
                }
            } catch (Exception e) {
                // the test closed the server
            }
        }

        HttpTransport client() {
            return HttpTransport.open("raw", "http://127.0.0.1:" + server.getLocalPort(),
                    Duration.ofSeconds(5));
        }

        @Override
        public void close() throws Exception {
            server.close();
        }
    }

    @Test
    public void repliesOfEveryFramingAreReadOnOneKeptAliveConnection() throws Exception {
        try (Scripted server = new Scripted(
                "HTTP/1.1 200 OK\r\nx-dynamo-context: AAE=\r\ncontent-length: 5\r\n\r\nhello",
                "HTTP/1.1 204 No Content\r\nX-Dynamo-Context: AAI=\r\n\r\n",
                "HTTP/1.1 300 Multiple Choices\r\ntransfer-encoding: chunked\r\n\r\n"
                        + "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
             HttpTransport http = server.client()) {
            HttpTransport.Reply got = http.exchange("GET", "/v1/kv/k", null, null);
            assertEquals(200, got.status());
            assertEquals("AAE=", got.context());
            assertEquals("hello", got.text());
            HttpTransport.Reply put = http.exchange("PUT", "/v1/kv/k", "AAE=", new byte[] {1, 2});
            assertEquals(204, put.status());
            assertEquals("AAI=", put.context());
            assertArrayEquals(new byte[0], put.body());
            HttpTransport.Reply chunked = http.exchange("GET", "/v1/kv/k", null, null);
            assertEquals(300, chunked.status());
            assertEquals("abcde", chunked.text());
            assertEquals(404, http.exchange("DELETE", "/v1/kv/k", null, null).status());
            assertEquals(List.of(0), new ArrayList<>(server.connections));
            String sent = server.heads.get(1);
            assertEquals(true, sent.startsWith("PUT /v1/kv/k HTTP/1.1\n"));
            assertEquals(true, sent.contains("X-Dynamo-Context: AAE=\n"));
            assertEquals(true, sent.contains("Content-Length: 2\n"));
        }
    }

    @Test
    public void connectionCloseAndATruncatedBodyOpenAFreshConnection() throws Exception {
        try (Scripted server = new Scripted(
                "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\nx",
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nConnection: close\r\n\r\nshort",
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
             HttpTransport http = server.client()) {
            assertEquals("x", http.exchange("GET", "/v1/kv/a", null, null).text());
            assertThrows(EOFException.class, () -> http.exchange("GET", "/v1/kv/b", null, null));
            assertEquals("ok", http.exchange("GET", "/v1/kv/c", null, null).text());
            assertEquals(List.of(0, 1, 2), new ArrayList<>(server.connections));
        }
    }
}
