//! Package TOML from outside (`baton validate`, `baton run FILE`, a deployed
//! bundle): parse, check, bind the defaults, expand foreach items, and write it
//! back. Contract: no panic; what parses is written by `to_toml` into text that
//! parses back to an equal package.
#![no_main]

use std::collections::BTreeMap;

use baton_package::{Package, TaskKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(package) = Package::parse("fuzz.toml", text) else {
        return;
    };
    let _ = package.check_sensitive_use();
    let _ = package.task_order();
    if let Ok(params) = package.bind(&BTreeMap::new()) {
        for task in package.tasks.values() {
            if let TaskKind::Foreach(fe) = &task.kind {
                let _ = fe.items(&params);
            }
        }
    }
    let written = package.to_toml();
    match Package::parse("fuzz.toml", &written) {
        Ok(again) => assert_eq!(again, package, "to_toml changed the package:\n{written}"),
        Err(e) => panic!("to_toml wrote text that does not parse ({e}):\n{written}"),
    }
});
