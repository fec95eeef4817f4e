//! HTTP/1.1 message framing (being written).
