//! Linearizable reads on the leader: read-index rounds shared by
//! concurrent reads ([`ReadBarrier`]), and a read lease ([`ReadLease`])
//! that lets the leader answer without any round for a while after one.
//!
//! Why the lease is safe. A round that started at `t0` ends when a quorum
//! has answered heartbeats sent after `t0`; each follower that answered
//! refreshed its own leader lease at that moment, and openraft refuses
//! every vote request until its lease (`election_timeout_max`) has run out
//! since the last refresh. So no other leader can be elected before
//! `t0 + election_timeout_max` as measured on the followers' clocks; this
//! node serves reads from its own state machine only until
//! `t0 + lease`, with `lease` a fraction of that (room for clock rate
//! differences). Every write acknowledged to a client was applied on the
//! leader before the answer, and the round itself waited until the state
//! machine had applied everything committed before it, so a read in the
//! lease sees every write acknowledged before it arrived.
//!
//! A follower that restarts forgets when it last heard from the leader
//! (openraft then treats its lease as expired), so it could vote at once
//! and help elect a second leader while the old one still serves reads
//! from its lease. [`VoteGate`] closes that: a meta node refuses vote
//! requests until `election_timeout_max` after it started, longer than
//! any lease it can have given before it went down.
//!
//! The lease belongs to one leader epoch (term and membership): a new
//! term, a membership change, or losing leadership ends it, and the next
//! read runs a round.

use std::time::{Duration, Instant};

use tonic::Status;

/// Coalesces the leader checks of concurrent linearizable reads (read
/// index batching). A read must see every write acknowledged before it
/// arrived: any `ensure_linearizable` round that *started* after the read
/// arrived proves that (it confirms leadership with a quorum after that
/// point and waits until the state machine has applied the commit index
/// it read then). Reads that arrive while a round runs wait for the next
/// one, which covers all of them: one round trip to the followers per
/// batch instead of per read.
#[derive(Default)]
pub(crate) struct ReadBarrier {
    /// Reads that have arrived (each takes the next number).
    arrivals: std::sync::atomic::AtomicU64,
    /// One round at a time; holds the arrivals the last finished round
    /// covers and its outcome.
    round: tokio::sync::Mutex<(u64, Option<Result<(), Status>>)>,
}

impl ReadBarrier {
    /// Waits for a round that started after this call, running it if no
    /// other caller is; `check` is the round (`ensure_linearizable`).
    pub(crate) async fn wait<F, Fut>(&self, check: F) -> Result<(), Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        use std::sync::atomic::Ordering;
        let ticket = self.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        let mut round = self.round.lock().await;
        if round.0 >= ticket {
            if let Some(outcome) = &round.1 {
                return outcome.clone();
            }
        }
        // Every read numbered up to `covers` arrived before this round.
        let covers = self.arrivals.load(Ordering::SeqCst);
        let outcome = check().await;
        *round = (covers, Some(outcome.clone()));
        outcome
    }
}

/// The leader epoch a lease belongs to: the term, and the log index of
/// the membership config in effect (a membership change changes the
/// quorum a round was confirmed by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaderEpoch {
    pub term: u64,
    pub membership: Option<u64>,
}

/// A leader's read lease: until when reads of an epoch need no round.
pub(crate) struct ReadLease {
    length: Duration,
    granted: std::sync::Mutex<Option<(LeaderEpoch, Instant)>>,
}

impl ReadLease {
    /// A lease of `length` after each round's start; zero turns leases off.
    pub(crate) fn new(length: Duration) -> Self {
        ReadLease {
            length,
            granted: std::sync::Mutex::new(None),
        }
    }

    /// Whether a read at `now`, while this node leads `epoch`, may be
    /// answered without a round.
    pub(crate) fn covers(&self, epoch: LeaderEpoch, now: Instant) -> bool {
        let granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        matches!(*granted, Some((e, until)) if e == epoch && now < until)
    }

    /// Records a round of `epoch` that started at `started` and succeeded.
    /// A lease is only ever extended within one epoch; a new epoch
    /// replaces it.
    pub(crate) fn extend(&self, epoch: LeaderEpoch, started: Instant) {
        if self.length.is_zero() {
            return;
        }
        let until = started + self.length;
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        match *granted {
            Some((e, old)) if e == epoch && old >= until => {}
            _ => *granted = Some((epoch, until)),
        }
    }
}

/// Refuses vote requests for a while after the node started (see the
/// module comment): a restarted node must not help elect a leader while
/// a lease it confirmed before it went down may still be in use.
pub(crate) struct VoteGate {
    opens: Instant,
}

impl VoteGate {
    /// A gate that opens `after` from now.
    pub(crate) fn closed_for(after: Duration) -> Self {
        VoteGate {
            opens: Instant::now() + after,
        }
    }

    /// An error while the gate is closed.
    pub(crate) fn check(&self) -> Result<(), Status> {
        let now = Instant::now();
        if now < self.opens {
            return Err(Status::unavailable(format!(
                "meta node started recently: no votes for another {} ms",
                (self.opens - now).as_millis()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_reads_share_rounds_that_started_after_them() {
        let barrier = Arc::new(ReadBarrier::default());
        let rounds = Arc::new(AtomicU64::new(0));
        // A slow first round: the reads arriving meanwhile wait for a
        // second round, which serves all of them.
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (b, r) = (barrier.clone(), rounds.clone());
            tokio::spawn(async move {
                b.wait(|| async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.await;
                    Ok(())
                })
                .await
            })
        };
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let mut later = Vec::new();
        for _ in 0..8 {
            let (b, r) = (barrier.clone(), rounds.clone());
            later.push(tokio::spawn(async move {
                b.wait(|| async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // None of them may be answered by the round that started first.
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        for t in later {
            t.await.unwrap().unwrap();
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);

        // A read after every round has finished runs its own round, and a
        // failed round's error reaches the reads it covers.
        let r = barrier
            .wait(|| async { Err(Status::unavailable("no quorum")) })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable);
        let r = barrier.wait(|| async { Ok(()) }).await;
        assert!(r.is_ok());
    }

    fn epoch(term: u64, membership: u64) -> LeaderEpoch {
        LeaderEpoch {
            term,
            membership: Some(membership),
        }
    }

    #[test]
    fn a_lease_covers_its_epoch_until_it_runs_out() {
        let ms = Duration::from_millis;
        let lease = ReadLease::new(ms(600));
        let t0 = Instant::now();
        let e = epoch(3, 1);
        assert!(!lease.covers(e, t0), "no round yet, no lease");
        lease.extend(e, t0);
        assert!(lease.covers(e, t0));
        assert!(lease.covers(e, t0 + ms(599)));
        assert!(!lease.covers(e, t0 + ms(600)), "ends at start + length");
        // Another term or another membership: the lease is not theirs.
        assert!(!lease.covers(epoch(4, 1), t0 + ms(1)));
        assert!(!lease.covers(epoch(3, 7), t0 + ms(1)));
        assert!(!lease.covers(
            LeaderEpoch {
                term: 3,
                membership: None
            },
            t0
        ));
        // A round that started earlier than the last never shortens it.
        lease.extend(e, t0 - ms(300));
        assert!(lease.covers(e, t0 + ms(599)));
        // A later round extends it.
        lease.extend(e, t0 + ms(500));
        assert!(lease.covers(e, t0 + ms(1099)));
        assert!(!lease.covers(e, t0 + ms(1100)));
        // A new epoch replaces it, and the old epoch is not covered again.
        lease.extend(epoch(4, 1), t0 + ms(600));
        assert!(lease.covers(epoch(4, 1), t0 + ms(700)));
        assert!(!lease.covers(e, t0 + ms(700)));
    }

    #[test]
    fn a_zero_lease_never_covers_a_read() {
        let lease = ReadLease::new(Duration::ZERO);
        let now = Instant::now();
        lease.extend(epoch(1, 1), now);
        assert!(!lease.covers(epoch(1, 1), now));
    }

    #[test]
    fn the_vote_gate_refuses_until_it_opens() {
        let closed = VoteGate::closed_for(Duration::from_secs(60));
        let err = closed.check().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("no votes"), "{}", err.message());
        assert!(VoteGate::closed_for(Duration::ZERO).check().is_ok());
    }
}
