//! Integration tests for Warren live in `tests/`.
