//! `when` expressions of precedence constraints: parse, and evaluate what
//! parses against a small scope. Contract: no panic; every error points at a
//! column inside the text (or just past it).
#![no_main]

use std::collections::BTreeMap;

use baton_package::{Condition, Package, Scope};
use libfuzzer_sys::fuzz_target;

const PARAMS: &str = r#"name = "scope"
[parameters.n]
type = "int"
default = 3
[parameters.s]
type = "string"
default = "eu, us"
[parameters.on]
type = "bool"
default = true
[tasks.a]
noop = true
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let len = src.chars().count();
    match Condition::parse(src) {
        Ok(cond) => {
            let package = Package::parse("scope.toml", PARAMS).expect("scope package parses");
            let params = package.bind(&BTreeMap::new()).expect("defaults bind");
            let outputs = [("b".to_string(), [("k".to_string(), "7".to_string())].into())].into();
            let states = [("a".to_string(), "succeeded".to_string())].into();
            let scope = Scope {
                params: &params,
                item: Some("{\"x\": 1}"),
                outputs: &outputs,
                states: &states,
            };
            if let Err(e) = cond.eval(&scope) {
                assert!(e.column >= 1 && e.column <= len + 1, "{src:?}: {e:?}");
            }
        }
        Err(e) => assert!(e.column >= 1 && e.column <= len + 1, "{src:?}: {e:?}"),
    }
});
