//! In-kernel socket redirection with a BPF sockmap (Linux only): the kernel relays two
//! connected TCP sockets to each other and their bytes never reach this process.
//!
//! Four maps, a ring buffer and one `SK_SKB` stream-verdict program of about a hundred
//! instructions, loaded through the raw `bpf(2)` syscall — no BPF toolchain, no loader
//! crate (the program is written below through a small label assembler):
//!
//! - `peers` (`SOCKHASH`) maps the cookie of a socket (`SO_COOKIE`, unique for the
//!   socket's life) to the socket its bytes go to. No program is attached to it: it is
//!   only looked up.
//! - `relayed` (`SOCKHASH`) holds the sockets whose incoming bytes are redirected now;
//!   the verdict program is attached to it, so a socket inserted here runs the program
//!   on every socket buffer it receives.
//! - `counts` (`HASH`): per socket, the bytes it redirected, whether it is passing
//!   (below), the bytes the program kept with it since, where (in TCP sequence numbers)
//!   the last buffer it saw ended, and the bytes it cut off as already taken (below).
//! - `limits` (`HASH`): per relayed socket, a soft and a hard limit on its count.
//! - `signals` (`RINGBUF`): the cookie of a socket whose count crossed a limit; its
//!   descriptor is readable while records wait, so the reactor polls it.
//!
//! The program, for each socket buffer a relayed socket receives:
//!
//! ```text
//! if skb->len == 0: drop                 ; a bare FIN: redirected it breaks the peer's
//!                                        ; pipe, kept it reads as EFAULT
//! key = get_socket_cookie(skb); c = counts[key]
//! if skb.end_seq - skb.seq is len (+1 for a FIN):   ; TCP's, in the control block
//!     old = c.end - skb.seq
//!     if 0 < old < len: cut old bytes off the head; c.trimmed += old
//!     c.end = skb.seq + len (as received)
//! if c.passing: c.kept += len; pass      ; for good: nothing may overtake kept bytes
//! after = c.count + len; l = limits[key]
//! if after > l.hard: c.passing = 1; signal(key); c.kept += len; pass
//! if c.count <= l.soft < after: signal(key)
//! c.count = after
//! sk_redirect_hash(skb, &peers, key, 0)  ; to the peer's egress
//! ```
//!
//! "Pass" leaves the buffer with its own socket, where `recv` finds it; the kernel
//! charges it to the socket's receive buffer, so TCP's window closes on the sender —
//! the only way to stop a source, since a redirected buffer is queued to the peer's
//! `psock` and sent by a kernel worker with no bound at all (measured: 2 GB in two
//! seconds into a target that does not read). Past the receive buffer kept bytes wait
//! in a second queue that `recv` cannot see yet, which is why the program counts them:
//! the reactor takes an end of stream for the end only once it has read them all.
//!
//! The cut: TCP queues a resent segment that overlaps bytes it already has (its sequence
//! number before `rcv_nxt`, its end after) whole, and leaves skipping the old part to the
//! reader — `recv` and `splice` start at `copied_seq`, but the kernel's read for a verdict
//! program (`tcp_read_skb`, 6.18) hands the program the whole buffer. Redirected or kept,
//! its old part would go out a second time: the far end would see a stretch of the
//! stream twice (one loopback segment, 65,483 bytes, a few times per GiB on a busy
//! machine, where a tail-loss probe or a timeout resends before the acknowledgement is
//! processed). The program remembers where the last buffer ended and takes the old
//! bytes off the head (`bpf_skb_adjust_room`, at most 4 KiB per call, up to 32 calls: a
//! resent head of up to 128 KiB). A buffer that is all old (TCP drops those itself),
//! that starts later, or the first one it sees is left as it is.
//!
//! Peers are linked before a socket is relayed, so the program never looks up a socket
//! whose peer is missing (and if it did, the bytes would stay, not drop). Bytes already
//! in a socket's receive queue when it is inserted are not redirected until the kernel
//! runs its data-ready callback again; [`Redirector::redirect`] makes it run at once
//! (setting `SO_RCVLOWAT` calls it), so those bytes go first, in order. A socket leaves
//! `relayed` only once nothing more can reach it (past its peer's FIN, or closing):
//! the kernel clears the program before it restores the socket's own callback, so a
//! buffer arriving in between would be dropped.

use std::os::fd::RawFd;

/// Where the program stands on a socket's count: past `soft` it signals (once per
/// crossing); past `hard` it redirects nothing more of the socket, ever, and keeps the
/// bytes with it (where the reactor reads them), signalling each buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// A socket and its cookie, as the maps know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Paired {
    pub(crate) fd: RawFd,
    pub(crate) cookie: u64,
}

#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use super::{Limits, Paired};
    use crate::sys::syscall;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;

    const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
    const BPF_PROG_TYPE_SK_SKB: u32 = 14;
    const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
    const BPF_ANY: u64 = 0;
    const BPF_PSEUDO_MAP_FD: u8 = 1;

    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
    const FUNC_RINGBUF_OUTPUT: i32 = 130;
    const FUNC_GET_SOCKET_COOKIE: i32 = 46;
    const FUNC_SK_REDIRECT_HASH: i32 = 72;
    const FUNC_SKB_ADJUST_ROOM: i32 = 50;
    /// `__sk_buff.cb[0]`: for an `SK_SKB` program, the first bytes of the buffer's
    /// control block, where TCP keeps the buffer's sequence number.
    const SKB_CB0: i16 = 48;
    /// The most `bpf_skb_adjust_room` removes from an `SK_SKB` buffer's head per call.
    const ADJUST_ROOM_MAX: i32 = 0xfff;
    /// Calls of it per buffer at most: a resent head of up to 128 KiB (a loopback
    /// segment is at most 64 KiB).
    const TRIM_STEPS: i32 = 32;

    /// One BPF instruction (`struct bpf_insn`): opcode, two 4-bit registers, offset and
    /// immediate.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }

    const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }

    // Opcodes used by the program (classes, sizes, modes and operations combined).
    const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
    const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two slots)
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGT_REG: u8 = 0x2d; // BPF_JMP | BPF_JGT | BPF_X
    const JLE_REG: u8 = 0xbd; // BPF_JMP | BPF_JLE | BPF_X
    const ADD64_REG: u8 = 0x0f; // BPF_ALU64 | BPF_ADD | BPF_X
    const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
    const JGT_IMM: u8 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
    const JLE_IMM: u8 = 0xb5; // BPF_JMP | BPF_JLE | BPF_K
    const JGE_REG: u8 = 0x3d; // BPF_JMP | BPF_JGE | BPF_X
    const JA: u8 = 0x05; // BPF_JMP | BPF_JA
    const SUB64_REG: u8 = 0x1f; // BPF_ALU64 | BPF_SUB | BPF_X
    const SUB64_IMM: u8 = 0x17; // BPF_ALU64 | BPF_SUB | BPF_K
    const OR64_REG: u8 = 0x4f; // BPF_ALU64 | BPF_OR | BPF_X
    const LSH64_IMM: u8 = 0x67; // BPF_ALU64 | BPF_LSH | BPF_K
    const RSH64_IMM: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
    const NEG64: u8 = 0x87; // BPF_ALU64 | BPF_NEG
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

    /// One step of the program as written: an instruction, a jump to a label, or a
    /// label (assembled by [`assemble`], which turns labels into relative offsets).
    enum Asm {
        I(Insn),
        /// A conditional jump `code` on `dst` against `src` or `imm`, to a label.
        Jump(u8, u8, u8, i32, &'static str),
        Label(&'static str),
    }

    fn assemble(program: &[Asm]) -> Vec<Insn> {
        let mut at = std::collections::HashMap::new();
        let mut n = 0i16;
        for step in program {
            match step {
                Asm::Label(name) => {
                    at.insert(*name, n);
                }
                Asm::I(i) => n += if i.code == LD_IMM64 { 2 } else { 1 },
                Asm::Jump(..) => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n as usize);
        for step in program {
            match *step {
                Asm::Label(_) => {}
                Asm::I(i) => {
                    out.push(i);
                    if i.code == LD_IMM64 {
                        out.push(insn(0, 0, 0, 0, 0)); // the upper half of the immediate
                    }
                }
                Asm::Jump(code, dst, src, imm, label) => {
                    let here = out.len() as i16 + 1;
                    out.push(insn(code, dst, src, at[label] - here, imm));
                }
            }
        }
        out
    }

    /// The verdict program of the module doc, with the maps' descriptors in its loads.
    fn verdict_program(maps: &Maps) -> Vec<Insn> {
        use Asm::{I, Jump, Label};
        const R0: u8 = 0;
        const R1: u8 = 1;
        const R2: u8 = 2;
        const R3: u8 = 3;
        const R4: u8 = 4;
        const R5: u8 = 5;
        const R6: u8 = 6;
        const R7: u8 = 7;
        const R8: u8 = 8;
        const R9: u8 = 9;
        const R10: u8 = 10;
        let map = |fd: &OwnedFd| fd.as_raw_fd();
        let signal = |out: &mut Vec<Asm>| {
            out.extend([
                I(insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, map(&maps.signals))),
                I(insn(MOV64_REG, R2, R10, 0, 0)),
                I(insn(ADD64_IMM, R2, 0, 0, -8)),
                I(insn(MOV64_IMM, R3, 0, 0, 8)),
                I(insn(MOV64_IMM, R4, 0, 0, 0)),
                I(insn(CALL, 0, 0, 0, FUNC_RINGBUF_OUTPUT)),
            ])
        };
        let mut p = vec![
            // A buffer with no bytes is a bare FIN (the socket has taken it already):
            // redirected, the kernel would send nothing and call that a broken pipe on
            // the peer; left with the socket, it reads as an error (EFAULT). Dropped.
            I(insn(LDX_W, R2, R1, 0, 0)),    // __sk_buff.len
            I(insn(MOV64_IMM, R0, 0, 0, 0)), // SK_DROP
            Jump(JEQ_IMM, R2, 0, 0, "exit"),
            I(insn(MOV64_REG, R6, R1, 0, 0)),
            I(insn(CALL, 0, 0, 0, FUNC_GET_SOCKET_COOKIE)),
            I(insn(STX_DW, R10, R0, -8, 0)), // the key, on the stack
            I(insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, map(&maps.counts))),
            I(insn(MOV64_REG, R2, R10, 0, 0)),
            I(insn(ADD64_IMM, R2, 0, 0, -8)),
            I(insn(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM)),
            Jump(JEQ_IMM, R0, 0, 0, "redirect"),
            I(insn(MOV64_REG, R7, R0, 0, 0)), // &{count, passing, kept, next, trimmed}
            // A buffer may begin with bytes this socket already took: TCP queues a
            // resent segment that overlaps what it has (its sequence number before
            // rcv_nxt) whole, and the kernel's read for this program does not skip
            // the old part as recv does. Cut it off, or it would be passed on twice.
            I(insn(LDX_W, R1, R6, SKB_CB0, 0)), // its TCP sequence number
            I(insn(LDX_W, R2, R6, 0, 0)),       // __sk_buff.len
            // Only a buffer as TCP queued it (its sequence numbers span its length,
            // plus one for a FIN) is looked at: a kernel that hands the program
            // something else (a clone already cut, another control block) gets
            // nothing cut.
            I(insn(LDX_W, R3, R6, SKB_CB0 + 4, 0)), // its end sequence number
            I(insn(SUB64_REG, R3, R1, 0, 0)),
            I(insn(SUB64_REG, R3, R2, 0, 0)),
            I(insn(LSH64_IMM, R3, 0, 0, 32)),
            I(insn(RSH64_IMM, R3, 0, 0, 32)),
            Jump(JGT_IMM, R3, 0, 1, "trimmed"),
            I(insn(MOV64_REG, R3, R1, 0, 0)),
            I(insn(ADD64_REG, R3, R2, 0, 0)),
            I(insn(LSH64_IMM, R3, 0, 0, 32)),
            I(insn(RSH64_IMM, R3, 0, 0, 32)),
            I(insn(MOV64_IMM, R4, 0, 0, 1)),
            I(insn(LSH64_IMM, R4, 0, 0, 32)),
            I(insn(OR64_REG, R3, R4, 0, 0)), // where it ends, with bit 32: known
            I(insn(LDX_DW, R4, R7, 24, 0)),  // where the last one ended
            Jump(JEQ_IMM, R4, 0, 0, "new end"), // the first buffer
            I(insn(MOV64_REG, R5, R4, 0, 0)),
            I(insn(SUB64_REG, R5, R1, 0, 0)),
            I(insn(LSH64_IMM, R5, 0, 0, 32)),
            I(insn(RSH64_IMM, R5, 0, 0, 32)), // bytes of it already taken
            Jump(JEQ_IMM, R5, 0, 0, "new end"),
            Jump(JGT_IMM, R5, 0, 0x7fff_ffff, "new end"), // it starts later
            Jump(JGE_REG, R5, R2, 0, "trimmed"),          // all old: TCP never queues that
            I(insn(STX_DW, R7, R3, 24, 0)),
            I(insn(LDX_DW, R1, R7, 32, 0)),
            I(insn(ADD64_REG, R1, R5, 0, 0)),
            I(insn(STX_DW, R7, R1, 32, 0)),   // counted, for the tests
            I(insn(MOV64_REG, R8, R5, 0, 0)), // still to cut
            I(insn(MOV64_IMM, R9, 0, 0, TRIM_STEPS)),
            Label("trim"),
            Jump(JEQ_IMM, R8, 0, 0, "trimmed"),
            Jump(JEQ_IMM, R9, 0, 0, "trimmed"),
            I(insn(MOV64_REG, R2, R8, 0, 0)),
            Jump(JLE_IMM, R2, 0, ADJUST_ROOM_MAX, "step"),
            I(insn(MOV64_IMM, R2, 0, 0, ADJUST_ROOM_MAX)),
            Label("step"),
            I(insn(SUB64_REG, R8, R2, 0, 0)),
            I(insn(NEG64, R2, 0, 0, 0)),
            I(insn(MOV64_REG, R1, R6, 0, 0)),
            I(insn(MOV64_IMM, R3, 0, 0, 0)),
            I(insn(MOV64_IMM, R4, 0, 0, 0)),
            I(insn(CALL, 0, 0, 0, FUNC_SKB_ADJUST_ROOM)), // takes bytes off its head
            I(insn(SUB64_IMM, R9, 0, 0, 1)),
            Jump(JEQ_IMM, R0, 0, 0, "trim"),
            Jump(JA, 0, 0, 0, "trimmed"), // could not (no memory): the rest of it stays
            Label("new end"),
            I(insn(STX_DW, R7, R3, 24, 0)),
            Label("trimmed"),
            I(insn(LDX_DW, R1, R7, 8, 0)),
            Jump(JNE_IMM, R1, 0, 0, "pass"), // passing already: everything stays
            I(insn(LDX_DW, R8, R7, 0, 0)),   // the count before
            I(insn(LDX_W, R9, R6, 0, 0)),    // __sk_buff.len
            I(insn(ADD64_REG, R9, R8, 0, 0)), // the count after
            I(insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, map(&maps.limits))),
            I(insn(MOV64_REG, R2, R10, 0, 0)),
            I(insn(ADD64_IMM, R2, 0, 0, -8)),
            I(insn(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM)),
            Jump(JEQ_IMM, R0, 0, 0, "count"),
            I(insn(LDX_DW, R1, R0, 8, 0)), // the hard limit
            Jump(JGT_REG, R9, R1, 0, "start passing"),
            I(insn(LDX_DW, R1, R0, 0, 0)),     // the soft limit
            Jump(JGT_REG, R8, R1, 0, "count"), // crossed before
            Jump(JLE_REG, R9, R1, 0, "count"), // not crossing now
        ];
        signal(&mut p);
        p.extend([
            Label("count"),
            I(insn(STX_DW, R7, R9, 0, 0)),
            Label("redirect"),
            I(insn(MOV64_REG, R1, R6, 0, 0)),
            I(insn(LD_IMM64, R2, BPF_PSEUDO_MAP_FD, 0, map(&maps.peers))),
            I(insn(MOV64_REG, R3, R10, 0, 0)),
            I(insn(ADD64_IMM, R3, 0, 0, -8)),
            I(insn(MOV64_IMM, R4, 0, 0, 0)),
            I(insn(CALL, 0, 0, 0, FUNC_SK_REDIRECT_HASH)),
            Jump(JNE_IMM, R0, 0, 0, "exit"), // SK_PASS: redirected
            I(insn(MOV64_IMM, R0, 0, 0, 1)), // no peer (it closed): the bytes stay
            Label("exit"),
            I(insn(EXIT, 0, 0, 0, 0)),
            Label("start passing"),
            I(insn(MOV64_IMM, R1, 0, 0, 1)),
            I(insn(STX_DW, R7, R1, 8, 0)), // for good: nothing may overtake these bytes
        ]);
        signal(&mut p);
        p.extend([
            Label("pass"),
            // Count what stays: the reactor reads these bytes itself, some of them
            // from a queue it cannot see yet, and must not take a FIN for the end
            // before it has read them all.
            I(insn(LDX_W, R1, R6, 0, 0)), // __sk_buff.len
            I(insn(LDX_DW, R2, R7, 16, 0)),
            I(insn(ADD64_REG, R2, R1, 0, 0)),
            I(insn(STX_DW, R7, R2, 16, 0)),
            I(insn(MOV64_IMM, R0, 0, 0, 1)), // SK_PASS without a redirect: bytes stay
            I(insn(EXIT, 0, 0, 0, 0)),
        ]);
        assemble(&p)
    }

    /// `bpf(2)`; `attr` is the command's `union bpf_attr` member, zero-padded.
    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, initialised `#[repr(C)]` struct laid out as the
        // command's member of `union bpf_attr`, and its exact size is passed, so the
        // kernel reads (and for some commands writes) only within it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T as *mut libc::c_void,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n)
        }
    }

    /// Wraps a descriptor `bpf(2)` returned.
    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    }

    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }

    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct MapElem {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value_or_next_key: u64,
        flags: u64,
    }

    fn name(text: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..text.len().min(15)].copy_from_slice(&text.as_bytes()[..text.len().min(15)]);
        out
    }

    fn map(map_type: u32, label: &str, value_size: u32, capacity: u32) -> io::Result<OwnedFd> {
        let ring = map_type == BPF_MAP_TYPE_RINGBUF;
        let mut attr = MapCreate {
            map_type,
            key_size: if ring { 0 } else { 8 },
            value_size,
            max_entries: capacity,
            map_name: name(label),
            ..MapCreate::default()
        };
        bpf(BPF_MAP_CREATE, &mut attr).map(owned)
    }

    /// The u64s of a `counts` value: redirected, passing, kept, last end, cut.
    const COUNT_WORDS: usize = 5;

    /// The maps the program uses.
    struct Maps {
        /// Cookie of a socket → the socket its bytes go to (no program attached).
        peers: OwnedFd,
        /// Sockets whose input is redirected now (the verdict program is attached).
        relayed: OwnedFd,
        /// Cookie of a linked socket → {bytes it redirected since it was linked,
        /// whether it is passing, bytes it kept, where its last buffer ended (TCP
        /// sequence number, bit 32 set once known), bytes cut off as already taken}
        /// (written by the program only).
        counts: OwnedFd,
        /// Cookie of a relayed socket → {soft, hard}: past the soft limit the program
        /// signals; past the hard one it keeps the bytes with the socket, for good.
        limits: OwnedFd,
        /// Ring buffer of the cookies whose count crossed their limit.
        signals: OwnedFd,
    }

    /// The maps, the program and the signal ring that redirect linked sockets to each
    /// other.
    pub(crate) struct Redirector {
        maps: Maps,
        ring: SignalRing,
        _program: OwnedFd,
    }

    impl Redirector {
        /// Creates the maps (room for `capacity` sockets each), loads the program and
        /// attaches it. Fails where the kernel lacks sockmap or ring buffers (before
        /// 5.8), or the process lacks `CAP_BPF`/`CAP_NET_ADMIN` (`EPERM`).
        pub(crate) fn open(capacity: u32) -> io::Result<Redirector> {
            let maps = Maps {
                peers: map(BPF_MAP_TYPE_SOCKHASH, "ember_peers", 4, capacity)?,
                relayed: map(BPF_MAP_TYPE_SOCKHASH, "ember_relayed", 4, capacity)?,
                counts: map(
                    BPF_MAP_TYPE_HASH,
                    "ember_counts",
                    (COUNT_WORDS * 8) as u32,
                    capacity,
                )?,
                limits: map(BPF_MAP_TYPE_HASH, "ember_limits", 16, capacity)?,
                signals: map(BPF_MAP_TYPE_RINGBUF, "ember_signals", 0, RING_BYTES as u32)?,
            };
            let ring = SignalRing::map(&maps.signals)?;
            let program = verdict_program(&maps);
            let license = c"GPL";
            let mut log = vec![0u8; 64 * 1024];
            let mut load = ProgLoad {
                prog_type: BPF_PROG_TYPE_SK_SKB,
                insn_cnt: program.len() as u32,
                insns: program.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: 1,
                log_size: log.len() as u32,
                log_buf: log.as_mut_ptr() as u64,
                prog_name: name("ember_relay"),
                ..ProgLoad::default()
            };
            let program = match bpf(BPF_PROG_LOAD, &mut load) {
                Ok(fd) => owned(fd),
                Err(e) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(0);
                    let verifier = String::from_utf8_lossy(&log[..end]);
                    let verifier = verifier.trim();
                    return Err(if verifier.is_empty() {
                        e
                    } else {
                        io::Error::new(e.kind(), format!("{e}; verifier: {verifier}"))
                    });
                }
            };
            let mut attach = ProgAttach {
                target_fd: maps.relayed.as_raw_fd() as u32,
                attach_bpf_fd: program.as_raw_fd() as u32,
                attach_type: BPF_SK_SKB_STREAM_VERDICT,
                ..ProgAttach::default()
            };
            bpf(BPF_PROG_ATTACH, &mut attach)?;
            Ok(Redirector {
                maps,
                ring,
                _program: program,
            })
        }

        /// The descriptor that becomes readable when a count crosses its limit (to
        /// register with the poller); [`take_signals`](Self::take_signals) reads them.
        pub(crate) fn signal_fd(&self) -> RawFd {
            self.maps.signals.as_raw_fd()
        }

        /// The cookies whose count crossed its limit since the last call.
        pub(crate) fn take_signals(&mut self, into: &mut Vec<u64>) {
            self.ring.drain(into);
        }

        /// Makes `a` and `b` each other's peer with counts at zero (nothing is
        /// redirected yet). Both must be connected TCP sockets. On failure nothing
        /// stays inserted.
        pub(crate) fn link(&self, a: &Paired, b: &Paired) -> io::Result<()> {
            let zero = [0u64; COUNT_WORDS];
            let (fd_a, fd_b) = (a.fd as u32, b.fd as u32);
            let steps: [(&OwnedFd, u64, *const u8); 4] = [
                (&self.maps.counts, a.cookie, zero.as_ptr().cast()),
                (&self.maps.counts, b.cookie, zero.as_ptr().cast()),
                (&self.maps.peers, a.cookie, (&fd_b as *const u32).cast()),
                (&self.maps.peers, b.cookie, (&fd_a as *const u32).cast()),
            ];
            for (done, &(map, key, value)) in steps.iter().enumerate() {
                if let Err(e) = update(map, key, value) {
                    for &(map, key, _) in &steps[..done] {
                        let _ = delete(map, key);
                    }
                    return Err(e);
                }
            }
            Ok(())
        }

        /// Redirects what `socket` receives to its peer, starting with any bytes
        /// already in its receive queue, within `limits` (see [`Limits`]).
        pub(crate) fn redirect(&self, socket: &Paired, limits: Limits) -> io::Result<()> {
            self.set_limits(socket, limits)?;
            if let Err(e) = update(
                &self.maps.relayed,
                socket.cookie,
                (&(socket.fd as u32) as *const u32).cast(),
            ) {
                let _ = delete(&self.maps.limits, socket.cookie);
                return Err(e);
            }
            // Bytes that reached the queue before the insert wait for the next
            // data-ready call; setting SO_RCVLOWAT makes one now, in order.
            crate::sys::socket::set_int_option(socket.fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1)
        }

        /// Moves `socket`'s limits.
        pub(crate) fn set_limits(&self, socket: &Paired, limits: Limits) -> io::Result<()> {
            let value = [limits.soft, limits.hard];
            update(&self.maps.limits, socket.cookie, value.as_ptr().cast())
        }

        /// Bytes `socket` has redirected since it was linked, and whether it passed its
        /// hard limit (then the program redirects nothing more of it, ever).
        pub(crate) fn count(&self, socket: &Paired) -> (u64, bool) {
            let [count, passing, ..] =
                lookup(&self.maps.counts, socket.cookie).unwrap_or([0; COUNT_WORDS]);
            (count, passing != 0)
        }

        /// Bytes the program kept with `socket` since it started passing.
        pub(crate) fn kept(&self, socket: &Paired) -> u64 {
            lookup(&self.maps.counts, socket.cookie).map_or(0, |v| v[2])
        }

        /// Bytes the program cut off the head of `socket`'s buffers because the socket
        /// had taken them already (a resent segment overlapping what arrived).
        #[cfg(test)]
        pub(crate) fn trimmed(&self, socket: &Paired) -> u64 {
            lookup(&self.maps.counts, socket.cookie).map_or(0, |v| v[4])
        }

        /// Stops running the program on `socket`'s input; returns its count. Only for a
        /// socket no more bytes can reach (past its peer's FIN, or closing): while bytes
        /// arrive, the kernel may drop one buffer as the program detaches (it clears the
        /// program before it restores the socket's own callback).
        pub(crate) fn hold(&self, socket: &Paired) -> u64 {
            let _ = delete(&self.maps.relayed, socket.cookie);
            let _ = delete(&self.maps.limits, socket.cookie);
            self.count(socket).0
        }

        /// Drops what the maps keep for a socket being closed (its socket-map entries
        /// leave with the socket itself); returns its count.
        pub(crate) fn forget(&self, socket: &Paired) -> u64 {
            let count = self.hold(socket);
            let _ = delete(&self.maps.counts, socket.cookie);
            count
        }

        /// Entries in all the maps together (for tests and leak checks).
        pub(crate) fn entries(&self) -> usize {
            [
                &self.maps.peers,
                &self.maps.relayed,
                &self.maps.counts,
                &self.maps.limits,
            ]
            .into_iter()
            .map(count_entries)
            .sum()
        }
    }

    /// Bytes of the signal ring: 8-byte records of 8-byte cookies, 4,096 of them.
    const RING_BYTES: usize = 64 * 1024;
    const RING_BUSY: u32 = 1 << 31;
    const RING_DISCARD: u32 = 1 << 30;
    const RING_HEADER: usize = 8;

    /// The consumer's view of the kernel's ring buffer: a read-write page holding the
    /// consumer position, and a read-only producer page followed by the data (mapped
    /// twice in a row by the kernel, so a record never wraps).
    struct SignalRing {
        consumer: *mut u8,
        producer: *const u8,
        page: usize,
    }

    impl SignalRing {
        fn map(ring: &OwnedFd) -> io::Result<SignalRing> {
            // SAFETY: sysconf takes an integer and returns one.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            // SAFETY: maps one page of the ring's descriptor read-write at offset 0
            // (the consumer page, as the ring-buffer ABI lays it out); checked below.
            let consumer = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    ring.as_raw_fd(),
                    0,
                )
            };
            if consumer == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: maps the producer page and the data area twice, read-only, at
            // offset `page`, as the ring-buffer ABI lays them out; checked below.
            let producer = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page + 2 * RING_BYTES,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    ring.as_raw_fd(),
                    page as libc::off_t,
                )
            };
            if producer == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                // SAFETY: unmaps exactly the mapping made above.
                unsafe { libc::munmap(consumer, page) };
                return Err(e);
            }
            Ok(SignalRing {
                consumer: consumer.cast(),
                producer: producer.cast(),
                page,
            })
        }

        fn drain(&mut self, into: &mut Vec<u64>) {
            use std::sync::atomic::{AtomicU64, Ordering};
            // SAFETY: both positions are 8-byte aligned u64s at the start of pages
            // mapped for this ring's life; the kernel updates the producer's
            // concurrently, so both are read (and ours written) atomically.
            let (consumer_pos, producer_pos) = unsafe {
                (
                    &*(self.consumer as *const AtomicU64),
                    &*(self.producer as *const AtomicU64),
                )
            };
            // The kernel wakes a reader only for a record committed while the consumer
            // position stands at it, so a record committed after `end` was read but
            // before the new position is stored wakes nobody: read the producer's
            // position again after storing ours, until nothing new came.
            let mut at = consumer_pos.load(Ordering::Acquire);
            loop {
                let end = producer_pos.load(Ordering::Acquire);
                if at >= end || !self.drain_to(&mut at, end, into) {
                    consumer_pos.store(at, Ordering::Release);
                    return;
                }
                consumer_pos.store(at, Ordering::Release);
            }
        }

        /// Reads the records from `at` to `end` into `into`, moving `at` past them;
        /// `false` if it stopped at one still being written.
        fn drain_to(&self, at: &mut u64, end: u64, into: &mut Vec<u64>) -> bool {
            use std::sync::atomic::{AtomicU32, Ordering};
            while *at < end {
                let offset = (*at as usize) & (RING_BYTES - 1);
                // SAFETY: `offset + RING_HEADER + 8` stays within the data area mapped
                // twice over (2 * RING_BYTES after the producer page); the header's
                // length word is written by the kernel as it commits, read atomically.
                let (len, cookie) = unsafe {
                    let record = self.producer.add(self.page + offset);
                    let len = (*(record as *const AtomicU32)).load(Ordering::Acquire);
                    let cookie = std::ptr::read_unaligned(record.add(RING_HEADER) as *const u64);
                    (len, cookie)
                };
                if len & RING_BUSY != 0 {
                    return false; // still being written: its commit wakes us
                }
                let size = (len & !(RING_BUSY | RING_DISCARD)) as usize;
                if len & RING_DISCARD == 0 && size == 8 {
                    into.push(cookie);
                }
                *at += ((RING_HEADER + size + 7) & !7) as u64;
            }
            true
        }
    }

    impl Drop for SignalRing {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the two mappings `map` made; nothing uses them
            // after this.
            unsafe {
                libc::munmap(self.consumer.cast(), self.page);
                libc::munmap(
                    self.producer as *mut libc::c_void,
                    self.page + 2 * RING_BYTES,
                );
            }
        }
    }

    impl Paired {
        pub(crate) fn of(fd: RawFd) -> io::Result<Paired> {
            Ok(Paired {
                fd,
                cookie: socket_cookie(fd)?,
            })
        }
    }

    /// Inserts or replaces `key`'s value (`value` points at the map's value: a u32
    /// descriptor for a socket map, a u64 otherwise).
    fn update(map: &OwnedFd, key: u64, value: *const u8) -> io::Result<()> {
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value_or_next_key: value as u64,
            flags: BPF_ANY,
            ..MapElem::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    fn delete(map: &OwnedFd, key: u64) -> io::Result<()> {
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
    }

    /// `key`'s value in a map of up to [`COUNT_WORDS`] u64s (the rest left zero).
    fn lookup(map: &OwnedFd, key: u64) -> Option<[u64; COUNT_WORDS]> {
        let mut value = [0u64; COUNT_WORDS];
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
    }

    fn count_entries(map: &OwnedFd) -> usize {
        let mut key = 0u64;
        let mut next = 0u64;
        let mut n = 0;
        let mut first = true;
        loop {
            let mut attr = MapElem {
                map_fd: map.as_raw_fd() as u32,
                key: if first { 0 } else { &key as *const u64 as u64 },
                value_or_next_key: &mut next as *mut u64 as u64,
                ..MapElem::default()
            };
            if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).is_err() {
                return n;
            }
            first = false;
            key = next;
            n += 1;
        }
    }

    /// The socket's cookie (`SO_COOKIE`): a number the kernel never reuses for another
    /// socket while the system runs.
    pub(crate) fn socket_cookie(fd: RawFd) -> io::Result<u64> {
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the u64 we pass.
        syscall!(getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len
        ))?;
        Ok(cookie)
    }

    /// Sets the interest of a TCP socket registered (edge-triggered, both directions,
    /// priority, by mio) in `epoll`, keeping its `token`: readable (with urgent data)
    /// and writable each on or off; its peer's FIN (`EPOLLRDHUP`), errors and hangups
    /// always wake. A socket whose input the kernel redirects still wakes readers after
    /// every buffer — `EPOLLPRI` included, which the kernel's wake-up names whatever
    /// arrived — and one the kernel writes wakes writers after every acknowledgement:
    /// `watch(.., false, false)` spares the reactor both.
    pub(crate) fn watch(
        epoll: RawFd,
        fd: RawFd,
        token: usize,
        input: bool,
        output: bool,
    ) -> io::Result<()> {
        let mut events = libc::EPOLLET | libc::EPOLLRDHUP;
        if input {
            events |= libc::EPOLLIN | libc::EPOLLPRI;
        }
        if output {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token as u64,
        };
        // SAFETY: epoll_ctl reads the event we pass; `fd` is registered in `epoll` (a
        // MOD of anything else fails with ENOENT, harmlessly).
        syscall!(epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut event))?;
        Ok(())
    }

    /// Whether the peer of TCP socket `fd` has sent its FIN (or the connection is gone):
    /// `TCP_INFO`'s state is past ESTABLISHED on the receiving side.
    pub(crate) fn peer_finished(fd: RawFd) -> bool {
        const ESTABLISHED: u8 = 1;
        const FIN_WAIT1: u8 = 4;
        const FIN_WAIT2: u8 = 5;
        match tcp_info(fd, 1) {
            Ok(info) => !matches!(info[0], ESTABLISHED | FIN_WAIT1 | FIN_WAIT2),
            Err(_) => true,
        }
    }

    /// How long since `fd` last sent or received data (`TCP_INFO`'s `tcpi_last_data_sent`
    /// and `tcpi_last_data_recv`, in milliseconds).
    pub(crate) fn idle_time(fd: RawFd) -> io::Result<std::time::Duration> {
        const LAST_DATA_SENT: usize = 44;
        const LAST_DATA_RECV: usize = 52;
        let info = tcp_info(fd, LAST_DATA_RECV + 4)?;
        let field = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().unwrap());
        let ms = field(LAST_DATA_SENT).min(field(LAST_DATA_RECV));
        Ok(std::time::Duration::from_millis(u64::from(ms)))
    }

    /// `TCP_INFO` of `fd`, at least `needed` bytes of it.
    fn tcp_info(fd: RawFd, needed: usize) -> io::Result<[u8; 256]> {
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer we pass.
        syscall!(getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len
        ))?;
        if (len as usize) < needed {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's TCP_INFO is too short",
            ));
        }
        Ok(info)
    }

    /// Bytes the kernel has taken for sending on `fd` since it was opened (plus one
    /// for the SYN): acknowledged bytes (`TCP_INFO`'s `tcpi_bytes_acked`) plus those
    /// still queued (`SIOCOUTQ`). Read in that order, a concurrent change can only make
    /// the answer smaller than the truth, never larger.
    pub(crate) fn bytes_written(fd: RawFd) -> io::Result<u64> {
        /// Offset of `tcpi_bytes_acked` in `struct tcp_info` (stable since Linux 4.1).
        const BYTES_ACKED: usize = 120;
        let info = tcp_info(fd, BYTES_ACKED + 8)?;
        let acked = u64::from_ne_bytes(info[BYTES_ACKED..BYTES_ACKED + 8].try_into().unwrap());
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int into the variable we pass.
        syscall!(ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int))?;
        Ok(acked + queued.max(0) as u64)
    }
}

/// Sockmap is Linux-only: elsewhere opening one says so, and relays splice or copy.
#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use std::io;
    use std::os::fd::RawFd;
    use std::time::Duration;

    use super::{Limits, Paired};

    pub(crate) struct Redirector;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "in-kernel relaying (BPF sockmap) is Linux-only",
        )
    }

    impl Redirector {
        pub(crate) fn open(_capacity: u32) -> io::Result<Redirector> {
            Err(unsupported())
        }
        pub(crate) fn signal_fd(&self) -> RawFd {
            -1
        }
        pub(crate) fn take_signals(&mut self, _into: &mut Vec<u64>) {}
        pub(crate) fn link(&self, _a: &Paired, _b: &Paired) -> io::Result<()> {
            Err(unsupported())
        }
        pub(crate) fn redirect(&self, _socket: &Paired, _limits: Limits) -> io::Result<()> {
            Err(unsupported())
        }
        pub(crate) fn set_limits(&self, _socket: &Paired, _limits: Limits) -> io::Result<()> {
            Err(unsupported())
        }
        pub(crate) fn count(&self, _socket: &Paired) -> (u64, bool) {
            (0, false)
        }
        pub(crate) fn kept(&self, _socket: &Paired) -> u64 {
            0
        }
        pub(crate) fn hold(&self, _socket: &Paired) -> u64 {
            0
        }
        pub(crate) fn forget(&self, _socket: &Paired) -> u64 {
            0
        }
        pub(crate) fn entries(&self) -> usize {
            0
        }
    }

    impl Paired {
        pub(crate) fn of(_fd: RawFd) -> io::Result<Paired> {
            Err(unsupported())
        }
    }

    pub(crate) fn bytes_written(_fd: RawFd) -> io::Result<u64> {
        Err(unsupported())
    }

    pub(crate) fn idle_time(_fd: RawFd) -> io::Result<Duration> {
        Err(unsupported())
    }

    pub(crate) fn peer_finished(_fd: RawFd) -> bool {
        true
    }

    pub(crate) fn watch(
        _epoll: RawFd,
        _fd: RawFd,
        _token: usize,
        _input: bool,
        _output: bool,
    ) -> io::Result<()> {
        Err(unsupported())
    }
}
#[cfg(not(target_os = "linux"))]
pub(crate) use elsewhere::*;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// A connected pair: (the outside end, the proxy's end).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let outside = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (inside, _) = l.accept().unwrap();
        (outside, inside)
    }

    /// Reads `n` bytes within 5 s. A socket in a sockmap may answer a blocking read
    /// with `EAGAIN` at once (when it finds bytes the program has not seen yet, it
    /// runs the program and asks for a retry), so that is retried.
    fn read_exactly(from: &mut TcpStream, n: usize) -> Vec<u8> {
        from.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match from.read(&mut out[got..]) {
                Ok(0) => panic!("end of stream after {got} of {n} bytes"),
                Ok(k) => got += k,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
                Err(e) => panic!("after {got} of {n} bytes: {e}"),
            }
        }
        out
    }

    fn open() -> Option<Redirector> {
        match Redirector::open(64) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("skipped: in-kernel relay unavailable here: {e}");
                None
            }
        }
    }

    #[test]
    fn a_linked_pair_relays_both_ways_signals_past_its_soft_limit_and_keeps_bytes_past_its_hard_one()
     {
        let Some(mut r) = open() else { return };
        let (mut client, p_client) = pair();
        let (mut backend, p_backend) = pair();
        client.write_all(b"early ").unwrap();
        let a = Paired::of(p_client.as_raw_fd()).unwrap();
        let b = Paired::of(p_backend.as_raw_fd()).unwrap();
        let base = bytes_written(b.fd).unwrap();
        r.link(&a, &b).unwrap();
        r.redirect(&a, Limits { soft: 10, hard: 12 }).unwrap();
        r.redirect(
            &b,
            Limits {
                soft: 1 << 20,
                hard: 2 << 20,
            },
        )
        .unwrap();
        assert_eq!(r.entries(), 2 + 2 + 2 + 2);
        client.write_all(b"late").unwrap();
        assert_eq!(read_exactly(&mut backend, 10), b"early late");
        backend.write_all(b"answer").unwrap();
        assert_eq!(read_exactly(&mut client, 6), b"answer");
        assert_eq!(bytes_written(b.fd).unwrap() - base, 10);
        assert_eq!(r.count(&a), (10, false));
        // Crossing the soft limit of 10 signals once, with the client's cookie.
        client.write_all(b"!").unwrap();
        assert_eq!(read_exactly(&mut backend, 1), b"!");
        let mut signals = Vec::new();
        let start = Instant::now();
        while signals.is_empty() && start.elapsed() < Duration::from_secs(5) {
            r.take_signals(&mut signals);
        }
        assert_eq!(signals, vec![a.cookie]);
        // Past the hard limit of 12 the bytes stay with the socket, and every later
        // buffer too, even once the limit moves: nothing may overtake them.
        client.write_all(b"kept").unwrap();
        let start = Instant::now();
        while !r.count(&a).1 && start.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        r.set_limits(
            &a,
            Limits {
                soft: 1 << 20,
                hard: 2 << 20,
            },
        )
        .unwrap();
        client.write_all(b" too").unwrap();
        let mut inside = p_client.try_clone().unwrap();
        assert_eq!(read_exactly(&mut inside, 8), b"kept too");
        assert_eq!(r.count(&a), (11, true));
        // Buffers in order are never cut (only a resent one overlapping what arrived).
        assert_eq!((r.trimmed(&a), r.trimmed(&b)), (0, 0));
        backend
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(
            backend.read(&mut [0u8; 16]).is_err(),
            "nothing more redirected"
        );
        // Closing a socket takes it out of the socket maps; forget drops the rest.
        r.forget(&a);
        r.forget(&b);
        drop((p_client, p_backend, inside));
        assert_eq!(r.entries(), 0);
    }
}
