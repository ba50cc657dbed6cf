//! `hostenv build-env`: the console's build-time `.env`, read by Vite and baked
//! into a public bundle. Only literals are allowed, none that looks like a
//! credential, and nothing in the build's environment or beside the file may
//! override what hostenv wrote.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::prepare::contract::{self, Contract};
use crate::prepare::detect::credential_reason;
use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::report::{
    ContractReport, KeyReport, KeyStatus, OutputReport, Report, SourceKind,
};
use crate::protocol::request::BuildEnv;
use crate::render::dotenv;
use crate::settings::secret::EnvLookup;
use crate::settings::{check_key_names, check_source_map};

const DEFAULT_OUTPUT: &str = ".env";
const DEFAULT_MODE: &str = "production";
const MAX_BRAND_FILE_BYTES: u64 = 1024 * 1024;

/// The file Vite will read, rendered and read back.
pub struct Rendered {
    pub output: PathBuf,
    pub text: String,
}

/// Everything `check` does for a BuildEnv; `build-env` then writes the file.
pub fn prepare(request: &BuildEnv, env: &dyn EnvLookup, report: &mut Report) -> Result<Rendered> {
    check_source_map(&request.env, "/env")?;
    check_key_names(&request.optional, "/optional", ErrorKind::InvalidSource)?;
    let mode = request.mode.as_deref().unwrap_or(DEFAULT_MODE);
    check_mode(mode)?;
    let output = PathBuf::from(request.output.as_deref().unwrap_or(DEFAULT_OUTPUT));
    check_output_name(&output, mode)?;
    let contract = contract::load(&request.contract)?;

    let mut values: BTreeMap<String, (SourceKind, String)> = BTreeMap::new();
    if let Some(from) = &request.from {
        for assignment in read_brand_file(from)? {
            values.insert(assignment.key, (SourceKind::BrandFile, assignment.value));
        }
    }
    let mut keys: Vec<KeyReport> = Vec::new();
    for (key, source) in &request.env {
        match &source.value {
            Some(value) => {
                values.insert(key.clone(), (SourceKind::Value, value.clone()));
            }
            None => keys.push(KeyReport {
                name: key.clone(),
                host: None,
                source: if source.secret_env.is_some() {
                    SourceKind::SecretEnv
                } else {
                    SourceKind::SecretFileEnv
                },
                env: source.secret_env.clone().or(source.secret_file_env.clone()),
                credential_id: source.credential_id.clone(),
                value: None,
                status: KeyStatus::SecretNotAllowed,
                message: Some(format!(
                    "`{key}` is baked into a public bundle, so it takes a literal `value`, never a secret"
                )),
            }),
        }
    }
    for (key, (source, value)) in &values {
        if keys.iter().any(|k| &k.name == key) {
            continue;
        }
        keys.push(literal_report(key, *source, value, &contract));
    }
    for key in contract.names() {
        if !values.contains_key(key) && !keys.iter().any(|k| k.name == key) {
            let optional = request.optional.iter().any(|name| name == key);
            keys.push(KeyReport {
                name: key.to_string(),
                host: None,
                source: SourceKind::None,
                env: None,
                credential_id: None,
                value: None,
                status: if optional { KeyStatus::Omitted } else { KeyStatus::Missing },
                message: (!optional).then(|| {
                    format!("`{key}` is in the contract but has no value and is not listed in `optional`")
                }),
            });
        }
    }
    for name in &request.optional {
        if !contract.has(name) {
            keys.push(KeyReport {
                name: name.clone(),
                host: None,
                source: SourceKind::None,
                env: None,
                credential_id: None,
                value: None,
                status: KeyStatus::NotInContract,
                message: Some(format!(
                    "`{name}` is listed in `optional` but not in the contract"
                )),
            });
        }
    }
    keys.sort_by_key(|k| contract.position(&k.name));
    report.contract = Some(ContractReport {
        path: contract.path.clone(),
        keys: keys.clone(),
    });
    let problems: Vec<&KeyReport> = keys.iter().filter(|k| k.status.is_problem()).collect();
    if let Some(error) = crate::prepare::key_problems(&problems, "") {
        return Err(error);
    }
    check_environment(env, &contract)?;
    check_overriding_files(&output, mode)?;

    let ordered: Vec<(&str, &str)> = contract
        .names()
        .filter_map(|key| values.get(key).map(|(_, value)| (key, value.as_str())))
        .collect();
    let text = dotenv::render(ordered.iter().copied()).map_err(|(key, _)| {
        Error::Internal(format!("`{key}` passed the check but did not render"))
    })?;
    let read_back = dotenv::parse(&text)
        .map_err(|e| Error::Internal(format!("`{}` reads back as an expansion", e.key)))?;
    let same = read_back.len() == ordered.len()
        && read_back
            .iter()
            .zip(&ordered)
            .all(|(read, (key, value))| read.key == *key && read.value == *value);
    if !same {
        return Err(Error::Internal(
            "the rendered build env does not read back exactly".into(),
        ));
    }
    let keys = ordered
        .iter()
        .map(|(key, _)| key.to_string())
        .collect::<Vec<_>>();
    report.output = Some(OutputReport {
        path: output.display().to_string(),
        written: false,
        keys,
        bytes: text.len(),
    });
    Ok(Rendered { output, text })
}

fn literal_report(key: &str, source: SourceKind, value: &str, contract: &Contract) -> KeyReport {
    let problem = if !contract.has(key) {
        Some((
            KeyStatus::NotInContract,
            format!(
                "`{key}` is not in the contract; add it to the `.env.example` in the same change"
            ),
        ))
    } else if let Some(reason) = credential_reason(value) {
        Some((
            KeyStatus::LooksLikeSecret,
            format!(
                "the value looks like a credential ({reason}) and would be public in the bundle"
            ),
        ))
    } else {
        dotenv::quote(value)
            .err()
            .map(|unfit| (KeyStatus::Unrepresentable, unfit.0.to_string()))
    };
    let (status, message) = match problem {
        Some((status, message)) => (status, Some(message)),
        None => (KeyStatus::Ok, None),
    };
    KeyReport {
        name: key.to_string(),
        host: None,
        source,
        env: None,
        credential_id: None,
        value: (status == KeyStatus::Ok).then(|| value.to_string()),
        status,
        message,
    }
}

pub(crate) fn read_brand_file(from: &str) -> Result<Vec<crate::render::Assignment>> {
    let invalid = |reason: String| Error::BrandFileInvalid {
        path: from.to_string(),
        reason,
    };
    let metadata = std::fs::metadata(from).map_err(|e| invalid(format!("cannot be read: {e}")))?;
    if !metadata.is_file() {
        return Err(invalid("is not a regular file".into()));
    }
    if metadata.len() > MAX_BRAND_FILE_BYTES {
        return Err(invalid(format!(
            "is larger than {MAX_BRAND_FILE_BYTES} bytes"
        )));
    }
    let bytes = std::fs::read(from).map_err(|e| invalid(format!("cannot be read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8".into()))?;
    dotenv::parse(&text).map_err(|expansion| {
        invalid(format!(
            "line {}: `{}` uses `$` expansion, which hostenv does not evaluate; write the value out, or escape a literal dollar as `\\$`",
            expansion.line, expansion.key
        ))
    })
}

fn check_mode(mode: &str) -> Result<()> {
    let plain = !mode.is_empty()
        && mode != "local"
        && mode
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    if plain {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorKind::InvalidSetting,
            "/mode",
            "must be a Vite mode name such as `production` (letters, digits, `_`, `-`; not `local`)",
        ))
    }
}

/// Vite reads `.env` and `.env.<mode>` (and their `.local` variants) only.
fn check_output_name(output: &Path, mode: &str) -> Result<()> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == ".env" || name == format!(".env.{mode}") {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorKind::InvalidPath,
            "/output",
            format!("Vite reads `.env` or `.env.{mode}`; name the output one of them"),
        ))
    }
}

/// Vite lets the process environment win over the file, and exposes every
/// `VITE_*` variable it finds there.
fn check_environment(env: &dyn EnvLookup, contract: &Contract) -> Result<()> {
    let mut names: Vec<String> = env
        .names()
        .into_iter()
        .filter(|name| name.starts_with("VITE_") || contract.has(name))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    Err(Error::BuildEnvOverride {
        names: listed.join(", "),
    })
}

/// Files Vite would load besides the output, each able to override or add values.
fn check_overriding_files(output: &Path, mode: &str) -> Result<()> {
    let dir = output.parent().unwrap_or(Path::new(""));
    let own = output
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let candidates = [
        ".env".to_string(),
        ".env.local".to_string(),
        format!(".env.{mode}"),
        format!(".env.{mode}.local"),
    ];
    for name in candidates.iter().filter(|name| name.as_str() != own) {
        let path = dir.join(name);
        if path.exists() {
            return Err(Error::OverridingEnvFile {
                path: path.display().to_string(),
                mode: mode.to_string(),
            });
        }
    }
    Ok(())
}

/// Writes the file atomically (temp file, fsync, rename); identical bytes are left alone.
pub fn write(rendered: &Rendered, report: &mut Report) -> Result<()> {
    let output = &rendered.output;
    let failed = |e: std::io::Error| Error::OutputWriteFailed {
        path: output.display().to_string(),
        reason: e.to_string(),
    };
    if std::fs::read(output).ok().as_deref() == Some(rendered.text.as_bytes()) {
        return Ok(());
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A build's output directory (`dist/brand/`, say) may not exist yet.
    std::fs::create_dir_all(dir).map_err(|e| Error::OutputWriteFailed {
        path: output.display().to_string(),
        reason: format!("cannot create the directory `{}`: {e}", dir.display()),
    })?;
    let temp = dir.join(format!(".env.hostenv-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(rendered.text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, output)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(error));
    }
    if let Some(out) = report.output.as_mut() {
        out.written = true;
    }
    Ok(())
}
