//! End-to-end tests live in tests/tests/ and drive real poncho processes.
