//! Intel ISA-L's stateful deflate (igzip, levels 0..=3) as a gzip chunk's engine
//! (`buffer.gzip_engine: isal`, cargo feature `isal`): raw deflate, so that the chunk's own
//! header and tail (see [`super::encoder`]) frame it exactly as they frame zlib's output, with a
//! sync flush (ISA-L's `SYNC_FLUSH`, the same empty stored block as zlib's) at each commit.
//!
//! isal-rs's encoders cannot do this (their flush ends the gzip member and starts a new one, and
//! they offer no level 2), so this drives `isal_deflate` through isal-sys's bindings, linked to
//! the system libisal (Debian's `libisal-dev` 2.30 has the same `isal_zstream` layout as the
//! 2.31 headers the bindings were generated from).
//!
//! Must never: report a flush complete before every byte given so far is in the output, or keep
//! a pointer to a caller's buffer past the call that was given it.

use isal_sys::igzip_lib as ffi;
use std::io;

/// One deflate stream. The `isal_zstream` (about 85 KB: history, hash heads) and the level
/// buffer (hash table and token buffer, about 280-350 KB at levels 1..=3) are on the heap and
/// never move, so the pointer from the one to the other stays valid.
pub struct IsalDeflate {
    stream: Box<ffi::isal_zstream>,
    /// Owned here, used through `stream.level_buf`.
    _level_buf: Box<[u8]>,
}

// SAFETY: the stream's pointers point into its own level buffer, owned alongside it, and to
// libisal's static Huffman tables; `next_in`/`next_out` are set for one call and cleared after
// it. Nothing is shared with another stream or thread, so moving it to a writer thread is sound.
unsafe impl Send for IsalDeflate {}

impl IsalDeflate {
    pub fn new(level: i32) -> io::Result<IsalDeflate> {
        let size = match level {
            0 => ffi::ISAL_DEF_LVL0_DEFAULT,
            1 => ffi::ISAL_DEF_LVL1_DEFAULT,
            2 => ffi::ISAL_DEF_LVL2_DEFAULT,
            3 => ffi::ISAL_DEF_LVL3_DEFAULT,
            _ => {
                return Err(io::Error::other(format!(
                    "ISA-L deflate levels are 0..=3, not {level}"
                )));
            }
        };
        let mut level_buf = vec![0u8; size as usize].into_boxed_slice();
        // SAFETY: `isal_zstream` is plain C data (integers, arrays of integers, pointers), for
        // which all zeroes is a valid value; `isal_deflate_init` then sets it up.
        let mut stream: Box<ffi::isal_zstream> = unsafe { Box::new_zeroed().assume_init() };
        // SAFETY: a valid, exclusively borrowed stream.
        unsafe { ffi::isal_deflate_init(&mut *stream) };
        stream.level = level as u32;
        stream.level_buf_size = size;
        stream.level_buf = if size == 0 {
            std::ptr::null_mut()
        } else {
            level_buf.as_mut_ptr()
        };
        // Raw deflate: the chunk writes its own gzip header and trailer.
        stream.gzip_flag = ffi::IGZIP_DEFLATE as u16;
        stream.end_of_stream = 0;
        Ok(IsalDeflate {
            stream,
            _level_buf: level_buf,
        })
    }

    /// Compresses `input` into `out` (growing it as needed); not a durable point.
    pub fn append(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        // avail_in is 32 bits.
        for piece in input.chunks(1 << 30) {
            self.run(piece, out, ffi::NO_FLUSH)?;
        }
        Ok(())
    }

    /// Ends the current block on a byte boundary (an empty stored block), with everything
    /// appended so far in `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.run(&[], out, ffi::SYNC_FLUSH)
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>, flush: u32) -> io::Result<()> {
        let s = &mut *self.stream;
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = input.len() as u32;
        s.flush = flush as u16;
        let mut stalled = 0;
        let result = loop {
            super::encoder::reserve(out);
            let len = out.len();
            let spare = (out.capacity() - len).min(u32::MAX as usize);
            s.next_out = out.spare_capacity_mut().as_mut_ptr().cast();
            s.avail_out = spare as u32;
            let (in_before, state_before) = (s.avail_in, s.internal_state.state);
            // SAFETY: next_in/avail_in describe `input` and next_out/avail_out the spare
            // capacity of `out`, both live and unaliased for this call; the level buffer is
            // ours (see the struct).
            let ret = unsafe { ffi::isal_deflate(s) };
            let written = spare - s.avail_out as usize;
            // SAFETY: isal_deflate wrote `written` bytes at the start of the spare capacity.
            unsafe { out.set_len(len + written) };
            if ret != ffi::COMP_OK as i32 {
                break Err(io::Error::other(format!("isal_deflate: error {ret}")));
            }
            let st = &s.internal_state;
            let done = s.avail_in == 0
                && (flush == ffi::NO_FLUSH
                    // ISA-L's test for a finished flush: back at a new block, with room left in
                    // the output and nothing of the input still buffered unprocessed.
                    || (st.state == ffi::isal_zstate_state_ZSTATE_NEW_HDR
                        && s.avail_out > 0
                        && st.b_bytes_processed == st.b_bytes_valid));
            if done {
                break Ok(());
            }
            if written == 0 && s.avail_in == in_before && st.state == state_before {
                stalled += 1;
                if stalled >= 3 {
                    break Err(io::Error::other("isal_deflate made no progress"));
                }
            } else {
                stalled = 0;
            }
        };
        s.next_in = std::ptr::null_mut();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        result
    }
}
