//! Every ```toml block of docs/packages.md parses (blocks marked
//! ```toml invalid must be refused), and examples/etl parses, validates and
//! runs through the engine.

use std::collections::BTreeMap;

use baton_package::{Engine, Package, PackageOutcome, TaskKind, TaskOutcome};

/// The fenced blocks of `text` whose info string starts with `toml`:
/// `(line of the fence, info, body)`.
fn toml_blocks(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```")
                    && info.trim().starts_with("toml")
                {
                    current = Some((i + 1, info.trim().to_string(), String::new()));
                }
            }
            Some((_, _, body)) => {
                if trimmed.starts_with("```") {
                    out.push(current.take().unwrap());
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "an unterminated ``` block");
    out
}

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/packages.md");
    std::fs::read_to_string(path).expect("docs/packages.md")
}

#[test]
fn every_toml_example_in_packages_md_parses() {
    let blocks = toml_blocks(&doc());
    assert!(
        blocks.len() >= 10,
        "only {} toml blocks found",
        blocks.len()
    );
    for (line, info, body) in blocks {
        let origin = format!("docs/packages.md:{line}");
        match info.as_str() {
            "toml" => {
                let p = Package::parse(&origin, &body)
                    .unwrap_or_else(|e| panic!("block at line {line}: {e}\n{body}"));
                if let Err(e) = p.check_sensitive_use() {
                    panic!("block at line {line}: {e}");
                }
            }
            "toml invalid" => {
                let refused = Package::parse(&origin, &body)
                    .and_then(|p| p.check_sensitive_use().map(|()| p))
                    .is_err();
                assert!(refused, "block at line {line} is marked invalid but passes");
            }
            other => panic!("block at line {line}: unknown info string {other:?}"),
        }
    }
}

fn example(name: &str) -> Package {
    let path = format!("{}/../examples/etl/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let p = Package::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    p.check_sensitive_use().unwrap();
    p
}

#[test]
fn the_etl_example_validates_and_runs_through_the_engine() {
    let parent = example("parent.toml");
    let child = example("load.toml");
    let TaskKind::Foreach(fe) = &parent.tasks["load"].kind else {
        panic!("load is a foreach")
    };
    assert_eq!(fe.child, "load.toml");
    fe.check_sensitive_flow("load", &parent, &child).unwrap();

    let params = parent
        .bind(&[("db_password".to_string(), "pw".to_string())].into())
        .unwrap();
    let mut engine = Engine::new(&parent, params);
    assert_eq!(engine.ready(), ["extract"]);
    engine.started("extract").unwrap();
    let outputs = [("rows", "600"), ("shards", "3")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    engine
        .finished("extract", TaskOutcome::Succeeded, outputs)
        .unwrap();
    assert_eq!(engine.ready(), ["load"]);

    // The driver expands the rows into children and binds each child.
    let rows = [
        r#"{"shard": 1, "rows": 100}"#,
        r#"{"shard": 2, "rows": 200}"#,
    ];
    let items = fe.items_from_rows(rows).unwrap();
    for item in &items {
        let mut p = BTreeMap::new();
        for (k, t) in &fe.params {
            p.insert(k.clone(), engine.render(t, Some(item)).unwrap());
        }
        let bound = child.bind(&p).unwrap();
        assert!(bound.is_sensitive("password"));
        assert!(["1", "2"].contains(&bound.get("shard").unwrap()));
    }
    engine.started("load").unwrap();
    let counts = [("children", "2"), ("succeeded", "2"), ("failed", "0")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    engine
        .finished("load", TaskOutcome::Succeeded, counts)
        .unwrap();
    assert_eq!(engine.state("alert").unwrap().as_str(), "skipped");
    assert_eq!(engine.ready(), ["summary"]);
    let TaskKind::Script(summary) = &parent.tasks["summary"].kind else {
        panic!("summary is a script")
    };
    let text = engine.render(&summary.script, None).unwrap();
    assert!(text.contains("600 rows in 2 shards"), "{text}");
    engine.started("summary").unwrap();
    engine
        .finished("summary", TaskOutcome::Succeeded, BTreeMap::new())
        .unwrap();
    assert_eq!(engine.outcome(), Some(PackageOutcome::Succeeded));
}
