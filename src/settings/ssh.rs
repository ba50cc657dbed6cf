//! How a deployment reaches its hosts over SSH, resolved before the first
//! connection: the key (a file, a variable's content or the agent), its
//! certificate, the known host keys and the bastion.

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::request::{Deployment, HostKeyPolicy, Ssh};
use crate::settings::certificate::Certificate;
use crate::settings::known_hosts::{check_known_hosts, read_known_hosts};
use crate::settings::secret::{self, EnvLookup, ExposeSecret, SecretString};
use crate::settings::{account_named, host_named, HostSettings};

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 30_000;

/// How hostenv proves who it is.
pub enum Auth {
    KeyFile {
        path: PathBuf,
        passphrase: Option<SecretString>,
        certificate: Option<UserCertificate>,
    },
    KeyContent {
        key: SecretString,
        passphrase: Option<SecretString>,
        certificate: Option<UserCertificate>,
    },
    Agent,
}

/// An OpenSSH user certificate offered with the key: its text, the file it
/// came from (if any), and what it allows.
pub struct UserCertificate {
    pub text: String,
    pub path: Option<PathBuf>,
    pub parsed: Certificate,
}

/// Where known host keys come from.
pub enum KnownHosts {
    File(PathBuf),
    Content(String),
}

/// Everything needed to reach any host of a deployment, resolved before the first connection.
pub struct SshConfig {
    pub auth: Auth,
    pub known_hosts: KnownHosts,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// The bastion to tunnel through, with its own settings.
    pub jump: Option<Box<(HostSettings, SshConfig)>>,
}

/// Where the request says a key, its certificate and the known host keys come
/// from: the shape of the `ssh` settings, checked without reading a variable.
struct Sources<'a> {
    auth: AuthSource<'a>,
    certificate: Option<CertificateSource<'a>>,
    known_hosts: KnownHostsSource<'a>,
}

enum AuthSource<'a> {
    /// The NAME of a variable holding a key file's path.
    KeyFile(&'a str),
    /// The NAME of a variable holding a base64 key.
    KeyContent(&'a str),
    Agent,
}

enum CertificateSource<'a> {
    File(&'a str),
    Content(&'a str),
}

enum KnownHostsSource<'a> {
    File(&'a str),
    /// The NAME of a variable holding a known_hosts file's path.
    FileEnv(&'a str),
    Content(&'a str),
    Default,
}

impl<'a> Sources<'a> {
    fn of(ssh: &'a Ssh, at: &str) -> Result<Sources<'a>> {
        let invalid = |field: &str, message: &str| {
            Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/ssh{field}"),
                message.to_string(),
            )
        };
        let certificate = match (&ssh.certificate_file_env, &ssh.certificate_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "/certificateEnv",
                    "set at most one of `certificateFileEnv` and `certificateEnv`",
                ))
            }
            (Some(name), None) => Some(CertificateSource::File(name)),
            (None, Some(name)) => Some(CertificateSource::Content(name)),
            (None, None) => None,
        };
        let auth = match (&ssh.identity_file_env, &ssh.identity_env, ssh.agent) {
            (Some(name), None, None | Some(false)) => AuthSource::KeyFile(name),
            (None, Some(name), None | Some(false)) => AuthSource::KeyContent(name),
            (None, None, Some(true)) if certificate.is_some() => {
                return Err(invalid(
                    "/agent",
                    "the agent offers its own certificates; leave out `certificateFileEnv` and `certificateEnv`",
                ))
            }
            (None, None, Some(true)) => AuthSource::Agent,
            _ => {
                return Err(invalid(
                    "",
                    "set exactly one of `identityFileEnv`, `identityEnv` and `agent: true`",
                ))
            }
        };
        let known_hosts = match (
            &ssh.known_hosts,
            &ssh.known_hosts_file_env,
            &ssh.known_hosts_env,
        ) {
            (Some(path), None, None) => KnownHostsSource::File(path),
            (None, Some(name), None) => KnownHostsSource::FileEnv(name),
            (None, None, Some(name)) => KnownHostsSource::Content(name),
            (None, None, None) => KnownHostsSource::Default,
            _ => {
                return Err(invalid(
                    "/knownHostsEnv",
                    "set at most one of `knownHosts`, `knownHostsFileEnv` and `knownHostsEnv`",
                ))
            }
        };
        Ok(Sources {
            auth,
            certificate,
            known_hosts,
        })
    }
}

/// The bastion's own settings, each falling back to the hosts' ones, and the bastion as a host.
fn bastion(ssh: &Ssh, at: &str) -> Result<Option<(Ssh, HostSettings)>> {
    let Some(jump) = ssh.jump.as_ref() else {
        return Ok(None);
    };
    let mut own = ssh.clone();
    own.jump = None;
    own.user = jump.user.clone().or(ssh.user.clone());
    own.port = jump.port;
    if jump.identity_file_env.is_some() || jump.identity_env.is_some() || jump.agent.is_some() {
        own.identity_file_env = jump.identity_file_env.clone();
        own.identity_env = jump.identity_env.clone();
        own.agent = jump.agent;
        own.passphrase_env = jump.passphrase_env.clone();
        own.certificate_file_env = jump.certificate_file_env.clone();
        own.certificate_env = jump.certificate_env.clone();
    }
    if jump.known_hosts.is_some() || jump.known_hosts_env.is_some() {
        own.known_hosts = jump.known_hosts.clone();
        own.known_hosts_env = jump.known_hosts_env.clone();
        own.known_hosts_file_env = None;
    }
    let user = own
        .user
        .clone()
        .unwrap_or_else(|| crate::settings::DEFAULT_USER.into());
    let host = HostSettings {
        name: host_named(&jump.host, &format!("{at}/ssh/jump/host"))?,
        port: jump.port.unwrap_or(22),
        user: account_named(&user, &format!("{at}/ssh/jump/user"))?,
        instances: None,
    };
    Ok(Some((own, host)))
}

/// `ssh.userEnv`: the login user from a variable, when `ssh.user` is not set
/// (Jenkins binds an `sshUserPrivateKey` credential's username so, and that
/// username is then the default user). Resolved into `ssh.user` before
/// anything else reads the deployment. A run in which no SSH credential is
/// bound (`check --ssh-unbound`) connects nowhere and reads no such variable.
pub fn resolve_user_env(
    deployment: &mut Deployment,
    at: &str,
    env: &dyn EnvLookup,
    unbound: bool,
) -> Result<()> {
    let Some(ssh) = deployment.ssh.as_mut() else {
        return Ok(());
    };
    let Some(name) = ssh.user_env.clone() else {
        return Ok(());
    };
    if ssh.user.is_some() || unbound {
        return Ok(());
    }
    let field = format!("{at}/ssh/userEnv");
    let value = env
        .get(&name)
        .and_then(|value| value.into_string().ok())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            Error::invalid(
                ErrorKind::InvalidSetting,
                &field,
                format!("environment variable `{name}` is not set: it holds the login user"),
            )
        })?;
    account_named(&value, &field)?;
    ssh.user = Some(value);
    Ok(())
}

/// Checks what `SshConfig::from_request` would reject without reading the
/// variables that hold credentials (for a `check` run in which they are not
/// bound): which sources are set, and a named known_hosts file.
pub fn check_settings(ssh: Option<&Ssh>, at: &str) -> Result<()> {
    let ssh = ssh.cloned().unwrap_or_default();
    if let Some((own, _)) = bastion(&ssh, at)? {
        check_settings(Some(&own), &format!("{at}/ssh/jump"))?;
    }
    if let KnownHostsSource::File(path) = Sources::of(&ssh, at)?.known_hosts {
        known_hosts_file(path, at)?;
    }
    Ok(())
}

fn known_hosts_file(path: &str, at: &str) -> Result<PathBuf> {
    let path = PathBuf::from(path);
    read_known_hosts(&path).map_err(|problem| {
        Error::invalid(
            ErrorKind::InvalidSetting,
            format!("{at}/ssh/knownHosts"),
            problem,
        )
    })?;
    Ok(path)
}

impl SshConfig {
    /// Reads the credentials the request names; a problem rejects the request.
    pub fn from_request(ssh: Option<&Ssh>, at: &str, env: &dyn EnvLookup) -> Result<SshConfig> {
        let ssh = ssh.cloned().unwrap_or_default();
        let jump = match bastion(&ssh, at)? {
            Some((own, host)) => {
                let config = SshConfig::from_request(Some(&own), &format!("{at}/ssh/jump"), env)?;
                Some(Box::new((host, config)))
            }
            None => None,
        };
        let sources = Sources::of(&ssh, at)?;
        let invalid = |field: &str, message: String| {
            Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/ssh/{field}"),
                message,
            )
        };
        let variable = |field: &str, name: &str| -> Result<SecretString> {
            secret::from_env(env, name, false).map_err(|problem| invalid(field, problem.message))
        };
        // A variable holding base64 text (Bitbucket variables cannot hold newlines).
        let decoded = |field: &str, name: &str, what: &str| -> Result<String> {
            let encoded = variable(field, name)?;
            secret::decode_base64(encoded.expose_secret())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!("environment variable `{name}` is not {what}"),
                    )
                })
        };
        let passphrase = match &ssh.passphrase_env {
            // Jenkins binds a key's passphrase variable empty when it has none.
            Some(name) if env.get(name).is_some_and(|v| v.is_empty()) => None,
            Some(name) => Some(variable("passphraseEnv", name)?),
            None => None,
        };
        let certificate = |text: String, path: Option<PathBuf>, field: &str| {
            let parsed = Certificate::parse(&text).ok_or_else(|| {
                invalid(
                    field,
                    "not an OpenSSH user certificate (a `-cert.pub` file)".into(),
                )
            })?;
            Ok::<_, Error>(UserCertificate { text, path, parsed })
        };
        let named_certificate = match sources.certificate {
            Some(CertificateSource::File(name)) => {
                let path = PathBuf::from(variable("certificateFileEnv", name)?.expose_secret());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "certificateFileEnv",
                        format!("the certificate named by `{name}` cannot be read: {e}"),
                    )
                })?;
                Some(certificate(text, Some(path), "certificateFileEnv")?)
            }
            Some(CertificateSource::Content(name)) => {
                let text = decoded("certificateEnv", name, "a base64 certificate")?;
                Some(certificate(text, None, "certificateEnv")?)
            }
            None => None,
        };
        let auth = match sources.auth {
            AuthSource::KeyFile(name) => {
                let path = PathBuf::from(variable("identityFileEnv", name)?.expose_secret());
                // As OpenSSH does: a certificate beside the key is offered with it.
                let beside = PathBuf::from(format!("{}-cert.pub", path.display()));
                let certificate = match named_certificate {
                    Some(named) => Some(named),
                    None => match std::fs::read_to_string(&beside) {
                        Ok(text) => Some(certificate(text, Some(beside), "identityFileEnv")?),
                        Err(_) => None,
                    },
                };
                Auth::KeyFile {
                    path,
                    passphrase,
                    certificate,
                }
            }
            AuthSource::KeyContent(name) => Auth::KeyContent {
                key: SecretString::from(decoded("identityEnv", name, "a base64 private key")?),
                passphrase,
                certificate: named_certificate,
            },
            AuthSource::Agent => Auth::Agent,
        };
        let known_hosts = match sources.known_hosts {
            KnownHostsSource::File(path) => KnownHosts::File(known_hosts_file(path, at)?),
            KnownHostsSource::FileEnv(name) => {
                let path = variable("knownHostsFileEnv", name)?;
                let path = PathBuf::from(path.expose_secret());
                read_known_hosts(&path).map_err(|problem| {
                    invalid(
                        "knownHostsFileEnv",
                        format!("the file named by `{name}`: {problem}"),
                    )
                })?;
                KnownHosts::File(path)
            }
            KnownHostsSource::Content(name) => {
                let content = decoded("knownHostsEnv", name, "base64 known_hosts content")?;
                check_known_hosts(&content).map_err(|problem| {
                    invalid(
                        "knownHostsEnv",
                        format!("environment variable `{name}`: {problem}"),
                    )
                })?;
                KnownHosts::Content(content)
            }
            KnownHostsSource::Default => {
                let home = env
                    .get("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/root"));
                KnownHosts::File(home.join(".ssh/known_hosts"))
            }
        };
        Ok(SshConfig {
            auth,
            known_hosts,
            policy: ssh.host_key_policy.unwrap_or(HostKeyPolicy::Strict),
            connect_timeout: Duration::from_millis(
                ssh.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            ),
            io_timeout: Duration::from_millis(ssh.io_timeout_ms.unwrap_or(DEFAULT_IO_TIMEOUT_MS)),
            jump,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::secret::tests::env;

    fn deployment(ssh: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "service": "voxbridge", "contract": "c", "hosts": ["h"], "env": {}, "ssh": ssh
        }))
        .unwrap()
    }

    #[test]
    fn the_login_user_comes_from_user_env_unless_user_is_set() {
        let mut d = deployment(serde_json::json!({"userEnv": "KEY_USERNAME"}));
        resolve_user_env(&mut d, "", &env(&[("KEY_USERNAME", "deploy")]), false).unwrap();
        assert_eq!(d.ssh.as_ref().unwrap().user.as_deref(), Some("deploy"));

        let mut d = deployment(serde_json::json!({"user": "ops", "userEnv": "KEY_USERNAME"}));
        resolve_user_env(&mut d, "", &env(&[("KEY_USERNAME", "deploy")]), false).unwrap();
        assert_eq!(d.ssh.as_ref().unwrap().user.as_deref(), Some("ops"));

        // Not bound in a check that binds no SSH credential: nothing to read.
        let mut d = deployment(serde_json::json!({"userEnv": "KEY_USERNAME"}));
        resolve_user_env(&mut d, "", &env(&[]), true).unwrap();
        assert_eq!(d.ssh.as_ref().unwrap().user, None);

        for (value, says) in [
            (None, "is not set"),
            (Some(""), "is not set"),
            (Some("a b"), "user or group name"),
        ] {
            let mut d = deployment(serde_json::json!({"userEnv": "KEY_USERNAME"}));
            let bound = value.map(|v| vec![("KEY_USERNAME", v)]).unwrap_or_default();
            let error =
                resolve_user_env(&mut d, "/deployments/1", &env(&bound), false).unwrap_err();
            assert_eq!(error.field().as_deref(), Some("/deployments/1/ssh/userEnv"));
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn known_hosts_come_from_a_file_a_variable_names() {
        let dir = std::env::temp_dir().join(format!("hostenv-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("known_hosts");
        std::fs::write(
            &file,
            "app-1.internal ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
        )
        .unwrap();
        let ssh: Ssh = serde_json::from_value(serde_json::json!({
            "agent": true, "knownHostsFileEnv": "KNOWN_HOSTS_FILE"
        }))
        .unwrap();
        let bound = env(&[("KNOWN_HOSTS_FILE", file.to_str().unwrap())]);
        let config = SshConfig::from_request(Some(&ssh), "", &bound).unwrap();
        assert!(matches!(config.known_hosts, KnownHosts::File(ref p) if *p == file));
        let error = SshConfig::from_request(Some(&ssh), "", &env(&[]))
            .err()
            .unwrap();
        assert_eq!(error.field().as_deref(), Some("/ssh/knownHostsFileEnv"));
        // One source of host keys at a time.
        let both: Ssh = serde_json::from_value(serde_json::json!({
            "agent": true, "knownHostsFileEnv": "KNOWN_HOSTS_FILE", "knownHosts": "/etc/ssh/k"
        }))
        .unwrap();
        assert!(SshConfig::from_request(Some(&both), "", &bound).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
