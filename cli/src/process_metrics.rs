//! The standard `process_*` metrics of the daemon serving `/metrics` (the
//! names every Prometheus client library uses, so that existing dashboards
//! work): CPU time, resident and virtual memory, open and allowed file
//! descriptors, threads and start time, read from `/proc/self` at scrape
//! time. Off Linux (no `/proc`) the family is simply absent.

use baton_proto::exposition::{Kind, Text};

use crate::proc_cpu::{TICKS_PER_S, stat_fields};

/// Seconds since the epoch at which the system booted (`btime` of `/proc/stat`).
fn boot_time_s() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of open files (`Max open files` of `/proc/self/limits`).
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory in bytes (`VmRSS` of `/proc/self/status`, in kB there:
/// no page size to know).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The process metrics of this process.
pub fn render() -> Text {
    let mut t = Text::new();
    let Some(f) = stat_fields(std::process::id()) else {
        return t;
    };
    // Index 0 is field 3 of proc(5) (state): field N is at N - 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        t.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            (user + system) as f64 / TICKS_PER_S,
        );
    }
    if let Some(rss) = resident_bytes() {
        t.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    if let Some(vsize) = field(23) {
        t.single(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            vsize as f64,
        );
    }
    if let Some(threads) = field(20) {
        t.single(
            "process_threads",
            Kind::Gauge,
            "Number of OS threads in the process.",
            threads as f64,
        );
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time_s()) {
        t.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            boot as f64 + start as f64 / TICKS_PER_S,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        t.single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        t.single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let text = super::render().finish();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(rss > 1e6, "rss {rss}");
    }
}
