//! The source: hands raw chunks of input to the dataflow, one epoch per chunk.
//!
//! (data, time, diff): emits one [`Chunk`] at time `chunk.epoch`, then downgrades its capability
//! to the epoch of its next chunk; drops the capability when the reader is done. For files,
//! epochs come from the input's shape (a chunk is a fixed byte range), never from the wall clock or
//! the worker count, so results are the same with any number of workers. For Kafka, each worker
//! cuts its partitions' messages into one chunk per epoch interval, and records the offsets
//! reached so progress can be committed with the outputs.
//!
//! Flow control: a worker does not start an epoch more than `max_epochs_ahead` beyond what the
//! whole dataflow has completed, so state stashed for unfinished epochs stays bounded.
//!
//! Errors: an I/O error keeps the capability (downstream must not believe the input complete),
//! records the error for the driver and stops reading; the driver then fails the run.

use std::rc::Rc;

use timely::dataflow::operators::generic::operator::source as timely_source;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::accounting::LatencyClock;
use meterflow_schemas::lineage::KafkaMeta;

use crate::{Epoch, Fatal};

/// Input for one epoch: either a byte range of a file holding whole newline-delimited records
/// (`messages` empty), or a run of Kafka messages laid end to end in `bytes`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub epoch: Epoch,
    /// Index of the input (file or topic) in the run.
    pub source: u32,
    /// For a file: byte offset of `bytes[0]` within it.
    pub base_offset: u64,
    pub bytes: Vec<u8>,
    /// For messages: where each one lies in `bytes`.
    pub messages: Vec<MessageSpan>,
    /// Where the reader stands after this chunk, per partition it reads (what a commit records).
    pub positions: Vec<Position>,
    /// For messages: their keys and headers, laid end to end (see [`MessageSpan`]).
    pub meta: Vec<u8>,
    /// For messages: every partition the reader is assigned and whether it had read all there
    /// was when the chunk was cut (drives per-partition watermarks).
    pub partitions: Vec<PartitionState>,
}

impl Chunk {
    /// A message's key and headers, kept on the rows (accepted events, rejections) of its
    /// records.
    pub fn kafka_meta(&self, m: &MessageSpan) -> Option<Box<KafkaMeta>> {
        let text = |start: u32, len: u32| {
            self.meta
                .get(start as usize..(start + len) as usize)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        (m.key_len > 0 || m.headers_len > 0).then(|| {
            Box::new(KafkaMeta {
                key: text(m.meta_start, m.key_len),
                headers: text(m.meta_start + m.key_len, m.headers_len),
            })
        })
    }
}

/// Whether a partition holds back the watermark when a chunk was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    pub source: u32,
    pub partition: i32,
    /// Everything the broker held for the partition had been read, and nothing had arrived
    /// from it for a while (`kafka.idle_after`): it no longer holds back the watermark.
    pub idle: bool,
}

/// One message within a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageSpan {
    pub start: u32,
    pub len: u32,
    pub source: u32,
    pub partition: i32,
    pub offset: u64,
    /// Where the message's key, then its headers as a JSON object, lie in [`Chunk::meta`].
    pub meta_start: u32,
    pub key_len: u32,
    pub headers_len: u32,
}

/// The next offset to read from a partition.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub source: u32,
    pub partition: i32,
    pub next_offset: u64,
}

/// What a reader has for the source.
pub enum Read {
    Chunk(Chunk),
    /// Nothing yet (the epoch is still open): ask again shortly.
    Pending,
    /// The input is finished.
    Done,
    Failed(std::io::Error),
}

/// Yields this worker's chunks in increasing epoch order.
pub trait ChunkReader: 'static {
    /// The epoch of the next chunk, without reading it.
    fn peek_epoch(&mut self) -> Option<Epoch>;
    /// The next chunk, read into `buf` (a recycled buffer; its contents are discarded). Must not
    /// block for long: the worker runs the rest of the dataflow in between.
    fn next_chunk(&mut self, buf: Vec<u8>) -> Read;
}

/// Chunk buffers handed back by decode for the source to reuse, so input is read into warm
/// memory instead of fresh pages. One per worker (both operators run on the worker's thread).
pub type BufferPool = std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>;

/// Keeps a few buffers; more would only hold memory.
pub fn recycle(pool: &BufferPool, mut buf: Vec<u8>) {
    let mut p = pool.borrow_mut();
    if p.len() < 4 {
        buf.clear();
        p.push(buf);
    }
}

pub fn source<'s>(
    scope: Scope<'s, Epoch>,
    mut reader: Box<dyn ChunkReader>,
    completed: ProbeHandle<Epoch>,
    max_epochs_ahead: u64,
    fatal: Fatal,
    clock: LatencyClock,
    pool: BufferPool,
) -> StreamVec<'s, Epoch, Chunk> {
    timely_source(scope, "Source", move |capability, info| {
        let activator = Rc::new(scope.activator_for(info.address));
        let mut cap = Some(capability);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if fatal.is_set() {
                return;
            }
            let Some(epoch) = reader.peek_epoch() else {
                cap = None;
                return;
            };
            if *c.time() < epoch {
                c.downgrade(&epoch);
            }
            let done_through = completed.with_frontier(|f| f.as_option().copied());
            if done_through.is_some_and(|done| epoch > done + max_epochs_ahead) {
                activator.activate();
                return;
            }
            let buf = pool.borrow_mut().pop().unwrap_or_default();
            match reader.next_chunk(buf) {
                Read::Chunk(chunk) => {
                    clock.start(chunk.epoch);
                    output.session(&c).give(chunk);
                    match reader.peek_epoch() {
                        Some(next) => c.downgrade(&next),
                        None => cap = None,
                    }
                }
                Read::Pending => {
                    activator.activate_after(std::time::Duration::from_millis(1));
                    return;
                }
                Read::Failed(e) => fatal.set(format!("reading input failed: {e}")),
                Read::Done => cap = None,
            }
            if cap.is_some() {
                activator.activate();
            }
        }
    })
}

/// Random access to an input's bytes (a file, or memory).
pub trait ReadAt: 'static {
    fn len(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = (offset as usize).min(self.as_slice().len());
        let n = buf.len().min(self.as_slice().len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Splits inputs into fixed-size chunks and yields those of one worker: chunk `k` (counting
/// across all inputs in order) belongs to worker `k % workers`, and is epoch `k`. A record belongs
/// to the chunk holding its first byte, so every record is read exactly once, whatever the
/// number of workers.
pub struct StripedReader<R: ReadAt> {
    inputs: Vec<R>,
    chunk_bytes: u64,
    /// (input, chunk index within it, epoch) of this worker's chunks, in order.
    plan: std::collections::VecDeque<(usize, u64, Epoch)>,
}

impl<R: ReadAt> StripedReader<R> {
    pub fn new(inputs: Vec<R>, chunk_bytes: u64, worker: usize, workers: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        let mut plan = std::collections::VecDeque::new();
        let mut epoch: Epoch = 0;
        for (i, input) in inputs.iter().enumerate() {
            let chunks = input.len().div_ceil(chunk_bytes);
            for c in 0..chunks {
                if epoch % workers as u64 == worker as u64 {
                    plan.push_back((i, c, epoch));
                }
                epoch += 1;
            }
        }
        StripedReader {
            inputs,
            chunk_bytes,
            plan,
        }
    }

    /// Drops the chunks of epochs up to and including `epoch` (already committed by an earlier run).
    pub fn skip_through(&mut self, epoch: Epoch) {
        self.plan.retain(|p| p.2 > epoch);
    }

    /// Total number of epochs across all inputs.
    pub fn epochs(inputs: &[R], chunk_bytes: u64) -> u64 {
        inputs
            .iter()
            .map(|i| i.len().div_ceil(chunk_bytes.max(1)))
            .sum()
    }

    fn read(
        &self,
        input: usize,
        chunk: u64,
        mut bytes: Vec<u8>,
    ) -> std::io::Result<(u64, Vec<u8>)> {
        bytes.clear();
        let src = &self.inputs[input];
        let size = src.len();
        let start = chunk * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(size);
        // Skip the tail of a record that started in the previous chunk.
        let begin = if start == 0 {
            0
        } else {
            next_line_start(src, start - 1, size)?
        };
        if begin >= end {
            return Ok((begin, bytes));
        }
        // Finish the record that crosses `end`.
        let finish = if end >= size {
            size
        } else {
            next_line_start(src, end - 1, size)?
        };
        bytes.resize((finish - begin) as usize, 0);
        read_exact_at(src, begin, &mut bytes)?;
        Ok((begin, bytes))
    }
}

/// The offset just after the first `\n` at or after `from` (or `size`).
fn next_line_start<R: ReadAt>(src: &R, from: u64, size: u64) -> std::io::Result<u64> {
    let mut buf = [0u8; 8192];
    let mut at = from;
    while at < size {
        let n = src.read_at(at, &mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(at + i as u64 + 1);
        }
        at += n as u64;
    }
    Ok(size)
}

fn read_exact_at<R: ReadAt>(src: &R, mut offset: u64, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = src.read_at(offset, buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "input shrank while reading",
            ));
        }
        offset += n as u64;
        buf = &mut buf[n..];
    }
    Ok(())
}

impl<R: ReadAt> ChunkReader for StripedReader<R> {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        self.plan.front().map(|p| p.2)
    }
    fn next_chunk(&mut self, buf: Vec<u8>) -> Read {
        let Some((input, chunk, epoch)) = self.plan.pop_front() else {
            return Read::Done;
        };
        match self.read(input, chunk, buf) {
            Ok((base_offset, bytes)) => Read::Chunk(Chunk {
                epoch,
                source: input as u32,
                base_offset,
                bytes,
                ..Chunk::default()
            }),
            Err(e) => Read::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_records(data: &[u8], chunk: u64, workers: usize) -> Vec<(Epoch, u64, Vec<u8>)> {
        let mut out = Vec::new();
        for w in 0..workers {
            let mut r = StripedReader::new(vec![data.to_vec()], chunk, w, workers);
            while let Read::Chunk(c) = r.next_chunk(Vec::new()) {
                for (off, line) in crate::decode::records(&c.bytes) {
                    out.push((c.epoch, c.base_offset + off as u64, line.to_vec()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_record_once_whatever_the_chunking() {
        let mut data = Vec::new();
        for i in 0..200 {
            data.extend_from_slice(format!("record-{i}-{}\n", "x".repeat(i % 37)).as_bytes());
        }
        data.extend_from_slice(b"last-without-newline");
        let expected: Vec<Vec<u8>> = crate::decode::records(&data)
            .map(|(_, l)| l.to_vec())
            .collect();
        for chunk in [1, 7, 64, 1000, 1 << 20] {
            let one = all_records(&data, chunk, 1);
            let lines: Vec<Vec<u8>> = one.iter().map(|r| r.2.clone()).collect();
            assert_eq!(lines, expected, "chunk {chunk}");
            assert_eq!(
                all_records(&data, chunk, 3),
                one,
                "epochs and offsets do not depend on workers"
            );
        }
    }
}
