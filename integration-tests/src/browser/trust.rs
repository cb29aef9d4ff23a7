//! Makes Chromium trust a test's CA the way a user would, once: the CA is imported
//! into the NSS database Chromium reads on Linux, `$HOME/.pki/nssdb`, under a
//! temporary `HOME` (certutil from libnss3-tools). No certificate check is switched off.

use std::path::Path;
use std::process::Command;

use super::tools;

/// The nickname of the imported CA in the database.
const NICKNAME: &str = "baton-test-ca";

/// Creates `home/.pki/nssdb` (empty password) and imports `ca_pem` as a CA trusted
/// to issue server certificates (`-t C,,`).
pub fn import_ca(home: &Path, ca_pem: &Path) -> Result<(), String> {
    let db_dir = home.join(".pki").join("nssdb");
    std::fs::create_dir_all(&db_dir).map_err(|e| format!("{}: {e}", db_dir.display()))?;
    let db = format!("sql:{}", db_dir.display());
    let certutil = tools::which("certutil").ok_or("certutil (libnss3-tools) not found")?;
    run(Command::new(&certutil).args(["-N", "-d", &db, "--empty-password"]))?;
    run(Command::new(&certutil)
        .args(["-A", "-d", &db, "-n", NICKNAME, "-t", "C,,", "-i"])
        .arg(ca_pem))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
