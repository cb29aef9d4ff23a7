//! CLI contexts: named connection settings (coordinator URL, client TLS
//! directory, API token file), like kubectl's and nomad's, so that a user with
//! two fleets switches with `baton context use NAME` instead of juggling
//! variables.
//!
//! They are kept in `contexts.toml` in `$BATON_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/baton`, else `~/.config/baton` (the file 0600, the
//! directory 0700). The file holds paths, never a token itself. The current
//! context supplies connection defaults below the config file, the environment
//! and flags (see [`crate::config`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env_lookup::EnvLookup;
use crate::error::CliError;

/// The file's name in the config directory.
pub const FILE_NAME: &str = "contexts.toml";
/// The longest context name.
pub const NAME_MAX: usize = 64;

/// The contents of `contexts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// The context client commands use unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One context. Keys are the long flag names they default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    pub coordinator: String,
    pub tls_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Context {
    /// `(flag, value)` pairs this context supplies.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("coordinator", self.coordinator.clone()),
            ("tls-dir", self.tls_dir.display().to_string()),
        ];
        if let Some(f) = &self.token_file {
            v.push(("token-file", f.display().to_string()));
        }
        v
    }
}

/// Where `contexts.toml` is.
pub fn store_path(env: EnvLookup<'_>) -> Result<PathBuf, CliError> {
    let non_empty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("BATON_CONFIG_DIR") {
        return Ok(dir.join(FILE_NAME));
    }
    if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
        return Ok(dir.join("baton").join(FILE_NAME));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".config").join("baton").join(FILE_NAME));
    }
    Err(CliError::invalid(
        "CONTEXT_STORE_UNAVAILABLE",
        "neither BATON_CONFIG_DIR nor HOME is set: nowhere to keep contexts",
    ))
}

/// Checks a context name: 1-64 of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CliError::invalid(
            "USAGE",
            format!("context name '{name}' must be 1-{NAME_MAX} letters, digits, '.', '_' or '-'"),
        ))
    }
}

impl Store {
    /// Reads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Store, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(e) => {
                return Err(CliError::invalid(
                    "CONTEXT_STORE_INVALID",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        let store: Store = toml::from_str(&text).map_err(|e| {
            CliError::invalid(
                "CONTEXT_STORE_INVALID",
                format!("{}: {}", path.display(), e.to_string().trim_end()),
            )
        })?;
        if let Some(cur) = &store.current
            && !store.contexts.contains_key(cur)
        {
            return Err(CliError::invalid(
                "CONTEXT_STORE_INVALID",
                format!(
                    "{}: the current context '{cur}' is not defined",
                    path.display()
                ),
            ));
        }
        Ok(store)
    }

    /// The context `name`, or CONTEXT_NOT_FOUND naming the known ones.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, CliError> {
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            CliError::invalid(
                "CONTEXT_NOT_FOUND",
                format!(
                    "no context '{name}' in {} (known: {})\n  hint: `baton context add {name} --coordinator URL --tls-dir DIR`",
                    path.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// Writes the store whole (a temporary file renamed over it), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let fail = |what: &str, e: std::io::Error| {
            CliError::other(
                "CONTEXT_STORE_UNWRITABLE",
                format!("cannot {what} {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("create the directory of", e))?;
        }
        let text = toml::to_string(self)
            .map_err(|e| CliError::other("INTERNAL", format!("contexts to TOML: {e}")))?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("write", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail("replace", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_store_is_found_in_the_config_dir_then_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = env(&[
            ("BATON_CONFIG_DIR", "/c"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(store_path(&all).unwrap(), Path::new("/c/contexts.toml"));
        let xdg = env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            store_path(&xdg).unwrap(),
            Path::new("/x/baton/contexts.toml")
        );
        let home = env(&[("BATON_CONFIG_DIR", ""), ("HOME", "/h")]);
        assert_eq!(
            store_path(&home).unwrap(),
            Path::new("/h/.config/baton/contexts.toml")
        );
        let none = env(&[]);
        assert_eq!(
            store_path(&none).unwrap_err().code,
            "CONTEXT_STORE_UNAVAILABLE"
        );
    }

    #[test]
    fn a_saved_store_loads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        assert_eq!(
            Store::load(&path).unwrap(),
            Store::default(),
            "missing = empty"
        );
        let mut store = Store::default();
        store.contexts.insert(
            "prod".into(),
            Context {
                coordinator: "https://10.0.0.5:7400".into(),
                tls_dir: "/etc/baton/admin".into(),
                token_file: Some("/etc/baton/token".into()),
            },
        );
        store.current = Some("prod".into());
        store.save(&path).unwrap();
        assert_eq!(Store::load(&path).unwrap(), store);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            store.get("dev", &path).unwrap_err().code,
            "CONTEXT_NOT_FOUND"
        );
    }

    #[test]
    fn a_damaged_store_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "current = \"gone\"\n").unwrap();
        assert_eq!(
            Store::load(&path).unwrap_err().code,
            "CONTEXT_STORE_INVALID"
        );
        std::fs::write(
            &path,
            "[contexts.a]\ncoordinator = \"x\"\ntls-dir = \"/d\"\ncolour = 1\n",
        )
        .unwrap();
        let e = Store::load(&path).unwrap_err();
        assert_eq!(e.code, "CONTEXT_STORE_INVALID");
        assert!(e.message.contains("colour"), "{}", e.message);
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("prod-eu.1_a").unwrap();
    }
}
