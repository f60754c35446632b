//! `${VAR}` and `${VAR:-default}` in config strings, taken from the environment.
//! Substitution happens on parsed string values, never on the raw text, so a variable's
//! value cannot change the file's structure.

/// Replaces every `${VAR}` in `text`; `$${` is a literal `${`. Returns the names of
/// variables that are not set and have no default.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => missing.push(name.to_string()),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env).as_deref(),
            Ok("Bearer s3cret")
        );
        assert_eq!(interpolate("${NOPE:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(
            interpolate("$${TOKEN} $5", &env).as_deref(),
            Ok("${TOKEN} $5")
        );
        assert_eq!(
            interpolate("${A}${B}", &env),
            Err(vec!["A".to_string(), "B".to_string()])
        );
    }
}
