//! Which writing system a text is in, so a search can prefer passages a
//! questioner can read.
//!
//! A corpus may hold the same page in several languages, with the same code
//! in each: Rust by Example in English beside its Japanese, Korean and
//! Chinese translations. Keyword and vector search match the shared code, so
//! an English question used to get a Japanese passage in its first five
//! about one time in four. Search multiplies the relevance of a passage
//! written in another system than the question by [`OTHER_SCRIPT_FACTOR`]
//! (see [`adjust`]) where a passage in the question's own system is among
//! the hits and scores at or above the search's floor: it falls behind
//! those of about the same relevance, and stays ahead of much weaker ones.
//! Where none is (a Japanese question to a tenant of English documents),
//! nothing changes.
//!
//! This is the writing system, not the language: Spanish and English are
//! both Latin script and are not told apart.

use crate::ports::VectorHit;
use protocol::ingest::MetaValue;

/// The relevance kept by a passage written in another system than the
/// question. Chosen on the Rust docs corpus with the questions of
/// `tests/questions`, re-ranking each mode's first 20 documents as
/// `cargo bench -p e2e --bench quality` dumped them (`QUALITY_DUMP`): from
/// 0.9 down, other-script passages left the first five of nearly every
/// English question and recall did not fall; lower values changed nothing
/// more there, and 0.8 leaves a strongly matching passage room to stay
/// ahead of a weak one.
pub const OTHER_SCRIPT_FACTOR: f64 = 0.8;

/// Share of a text's letters that must be in one non-Latin system for the
/// text to count as written in it. Low, because a translated technical
/// passage keeps its code, identifiers and commands in Latin letters, and
/// one CJK character often stands for a whole word.
const SHARE: f64 = 0.15;

/// A writing system, as far as search tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Latin letters (English, Spanish, German, ...).
    Latin,
    /// Chinese characters, Japanese kana, Korean Hangul.
    Cjk,
    /// Cyrillic.
    Cyrillic,
    /// Greek.
    Greek,
    /// Arabic.
    Arabic,
    /// Hebrew.
    Hebrew,
    /// Devanagari.
    Devanagari,
    /// Thai.
    Thai,
}

const OTHERS: [Script; 7] = [
    Script::Cjk,
    Script::Cyrillic,
    Script::Greek,
    Script::Arabic,
    Script::Hebrew,
    Script::Devanagari,
    Script::Thai,
];

/// The system of one letter; `None` for letters of systems not told apart
/// here (they count as letters of no system).
fn of_char(c: char) -> Option<Script> {
    Some(match c as u32 {
        0x0041..=0x024F | 0x1E00..=0x1EFF | 0xFF21..=0xFF3A | 0xFF41..=0xFF5A => Script::Latin,
        0x0370..=0x03FF | 0x1F00..=0x1FFF => Script::Greek,
        0x0400..=0x052F => Script::Cyrillic,
        0x0590..=0x05FF => Script::Hebrew,
        0x0600..=0x06FF | 0x0750..=0x077F => Script::Arabic,
        0x0900..=0x097F => Script::Devanagari,
        0x0E00..=0x0E7F => Script::Thai,
        0x1100..=0x11FF
        | 0x3005..=0x3007
        | 0x3040..=0x30FF
        | 0x3100..=0x312F
        | 0x3130..=0x318F
        | 0x31A0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7FF
        | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F
        | 0xFFA0..=0xFFDC
        | 0x20000..=0x3134F => Script::Cjk,
        _ => return None,
    })
}

/// The writing system of a passage: a non-Latin system that holds at
/// least [`SHARE`] of its letters (the largest such), else Latin if it has
/// Latin letters; `None` for a text without letters (numbers, symbols, code
/// punctuation), which is never told apart from anything.
pub fn script_of(text: &str) -> Option<Script> {
    let (counts, letters) = count(text);
    if letters == 0 {
        return None;
    }
    let best =
        largest_other(&counts).filter(|s| counts[index(*s)] as f64 >= SHARE * letters as f64);
    best.or((counts[index(Script::Latin)] > 0).then_some(Script::Latin))
}

/// The writing system of a question, by its words (runs of letters of one
/// system): a non-Latin system with at least as many words as the Latin
/// one, else Latin if it has Latin words; `None` without letters. Stricter
/// than a passage's [`script_of`], and by words rather than letters, since a
/// question is short and names code: "how do I print 你好?" is an English
/// question about a Chinese string, while `linux で cfg を使うには` and
/// `Vec<String> это что?` ask in Japanese and in Russian about code.
pub fn question_script_of(text: &str) -> Option<Script> {
    let mut words = [0usize; 8];
    let mut letters = 0usize;
    let mut current: Option<Option<Script>> = None;
    for c in text.chars() {
        if !c.is_alphabetic() {
            current = None;
            continue;
        }
        letters += 1;
        let system = of_char(c);
        if current != Some(system) {
            if let Some(s) = system {
                words[index(s)] += 1;
            }
            current = Some(system);
        }
    }
    if letters == 0 {
        return None;
    }
    let latin = words[index(Script::Latin)];
    let best = largest_other(&words).filter(|s| words[index(*s)] > 0 && words[index(*s)] >= latin);
    best.or((latin > 0).then_some(Script::Latin))
}

/// Letters per system, and all letters (those of no system told apart
/// here included).
fn count(text: &str) -> ([usize; 8], usize) {
    let mut counts = [0usize; 8];
    let mut letters = 0usize;
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if let Some(s) = of_char(c) {
            counts[index(s)] += 1;
        }
    }
    (counts, letters)
}

/// The non-Latin system with the most letters (the first in [`OTHERS`] on
/// a tie).
fn largest_other(counts: &[usize; 8]) -> Option<Script> {
    OTHERS
        .iter()
        .copied()
        .rev()
        .max_by_key(|s| counts[index(*s)])
}

fn index(s: Script) -> usize {
    match s {
        Script::Latin => 0,
        Script::Cjk => 1,
        Script::Cyrillic => 2,
        Script::Greek => 3,
        Script::Arabic => 4,
        Script::Hebrew => 5,
        Script::Devanagari => 6,
        Script::Thai => 7,
    }
}

/// Whether a passage in `passage` is in another system than a question in
/// `question`; unknown on either side is never "other".
pub fn differs(question: Option<Script>, passage: Option<Script>) -> bool {
    matches!((question, passage), (Some(q), Some(p)) if q != p)
}

/// `hits` (best first) with the score of each hit whose `text` metadata is
/// in another writing system than `question` multiplied by
/// [`OTHER_SCRIPT_FACTOR`], then ranked again, best first (a stable sort:
/// equal scores keep their order). Only where some hit in the question's
/// own system is relevant enough to be answered (`answered`: the search's
/// floor keeps its score): a question that only passages in other systems
/// answer (a Japanese question to a tenant of English documents) keeps
/// their scores, so the floor treats them as before. The legs' own
/// relevances (`vectorScore`, `keywordScore`) are left as the legs gave
/// them.
pub fn adjust(
    question: Option<Script>,
    mut hits: Vec<VectorHit>,
    answered: impl Fn(f64) -> bool,
) -> Vec<VectorHit> {
    let Some(question) = question else {
        return hits;
    };
    let scripts: Vec<Option<Script>> = hits
        .iter()
        .map(|hit| match hit.metadata.get("text") {
            Some(MetaValue::Str(text)) => script_of(text),
            _ => None,
        })
        .collect();
    let own_answered = hits
        .iter()
        .zip(&scripts)
        .any(|(hit, script)| *script == Some(question) && answered(hit.score));
    if !own_answered {
        return hits;
    }
    let mut changed = false;
    for (hit, passage) in hits.iter_mut().zip(scripts) {
        if differs(Some(question), passage) {
            hit.score *= OTHER_SCRIPT_FACTOR;
            changed = true;
        }
    }
    if changed {
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ingest::Metadata;

    #[test]
    fn prose_is_told_by_its_letters_and_code_does_not_hide_a_translation() {
        assert_eq!(
            script_of("How do I borrow a value twice?"),
            Some(Script::Latin)
        );
        assert_eq!(
            script_of("¿Cómo se toma prestado un valor dos veces?"),
            Some(Script::Latin)
        );
        // A Japanese section of Rust by Example: more ASCII code than kana.
        let ja = "環境に応じたコンパイルをするには2種類の方法があります。\n\
                  #[cfg(target_os = \"linux\")]\nfn are_you_on_linux() {\n    println!(\"You are running linux!\");\n}";
        assert_eq!(script_of(ja), Some(Script::Cjk));
        assert_eq!(
            script_of("소유권은 러스트의 핵심 기능입니다"),
            Some(Script::Cjk)
        );
        assert_eq!(
            script_of("Как заимствовать значение?"),
            Some(Script::Cyrillic)
        );
        // One foreign word in an English question does not make it foreign.
        assert_eq!(
            script_of("what is the difference between a borrow and a move (所有)?"),
            Some(Script::Latin)
        );
        for none in ["", "404", "::<>() {} []", "   \n"] {
            assert_eq!(script_of(none), None, "{none:?}");
        }
    }

    #[test]
    fn a_question_is_foreign_where_it_has_as_many_foreign_words_as_latin_ones() {
        assert_eq!(
            question_script_of("How do I print 你好?"),
            Some(Script::Latin)
        );
        assert_eq!(
            question_script_of("linux で cfg を使うには"),
            Some(Script::Cjk)
        );
        assert_eq!(question_script_of("所有権とは何ですか"), Some(Script::Cjk));
        assert_eq!(
            question_script_of("Как заимствовать значение?"),
            Some(Script::Cyrillic)
        );
        assert_eq!(
            question_script_of("Vec<String> это что?"),
            Some(Script::Cyrillic)
        );
        assert_eq!(
            question_script_of("rustのownershipとborrowについて教えて"),
            Some(Script::Cjk)
        );
        assert_eq!(
            question_script_of("what is the difference between a borrow and a move (所有)?"),
            Some(Script::Latin)
        );
        assert_eq!(
            question_script_of("what is ownership?"),
            Some(Script::Latin)
        );
        assert_eq!(question_script_of("404 ::<>"), None);
        // Fullwidth Latin is Latin; halfwidth katakana, 々 and the CJK
        // extensions are CJK.
        assert_eq!(script_of("ｃａｒｇｏ　ｂｕｉｌｄ"), Some(Script::Latin));
        assert_eq!(question_script_of("ｶﾀｶﾅ"), Some(Script::Cjk));
        assert_eq!(question_script_of("時々"), Some(Script::Cjk));
        assert_eq!(question_script_of("𠀋𠀋"), Some(Script::Cjk));
        // A passage is foreign from a lower share: translations keep code.
        let quoted = format!(
            "{} Здравствуйте",
            "Let us slice a string of bytes. ".repeat(10)
        );
        assert_eq!(script_of(&quoted), Some(Script::Latin));
    }

    #[test]
    fn only_two_known_and_different_systems_differ() {
        assert!(differs(Some(Script::Latin), Some(Script::Cjk)));
        assert!(!differs(Some(Script::Latin), Some(Script::Latin)));
        assert!(!differs(None, Some(Script::Cjk)));
        assert!(!differs(Some(Script::Cjk), None));
    }

    fn hit(id: &str, score: f64, text: Option<&str>) -> VectorHit {
        let mut metadata = Metadata::new();
        if let Some(text) = text {
            metadata.insert("text".to_owned(), MetaValue::Str(text.to_owned()));
        }
        VectorHit {
            id: id.to_owned(),
            score,
            vector_score: Some(score),
            keyword_score: None,
            metadata,
        }
    }

    fn ids(hits: &[VectorHit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn a_passage_in_another_system_falls_behind_a_close_one_in_the_questions() {
        let ja = "所有権とは何ですか。所有権はメモリを管理する仕組みです。";
        let hits = vec![
            hit("ja", 0.60, Some(ja)),
            hit("en", 0.55, Some("Ownership is how Rust manages memory.")),
            hit("symbols", 0.50, Some("{ } ( )")),
            hit("no-text", 0.40, None),
        ];
        let all = |_: f64| true;
        let english = adjust(question_script_of("what is ownership?"), hits.clone(), all);
        assert_eq!(ids(&english), ["en", "symbols", "ja", "no-text"]);
        let ja_hit = english.iter().find(|h| h.id == "ja").unwrap();
        assert!((ja_hit.score - 0.60 * OTHER_SCRIPT_FACTOR).abs() < 1e-12);
        assert_eq!(ja_hit.vector_score, Some(0.60), "the leg's own relevance");
        assert_eq!(
            english[0].score, 0.55,
            "the question's own system keeps its score"
        );

        // Asked in Japanese, the English passage is the one that yields.
        let japanese = adjust(question_script_of("所有権とは何ですか"), hits.clone(), all);
        assert_eq!(ids(&japanese), ["ja", "symbols", "en", "no-text"]);

        // A question without letters changes nothing.
        assert_eq!(
            adjust(question_script_of("404 ::<>"), hits.clone(), all),
            hits
        );
        assert_eq!(
            ids(&adjust(None, hits.clone(), all)),
            ["ja", "en", "symbols", "no-text"]
        );

        // The English passage scores under the floor: nothing yields to it.
        let floor = |score: f64| score >= 0.56;
        assert_eq!(
            adjust(
                question_script_of("what is ownership?"),
                hits.clone(),
                floor
            ),
            hits
        );
        let floor = |score: f64| score >= 0.55;
        assert_eq!(
            ids(&adjust(
                question_script_of("what is ownership?"),
                hits,
                floor
            )),
            ["en", "symbols", "ja", "no-text"]
        );
    }

    #[test]
    fn without_a_passage_in_the_questions_system_nothing_changes() {
        let hits = vec![
            hit("en0", 0.5, Some("Ownership is how Rust manages memory.")),
            hit(
                "en1",
                0.4,
                Some("Borrowing lends a value without moving it."),
            ),
            hit("symbols", 0.3, Some("&mut T")),
        ];
        assert_eq!(
            adjust(
                question_script_of("所有権とは何ですか"),
                hits.clone(),
                |_| true
            ),
            hits
        );
    }

    #[test]
    fn a_much_better_passage_in_another_system_stays_ahead() {
        let hits = vec![
            hit(
                "ja",
                0.90,
                Some("所有権とは何ですか。所有権はメモリを管理する仕組みです。"),
            ),
            hit("en", 0.30, Some("A weak English match.")),
        ];
        let ranked = adjust(Some(Script::Latin), hits, |_| true);
        assert_eq!(ids(&ranked), ["ja", "en"]);
    }
}
