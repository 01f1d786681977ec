//! A client context (gRPC `Kv` requests, the HTTP context header).
//! Decoding never panics; what decodes round-trips (see `dynamo_node::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dynamo_node::fuzzing::client_context(data);
});
