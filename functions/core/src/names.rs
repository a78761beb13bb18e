//! People's names as Tavle stores and compares them: Unicode NFC.
//!
//! One name can arrive as different code points: "é" as U+00E9 (composed) or
//! as "e" followed by U+0301 COMBINING ACUTE ACCENT (decomposed, as macOS
//! input and some school systems send it); "å", "ä", "ö" and "ü" likewise
//! ("æ" and "ø" have no decomposition). Names are stored in NFC (the
//! components normalise what they write; `infra/migrations/0005_nfc_names.sql`
//! normalised older rows and keeps any other writer to NFC with a trigger),
//! and name searches normalise the query the same way, so either form finds
//! the other. Case is folded by PostgreSQL's `lower()` on both sides of the
//! comparison, so a query and a stored name go through the same mapping.
//!
//! NFC is not accent folding: "Amelie" does not find "Amélie".

use unicode_normalization::UnicodeNormalization;

/// `s` in Unicode Normalization Form C.
pub fn nfc(s: &str) -> String {
    if unicode_normalization::is_nfc(s) {
        s.to_owned()
    } else {
        s.nfc().collect()
    }
}

/// Whether `s` is in NFC already.
pub fn is_nfc(s: &str) -> bool {
    unicode_normalization::is_nfc(s)
}

/// The terms of a name search: the query in NFC, split at white space. Each
/// must occur in a pupil's "given family" name (compared with `lower()`).
pub fn search_terms(query: &str) -> Vec<String> {
    nfc(query).split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_and_decomposed_names_become_one() {
        for (decomposed, composed) in [
            ("Ame\u{301}lie", "Am\u{e9}lie"),
            ("A\u{30A}se O\u{308}sterga\u{30A}rd", "\u{c5}se \u{d6}sterg\u{e5}rd"),
            ("Ju\u{308}rgen Mu\u{308}ller", "J\u{fc}rgen M\u{fc}ller"),
            ("A\u{308}NGSTRO\u{308}M", "\u{c4}NGSTR\u{d6}M"),
            // The Ångström sign is canonically the letter Å.
            ("\u{212B}se", "\u{c5}se"),
        ] {
            assert_eq!(nfc(decomposed), composed);
            assert_eq!(nfc(composed), composed, "idempotent");
            assert!(!is_nfc(decomposed) && is_nfc(composed));
        }
    }

    #[test]
    fn letters_without_a_decomposition_and_other_scripts_are_kept() {
        for name in ["\u{c6}r\u{f8} \u{e6}\u{f8}\u{e5}", "Sámi Áŋŋá", "مريم العلي", "李小龍", "Robert'); DROP TABLE"]
        {
            assert_eq!(nfc(name), name);
        }
        // A lone combining mark has nothing to combine with.
        assert_eq!(nfc("\u{301}x"), "\u{301}x");
        // Compatibility forms are not folded (that would be NFKC).
        assert_eq!(nfc("\u{FB01}"), "\u{FB01}");
    }

    #[test]
    fn search_terms_are_nfc_words() {
        assert_eq!(search_terms("  Ame\u{301}lie \t O\u{308}st "), ["Am\u{e9}lie", "\u{d6}st"]);
        assert!(search_terms(" ").is_empty());
    }
}
