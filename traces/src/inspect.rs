//! inspect (being built).
