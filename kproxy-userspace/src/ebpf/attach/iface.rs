//! Network interfaces the agent manages: listing them and matching `--iface` globs.

use nix::net::if_::if_nameindex;

/// One interface of the current network namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("list network interfaces: `if_nameindex` failed")]
    List(#[source] nix::Error),
}

/// Every interface of this namespace, by index.
pub fn list() -> Result<Vec<Iface>, IfaceError> {
    let mut all: Vec<Iface> = if_nameindex()
        .map_err(IfaceError::List)?
        .iter()
        .map(|i| Iface {
            name: i.name().to_string_lossy().into_owned(),
            index: i.index(),
        })
        .collect();
    all.sort_by_key(|i| i.index);
    Ok(all)
}

/// The interfaces whose name matches one of `patterns` (globs, see [`glob_match`]).
pub fn matching(patterns: &[String]) -> Result<Vec<Iface>, IfaceError> {
    Ok(list()?
        .into_iter()
        .filter(|i| patterns.iter().any(|p| glob_match(p, &i.name)))
        .collect())
}

/// Shell-style match of a whole name: `*` any run of characters, `?` one character,
/// everything else literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point for the last `*` seen.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_whole_names() {
        let cases = [
            ("veth*", "veth12ab", true),
            ("veth*", "eth0", false),
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth?", "eth1", true),
            ("eth?", "eth10", false),
            ("*", "lo", true),
            ("k*v*", "kpv123x4", true),
            ("*x4", "kpv123x4", true),
            ("*x4", "kpv123x45", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }
}
