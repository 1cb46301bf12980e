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
pub fn ordered_map<T, R, W, C>(items: Vec<T>, threads: usize, work: W, consume: C)
where
    T: Send,
    R: Send,
    W: Fn(T) -> R + Sync,
    C: FnMut(usize, R),
{
    ordered_map_iter(items.into_iter(), threads, work, consume)
}

/// [`ordered_map`] over an iterator that is pulled lazily, one item per free worker, so a
/// stream of any length is processed with at most `threads * 4` items in memory. The iterator
/// runs under a lock, one `next()` at a time, so it may keep sequential state.
pub fn ordered_map_iter<I, T, R, W, C>(items: I, threads: usize, work: W, mut consume: C)
where
    I: Iterator<Item = T> + Send,
    T: Send,
    R: Send,
    W: Fn(T) -> R + Sync,
    C: FnMut(usize, R),
{
    let threads = threads.max(1);
    if threads == 1 {
        for (i, item) in items.enumerate() {
            consume(i, work(item));
        }
        return;
    }
    let window = threads * 4;
    // The source and the index of the next item it gives.
    let source = Mutex::new((items, 0usize));
    // The index the consumer waits for next; workers hold back while too far ahead of it.
    let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let gate = Arc::clone(&gate);
            let source = &source;
            let work = &work;
            scope.spawn(move || loop {
                let (index, item) = {
                    let mut src = source.lock().unwrap();
                    let index = src.1;
                    {
                        let (lock, cvar) = &*gate;
                        let mut next = lock.lock().unwrap();
                        while index >= *next + window {
                            next = cvar.wait(next).unwrap();
                        }
                    }
                    match src.0.next() {
                        Some(item) => {
                            src.1 += 1;
                            (index, item)
                        }
                        None => return,
                    }
                };
                if tx.send((index, work(item))).is_err() {
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
                *lock.lock().unwrap() = next;
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
            |i| {
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

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn a_lazy_stream_is_pulled_in_order_and_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulled = AtomicUsize::new(0);
        let consumed = AtomicUsize::new(0);
        let items = (0..300u64).inspect(|_| {
            let p = pulled.fetch_add(1, Ordering::SeqCst) + 1;
            // never more than the window ahead of the consumer
            assert!(p <= consumed.load(Ordering::SeqCst) + 3 * 4 + 1);
        });
        let mut seen = Vec::new();
        ordered_map_iter(
            items,
            3,
            |i| i + 1,
            |i, r| {
                consumed.fetch_add(1, Ordering::SeqCst);
                seen.push((i, r));
            },
        );
        assert_eq!(
            seen,
            (0..300).map(|i| (i as usize, i + 1)).collect::<Vec<_>>()
        );
    }
}
