//! An order-preserving parallel map for per-file work.
//!
//! Workers take items in order and results are handed to the consumer in input order, as soon
//! as each is next in line. At most `window` items are in flight or waiting, so memory does not
//! grow with the number of inputs even when one item is slow.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

/// Runs `work` on every item with `threads` workers and calls `consume(index, result)` in input
/// order on the calling thread.
pub fn ordered_map<T, R, W, C>(items: Vec<T>, threads: usize, work: W, mut consume: C)
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    C: FnMut(usize, R),
{
    let threads = threads.max(1);
    let total = items.len();
    if threads == 1 {
        for (i, item) in items.iter().enumerate() {
            consume(i, work(item));
        }
        return;
    }
    let window = threads * 4;
    // (next index to hand out, next index the consumer will take)
    let gate = Arc::new((Mutex::new((0usize, 0usize)), Condvar::new()));
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let gate = Arc::clone(&gate);
            let items = &items;
            let work = &work;
            scope.spawn(move || loop {
                let index = {
                    let (lock, cvar) = &*gate;
                    let mut state = lock.lock().unwrap();
                    while state.0 < total && state.0 >= state.1 + window {
                        state = cvar.wait(state).unwrap();
                    }
                    if state.0 >= total {
                        return;
                    }
                    state.0 += 1;
                    state.0 - 1
                };
                if tx.send((index, work(&items[index]))).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut next = 0;
        for (index, result) in rx.iter() {
            pending.insert(index, result);
            while let Some(result) = pending.remove(&next) {
                consume(next, result);
                next += 1;
                let (lock, cvar) = &*gate;
                lock.lock().unwrap().1 = next;
                cvar.notify_all();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_input_order() {
        let items: Vec<u64> = (0..500).collect();
        let mut seen = Vec::new();
        ordered_map(
            items,
            4,
            |&i| {
                // uneven work so that workers finish out of order
                std::thread::sleep(std::time::Duration::from_micros((i * 7919) % 300));
                i * 2
            },
            |i, r| seen.push((i, r)),
        );
        assert_eq!(seen.len(), 500);
        for (k, (i, r)) in seen.iter().enumerate() {
            assert_eq!((*i, *r), (k, 2 * k as u64));
        }
    }
}
