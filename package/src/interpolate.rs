//! `${…}` templates in strings: `${params.NAME}`, `${item}`, `${item.FIELD}`,
//! `${tasks.TASK.outputs.KEY}`, `${tasks.TASK.state}`; `$${` is a literal `${`.

use crate::error::PackageError;
use crate::param_values::ParamValues;
use crate::reference::{Ref, Scope};

/// Expands `${params.NAME}` and `${item}` (and `${item.FIELD}`) in `template`.
/// `$${` is a literal `${`. A reference to an unknown parameter, to `${item}`
/// outside a foreach, or to a task's outputs (use [`interpolate_in`] with a
/// [`Scope`] that holds them) is an error rather than an empty string.
pub fn interpolate(
    template: &str,
    params: &ParamValues,
    item: Option<&str>,
) -> Result<String, PackageError> {
    interpolate_in(template, &Scope::new(params, item))
}

/// Expands every reference of `template` against `scope`: parameters, the
/// foreach item, and the outputs and states of tasks that ended.
pub fn interpolate_in(template: &str, scope: &Scope<'_>) -> Result<String, PackageError> {
    let err = |message: String| PackageError::Template {
        template: template.to_string(),
        message,
    };
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(inner) => {
                let r = Ref::parse(inner).map_err(err)?;
                out.push_str(&scope.resolve(&r).map_err(err)?);
            }
            Piece::Unterminated => return Err(err("unterminated '${'".to_string())),
        }
    }
    Ok(out)
}

/// The references of `template`, parsed; the first malformed one is an error
/// message. Used to validate templates when a package loads.
pub fn template_refs(template: &str) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    for piece in pieces(template) {
        match piece {
            Piece::Text(_) => {}
            Piece::Ref(inner) => out.push(Ref::parse(inner)?),
            Piece::Unterminated => return Err("unterminated '${'".to_string()),
        }
    }
    Ok(out)
}

/// Names that `template` references as `${params.NAME}`, in order (with repeats).
/// Mirrors [`interpolate`]: `$${` is a literal, an unterminated `${` ends the scan.
pub(crate) fn template_params(template: &str) -> Vec<&str> {
    pieces(template)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(inner) => inner.trim().strip_prefix("params."),
            _ => None,
        })
        .collect()
}

enum Piece<'a> {
    Text(&'a str),
    /// The text between `${` and `}`.
    Ref(&'a str),
    Unterminated,
}

/// Splits a template into literal text and references.
fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push(Piece::Text(&rest[..pos]));
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push(Piece::Text("${"));
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix("${") {
            let Some(end) = inner.find('}') else {
                out.push(Piece::Unterminated);
                return out;
            };
            out.push(Piece::Ref(&inner[..end]));
            rest = &inner[end + 1..];
        } else {
            out.push(Piece::Text("$"));
            rest = &after[1..];
        }
    }
    out.push(Piece::Text(rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Package;
    use std::collections::BTreeMap;

    fn params() -> ParamValues {
        let p = Package::parse(
            "p.toml",
            "name='p'\n[parameters.n]\ntype='int'\ndefault=3\n[parameters.list]\ntype='string'\ndefault='a, b,,c'\n",
        )
        .unwrap();
        p.bind(&BTreeMap::new()).unwrap()
    }

    #[test]
    fn expands_params_items_and_escapes() {
        let p = params();
        assert_eq!(
            interpolate("n=${params.n} i=${item} $${x} $5", &p, Some("7")).unwrap(),
            "n=3 i=7 ${x} $5"
        );
    }

    #[test]
    fn errors_on_unknown_references() {
        let p = params();
        assert_eq!(
            interpolate("${params.zz}", &p, None).unwrap_err().code(),
            "TEMPLATE_INVALID"
        );
        assert!(interpolate("${item}", &p, None).is_err());
        assert!(interpolate("${nope}", &p, None).is_err());
        assert!(interpolate("${params.n", &p, None).is_err());
        assert!(interpolate("${tasks.a.outputs.k}", &p, None).is_err());
    }

    #[test]
    fn expands_outputs_states_and_row_fields() {
        let p = params();
        let outputs = [("a".to_string(), [("k".to_string(), "v".to_string())].into())].into();
        let states = [("a".to_string(), "succeeded".to_string())].into();
        let scope = Scope {
            params: &p,
            item: Some(r#"{"shard": 4}"#),
            outputs: &outputs,
            states: &states,
        };
        assert_eq!(
            interpolate_in(
                "${tasks.a.outputs.k}/${tasks.a.state}/${item.shard}/${params.n}",
                &scope
            )
            .unwrap(),
            "v/succeeded/4/3"
        );
        assert!(interpolate_in("${tasks.a.outputs.zz}", &scope).is_err());
    }

    #[test]
    fn template_params_follow_interpolation() {
        assert_eq!(
            template_params("a ${params.x} $${params.y} ${ params.z }${item}${params.w"),
            ["x", "z"]
        );
        assert!(template_params("plain $5").is_empty());
        assert_eq!(
            template_refs("${tasks.t.state} ${item}").unwrap(),
            [Ref::State("t".into()), Ref::Item]
        );
        assert!(template_refs("${zz}").is_err());
    }

    proptest::proptest! {
        /// Interpolation never panics and leaves text without '$' unchanged.
        #[test]
        fn interpolation_total(s in "\\PC{0,64}") {
            let p = params();
            let r = interpolate(&s, &p, Some("x"));
            if !s.contains('$') {
                proptest::prop_assert_eq!(r.unwrap(), s);
            }
        }
    }
}
