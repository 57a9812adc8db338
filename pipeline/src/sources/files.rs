//! The embedded input: JSONL files (native events or CloudEvents, one per line) read in parallel
//! by all workers, or standard input read by worker 0.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use meterflow_operators::source::{Chunk, ChunkReader, Position, Read, ReadAt};
use meterflow_operators::Epoch;

/// A file read by offset, so every worker reads its own chunks without sharing a cursor.
pub struct FileInput {
    file: File,
    len: u64,
}

impl FileInput {
    pub fn open(path: &Path) -> std::io::Result<FileInput> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(FileInput { file, len })
    }

    /// The file's first `len` bytes (what it held when the run started; a file that shrank
    /// below fails its reads).
    pub fn open_upto(path: &Path, len: u64) -> std::io::Result<FileInput> {
        Ok(FileInput {
            file: File::open(path)?,
            len,
        })
    }
}

impl ReadAt for FileInput {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

/// Standard input, cut into chunks exactly as a file of the same bytes would be: chunk `k` holds
/// the records that start in `[k·C, (k+1)·C)` of the stream. So epochs, and with them the
/// watermark and every lateness decision, do not depend on how the pipe delivers the bytes.
/// Only worker 0 reads it. A resumed run reads what stdin brings as new input, in the epochs
/// after the commit.
pub struct StdinReader {
    chunk_bytes: u64,
    /// Stream bytes from `offset` on, read but not yet handed out.
    carry: Vec<u8>,
    offset: u64,
    chunk: u64,
    epoch: Epoch,
    source: u32,
    done: bool,
}

impl StdinReader {
    pub fn new(chunk_bytes: u64, source: u32, committed: Option<Epoch>) -> StdinReader {
        StdinReader {
            chunk_bytes: chunk_bytes.max(1),
            carry: Vec::new(),
            offset: 0,
            chunk: 0,
            epoch: committed.map_or(0, |e| e + 1),
            source,
            done: false,
        }
    }

    /// Reads until `carry` holds a line end at or after index `from`, or stdin ends.
    fn fill_past(&mut self, from: usize) -> std::io::Result<()> {
        let mut stdin = std::io::stdin().lock();
        while !self.done && (self.carry.len() <= from || !self.carry[from..].contains(&b'\n')) {
            let start = self.carry.len();
            self.carry.resize(start + 65536, 0);
            match stdin.read(&mut self.carry[start..]) {
                Ok(0) => {
                    self.carry.truncate(start);
                    self.done = true;
                }
                Ok(n) => self.carry.truncate(start + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.carry.truncate(start),
                Err(e) => {
                    self.carry.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl ChunkReader for StdinReader {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        (!self.done || !self.carry.is_empty()).then_some(self.epoch)
    }

    /// Blocks on stdin: there is nothing else for this input to wait for.
    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Read {
        let end = (self.chunk + 1) * self.chunk_bytes;
        buf.clear();
        if end > self.offset {
            // The record that crosses `end` belongs here: take through the first line end at or
            // after byte `end - 1`.
            let from = (end - 1 - self.offset) as usize;
            if let Err(e) = self.fill_past(from) {
                return Read::Failed(e);
            }
            let take = match self
                .carry
                .get(from..)
                .and_then(|t| t.iter().position(|&b| b == b'\n'))
            {
                Some(i) => from + i + 1,
                None => self.carry.len(),
            };
            buf.extend(self.carry.drain(..take));
        }
        if buf.is_empty() && self.done && self.carry.is_empty() {
            return Read::Done;
        }
        let next_offset = self.offset + buf.len() as u64;
        let chunk = Chunk {
            epoch: self.epoch,
            source: self.source,
            base_offset: self.offset,
            bytes: buf,
            positions: vec![Position {
                source: self.source,
                partition: 0,
                next_offset,
                check: 0,
            }],
            ..Chunk::default()
        };
        self.offset = next_offset;
        self.chunk += 1;
        self.epoch += 1;
        Read::Chunk(chunk)
    }
}

/// A worker with nothing to read.
pub struct NoInput;

impl ChunkReader for NoInput {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        None
    }
    fn next_chunk(&mut self, _: Vec<u8>) -> Read {
        Read::Done
    }
}
