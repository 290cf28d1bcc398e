//! The Porter stemmer (M. F. Porter, "An algorithm for suffix stripping",
//! 1980), as SQLite's FTS5 `porter` tokenizer applies it to the index's
//! words, for the tests that model the keyword index's scores in Rust
//! (`retrieval`'s floor model). Written from the paper's rules and checked
//! against SQLite's own output over the corpus's vocabulary
//! (`tests::agrees_with_sqlite`). Test code only: the index itself stems
//! in SQLite.
//!
//! Like FTS5, it leaves words shorter than 3 or longer than 64 bytes as they
//! are; any other byte than `a e i o u` (and `y` after a vowel) counts as a
//! consonant, digits included.

/// The stem of `word` (a lowercase token), as FTS5's `porter` makes it.
pub fn stem(word: &str) -> String {
    if word.len() < 3 || word.len() > 64 {
        return word.to_owned();
    }
    let mut w = word.as_bytes().to_vec();
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5(&mut w);
    String::from_utf8(w).unwrap_or_else(|_| word.to_owned())
}

/// Whether the letter at `i` is a consonant: not a vowel, and `y` only
/// after a vowel (or first).
fn consonant(w: &[u8], i: usize) -> bool {
    match w.get(i) {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => false,
        Some(b'y') => i == 0 || !consonant(w, i - 1),
        Some(_) => true,
        None => false,
    }
}

/// The measure of `w`: the number of vowel-consonant sequences, `[C](VC)^m[V]`.
fn measure(w: &[u8]) -> usize {
    let mut m = 0;
    let mut i = 0;
    let n = w.len();
    while i < n && consonant(w, i) {
        i += 1;
    }
    loop {
        while i < n && !consonant(w, i) {
            i += 1;
        }
        if i >= n {
            return m;
        }
        while i < n && consonant(w, i) {
            i += 1;
        }
        m += 1;
        if i >= n {
            return m;
        }
    }
}

fn has_vowel(w: &[u8]) -> bool {
    (0..w.len()).any(|i| !consonant(w, i))
}

/// Ends with a double consonant.
fn double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w.get(n - 1) == w.get(n - 2) && consonant(w, n - 1)
}

/// Ends consonant-vowel-consonant, the last not `w`, `x` or `y`.
fn cvc(w: &[u8]) -> bool {
    let n = w.len();
    n >= 3
        && consonant(w, n - 3)
        && !consonant(w, n - 2)
        && consonant(w, n - 1)
        && !matches!(w.get(n - 1), Some(b'w' | b'x' | b'y'))
}

/// The stem before `suffix`, if `w` ends with it.
fn before<'a>(w: &'a [u8], suffix: &str) -> Option<&'a [u8]> {
    w.strip_suffix(suffix.as_bytes())
}

fn replace(w: &mut Vec<u8>, suffix: &str, with: &str) {
    w.truncate(w.len() - suffix.len());
    w.extend_from_slice(with.as_bytes());
}

fn step1a(w: &mut Vec<u8>) {
    if before(w, "sses").is_some() {
        replace(w, "sses", "ss");
    } else if before(w, "ies").is_some() {
        replace(w, "ies", "i");
    } else if before(w, "ss").is_some() {
    } else if before(w, "s").is_some() {
        replace(w, "s", "");
    }
}

fn step1b(w: &mut Vec<u8>) {
    if let Some(stem) = before(w, "eed") {
        if measure(stem) > 0 {
            replace(w, "eed", "ee");
        }
        return;
    }
    let suffix = if before(w, "ed").is_some_and(has_vowel) {
        "ed"
    } else if before(w, "ing").is_some_and(has_vowel) {
        "ing"
    } else {
        return;
    };
    replace(w, suffix, "");
    if before(w, "at").is_some() {
        replace(w, "at", "ate");
    } else if before(w, "bl").is_some() {
        replace(w, "bl", "ble");
    } else if before(w, "iz").is_some() {
        replace(w, "iz", "ize");
    } else if double_consonant(w) && !matches!(w.last(), Some(b'l' | b's' | b'z')) {
        w.pop();
    } else if measure(w) == 1 && cvc(w) {
        w.push(b'e');
    }
}

fn step1c(w: &mut Vec<u8>) {
    if before(w, "y").is_some_and(has_vowel) {
        replace(w, "y", "i");
    }
}

/// Applies the first rule of `rules` whose suffix `w` ends with, if the
/// stem before it has a measure above `min`; later rules are not tried once
/// one suffix matched.
fn rules(w: &mut Vec<u8>, rules: &[(&str, &str)], min: usize) {
    for (suffix, with) in rules {
        if let Some(stem) = before(w, suffix) {
            if measure(stem) > min {
                replace(w, suffix, with);
            }
            return;
        }
    }
}

fn step2(w: &mut Vec<u8>) {
    rules(
        w,
        &[
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("logi", "log"),
        ],
        0,
    );
}

fn step3(w: &mut Vec<u8>) {
    rules(
        w,
        &[
            ("icate", "ic"),
            ("ative", ""),
            ("alize", "al"),
            ("iciti", "ic"),
            ("ical", "ic"),
            ("ful", ""),
            ("ness", ""),
        ],
        0,
    );
}

fn step4(w: &mut Vec<u8>) {
    const SUFFIXES: &[&str] = &[
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion",
        "ou", "ism", "ate", "iti", "ous", "ive", "ize",
    ];
    // The longest suffix that matches decides.
    let Some(suffix) = SUFFIXES
        .iter()
        .filter(|s| before(w, s).is_some())
        .max_by_key(|s| s.len())
    else {
        return;
    };
    let Some(stem) = before(w, suffix) else {
        return;
    };
    let ok = measure(stem) > 1 && (*suffix != "ion" || matches!(stem.last(), Some(b's' | b't')));
    if ok {
        replace(w, suffix, "");
    }
}

fn step5(w: &mut Vec<u8>) {
    if let Some(stem) = before(w, "e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !cvc(stem)) {
            w.pop();
        }
    }
    if measure(w) > 1 && double_consonant(w) && w.last() == Some(&b'l') {
        w.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_examples() {
        for (word, want) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "ti"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("bled", "bled"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("troubled", "troubl"),
            ("sized", "size"),
            ("hopping", "hop"),
            ("tanned", "tan"),
            ("falling", "fall"),
            ("hissing", "hiss"),
            ("fizzed", "fizz"),
            ("failing", "fail"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("conditional", "condit"),
            ("generalization", "gener"),
            ("borrowing", "borrow"),
            ("borrowed", "borrow"),
            ("running", "run"),
            ("connected", "connect"),
            ("adjustment", "adjust"),
            ("electrical", "electr"),
            ("controll", "control"),
            ("rate", "rate"),
            ("cease", "ceas"),
            ("00s", "00"),
        ] {
            assert_eq!(stem(word), want, "{word}");
        }
        // Left as they are: shorter than 3 or longer than 64 bytes (and "x86",
        // stemmed like any word, has no suffix to lose).
        for word in ["is", "u8", "x86", &"a".repeat(65)] {
            assert_eq!(stem(word), word);
        }
    }

    /// SQLite's own stems (FTS5 `porter`, read back through `fts5vocab`, on
    /// SQLite 3.40) of every third word of the corpus and the question set
    /// made of ASCII letters and digits: `word<TAB>stem` per line. (All
    /// 14,949 such words agreed when this was written.)
    #[test]
    fn agrees_with_sqlite() {
        let pairs = include_str!("porter_sqlite_sample.tsv");
        let mut wrong = Vec::new();
        let mut n = 0;
        for line in pairs.lines() {
            let Some((word, want)) = line.split_once('\t') else {
                continue;
            };
            n += 1;
            if stem(word) != want {
                wrong.push(format!("{word}: {} (sqlite {want})", stem(word)));
            }
        }
        assert!(n > 1000, "the sample is there");
        assert!(
            wrong.is_empty(),
            "{} of {n} differ: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
    }
}
