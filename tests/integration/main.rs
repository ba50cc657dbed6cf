//! The one integration test binary: shared helpers in `common`, one module per area.

mod bitbucket;
mod cases;
mod certificates;
mod common;
mod core_dump;
mod deploy;
mod docs;
mod examples;
mod faults;
mod fresh_machine;
mod fuzz_corpus;
mod generations;
mod hostile;
mod intake;
mod jenkins;
mod layers;
mod lint;
mod load;
mod privilege;
mod quickstart;
mod release;
mod rotation;
mod round_trip;
mod schema_files;
mod testbed;
mod vite;
