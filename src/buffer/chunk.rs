//! One chunk on disk: `<seq>.json.gz` (or `.json.zst`), the exact bytes of the object to
//! upload (one gzip member, or one zstd frame, of NDJSON), and `<seq>.journal`, the record of
//! its durable points.
//!
//! Appends go through the codec's stream ([`Encoder`]). A commit ends the current block (a
//! point where the prefix decodes), fsyncs the data file, then appends and fsyncs a journal
//! record holding that offset with the uncompressed length and CRC-32 so far. Sealing appends
//! the codec's tail at the last commit (gzip: an empty final block and the trailer from those
//! two numbers; zstd: an empty last block). Recovery after a crash does exactly the same from
//! the last journal record, so a recovered chunk ends where its last ack was given: nothing
//! acked is lost, and nothing that was not acked survives to be stored twice when the client
//! resends it.

use super::encoder::{Compressor, Encoder};
use crate::common::codec::Codec;
use crate::common::time::EventTime;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Compressed output is written to the file once this much has accumulated, to bound memory.
const WRITE_THRESHOLD: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Open {
        seq: u64,
        partition: String,
        /// Journals written before zstd existed name none: gzip.
        #[serde(default, skip_serializing_if = "is_gzip")]
        codec: Codec,
    },
    Commit {
        /// Data file length at this durable point.
        offset: u64,
        /// Uncompressed bytes, events and CRC-32 of everything up to it.
        bytes: u64,
        events: u64,
        crc: u32,
        first_secs: i64,
        first_nanos: u32,
        /// Forward `chunk` ids acked by this commit (base64 of their raw bytes).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
    },
    Sealed {
        size: u64,
    },
}

/// A sealed chunk, ready to ship.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    pub seq: u64,
    pub partition: String,
    pub codec: Codec,
    pub first_time: EventTime,
    pub events: u64,
    /// Uncompressed NDJSON bytes.
    pub bytes: u64,
    /// Object size (compressed).
    pub size: u64,
    pub data_path: PathBuf,
    pub journal_path: PathBuf,
}

impl SealedChunk {
    pub fn disk_bytes(&self) -> u64 {
        self.size
            + std::fs::metadata(&self.journal_path)
                .map(|m| m.len())
                .unwrap_or(0)
    }
}

pub fn data_path(dir: &Path, seq: u64, codec: Codec) -> PathBuf {
    dir.join(format!("{seq:010}{}", codec.extension()))
}

fn is_gzip(c: &Codec) -> bool {
    *c == Codec::Gzip
}

pub fn journal_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:010}.journal"))
}

pub fn shipped_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:010}.shipped"))
}

/// The sequence number of a shipped chunk's kept journal.
pub fn shipped_seq_of(name: &str) -> Option<u64> {
    name.strip_suffix(".shipped")?.parse().ok()
}

/// After the store confirmed the object: the data goes, the journal stays as `.shipped` for
/// the dedupe window, so a client's resend of a chunk it got no ack for is still recognised
/// after a restart. Renaming first means a crash in between leaves a retired chunk, never an
/// orphan that would be uploaded and loaded again.
pub fn retire(chunk: &SealedChunk) -> io::Result<()> {
    let dir = chunk.journal_path.parent().unwrap_or(Path::new("."));
    std::fs::rename(&chunk.journal_path, shipped_path(dir, chunk.seq))?;
    match std::fs::remove_file(&chunk.data_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The forward chunk ids a journal (open, sealed or shipped) recorded.
pub fn journal_ids(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let engine = &base64::engine::general_purpose::STANDARD;
    Ok(read_journal(path)?
        .0
        .into_iter()
        .flat_map(|r| match r {
            Record::Commit { ids, .. } => ids,
            _ => Vec::new(),
        })
        .filter_map(|id| engine.decode(id).ok())
        .collect())
}

/// The sequence number of a chunk file name, if it is one of ours.
pub fn seq_of(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".journal")
        .or_else(|| name.strip_suffix(Codec::Gzip.extension()))
        .or_else(|| name.strip_suffix(Codec::Zstd.extension()))?;
    stem.parse().ok()
}

/// Which file of a chunk a failed commit was writing (a full disk is reported by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFile {
    Data,
    Journal,
}

/// A failed commit: nothing since the previous commit is durable.
#[derive(Debug)]
pub struct CommitError {
    pub file: ChunkFile,
    pub error: io::Error,
}

impl From<CommitError> for io::Error {
    fn from(e: CommitError) -> io::Error {
        e.error
    }
}

pub struct OpenChunk {
    pub seq: u64,
    dir: PathBuf,
    data: File,
    journal: File,
    fsync: bool,
    encoder: Encoder,
    /// Compressed bytes produced but not yet written to the file.
    out: Vec<u8>,
    /// Bytes in the data file.
    written: u64,
    pub bytes: u64,
    pub events: u64,
    pub first_time: Option<EventTime>,
    pub opened_at: Instant,
    ids: Vec<Vec<u8>>,
    /// Bytes written to the journal, and how many of them its last successful fsync covered:
    /// after a failed fsync the records past that point are taken back ([`Self::abandon`]).
    journal_len: u64,
    journal_synced: u64,
    /// Appended since the last commit.
    dirty: bool,
    committed_bytes: u64,
}

impl OpenChunk {
    pub fn create(
        dir: &Path,
        seq: u64,
        partition: &str,
        compressor: Compressor,
        fsync: bool,
    ) -> io::Result<OpenChunk> {
        let codec = compressor.codec;
        let encoder = Encoder::new(compressor)?;
        let header = Encoder::header(codec);
        let mut data = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(data_path(dir, seq, codec))?;
        data.write_all(header)?;
        let mut journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(journal_path(dir, seq))?;
        let journal_len = write_record(
            &mut journal,
            &Record::Open {
                seq,
                partition: partition.to_string(),
                codec,
            },
        )?;
        if fsync {
            journal.sync_data()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(OpenChunk {
            seq,
            dir: dir.to_path_buf(),
            data,
            journal,
            fsync,
            encoder,
            out: Vec::with_capacity(WRITE_THRESHOLD + (64 << 10)),
            written: header.len() as u64,
            bytes: 0,
            events: 0,
            first_time: None,
            opened_at: Instant::now(),
            ids: Vec::new(),
            journal_len,
            journal_synced: journal_len,
            dirty: false,
            committed_bytes: 0,
        })
    }

    /// Compresses whole lines into the chunk. Not durable until `commit`.
    pub fn append(
        &mut self,
        lines: &[u8],
        events: u64,
        first_time: EventTime,
        id: Option<Vec<u8>>,
    ) -> io::Result<()> {
        self.encoder.append(lines, &mut self.out)?;
        self.bytes += lines.len() as u64;
        self.events += events;
        self.first_time.get_or_insert(first_time);
        self.ids.extend(id);
        self.dirty = true;
        if self.out.len() >= WRITE_THRESHOLD {
            self.data.write_all(&self.out)?;
            self.written += self.out.len() as u64;
            self.out.clear();
        }
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes everything appended so far durable: sync flush, fsync data, journal, fsync journal.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        if !self.dirty {
            return Ok(());
        }
        let data = |error| CommitError {
            file: ChunkFile::Data,
            error,
        };
        self.encoder.flush(&mut self.out).map_err(data)?;
        self.data.write_all(&self.out).map_err(data)?;
        self.written += self.out.len() as u64;
        self.out.clear();
        if self.fsync {
            self.data.sync_data().map_err(data)?;
        }
        let first = self.first_time.unwrap_or(EventTime { secs: 0, nanos: 0 });
        let engine = &base64::engine::general_purpose::STANDARD;
        let journal = |error| CommitError {
            file: ChunkFile::Journal,
            error,
        };
        self.journal_len += write_record(
            &mut self.journal,
            &Record::Commit {
                offset: self.written,
                bytes: self.bytes,
                events: self.events,
                crc: self.encoder.crc(),
                first_secs: first.secs,
                first_nanos: first.nanos,
                ids: self.ids.drain(..).map(|id| engine.encode(id)).collect(),
            },
        )
        .map_err(journal)?;
        if self.fsync {
            self.journal.sync_data().map_err(journal)?;
        }
        self.journal_synced = self.journal_len;
        self.dirty = false;
        self.committed_bytes = self.written;
        Ok(())
    }

    /// Compressed bytes on disk (what counts against the quota).
    pub fn disk_bytes(&self) -> u64 {
        self.written
    }

    /// Commits, then closes the member (or frame) and marks the chunk sealed. `None` if it is
    /// empty.
    pub fn seal(mut self) -> io::Result<Option<SealedChunk>> {
        self.commit()?;
        drop(self.data);
        drop(self.journal);
        recover(&self.dir, self.seq).map(|r| r.chunk)
    }

    /// After a failed write or fsync: takes the journal back to what its last successful fsync
    /// covered, and fsyncs that. After a failed fsync the page cache may hold a commit record
    /// the disk does not (Linux marks the failed pages clean), and recovery, which reads
    /// through the page cache, would seal the chunk at that commit: events nobody acked, which
    /// their client resends, stored twice. Once this returns `Ok`, [`recover`] seals the chunk
    /// at its last acked commit. On `Err` the chunk must be left alone until the next start.
    pub fn abandon(&mut self) -> io::Result<()> {
        self.journal.set_len(self.journal_synced)?;
        self.journal.sync_data()?;
        self.journal_len = self.journal_synced;
        Ok(())
    }
}

/// Appends one framed record; returns the bytes written.
fn write_record(file: &mut File, record: &Record) -> io::Result<u64> {
    let payload = serde_json::to_vec(record)?;
    let mut framed = Vec::with_capacity(payload.len() + 8);
    framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    framed.extend_from_slice(&payload);
    file.write_all(&framed)?;
    Ok(framed.len() as u64)
}

/// Reads journal records up to the first torn or corrupt one (a crash mid-append); also
/// returns the length of those whole records, where a torn tail starts.
fn read_journal(path: &Path) -> io::Result<(Vec<Record>, u64)> {
    let mut raw = Vec::new();
    File::open(path)?.read_to_end(&mut raw)?;
    let mut records = Vec::new();
    let mut rest = raw.as_slice();
    while rest.len() >= 8 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        let Some(payload) = rest.get(8..8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice(payload) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
        rest = &rest[8 + len..];
    }
    let whole = (raw.len() - rest.len()) as u64;
    Ok((records, whole))
}

/// What recovery found for one chunk.
pub struct Recovered {
    /// The sealed chunk; `None` when it held no acked events (its files are removed).
    pub chunk: Option<SealedChunk>,
    /// Forward chunk ids it acked, for resend dedupe.
    pub ids: Vec<Vec<u8>>,
    /// Compressed bytes cut off the end: written but never acked.
    pub truncated: u64,
}

/// Brings a chunk to the sealed state from whatever a crash left: cuts the data file back to
/// its last durable point, closes the member (or frame) there and records the seal.
/// Idempotent.
pub fn recover(dir: &Path, seq: u64) -> io::Result<Recovered> {
    let journal_p = journal_path(dir, seq);
    let (records, journal_whole) = match read_journal(&journal_p) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(e),
    };
    let opened = match records.first() {
        Some(Record::Open {
            partition, codec, ..
        }) => Some((partition.clone(), *codec)),
        _ => None,
    };
    // Without a journal the data file's name tells the codec.
    let codec = match opened {
        Some((_, codec)) => codec,
        None if data_path(dir, seq, Codec::Zstd).exists() => Codec::Zstd,
        None => Codec::Gzip,
    };
    let data_p = data_path(dir, seq, codec);
    let data_len = match std::fs::metadata(&data_p) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let partition = match opened {
        Some((partition, _)) => partition,
        _ if data_len <= Encoder::header(codec).len() as u64 => {
            remove_both(&data_p, &journal_p)?;
            return Ok(Recovered {
                chunk: None,
                ids: Vec::new(),
                truncated: 0,
            });
        }
        _ => {
            return Err(io::Error::other(format!(
                "chunk {} has data but no readable journal; left in place for inspection",
                data_p.display()
            )));
        }
    };
    let JournalScan {
        ids,
        sealed_size,
        last,
    } = scan_journal(&records, data_len, Encoder::tail_len(codec));
    let Some(Record::Commit {
        offset,
        bytes,
        events,
        crc,
        first_secs,
        first_nanos,
        ..
    }) = last
    else {
        remove_both(&data_p, &journal_p)?;
        return Ok(Recovered {
            chunk: None,
            ids,
            truncated: data_len,
        });
    };
    if events == 0 {
        remove_both(&data_p, &journal_p)?;
        return Ok(Recovered {
            chunk: None,
            ids,
            truncated: data_len,
        });
    }
    let size = offset + Encoder::tail_len(codec);
    let mut truncated = 0;
    if sealed_size != Some(size) || data_len != size {
        truncated = data_len.saturating_sub(offset);
        let tail = Encoder::tail(codec, crc, bytes);
        close_at(&data_p, &journal_p, journal_whole, offset, &tail, size)?;
    }
    Ok(Recovered {
        chunk: Some(SealedChunk {
            seq,
            partition,
            codec,
            first_time: EventTime {
                secs: first_secs,
                nanos: first_nanos,
            },
            events,
            bytes,
            size,
            data_path: data_p,
            journal_path: journal_p,
        }),
        ids,
        truncated,
    })
}

/// What a chunk's journal says, read against the data file's length.
struct JournalScan {
    /// Chunk ids of every commit, for resend dedupe.
    ids: Vec<Vec<u8>>,
    /// The size a `Sealed` record gives, if the chunk was sealed.
    sealed_size: Option<u64>,
    /// The newest commit whose bytes are really on disk.
    last: Option<Record>,
}

fn scan_journal(records: &[Record], data_len: u64, tail_len: u64) -> JournalScan {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut scan = JournalScan {
        ids: Vec::new(),
        sealed_size: None,
        last: None,
    };
    for (i, r) in records.iter().enumerate() {
        match r {
            Record::Commit {
                offset,
                ids: commit_ids,
                ..
            } => {
                scan.ids
                    .extend(commit_ids.iter().filter_map(|id| engine.decode(id).ok()));
                if *offset <= data_len {
                    scan.last = Some(r.clone());
                }
            }
            Record::Sealed { size } => {
                scan.sealed_size = Some(*size);
                // A seal names the commit it closed (its offset plus the tail). That cut
                // stands: a commit the journal holds past it (a journal that was ahead of its
                // data file) stays cut, though the tail made the file long enough to cover
                // its offset. Nothing is written after a seal.
                let closed = records[..i].iter().rev().find(|c| {
                    matches!(c, Record::Commit { offset, .. }
                        if offset.checked_add(tail_len) == Some(*size) && *offset <= data_len)
                });
                if let Some(closed) = closed {
                    scan.last = Some(closed.clone());
                    break;
                }
            }
            Record::Open { .. } => {}
        }
    }
    scan
}

/// Cuts the data file at a commit's `offset`, closes the member (or frame) there with `tail`
/// (see [`Encoder::tail`]) and records the seal in the journal, after its `journal_whole`
/// bytes of whole records: a torn record after them (a crash mid-append) is cut first, or the
/// seal would be unreadable behind it and every later recovery would close the chunk again.
fn close_at(
    data_p: &Path,
    journal_p: &Path,
    journal_whole: u64,
    offset: u64,
    tail: &[u8],
    size: u64,
) -> io::Result<()> {
    let mut data = OpenOptions::new().write(true).open(data_p)?;
    data.set_len(offset)?;
    std::io::Seek::seek(&mut data, io::SeekFrom::Start(offset))?;
    data.write_all(tail)?;
    data.sync_data()?;
    let mut journal = OpenOptions::new().append(true).open(journal_p)?;
    journal.set_len(journal_whole)?;
    write_record(&mut journal, &Record::Sealed { size })?;
    journal.sync_data()
}

/// Removes every file of chunk `seq` (its data in either codec, its journal).
pub fn remove_chunk(dir: &Path, seq: u64) -> io::Result<()> {
    remove_both(&data_path(dir, seq, Codec::Gzip), &journal_path(dir, seq))?;
    remove_both(&data_path(dir, seq, Codec::Zstd), &journal_path(dir, seq))
}

pub fn remove_both(data: &Path, journal: &Path) -> io::Result<()> {
    for p in [data, journal] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::encoder::GzipEngine;
    use super::*;

    /// The object's NDJSON, as the gzip and zstd tools read it.
    fn decode(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        match Codec::of_bytes(&bytes).expect("gzip or zstd") {
            Codec::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Codec::Zstd => zstd::decode_all(&bytes[..]).unwrap(),
        }
    }

    fn t() -> EventTime {
        EventTime {
            secs: 1_700_000_000,
            nanos: 0,
        }
    }

    /// zlib-rs gzip, zstd, and ISA-L gzip when the build has it.
    fn compressors() -> Vec<Compressor> {
        let mut all = vec![
            Compressor::new(Codec::Gzip, 6),
            Compressor::new(Codec::Zstd, 3),
        ];
        if GzipEngine::Isal.built() {
            all.push(Compressor {
                codec: Codec::Gzip,
                engine: GzipEngine::Isal,
                level: 1,
            });
        }
        all
    }

    #[test]
    fn seal_gives_one_valid_member_or_frame() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 7, "app", codec, true).unwrap();
            c.append(b"{\"a\":1}\n", 1, t(), Some(b"id1".to_vec()))
                .unwrap();
            c.commit().unwrap();
            c.append(b"{\"a\":2}\n", 1, t(), None).unwrap();
            let sealed = c.seal().unwrap().unwrap();
            assert_eq!(sealed.events, 2);
            assert_eq!(sealed.codec, codec.codec);
            assert_eq!(decode(&sealed.data_path), b"{\"a\":1}\n{\"a\":2}\n");
            assert_eq!(
                std::fs::metadata(&sealed.data_path).unwrap().len(),
                sealed.size
            );
            assert!(
                sealed
                    .data_path
                    .to_string_lossy()
                    .ends_with(codec.codec.extension())
            );
            // A second recovery of a sealed chunk changes nothing.
            let again = recover(dir.path(), 7).unwrap();
            assert_eq!(again.chunk.unwrap().size, sealed.size);
            assert_eq!(again.ids, vec![b"id1".to_vec()]);
        }
    }

    #[test]
    fn crash_recovery_cuts_back_to_last_commit() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 1, "app", codec, true).unwrap();
            let mut acked = Vec::new();
            for i in 0..2000 {
                let line = format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 97));
                c.append(line.as_bytes(), 1, t(), None).unwrap();
                if i % 100 == 99 {
                    c.commit().unwrap();
                    acked.push(i);
                }
            }
            // Uncommitted appends beyond the last commit, forced to disk as a crash would
            // leave them.
            for i in 2000..2100 {
                c.append(format!("{{\"seq\":{i}}}\n").as_bytes(), 1, t(), None)
                    .unwrap();
            }
            c.encoder.flush(&mut c.out).unwrap();
            c.data.write_all(&c.out).unwrap();
            // Garbage from a torn journal append.
            c.journal.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
            std::mem::forget(c);
            let r = recover(dir.path(), 1).unwrap();
            let sealed = r.chunk.unwrap();
            assert!(r.truncated > 0, "{codec:?}");
            let text = String::from_utf8(decode(&sealed.data_path)).unwrap();
            assert_eq!(text.lines().count(), 2000, "{codec:?}");
            assert_eq!(sealed.events, 2000);
            assert!(text.ends_with("\n") && text.contains("\"seq\":1999,"));
            assert!(!text.contains("\"seq\":2000"));
        }
    }

    /// A commit record that reached the journal but not its fsync (the fsync failed) is taken
    /// back by `abandon`, so the chunk recovers at the commit before it: the refused batch is
    /// not shipped, and its client's resend is the only copy.
    #[test]
    fn abandon_takes_back_a_commit_that_was_not_synced() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 4, "app", codec, true).unwrap();
            c.append(b"{\"acked\":1}\n", 1, t(), Some(b"id-acked".to_vec()))
                .unwrap();
            c.commit().unwrap();
            // What a commit whose journal fdatasync failed leaves: its bytes and its record
            // written, `journal_synced` not moved.
            c.append(b"{\"refused\":1}\n", 1, t(), Some(b"id-refused".to_vec()))
                .unwrap();
            c.encoder.flush(&mut c.out).unwrap();
            c.data.write_all(&c.out).unwrap();
            c.written += c.out.len() as u64;
            c.journal_len += write_record(
                &mut c.journal,
                &Record::Commit {
                    offset: c.written,
                    bytes: c.bytes,
                    events: c.events,
                    crc: c.encoder.crc(),
                    first_secs: 0,
                    first_nanos: 0,
                    ids: vec!["aWQtcmVmdXNlZA==".into()],
                },
            )
            .unwrap();
            c.abandon().unwrap();
            drop(c);
            let r = recover(dir.path(), 4).unwrap();
            let sealed = r.chunk.unwrap();
            assert_eq!(sealed.events, 1, "{codec:?}");
            assert_eq!(decode(&sealed.data_path), b"{\"acked\":1}\n");
            assert_eq!(r.ids, vec![b"id-acked".to_vec()]);
        }
    }

    #[test]
    fn chunk_without_commits_is_removed() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 3, "app", codec, true).unwrap();
            c.append(b"{}\n", 1, t(), None).unwrap();
            std::mem::forget(c);
            let r = recover(dir.path(), 3).unwrap();
            assert!(r.chunk.is_none());
            assert!(!data_path(dir.path(), 3, codec.codec).exists());
            assert!(!journal_path(dir.path(), 3).exists());
        }
    }

    /// A sealed chunk from each gzip engine is one member that GNU gzip accepts (`gzip -t`)
    /// and decodes (`gzip -dc`) to exactly the committed lines, both when sealed and when
    /// recovered after a crash that left uncommitted blocks behind.
    #[test]
    fn sealed_gzip_chunks_pass_gzip_t() {
        for c in compressors().into_iter().filter(|c| c.codec == Codec::Gzip) {
            for crash in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let mut chunk = OpenChunk::create(dir.path(), 5, "app", c, true).unwrap();
                let mut committed = String::new();
                for i in 0..30_000 {
                    let line = format!(
                        "{{\"seq\":{i},\"path\":\"/v1/items/{}\",\"status\":{}}}\n",
                        i * 7919 % 10007,
                        [200, 404][i % 2]
                    );
                    chunk.append(line.as_bytes(), 1, t(), None).unwrap();
                    committed.push_str(&line);
                    if i % 1000 == 999 {
                        chunk.commit().unwrap();
                    }
                }
                let sealed = if crash {
                    for i in 0..500 {
                        let line = format!("{{\"lost\":{i}}}\n");
                        chunk.append(line.as_bytes(), 1, t(), None).unwrap();
                    }
                    chunk.encoder.flush(&mut chunk.out).unwrap();
                    chunk.data.write_all(&chunk.out).unwrap();
                    std::mem::forget(chunk);
                    recover(dir.path(), 5).unwrap().chunk.unwrap()
                } else {
                    chunk.seal().unwrap().unwrap()
                };
                let gzip = |args: &[&str]| {
                    std::process::Command::new("gzip")
                        .args(args)
                        .arg(&sealed.data_path)
                        .output()
                        .expect("gzip on PATH")
                };
                let t = gzip(&["-t"]);
                assert!(t.status.success(), "{c:?} crash={crash}: {t:?}");
                let d = gzip(&["-dc"]);
                assert!(d.status.success(), "{c:?} crash={crash}: {d:?}");
                assert!(d.stdout == committed.as_bytes(), "{c:?} crash={crash}");
                assert_eq!(decode(&sealed.data_path), committed.as_bytes());
            }
        }
    }

    /// A journal from before zstd (its Open record names no codec) recovers as gzip.
    #[test]
    fn old_journals_are_gzip() {
        let r: Record =
            serde_json::from_str(r#"{"kind":"open","seq":1,"partition":"app"}"#).unwrap();
        assert_eq!(
            r,
            Record::Open {
                seq: 1,
                partition: "app".into(),
                codec: Codec::Gzip
            }
        );
        let written = serde_json::to_string(&r).unwrap();
        assert_eq!(written, r#"{"kind":"open","seq":1,"partition":"app"}"#);
    }

    /// Recovery is idempotent after a torn journal append: the seal it records must be
    /// readable on the next start, or every restart cuts the tail again (`truncated` > 0, a
    /// misleading "cut unacknowledged bytes" log) and appends one more unreadable record.
    /// Found by the `chunk_recovery` fuzz target (docs/fuzzing.md).
    #[test]
    fn recovery_after_a_torn_journal_append_is_idempotent() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 5, "app", codec, true).unwrap();
            c.append(b"{\"a\":1}\n", 1, t(), None).unwrap();
            c.commit().unwrap();
            c.journal.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
            std::mem::forget(c);
            let first = recover(dir.path(), 5).unwrap();
            let sealed = first.chunk.unwrap();
            let again = recover(dir.path(), 5).unwrap();
            assert_eq!(again.truncated, 0, "{codec:?}");
            assert_eq!(again.chunk.unwrap().size, sealed.size);
            assert_eq!(decode(&sealed.data_path), b"{\"a\":1}\n");
        }
    }

    /// A journal ahead of its data file (fsync off and a power loss: the journal's pages
    /// reached the disk, the data's did not; or a damaged disk) is cut at the last commit the
    /// data holds. The next recovery must keep that cut, not take the closing tail for the
    /// data of a later commit whose offset the now longer file covers (and seal a chunk whose
    /// middle is the old tail). Found by the `chunk_recovery` fuzz target (docs/fuzzing.md).
    #[test]
    fn recovery_keeps_its_cut_when_the_journal_was_ahead_of_the_data() {
        for codec in compressors() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = OpenChunk::create(dir.path(), 6, "app", codec, true).unwrap();
            c.append(b"{\"a\":1}\n", 1, t(), None).unwrap();
            c.commit().unwrap();
            let kept = c.written;
            // A commit whose bytes never reached the data file, a little past its end.
            write_record(
                &mut c.journal,
                &Record::Commit {
                    offset: kept + 2,
                    bytes: 16,
                    events: 2,
                    crc: 0,
                    first_secs: 1_700_000_000,
                    first_nanos: 0,
                    ids: Vec::new(),
                },
            )
            .unwrap();
            let data_p = data_path(dir.path(), 6, codec.codec);
            std::mem::forget(c);
            let size = kept + Encoder::tail_len(codec.codec);
            let first = recover(dir.path(), 6).unwrap();
            let sealed = first.chunk.unwrap();
            assert_eq!((sealed.events, sealed.size), (1, size), "{codec:?}");
            let again = recover(dir.path(), 6).unwrap();
            assert_eq!(again.truncated, 0, "{codec:?}");
            let again = again.chunk.unwrap();
            assert_eq!((again.events, again.size), (1, size), "{codec:?}");
            assert_eq!(decode(&data_p), b"{\"a\":1}\n", "{codec:?}");
        }
    }
}
