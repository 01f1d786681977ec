//! An HTTP kv request head: path and query, NUL, context header.
//! Decoding never panics; what decodes round-trips (see `dynamo_node::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dynamo_node::fuzzing::http_request(data);
});
