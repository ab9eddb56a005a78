//! read (being built).
