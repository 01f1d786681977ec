//! Internode messages (first byte picks the type) and client API requests.
//! Decoding never panics; what decodes round-trips (see `dynamo_node::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dynamo_node::fuzzing::replica_message(data);
});
