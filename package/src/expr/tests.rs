//! Tests of the expression language: syntax, errors with columns, evaluation.

use super::*;

use std::collections::BTreeMap;

fn eval_with(src: &str, outputs: &crate::reference::Outputs) -> Result<bool, ExprError> {
    let pkg = crate::Package::parse(
        "p.toml",
        "name='p'\n[parameters.n]\ntype='int'\ndefault=5\n[parameters.env]\ntype='string'\ndefault='prod'\n[parameters.on]\ntype='bool'\ndefault=true\n",
    )
    .unwrap();
    let params = pkg.bind(&BTreeMap::new()).unwrap();
    let states = [("extract".to_string(), "succeeded".to_string())].into();
    let scope = Scope {
        params: &params,
        item: None,
        outputs,
        states: &states,
    };
    parse(src)?.eval(&scope)
}

fn eval(src: &str) -> Result<bool, ExprError> {
    let outputs = [(
        "extract".to_string(),
        [("rows".to_string(), "120".to_string())].into(),
    )]
    .into();
    eval_with(src, &outputs)
}

#[test]
fn evaluates_the_language() {
    for (src, want) in [
        ("true", true),
        ("!false && true", true),
        ("${params.n} > 3", true),
        ("${params.n} == 5.0", true),
        ("${params.n} >= '10'", false),
        ("${params.env} == 'prod'", true),
        ("${params.env} != \"prod\" || ${params.on}", true),
        (
            "${tasks.extract.outputs.rows} > 100 && ${tasks.extract.state} == 'succeeded'",
            true,
        ),
        ("(1 < 2) == true", true),
        ("'abc' < 'abd'", true),
        ("-1.5 < -1", true),
        ("!(${params.n} < 3 || false)", true),
    ] {
        assert_eq!(eval(src), Ok(want), "{src}");
    }
}

#[test]
fn errors_carry_the_column() {
    for (src, col, what) in [
        ("", 1, "empty"),
        ("1 ==", 5, "ends"),
        ("(true", 6, "')'"),
        ("true false", 6, "after a complete"),
        ("a == 1", 1, "unexpected word"),
        ("1 < 2 < 3", 7, "chain"),
        ("${params.n", 1, "unterminated"),
        ("${nope}", 1, "unknown reference"),
        ("'abc", 1, "unterminated string"),
        ("1 # 2", 3, "unexpected character"),
        ("99999999999999999999 > 1", 1, "out of range"),
    ] {
        let e = parse(src).unwrap_err();
        assert_eq!(e.column, col, "{src}: {e}");
        assert!(e.message.contains(what), "{src}: {e}");
    }
    let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
    assert!(parse(&deep).unwrap_err().message.contains("deeper"));
    let nots = format!("{}true", "!".repeat(40));
    assert!(parse(&nots).unwrap_err().message.contains("deeper"));
    assert!(
        parse(&"1".repeat(5000))
            .unwrap_err()
            .message
            .contains("longer")
    );
}

#[test]
fn evaluation_errors_name_the_reference() {
    let e = eval("${tasks.extract.outputs.zz} == 1").unwrap_err();
    assert_eq!(e.column, 1);
    assert!(e.message.contains("no output 'zz'"), "{e}");
    let e = eval("${params.env}").unwrap_err();
    assert!(e.message.contains("boolean"), "{e}");
    assert!(eval("true == 1 < 2").is_err());
    assert!(eval("true < false").is_err());
}

#[test]
fn constants_fold() {
    assert_eq!(parse("1 > 2").unwrap().constant(), Some(false));
    assert_eq!(parse("${params.n} > 2").unwrap().constant(), None);
}
