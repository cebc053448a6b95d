//! The draft length of each round: fixed, or chosen from measurements (`auto`).
//!
//! `auto` models a round of k drafts as taking `(k + 1) * t_draft + a + b * k` seconds (the
//! shadow forwards, then a verification whose fixed part `a` holds the round trip and whose
//! part `b` grows with the rows) and yielding `(1 - α^(k+1)) / (1 - α)` tokens, with `α` the
//! running acceptance rate of a draft. It takes the k that gives the most tokens per
//! second, or 0 (a plain attached step, measured too) when no k beats plain. After
//! [`PROBE_EVERY`] plain steps in a row it drafts one short round again, so a prompt where
//! the shadow starts agreeing is noticed.
//!
//! Drafts that may fail are a risk `auto` bounds: a round drafts no more than what failing
//! drafts may cost within [`RISK`] of the plain time of the answer so far (counted as at least
//! [`MIN_ANSWER`] tokens), plus what earlier rounds of the answer saved. So an answer the shadow cannot draft is at
//! most about that much slower than plain, on a fast link too, while drafts that stand bank
//! savings that buy longer drafts.
//!
//! Drafts also stop early when the chance that the next draft stands (the product of the
//! shadow's top probabilities over the round's drafts) falls below a floor, as llama.cpp's
//! draft p-min does. The floor is the cost of a draft row against the time a plain token
//! takes, between [`P_MIN_LOW`] and [`P_MIN`]: on a slow link a draft is cheap against
//! what it may save, so even unsure drafts are worth making.

/// Longest draft `auto` takes.
pub const AUTO_MAX: usize = 8;
/// Draft length of `auto`'s first round, before anything is measured (the prompt's round).
pub const AUTO_START: usize = 4;
/// The highest floor on a draft's chance of standing (llama.cpp's default draft p-min).
pub const P_MIN: f32 = 0.75;
/// The lowest floor.
pub const P_MIN_LOW: f32 = 0.05;
/// The floor before anything is measured.
pub const P_MIN_START: f32 = 0.3;
/// Plain steps in a row after which `auto` probes with a short round.
pub const PROBE_EVERY: usize = 16;
/// The probe's draft length.
pub const PROBE_DRAFT: usize = 2;
/// The share of an answer's plain time that failing drafts may cost it.
pub const RISK: f64 = 0.04;
/// The fewest tokens an answer is counted as when sizing that risk (so its first round may
/// risk `RISK * MIN_ANSWER` plain steps: a long first draft on a slow link, where a draft
/// costs little against a plain step).
pub const MIN_ANSWER: f64 = 16.0;
/// How much each new measurement weighs against the earlier ones.
const DECAY: f64 = 0.8;
/// The same for the acceptance counts, which vary more from round to round.
const ACCEPT_DECAY: f64 = 0.9;
/// The prior acceptance rate, and its weight in drafts.
const PRIOR_ACCEPTANCE: f64 = 0.75;
const PRIOR_WEIGHT: f64 = 0.25;

/// Chooses the draft length of the next round from what earlier ones cost and kept.
#[derive(Debug, Clone)]
pub struct DraftLength {
    fixed: Option<usize>,
    /// Seconds per shadow forward while drafting.
    t_draft: Option<f64>,
    /// Seconds per plain attached step.
    t_plain: Option<f64>,
    /// Decayed sums of the verification's (drafts, seconds) for the fit `a + b * drafts`.
    s0: f64,
    sx: f64,
    sxx: f64,
    sy: f64,
    sxy: f64,
    /// Decayed counts of drafts that stood and of rejections.
    accepted: f64,
    rejected: f64,
    plain_run: usize,
    /// Tokens decided in this generation, and the seconds its rounds saved against plain
    /// steps (negative when drafts failed).
    decided: f64,
    saved: f64,
}

impl DraftLength {
    /// Always `k` drafts (0: plain steps).
    pub fn fixed(k: usize) -> Self {
        DraftLength {
            fixed: Some(k),
            ..Self::auto()
        }
    }

    /// The length the measurements favour.
    pub fn auto() -> Self {
        DraftLength {
            fixed: None,
            t_draft: None,
            t_plain: None,
            s0: 0.0,
            sx: 0.0,
            sxx: 0.0,
            sy: 0.0,
            sxy: 0.0,
            accepted: 0.0,
            rejected: 0.0,
            plain_run: 0,
            decided: 0.0,
            saved: 0.0,
        }
    }

    /// What a later generation over the same link starts from: the measured costs, with the
    /// acceptance back at its prior (the next prompt may draft well or not at all).
    pub fn carried(&self) -> Self {
        DraftLength {
            accepted: 0.0,
            rejected: 0.0,
            plain_run: 0,
            decided: 0.0,
            saved: 0.0,
            ..self.clone()
        }
    }

    /// Whether this is `auto` (the fixed lengths learn nothing).
    pub fn is_auto(&self) -> bool {
        self.fixed.is_none()
    }

    /// The floor on the chance that the next draft stands, below which a round stops
    /// drafting (only `auto` stops drafts early).
    pub fn p_min(&self) -> Option<f32> {
        if self.fixed.is_some() {
            return None;
        }
        let Some(t_draft) = self.t_draft else {
            return Some(P_MIN_START);
        };
        let (a, b) = self.verify_fit(t_draft);
        let t_plain = self.t_plain.unwrap_or(t_draft + a);
        Some((((t_draft + b) / t_plain) as f32).clamp(P_MIN_LOW, P_MIN))
    }

    /// The running acceptance rate of a draft (from [`PRIOR_ACCEPTANCE`] before any round).
    pub fn acceptance(&self) -> f64 {
        (self.accepted + PRIOR_ACCEPTANCE * PRIOR_WEIGHT)
            / (self.accepted + self.rejected + PRIOR_WEIGHT)
    }

    /// The draft length of the next round; 0 means a plain attached step.
    pub fn choose(&mut self) -> usize {
        if let Some(k) = self.fixed {
            return k;
        }
        let Some(t_draft) = self.t_draft else {
            // No costs yet (the prompt's round records none): a full first draft, or after
            // one that failed, a single draft that measures the costs cheaply.
            return if self.acceptance() < 0.5 {
                1
            } else {
                AUTO_START
            };
        };
        let (a, b) = self.verify_fit(t_draft);
        let alpha = self.acceptance().min(0.999);
        let t_plain = self.t_plain.unwrap_or(t_draft + a);
        let (mut best, mut best_rate) = (0, 1.0 / t_plain);
        for k in 1..=AUTO_MAX {
            let tokens = (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha);
            let secs = (k + 1) as f64 * t_draft + a + b * k as f64;
            if tokens / secs > best_rate {
                (best, best_rate) = (k, tokens / secs);
            }
        }
        // What failing drafts may cost this answer (see the module's notes).
        let budget = RISK * t_plain * (self.decided + 1.0).max(MIN_ANSWER) + self.saved;
        let cap = (budget / (t_draft + b)).floor().max(0.0) as usize;
        if best > 0 && cap > 0 {
            self.plain_run = 0;
            return best.min(cap);
        }
        self.plain_run += 1;
        if self.plain_run > PROBE_EVERY && cap > 0 {
            self.plain_run = 0;
            return PROBE_DRAFT.min(cap);
        }
        0
    }

    /// How many tokens to draft ahead while the verification of a round of `k` drafts is
    /// in flight (the next round's token and its drafts): a fixed length's next round, or
    /// room for `auto`'s to grow by one.
    pub fn ahead(&self, k: usize) -> usize {
        match self.fixed {
            Some(f) => f + 1,
            None => (k + 1).min(AUTO_MAX) + 1,
        }
    }

    /// Records a round: `drafted` drafts of which `accepted` stood, `forwards` shadow
    /// forwards taking `draft_secs` (none when its drafts were made ahead), and a
    /// verification taking `verify_secs`.
    pub fn record_round(
        &mut self,
        drafted: usize,
        accepted: usize,
        forwards: usize,
        draft_secs: f64,
        verify_secs: f64,
    ) {
        if forwards > 0 {
            self.t_draft = Some(ema(self.t_draft, draft_secs / forwards as f64));
        }
        let (x, y) = (drafted as f64, verify_secs);
        for (s, v) in [
            (&mut self.s0, 1.0),
            (&mut self.sx, x),
            (&mut self.sxx, x * x),
            (&mut self.sy, y),
            (&mut self.sxy, x * y),
        ] {
            *s = *s * DECAY + v;
        }
        self.record_acceptance(drafted, accepted);
    }

    /// Counts a round's tokens, and what it saved against plain steps: the steps its drafts
    /// spared, less what drafting and verifying them cost.
    fn count_round(&mut self, drafted: usize, accepted: usize) {
        self.decided += (accepted + 1) as f64;
        if let Some(t_draft) = self.t_draft {
            let (a, b) = self.verify_fit(t_draft);
            let t_plain = self.t_plain.unwrap_or(t_draft + a);
            self.saved += accepted as f64 * t_plain - drafted as f64 * (t_draft + b);
        }
    }

    /// Records how many of `drafted` drafts stood, without costs (the prompt's round, whose
    /// verification also runs the prompt).
    pub fn record_acceptance(&mut self, drafted: usize, accepted: usize) {
        self.count_round(drafted, accepted);
        self.accepted = self.accepted * ACCEPT_DECAY + accepted as f64;
        self.rejected = self.rejected * ACCEPT_DECAY + (accepted < drafted) as u8 as f64;
    }

    /// Records a plain attached step of `secs`.
    pub fn record_plain(&mut self, secs: f64) {
        self.decided += 1.0;
        self.t_plain = Some(ema(self.t_plain, secs));
    }

    /// The verification's fixed cost and cost per draft row: least squares over the decayed
    /// rounds, its slope pulled towards one draft forward per row when the rounds' lengths
    /// barely vary.
    fn verify_fit(&self, t_draft: f64) -> (f64, f64) {
        const SLOPE_WEIGHT: f64 = 0.5;
        let mean_x = self.sx / self.s0;
        let mean_y = self.sy / self.s0;
        let var = self.sxx - self.sx * mean_x;
        let cov = self.sxy - self.sx * mean_y;
        let b = ((cov + SLOPE_WEIGHT * t_draft) / (var + SLOPE_WEIGHT)).max(0.0);
        let a = (mean_y - b * mean_x).max(0.0);
        (a, b)
    }
}

fn ema(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o * DECAY + new * (1.0 - DECAY),
        None => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rounds` rounds of k drafts on a link of `rtt` seconds, with drafts costing
    /// `t_draft`, rows `row`, and `acc` of each round's drafts standing.
    fn feed(d: &mut DraftLength, rounds: usize, rtt: f64, t_draft: f64, row: f64, acc: f64) {
        for i in 0..rounds {
            let k = 2 + i % 4;
            let accepted = ((k as f64) * acc).round() as usize;
            d.record_round(
                k,
                accepted,
                k + 1,
                (k + 1) as f64 * t_draft,
                rtt + row * (k + 1) as f64,
            );
        }
    }

    #[test]
    fn carried_costs_start_the_next_generation_long() {
        let mut d = DraftLength::auto();
        feed(&mut d, 12, 0.05, 0.004, 0.001, 0.0);
        let mut next = d.carried();
        // Costs kept, acceptance back at the prior: longer than the blind first draft.
        assert!(next.choose() > AUTO_START, "{}", next.choose());
        assert_eq!(next.acceptance(), DraftLength::auto().acceptance());
    }

    #[test]
    fn fixed_is_fixed() {
        let mut d = DraftLength::fixed(3);
        feed(&mut d, 10, 0.0, 1.0, 1.0, 0.0);
        assert_eq!(d.choose(), 3);
        assert_eq!(d.p_min(), None);
    }

    #[test]
    fn slow_links_and_agreeing_drafts_draft_long() {
        let mut d = DraftLength::auto();
        assert_eq!(d.choose(), AUTO_START);
        feed(&mut d, 12, 0.05, 0.004, 0.001, 1.0);
        assert!(
            d.choose() >= 6,
            "50 ms round trips, every draft stands: {}",
            d.choose()
        );
        let p = d.p_min().unwrap();
        assert!(p < 0.15, "a slow link drafts even unsure tokens: p-min {p}");
        let (a, b) = d.verify_fit(0.004);
        assert!(
            (a - 0.051).abs() < 0.002 && (b - 0.001).abs() < 5e-4,
            "fit {a} {b}"
        );
    }

    #[test]
    fn rejected_drafts_on_a_fast_link_fall_back_to_plain_and_probe() {
        let mut d = DraftLength::auto();
        feed(&mut d, 12, 0.0, 0.004, 0.004, 0.0);
        d.record_plain(0.008);
        // A new answer (what this one lost no longer counts against it).
        let mut d = d.carried();
        feed(&mut d, 4, 0.0, 0.004, 0.004, 0.0);
        let mut d = d.carried();
        let mut ks = Vec::new();
        while ks.len() < 4 * PROBE_EVERY && ks.last().is_none_or(|&k| k == 0) {
            let k = d.choose();
            ks.push(k);
            if k == 0 {
                d.record_plain(0.008);
            }
        }
        // At least PROBE_EVERY plain steps, then a probe once the answer's budget pays for a
        // draft (a draft costs as much as a plain step here).
        let probe = ks.len() - 1;
        assert!(
            ks[probe] >= 1 && (PROBE_EVERY..2 * PROBE_EVERY).contains(&probe),
            "a probe after {PROBE_EVERY} plain steps or a few more: {ks:?}"
        );
        let p = d.p_min().unwrap();
        assert!(p > 0.7, "a fast link drafts only sure tokens: p-min {p}");
    }

    #[test]
    fn failing_drafts_may_cost_an_answer_little() {
        // Costs of a fast link carried from an earlier answer: a draft costs half a plain
        // step, so a new answer starts plain, however well drafts went before.
        let mut d = DraftLength::auto();
        feed(&mut d, 12, 0.0, 0.003, 0.003, 1.0);
        d.record_plain(0.008);
        let mut next = d.carried();
        assert_eq!(
            next.choose(),
            0,
            "the first round of an answer on a fast link"
        );
        // Plain tokens widen the budget; drafts that stand bank what they save.
        for _ in 0..24 {
            next.record_plain(0.008);
        }
        let k = next.choose();
        assert!(k >= 1, "{k}");
        let budget = |d: &DraftLength| RISK * 0.008 * (d.decided + 1.0).max(MIN_ANSWER) + d.saved;
        let before = budget(&next);
        next.record_round(k, k, k + 1, 0.003 * (k + 1) as f64, 0.003 * (k + 1) as f64);
        assert!(
            budget(&next) > before + 0.001,
            "drafts that stood bank savings"
        );
        // A slow link: drafts are cheap against a plain step, the first round drafts long.
        let mut d = DraftLength::auto();
        feed(&mut d, 12, 0.05, 0.004, 0.001, 1.0);
        assert!(
            d.carried().choose() >= AUTO_START,
            "{}",
            d.carried().choose()
        );
    }

    #[test]
    fn acceptance_follows_recent_rounds() {
        let mut d = DraftLength::auto();
        feed(&mut d, 20, 0.02, 0.004, 0.001, 0.0);
        assert!(d.acceptance() < 0.2, "{}", d.acceptance());
        feed(&mut d, 20, 0.02, 0.004, 0.001, 1.0);
        assert!(d.acceptance() > 0.9, "{}", d.acceptance());
    }
}
