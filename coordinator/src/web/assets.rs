//! The dashboard's page, script and style, embedded in the binary at build
//! time: no build step, no download at run time, nothing fetched from
//! anywhere but this coordinator.

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const APP_JS: &str = include_str!("assets/app.js");
pub const APP_CSS: &str = include_str!("assets/app.css");

/// The asset at `path`, with its content type.
pub fn get(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/assets/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/assets/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}
