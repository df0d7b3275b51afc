//! Test support for Warren. Never shipped in release builds.
