//! The programs the browser harness runs, found on `PATH` (and in the sbin
//! directories, which a test's `PATH` may lack).

use std::path::PathBuf;

/// Looks `name` up in `PATH`, then in `/usr/sbin`, `/sbin`, `/usr/bin`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `ip` (iproute2); `ip` alone when absent, so the failure names it.
pub fn ip_path() -> PathBuf {
    which("ip").unwrap_or_else(|| PathBuf::from("ip"))
}

/// The Chromium executable chromedriver starts. Debian's `/usr/bin/chromium` is a
/// shell wrapper that adds flags of its own (extensions, GPU rasterization) and reads
/// `/etc/chromium.d`; the binary behind it is started directly when present.
pub fn chromium() -> Option<PathBuf> {
    let direct = PathBuf::from("/usr/lib/chromium/chromium");
    if direct.is_file() {
        return Some(direct);
    }
    which("chromium").or_else(|| which("chromium-browser"))
}
