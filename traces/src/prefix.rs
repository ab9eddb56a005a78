//! prefix (being built).
