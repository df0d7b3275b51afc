//! Host capability detection (`warren check`). Being written.
