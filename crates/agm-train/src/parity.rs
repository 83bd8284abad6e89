//! Replays golden parity cases (FORMAT.md) through the real training step.
