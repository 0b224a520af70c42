//! Route paths: literal segments, `{name}` for any one segment, and a final `*` for the rest.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Any,
}

/// A parsed route path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segs: Vec<Seg>,
    rest: bool,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Self, String> {
        if !p.starts_with('/') {
            return Err("a path starts with /".into());
        }
        let mut segs = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = p[1..].split('/').collect();
        for (i, s) in parts.iter().enumerate() {
            if *s == "*" {
                if i + 1 != parts.len() {
                    return Err("* only ends a path".into());
                }
                rest = true;
            } else if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                segs.push(Seg::Any);
            } else if s.contains(['{', '}', '*']) {
                return Err(format!(
                    "segment `{s}`: use {{name}} for one segment, a final * for the rest"
                ));
            } else {
                segs.push(Seg::Lit((*s).to_owned()));
            }
        }
        Ok(Self { segs, rest })
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(p) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() < self.segs.len() || (!self.rest && parts.len() != self.segs.len()) {
            return false;
        }
        self.segs.iter().zip(parts.iter()).all(|(s, part)| match s {
            Seg::Lit(l) => l == part,
            Seg::Any => !part.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_literals_params_and_rests() {
        let p = Pattern::parse("/products").unwrap();
        assert!(p.matches("/products"));
        assert!(!p.matches("/products/1"));
        let p = Pattern::parse("/products/{sku}").unwrap();
        assert!(p.matches("/products/MUG-1"));
        assert!(!p.matches("/products/"));
        assert!(!p.matches("/products"));
        let p = Pattern::parse("/admin/*").unwrap();
        assert!(p.matches("/admin/dlq"));
        assert!(p.matches("/admin/dlq/1/redrive"));
        assert!(!p.matches("/orders"));
        assert!(Pattern::parse("products").is_err());
        assert!(Pattern::parse("/a/*/b").is_err());
        assert!(Pattern::parse("/a{b}").is_err());
    }
}
