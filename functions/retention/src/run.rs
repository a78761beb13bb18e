//! One run: takes the lock, applies every policy to every tenant in bounded
//! batches (one transaction each, which also renews the lock), stops between
//! batches when its time is up, and records its report as it goes.

use crate::policy::Policies;
use crate::steps::{Ctx, Policy};
use serde_json::{json, Map, Value as Json};
use std::time::{Duration, Instant};
use tavle_core::db::{transaction, uuid, Db};
use tavle_core::Problem;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Trigger> {
        match s {
            "schedule" => Some(Trigger::Schedule),
            "manual" => Some(Trigger::Manual),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// How long a lock outlives its last renewal: a killed run blocks the next
/// one at most this long after its time was up.
const LEASE_MARGIN_SECONDS: i64 = 60;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Runs the policies at clock `now` (a handler input). `Err(conflict)` when
/// another run holds the lock.
pub async fn run(
    db: &mut impl Db,
    policies: &Policies,
    trigger: Trigger,
    dry_run: bool,
    now: OffsetDateTime,
) -> Result<Json, Problem> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let lease = policies.run_seconds + LEASE_MARGIN_SECONDS;
    let started = Instant::now();
    let clock = |started: Instant| rfc3339(now + started.elapsed());
    let now_text = rfc3339(now);

    let acquired = transaction(db, async |db| {
        let held = db
            .query_opt(
                "UPDATE retention_lock SET run_id = $1::uuid, \
                     held_until = $2::text::timestamptz + $3::int8 * interval '1 second' \
                 WHERE id = (SELECT l.id FROM retention_lock l WHERE l.id = 1 \
                             AND l.held_until < $2::text::timestamptz FOR UPDATE SKIP LOCKED) RETURNING id",
                &[uuid(&run_id), now_text.as_str().into(), lease.into()],
            )
            .await?;
        if held.is_some() {
            db.execute(
                "INSERT INTO retention_runs (id, trigger, dry_run, started_at, status, policies) \
                 VALUES ($1::uuid, $2::text, $3::bool, $4::text::timestamptz, 'running', $5::jsonb)",
                &[
                    uuid(&run_id),
                    trigger.as_str().into(),
                    dry_run.into(),
                    now_text.as_str().into(),
                    policies.to_json().into(),
                ],
            )
            .await?;
        }
        Ok::<_, Problem>(held.is_some())
    })
    .await?;
    if !acquired {
        // A run in a batch holds the row: SKIP LOCKED answers at once.
        return Err(Problem::conflict("another retention run holds the lock; try again when it has finished"));
    }

    let mut batches = 0i64;
    let mut longest = Duration::ZERO;
    let mut more_remaining = false;
    let budget = Duration::from_secs(policies.run_seconds as u64);
    // Every error from here on is recorded in the report, and the lock released.
    let outcome: Result<(), Problem> = async {
        let tenants: Vec<String> = db
            .query("SELECT id::text AS id FROM tenants ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.text("id"))
            .collect::<Result<_, _>>()?;
        let mut worked = false;
        'tenants: for tenant_id in &tenants {
            let cx = Ctx { run_id: &run_id, tenant_id, policies, now: &now_text };
            for policy in Policy::ALL {
                if dry_run {
                    let counts = policy.count(db, &cx).await?;
                    add_counts(db, &run_id, tenant_id, &counts).await?;
                    continue;
                }
                loop {
                    if worked && started.elapsed() >= budget {
                        more_remaining = true;
                        break 'tenants;
                    }
                    let t0 = Instant::now();
                    let step = transaction(db, async |db| {
                        renew(db, &run_id, &clock(started), lease).await?;
                        let mut step = policy.step(db, &cx).await?;
                        if step.counts.is_empty() {
                            step.counts = policy.keys().iter().map(|k| (*k, 0)).collect();
                        }
                        add_counts(db, &run_id, tenant_id, &step.counts).await?;
                        Ok::<_, Problem>(step)
                    })
                    .await?;
                    longest = longest.max(t0.elapsed());
                    if step.counts.iter().all(|(_, n)| *n == 0) {
                        break;
                    }
                    batches += 1;
                    worked = true;
                    if !step.more {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
    .await;

    let status = match (&outcome, more_remaining) {
        (Err(_), _) => "failed",
        (Ok(()), true) => "more_remaining",
        (Ok(()), false) => "completed",
    };
    let error = outcome.as_ref().err().map(|p| p.title.to_string());
    let finished = clock(started);
    let longest_ms = longest.as_millis() as i64;
    let closed = transaction(db, async |db| {
        db.execute(
            "UPDATE retention_runs SET finished_at = $2::text::timestamptz, status = $3::text, batches = $4::int8, \
                 longest_batch_ms = $5::int8, error = $6::text, totals = coalesce(( \
                     SELECT jsonb_object_agg(k, n) FROM ( \
                         SELECT e.key AS k, sum(e.value::text::int8) AS n \
                         FROM retention_run_counts c, jsonb_each(c.counts) e WHERE c.run_id = $1::uuid \
                         GROUP BY e.key) sums), '{}'::jsonb) \
             WHERE id = $1::uuid",
            &[
                uuid(&run_id),
                finished.as_str().into(),
                status.into(),
                batches.into(),
                longest_ms.into(),
                error.clone().into(),
            ],
        )
        .await?;
        db.execute(
            "UPDATE retention_lock SET run_id = NULL, held_until = '-infinity' WHERE id = 1 AND run_id = $1::uuid",
            &[uuid(&run_id)],
        )
        .await?;
        Ok::<_, Problem>(())
    })
    .await;
    outcome?;
    closed?;
    crate::reports::one(db, &run_id, None, now).await?.ok_or_else(Problem::internal)
}

/// Renews the lock for another lease; a run that lost it (it stalled past
/// its lease and another run took over) must not commit another batch.
async fn renew(db: &mut impl Db, run_id: &str, now: &str, lease: i64) -> Result<(), Problem> {
    let held = db
        .query_opt(
            "UPDATE retention_lock SET held_until = $2::text::timestamptz + $3::int8 * interval '1 second' \
             WHERE id = 1 AND run_id = $1::uuid RETURNING id",
            &[uuid(run_id), now.into(), lease.into()],
        )
        .await?;
    held.map(|_| ()).ok_or_else(|| Problem::conflict("this retention run lost its lock to another run"))
}

/// Adds a step's counts to the run's counts of the tenant (in the step's
/// transaction: the report counts exactly what committed).
async fn add_counts(db: &mut impl Db, run_id: &str, tenant_id: &str, counts: &[(&str, i64)]) -> Result<(), Problem> {
    let mut map = Map::new();
    for (k, n) in counts {
        let old = map.get(*k).and_then(Json::as_i64).unwrap_or(0);
        map.insert((*k).to_owned(), json!(old + n));
    }
    db.execute(
        "INSERT INTO retention_run_counts AS c (run_id, tenant_id, counts) VALUES ($1::uuid, $2::uuid, $3::jsonb) \
         ON CONFLICT (run_id, tenant_id) DO UPDATE SET counts = ( \
             SELECT jsonb_object_agg(k, coalesce((c.counts->>k)::int8, 0) + coalesce((EXCLUDED.counts->>k)::int8, 0)) \
             FROM jsonb_object_keys(c.counts || EXCLUDED.counts) AS k)",
        &[uuid(run_id), uuid(tenant_id), Json::Object(map).into()],
    )
    .await?;
    Ok(())
}
