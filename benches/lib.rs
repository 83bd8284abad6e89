//! Shared setup for the criterion benches.
