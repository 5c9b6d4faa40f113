//! The system-call ABI the raw-socket guard reads at `sys_enter`, per architecture (the
//! object is built for the agent's target: aya-build sets `bpf_target_arch`): which calls
//! make a socket, which compat calls set socket options, and where their arguments are in
//! `struct pt_regs`. Compat calls — 32-bit programs (x86's ia32, arm64's aarch32) and x86's
//! x32 — have numbers of their own, and their `setsockopt` skips cgroup setsockopt programs.

/// A system call the guard looks at, and where its arguments are.
#[cfg_attr(
    not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")),
    expect(dead_code, reason = "no ABI known for this architecture")
)]
pub enum Call {
    /// `socket(family, type, ...)`.
    Socket { family_at: u64, type_at: u64 },
    /// A compat `setsockopt(fd, level, optname, ...)`.
    CompatSetsockopt { level_at: u64, optname_at: u64 },
    /// ia32 `socketcall(call, args)`: `call` at the first offset, a user pointer to the
    /// 32-bit arguments at the second.
    #[cfg_attr(
        bpf_target_arch = "aarch64",
        expect(dead_code, reason = "arm64 has no socketcall")
    )]
    Multiplexed { call_at: u64, args_at: u64 },
}

/// `socketcall`'s calls: `SYS_SOCKET`, `SYS_SETSOCKOPT`.
pub const SOCKETCALL_SOCKET: u64 = 1;
pub const SOCKETCALL_SETSOCKOPT: u64 = 14;

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use super::Call;
    /// `struct pt_regs` offsets: rdi, rsi, rdx (64-bit and x32 arguments 1-3) and ebx,
    /// ecx, edx (ia32 arguments 1-3).
    const DI: u64 = 112;
    const SI: u64 = 104;
    const DX: u64 = 96;
    const BX: u64 = 40;
    const CX: u64 = 88;
    /// x32 calls have this bit in their number.
    const X32: i64 = 0x4000_0000;

    /// The call `id` is, if the guard looks at it; `ia32` for a 32-bit program's call.
    #[inline(always)]
    pub fn call(id: i64, ia32: bool) -> Option<Call> {
        match (id, ia32) {
            (41, false) | (0x4000_0029, false) => Some(Call::Socket {
                family_at: DI,
                type_at: SI,
            }),
            (0x4000_021d, false) => Some(Call::CompatSetsockopt {
                level_at: SI,
                optname_at: DX,
            }),
            (359, true) => Some(Call::Socket {
                family_at: BX,
                type_at: CX,
            }),
            (366, true) => Some(Call::CompatSetsockopt {
                level_at: CX,
                optname_at: DX,
            }),
            (102, true) => Some(Call::Multiplexed {
                call_at: BX,
                args_at: CX,
            }),
            _ => None,
        }
    }

    /// Whether `id` may be such a call (a cheap test for every system call).
    #[inline(always)]
    pub fn maybe(id: i64) -> bool {
        let nr = id & !X32;
        nr == 41 || nr == 359 || nr == 366 || nr == 102 || nr == 541
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use super::Call;
    /// `regs[n]` of `struct pt_regs`.
    const X0: u64 = 0;
    const X1: u64 = 8;
    const X2: u64 = 16;

    #[inline(always)]
    pub fn call(id: i64, compat: bool) -> Option<Call> {
        match (id, compat) {
            (198, false) | (281, true) => Some(Call::Socket {
                family_at: X0,
                type_at: X1,
            }),
            (294, true) => Some(Call::CompatSetsockopt {
                level_at: X1,
                optname_at: X2,
            }),
            _ => None,
        }
    }

    #[inline(always)]
    pub fn maybe(id: i64) -> bool {
        id == 198 || id == 281 || id == 294
    }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
mod arch {
    use super::Call;

    /// No ABI known: the guard does nothing (the README says which architectures it knows).
    #[inline(always)]
    pub fn call(_id: i64, _compat: bool) -> Option<Call> {
        None
    }

    #[inline(always)]
    pub fn maybe(_id: i64) -> bool {
        false
    }
}

pub use arch::{call, maybe};
