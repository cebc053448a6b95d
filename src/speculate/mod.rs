//! Speculative decoding: the detached shadow drafts k tokens on its own KV cache, the attached
//! model checks the k + 1 new rows in one base pass (one round trip against a backbone), and
//! every cache is rolled back past the first draft that did not stand.
//!
//! The shadow never reads the base, so the shadow states computed while drafting are exactly
//! the ones an attached pass over those tokens needs, and a cache truncated to position p is
//! exactly the cache of the first p tokens: greedy rounds give the tokens of plain attached
//! decoding, and sampled rounds its distribution. [`accept`] holds the acceptance rule,
//! [`round`] one round over a session, [`length`] the choice of the draft length. The token
//! loop ([`crate::generate`]) runs the rounds.

pub mod accept;
pub mod length;
pub mod round;

pub use accept::{accept_greedy, accept_sampled, Verdict};
pub use length::DraftLength;
pub use round::{round, Ahead, Round, RoundPlan};
