//! Importers of public traces (being built).
