//! The em-proxy DSL on the reactor (work in progress).
