//! Credentials for Gluetun's control server. Current Gluetun asks for them on every route
//! (`401 Unauthorized` without); a role in its `/gluetun/auth/config.toml` gives netguard
//! `GET /v1/vpn/status` with an API key (`X-API-Key`) or basic auth. The secret comes from a
//! file (a Docker secret, a mounted file) or the agent's configuration, not from a label
//! (`docker inspect` shows labels to anyone who may use Docker).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, FlagConfig};

/// `[[gluetun_auth]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGluetunAuth {
    /// The gateway container: its name, Compose service or id prefix. Omitted: every gateway
    /// without an entry of its own.
    pub gateway: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password: Option<String>,
}

/// A secret, as given: read from its file at each use, so a rotated file takes effect.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(PathBuf),
}

/// Never the value: a `{:?}` in a log line must not print it.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Value(<hidden>)"),
            Secret::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl Secret {
    pub fn read(&self) -> Result<String, String> {
        let secret = match self {
            Secret::Value(value) => value.trim().to_string(),
            Secret::File(path) => read_secret(path)?,
        };
        printable(&secret)?;
        Ok(secret)
    }
}

/// A secret goes into an HTTP header: a control character (a line break) could add headers.
pub fn printable(secret: &str) -> Result<(), String> {
    if secret.chars().any(char::is_control) {
        return Err(
            "the secret holds a control character (a line break?): write it on one line".into(),
        );
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading the secret file {}: {error}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// How netguard authenticates to a Gluetun control server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    ApiKey(Secret),
    Basic { username: String, password: Secret },
}

/// Credentials for one gateway, or (`gateway: None`) for every other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GluetunAuth {
    pub gateway: Option<String>,
    pub method: Method,
}

/// The configured credentials: the file's entries, then the flags' default (for every
/// gateway). Each names exactly one method; a secret file must be readable now.
pub fn credentials(
    entries: Vec<FileGluetunAuth>,
    flags: &FlagConfig,
) -> Result<Vec<GluetunAuth>, ConfigError> {
    let mut all = Vec::new();
    for entry in entries {
        let which = match &entry.gateway {
            Some(gateway) => format!("[[gluetun_auth]] of gateway {gateway:?}"),
            None => "[[gluetun_auth]] without gateway".to_string(),
        };
        let secret = |value: Option<String>, file: Option<PathBuf>, what: &str| match (value, file)
        {
            (Some(value), None) => Ok(Some(Secret::Value(value))),
            (None, Some(file)) => Ok(Some(Secret::File(file))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ConfigError(format!(
                "{which}: both {what} and {what}_file: keep one ({what}_file keeps the secret \
                 out of the configuration)"
            ))),
        };
        let key = secret(entry.api_key, entry.api_key_file, "api_key")?;
        let password = secret(entry.password, entry.password_file, "password")?;
        let method = match (key, entry.username, password) {
            (Some(key), None, None) => Method::ApiKey(key),
            (None, Some(username), Some(password)) => Method::Basic { username, password },
            _ => {
                return Err(ConfigError(format!(
                    "{which}: give either api_key_file (or api_key), or username with \
                     password_file (or password), as the Gluetun role for netguard says"
                )));
            }
        };
        all.push(GluetunAuth {
            gateway: entry.gateway,
            method,
        });
    }
    let flag_key = match (&flags.gluetun_api_key_file, &flags.gluetun_api_key) {
        (Some(file), _) => Some(Secret::File(file.clone())),
        (None, key) => key.clone(),
    };
    if let Some(key) = flag_key {
        all.push(GluetunAuth {
            gateway: None,
            method: Method::ApiKey(key),
        });
    }
    for auth in &all {
        let files = match &auth.method {
            Method::ApiKey(Secret::File(file))
            | Method::Basic {
                password: Secret::File(file),
                ..
            } => Some(file),
            _ => None,
        };
        if let Some(file) = files {
            read_secret(file).map_err(|error| {
                ConfigError(format!(
                    "{error}: put the key of netguard's Gluetun role there (`docker run --rm \
                     qmcgaw/gluetun genkey` makes one), or fix the path"
                ))
            })?;
        }
    }
    // The most specific first: a gateway's own entry before the default.
    all.sort_by_key(|auth| auth.gateway.is_none());
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_method_per_entry_files_must_be_readable_and_named_entries_come_first() {
        let dir = std::env::temp_dir().join(format!("ng-gluetun-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "k3y\n").unwrap();
        let flags = FlagConfig {
            gluetun_api_key_file: Some(key.clone()),
            ..FlagConfig::default()
        };
        let entries = vec![FileGluetunAuth {
            gateway: Some("gluetun".into()),
            username: Some("netguard".into()),
            password: Some("pw".into()),
            ..FileGluetunAuth::default()
        }];
        let all = credentials(entries, &flags).unwrap();
        assert_eq!(all[0].gateway.as_deref(), Some("gluetun"));
        assert_eq!(all[1].method, Method::ApiKey(Secret::File(key.clone())));
        assert_eq!(Secret::File(key.clone()).read().unwrap(), "k3y", "trimmed");

        let both = vec![FileGluetunAuth {
            api_key: Some("a".into()),
            api_key_file: Some(key.clone()),
            ..FileGluetunAuth::default()
        }];
        assert_eq!(
            format!("{:?}", Secret::Value("k3y".into())),
            "Value(<hidden>)",
            "never logged"
        );
        assert!(Secret::Value("a\r\nX-Evil: 1".into()).read().is_err());
        let error = credentials(both, &FlagConfig::default()).unwrap_err();
        assert!(error.0.contains("keep one"), "{error}");
        let none = vec![FileGluetunAuth::default()];
        assert!(credentials(none, &FlagConfig::default()).is_err());
        let missing = FlagConfig {
            gluetun_api_key_file: Some(dir.join("nope")),
            ..FlagConfig::default()
        };
        let error = credentials(Vec::new(), &missing).unwrap_err();
        assert!(
            error.0.contains("nope") && error.0.contains("genkey"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
