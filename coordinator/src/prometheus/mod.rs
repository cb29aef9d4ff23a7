//! The coordinator's Prometheus metrics: a process-wide [`Registry`] that
//! outlives leadership terms (`registry.rs`), each term's feeder that
//! publishes its scheduler's snapshot into it (`feed.rs`), the store wrapper
//! that times commits (`measured.rs`), and the text a scrape gets
//! (`render.rs`). The HTTP endpoint itself (authentication, limits) is the
//! CLI's: it serves [`Registry`] through [`render()`].

pub mod feed;
pub mod measured;
pub mod registry;
pub mod render;

pub use registry::Registry;
pub use render::render;
