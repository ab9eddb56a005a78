//! sse (being built).
