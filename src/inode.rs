//! Inode numbers for remote paths, and the directory listings behind them.
//!
//! A path keeps its inode number for the life of the mount, so the kernel's caches and `find`
//! see a stable tree. Nodes are never freed: a mount holds one small record per path it has
//! seen, which is what lets a cached directory answer `ls` while the server is down.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use crate::remote::{EntryKind, RemoteEntry};

pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: u64,
    /// Path relative to the mount's remote root, without a leading `/` (root is "").
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: Option<u32>,
    pub link_target: Option<String>,
}

#[derive(Debug)]
pub struct DirListing {
    /// Entries in server order: (name, inode).
    pub entries: Vec<(String, u64)>,
    pub fetched: Instant,
}

#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    dirs: HashMap<u64, DirListing>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        let root = Node {
            parent: ROOT,
            path: String::new(),
            kind: EntryKind::Dir,
            size: 0,
            // The server does not say when its root changed; the mount time is the honest guess.
            mtime: SystemTime::now(),
            perm: Some(0o755),
            link_target: None,
        };
        Inodes {
            nodes: HashMap::from([(ROOT, root)]),
            by_path: HashMap::from([(String::new(), ROOT)]),
            dirs: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn listing(&self, dir: u64) -> Option<&DirListing> {
        self.dirs.get(&dir)
    }

    /// Replaces a directory's listing with what the server just said.
    pub fn store_listing(&mut self, dir: u64, entries: Vec<RemoteEntry>) {
        let Some(parent_path) = self.nodes.get(&dir).map(|n| n.path.clone()) else {
            return;
        };
        let mut listed = Vec::with_capacity(entries.len());
        for e in entries {
            let path = if parent_path.is_empty() { e.name.clone() } else { format!("{parent_path}/{}", e.name) };
            let ino = match self.by_path.get(&path) {
                Some(&ino) => ino,
                None => {
                    let ino = self.next;
                    self.next += 1;
                    self.by_path.insert(path.clone(), ino);
                    ino
                }
            };
            self.nodes.insert(
                ino,
                Node {
                    parent: dir,
                    path,
                    kind: e.kind,
                    size: e.size,
                    mtime: e.mtime,
                    perm: e.perm,
                    link_target: e.link_target,
                },
            );
            listed.push((e.name, ino));
        }
        self.dirs.insert(dir, DirListing { entries: listed, fetched: Instant::now() });
    }

    /// Finds `name` in a stored listing of `dir`.
    pub fn child(&self, dir: u64, name: &str) -> Option<u64> {
        let node = self.nodes.get(&dir)?;
        let path = if node.path.is_empty() { name.to_string() } else { format!("{}/{name}", node.path) };
        let ino = *self.by_path.get(&path)?;
        // Only a child the latest listing still shows exists; an entry that vanished from the
        // server keeps its number but is not found.
        let listing = self.dirs.get(&dir)?;
        listing.entries.iter().any(|(_, i)| *i == ino).then_some(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: EntryKind, size: u64) -> RemoteEntry {
        RemoteEntry {
            name: name.into(),
            kind,
            size,
            mtime: SystemTime::UNIX_EPOCH,
            mtime_precision: 1,
            perm: None,
            link_target: None,
        }
    }

    #[test]
    fn a_path_keeps_its_inode_across_relistings() {
        let mut t = Inodes::new();
        t.store_listing(ROOT, vec![entry("stage", EntryKind::Dir, 0), entry("a.fits", EntryKind::File, 10)]);
        let a = t.child(ROOT, "a.fits").expect("listed");
        t.store_listing(ROOT, vec![entry("a.fits", EntryKind::File, 20)]);
        assert_eq!(t.child(ROOT, "a.fits"), Some(a));
        assert_eq!(t.get(a).map(|n| n.size), Some(20), "attributes follow the new listing");
        assert_eq!(t.child(ROOT, "stage"), None, "entries gone from the server are not found");
    }

    #[test]
    fn nested_paths_are_built_from_the_parent() {
        let mut t = Inodes::new();
        t.store_listing(ROOT, vec![entry("stage", EntryKind::Dir, 0)]);
        let stage = t.child(ROOT, "stage").expect("listed");
        t.store_listing(stage, vec![entry(" lead space", EntryKind::File, 1)]);
        let f = t.child(stage, " lead space").expect("listed");
        assert_eq!(t.get(f).map(|n| n.path.as_str()), Some("stage/ lead space"));
    }
}
