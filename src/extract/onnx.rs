//! ONNX: IR and opset versions, producer, graph inputs/outputs with shapes, metadata_props, by reading the protobuf wire format by hand.
//!
//! A `ModelProto` is a protobuf message; its graph holds the weights (initializers)
//! inline. Fields are walked by their tags and lengths without a schema library: the
//! weights and nodes are skipped by seeking over their lengths (only each initializer's
//! shape is read, to count parameters), so a 2 GB model costs a few thousand small
//! reads. Every length is checked against its enclosing message and the file before it
//! is used, strings and lists are bounded, and the walk never recurses: a file that
//! breaks the wire format, or claims more than it holds, is unreadable.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::reader::{Parsed, Reader, clip};

/// Inputs, outputs, opsets, metadata entries and dimensions kept of each list.
const MAX_LISTED: usize = 64;
/// The longest string read (a name, a producer, a metadata value); longer ones are
/// skipped and shown by their length.
const MAX_STRING: u64 = 64 * 1024;
/// Initializer names remembered (to tell graph inputs from weights in IR < 4 files).
const MAX_NAMES: usize = 1 << 20;

/// One field's tag: number and wire type.
struct Tag {
    field: u64,
    wire: u8,
}

struct Walk<'r, 'a> {
    r: &'r mut Reader<'a>,
}

impl Walk<'_, '_> {
    fn varint(&mut self) -> Parsed<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let mut b = [0u8];
            self.r.read_exact(&mut b)?;
            v |= ((b[0] & 0x7f) as u64) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "a varint longer than 10 bytes at offset {}",
            self.r.pos()
        ))
    }

    /// The next tag before `end`, or `None` at `end`.
    fn tag(&mut self, end: u64) -> Parsed<Option<Tag>> {
        if self.r.pos() >= end {
            return Ok(None);
        }
        let k = self.varint()?;
        let wire = (k & 7) as u8;
        if !matches!(wire, 0 | 1 | 2 | 5) {
            return Err(format!(
                "not an ONNX model: wire type {wire} at offset {}",
                self.r.pos()
            ));
        }
        Ok(Some(Tag {
            field: k >> 3,
            wire,
        }))
    }

    /// The end of a length-delimited field starting here, checked against `end`.
    fn len_end(&mut self, end: u64) -> Parsed<u64> {
        let n = self.varint()?;
        let at = self.r.pos();
        let len = self.r.len();
        match at.checked_add(n) {
            Some(e) if e <= end && e <= len => Ok(e),
            // Past the file: cut (or a lie no file could back); within the file but past
            // the enclosing message: a broken message, not a cut.
            Some(e) if e > len && end >= len => Err(format!(
                "truncated: a field of {n} bytes at offset {at} ends at byte {e}, file has {len} bytes"
            )),
            None => Err(format!(
                "truncated: a field of {n} bytes at offset {at} runs past the {len}-byte file"
            )),
            Some(e) => Err(format!(
                "not an ONNX model: a field of {n} bytes at offset {at} ends at byte {e}, past its message's end at byte {end}"
            )),
        }
    }

    fn skip(&mut self, t: &Tag, end: u64) -> Parsed<()> {
        match t.wire {
            0 => self.varint().map(drop),
            1 => self.r.skip(8),
            5 => self.r.skip(4),
            _ => {
                let e = self.len_end(end)?;
                self.r.seek_to(e)
            }
        }
    }

    /// The rest of a length-delimited field ending at `e` (its length already read by
    /// [`Walk::fields`]) as text.
    fn string(&mut self, e: u64) -> Parsed<String> {
        let n = e - self.r.pos();
        if n > MAX_STRING {
            self.r.seek_to(e)?;
            return Ok(format!("({n} bytes, not kept)"));
        }
        let b = self.r.bytes(n, MAX_STRING, "a string")?;
        Ok(clip(&String::from_utf8_lossy(&b), 1024))
    }

    /// A varint field (wire type 0), or an error naming `what`.
    fn int(&mut self, t: &Tag, what: &str) -> Parsed<u64> {
        if t.wire != 0 {
            return Err(format!("not an ONNX model: {what} is not a number"));
        }
        self.varint()
    }

    /// Runs `each` on every field of the message ending at `end`.
    fn fields(
        &mut self,
        end: u64,
        mut each: impl FnMut(&mut Self, &Tag, u64) -> Parsed<bool>,
    ) -> Parsed<()> {
        while let Some(t) = self.tag(end)? {
            if t.wire == 2 {
                let e = self.len_end(end)?;
                let start = self.r.pos();
                if !each(self, &t, e)? {
                    self.r.seek_to(e)?;
                } else if self.r.pos() != e {
                    return Err(format!("a field at offset {start} was not read to its end"));
                }
            } else if !each(self, &t, end)? {
                self.skip(&t, end)?;
            }
        }
        if self.r.pos() != end {
            return Err(format!("a message overran its end at offset {end}"));
        }
        Ok(())
    }
}

/// Reads the facts of an ONNX file; see the module docs.
pub fn read(r: &mut Reader) -> Parsed<Map<String, Value>> {
    let len = r.len();
    let mut w = Walk { r };
    let mut out = Map::new();
    let mut opsets = Map::new();
    let mut props = Map::new();
    let mut graph = None;
    w.fields(len, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, _) => {
                let v = w.int(t, "ir_version")?;
                out.insert("ir_version".into(), json!(v));
                true
            }
            (2, 2) | (3, 2) | (4, 2) => {
                let s = w.string(e)?;
                let k = ["producer_name", "producer_version", "domain"][t.field as usize - 2];
                out.insert(k.into(), json!(s));
                true
            }
            (5, _) => {
                let v = w.int(t, "model_version")?;
                out.insert("model_version".into(), json!(v));
                true
            }
            (7, 2) => {
                graph = Some(read_graph(w, e)?);
                true
            }
            (8, 2) => {
                let (mut domain, mut version) = (String::new(), 0);
                w.fields(e, |w, t, e| {
                    Ok(match (t.field, t.wire) {
                        (1, 2) => {
                            domain = w.string(e)?;
                            true
                        }
                        (2, _) => {
                            version = w.int(t, "an opset version")?;
                            true
                        }
                        _ => false,
                    })
                })?;
                if opsets.len() < MAX_LISTED {
                    let d = if domain.is_empty() {
                        "ai.onnx".into()
                    } else {
                        domain
                    };
                    opsets.insert(d, json!(version));
                }
                true
            }
            (14, 2) => {
                let (k, v) = pair(w, e)?;
                if props.len() < MAX_LISTED {
                    props.insert(k, json!(v));
                }
                true
            }
            _ => false,
        })
    })?;
    if !out.contains_key("ir_version") || graph.is_none() {
        // Protobuf has no end marker: a file cut between two top-level fields before
        // the graph looks like a model without one.
        return Err(
            "no ir_version or no graph: not an ONNX model, or truncated before its graph".into(),
        );
    }
    out.insert("format".into(), json!("onnx"));
    out.insert("opsets".into(), Value::Object(opsets));
    if !props.is_empty() {
        out.insert("metadata_props".into(), Value::Object(props));
    }
    if let Some(g) = graph {
        out.extend(g);
    }
    Ok(out)
}

/// A `StringStringEntryProto`: (key, value).
fn pair(w: &mut Walk, end: u64) -> Parsed<(String, String)> {
    let (mut k, mut v) = (String::new(), String::new());
    w.fields(end, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, 2) => {
                k = w.string(e)?;
                true
            }
            (2, 2) => {
                v = w.string(e)?;
                true
            }
            _ => false,
        })
    })?;
    Ok((k, v))
}

/// The graph's name, node and initializer counts, parameters, inputs and outputs.
fn read_graph(w: &mut Walk, end: u64) -> Parsed<Map<String, Value>> {
    let (mut nodes, mut inits, mut params) = (0u64, 0u64, 0u64);
    let mut weights: HashSet<String> = HashSet::new();
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let mut name = String::new();
    w.fields(end, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, 2) => {
                nodes += 1;
                false
            }
            (2, 2) => {
                name = w.string(e)?;
                true
            }
            (5, 2) => {
                inits += 1;
                let (n, count) = initializer(w, e)?;
                params = params
                    .checked_add(count)
                    .ok_or("parameters overflow 64 bits")?;
                if weights.len() < MAX_NAMES {
                    weights.insert(n);
                }
                true
            }
            (11, 2) | (12, 2) => {
                let list = if t.field == 11 {
                    &mut inputs
                } else {
                    &mut outputs
                };
                let v = value_info(w, e)?;
                list.push(v);
                true
            }
            _ => false,
        })
    })?;
    // Before IR 4, initializers were listed among the inputs too: they are weights.
    inputs.retain(|v: &Value| !weights.contains(v["name"].as_str().unwrap_or_default()));
    let listed = |mut v: Vec<Value>| {
        let more = v.len().saturating_sub(MAX_LISTED);
        v.truncate(MAX_LISTED);
        if more > 0 {
            v.push(json!(format!("{more} more")));
        }
        Value::Array(v)
    };
    let mut g = Map::new();
    g.insert("graph".into(), json!(name));
    g.insert("nodes".into(), json!(nodes));
    g.insert("initializers".into(), json!(inits));
    g.insert("parameters".into(), json!(params));
    g.insert("inputs".into(), listed(inputs));
    g.insert("outputs".into(), listed(outputs));
    Ok(g)
}

/// An initializer's (name, element count), its data skipped.
fn initializer(w: &mut Walk, end: u64) -> Parsed<(String, u64)> {
    let (mut name, mut count) = (String::new(), 1u64);
    let mut mul = |d: u64| -> Parsed<()> {
        count = count
            .checked_mul(d)
            .ok_or_else(|| "an initializer's shape overflows 64 bits".to_string())?;
        Ok(())
    };
    w.fields(end, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, 0) => {
                mul(w.varint()?)?;
                true
            }
            // Packed dims.
            (1, 2) => {
                while w.r.pos() < e {
                    mul(w.varint()?)?;
                }
                true
            }
            (8, 2) => {
                name = w.string(e)?;
                true
            }
            _ => false,
        })
    })?;
    Ok((name, count))
}

/// A `ValueInfoProto` as `{name, type, shape}` (shape only for tensors).
fn value_info(w: &mut Walk, end: u64) -> Parsed<Value> {
    let mut out = Map::new();
    w.fields(end, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, 2) => {
                out.insert("name".into(), json!(w.string(e)?));
                true
            }
            (2, 2) => {
                // TypeProto: 1 tensor_type, 4 sequence, 5 map, 8 sparse, 9 optional.
                w.fields(e, |w, t, e| {
                    Ok(match (t.field, t.wire) {
                        (1, 2) | (8, 2) => {
                            tensor_type(w, e, &mut out)?;
                            true
                        }
                        (4, _) | (5, _) | (9, _) => {
                            let k = match t.field {
                                4 => "sequence",
                                5 => "map",
                                _ => "optional",
                            };
                            out.insert("type".into(), json!(k));
                            false
                        }
                        _ => false,
                    })
                })?;
                true
            }
            _ => false,
        })
    })?;
    Ok(Value::Object(out))
}

/// A `TypeProto.Tensor`: its element type and shape into `out`.
fn tensor_type(w: &mut Walk, end: u64, out: &mut Map<String, Value>) -> Parsed<()> {
    let mut shape = Vec::new();
    let mut more = 0usize;
    w.fields(end, |w, t, e| {
        Ok(match (t.field, t.wire) {
            (1, _) => {
                let et = w.int(t, "an element type")?;
                out.insert("type".into(), json!(elem_type(et)));
                true
            }
            (2, 2) => {
                w.fields(e, |w, t, e| {
                    if (t.field, t.wire) != (1, 2) {
                        return Ok(false);
                    }
                    let mut dim = json!("?");
                    w.fields(e, |w, t, e| {
                        Ok(match (t.field, t.wire) {
                            (1, _) => {
                                dim = json!(w.int(t, "a dimension")? as i64);
                                true
                            }
                            (2, 2) => {
                                dim = json!(w.string(e)?);
                                true
                            }
                            _ => false,
                        })
                    })?;
                    if shape.len() < MAX_LISTED {
                        shape.push(dim);
                    } else {
                        more += 1;
                    }
                    Ok(true)
                })?;
                true
            }
            _ => false,
        })
    })?;
    if more > 0 {
        shape.push(json!(format!("{more} more")));
    }
    out.insert("shape".into(), Value::Array(shape));
    Ok(())
}

/// ONNX TensorProto.DataType names.
fn elem_type(t: u64) -> String {
    const NAMES: [&str; 24] = [
        "undefined",
        "float32",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "string",
        "bool",
        "float16",
        "float64",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
        "bfloat16",
        "float8e4m3fn",
        "float8e4m3fnuz",
        "float8e5m2",
        "float8e5m2fnuz",
        "uint4",
        "int4",
        "float4e2m1",
    ];
    NAMES
        .get(t as usize)
        .map_or_else(|| format!("type {t}"), |s| s.to_string())
}

#[cfg(test)]
#[path = "onnx_tests.rs"]
mod tests;
