//! Region, endpoint and credentials from the usual AWS environment variables and profile files
//! (the resolution order of the AWS CLI, for the parts diskconv supports).
//!
//! - Credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`); else
//!   the profile (`AWS_PROFILE`, else `default`) of the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), else of the config file
//!   (`AWS_CONFIG_FILE`, else `~/.aws/config`, section `[profile NAME]` or `[default]`).
//! - Region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region`, else
//!   `us-east-1`.
//! - Endpoint: the caller's (`--endpoint`), else `AWS_ENDPOINT_URL_S3`, else
//!   `AWS_ENDPOINT_URL`, else the profile's `endpoint_url`, else AWS's regional endpoint.
//!
//! Not supported: SSO, `credential_process`, assumed roles, instance metadata (IMDS) and web
//! identity tokens. The secret key and session token are never printed: [`Credentials`]'
//! `Debug` hides them and no error message includes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An access key pair (and session token) for signing requests.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"(hidden)")
            .field("secret_access_key", &"(hidden)")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "(hidden)"),
            )
            .finish()
    }
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: session_token.map(str::to_string),
        }
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key (only for signing).
    pub(crate) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }
}

/// Where and as whom to reach the store.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http://host:port` or `https://host` (no path).
    pub endpoint: String,
    /// Whether `endpoint` was given (flag, variable or profile) rather than AWS's default.
    pub custom_endpoint: bool,
    /// The signing region.
    pub region: String,
    /// The signing credentials.
    pub credentials: Credentials,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`).
    pub path_style: bool,
}

/// Reads an INI-style AWS file into sections of `key = value`.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn home_file(var: &str, default: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    env("HOME").map(|h| Path::new(&h).join(default))
}

fn read_ini(path: Option<&Path>) -> Result<HashMap<String, HashMap<String, String>>> {
    let Some(path) = path else {
        return Ok(HashMap::new());
    };
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse_ini(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(Error::io("reading the AWS profile file", e).in_file(path)),
    }
}

/// The options of [`S3Config::resolve`] that come from the command line.
#[derive(Debug, Clone, Default)]
pub struct S3ConfigOptions {
    /// `--endpoint URL`.
    pub endpoint: Option<String>,
    /// `--s3-path-style`: path-style addressing even for AWS's endpoint.
    pub path_style: bool,
}

impl S3Config {
    /// Resolves the configuration from the process environment and the profile files.
    pub fn from_env(opts: &S3ConfigOptions) -> Result<S3Config> {
        S3Config::resolve(opts, &|k| std::env::var(k).ok())
    }

    /// Resolves the configuration with `env` as the environment (see the module documentation).
    pub fn resolve(
        opts: &S3ConfigOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Config> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let creds_path = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", env);
        let config_path = home_file("AWS_CONFIG_FILE", ".aws/config", env);
        let creds_file = read_ini(creds_path.as_deref())?;
        let config_file = read_ini(config_path.as_deref())?;
        let config_section = if profile == "default" {
            config_file.get("default")
        } else {
            config_file.get(&format!("profile {profile}"))
        };
        let from_profile = |key: &str| -> Option<String> {
            creds_file
                .get(&profile)
                .and_then(|s| s.get(key))
                .or_else(|| config_section.and_then(|s| s.get(key)))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                Credentials::new(&id, &secret, var("AWS_SESSION_TOKEN").as_deref())
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
                ));
            }
            (None, None) => {
                match (
                    from_profile("aws_access_key_id"),
                    from_profile("aws_secret_access_key"),
                ) {
                    (Some(id), Some(secret)) => {
                        Credentials::new(&id, &secret, from_profile("aws_session_token").as_deref())
                    }
                    _ => {
                        let files: Vec<String> = [&creds_path, &config_path]
                            .into_iter()
                            .flatten()
                            .map(|p| p.display().to_string())
                            .collect();
                        return Err(Error::InvalidArgument(format!(
                            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                             or give profile '{profile}' aws_access_key_id and \
                             aws_secret_access_key in {}",
                            files.join(" or ")
                        )));
                    }
                }
            }
        };
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile("region"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| from_profile("endpoint_url"));
        let custom_endpoint = endpoint.is_some();
        let endpoint = match endpoint {
            Some(e) => check_endpoint(&e)?,
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        Ok(S3Config {
            endpoint,
            custom_endpoint,
            region,
            credentials,
            // Custom endpoints (MinIO, Ceph, test servers) are reached path-style: they may have
            // no wildcard DNS for bucket names. AWS, OSS, OBS and GCS take virtual-hosted names.
            path_style: opts.path_style || custom_endpoint,
        })
    }
}

/// Checks an endpoint URL: `http://` or `https://`, a host, no path, query or user info.
fn check_endpoint(e: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "the endpoint '{e}' is not a usable URL: {why} (expected http://HOST[:PORT] or \
             https://HOST[:PORT])"
        )))
    };
    let rest = match e.split_once("://") {
        Some(("http", r)) | Some(("https", r)) => r,
        _ => return bad("it must start with http:// or https://"),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return bad("no host");
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return bad("it must be a host and port only, without a path, query or user");
    }
    Ok(e.strip_suffix('/').unwrap_or(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn environment_wins_and_custom_endpoints_are_path_style() {
        let c = S3Config::resolve(
            &S3ConfigOptions::default(),
            &env_of(&[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SECRETVALUE"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
                ("HOME", "/nonexistent"),
            ]),
        )
        .unwrap();
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.endpoint, "https://s3.eu-west-3.amazonaws.com");
        assert!(!c.path_style);
        assert!(!format!("{c:?}").contains("SECRETVALUE"));
        let c = S3Config::resolve(
            &S3ConfigOptions::default(),
            &env_of(&[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "S"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:9000");
        assert!(c.path_style);
    }

    #[test]
    fn profiles_from_the_files() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("credentials");
        let config = d.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\
             [work]\naws_access_key_id = W\naws_secret_access_key = WS\naws_session_token = T\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-west-2\n[profile work]\nregion = ap-south-1\n\
             endpoint_url = https://oss.example\n",
        )
        .unwrap();
        let env = env_of(&[
            ("AWS_PROFILE", "work"),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ]);
        let c = S3Config::resolve(&S3ConfigOptions::default(), &env).unwrap();
        assert_eq!(c.credentials.access_key_id(), "W");
        assert_eq!(c.credentials.session_token(), Some("T"));
        assert_eq!(c.region, "ap-south-1");
        assert_eq!(c.endpoint, "https://oss.example");
        let env = env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ]);
        let c = S3Config::resolve(&S3ConfigOptions::default(), &env).unwrap();
        assert_eq!(c.credentials.access_key_id(), "D");
        assert_eq!(c.region, "us-west-2");
        let e = S3Config::resolve(
            &S3ConfigOptions::default(),
            &env_of(&[("AWS_PROFILE", "none"), ("HOME", "/nonexistent")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no S3 credentials"), "{e}");
    }

    #[test]
    fn bad_endpoints() {
        for e in ["ftp://x", "http://", "http://h/path", "localhost:9000"] {
            assert!(check_endpoint(e).is_err(), "{e}");
        }
        assert_eq!(check_endpoint("https://h:1/").unwrap(), "https://h:1");
    }
}
