package org.dynamo.ycsb;

import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Locale;

/**
 * One client session's HTTP/1.1 exchanges with one node: a request (method, path,
 * optional {@code X-Dynamo-Context}, optional body) in, a {@link Reply} out.
 *
 * <p>Two implementations, chosen by {@code dynamo.http}:
 * <ul>
 *   <li>{@code raw} (the default): {@link Raw}, one blocking keep-alive socket written
 *       and read by the calling thread, the way Jedis talks to Redis and the way a
 *       YCSB thread is meant to drive its store. Its cost per request is a few
 *       microseconds of client CPU.</li>
 *   <li>{@code jdk}: {@link java.net.http.HttpClient} (HTTP/1.1, keep-alive). Correct but
 *       costly here: every synchronous send crosses to the client's selector thread and
 *       back through futures, about 1 ms of CPU per request measured on this 2-core
 *       machine, more than the three nodes spent serving it. Kept to cross-check the
 *       raw transport.</li>
 * </ul>
 */
interface HttpTransport extends AutoCloseable {
    /** A node's answer: its status, its {@code X-Dynamo-Context} ("" if none), its body. */
    record Reply(int status, String context, byte[] body) {
        String text() {
            return new String(body, StandardCharsets.UTF_8);
        }
    }

    Reply exchange(String method, String path, String context, byte[] body)
            throws IOException, InterruptedException;

    @Override
    void close();

    static HttpTransport open(String kind, String base, Duration timeout) {
        switch (kind) {
            case "raw":
                return new Raw(URI.create(base), timeout);
            case "jdk":
                return new Jdk(base, timeout);
            default:
                throw new IllegalArgumentException("dynamo.http must be raw or jdk, not " + kind);
        }
    }

    /**
     * A minimal blocking HTTP/1.1 client connection: requests with a
     * {@code Content-Length} body, replies with a {@code Content-Length}, chunked or
     * close-delimited body (the node sends {@code Content-Length}). Connects on first use
     * and again after a failure or a {@code Connection: close}; a connection idle for
     * longer than {@link #MAX_IDLE_NANOS} is replaced before use, so the node's idle
     * timeout (10 s, {@code --client-read-timeout}) never closes one under a request.
     * Requests are not retried.
     */
    final class Raw implements HttpTransport {
        static final long MAX_IDLE_NANOS = 5_000_000_000L;

        private final InetSocketAddress address;
        private final String hostHeader;
        private final int timeoutMillis;
        private final ByteArrayOutputStream request = new ByteArrayOutputStream(2048);
        private final byte[] line = new byte[8192];
        private Socket socket;
        private InputStream in;
        private OutputStream out;
        private long lastUsed;

        Raw(URI base, Duration timeout) {
            if (!"http".equals(base.getScheme())) {
                throw new IllegalArgumentException("dynamo.http=raw speaks plain http only: " + base);
            }
            int port = base.getPort() == -1 ? 80 : base.getPort();
            address = new InetSocketAddress(base.getHost(), port);
            hostHeader = base.getHost() + ":" + port;
            timeoutMillis = (int) Math.min(Integer.MAX_VALUE, timeout.toMillis());
        }

        @Override
        public Reply exchange(String method, String path, String context, byte[] body)
                throws IOException {
            if (socket != null && System.nanoTime() - lastUsed > MAX_IDLE_NANOS) {
                close();
            }
            if (socket == null) {
                connect();
            }
            try {
                request.reset();
                ascii(method + " " + path + " HTTP/1.1\r\nHost: " + hostHeader + "\r\n");
                if (context != null) {
                    ascii(DynamoClient.CONTEXT_HEADER + ": " + context + "\r\n");
                }
                if (body != null) {
                    ascii("Content-Type: application/octet-stream\r\nContent-Length: "
                            + body.length + "\r\n");
                }
                ascii("\r\n");
                if (body != null) {
                    request.write(body, 0, body.length);
                }
                request.writeTo(out);
                out.flush();
                Reply reply = read(method);
                lastUsed = System.nanoTime();
                return reply;
            } catch (IOException | RuntimeException e) {
                close();
                throw e;
            }
        }

        private void connect() throws IOException {
            Socket fresh = new Socket();
            try {
                fresh.setTcpNoDelay(true);
                fresh.setSoTimeout(timeoutMillis);
                fresh.connect(address, timeoutMillis);
                in = new BufferedInputStream(fresh.getInputStream(), 16384);
                out = fresh.getOutputStream();
            } catch (IOException e) {
                fresh.close();
                throw e;
            }
            socket = fresh;
        }

        private void ascii(String s) {
            for (int i = 0; i < s.length(); i++) {
                request.write(s.charAt(i));
            }
        }

        private Reply read(String method) throws IOException {
            String status = readLine();
            if (!status.startsWith("HTTP/1.") || status.length() < 12) {
                throw new IOException("not an HTTP/1.x status line: " + status);
            }
            int code = Integer.parseInt(status.substring(9, 12));
            long length = -1;
            boolean chunked = false;
            boolean closing = status.startsWith("HTTP/1.0");
            String context = "";
            for (String header = readLine(); !header.isEmpty(); header = readLine()) {
                int colon = header.indexOf(':');
                if (colon < 0) {
                    throw new IOException("malformed header: " + header);
                }
                String name = header.substring(0, colon).trim().toLowerCase(Locale.ROOT);
                String value = header.substring(colon + 1).trim();
                switch (name) {
                    case "content-length":
                        length = Long.parseLong(value);
                        break;
                    case "transfer-encoding":
                        chunked = value.toLowerCase(Locale.ROOT).contains("chunked");
                        break;
                    case "connection":
                        closing = value.equalsIgnoreCase("close");
                        break;
                    case "x-dynamo-context":
                        context = value;
                        break;
                    default:
                        break;
                }
            }
            byte[] body;
            if (code == 204 || code == 304 || code < 200 || "HEAD".equals(method)) {
                body = new byte[0];
            } else if (chunked) {
                body = readChunked();
            } else if (length >= 0) {
                body = in.readNBytes((int) length);
                if (body.length != length) {
                    throw new EOFException("body ended after " + body.length + " of " + length + " bytes");
                }
            } else {
                body = in.readAllBytes();
                closing = true;
            }
            if (closing) {
                close();
            }
            return new Reply(code, context, body);
        }

        private byte[] readChunked() throws IOException {
            ByteArrayOutputStream body = new ByteArrayOutputStream();
            while (true) {
                String size = readLine();
                int semicolon = size.indexOf(';');
                int length = Integer.parseInt(
                        (semicolon < 0 ? size : size.substring(0, semicolon)).trim(), 16);
                if (length == 0) {
                    while (!readLine().isEmpty()) {
                        // trailers: none expected, none used
                    }
                    return body.toByteArray();
                }
                byte[] chunk = in.readNBytes(length);
                if (chunk.length != length) {
                    throw new EOFException("chunk ended early");
                }
                body.write(chunk, 0, length);
                readLine(); // the CRLF after the chunk
            }
        }

        /** One header line without its CRLF, as ISO-8859-1 (headers here are ASCII). */
        private String readLine() throws IOException {
            int n = 0;
            while (true) {
                int b = in.read();
                if (b < 0) {
                    throw new EOFException("connection closed mid-reply");
                }
                if (b == '\n') {
                    if (n > 0 && line[n - 1] == '\r') {
                        n--;
                    }
                    return new String(line, 0, n, StandardCharsets.ISO_8859_1);
                }
                if (n == line.length) {
                    throw new IOException("header line longer than " + line.length + " bytes");
                }
                line[n++] = (byte) b;
            }
        }

        @Override
        public void close() {
            if (socket != null) {
                try {
                    socket.close();
                } catch (IOException ignored) {
                    // closing a broken connection: nothing more to do
                }
                socket = null;
                in = null;
                out = null;
            }
        }
    }

    /** {@link HttpClient} over HTTP/1.1 with keep-alive; see the interface doc. */
    final class Jdk implements HttpTransport {
        private final HttpClient http;
        private final String base;
        private final Duration timeout;

        Jdk(String base, Duration timeout) {
            this.base = base;
            this.timeout = timeout;
            http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                    .connectTimeout(timeout).build();
        }

        @Override
        public Reply exchange(String method, String path, String context, byte[] body)
                throws IOException, InterruptedException {
            HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + path))
                    .timeout(timeout)
                    .method(method, body == null ? HttpRequest.BodyPublishers.noBody()
                            : HttpRequest.BodyPublishers.ofByteArray(body));
            if (body != null) {
                request.header("Content-Type", "application/octet-stream");
            }
            if (context != null) {
                request.header(DynamoClient.CONTEXT_HEADER, context);
            }
            HttpResponse<byte[]> response =
                    http.send(request.build(), HttpResponse.BodyHandlers.ofByteArray());
            return new Reply(response.statusCode(),
                    response.headers().firstValue(DynamoClient.CONTEXT_HEADER).orElse(""),
                    response.body());
        }

        @Override
        public void close() {
            // Java 17's HttpClient has no close(); its idle connections go with it.
        }
    }
}
