//! A stored or replicated sibling set.
//! Decoding never panics; what decodes round-trips (see `dynamo_node::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dynamo_node::fuzzing::stored_state(data);
});
