//! A whole file tree in memory, for small NARs and for tests: what a NAR
//! describes, without its byte layout.
//!
//! Keeps true: a tree read from a NAR writes back to the same bytes, and a
//! tree whose names are valid writes to a NAR that reads back to the same
//! tree (entries live in a `BTreeMap`, which is the NAR's bytewise order).

use super::{NarError, NarEvent, NarLimits, NarWriteError, NarWriter, parse_complete};
use std::collections::BTreeMap;

/// A file tree as a NAR describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NarTree {
    File { executable: bool, contents: Vec<u8> },
    Symlink { target: Vec<u8> },
    Directory(BTreeMap<Vec<u8>, NarTree>),
}

impl NarTree {
    /// Reads the tree of `nar`, which must be exactly one NAR. Holds every
    /// file's contents in memory: meant for NARs already in memory.
    pub fn from_nar(nar: &[u8], limits: NarLimits) -> Result<NarTree, NarError> {
        let mut builder = Builder::default();
        parse_complete(nar, limits, |event| builder.event(event))?;
        // The parser reports `Done` only after the root node closed, and
        // the builder sets `root` exactly then; absent would mean the
        // events stopped early.
        builder.root.ok_or(NarError::Truncated)
    }

    /// The NAR of this tree, or why there is none (an invalid name or
    /// symlink target).
    pub fn to_nar(&self) -> Result<Vec<u8>, NarWriteError> {
        let mut out = Vec::new();
        let mut writer = NarWriter::new();
        self.write(b"", &mut writer, &mut out)?;
        Ok(out)
    }

    /// Feeds this tree, named `name`, to `writer` as events. Recursion is
    /// as deep as the tree.
    pub fn write(
        &self,
        name: &[u8],
        writer: &mut NarWriter,
        out: &mut Vec<u8>,
    ) -> Result<(), NarWriteError> {
        match self {
            NarTree::File {
                executable,
                contents,
            } => {
                let size_bytes = contents.len() as u64;
                writer.write(
                    NarEvent::File {
                        name,
                        executable: *executable,
                        size_bytes,
                    },
                    out,
                )?;
                if !contents.is_empty() {
                    writer.write(NarEvent::FileData(contents), out)?;
                }
                writer.write(NarEvent::FileEnd, out)
            }
            NarTree::Symlink { target } => writer.write(NarEvent::Symlink { name, target }, out),
            NarTree::Directory(entries) => {
                writer.write(NarEvent::Directory { name }, out)?;
                for (entry_name, node) in entries {
                    node.write(entry_name, writer, out)?;
                }
                writer.write(NarEvent::DirectoryEnd, out)
            }
        }
    }
}

/// Assembles a tree from a well-formed event sequence (as the parser
/// guarantees).
#[derive(Default)]
struct Builder {
    /// Open directories, innermost last.
    open: Vec<OpenDir>,
    /// The regular file being read.
    file: Option<(Vec<u8>, bool, Vec<u8>)>,
    root: Option<NarTree>,
}

struct OpenDir {
    name: Vec<u8>,
    entries: BTreeMap<Vec<u8>, NarTree>,
}

impl Builder {
    fn event(&mut self, event: NarEvent<'_>) {
        match event {
            NarEvent::Directory { name } => self.open.push(OpenDir {
                name: name.to_vec(),
                entries: BTreeMap::new(),
            }),
            NarEvent::DirectoryEnd => {
                if let Some(dir) = self.open.pop() {
                    self.add(dir.name, NarTree::Directory(dir.entries));
                }
            }
            NarEvent::File {
                name,
                executable,
                size_bytes,
            } => {
                // The contents arrive in full before `FileEnd`; reserving
                // more than a little up front would trust the NAR's claim.
                let reserve = size_bytes.min(1 << 16) as usize;
                self.file = Some((name.to_vec(), executable, Vec::with_capacity(reserve)));
            }
            NarEvent::FileData(data) => {
                if let Some((_, _, contents)) = &mut self.file {
                    contents.extend_from_slice(data);
                }
            }
            NarEvent::FileEnd => {
                if let Some((name, executable, contents)) = self.file.take() {
                    self.add(
                        name,
                        NarTree::File {
                            executable,
                            contents,
                        },
                    );
                }
            }
            NarEvent::Symlink { name, target } => self.add(
                name.to_vec(),
                NarTree::Symlink {
                    target: target.to_vec(),
                },
            ),
        }
    }

    /// Puts a finished node into its directory, or makes it the root.
    fn add(&mut self, name: Vec<u8>, node: NarTree) {
        match self.open.last_mut() {
            Some(dir) => {
                dir.entries.insert(name, node);
            }
            None => self.root = Some(node),
        }
    }
}
