//! Session batches: the sessions one sync sent for one product, stored as one row of
//! `session_batches`.
//!
//! Why: a row per session cost the writer about a third of its instructions per session
//! (measured with callgrind, sync_load 50x50: ~4,400 of ~13,500), nearly all of it
//! SQLite's work per row — binding, building the record, inserting the cell — not the
//! bytes. A batch holds up to [`BATCH_MAX`] sessions, so a 50-session sync writes a few
//! rows instead of fifty.
//!
//! A session is still numbered on its own: the batch's `first_row` is the number of its
//! first session, the next ones follow (as `ledger_batches` numbers its entries). The
//! numbers are what `session_runs` and the writer's index of ids name, and the view
//! `sessions` shows one row per session under its number.
//!
//! `bodies` is a JSON array of the sessions exactly as received; `ends` says where each
//! one ends in it (byte offsets, 4 bytes each, big-endian), so that one session is
//! sliced out without parsing the others. Rewriting a session (a longer copy) rewrites
//! its batch, which is why batches are kept small.

/// Most sessions in one batch: a longer copy of one of them rewrites them all.
pub const BATCH_MAX: usize = 32;

/// The sessions of one batch, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `[body,body,…]`, the bodies as received (`[]` when empty).
    bodies: String,
    /// Where each body ends in `bodies` (exclusive), big-endian u32.
    ends: Vec<u8>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

/// A batch whose `ends` do not describe its `bodies`.
#[derive(Debug, thiserror::Error)]
#[error("session batch is malformed: {0}")]
pub struct Malformed(&'static str);

impl Batch {
    pub fn new() -> Batch {
        Batch {
            bodies: String::from("[]"),
            ends: Vec::new(),
        }
    }

    /// A stored batch, checked: every offset in range, on a character boundary and
    /// after the one before it.
    pub fn from_stored(bodies: String, ends: Vec<u8>) -> Result<Batch, Malformed> {
        if !ends.len().is_multiple_of(4) {
            return Err(Malformed("offsets are not whole"));
        }
        if !bodies.starts_with('[') || !bodies.ends_with(']') {
            return Err(Malformed("bodies are not an array"));
        }
        let batch = Batch { bodies, ends };
        let mut start = 1;
        for i in 0..batch.len() {
            let end = batch.end(i);
            if end < start || end >= batch.bodies.len() || !batch.bodies.is_char_boundary(end) {
                return Err(Malformed("offset out of order or out of range"));
            }
            start = end + 1;
        }
        Ok(batch)
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn end(&self, i: usize) -> usize {
        let b = &self.ends[4 * i..4 * i + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 1 } else { self.end(i - 1) + 1 }
    }

    /// The `i`-th body, as received.
    pub fn get(&self, i: usize) -> Option<&str> {
        (i < self.len()).then(|| &self.bodies[self.start(i)..self.end(i)])
    }

    /// The body of session `row`, in a batch whose first session is `first`.
    pub fn session(&self, first: i64, row: i64) -> Option<&str> {
        self.get(usize::try_from(row.checked_sub(first)?).ok()?)
    }

    /// Every body, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| &self.bodies[self.start(i)..self.end(i)])
    }

    /// Appends a body (a JSON value).
    pub fn push(&mut self, body: &str) {
        self.bodies.pop(); // the closing `]`
        if !self.is_empty() {
            self.bodies.push(',');
        }
        self.bodies.push_str(body);
        self.ends
            .extend_from_slice(&(self.bodies.len() as u32).to_be_bytes());
        self.bodies.push(']');
    }

    /// Replaces the `i`-th body; false if there is none.
    pub fn replace(&mut self, i: usize, body: &str) -> bool {
        if i >= self.len() {
            return false;
        }
        let (start, end) = (self.start(i), self.end(i));
        self.bodies.replace_range(start..end, body);
        let shift = body.len() as i64 - (end - start) as i64;
        for j in i..self.len() {
            let moved = (self.end(j) as i64 + shift) as u32;
            self.ends[4 * j..4 * j + 4].copy_from_slice(&moved.to_be_bytes());
        }
        true
    }

    /// The `bodies` column.
    pub fn bodies(&self) -> &str {
        &self.bodies
    }

    /// The `ends` column.
    pub fn ends(&self) -> &[u8] {
        &self.ends
    }

    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.bodies.clear();
        self.bodies.push_str("[]");
        self.ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(b: &Batch) -> Vec<serde_json::Value> {
        serde_json::from_str(b.bodies()).unwrap()
    }

    #[test]
    fn bodies_are_a_json_array_of_what_was_pushed_and_each_is_sliced_back_as_pushed() {
        let mut b = Batch::new();
        assert_eq!(b.bodies(), "[]");
        let bodies = [
            r#"{"id":"a"}"#,
            "{ \"id\" : \"é\",\n \"x\": [1, 2] }",
            r#"{"id":"c"}"#,
        ];
        for body in bodies {
            b.push(body);
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.iter().collect::<Vec<_>>(), bodies);
        assert_eq!(parsed(&b).len(), 3);
        assert_eq!(b.get(1), Some(bodies[1]));
        assert_eq!(b.get(3), None);
        let again = Batch::from_stored(b.bodies().to_owned(), b.ends().to_vec()).unwrap();
        assert_eq!(again, b);
    }

    #[test]
    fn a_replaced_body_moves_the_ones_after_it() {
        let mut b = Batch::new();
        for body in [r#"{"id":"a"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#] {
            b.push(body);
        }
        assert!(b.replace(1, r#"{"id":"b","end":"longer"}"#));
        assert!(b.replace(0, "{}"));
        assert!(!b.replace(3, "{}"));
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            ["{}", r#"{"id":"b","end":"longer"}"#, r#"{"id":"c"}"#]
        );
        assert_eq!(parsed(&b).len(), 3);
        Batch::from_stored(b.bodies().to_owned(), b.ends().to_vec()).unwrap();
    }

    #[test]
    fn offsets_that_do_not_fit_the_bodies_are_refused() {
        let mut b = Batch::new();
        b.push(r#"{"id":"a"}"#);
        let ends = b.ends().to_vec();
        assert!(Batch::from_stored(b.bodies().to_owned(), ends[..3].to_vec()).is_err());
        assert!(Batch::from_stored("{}".into(), ends.clone()).is_err());
        assert!(Batch::from_stored("[{}]".into(), ends).is_err());
        let mut twice = b.ends().to_vec();
        twice.extend_from_slice(&1u32.to_be_bytes());
        assert!(Batch::from_stored(b.bodies().to_owned(), twice).is_err());
    }

    proptest::proptest! {
        /// Any pushes and replacements: the batch holds what a list would, its bodies are
        /// that list as a JSON array, and it reads back whole from its two columns.
        #[test]
        fn a_batch_holds_what_was_pushed_and_replaced(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, 0usize..40, "[a-zé \"\\\\]{0,20}"),
                0..60,
            ),
        ) {
            let mut batch = Batch::new();
            let mut model: Vec<String> = Vec::new();
            for (push, at, text) in ops {
                let body = serde_json::to_string(&serde_json::json!({ "t": text })).unwrap();
                if push || model.is_empty() {
                    batch.push(&body);
                    model.push(body);
                } else {
                    let at = at % model.len();
                    proptest::prop_assert!(batch.replace(at, &body));
                    model[at] = body;
                }
            }
            proptest::prop_assert_eq!(batch.iter().collect::<Vec<_>>(), model.iter().map(String::as_str).collect::<Vec<_>>());
            let values: Vec<serde_json::Value> = serde_json::from_str(batch.bodies()).unwrap();
            proptest::prop_assert_eq!(values.len(), model.len());
            let again = Batch::from_stored(batch.bodies().to_owned(), batch.ends().to_vec()).unwrap();
            proptest::prop_assert_eq!(again, batch);
        }
    }

    #[test]
    fn cleared_batch_starts_again_empty() {
        let mut b = Batch::new();
        b.push("{}");
        b.clear();
        assert!(b.is_empty());
        b.push("[1]");
        assert_eq!(b.bodies(), "[[1]]");
        assert_eq!(b.get(0), Some("[1]"));
    }
}
