//! The dispatcher: copies due PENDING rows while the region is active, at most
//! `concurrency` at once, verifies each copy's checksum and records the outcome
//! (COMPLETED, PENDING with backoff, or FAILED).

use crate::db::{self, Finish, Op, Target};
use crate::source::Change;
use crate::transfer::{self, TransferError};
use anyhow::Context as _;
use futures::FutureExt as _;
use lifeboat_core::JournalKind;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Inner, Mode};

pub(super) enum Outcome {
    Copied(transfer::Copied),
    Deleted,
    Failed(TransferError),
    Abandoned,
}

/// The dispatcher: copy due rows while active. With `until_drained`, return once
/// nothing is in flight and nothing is due (retries in backoff count as not due).
pub(super) async fn dispatch(
    inner: Arc<Inner>,
    cancel: CancellationToken,
    until_drained: bool,
) -> anyhow::Result<()> {
    let mut effective = inner.effective.subscribe();
    let mut inflight: HashSet<(String, String)> = HashSet::new();
    let mut tasks: JoinSet<(Target, Outcome)> = JoinSet::new();
    let part_size = inner.part_size();
    // Large copies buffer up to a few parts each: bound how many run at once.
    let large = Arc::new(tokio::sync::Semaphore::new(4));
    let mut last_gauges = tokio::time::Instant::now();
    loop {
        let active = *effective.borrow_and_update() == Mode::Active;
        let mut due_now = 0;
        if active && inflight.len() < inner.cfg.concurrency {
            let room = inner.cfg.concurrency - inflight.len();
            // A database error must not end replication: log it and try again soon
            // (nothing is lost: the rows stay PENDING).
            let due = match inner.db.due(db::now_ms(), room + inflight.len()) {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, region = %inner.region, "reading due transfers failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            due_now = due.len();
            let fence = inner
                .fence_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            for t in due {
                if inflight.len() >= inner.cfg.concurrency {
                    break;
                }
                if !inflight.insert((t.key.clone(), t.dest.clone())) {
                    continue;
                }
                let inner = inner.clone();
                let fence = fence.clone();
                let large = large.clone();
                tasks.spawn(async move {
                    let outcome = tokio::select! {
                        () = fence.cancelled() => Outcome::Abandoned,
                        // A panic in one transfer must not leave its key marked in flight.
                        o = std::panic::AssertUnwindSafe(run_one(&inner, &t, part_size, &large)).catch_unwind() => {
                            o.unwrap_or_else(|_| Outcome::Failed(TransferError::Store {
                                context: format!("copying {}", t.key),
                                message: "the transfer task panicked".into(),
                            }))
                        }
                    };
                    (t, outcome)
                });
            }
        }
        if last_gauges.elapsed() > Duration::from_millis(250) {
            inner.refresh_gauges();
            last_gauges = tokio::time::Instant::now();
        }
        if until_drained && tasks.is_empty() && due_now == 0 {
            inner.refresh_gauges();
            return Ok(());
        }
        tokio::select! {
            () = cancel.cancelled() => {
                tasks.shutdown().await;
                inner.refresh_gauges();
                return Ok(());
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                // Take every transfer that has finished by now: one commit for all.
                let mut batch = Vec::new();
                let mut next = Some(joined);
                while let Some(joined) = next {
                    match joined {
                        Ok((t, outcome)) => {
                            inflight.remove(&(t.key.clone(), t.dest.clone()));
                            batch.push((t, outcome));
                        }
                        Err(e) => tracing::error!(error = %e, "a transfer task failed"),
                    }
                    next = tasks.try_join_next();
                }
                if let Err(e) = record(&inner, batch) {
                    // The rows stay PENDING and are copied again: logged, not fatal.
                    tracing::error!(error = %format!("{e:#}"), region = %inner.region, "recording finished transfers failed");
                }
            }
            () = inner.wake.notified() => {}
            _ = effective.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

pub(super) async fn run_one(
    inner: &Inner,
    t: &Target,
    part_size: usize,
    large: &tokio::sync::Semaphore,
) -> Outcome {
    let Some(dst) = inner.dests.get(&t.dest) else {
        return Outcome::Failed(TransferError::SourceGone(format!(
            "no store for region {}",
            t.dest
        )));
    };
    let key = t.key.as_str();
    match t.op {
        Op::Put => {
            let _permit = if usize::try_from(t.size).is_ok_and(|s| s > part_size) {
                large.acquire().await.ok()
            } else {
                None
            };
            match transfer::copy_object(&inner.source, dst, key, part_size, inner.cfg.verify).await
            {
                Ok(c) => Outcome::Copied(c),
                Err(e) => Outcome::Failed(e),
            }
        }
        Op::Delete => match transfer::delete_object(dst, key).await {
            Ok(()) => Outcome::Deleted,
            Err(e) => Outcome::Failed(e),
        },
    }
}

/// Record a batch of finished transfers: one database transaction, then metrics,
/// logs and events.
pub(super) fn record(inner: &Inner, batch: Vec<(Target, Outcome)>) -> anyhow::Result<()> {
    let now = db::now_ms();
    let m = &inner.metrics;
    let mut rows: Vec<(Target, Finish)> = Vec::with_capacity(batch.len());
    for (t, outcome) in batch {
        let finish = match outcome {
            Outcome::Abandoned => continue,
            Outcome::Copied(c) => Finish::Copied {
                checksum: c.checksum,
                dest_etag: c.dest_etag,
                size: c.size,
            },
            Outcome::Deleted => Finish::Deleted,
            Outcome::Failed(TransferError::SourceGone(what)) => {
                tracing::debug!(key = %t.key, "source gone before copy: {what}");
                let _ = inner.hints_tx.send(Change::Key(t.key.clone()));
                Finish::Dropped
            }
            Outcome::Failed(e) => {
                m.failures_total.fetch_add(1, Ordering::Relaxed);
                let attempts = t.attempts + 1;
                let terminal = e.is_permanent()
                    || (matches!(e, TransferError::ChecksumMismatch { .. })
                        && attempts >= inner.cfg.max_attempts);
                let delay = inner.backoff(t.attempts);
                let msg = e.to_string();
                if terminal {
                    tracing::error!(region = %inner.region, key = %t.key, dest = %t.dest, error = %msg, "object replication FAILED");
                    inner.emit(
                        JournalKind::Alert,
                        format!(
                            "replication of {} to region {} FAILED: {msg}",
                            t.key, t.dest
                        ),
                    );
                } else {
                    tracing::warn!(region = %inner.region, key = %t.key, dest = %t.dest, attempts, retry_in = ?delay, error = %msg, "object replication attempt failed");
                }
                Finish::Failed {
                    error: msg,
                    terminal,
                    next_ms: now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                }
            }
        };
        rows.push((t, finish));
    }
    let applied = inner
        .db
        .finish(&rows, now)
        .context("recording finished transfers")?;
    for ((t, f), applied) in rows.iter().zip(applied) {
        if !applied {
            continue;
        }
        match f {
            Finish::Copied { size, .. } => {
                m.replicated_total.fetch_add(1, Ordering::Relaxed);
                m.bytes_replicated_total.fetch_add(*size, Ordering::Relaxed);
                observe_latency(inner, t, now);
            }
            Finish::Deleted => {
                m.deleted_total.fetch_add(1, Ordering::Relaxed);
                observe_latency(inner, t, now);
            }
            Finish::Dropped | Finish::Failed { .. } => {}
        }
    }
    Ok(())
}

pub(super) fn observe_latency(inner: &Inner, t: &Target, now: i64) {
    let ms = u64::try_from(now - t.detected_ms).unwrap_or(0);
    let d = Duration::from_millis(ms);
    inner.metrics.observe_latency(d);
    if d > inner.cfg.latency_alert && !t.backfill {
        inner
            .metrics
            .latency_alerts_total
            .fetch_add(1, Ordering::Relaxed);
        inner.emit(
            JournalKind::Alert,
            format!(
                "object {} reached region {} after {:.1}s (latency_alert {:.1}s)",
                t.key,
                t.dest,
                d.as_secs_f64(),
                inner.cfg.latency_alert.as_secs_f64()
            ),
        );
    }
}
