//! The embedded input: JSONL files (native events or CloudEvents, one per line) read in parallel
//! by all workers, or standard input read by worker 0.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use meterflow_operators::source::{Chunk, ChunkReader, Read, ReadAt};
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
}

impl ReadAt for FileInput {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

/// Standard input, cut into chunks at line ends. Only worker 0 reads it.
pub struct StdinReader {
    chunk_bytes: usize,
    carry: Vec<u8>,
    offset: u64,
    epoch: Epoch,
    source: u32,
    done: bool,
}

impl StdinReader {
    pub fn new(chunk_bytes: u64, source: u32) -> StdinReader {
        StdinReader {
            chunk_bytes: chunk_bytes as usize,
            carry: Vec::new(),
            offset: 0,
            epoch: 0,
            source,
            done: false,
        }
    }
}

impl ChunkReader for StdinReader {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        (!self.done || !self.carry.is_empty()).then_some(self.epoch)
    }

    /// Blocks on stdin: there is nothing else for this input to wait for.
    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Read {
        buf.clear();
        buf.append(&mut self.carry);
        let mut stdin = std::io::stdin().lock();
        while !self.done && (buf.len() < self.chunk_bytes || memchr_last(&buf).is_none()) {
            let start = buf.len();
            buf.resize(self.chunk_bytes.max(start + 65536), 0);
            match stdin.read(&mut buf[start..]) {
                Ok(0) => {
                    buf.truncate(start);
                    self.done = true;
                }
                Ok(n) => buf.truncate(start + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
                Err(e) => return Read::Failed(e),
            }
        }
        if buf.is_empty() && self.done {
            return Read::Done;
        }
        // Keep a trailing partial record for the next chunk.
        if !self.done {
            if let Some(last_nl) = memchr_last(&buf) {
                self.carry = buf.split_off(last_nl + 1);
            }
        }
        let chunk = Chunk {
            epoch: self.epoch,
            source: self.source,
            base_offset: self.offset,
            bytes: buf,
            ..Chunk::default()
        };
        self.offset += chunk.bytes.len() as u64;
        self.epoch += 1;
        Read::Chunk(chunk)
    }
}

fn memchr_last(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
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
