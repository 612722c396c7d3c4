//! The batch rules, pure (no I/O): which events of a batch a projector
//! handles, for which projections, and how its checkpoints move
//! ([`order`]); and what the handled events do to the rows ([`fold`]).
//! `app::Projector::apply` does the I/O around them: asking the log about a
//! gap, loading rows, writing and committing.

use std::collections::{BTreeMap, HashMap, HashSet};

use read_model::{AccountRow, Checkpoints, HistoryRow, Projection, Provenance};

use crate::domain::{EventRecord, projections};

/// An event of a batch as [`order`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub position: u64,
    /// The partition of its account.
    pub partition: u32,
}

/// Which events of a batch are handled, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The batch's first `due.len()` events are handled; per event, the
    /// projections that apply it (`None`: another partition's event, which
    /// only moves the checkpoints past it; empty: applied before, a
    /// duplicate).
    pub due: Vec<Option<Vec<Projection>>>,
    /// The owned partitions' checkpoints after them.
    pub checkpoints: BTreeMap<u32, Checkpoints>,
    /// The position a projection waits for when the batch skipped ahead of
    /// it (the consumer must be repositioned there).
    pub gap: Option<u64>,
}

/// What [`order`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Decided.
    Decided(Decided),
    /// The log must say whether it holds an account event in `from..to`;
    /// call again with the answer in `empty`.
    AskGap { from: u64, to: u64 },
}

/// Orders `arrivals` (in log order) against `checkpoints` (the owned
/// partitions'): a projection applies position `p` only when its
/// checkpoint is `p − 1`, or when the log holds nothing in between
/// (`empty[(from, to)]`, asked for with [`Order::AskGap`]). Every event
/// moves every owned partition's checkpoints that are below it: a
/// partition's checkpoint covers the whole log up to it.
pub fn order(
    arrivals: &[Arrival],
    checkpoints: &BTreeMap<u32, Checkpoints>,
    projections: &[Projection],
    empty: &HashMap<(u64, u64), bool>,
) -> Order {
    let mut checkpoints = checkpoints.clone();
    let mut due = Vec::with_capacity(arrivals.len());
    for arrival in arrivals {
        let mut behind: Vec<(u32, Projection)> = Vec::new();
        for (owned, at) in &checkpoints {
            for projection in projections {
                let checkpoint = at.get(*projection);
                if arrival.position <= checkpoint {
                    continue;
                }
                let expected = checkpoint + 1;
                if arrival.position > expected {
                    match empty.get(&(expected, arrival.position)) {
                        Some(true) => {}
                        Some(false) => return Order::Decided(Decided { due, checkpoints, gap: Some(expected) }),
                        None => return Order::AskGap { from: expected, to: arrival.position },
                    }
                }
                behind.push((*owned, *projection));
            }
        }
        for (owned, projection) in &behind {
            if let Some(at) = checkpoints.get_mut(owned) {
                at.set(*projection, arrival.position);
            }
        }
        due.push(checkpoints.contains_key(&arrival.partition).then(|| {
            behind.iter().filter(|(owned, _)| *owned == arrival.partition).map(|(_, projection)| *projection).collect()
        }));
    }
    Order::Decided(Decided { due, checkpoints, gap: None })
}

/// The accounts whose `projection` rows the `events` (due projections, and
/// what each event says) need.
pub fn accounts_due(events: &[(Vec<Projection>, Result<EventRecord, String>)], projection: Projection) -> Vec<String> {
    let ids: HashSet<&String> = events
        .iter()
        .filter(|(due, _)| due.contains(&projection))
        .filter_map(|(_, record)| record.as_ref().ok().map(|record| &record.account_id))
        .collect();
    ids.into_iter().cloned().collect()
}

/// The rows a batch starts from: per account due, its row (`None`: none yet).
#[derive(Debug, Default)]
pub struct Rows {
    pub summaries: HashMap<String, Option<AccountRow>>,
    pub histories: HashMap<String, Option<HistoryRow>>,
}

/// What a batch does to the rows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Per event folded, in order: applied, or the reason it is set aside.
    pub outcomes: Vec<Result<(), String>>,
    /// Summary rows to write (each account's last state).
    pub summaries: Vec<AccountRow>,
    /// History rows to insert.
    pub history: Vec<HistoryRow>,
}

impl Folded {
    /// Records on every row to write when it is written (`projected_at_us`)
    /// and the projection span that writes it: `traces` holds per
    /// projection and event position its span's `traceparent`, if sampled.
    /// A summary row is written by its account's last event in the batch.
    pub fn stamp(&mut self, projected_at_us: i64, traces: &HashMap<(Projection, u64), String>) {
        let provenance = |projection: Projection, position: u64| Provenance {
            projected_at_us: Some(projected_at_us),
            projection_trace: traces.get(&(projection, position)).cloned(),
        };
        for row in &mut self.summaries {
            row.provenance = provenance(Projection::AccountSummary, row.position);
        }
        for row in &mut self.history {
            row.provenance = provenance(Projection::AccountHistory, row.position);
        }
    }
}

/// Folds `events` (in log order; each with the projections due, none
/// empty) into `rows`. Later events read what earlier ones of the batch
/// wrote. All or nothing per event: an event that one projection refuses,
/// or that cannot be read, is set aside for every projection due.
pub fn fold(events: &[(Vec<Projection>, Result<EventRecord, String>)], mut rows: Rows) -> Folded {
    let mut folded = Folded::default();
    let mut changed: Vec<String> = Vec::new();
    for (due, record) in events {
        let outcome = record.as_ref().map_err(Clone::clone).and_then(|record| {
            let id = &record.account_id;
            let summary = due
                .contains(&Projection::AccountSummary)
                .then(|| projections::account_summary(rows.summaries.get(id).and_then(Option::as_ref), record));
            let history = due
                .contains(&Projection::AccountHistory)
                .then(|| projections::account_history(rows.histories.get(id).and_then(Option::as_ref), record));
            match (summary.transpose(), history.transpose()) {
                (Ok(summary), Ok(history)) => {
                    if let Some(row) = summary {
                        if !changed.contains(id) {
                            changed.push(id.clone());
                        }
                        rows.summaries.insert(id.clone(), Some(row));
                    }
                    if let Some(row) = history {
                        rows.histories.insert(id.clone(), Some(row.clone()));
                        folded.history.push(row);
                    }
                    Ok(())
                }
                (Err(error), _) | (_, Err(error)) => Err(error.to_string()),
            }
        });
        folded.outcomes.push(outcome);
    }
    folded.summaries = changed.iter().filter_map(|id| rows.summaries.get(id).cloned().flatten()).collect();
    folded
}

#[cfg(test)]
mod tests {
    use read_model::{AccountStatus, EventKind};
    use shared::events::AccountEvent;

    use super::*;

    const BOTH: [Projection; 2] = Projection::ALL;

    fn at(position: u64) -> Checkpoints {
        Checkpoints { account_summary: position, account_history: position }
    }

    fn arrivals(positions: &[u64]) -> Vec<Arrival> {
        positions.iter().map(|&position| Arrival { position, partition: 0 }).collect()
    }

    type Due = Vec<Option<Vec<Projection>>>;

    fn decided(order: Order) -> (Due, BTreeMap<u32, Checkpoints>, Option<u64>) {
        match order {
            Order::Decided(Decided { due, checkpoints, gap }) => (due, checkpoints, gap),
            other => panic!("not decided: {other:?}"),
        }
    }

    #[test]
    fn contiguous_events_are_due_and_move_the_checkpoints() {
        let checkpoints = BTreeMap::from([(0, at(4))]);
        let (due, after, gap) = decided(order(&arrivals(&[5, 6]), &checkpoints, &BOTH, &HashMap::new()));
        assert_eq!(due, vec![Some(BOTH.to_vec()), Some(BOTH.to_vec())]);
        assert_eq!((after[&0], gap), (at(6), None));
    }

    #[test]
    fn a_redelivered_event_is_due_nowhere_and_a_projection_behind_still_applies_it() {
        // account_history was reset (a rebuild) and replays from 0.
        let checkpoints = BTreeMap::from([(0, Checkpoints { account_summary: 9, account_history: 2 })]);
        let (due, after, _) = decided(order(&arrivals(&[3, 4]), &checkpoints, &BOTH, &HashMap::new()));
        let history = Some(vec![Projection::AccountHistory]);
        assert_eq!(due, vec![history.clone(), history]);
        assert_eq!(after[&0], Checkpoints { account_summary: 9, account_history: 4 });
        let (due, _, _) = decided(order(&arrivals(&[7]), &BTreeMap::from([(0, at(9))]), &BOTH, &HashMap::new()));
        assert_eq!(due, vec![Some(vec![])]);
    }

    #[test]
    fn a_skip_ahead_is_asked_about_then_applied_if_the_log_is_empty_or_stops_the_batch_if_not() {
        let checkpoints = BTreeMap::from([(0, at(4))]);
        let batch = arrivals(&[5, 8, 9]);
        assert_eq!(order(&batch, &checkpoints, &BOTH, &HashMap::new()), Order::AskGap { from: 6, to: 8 });

        let (due, after, gap) = decided(order(&batch, &checkpoints, &BOTH, &HashMap::from([((6, 8), true)])));
        assert_eq!((due.len(), after[&0], gap), (3, at(9), None));

        // Position 6 or 7 exists and has not arrived (a redelivery out of
        // order): stop before 8, and wait for 6.
        let (due, after, gap) = decided(order(&batch, &checkpoints, &BOTH, &HashMap::from([((6, 8), false)])));
        assert_eq!((due.len(), after[&0], gap), (1, at(5), Some(6)));
    }

    #[test]
    fn another_partitions_event_moves_the_checkpoint_and_changes_no_row() {
        let checkpoints = BTreeMap::from([(2, at(4))]);
        let batch = [Arrival { position: 5, partition: 1 }, Arrival { position: 6, partition: 2 }];
        let (due, after, _) = decided(order(&batch, &checkpoints, &BOTH, &HashMap::new()));
        assert_eq!(due, vec![None, Some(BOTH.to_vec())]);
        assert_eq!(after[&2], at(6));
    }

    #[test]
    fn a_rebuild_owning_every_partition_moves_them_all() {
        let checkpoints = BTreeMap::from([(0, at(0)), (1, at(0))]);
        let batch = [Arrival { position: 1, partition: 1 }, Arrival { position: 2, partition: 0 }];
        let (due, after, _) = decided(order(&batch, &checkpoints, &BOTH, &HashMap::new()));
        assert_eq!(due, vec![Some(BOTH.to_vec()), Some(BOTH.to_vec())]);
        assert_eq!((after[&0], after[&1]), (at(2), at(2)));
    }

    fn record(account_id: &str, position: u64, version: u64, event: AccountEvent) -> Result<EventRecord, String> {
        Ok(EventRecord {
            position,
            account_id: account_id.into(),
            version,
            occurred_at_us: 1_000 * position as i64,
            command_trace: None,
            event,
        })
    }

    #[test]
    fn later_events_of_a_batch_fold_onto_the_rows_earlier_ones_wrote() {
        let events = vec![
            (BOTH.to_vec(), record("acc-1", 1, 1, AccountEvent::Opened { owner: "Ada".into() })),
            (BOTH.to_vec(), record("acc-1", 2, 2, AccountEvent::Deposited { amount: 30 })),
            (BOTH.to_vec(), record("acc-1", 3, 3, AccountEvent::Withdrawn { amount: 10 })),
        ];
        let folded = fold(&events, Rows::default());
        assert_eq!(folded.outcomes, vec![Ok(()), Ok(()), Ok(())]);
        assert_eq!(folded.summaries.len(), 1, "one row per account, its last state");
        let summary = &folded.summaries[0];
        assert_eq!((summary.balance, summary.version, summary.status), (20, 3, AccountStatus::Open));
        let history: Vec<(EventKind, i64)> = folded.history.iter().map(|h| (h.kind, h.balance_after)).collect();
        assert_eq!(
            history,
            [(EventKind::AccountOpened, 0), (EventKind::FundsDeposited, 30), (EventKind::FundsWithdrawn, 20)]
        );
    }

    #[test]
    fn an_event_one_projection_refuses_is_set_aside_for_both_and_the_rest_goes_on() {
        // The summary knows acc-1 at version 1, the history does not: a
        // deposit at version 2 suits the summary, not the history.
        let summary = AccountRow {
            account_id: "acc-1".into(),
            owner: "Ada".into(),
            balance: 0,
            status: AccountStatus::Open,
            version: 1,
            position: 1,
            opened_at_us: 0,
            updated_at_us: 0,
            provenance: Provenance::default(),
        };
        let rows = Rows { summaries: HashMap::from([("acc-1".into(), Some(summary))]), ..Rows::default() };
        let events = vec![
            (BOTH.to_vec(), record("acc-1", 2, 2, AccountEvent::Deposited { amount: 5 })),
            (BOTH.to_vec(), Err("payload does not decode".into())),
            (BOTH.to_vec(), record("acc-2", 4, 1, AccountEvent::Opened { owner: "Bob".into() })),
        ];
        let folded = fold(&events, rows);
        assert!(folded.outcomes[0].as_ref().is_err_and(|reason| reason.contains("version")), "{:?}", folded.outcomes);
        assert_eq!(folded.outcomes[1], Err("payload does not decode".into()));
        assert_eq!(folded.outcomes[2], Ok(()));
        let changed: Vec<&str> = folded.summaries.iter().map(|row| row.account_id.as_str()).collect();
        assert_eq!(changed, ["acc-2"], "the summary did not take the deposit the history refused");
        assert_eq!(folded.history.len(), 1);
    }

    #[test]
    fn each_row_is_stamped_with_the_span_of_the_event_that_last_wrote_it() {
        let events = vec![
            (BOTH.to_vec(), record("acc-1", 1, 1, AccountEvent::Opened { owner: "Ada".into() })),
            (BOTH.to_vec(), record("acc-1", 2, 2, AccountEvent::Deposited { amount: 30 })),
        ];
        let mut folded = fold(&events, Rows::default());
        let traces = HashMap::from([
            ((Projection::AccountSummary, 1), "summary-1".to_owned()),
            ((Projection::AccountSummary, 2), "summary-2".to_owned()),
            ((Projection::AccountHistory, 1), "history-1".to_owned()),
        ]);
        folded.stamp(42, &traces);
        let summary = &folded.summaries[0].provenance;
        assert_eq!((summary.projected_at_us, summary.projection_trace.as_deref()), (Some(42), Some("summary-2")));
        let history: Vec<Option<&str>> =
            folded.history.iter().map(|row| row.provenance.projection_trace.as_deref()).collect();
        assert_eq!(history, [Some("history-1"), None], "an unsampled span leaves no trace, not another's");
        assert!(folded.history.iter().all(|row| row.provenance.projected_at_us == Some(42)));
    }
}
