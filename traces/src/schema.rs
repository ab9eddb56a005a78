//! schema (being built).
