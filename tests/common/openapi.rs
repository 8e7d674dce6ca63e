//! docs/openapi.yaml read for the tests: its operations, and a check of a JSON answer
//! against a schema (the subset the file uses: $ref, type, required, properties,
//! additionalProperties, items, enum). A key an answer has that its schema does not
//! list is reported too, so the description cannot fall behind the answers.

use serde_json::Value;

/// The OpenAPI description.
pub struct Spec {
    doc: Value,
}

/// One operation: its path template and method, with its parameters and responses
/// resolved.
pub struct Operation {
    pub path: String,
    pub method: String,
    pub parameters: Vec<Value>,
    pub responses: serde_json::Map<String, Value>,
}

impl Spec {
    /// Reads docs/openapi.yaml.
    pub fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml parses");
        Spec {
            doc: serde_json::to_value(yaml).expect("openapi.yaml as JSON"),
        }
    }

    /// Follows `$ref`s to what they name.
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// Every operation of every path.
    pub fn operations(&self) -> Vec<Operation> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().unwrap() {
                out.push(Operation {
                    path: path.clone(),
                    method: method.clone(),
                    parameters: op["parameters"]
                        .as_array()
                        .map(|ps| ps.iter().map(|p| self.resolve(p).clone()).collect())
                        .unwrap_or_default(),
                    responses: op["responses"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, r)| (k.clone(), self.resolve(r).clone()))
                        .collect(),
                });
            }
        }
        out
    }

    /// What is wrong with `value` as a `schema`, each with where (`at`).
    pub fn check(&self, schema: &Value, value: &Value, at: &str, wrong: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_u64() || value.is_i64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                other => panic!("{at}: schema type {other} not handled"),
            };
            if !ok {
                wrong.push(format!("{at}: {value} is not of type {t}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            wrong.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let Some(obj) = value.as_object() {
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    wrong.push(format!("{at}: required `{r}` missing"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in obj {
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) | (None, Some(s)) => self.check(s, v, &format!("{at}.{k}"), wrong),
                    (None, None) if props.is_some() => {
                        wrong.push(format!("{at}: `{k}` is not described"))
                    }
                    (None, None) => {}
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
            for (i, v) in arr.iter().enumerate() {
                self.check(items, v, &format!("{at}[{i}]"), wrong);
            }
        }
    }
}
