//! Helpers for the end-to-end tests (binaries under test, scratch folders).
