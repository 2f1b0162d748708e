//! `aioka-bench account`: "nothing lost, nothing unexpected" by sets, from the accepted event
//! ids, the receiver's records and the delivery log.
//!
//! * expected = accepted events × webhooks, as delivery ids (`DeliveryId::for_pair`), less
//!   the pairs legitimately not sent because their webhook was disabled: the log shows the
//!   delivery skipped for that reason, or (fan-out walks only active webhooks) there is no
//!   delivery row, the receiver never saw it, and the webhook was disabled before the
//!   event's fan-out ended; in both cases the webhook must be disabled now;
//! * delivered = the distinct delivery ids the receiver saw, whatever it answered;
//! * lost = expected − delivered − unreached, unexpected = delivered − (accepted × webhooks);
//! * unreached = expected pairs the receiver never saw whose log ends them failed after
//!   attempts that all failed in transport (no HTTP status: a timeout, a refused or reset
//!   connection, a TLS failure): the platform tried and says so in the log; the receiver was
//!   unreachable (on a starved box, a stalled receiver). Reported with its error kinds, not
//!   a failure. Each lost pair is shown with what the log says of it.
//!
//! For every delivery it also checks the attempt numbers (1..=max, from the records and the
//! log), that the log ended it (succeeded, failed, or skipped because disabled; never
//! pending, never missing), that its retry chain did not fork (two or more attempt numbers
//! each seen more than once: a crash may repeat the one attempt in flight, a fork repeats a
//! whole series), and for every webhook that its failure count and state are what its
//! recorded attempts imply, taken in attempt-time order, and that the log calls no delivery
//! succeeded that the receiver never answered 200. Prints one JSON object; exits 1 when
//! any set is non-empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_store::{
    AttemptAudit, DatabaseSettings, DeliveryAudit, DeliveryStatus, EventAudit, Store, WebhookAudit,
};
use anyhow::Context;
use serde_json::{Value, json};

use crate::receiver::Record;

/// The reason the delivery service records when it skips a task of a disabled webhook.
const DISABLED_REASON: &str = "webhook disabled";
/// How many members of a non-empty set the output shows.
const SAMPLE: usize = 5;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, env = "AIOKA__DATABASE__URL")]
    database_url: String,
    /// The accepted event ids, one a line (`aioka-bench publish --accepted-file`).
    #[arg(long)]
    accepted: PathBuf,
    /// The receiver's records, JSON lines (`GET /records`).
    #[arg(long)]
    records: PathBuf,
    /// Attempts per delivery: 1 + the retry schedule's length.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    /// `delivery.disable_after`: consecutive failures that disable a webhook.
    #[arg(long, default_value_t = 10)]
    disable_after: u32,
}

/// Everything the accounting reads.
pub struct Input {
    pub accepted: Vec<EventId>,
    pub records: Vec<Record>,
    pub webhooks: Vec<WebhookAudit>,
    pub events: Vec<EventAudit>,
    pub deliveries: Vec<DeliveryAudit>,
    /// Per webhook, in (attempted_at, delivery, attempt) order.
    pub attempts: Vec<AttemptAudit>,
    pub max_attempts: u32,
    pub disable_after: u32,
}

/// The sets, as sorted samples and sizes.
#[derive(Debug, Default)]
pub struct Accounting {
    pub accepted: usize,
    pub duplicate_accepted: usize,
    pub webhooks: usize,
    /// Webhooks inactive at the end of the run.
    pub disabled_webhooks: usize,
    pub pairs: usize,
    pub skipped_disabled: usize,
    pub not_fanned_out_disabled: usize,
    pub expected: usize,
    pub delivered: usize,
    pub requests: usize,
    pub lost: Vec<String>,
    /// Expected, never seen, and ended failed in the log after transport failures only.
    pub unreached: Vec<String>,
    /// The transport error kinds of the unreached deliveries' attempts, with their counts.
    pub unreached_errors: BTreeMap<String, usize>,
    pub unexpected: Vec<String>,
    pub duplicates: usize,
    pub bad_signatures: usize,
    pub bad_attempts: Vec<String>,
    pub unfinished: Vec<String>,
    pub forks: Vec<String>,
    pub miscounted: Vec<String>,
    /// Deliveries the log calls succeeded that the receiver never answered 200.
    pub false_successes: Vec<String>,
    pub statuses: BTreeMap<String, usize>,
}

impl Accounting {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.bad_signatures == 0
            && self.bad_attempts.is_empty()
            && self.unfinished.is_empty()
            && self.forks.is_empty()
            && self.miscounted.is_empty()
            && self.false_successes.is_empty()
            && self.duplicate_accepted == 0
            && self.accepted > 0
    }

    pub fn to_json(&self) -> Value {
        let sample = |v: &[String]| v.iter().take(SAMPLE).cloned().collect::<Vec<_>>();
        json!({
            "accepted": self.accepted,
            "duplicate_accepted": self.duplicate_accepted,
            "webhooks": self.webhooks,
            "disabled_webhooks": self.disabled_webhooks,
            "pairs": self.pairs,
            "skipped_disabled": self.skipped_disabled,
            "not_fanned_out_disabled": self.not_fanned_out_disabled,
            "expected": self.expected,
            "delivered": self.delivered,
            "requests": self.requests,
            "lost": self.lost.len(),
            "lost_sample": sample(&self.lost),
            "unreached": self.unreached.len(),
            "unreached_sample": sample(&self.unreached),
            "unreached_errors": self.unreached_errors,
            "unexpected": self.unexpected.len(),
            "unexpected_sample": sample(&self.unexpected),
            "duplicates": self.duplicates,
            "bad_signatures": self.bad_signatures,
            "bad_attempts": self.bad_attempts.len(),
            "bad_attempts_sample": sample(&self.bad_attempts),
            "unfinished": self.unfinished.len(),
            "unfinished_sample": sample(&self.unfinished),
            "forks": self.forks.len(),
            "forks_sample": sample(&self.forks),
            "miscounted": self.miscounted.len(),
            "miscounted_sample": sample(&self.miscounted),
            "false_successes": self.false_successes.len(),
            "false_successes_sample": sample(&self.false_successes),
            "db_statuses": self.statuses,
            "ok": self.ok(),
        })
    }
}

/// The endpoint number of a seeded webhook: the last segment of `<base>/<n>`.
fn endpoint(url: &str) -> String {
    url.rsplit('/').next().unwrap_or("?").to_owned()
}

pub fn account(input: &Input) -> Accounting {
    let mut out = Accounting::default();
    let mut events = Vec::new();
    let mut seen_events = HashSet::new();
    for e in &input.accepted {
        if seen_events.insert(*e) {
            events.push(*e);
        } else {
            out.duplicate_accepted += 1;
        }
    }
    out.accepted = events.len();
    out.webhooks = input.webhooks.len();
    out.disabled_webhooks = input.webhooks.iter().filter(|w| !w.is_active).count();
    let hooks: HashMap<WebhookId, &WebhookAudit> =
        input.webhooks.iter().map(|w| (w.id, w)).collect();
    let name = |e: EventId, w: WebhookId| {
        let n = hooks.get(&w).map_or("?".to_owned(), |h| endpoint(&h.url));
        format!("({e}, {w} /hook/{n})")
    };

    let mut pairs: HashMap<DeliveryId, (EventId, WebhookId)> = HashMap::new();
    for e in &events {
        for w in &input.webhooks {
            pairs.insert(DeliveryId::for_pair(*e, w.id), (*e, w.id));
        }
    }
    out.pairs = pairs.len();
    let log: HashMap<DeliveryId, &DeliveryAudit> =
        input.deliveries.iter().map(|d| (d.id, d)).collect();
    for d in &input.deliveries {
        *out.statuses
            .entry(d.status.as_str().to_owned())
            .or_default() += 1;
    }
    let skipped_disabled = |id: &DeliveryId| {
        log.get(id).is_some_and(|d| {
            d.status == DeliveryStatus::Skipped
                && d.skip_reason.as_deref() == Some(DISABLED_REASON)
                && hooks.get(&d.webhook).is_some_and(|w| !w.is_active)
        })
    };

    // The receiver's side, per delivery: how often each attempt number arrived.
    let mut per_delivery: HashMap<DeliveryId, BTreeMap<u32, usize>> = HashMap::new();
    let mut answered_ok: HashSet<&str> = HashSet::new();
    let mut distinct_attempts = HashSet::new();
    out.requests = input.records.len();
    let mut unexpected = Vec::new();
    for r in &input.records {
        if r.bad_signature {
            out.bad_signatures += 1;
        }
        distinct_attempts.insert((r.delivery.as_str(), r.attempt));
        if r.answer == "200" {
            answered_ok.insert(r.delivery.as_str());
        }
        match r.delivery.parse::<DeliveryId>() {
            Ok(id) => {
                *per_delivery
                    .entry(id)
                    .or_default()
                    .entry(r.attempt)
                    .or_default() += 1
            }
            Err(_) => unexpected.push(format!("unparseable delivery id {:?}", r.delivery)),
        }
    }
    out.duplicates = input.records.len() - distinct_attempts.len();
    out.delivered = per_delivery.len();

    let fanned_out: HashMap<EventId, &EventAudit> =
        input.events.iter().map(|e| (e.id, e)).collect();
    // Fan-out reads only active webhooks: a webhook disabled (disabled_at is the disabling
    // transaction's start) before the event's fan-out ended may have had no task at all.
    let not_fanned_out_disabled = |id: &DeliveryId, e: &EventId, w: &WebhookId| {
        !log.contains_key(id)
            && !per_delivery.contains_key(id)
            && hooks.get(w).is_some_and(|h| {
                !h.is_active
                    && fanned_out.get(e).is_some_and(|ev| {
                        matches!((h.disabled_at, ev.fanned_out_at), (Some(d), Some(f)) if d <= f)
                    })
            })
    };
    let mut tries: HashMap<DeliveryId, Vec<&AttemptAudit>> = HashMap::new();
    for a in &input.attempts {
        tries.entry(a.delivery).or_default().push(a);
    }
    let mut lost = Vec::new();
    for (id, (e, w)) in &pairs {
        if skipped_disabled(id) {
            out.skipped_disabled += 1;
            continue;
        }
        if not_fanned_out_disabled(id, e, w) {
            out.not_fanned_out_disabled += 1;
            continue;
        }
        if !per_delivery.contains_key(id) {
            let tried = tries.get(id).map(Vec::as_slice).unwrap_or_default();
            let failed = log
                .get(id)
                .is_some_and(|d| d.status == DeliveryStatus::Failed);
            if failed && !tried.is_empty() && tried.iter().all(|a| a.status_code.is_none()) {
                for a in tried {
                    let kind = a.error_kind.as_deref().unwrap_or("unknown");
                    *out.unreached_errors.entry(kind.to_owned()).or_default() += 1;
                }
                out.unreached.push(format!(
                    "{} failed after {} transport failure(s)",
                    name(*e, *w),
                    tried.len()
                ));
            } else {
                lost.push(format!(
                    "{} ({})",
                    name(*e, *w),
                    log_says(log.get(id), tried, hooks.get(w))
                ));
            }
        }
        match log.get(id) {
            None => out
                .unfinished
                .push(format!("{} no delivery row", name(*e, *w))),
            Some(d) if d.status == DeliveryStatus::Pending => {
                let tried = tries.get(id).map(Vec::as_slice).unwrap_or_default();
                let seen = per_delivery
                    .get(id)
                    .map(|c| format!("{:?}", c.keys().collect::<Vec<_>>()))
                    .unwrap_or_else(|| "none".to_owned());
                out.unfinished.push(format!(
                    "{} pending ({}; receiver saw attempts {seen})",
                    name(*e, *w),
                    log_says(log.get(id), tried, hooks.get(w))
                ));
            }
            Some(d) if d.status == DeliveryStatus::Skipped => out.unfinished.push(format!(
                "{} skipped ({}) but its webhook is active",
                name(*e, *w),
                d.skip_reason.as_deref().unwrap_or("no reason")
            )),
            Some(_) => {}
        }
    }
    out.expected = out.pairs - out.skipped_disabled - out.not_fanned_out_disabled;
    for (id, counts) in &per_delivery {
        let label = || match pairs.get(id) {
            Some((e, w)) => name(*e, *w),
            None => id.to_string(),
        };
        if !pairs.contains_key(id) {
            unexpected.push(label());
        }
        let outside: Vec<u32> = counts
            .keys()
            .copied()
            .filter(|a| *a < 1 || *a > input.max_attempts)
            .collect();
        if !outside.is_empty() {
            out.bad_attempts
                .push(format!("{} receiver saw attempts {outside:?}", label()));
        }
        let repeated = counts.values().filter(|c| **c > 1).count();
        if repeated >= 2 {
            out.forks
                .push(format!("{} attempts seen {counts:?}", label()));
        }
    }
    for d in &input.deliveries {
        if d.status == DeliveryStatus::Succeeded && !answered_ok.contains(d.id.to_string().as_str())
        {
            out.false_successes.push(name(d.event, d.webhook));
        }
    }
    out.false_successes.sort();
    for a in &input.attempts {
        if a.attempt < 1 || a.attempt as u32 > input.max_attempts {
            out.bad_attempts
                .push(format!("{} log has attempt {}", a.delivery, a.attempt));
        }
    }

    // The failure count and the disable rule, replayed per webhook in the order its records
    // were applied (recorded_at, written under the webhook's row lock), each outcome placed by
    // its attempt's start time: a failure that started before a success already applied does
    // not count, a success resets only the failures that started before it, and ten counted
    // failures disable. Any count a crash, a duplicate record or a race added or lost shows
    // as a difference from this replay. The longest run in plain start-time order is shown
    // alongside.
    let rule = aioka_core::disable::DisableRule {
        threshold: input.disable_after,
    };
    let mut by_hook: HashMap<WebhookId, Vec<&AttemptAudit>> = HashMap::new();
    for a in &input.attempts {
        by_hook.entry(a.webhook).or_default().push(a);
    }
    for w in &input.webhooks {
        let attempts = by_hook.get(&w.id).map(Vec::as_slice).unwrap_or_default();
        let (mut trailing, mut longest) = (0u32, 0u32);
        for a in attempts {
            if a.succeeded() {
                trailing = 0;
            } else {
                trailing += 1;
                longest = longest.max(trailing);
            }
        }
        let mut applied: Vec<&&AttemptAudit> = attempts.iter().collect();
        applied.sort_by_key(|a| (a.recorded_at, a.attempted_at, a.delivery, a.attempt));
        let mut history = aioka_core::disable::FailureHistory::default();
        let mut disabled = false;
        for a in applied {
            let outcome = if a.succeeded() {
                aioka_core::disable::Outcome::Success
            } else {
                aioka_core::disable::Outcome::Failure
            };
            let state = rule.apply(&history, &[(a.attempted_at, outcome)]);
            disabled |= state.disable.is_some();
            history = state.history;
        }
        let count = history.consecutive_failures();
        if i64::from(w.consecutive_failures) != i64::from(count) || w.is_active == disabled {
            out.miscounted.push(format!(
                "{} /hook/{}: log says consecutive_failures {} active {}; its attempts, replayed as applied, imply {} and {} (longest failure run in start order {})",
                w.id,
                endpoint(&w.url),
                w.consecutive_failures,
                w.is_active,
                count,
                if disabled { "disabled" } else { "active" },
                longest,
            ));
        }
    }

    lost.sort();
    out.unreached.sort();
    unexpected.sort();
    out.unfinished.sort();
    out.forks.sort();
    out.bad_attempts.sort();
    out.miscounted.sort();
    out.lost = lost;
    out.unexpected = unexpected;
    out
}

/// What the log says of a delivery the receiver never saw: its row, its attempts (answer or
/// error kind each), and its webhook's state.
fn log_says(
    row: Option<&&DeliveryAudit>,
    tried: &[&AttemptAudit],
    hook: Option<&&WebhookAudit>,
) -> String {
    let row = match row {
        None => "no delivery row".to_owned(),
        Some(d) => {
            let answers: Vec<String> = tried
                .iter()
                .map(|a| match (a.status_code, a.error_kind.as_deref()) {
                    (Some(code), _) => code.to_string(),
                    (None, kind) => kind.unwrap_or("error").to_owned(),
                })
                .collect();
            format!(
                "log: {}, {} attempt(s) [{}]{}",
                d.status.as_str(),
                d.attempts,
                answers.join(", "),
                d.skip_reason
                    .as_deref()
                    .map(|r| format!(", skipped: {r}"))
                    .unwrap_or_default()
            )
        }
    };
    let hook = match hook {
        None => "webhook not found".to_owned(),
        Some(h) if h.is_active => "webhook active".to_owned(),
        Some(h) => format!(
            "webhook disabled at {}",
            h.disabled_at
                .map_or_else(|| "?".to_owned(), |t| t.to_rfc3339())
        ),
    };
    format!("{row}; {hook}")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let accepted = std::fs::read_to_string(&args.accepted)
        .with_context(|| format!("reading {}", args.accepted.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<EventId>()
                .map_err(|e| anyhow::anyhow!("accepted id {l:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let records = std::fs::read_to_string(&args.records)
        .with_context(|| format!("reading {}", args.records.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Record>(l).with_context(|| format!("record {l}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = Store::connect(&DatabaseSettings::new(
        args.database_url.clone(),
        2,
        Duration::from_secs(10),
    ))?;
    let input = Input {
        accepted,
        records,
        webhooks: store.audit_webhooks().await?,
        events: store.audit_events().await?,
        deliveries: store.audit_deliveries().await?,
        attempts: store.audit_attempts().await?,
        max_attempts: args.max_attempts,
        disable_after: args.disable_after,
    };
    let accounting = account(&input);
    println!("{}", accounting.to_json());
    if !accounting.ok() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn hook(n: u64) -> WebhookAudit {
        WebhookAudit {
            id: WebhookId::new(),
            url: format!("https://127.0.0.1/hook/{n}"),
            is_active: true,
            consecutive_failures: 0,
            disabled_reason: None,
            disabled_at: None,
        }
    }

    fn record(n: u64, delivery: DeliveryId, attempt: u32, answer: &str) -> Record {
        Record {
            n,
            delivery: delivery.to_string(),
            attempt,
            answer: answer.to_owned(),
            bad_signature: false,
            ms: 0,
        }
    }

    fn attempt(
        delivery: DeliveryId,
        webhook: WebhookId,
        n: i32,
        at: i64,
        code: i32,
    ) -> AttemptAudit {
        AttemptAudit {
            delivery,
            webhook,
            attempt: n,
            attempted_at: Utc.timestamp_opt(at, 0).single().unwrap(),
            status_code: Some(code),
            error_kind: None,
            // Applied in the order they started, as a single writer would.
            recorded_at: Utc.timestamp_opt(at, 0).single(),
        }
    }

    /// Two events to two webhooks, every pair answered 200 on its first attempt and logged.
    fn clean() -> Input {
        let events = vec![EventId::new(), EventId::new()];
        let webhooks = vec![hook(0), hook(1)];
        let (mut records, mut deliveries, mut attempts) = (vec![], vec![], vec![]);
        for (i, e) in events.iter().enumerate() {
            for (n, w) in webhooks.iter().enumerate() {
                let id = DeliveryId::for_pair(*e, w.id);
                records.push(record(n as u64, id, 1, "200"));
                deliveries.push(DeliveryAudit {
                    id,
                    event: *e,
                    webhook: w.id,
                    status: DeliveryStatus::Succeeded,
                    attempts: 1,
                    skip_reason: None,
                });
                attempts.push(attempt(id, w.id, 1, i as i64, 200));
            }
        }
        let fanned = events
            .iter()
            .map(|e| EventAudit {
                id: *e,
                fanout_tasks: 2,
                fanned_out_at: Some(Utc.timestamp_opt(100, 0).single().unwrap()),
            })
            .collect();
        Input {
            accepted: events,
            records,
            webhooks,
            events: fanned,
            deliveries,
            attempts,
            max_attempts: 4,
            disable_after: 10,
        }
    }

    #[test]
    fn a_clean_run_accounts_to_empty_sets() {
        let a = account(&clean());
        assert!(a.ok(), "{}", a.to_json());
        assert_eq!((a.expected, a.delivered), (4, 4));
    }

    #[test]
    fn a_record_the_receiver_never_kept_is_lost_even_when_a_surplus_hides_it_in_counts() {
        let mut input = clean();
        let dropped = input.records.remove(0);
        // A delivery of an event that was never accepted: the counts still add up to 4.
        input.records.push(record(
            0,
            DeliveryId::for_pair(EventId::new(), input.webhooks[0].id),
            1,
            "200",
        ));
        let a = account(&input);
        assert_eq!(a.lost.len(), 1, "{}", a.to_json());
        assert!(
            a.lost[0].contains(&input.accepted[0].to_string()),
            "{:?} {dropped:?}",
            a.lost
        );
        assert_eq!(a.unexpected.len(), 1);
        assert!(!a.ok());
    }

    #[test]
    fn a_failure_the_receiver_never_saw_is_unreached_only_when_no_attempt_got_an_answer() {
        // The first pair's record is gone, and the log ends it failed after four attempts.
        let mut input = clean();
        input.records.remove(0);
        let (id, hook) = (input.deliveries[0].id, input.deliveries[0].webhook);
        input.deliveries[0].status = DeliveryStatus::Failed;
        input.deliveries[0].attempts = 4;
        input.attempts.retain(|a| a.delivery != id);
        for n in 1..=4 {
            let mut a = attempt(id, hook, n, i64::from(n), 0);
            a.status_code = None;
            a.error_kind = Some(if n == 1 { "connect" } else { "timeout" }.to_owned());
            input.attempts.push(a);
        }
        // Every attempt failed in transport: tried, logged, never reached.
        let a = account(&input);
        assert!(a.lost.is_empty(), "{}", a.to_json());
        assert_eq!(a.unreached.len(), 1, "{}", a.to_json());
        assert_eq!(a.unreached_errors.get("timeout"), Some(&3));
        assert_eq!(a.unreached_errors.get("connect"), Some(&1));
        // One attempt the log says was answered 500, which no receiver answered: lost, and
        // the sample says what the log claims.
        let last = input.attempts.len() - 1;
        input.attempts[last].status_code = Some(500);
        input.attempts[last].error_kind = None;
        let a = account(&input);
        assert!(a.unreached.is_empty(), "{}", a.to_json());
        assert_eq!(a.lost.len(), 1, "{}", a.to_json());
        assert!(
            a.lost[0].contains("log: failed, 4 attempt(s) [connect, timeout, timeout, 500]"),
            "{}",
            a.lost[0]
        );
        // A pending delivery is never unreached, whatever its attempts.
        input.attempts[last].status_code = None;
        input.deliveries[0].status = DeliveryStatus::Pending;
        let a = account(&input);
        assert_eq!((a.lost.len(), a.unreached.len()), (1, 0), "{}", a.to_json());
    }

    #[test]
    fn a_pair_fan_out_left_out_is_expected_only_if_its_webhook_was_enabled_until_the_end() {
        let mut input = clean();
        let pair = input.deliveries[3].id;
        input.records.retain(|r| r.delivery != pair.to_string());
        input.deliveries.retain(|d| d.id != pair);
        input.attempts.retain(|a| a.delivery != pair);
        assert_eq!(
            account(&input).lost.len(),
            1,
            "an active webhook's pair is lost"
        );
        input.webhooks[1].is_active = false;
        input.webhooks[1].disabled_at = Some(Utc.timestamp_opt(500, 0).single().unwrap());
        assert_eq!(
            account(&input).lost.len(),
            1,
            "disabled after the fan-out ended"
        );
        input.webhooks[1].disabled_at = Some(Utc.timestamp_opt(50, 0).single().unwrap());
        let a = account(&input);
        assert!(
            a.lost.is_empty() && a.not_fanned_out_disabled == 1,
            "{}",
            a.to_json()
        );
    }

    #[test]
    fn a_repeated_attempt_is_a_duplicate_but_a_second_series_is_a_fork() {
        let mut input = clean();
        let id = input.deliveries[0].id;
        input.records.push(record(0, id, 1, "500"));
        let a = account(&input);
        assert!(a.ok() && a.duplicates == 1, "{}", a.to_json());
        input.records.push(record(0, id, 2, "500"));
        input.records.push(record(0, id, 2, "500"));
        let a = account(&input);
        assert_eq!(a.forks.len(), 1, "{}", a.to_json());
    }

    #[test]
    fn a_success_in_the_log_that_no_receiver_answered_is_reported() {
        let mut input = clean();
        input.records[0].answer = "500".to_owned();
        let a = account(&input);
        assert_eq!(a.false_successes.len(), 1, "{}", a.to_json());
        assert!(!a.ok());
    }

    #[test]
    fn a_pending_delivery_and_an_attempt_past_the_last_are_reported() {
        let mut input = clean();
        input.deliveries[1].status = DeliveryStatus::Pending;
        let id = input.deliveries[2].id;
        input.records.push(record(0, id, 5, "500"));
        let a = account(&input);
        assert_eq!(
            (a.unfinished.len(), a.bad_attempts.len()),
            (1, 1),
            "{}",
            a.to_json()
        );
    }

    #[test]
    fn the_failure_count_follows_attempt_time_not_the_log_order() {
        let mut input = clean();
        let w = input.webhooks[0].id;
        let d = input.deliveries[0].id;
        // A 500 at t=10 after the 200s: one failure after the last success.
        input.attempts.push(attempt(d, w, 2, 10, 500));
        input.webhooks[0].consecutive_failures = 1;
        assert!(account(&input).ok());
        // The log says 0 (as if the 500 were counted before a later-committed 200).
        input.webhooks[0].consecutive_failures = 0;
        assert_eq!(account(&input).miscounted.len(), 1);
    }

    #[test]
    fn the_rule_is_replayed_in_the_order_records_were_applied() {
        let mut input = clean();
        input.disable_after = 3;
        let w = input.webhooks[0].id;
        let of_w: Vec<DeliveryId> = input
            .deliveries
            .iter()
            .filter(|d| d.webhook == w)
            .map(|d| d.id)
            .collect();
        // Failures that started at t=101, 102 and 110 were applied before a success that
        // started at t=105: when the third was applied, three failures stood since the last
        // known success, so the webhook was disabled. In plain start order the longest run
        // is 2, which would call that a miscount; replayed as applied it is right.
        for (n, (at, code, applied)) in [
            (101, 500, 201),
            (102, 500, 202),
            (110, 500, 203),
            (105, 200, 204),
        ]
        .into_iter()
        .enumerate()
        {
            let mut a = attempt(of_w[n % 2], w, n as i32 / 2 + 2, at, code);
            a.recorded_at = Utc.timestamp_opt(applied, 0).single();
            input.attempts.push(a);
        }
        input.webhooks[0].is_active = false;
        input.webhooks[0].consecutive_failures = 1;
        assert!(account(&input).ok(), "{}", account(&input).to_json());
        // A log that stayed active, or counted the failures before the success, is wrong.
        input.webhooks[0].is_active = true;
        assert_eq!(account(&input).miscounted.len(), 1);
        input.webhooks[0].is_active = false;
        input.webhooks[0].consecutive_failures = 3;
        assert_eq!(account(&input).miscounted.len(), 1);
    }

    #[test]
    fn a_webhook_is_disabled_iff_it_had_a_run_of_disable_after_failures() {
        let mut input = clean();
        input.disable_after = 3;
        let w = input.webhooks[1].id;
        let d = input.deliveries[1].id;
        for (k, t) in (2..=4).zip(20..) {
            input.attempts.push(attempt(d, w, k, t, 500));
        }
        input.webhooks[1].consecutive_failures = 3;
        assert_eq!(
            account(&input).miscounted.len(),
            1,
            "a run of 3 must disable"
        );
        input.webhooks[1].is_active = false;
        assert!(account(&input).ok());
    }
}
