//! The fuzz targets' corpus (fuzz/corpus/<target>/), replayed through the same
//! invariants the targets check (hostenv::fuzzing), on stable, in every test run.
//! Inputs a fuzzing run found are added there and stay checked.

use crate::common::repo_root;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} breaks the invariant", path.display());
        count += 1;
    }
    count
}

#[test]
fn the_request_corpus_is_requests_or_rejections() {
    assert!(replay("request", hostenv::fuzzing::request) >= 50);
}

#[test]
fn the_contract_corpus_parses_or_names_a_line() {
    assert!(replay("contract", hostenv::fuzzing::contract) >= 10);
}

#[test]
fn the_render_corpus_round_trips_in_both_grammars() {
    assert!(replay("render", hostenv::fuzzing::render_round_trip) >= 3);
}

#[test]
fn the_lock_channel_corpus_frames_exactly_the_whole_stream_reading() {
    assert!(replay("lock_channel", hostenv::fuzzing::lock_channel) >= 9);
}

#[test]
fn the_host_answers_corpus_reads_as_values_or_errors() {
    assert!(replay("host_answers", hostenv::fuzzing::host_answers) >= 9);
}
