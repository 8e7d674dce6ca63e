//! Unit tests of the ONNX reader on hand-made protobuf bytes.

use super::*;

fn varint(v: &mut Vec<u8>, mut x: u64) {
    loop {
        let b = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            v.push(b);
            return;
        }
        v.push(b | 0x80);
    }
}

fn field(v: &mut Vec<u8>, n: u64, body: &[u8]) {
    varint(v, n << 3 | 2);
    varint(v, body.len() as u64);
    v.extend_from_slice(body);
}

fn int(v: &mut Vec<u8>, n: u64, x: u64) {
    varint(v, n << 3);
    varint(v, x);
}

/// ir 8, opset 17, producer "t", a graph with one 3x4 initializer `w` of raw data,
/// one node, input x [batch, 4] float32, output y.
fn model() -> Vec<u8> {
    let mut dim_b = Vec::new();
    field(&mut dim_b, 2, b"batch");
    let mut dim_4 = Vec::new();
    int(&mut dim_4, 1, 4);
    let mut shape = Vec::new();
    field(&mut shape, 1, &dim_b);
    field(&mut shape, 1, &dim_4);
    let mut tensor = Vec::new();
    int(&mut tensor, 1, 1);
    field(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    field(&mut ty, 1, &tensor);
    let mut input = Vec::new();
    field(&mut input, 1, b"x");
    field(&mut input, 2, &ty);
    let mut output = Vec::new();
    field(&mut output, 1, b"y");
    let mut init = Vec::new();
    int(&mut init, 1, 3);
    int(&mut init, 1, 4);
    field(&mut init, 8, b"w");
    field(&mut init, 9, &[0u8; 48]);
    let mut graph = Vec::new();
    field(&mut graph, 1, b"\x0a\x01x");
    field(&mut graph, 2, b"g");
    field(&mut graph, 5, &init);
    field(&mut graph, 11, &input);
    field(&mut graph, 12, &output);
    let mut opset = Vec::new();
    int(&mut opset, 2, 17);
    let mut prop = Vec::new();
    field(&mut prop, 1, b"author");
    field(&mut prop, 2, b"me");
    let mut m = Vec::new();
    int(&mut m, 1, 8);
    field(&mut m, 2, b"t");
    field(&mut m, 7, &graph);
    field(&mut m, 8, &opset);
    field(&mut m, 14, &prop);
    m
}

fn parse(bytes: Vec<u8>) -> Parsed<Map<String, Value>> {
    crate::extract::reader::parse_bytes(read, bytes)
}

#[test]
fn reads_versions_producer_graph_and_props() {
    let f = parse(model()).unwrap();
    assert_eq!(f["ir_version"], 8);
    assert_eq!(opsets(&f)["ai.onnx"], 17);
    assert_eq!(f["producer_name"], "t");
    assert_eq!(f["parameters"], 12);
    assert_eq!(f["nodes"], 1);
    assert_eq!(
        f["inputs"],
        json!([{"name": "x", "type": "float32", "shape": ["batch", 4]}])
    );
    assert_eq!(f["outputs"], json!([{"name": "y"}]));
    assert_eq!(f["metadata_props"], json!({"author": "me"}));
}

#[test]
fn truncated_or_lying_files_are_unreadable() {
    let m = model();
    // A cut between two top-level fields leaves a valid shorter model (protobuf has
    // no end marker): cut anywhere up to the graph's end.
    let graph_end = m.len() - (2 + 2) - (2 + 12);
    for cut in 1..graph_end {
        let e = parse(m[..cut].to_vec()).unwrap_err();
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    // Cut inside the graph: where the graph would end, and the file's length.
    let cut = graph_end - 10;
    let e = parse(m[..cut].to_vec()).unwrap_err();
    assert!(e.ends_with(&format!("file has {cut} bytes")), "{e}");
    // A graph claiming 2^60 bytes.
    let mut lie = Vec::new();
    int(&mut lie, 1, 8);
    varint(&mut lie, 7 << 3 | 2);
    varint(&mut lie, 1 << 60);
    assert!(parse(lie).unwrap_err().starts_with("truncated"));
    assert!(parse(b"\x0f\xff\xff".to_vec()).is_err());
    assert!(parse(vec![0xff; 20]).is_err());
}

/// The opset map as the catalog shows it, for tests.
fn opsets(f: &Map<String, Value>) -> std::collections::BTreeMap<String, u64> {
    f["opsets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}
