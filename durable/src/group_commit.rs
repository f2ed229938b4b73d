//! Group commit for the appliance's durable SQLite writes (audit trail,
//! catalog of received instances).
//!
//! Every durable write costs a flush of the disk (0.2–0.5 ms on the
//! appliance's disks), and concurrent writers to one database take turns.
//! With eight associations storing at once, eight commits one after the
//! other would make the eighth caller wait eight flushes. Here each caller
//! queues its items; if no other caller is writing, it becomes the writer:
//! it takes everything queued, writes it in one transaction (one flush for
//! every caller that queued while the previous commit was in progress) and
//! answers each caller. If more was queued meanwhile, it hands the writer's
//! role to the first caller waiting, so that no caller keeps writing for
//! others while its own peer waits for an answer. Either way a caller
//! returns only once its own items are durable, with its outputs in its
//! order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a submission was not written.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommitError<E> {
    /// The transaction failed; every caller of its batch gets the same
    /// error.
    Write(Arc<E>),
    /// The write gave a wrong number of outputs (a defect of the writer).
    Outputs {
        /// Outputs given.
        got: usize,
        /// Items written.
        items: usize,
    },
    /// The writer stopped (panicked) before answering.
    WriterStopped,
}

impl<E: std::fmt::Display> std::fmt::Display for CommitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Write(e) => write!(f, "group commit: {e}"),
            Self::Outputs { got, items } => {
                write!(
                    f,
                    "group commit: the write gave {got} outputs for {items} items"
                )
            }
            Self::WriterStopped => f.write_str("group commit: the writer stopped before writing"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CommitError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Write(e) => Some(&**e),
            _ => None,
        }
    }
}

/// A queue of writes committed together. `I` is what callers submit, `O`
/// what the write gives back for each item, `E` why a transaction failed.
pub struct GroupCommit<I, O, E = rusqlite::Error> {
    queue: Mutex<Queue<I, O, E>>,
    transactions: AtomicU64,
}

struct Queue<I, O, E> {
    pending: Vec<Pending<I, O, E>>,
    /// A caller is the writer: it writes what is queued until nothing is.
    writing: bool,
    /// Submissions since creation (diagnostics, tests).
    queued: u64,
}

/// One caller's items, and where to tell it what became of them.
struct Pending<I, O, E> {
    items: Vec<I>,
    done: SyncSender<Answer<O, E>>,
}

/// What a waiting caller is told.
enum Answer<O, E> {
    /// Its items were written (one output each), or why not.
    Written(Result<Vec<O>, CommitError<E>>),
    /// It is the writer now: what is queued, its own items included, is
    /// its to write.
    Write,
}

impl<I, O, E> Default for GroupCommit<I, O, E> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                writing: false,
                queued: 0,
            }),
            transactions: AtomicU64::new(0),
        }
    }
}

impl<I, O, E> std::fmt::Debug for GroupCommit<I, O, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &self.queued())
            .field("transactions", &self.transactions())
            .finish()
    }
}

impl<I, O, E> GroupCommit<I, O, E> {
    /// Submissions so far.
    pub fn queued(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).queued
    }

    /// Transactions written so far (each one flush).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Queue `items` and return once they are written. `write` gets every
    /// item queued at the time, callers in queue order and each caller's
    /// items in its order, writes them in one transaction and gives one
    /// output per item in the same order, or the reason the transaction
    /// failed (then every caller of the batch gets it).
    pub fn submit(
        &self,
        items: Vec<I>,
        write: impl Fn(&[&I]) -> Result<Vec<O>, E>,
    ) -> Result<Vec<O>, CommitError<E>> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let mut lead = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.pending.push(Pending { items, done });
            queue.queued += 1;
            !std::mem::replace(&mut queue.writing, true)
        };
        loop {
            if lead {
                self.write_queued(&write);
            }
            // A writer that stopped without answering (it panicked) leaves
            // the queue to whoever finds it without a writer.
            match result.recv_timeout(Duration::from_millis(100)) {
                Ok(Answer::Written(written)) => return written,
                Ok(Answer::Write) => lead = true,
                Err(RecvTimeoutError::Timeout) => {
                    let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    lead = !std::mem::replace(&mut queue.writing, true);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CommitError::WriterStopped);
                }
            }
        }
    }

    /// As the writer: write what is queued in one transaction and answer
    /// each caller; then hand the writer's role to the first caller queued
    /// meanwhile, or stop being the writer when none is.
    fn write_queued(&self, write: &impl Fn(&[&I]) -> Result<Vec<O>, E>) {
        /// Stops being the writer even if writing panics.
        struct Writer<'a, I, O, E>(&'a Mutex<Queue<I, O, E>>);
        impl<I, O, E> Drop for Writer<'_, I, O, E> {
            fn drop(&mut self) {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
            }
        }
        let writer = Writer(&self.queue);
        let batch = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.pending.is_empty() {
                queue.writing = false;
                std::mem::forget(writer);
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        let all: Vec<&I> = batch.iter().flat_map(|p| &p.items).collect();
        let items = all.len();
        let written = match write(&all) {
            Ok(outputs) if outputs.len() == all.len() => Ok(outputs),
            Ok(outputs) => Err(Failure::Outputs(outputs.len())),
            Err(e) => Err(Failure::Write(Arc::new(e))),
        };
        match written {
            Ok(outputs) => {
                self.transactions.fetch_add(1, Ordering::Relaxed);
                let mut outputs = outputs.into_iter();
                for p in batch {
                    let theirs = outputs.by_ref().take(p.items.len()).collect();
                    let _ = p.done.send(Answer::Written(Ok(theirs)));
                }
            }
            Err(failure) => {
                drop(all);
                for p in batch {
                    let error = match &failure {
                        Failure::Write(e) => CommitError::Write(e.clone()),
                        Failure::Outputs(got) => CommitError::Outputs { got: *got, items },
                    };
                    let _ = p.done.send(Answer::Written(Err(error)));
                }
            }
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // The role goes to the first caller still waiting (one whose
        // channel is gone has stopped waiting; the next one gets it).
        while let Some(first) = queue.pending.first() {
            if first.done.send(Answer::Write).is_ok() {
                std::mem::forget(writer);
                return;
            }
            let gone = queue.pending.remove(0);
            drop(gone);
        }
        queue.writing = false;
        std::mem::forget(writer);
    }
}

/// What failed in a batch, shared by its callers.
enum Failure<E> {
    Write(Arc<E>),
    Outputs(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_queued_behind_a_commit_share_the_next_one_and_get_their_own_outputs() {
        let commit: Arc<GroupCommit<(u32, u32), String, String>> = Arc::default();
        // The "database": a lock a commit in progress holds, and what was
        // written, transaction by transaction.
        let database = Arc::new(Mutex::new(Vec::<Vec<(u32, u32)>>::new()));
        let write = {
            let database = database.clone();
            move |items: &[&(u32, u32)]| {
                database
                    .lock()
                    .unwrap()
                    .push(items.iter().map(|i| **i).collect());
                Ok::<_, String>(items.iter().map(|(t, i)| format!("{t}.{i}")).collect())
            }
        };
        let first = commit.submit(vec![(99, 0)], &write).unwrap();
        assert_eq!(first, ["99.0"]);
        let held = database.lock().unwrap();
        let callers: Vec<_> = (0..6u32)
            .map(|t| {
                let (commit, write) = (commit.clone(), write.clone());
                std::thread::spawn(move || {
                    commit
                        .submit((0..3).map(|i| (t, i)).collect(), write)
                        .unwrap()
                })
            })
            .collect();
        while commit.queued() < 7 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        for (t, caller) in callers.into_iter().enumerate() {
            assert_eq!(
                caller.join().unwrap(),
                [0, 1, 2].map(|i| format!("{t}.{i}"))
            );
        }
        // The first writer took its own items and waited for the lock;
        // everything queued meanwhile went into one more transaction.
        let transactions = commit.transactions() - 1;
        assert!((1..=2).contains(&transactions), "{transactions}");
        assert_eq!(database.lock().unwrap().len() as u64, commit.transactions());
        let written: usize = database.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(written, 1 + 18);
    }

    #[test]
    fn the_writer_answers_its_own_batch_and_hands_the_next_one_to_a_waiting_caller() {
        type Log = Vec<(std::thread::ThreadId, Vec<u32>)>;
        let commit: Arc<GroupCommit<u32, u32, String>> = Arc::default();
        let database = Arc::new(Mutex::new(Log::new()));
        let write = {
            let database = database.clone();
            move |items: &[&u32]| {
                let items: Vec<u32> = items.iter().map(|i| **i).collect();
                database
                    .lock()
                    .unwrap()
                    .push((std::thread::current().id(), items.clone()));
                Ok::<_, String>(items)
            }
        };
        let held = database.lock().unwrap();
        let submit = |item: u32| {
            let (commit, write) = (commit.clone(), write.clone());
            std::thread::spawn(move || commit.submit(vec![item], write).unwrap())
        };
        // The first caller becomes the writer and waits for the database...
        let first = submit(1);
        while commit.queued() < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...while two more queue behind it.
        let others = [submit(2), submit(3)];
        while commit.queued() < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let first_thread = first.thread().id();
        let other_threads: Vec<_> = others.iter().map(|h| h.thread().id()).collect();
        drop(held);
        assert_eq!(first.join().unwrap(), [1]);
        let mut rest: Vec<u32> = others.into_iter().flat_map(|h| h.join().unwrap()).collect();
        rest.sort_unstable();
        assert_eq!(rest, [2, 3]);
        let log = database.lock().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0], (first_thread, vec![1]));
        // The second batch was written by one of its own callers, not by
        // the first, which returned as soon as its own item was durable.
        assert!(other_threads.contains(&log[1].0), "{log:?}");
        let mut second = log[1].1.clone();
        second.sort_unstable();
        assert_eq!(second, [2, 3]);
    }

    #[test]
    fn a_failed_transaction_fails_every_caller_of_its_batch_and_the_next_one_is_written() {
        let commit: GroupCommit<u32, u32, String> = GroupCommit::default();
        let failing = |_: &[&u32]| Err::<Vec<u32>, _>("disk full".to_string());
        let err = commit.submit(vec![1, 2], failing).unwrap_err();
        assert!(
            matches!(&err, CommitError::Write(e) if **e == "disk full"),
            "{err}"
        );
        let short = |_: &[&u32]| Ok(vec![1]);
        let err = commit.submit(vec![1, 2], short).unwrap_err();
        assert!(err.to_string().contains("1 outputs for 2 items"), "{err}");
        assert_eq!(commit.transactions(), 0);
        let doubled = |items: &[&u32]| Ok(items.iter().map(|i| **i * 2).collect());
        assert_eq!(commit.submit(vec![3, 4], doubled).unwrap(), vec![6, 8]);
        assert_eq!(commit.transactions(), 1);
    }
}
