//! Comparing primary and shadow responses (being written).
