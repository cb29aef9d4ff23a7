//! The command line's duration values (`--ttl 24h`, `--retain-for 7d`).

/// Parses a duration written as a number with a unit: `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("'{s}': the unit must be s, m, h or d")),
    }
    .ok_or_else(|| format!("'{s}' is too long"))?;
    if secs == 0 {
        return Err("a duration must be positive".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            super::parse_duration("24h"),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(
            super::parse_duration("7d"),
            Ok(Duration::from_secs(604_800))
        );
        for bad in ["", "h", "10", "10y", "0s", "-1s", "99999999999999999999d"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
