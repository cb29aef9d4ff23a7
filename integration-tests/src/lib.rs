//! Multi-process tests live in `tests/it/`.
