//! A deterministic local embedder: hashed word and character n-grams.

use std::future::Future;

use super::embedder::{EmbedError, Embedder};

/// A local embedder that needs no network and no model files: the features
/// of a text (its words, word pairs and the character trigrams of each word)
/// are hashed into `dimensions` buckets with a random sign (the "hashing
/// trick"), and the vector is L2-normalised.
///
/// Texts that share words, or spellings of them (`programare` and
/// `programări`), land near each other under cosine similarity; it knows no
/// synonyms and no translation. Text is lower-cased and common Latin
/// diacritics are folded (`ș` → `s`, `é` → `e`) first, so Romanian written
/// with or without diacritics matches. The same input gives the same vector
/// on every machine and release (the hash is FNV-1a, not the standard
/// library's), which is what examples, tests and offline use need.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use annals::knowledge::{cosine_similarity, Embedder, HashingEmbedder};
///
/// let e = HashingEmbedder::new(384);
/// let v = e.embed(&["When is the clinic open?", "clinic opening hours", "parking fees"]).await?;
/// assert!(cosine_similarity(&v[0], &v[1]) > cosine_similarity(&v[0], &v[2]));
/// # Ok::<(), annals::knowledge::EmbedError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimensions: usize,
    seed: u64,
    model: String,
}

/// Weight of a whole word.
const WORD: f32 = 1.0;
/// Weight of two consecutive words.
const BIGRAM: f32 = 0.7;
/// Weight of each character trigram of a word (a word of n characters has
/// n trigrams, counting the boundary markers).
const TRIGRAM: f32 = 0.35;

impl HashingEmbedder {
    /// An embedder of `dimensions` dimensions (at least 1), model name
    /// `annals-hashing-v1-{dimensions}`.
    pub fn new(dimensions: usize) -> Self {
        let dimensions = dimensions.max(1);
        HashingEmbedder {
            dimensions,
            seed: 0,
            model: format!("annals-hashing-v1-{dimensions}"),
        }
    }

    /// The same embedder with another hash seed: different vectors and the
    /// model name `annals-hashing-v1-{dimensions}-s{seed}` (seed 0 is the
    /// default model). Handy for trying a model change offline.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.model = if seed == 0 {
            format!("annals-hashing-v1-{}", self.dimensions)
        } else {
            format!("annals-hashing-v1-{}-s{seed}", self.dimensions)
        };
        self
    }

    /// Embeds one text (what [`Embedder::embed`] does for each).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimensions];
        let words = words(text);
        for (i, w) in words.iter().enumerate() {
            self.add(&mut v, fnv(self.seed ^ 0x5745_4f52, w.chars()), WORD);
            if let Some(next) = words.get(i + 1) {
                let pair = w.chars().chain(std::iter::once(' ')).chain(next.chars());
                self.add(&mut v, fnv(self.seed ^ 0x4249_4752, pair), BIGRAM);
            }
            let marked: Vec<char> = std::iter::once('#')
                .chain(w.chars())
                .chain(std::iter::once('#'))
                .collect();
            for tri in marked.windows(3) {
                self.add(
                    &mut v,
                    fnv(self.seed ^ 0x5452_4947, tri.iter().copied()),
                    TRIGRAM,
                );
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        } else {
            // no words at all: one fixed direction, so the vector stays a
            // unit vector (a zero vector has no cosine similarity)
            let h = fnv(self.seed, "".chars());
            v[(h % self.dimensions as u64) as usize] = 1.0;
        }
        v
    }

    fn add(&self, v: &mut [f32], hash: u64, weight: f32) {
        let i = (hash % self.dimensions as u64) as usize;
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        v[i] += sign * weight;
    }
}

impl Embedder for HashingEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        let out = texts.iter().map(|t| self.embed_one(t)).collect();
        if !texts.is_empty() {
            crate::metrics::record_embedder_call(&self.model, texts.len());
        }
        std::future::ready(Ok(out))
    }
}

/// Cosine similarity of two vectors (0 when either is zero or their lengths
/// differ).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Lower-cased, diacritic-folded words of `text` (runs of letters and
/// digits).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                current.push(fold(l));
            }
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Folds common Latin diacritics to their base letter (lower case input).
fn fold(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ă' | 'ā' | 'ą' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'ď' => 'd',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
        'ł' => 'l',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
        'ř' => 'r',
        'ș' | 'ş' | 'ś' | 'š' => 's',
        'ț' | 'ţ' | 'ť' => 't',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => 'u',
        'ý' | 'ÿ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        'ß' => 's',
        other => other,
    }
}

/// FNV-1a over the UTF-32 code points of `chars`, seeded; the result is
/// finished with a 64-bit mix so the low bits (the bucket) and the top bit
/// (the sign) are independent.
fn fnv(seed: u64, chars: impl Iterator<Item = char>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for c in chars {
        for b in (c as u32).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let e = HashingEmbedder::new(128);
        for text in ["", "  ", "Programări online", "a b c d e f g"] {
            let v = e.embed_one(text);
            assert_eq!(v.len(), 128);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{text:?}: {norm}");
            assert_eq!(v, e.embed_one(text));
        }
        // pinned: the same on every machine and release
        let v = HashingEmbedder::new(8).embed_one("hello world");
        let rounded: Vec<i32> = v.iter().map(|x| (x * 1000.0).round() as i32).collect();
        assert_eq!(rounded, vec![222, 222, -634, 634, 222, 0, 0, 222]);
    }

    #[test]
    fn similar_texts_are_near_and_diacritics_fold() {
        let e = HashingEmbedder::new(384);
        let q = e.embed_one("Care este programul clinicii?");
        let close = e.embed_one("Programul clinicii este de luni până vineri");
        let far = e.embed_one("Parcarea costă 5 lei pe oră");
        assert!(cosine_similarity(&q, &close) > cosine_similarity(&q, &far) + 0.1);
        let with = e.embed_one("ședință de albire");
        let without = e.embed_one("sedinta de albire");
        assert!(cosine_similarity(&with, &without) > 0.99);
    }

    #[test]
    fn seeds_are_other_models() {
        let a = HashingEmbedder::new(64);
        let b = HashingEmbedder::new(64).with_seed(7);
        assert_ne!(a.model(), b.model());
        assert_ne!(a.embed_one("x y"), b.embed_one("x y"));
        assert_eq!(a.model(), HashingEmbedder::new(64).with_seed(0).model());
    }
}
