//! Counters that users and the benchmark read while mounted (`mastfs stats MOUNTPOINT`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Monotonic counters, updated lock-free from every thread.
        #[derive(Default, Debug)]
        pub struct Stats { $(#[doc = $doc] pub $name: AtomicU64,)* }

        impl Stats {
            /// One `name value` line per counter, in a fixed order.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(out.push_str(&format!("{} {}\n", stringify!($name), self.$name.load(Ordering::Relaxed)));)*
                out
            }
        }
    };
}

counters! {
    cache_hits: "Blocks a read found in memory or the disk cache with all the bytes it wanted.",
    cache_misses: "Blocks a read had to wait on the server for.",
    served_bytes: "File bytes returned to readers.",
    fetched_bytes: "File bytes the read path took from transfers.",
    fetches: "Ranged transfers the read path opened (REST + RETR), resumptions included.",
    peeks: "Transfers that served random reads (ended ones).",
    prefetches: "Transfers started before any read asked for their bytes (the next header of a FITS file).",
    stripes: "Transfers that served a sequential reader: stripes, and the peek that led into them (ended ones).",
    planned_ends: "Transfers closed where they were planned to end, before the end of the file (stripe ends).",
    cancelled: "Transfers closed before their planned end (file closed, reader idle or elsewhere, preempted).",
    resumed: "Broken transfers reopened at the exact byte they had reached.",
    net_bytes: "File bytes received on data connections.",
    retrs: "RETR commands sent.",
    aborts: "Transfers ended before the end of the file (the reader closed early).",
    listings: "Directory listings fetched (MLSD or LIST).",
    logins: "Control connections opened and logged in.",
    spares: "Logins started in the background, when a request took the last ready connection.",
    reconnects: "Connections discarded after an error and replaced.",
    retries: "Operations retried after a transient failure.",
    too_many: "Refusals for too many connections (421).",
    read_errors: "Reads that failed with an error returned to the caller.",
    cache_write_errors: "Blocks that could not be written to the disk cache.",
    round_trips: "Times a request waited for the server after sending to it (replies, TCP connects, TLS flights).",
    background_round_trips: "The same waits of connections being re-armed or cleaned up off the request path.",
    armed: "Data connections opened ahead on idle connections (PASV answered, TCP connected).",
    stale_arms: "Data connections opened ahead that the server had closed by the time a request took them.",
    link_bytes: "Bytes received on data connections as TCP counted them (TLS included): what crossed the link.",
    disk_listings: "Directory listings read from the disk cache instead of the server.",
    offline: "1 while the mount is offline (serving only what the cache holds), else 0.",
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
