//! Recognition: which catalog product a process runs, from its executable file name and
//! its arguments, exactly per the protocol's matching rules.
//!
//! The agent asks once per new process, so a [`Recogniser`] does the catalog's work up
//! front: rule names are case-folded and stripped of `.exe` once, sorted for a binary
//! search, and each name's rules are kept in precedence order so that the first rule
//! whose `args_contain` matches is the answer. Most processes on a workstation match no
//! rule at all; for them a lookup allocates nothing.
//!
//! Precedence among the rules of one executable name (the protocol's rules, plus a
//! deterministic tie-break of our own):
//! 1. a rule with `args_contain` beats a rule without;
//! 2. among rules with `args_contain`, the longest (in characters) wins — this is what
//!    keeps `acad.exe /product ACADM` from being AutoCAD, whose `/product ACAD` is a
//!    substring of it;
//! 3. equal lengths (or two rules without `args_contain`) → the smallest product id, in
//!    byte order, so that every agent gives the same answer for the same catalog.
//!
//! An empty `args_contain` (`""`) matches everything and says nothing, so it is read as
//! no `args_contain` at all rather than letting it outrank a plain rule. A rule whose
//! `exe` is empty (or only `.exe`) names no executable and is ignored.
//!
//! The processes in [`NOT_PRODUCTS`] (a read-only viewer and the licensing services that
//! run beside every product) are never metered, whatever the catalog says: metering them
//! would charge a day for a viewer that is free, or charge every workstation where the
//! licensing service runs with no product open.

use std::cmp::Ordering;

use crate::catalog::Catalog;

/// Executables that are never metered even if a catalog rule names them.
pub const NOT_PRODUCTS: [&str; 5] = [
    "InvRO.exe",
    "AdskLicensingService.exe",
    "AdskLicensingAgent.exe",
    "AdskIdentityManager.exe",
    "AdSSO.exe",
];

/// [`NOT_PRODUCTS`] folded and without `.exe`, as lookups compare them.
const NOT_PRODUCT_STEMS: [&str; 5] = [
    "invro",
    "adsklicensingservice",
    "adsklicensingagent",
    "adskidentitymanager",
    "adsso",
];

/// Maps a process (executable file name, arguments) to a catalog product id.
///
/// Built once per catalog (cheap to rebuild when the collector sends a new one).
#[derive(Debug, Clone, Default)]
pub struct Recogniser {
    /// One entry per folded executable stem, sorted by stem.
    names: Vec<ExeRules>,
}

/// The rules of one executable stem, in precedence order.
#[derive(Debug, Clone)]
struct ExeRules {
    /// Case-folded file name without `.exe`.
    stem: Box<str>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Case-folded `args_contain`; `None` when the rule has none (or an empty one).
    args: Option<Box<str>>,
    /// Length of `args` in characters, for precedence.
    args_chars: usize,
    product: Box<str>,
}

impl Recogniser {
    /// Indexes every match rule of `catalog` (rules naming [`NOT_PRODUCTS`] are left out).
    pub fn new(catalog: &Catalog) -> Recogniser {
        let mut names: Vec<ExeRules> = Vec::new();
        for (id, product) in catalog {
            for rule in &product.matches {
                let stem = fold(stem(&rule.exe));
                if stem.is_empty() || is_not_product(&stem) {
                    continue;
                }
                let args = rule
                    .args_contain
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map(fold);
                let rule = Rule {
                    args_chars: args.as_ref().map_or(0, |a| a.chars().count()),
                    args: args.map(String::into_boxed_str),
                    product: id.as_str().into(),
                };
                match names.iter_mut().find(|n| *n.stem == *stem) {
                    Some(n) => n.rules.push(rule),
                    None => names.push(ExeRules {
                        stem: stem.into_boxed_str(),
                        rules: vec![rule],
                    }),
                }
            }
        }
        names.sort_by(|a, b| a.stem.cmp(&b.stem));
        for n in &mut names {
            n.rules.sort_by(precedence);
        }
        Recogniser { names }
    }

    /// The product id that a process with executable file name `exe` (not a path) and
    /// arguments `args` (argv\[1..\] joined by single spaces) runs, if any.
    pub fn recognise(&self, exe: &str, args: &str) -> Option<&str> {
        let stem = stem(exe);
        let i = self
            .names
            .binary_search_by(|n| cmp_folded(&n.stem, stem))
            .ok()?;
        let mut folded_args: Option<String> = None;
        self.names[i]
            .rules
            .iter()
            .find(|rule| match &rule.args {
                None => true,
                Some(needle) => contains_folded(args, needle, &mut folded_args),
            })
            .map(|rule| &*rule.product)
    }

    /// Whether no rule can match anything (an empty catalog, or one without rules).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Whether `exe` (a file name, `.exe` optional, any case) is one of [`NOT_PRODUCTS`].
pub fn is_not_product(exe: &str) -> bool {
    let stem = stem(exe);
    NOT_PRODUCT_STEMS
        .iter()
        .any(|n| cmp_folded(n, stem) == Ordering::Equal)
}

/// Precedence: longest `args_contain` first (a rule without one last), then product id.
fn precedence(a: &Rule, b: &Rule) -> Ordering {
    let len = |r: &Rule| r.args.as_ref().map(|_| r.args_chars);
    len(b).cmp(&len(a)).then_with(|| a.product.cmp(&b.product))
}

/// `name` without a trailing `.exe` (any case).
fn stem(name: &str) -> &str {
    let n = name.len();
    if n >= 4 && name.is_char_boundary(n - 4) && name[n - 4..].eq_ignore_ascii_case(".exe") {
        &name[..n - 4]
    } else {
        name
    }
}

/// Case folding used on both sides of every comparison: per-character lowercase.
fn fold(s: &str) -> String {
    // Lowercasing rarely changes the length; reserve it so that folding is one allocation.
    let mut folded = String::with_capacity(s.len());
    folded.extend(s.chars().flat_map(char::to_lowercase));
    folded
}

/// Compares an already folded `key` with `name` folded on the fly (no allocation).
fn cmp_folded(key: &str, name: &str) -> Ordering {
    if name.is_ascii() {
        key.bytes()
            .cmp(name.bytes().map(|b| b.to_ascii_lowercase()))
    } else {
        key.chars().cmp(name.chars().flat_map(char::to_lowercase))
    }
}

/// Whether `hay` folded contains the folded `needle`. ASCII arguments (the usual case)
/// are searched in place; others are folded once into `folded` and reused by the next
/// rule of the same lookup.
fn contains_folded(hay: &str, needle: &str, folded: &mut Option<String>) -> bool {
    if hay.is_ascii() {
        let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
        return needle.len() <= hay.len()
            && hay.windows(needle.len()).any(|w| {
                w.iter()
                    .zip(needle)
                    .all(|(h, n)| h.to_ascii_lowercase() == *n)
            });
    }
    folded.get_or_insert_with(|| fold(hay)).contains(needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{MatchRule, Product, builtin};

    fn rule(exe: &str, args: Option<&str>) -> MatchRule {
        MatchRule {
            exe: exe.to_owned(),
            args_contain: args.map(str::to_owned),
        }
    }

    fn catalog(entries: &[(&str, Vec<MatchRule>)]) -> Catalog {
        entries
            .iter()
            .map(|(id, matches)| {
                (
                    (*id).to_owned(),
                    Product {
                        name: None,
                        tokens_per_day: 1,
                        matches: matches.clone(),
                        rate_confirmed: None,
                    },
                )
            })
            .collect()
    }

    fn builtin_recogniser() -> Recogniser {
        Recogniser::new(&builtin())
    }

    #[test]
    fn exe_is_compared_case_insensitively_with_exe_optional() {
        let r = Recogniser::new(&catalog(&[
            ("acad", vec![rule("acad.exe", None)]),
            ("revit", vec![rule("Revit", None)]),
        ]));
        for exe in ["acad", "ACAD.EXE", "acad.exe", "Acad.Exe", "ACAD"] {
            assert_eq!(r.recognise(exe, ""), Some("acad"), "{exe}");
        }
        for exe in ["revit", "REVIT.EXE", "Revit.exe"] {
            assert_eq!(r.recognise(exe, ""), Some("revit"), "{exe}");
        }
        for exe in [
            "acad.ex",
            "acadx",
            "xacad",
            "acad.exe.exe",
            "acad.com",
            "",
            ".exe",
        ] {
            assert_eq!(r.recognise(exe, ""), None, "{exe}");
        }
    }

    #[test]
    fn exe_case_folding_is_not_only_ascii() {
        let r = Recogniser::new(&catalog(&[("ü", vec![rule("ÜBER.exe", None)])]));
        assert_eq!(r.recognise("über.EXE", ""), Some("ü"));
        assert_eq!(r.recognise("ÜBER", ""), Some("ü"));
        assert_eq!(r.recognise("uber", ""), None);
    }

    #[test]
    fn args_contain_is_a_case_insensitive_substring() {
        let r = Recogniser::new(&catalog(&[(
            "c3d",
            vec![rule("acad.exe", Some("/Product C3D"))],
        )]));
        assert_eq!(r.recognise("acad.exe", "/product c3d"), Some("c3d"));
        assert_eq!(
            r.recognise("acad.exe", "/ld x.dbx /PRODUCT C3D /language en-US"),
            Some("c3d")
        );
        assert_eq!(r.recognise("acad.exe", "/product  C3D"), None);
        assert_eq!(r.recognise("acad.exe", "/product"), None);
        assert_eq!(r.recognise("acad.exe", ""), None);
        // Non-ASCII arguments take the folding path.
        assert_eq!(
            r.recognise("acad.exe", "/ld «Prüfung» /PRODUCT C3D"),
            Some("c3d")
        );
        assert_eq!(r.recognise("acad.exe", "/ld «Prüfung»"), None);
    }

    #[test]
    fn args_contain_beats_none() {
        // The plain rule belongs to the smaller id, so only precedence can pick "zz".
        let r = Recogniser::new(&catalog(&[
            ("aa", vec![rule("tool.exe", None)]),
            ("zz", vec![rule("tool.exe", Some("-x"))]),
        ]));
        assert_eq!(r.recognise("tool.exe", "-x"), Some("zz"));
        assert_eq!(r.recognise("tool.exe", "-y"), Some("aa"));
        assert_eq!(r.recognise("tool.exe", ""), Some("aa"));
    }

    #[test]
    fn empty_args_contain_counts_as_none() {
        let r = Recogniser::new(&catalog(&[
            ("aa", vec![rule("tool.exe", None)]),
            ("zz", vec![rule("tool.exe", Some(""))]),
        ]));
        assert_eq!(r.recognise("tool.exe", "anything"), Some("aa"));
    }

    #[test]
    fn longest_args_contain_wins() {
        let r = Recogniser::new(&catalog(&[
            ("aa", vec![rule("tool.exe", Some("/p X"))]),
            ("zz", vec![rule("tool.exe", Some("/p XY"))]),
        ]));
        assert_eq!(r.recognise("tool.exe", "/p XY"), Some("zz"));
        assert_eq!(r.recognise("tool.exe", "/p XZ"), Some("aa"));
        assert_eq!(r.recognise("tool.exe", "/p"), None);
    }

    #[test]
    fn ties_go_to_the_smallest_product_id() {
        let r = Recogniser::new(&catalog(&[
            ("bb", vec![rule("tool.exe", Some("-b"))]),
            ("aa", vec![rule("tool.exe", Some("-a"))]),
            ("pb", vec![rule("plain.exe", None)]),
            ("pa", vec![rule("PLAIN", None)]),
        ]));
        assert_eq!(r.recognise("tool.exe", "-b -a"), Some("aa"));
        assert_eq!(r.recognise("tool.exe", "-b"), Some("bb"));
        assert_eq!(r.recognise("plain", ""), Some("pa"));
    }

    #[test]
    fn not_products_are_never_metered() {
        let names: Vec<MatchRule> = NOT_PRODUCTS
            .iter()
            .flat_map(|n| [rule(n, None), rule(&n.to_uppercase(), Some("x"))])
            .chain([rule("invro", None)])
            .collect();
        let r = Recogniser::new(&catalog(&[("viewer", names)]));
        assert!(r.is_empty());
        for n in NOT_PRODUCTS {
            assert!(is_not_product(n));
            assert!(is_not_product(&n.to_lowercase()));
            assert_eq!(r.recognise(n, ""), None);
            assert_eq!(r.recognise(n, "x"), None);
            assert_eq!(builtin_recogniser().recognise(n, ""), None);
        }
        assert!(is_not_product("INVRO"));
        for (name, folded) in NOT_PRODUCTS.iter().zip(NOT_PRODUCT_STEMS) {
            assert_eq!(fold(stem(name)), folded);
        }
        assert!(!is_not_product("Inventor.exe"));
    }

    #[test]
    fn acad_product_acad_and_plain_acad_are_autocad() {
        let r = builtin_recogniser();
        assert_eq!(r.recognise("acad.exe", ""), Some("acad"));
        assert_eq!(r.recognise("acad.exe", "/product ACAD"), Some("acad"));
        assert_eq!(r.recognise("ACAD", "/nologo"), Some("acad"));
    }

    #[test]
    fn acad_product_acadm_is_mechanical_not_autocad() {
        let r = builtin_recogniser();
        assert_eq!(r.recognise("acad.exe", "/product ACADM"), Some("acadm"));
        assert_eq!(
            r.recognise(
                "acad.exe",
                "/p \"<<ACADM>>\" /product acadm /language en-US"
            ),
            Some("acadm")
        );
    }

    #[test]
    fn acad_product_c3d_is_civil3d() {
        let r = builtin_recogniser();
        assert_eq!(r.recognise("acad.exe", "/product C3D"), Some("civil3d"));
        assert_eq!(
            r.recognise(
                "Acad.EXE",
                "/ld \"AecBase.dbx\" /p \"<<C3D_Metric>>\" /product C3D"
            ),
            Some("civil3d")
        );
    }

    #[test]
    fn every_builtin_product_is_recognised_by_its_executable() {
        let r = builtin_recogniser();
        for (exe, id) in [
            ("acadlt.exe", "acadlt"),
            ("Revit.exe", "revit"),
            ("Inventor.exe", "inventor"),
            ("3dsmax.exe", "3dsmax"),
            ("maya.exe", "maya"),
            ("Roamer.exe", "navisworks"),
            ("Fusion360.exe", "fusion"),
        ] {
            assert_eq!(r.recognise(exe, ""), Some(id), "{exe}");
            assert_eq!(r.recognise(&exe.to_uppercase(), "/x"), Some(id), "{exe}");
        }
        assert_eq!(r.recognise("notepad.exe", ""), None);
        assert_eq!(r.recognise("sh", "-c acad.exe"), None);
    }

    #[test]
    fn empty_exe_rules_are_ignored() {
        let r = Recogniser::new(&catalog(&[("x", vec![rule("", None), rule(".EXE", None)])]));
        assert!(r.is_empty());
        assert_eq!(r.recognise("", ""), None);
    }
}
