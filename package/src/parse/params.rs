//! `[parameters.NAME]` tables → [`ParameterDef`]s.

use serde::Deserialize;
use toml::Spanned;

use super::ctx::{Ctx, scalar, valid_ident};
use crate::model::{ParamType, ParameterDef};
use crate::param_values::render_list;
use crate::params::check_value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParam {
    #[serde(rename = "type")]
    ty: String,
    default: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    description: String,
}

/// One parameter, or `None` after reporting what is wrong with it.
pub(super) fn parameter(
    cx: &mut Ctx<'_>,
    pname: &str,
    spanned: &Spanned<RawParam>,
) -> Option<ParameterDef> {
    let at = spanned.span().start;
    let p = spanned.get_ref();
    if !valid_ident(pname) {
        cx.report(
            at,
            format!("parameter name '{pname}': use letters, digits, '_' or '-'"),
        );
        return None;
    }
    let Some(ty) = ParamType::from_name(&p.ty) else {
        cx.report(
            at,
            format!(
                "parameter '{pname}': unknown type '{}', expected string, int, bool, float, \
                 list or secret",
                p.ty
            ),
        );
        return None;
    };
    let default = match &p.default {
        None => None,
        Some(v) => {
            let text = match (ty, v) {
                (ParamType::List, toml::Value::Array(items)) => {
                    let strings: Option<Vec<String>> = items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect();
                    match strings {
                        Some(s) => Some(render_list(&s)),
                        None => {
                            cx.report(
                                at,
                                format!(
                                    "parameter '{pname}': a list default is an array of strings"
                                ),
                            );
                            return None;
                        }
                    }
                }
                _ => scalar(v),
            };
            let Some(text) = text else {
                cx.report(at, format!("parameter '{pname}': default must be a scalar"));
                return None;
            };
            match check_value(pname, ty, &text) {
                Ok(s) => Some(s),
                Err(e) => {
                    cx.report(at, e.to_string());
                    return None;
                }
            }
        }
    };
    Some(ParameterDef {
        name: pname.to_string(),
        ty,
        default,
        required: p.required,
        sensitive: p.sensitive || ty == ParamType::Secret,
        description: p.description.clone(),
    })
}
