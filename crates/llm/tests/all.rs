//! Integration tests of the providers against a real local HTTP server speaking both wire
//! formats (`warren_testkit::mockllm`), with scripted faults.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod suite;
