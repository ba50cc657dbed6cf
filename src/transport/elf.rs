//! What the agent checks of the host program before sending it anywhere: a
//! 64-bit ELF executable that names no program interpreter, i.e. a static
//! build. A dynamically linked one needs the agent's C library on every host
//! (a glibc 2.36 build fails on Debian 11's 2.31), so it is refused before
//! any host is reached. The CPU it is built for goes with it, named as
//! `uname -m` names it, and the host compares; the program is also run there
//! once before it is put in place.

/// `PT_INTERP`: the program header that names a dynamic loader.
const PT_INTERP: u32 = 3;

/// The CPU a static 64-bit ELF program is built for (as `uname -m` names
/// it), or why `bytes` is not such a program.
pub fn static_program_machine(bytes: &[u8]) -> Result<String, String> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("it is not an ELF program".into());
    }
    if bytes.get(4) != Some(&2) {
        return Err("it is not a 64-bit ELF program".into());
    }
    let little = match bytes.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err("its ELF header names no byte order".into()),
    };
    let header = Header { bytes, little };
    let truncated = || Err("its ELF header is cut short".to_string());
    let Some(phoff) = header.u64(32) else {
        return truncated();
    };
    let (Some(entry_size), Some(count)) = (header.u16(54), header.u16(56)) else {
        return truncated();
    };
    for index in 0..u64::from(count) {
        let start = index
            .checked_mul(u64::from(entry_size))
            .and_then(|offset| offset.checked_add(phoff));
        let Some(start) = start.and_then(|s| usize::try_from(s).ok()) else {
            return truncated();
        };
        let Some(kind) = header.u32(start) else {
            return truncated();
        };
        if kind == PT_INTERP {
            let loader = header
                .u64(start + 8)
                .zip(header.u64(start + 32))
                .and_then(|(offset, size)| {
                    let offset = usize::try_from(offset).ok()?;
                    let end = offset.checked_add(usize::try_from(size).ok()?)?;
                    bytes.get(offset..end)
                })
                .map(|name| {
                    String::from_utf8_lossy(name)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_default();
            return Err(format!(
                "it is dynamically linked (for {}, it needs `{loader}` and the C library of the machine it was built on)",
                header.machine()
            ));
        }
    }
    Ok(header.machine())
}

struct Header<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Header<'_> {
    fn field<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        let mut field: [u8; N] = self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()?;
        if !self.little {
            field.reverse();
        }
        Some(field)
    }

    fn u16(&self, at: usize) -> Option<u16> {
        self.field(at).map(u16::from_le_bytes)
    }

    fn u32(&self, at: usize) -> Option<u32> {
        self.field(at).map(u32::from_le_bytes)
    }

    fn u64(&self, at: usize) -> Option<u64> {
        self.field(at).map(u64::from_le_bytes)
    }

    /// The CPU the program is built for, by its ELF machine number, in
    /// the words of `uname -m` on a Linux host of that CPU.
    fn machine(&self) -> String {
        match self.u16(18) {
            Some(62) => "x86_64".into(),
            Some(183) => "aarch64".into(),
            Some(243) => "riscv64".into(),
            Some(21) if self.little => "ppc64le".into(),
            Some(21) => "ppc64".into(),
            Some(22) => "s390x".into(),
            Some(other) => format!("ELF-machine-{other}"),
            None => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header with the given program headers
    /// (type, and for PT_INTERP the loader's name placed after them).
    fn elf(headers: &[u32], loader: &str) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        let names_at = 64 + 56 * headers.len();
        for kind in headers {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&(names_at as u64).to_le_bytes());
            header[32..40].copy_from_slice(&(loader.len() as u64 + 1).to_le_bytes());
            bytes.extend(header);
        }
        bytes.extend(loader.as_bytes());
        bytes.push(0);
        bytes
    }

    fn problem(bytes: &[u8]) -> String {
        static_program_machine(bytes).unwrap_err()
    }

    #[test]
    fn a_program_naming_a_loader_is_dynamic() {
        assert_eq!(
            problem(&elf(&[6, 3, 1], "/lib64/ld-linux-x86-64.so.2")),
            ("it is dynamically linked (for x86_64, it needs `/lib64/ld-linux-x86-64.so.2` and the C library of the machine it was built on)")
        );
    }

    #[test]
    fn a_program_without_a_loader_is_static() {
        assert_eq!(
            static_program_machine(&elf(&[6, 1, 2, 1], "")).as_deref(),
            Ok("x86_64")
        );
        let mut arm = elf(&[1], "");
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(static_program_machine(&arm).as_deref(), Ok("aarch64"));
    }

    #[test]
    fn what_is_not_a_whole_elf_program_is_named() {
        assert_eq!(
            problem(b"#!/bin/sh\nexit 0\n"),
            ("it is not an ELF program")
        );
        let mut cut = elf(&[1, 1, 3], "/lib/ld.so");
        cut.truncate(64 + 56 + 10);
        assert_eq!(problem(&cut), ("its ELF header is cut short"));
        let mut huge = elf(&[1], "");
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(problem(&huge), ("its ELF header is cut short"));
        let mut narrow = elf(&[1], "");
        narrow[4] = 1;
        assert_eq!(problem(&narrow), ("it is not a 64-bit ELF program"));
    }

    #[test]
    fn the_programs_cargo_builds_here_are_told_apart() {
        // This test binary is linked against the machine's C library.
        let itself = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let problem = static_program_machine(&itself).expect_err("a test binary is dynamic");
        assert!(problem.contains("dynamically linked"), "{problem}");
    }
}
