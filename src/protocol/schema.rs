//! The JSON Schemas of the protocol, generated from the Rust types, and request
//! validation against them with errors that name a JSON pointer, never a value.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::report::{Report, VersionReport};
use crate::protocol::request::{BuildEnv, Deployment, Kind, Rotation, API_VERSION};

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// In a request an optional field is left out, never `null`: schemars allows
/// `null` for every `Option`, so it is taken out again.
pub fn without_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(alternatives)) = map.get_mut("anyOf") {
                alternatives.retain(|a| a != &json!({"type": "null"}));
                if alternatives.len() == 1 {
                    if let Value::Object(only) = alternatives.remove(0) {
                        map.remove("anyOf");
                        map.extend(only);
                    }
                }
            }
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            map.values_mut().for_each(without_null);
        }
        Value::Array(items) => items.iter_mut().for_each(without_null),
        _ => {}
    }
}

/// The schema of a request body of `kind`, without the envelope fields, inlined.
fn body_schema(kind: Kind, generator: &mut SchemaGenerator) -> Schema {
    match kind {
        Kind::Deploy => Deployment::json_schema(generator),
        Kind::Rotation => Rotation::json_schema(generator),
        Kind::BuildEnv => BuildEnv::json_schema(generator),
    }
}

fn with_definitions(mut schema: Value, mut generator: SchemaGenerator) -> Value {
    let definitions = generator.take_definitions(true);
    if !definitions.is_empty() {
        schema["$defs"] = Value::Object(definitions);
    }
    schema
}

/// The published request schema: any of the three kinds, each with its envelope.
pub fn request_schema() -> Value {
    let mut generator = generator();
    let variants: Vec<Value> = Kind::ALL
        .into_iter()
        .map(|kind| {
            let mut body = body_schema(kind, &mut generator).to_value();
            add_envelope(&mut body, kind);
            body
        })
        .collect();
    let schema = json!({
        "$schema": DRAFT,
        "$id": "urn:hostenv:v1:request",
        "title": "hostenv request",
        "description": "One request, read on stdin or from --request FILE. Field names are camelCase; unknown fields are rejected.",
        "oneOf": variants,
    });
    let mut schema = with_definitions(schema, generator);
    without_null(&mut schema);
    schema
}

/// The published result schema.
pub fn result_schema() -> Value {
    output_schema::<Report>("result")
}

/// The schema of `hostenv version --json`.
pub fn version_schema() -> Value {
    output_schema::<VersionReport>("version")
}

/// The schema of a document hostenv writes or reads besides requests, as
/// `urn:hostenv:v1:<name>`.
pub fn output_schema<T: JsonSchema>(name: &str) -> Value {
    let mut generator = generator();
    let mut body = T::json_schema(&mut generator).to_value();
    if let Value::Object(map) = &mut body {
        map.insert("$schema".into(), json!(DRAFT));
        map.insert("$id".into(), json!(format!("urn:hostenv:v1:{name}")));
    }
    with_definitions(body, generator)
}

fn add_envelope(body: &mut Value, kind: Kind) {
    let Value::Object(map) = body else { return };
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({"description": "The protocol version.", "const": API_VERSION}),
    );
    properties.insert(
        "kind".into(),
        json!({"description": "The kind of request.", "const": kind.name()}),
    );
    if let Some(Value::Object(rest)) = map.remove("properties") {
        properties.extend(rest);
    }
    map.insert("properties".into(), Value::Object(properties));
    let mut required = vec![json!("apiVersion"), json!("kind")];
    if let Some(Value::Array(rest)) = map.remove("required") {
        required.extend(rest);
    }
    map.insert("required".into(), Value::Array(required));
}

/// Checks a request body (envelope removed) against its kind's schema.
pub fn validate_body(kind: Kind, body: &Value) -> Result<()> {
    let mut generator = generator();
    let mut schema = with_definitions(body_schema(kind, &mut generator).to_value(), generator);
    without_null(&mut schema);
    match first_problem(schema, body)? {
        None => Ok(()),
        Some((pointer, message)) => {
            Err(Error::invalid(ErrorKind::InvalidRequest, pointer, message))
        }
    }
}

/// The first problem of `document` against `schema` (with up to four more
/// named in its words), or None when it conforms.
pub fn first_problem(schema: Value, body: &Value) -> Result<Option<(String, String)>> {
    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| Error::Internal(format!("a schema does not compile: {error}")))?;
    let problems: Vec<Problem> = validator
        .iter_errors(body)
        .map(|e| describe(&e, &schema))
        .collect();
    let Some(first) = problems.first() else {
        return Ok(None);
    };
    let mut message = first.message.clone();
    if problems.len() > 1 {
        let others: Vec<String> = problems[1..]
            .iter()
            .take(4)
            .map(|problem| {
                format!(
                    "`{}` {}",
                    display_pointer(&problem.pointer),
                    problem.message
                )
            })
            .collect();
        message = format!("{message}; also {}", others.join("; "));
        if problems.len() > 5 {
            message.push_str(&format!(" (and {} more)", problems.len() - 5));
        }
    }
    Ok(Some((first.pointer.clone(), message)))
}

/// The known field closest to `name` where `keyword` (the failing
/// `additionalProperties`, a canonical schema location) sits, if one is close:
/// at most a third of its letters apart.
fn nearest_field(schema: &Value, keyword: &str, name: &str) -> Option<String> {
    let parent = keyword.rsplit_once('/').map(|(parent, _)| parent)?;
    let properties = schema.pointer(parent)?.get("properties")?.as_object()?;
    let lower = name.to_lowercase();
    properties
        .keys()
        .map(|known| (edit_distance(&lower, &known.to_lowercase()), known))
        .filter(|(distance, known)| *distance <= (known.len() / 3).max(1))
        .min()
        .map(|(_, known)| known.clone())
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() {
        "/"
    } else {
        pointer
    }
}

struct Problem {
    pointer: String,
    message: String,
}

/// Words for one schema error. jsonschema's own messages quote the offending
/// value, which may be a secret, so they are never used.
fn describe(error: &ValidationError<'_>, schema: &Value) -> Problem {
    let pointer = error.instance_path().to_string();
    let at = |name: &str| format!("{pointer}/{}", escape_pointer_token(name));
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => Problem {
            pointer: unexpected
                .first()
                .map(|name| at(name))
                .unwrap_or(pointer.clone()),
            message: format!(
                "unknown field {}{}",
                quoted_list(unexpected),
                unexpected
                    .first()
                    .and_then(|name| nearest_field(schema, &error.schema_path().to_string(), name))
                    .map(|near| format!(" (did you mean `{near}`?)"))
                    .unwrap_or_default()
            ),
        },
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            Problem {
                pointer: at(name),
                message: format!("missing required field `{name}`"),
            }
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Report the alternative that got furthest: the one whose first
            // error is not a plain type mismatch at this very place.
            let best = context.iter().find(|branch| {
                branch.first().is_some_and(|first| {
                    !(matches!(first.kind(), ValidationErrorKind::Type { .. })
                        && first.instance_path().to_string() == pointer)
                })
            });
            match best.and_then(|branch| branch.first()) {
                Some(inner) => describe(inner, schema),
                None => Problem {
                    pointer,
                    message: "does not match any of the allowed forms".into(),
                },
            }
        }
        kind => Problem {
            message: describe_kind(kind),
            pointer,
        },
    }
}

fn describe_kind(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Type { kind } => format!("must be {}", type_words(kind)),
        ValidationErrorKind::Enum { options } => match options.as_array() {
            Some(options) => format!("must be one of {}", quoted_values(options)),
            None => "is not an allowed value".into(),
        },
        ValidationErrorKind::Constant { expected_value } => {
            format!("must be `{}`", plain(expected_value))
        }
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} item(s)"),
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} item(s)"),
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be more than {limit}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        ValidationErrorKind::MinLength { limit } => format!("must be at least {limit} characters"),
        ValidationErrorKind::MaxLength { limit } => format!("must be at most {limit} characters"),
        ValidationErrorKind::Pattern { pattern } => format!("must match `{pattern}`"),
        ValidationErrorKind::UniqueItems => "must not repeat items".into(),
        _ => "is not valid here".into(),
    }
}

fn type_words(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(single) => format!("of type {single}"),
        TypeKind::Multiple(set) => {
            let names: Vec<String> = set.iter().map(|t| t.to_string()).collect();
            format!("of one of the types {}", names.join(", "))
        }
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn quoted_values(values: &[Value]) -> String {
    let names: Vec<String> = values.iter().map(plain).collect();
    quoted_list(&names)
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 6901: `~` and `/` inside a reference token.
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_told_the_nearest_known_one() {
        assert_eq!(edit_distance("hostz", "hosts"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let schema = json!({"$defs": {"Host": {"properties": {"host": {}, "port": {}, "instances": {}},
                                                 "additionalProperties": false}}});
        let at = "/$defs/Host/additionalProperties";
        assert_eq!(nearest_field(&schema, at, "Host").as_deref(), Some("host"));
        assert_eq!(
            nearest_field(&schema, at, "instance").as_deref(),
            Some("instances")
        );
        assert_eq!(nearest_field(&schema, at, "colour"), None);
        assert_eq!(
            nearest_field(&schema, "/nowhere/additionalProperties", "host"),
            None
        );
    }
}
