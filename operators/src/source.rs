//! The source: hands raw chunks of input to the dataflow, one epoch per chunk.
//!
//! (data, time, diff): emits one [`Chunk`] at time `chunk.epoch`, then downgrades its capability
//! to the epoch of its next chunk; drops the capability when the reader is done. For files,
//! epochs come from the input's shape (a chunk is a fixed byte range), never from the wall clock or
//! the worker count, so results are the same with any number of workers. For Kafka, each worker
//! cuts its partitions' messages into one chunk per epoch interval, and records the offsets
//! reached so progress can be committed with the outputs.
//!
//! Flow control, two bounds: a worker does not start an epoch more than `max_epochs_ahead`
//! beyond what deduplication has completed (state stashed for unfinished epochs stays bounded),
//! nor read more once the chunks it handed out whose outputs are not yet durable hold
//! `max_unwritten_bytes` (rows waiting for a slow or stopped output stay bounded: the reader
//! pauses, and a Kafka backlog waits in the broker instead of in memory).
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

/// The next offset to read from a partition (a file is partition 0 of its input; its offset is
/// a byte offset).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub source: u32,
    pub partition: i32,
    pub next_offset: u64,
    /// For a file: [`check_before`] `next_offset`, so a resumed run can tell a file that was
    /// only appended to from one rewritten under it. 0: nothing to check (Kafka, stdin).
    #[serde(default)]
    pub check: u64,
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
///
/// A reader of Kafka partitions emits a chunk at its first epoch, even one stopped before it
/// read anything: that chunk's [`Chunk::partitions`] are how the watermark learns the
/// partitions exist and waits for them (a partition it has not heard of cannot hold it back).
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

/// How far a source may read ahead (see the module documentation).
pub struct FlowControl {
    /// Completes as deduplication finishes epochs.
    pub admitted: ProbeHandle<Epoch>,
    pub max_epochs_ahead: u64,
    /// Completes as every output of an epoch is durable.
    pub durable: ProbeHandle<Epoch>,
    pub max_unwritten_bytes: u64,
}

/// The chunks a worker handed out whose outputs are not yet durable, and how long reading has
/// waited for them.
#[derive(Default)]
struct Unwritten {
    chunks: std::collections::VecDeque<(Epoch, u64)>,
    bytes: u64,
    waiting_since: Option<std::time::Instant>,
    warned: bool,
}

impl Unwritten {
    /// A chunk of `bytes` handed out at `epoch`.
    fn read(&mut self, epoch: Epoch, bytes: u64) {
        self.chunks.push_back((epoch, bytes));
        self.bytes += bytes;
    }

    /// Whether reading must wait: forgets the chunks `durable` has passed, then compares.
    fn full(&mut self, durable: &ProbeHandle<Epoch>, max: u64) -> bool {
        let first_open = durable.with_frontier(|f| f.as_option().copied());
        while let Some(&(epoch, bytes)) = self.chunks.front() {
            if first_open.is_some_and(|open| epoch >= open) {
                break;
            }
            self.chunks.pop_front();
            self.bytes -= bytes;
        }
        let full = self.bytes >= max;
        match (full, self.waiting_since) {
            (true, None) => self.waiting_since = Some(std::time::Instant::now()),
            (true, Some(since)) if !self.warned && since.elapsed().as_secs() >= 5 => {
                self.warned = true;
                tracing::warn!(
                    unwritten_bytes = self.bytes,
                    max_unwritten_bytes = max,
                    "reading paused for 5 s: the outputs of what was read are not durable yet \
                     (ClickHouse slow or down?); input waits in its source, not in memory"
                );
            }
            (false, Some(since)) => {
                if self.warned {
                    tracing::info!(
                        paused_ms = since.elapsed().as_millis() as u64,
                        "reading resumed: the outputs caught up"
                    );
                }
                self.waiting_since = None;
                self.warned = false;
            }
            _ => {}
        }
        full
    }
}

pub fn source<'s>(
    scope: Scope<'s, Epoch>,
    mut reader: Box<dyn ChunkReader>,
    flow: FlowControl,
    fatal: Fatal,
    clock: LatencyClock,
    pool: BufferPool,
) -> StreamVec<'s, Epoch, Chunk> {
    timely_source(scope, "Source", move |capability, info| {
        let activator = Rc::new(scope.activator_for(info.address));
        let mut cap = Some(capability);
        let mut unwritten = Unwritten::default();
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
            let done_through = flow.admitted.with_frontier(|f| f.as_option().copied());
            if done_through.is_some_and(|done| epoch > done + flow.max_epochs_ahead) {
                activator.activate();
                return;
            }
            if unwritten.full(&flow.durable, flow.max_unwritten_bytes) {
                // Outputs take seconds to catch up (a flush, a database back): look again soon
                // without spinning a core.
                activator.activate_after(std::time::Duration::from_millis(2));
                return;
            }
            let buf = pool.borrow_mut().pop().unwrap_or_default();
            match reader.next_chunk(buf) {
                Read::Chunk(chunk) => {
                    clock.start(chunk.epoch);
                    unwritten.read(chunk.epoch, chunk.bytes.len() as u64);
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

/// Splits inputs into fixed-size chunks and yields those of one worker: chunk `c` of an input
/// holds the records that start in `[c·C, (c+1)·C)`, chunk `k` counting across all inputs in
/// order is epoch `k`, and epoch `k` belongs to worker `k % workers`. So every record is read
/// exactly once, in the same epoch whatever the number of workers.
///
/// A run resumed after a commit reads each input from where the commit says it stopped (see
/// [`resume_starts`]), on the same grid: an unchanged input continues in exactly the epochs an
/// uninterrupted run would have used. What was appended to a file the commit had read past
/// lands in the first epochs after the commit. Each chunk's [`Chunk::positions`] records the
/// byte after its last record, for the commit.
pub struct StripedReader<R: ReadAt> {
    inputs: Vec<R>,
    chunk_bytes: u64,
    /// Where each input's unread records start: 0, or where a committed run stopped.
    starts: Vec<u64>,
    /// (input, chunk index within it, epoch) of this worker's chunks, in order.
    plan: std::collections::VecDeque<(usize, u64, Epoch)>,
}

impl<R: ReadAt> StripedReader<R> {
    pub fn new(inputs: Vec<R>, chunk_bytes: u64, worker: usize, workers: usize) -> Self {
        let starts = vec![0; inputs.len()];
        Self::resuming(inputs, starts, None, chunk_bytes, (worker, workers))
    }

    /// Reads input `i` from byte `starts[i]` (a record boundary), after the `committed` epoch;
    /// `(worker, workers)` picks this worker's share.
    pub fn resuming(
        inputs: Vec<R>,
        starts: Vec<u64>,
        committed: Option<Epoch>,
        chunk_bytes: u64,
        (worker, workers): (usize, usize),
    ) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        let mut plan = std::collections::VecDeque::new();
        let mut grid: Epoch = 0;
        let mut last = committed;
        for (i, (input, &start)) in inputs.iter().zip(&starts).enumerate() {
            let len = input.len();
            for c in 0..len.div_ceil(chunk_bytes) {
                let k = grid + c;
                // Only chunks with unread bytes: in their own epoch if it is still open,
                // else (appended after the commit) in the next open one.
                if (c + 1) * chunk_bytes > start {
                    let epoch = last.map_or(k, |l| k.max(l + 1));
                    if epoch % workers as u64 == worker as u64 {
                        plan.push_back((i, c, epoch));
                    }
                    last = Some(epoch);
                }
            }
            grid += len.div_ceil(chunk_bytes);
        }
        StripedReader {
            inputs,
            chunk_bytes,
            starts,
            plan,
        }
    }

    /// Drops the chunks of epochs up to and including `epoch`: how a run resumes after a commit
    /// that recorded no per-file positions (written before they existed).
    pub fn skip_through(&mut self, epoch: Epoch) {
        self.plan.retain(|p| p.2 > epoch);
    }

    /// Reads chunk `chunk` of `input` into `bytes`; returns where its bytes start and where
    /// the next record starts.
    fn read(
        &self,
        input: usize,
        chunk: u64,
        mut bytes: Vec<u8>,
    ) -> std::io::Result<(u64, u64, Vec<u8>)> {
        bytes.clear();
        let src = &self.inputs[input];
        let size = src.len();
        let start = chunk * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(size);
        // Start at the first unread record: skip the tail of a record that started in the
        // previous chunk, or what a committed run read.
        let unread = self.starts[input];
        let begin = if start <= unread {
            unread
        } else {
            next_line_start(src, start - 1, size)?
        };
        if begin >= end {
            return Ok((begin, begin, bytes));
        }
        // Finish the record that crosses `end`.
        let finish = if end >= size {
            size
        } else {
            next_line_start(src, end - 1, size)?
        };
        bytes.resize((finish - begin) as usize, 0);
        read_exact_at(src, begin, &mut bytes)?;
        Ok((begin, finish, bytes))
    }
}

/// How many bytes before a position [`check_before`] covers.
const CHECKED_BYTES: u64 = 64;

/// A fingerprint of the (up to 64) bytes of `src` just before `at`.
pub fn check_before<R: ReadAt>(src: &R, at: u64) -> std::io::Result<u64> {
    let from = at.saturating_sub(CHECKED_BYTES);
    let mut buf = [0u8; CHECKED_BYTES as usize];
    let buf = &mut buf[..(at - from) as usize];
    read_exact_at(src, from, buf)?;
    Ok(meterflow_schemas::hashing::fingerprint(buf))
}

/// [`check_before`] `at` for a chunk whose `bytes` end at `at`: taken from the chunk when it
/// holds the checked bytes (it nearly always does), else read from `src`.
fn check_at_end<R: ReadAt>(src: &R, at: u64, bytes: &[u8]) -> std::io::Result<u64> {
    let checked = CHECKED_BYTES.min(at) as usize;
    match bytes.len().checked_sub(checked) {
        Some(from) => Ok(meterflow_schemas::hashing::fingerprint(&bytes[from..])),
        None => check_before(src, at),
    }
}

/// Where each input continues after a commit that recorded `committed` (positions of inputs by
/// index; `names` for messages): from its recorded position, or from the start for an input the
/// commit did not read. An input that is shorter than, or differs just before, its recorded
/// position was truncated or rewritten after being billed: resuming it would bill other records
/// than it holds, so this refuses, naming the input and the remedy.
pub fn resume_starts<R: ReadAt>(
    inputs: &[R],
    names: &[String],
    committed: &[Position],
) -> Result<Vec<u64>, String> {
    let remedy = "meterflow resumes a file where the committed run stopped and reads only what \
                  was appended since. Put the file back as it was (appending is fine), give new \
                  data a new file name, or start over against a new database";
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let Some(p) = committed.iter().find(|p| p.source as usize == i) else {
                return Ok(0);
            };
            let name = names.get(i).map_or("(unnamed)", String::as_str);
            if input.len() < p.next_offset {
                return Err(format!(
                    "input {name} holds {} bytes, but a committed run already billed its first {}: \
                     it was truncated or replaced. {remedy}",
                    input.len(),
                    p.next_offset
                ));
            }
            let changed = p.check != 0
                && check_before(input, p.next_offset)
                    .map_err(|e| format!("cannot read input {name}: {e}"))?
                    != p.check;
            if changed {
                return Err(format!(
                    "input {name} is not what a committed run billed: the bytes before offset {} \
                     differ, so it was rewritten, not appended to. {remedy}",
                    p.next_offset
                ));
            }
            Ok(p.next_offset)
        })
        .collect()
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
        let read = self
            .read(input, chunk, buf)
            .and_then(|(base_offset, next, bytes)| {
                let check = check_at_end(&self.inputs[input], next, &bytes)?;
                Ok(Chunk {
                    epoch,
                    source: input as u32,
                    base_offset,
                    bytes,
                    positions: vec![Position {
                        source: input as u32,
                        partition: 0,
                        next_offset: next,
                        check,
                    }],
                    ..Chunk::default()
                })
            });
        match read {
            Ok(chunk) => Read::Chunk(chunk),
            Err(e) => Read::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    /// Records as (epoch, offset, bytes).
    type Records = Vec<(Epoch, u64, Vec<u8>)>;

    /// Every record read by `workers` workers resuming `data` at `start`
    /// after `committed`, and the position each chunk recorded, by epoch.
    fn resumed_records(
        data: &[u8],
        start: u64,
        committed: Option<Epoch>,
        chunk: u64,
        workers: usize,
    ) -> (Records, BTreeMap<Epoch, Position>) {
        let mut out = Vec::new();
        let mut positions = BTreeMap::new();
        for w in 0..workers {
            let mut r = StripedReader::resuming(
                vec![data.to_vec()],
                vec![start],
                committed,
                chunk,
                (w, workers),
            );
            while let Read::Chunk(c) = r.next_chunk(Vec::new()) {
                for (off, line) in crate::decode::records(&c.bytes) {
                    out.push((c.epoch, c.base_offset + off as u64, line.to_vec()));
                }
                positions.insert(c.epoch, c.positions[0]);
            }
        }
        out.sort();
        (out, positions)
    }

    fn lines() -> Vec<String> {
        (0..300)
            .map(|i| format!("record-{i}-{}\n", "y".repeat(i % 41)))
            .collect()
    }

    #[test]
    fn a_restart_reads_the_rest_of_a_file_in_the_epochs_of_an_uninterrupted_run() {
        let whole = lines().concat();
        for chunk in [1, 7, 64, 1000] {
            let (all, positions) = resumed_records(whole.as_bytes(), 0, None, chunk, 2);
            for (&commit, stop) in positions.iter().step_by(3) {
                let starts = resume_starts(&[whole.as_bytes().to_vec()], &[], &[*stop]);
                assert_eq!(starts, Ok(vec![stop.next_offset]));
                let (rest, _) =
                    resumed_records(whole.as_bytes(), stop.next_offset, Some(commit), chunk, 3);
                let expected: Vec<_> = all.iter().filter(|r| r.0 > commit).cloned().collect();
                assert_eq!(
                    rest, expected,
                    "chunk {chunk}, restart after epoch {commit}"
                );
            }
        }
    }

    #[test]
    fn a_resumed_file_reads_exactly_what_was_appended() {
        let lines = lines();
        let first: String = lines[..120].concat();
        let whole: String = lines.concat();
        for chunk in [1, 7, 64, 1000, 1 << 20] {
            // The first run reads the file as it was, and records where it stopped.
            let (before, positions) = resumed_records(first.as_bytes(), 0, None, chunk, 2);
            let (&commit, &stop) = positions.last_key_value().unwrap();
            assert_eq!(stop.next_offset, first.len() as u64, "chunk {chunk}");
            // The file grows; the resumed run checks it and reads only the rest.
            let starts = resume_starts(&[whole.as_bytes().to_vec()], &["f".into()], &[stop]);
            assert_eq!(starts, Ok(vec![first.len() as u64]), "chunk {chunk}");
            let (after, _) =
                resumed_records(whole.as_bytes(), stop.next_offset, Some(commit), chunk, 3);
            let read: Vec<&[u8]> = before
                .iter()
                .chain(&after)
                .map(|r| r.2.as_slice())
                .collect();
            let expected: Vec<&[u8]> = lines.iter().map(|l| l.trim_end().as_bytes()).collect();
            assert_eq!(read, expected, "chunk {chunk}: every record once, in order");
            assert!(
                after.iter().all(|r| r.0 > commit),
                "only epochs after the commit"
            );
            assert_eq!(
                after,
                resumed_records(whole.as_bytes(), stop.next_offset, Some(commit), chunk, 1).0,
                "the same epochs with any number of workers"
            );
        }
    }

    #[test]
    fn a_rewritten_or_truncated_file_is_refused_with_its_name() {
        let original = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
        let (_, positions) = resumed_records(&original, 0, None, 4, 1);
        let stop = *positions.last_key_value().unwrap().1;
        let names = ["events.jsonl".to_string()];
        let cases: [(&[u8], Option<&str>); 4] = [
            (b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n", None),
            (b"{\"a\":1}\n{\"a\":9}\n{\"a\":3}\n", Some("rewritten")),
            (b"{\"a\":1}\n", Some("truncated")),
            (b"", Some("truncated")),
        ];
        for (now, refused) in cases {
            let got = resume_starts(&[now.to_vec()], &names, &[stop]);
            match refused {
                None => assert_eq!(got, Ok(vec![original.len() as u64])),
                Some(why) => {
                    let e = got.unwrap_err();
                    assert!(e.contains("events.jsonl") && e.contains(why), "{e}");
                }
            }
        }
        // An input the commit did not read starts at 0; one without a check is trusted.
        let unchecked = Position { check: 0, ..stop };
        assert_eq!(
            resume_starts(
                &[b"x\n".to_vec(), b"{\"a\":7}\n{\"a\":8}\n".to_vec()],
                &[],
                &[Position {
                    source: 1,
                    ..unchecked
                }]
            ),
            Ok(vec![0, original.len() as u64])
        );
    }
}
