//! Field-by-field comparison of an expected document with a stored one
//! (`docs/data-contract.md` §7.3): bookkeeping fields are ignored, money
//! compares numerically (2.50 equals 2.5), and differences in labels only
//! (`*_name`, `pocket_type`) are marked so reconcile can list them as stale
//! labels.

use bson::{Bson, Document};

use crate::core::money::Money;
use crate::core::reports::BOOKKEEPING;

/// One differing field.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDiff {
    /// Dotted path, with `[i]` for array elements.
    pub path: String,
    /// `None` when the field is missing on that side.
    pub expected: Option<Bson>,
    pub stored: Option<Bson>,
    pub label_only: bool,
}

/// Differences between `expected` content and a `stored` document.
pub fn diff(expected: &Document, stored: &Document) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff_doc("", expected, stored, true, &mut out);
    out
}

fn diff_doc(
    prefix: &str,
    expected: &Document,
    stored: &Document,
    top: bool,
    out: &mut Vec<FieldDiff>,
) {
    let skip = |k: &str| top && BOOKKEEPING.contains(&k);
    for (k, ev) in expected {
        if skip(k) {
            continue;
        }
        let path = join(prefix, k);
        match stored.get(k) {
            Some(sv) => diff_value(&path, k, ev, sv, out),
            None => out.push(field(path, k, Some(ev.clone()), None)),
        }
    }
    for (k, sv) in stored {
        if !skip(k) && !expected.contains_key(k) {
            out.push(field(join(prefix, k), k, None, Some(sv.clone())));
        }
    }
}

fn diff_value(path: &str, key: &str, ev: &Bson, sv: &Bson, out: &mut Vec<FieldDiff>) {
    match (ev, sv) {
        (Bson::Document(e), Bson::Document(s)) => diff_doc(path, e, s, false, out),
        (Bson::Array(e), Bson::Array(s)) => {
            for i in 0..e.len().max(s.len()) {
                let p = format!("{path}[{i}]");
                match (e.get(i), s.get(i)) {
                    (Some(a), Some(b)) => diff_value(&p, key, a, b, out),
                    (a, b) => out.push(field(p, key, a.cloned(), b.cloned())),
                }
            }
        }
        _ if same_scalar(ev, sv) => {}
        _ => out.push(field(
            path.to_owned(),
            key,
            Some(ev.clone()),
            Some(sv.clone()),
        )),
    }
}

fn same_scalar(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => {
            matches!((Money::from_bson(a), Money::from_bson(b)), (Ok(x), Ok(y)) if x == y)
        }
        (Bson::Int32(x), Bson::Int64(y)) | (Bson::Int64(y), Bson::Int32(x)) => i64::from(*x) == *y,
        _ => a == b,
    }
}

fn field(path: String, key: &str, expected: Option<Bson>, stored: Option<Bson>) -> FieldDiff {
    let label_only = key.ends_with("_name") || key == "pocket_type";
    FieldDiff {
        path,
        expected,
        stored,
        label_only,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Decimal128};
    use std::str::FromStr;

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(Decimal128::from_str(s).unwrap())
    }

    #[test]
    fn money_compares_numerically_and_bookkeeping_is_ignored() {
        let e = doc! { "amount": dec("2.5"), "revision": 1_i64, "n": 3_i64 };
        let s = doc! { "amount": dec("2.50"), "revision": 7_i64, "n": 3_i32, "generated_at": 1 };
        assert!(diff(&e, &s).is_empty());
    }

    #[test]
    fn nested_differences_are_named_and_labels_marked() {
        let e = doc! { "rows": [ { "pocket_name": "Main", "balance": dec("10") } ], "x": 1 };
        let s = doc! { "rows": [ { "pocket_name": "Old", "balance": dec("11") } ], "y": 1 };
        let d = diff(&e, &s);
        let paths: Vec<_> = d.iter().map(|f| (f.path.as_str(), f.label_only)).collect();
        assert_eq!(
            paths,
            vec![
                ("rows[0].pocket_name", true),
                ("rows[0].balance", false),
                ("x", false),
                ("y", false)
            ]
        );
    }

    #[test]
    fn array_length_differences_are_reported() {
        let e = doc! { "a": [1, 2] };
        let s = doc! { "a": [1] };
        let d = diff(&e, &s);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "a[1]");
        assert_eq!(d[0].stored, None);
    }
}
