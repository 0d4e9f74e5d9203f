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
    cache_hits: "Blocks served from the disk or memory cache.",
    cache_misses: "Blocks that had to come from the server.",
    net_bytes: "File bytes received on data connections.",
    retrs: "RETR commands sent.",
    aborts: "Transfers stopped early with ABOR.",
    listings: "Directory listings fetched (MLSD or LIST).",
    logins: "Control connections opened and logged in.",
    reconnects: "Connections discarded after an error and replaced.",
    retries: "Operations retried after a transient failure.",
    too_many: "Refusals for too many connections (421).",
    read_errors: "Reads that failed with an error returned to the caller.",
    cache_write_errors: "Blocks that could not be written to the disk cache.",
    prefetched_blocks: "Blocks fetched ahead of the reader.",
    disk_listings: "Directory listings read from the disk cache instead of the server.",
    offline: "1 while the mount is offline (serving only what the cache holds), else 0.",
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
