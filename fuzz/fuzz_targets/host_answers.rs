//! The invariant lives in the library (hostenv::fuzzing), shared with the corpus replay test.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hostenv::fuzzing::host_answers(data));
