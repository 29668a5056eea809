//! The shared libraries an ELF binary loads, found by reading its headers
//! (`PT_INTERP`, `DT_NEEDED`), never by running anything on it: `ldd` runs
//! the binary's own loader, and the binary comes from a tenant's build.
//!
//! Only the host's system library directories are searched, whatever the
//! binary's `DT_RUNPATH`/`DT_RPATH` say, and a name is accepted only if it
//! looks like a shared object (`*.so*`, no `/`) and resolves to an ELF
//! shared object of the binary's class and machine: a crafted binary cannot
//! make packaging copy an arbitrary host file (`/etc/shadow`) into its image.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use goblin::container::Ctx;
use goblin::elf::dynamic::Dynamic;
use goblin::elf::header::{ET_DYN, ET_EXEC};
use goblin::elf::program_header::{PT_INTERP, ProgramHeader};
use goblin::elf::{Elf, Header};
use goblin::strtab::Strtab;

/// What a parsed ELF object says about loading it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dynamics {
    /// `PT_INTERP`: the dynamic loader's absolute path.
    pub interp: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// (64-bit, e_machine): a library must match its user.
    pub class: (bool, u16),
    /// `e_type`.
    pub kind: u16,
}

/// Reads the loading information of the ELF object in `data`.
pub(crate) fn dynamics(data: &[u8]) -> Result<Dynamics, String> {
    let header: Header = Elf::parse_header(data).map_err(|e| format!("not an ELF file: {e}"))?;
    let ctx = Ctx {
        container: header.container().map_err(|e| e.to_string())?,
        le: header.endianness().map_err(|e| e.to_string())?,
    };
    let phdrs = ProgramHeader::parse(
        data,
        usize::try_from(header.e_phoff).map_err(|e| e.to_string())?,
        usize::from(header.e_phnum),
        ctx,
    )
    .map_err(|e| format!("bad program headers: {e}"))?;
    let mut out = Dynamics {
        class: (ctx.container.is_big(), header.e_machine),
        kind: header.e_type,
        ..Dynamics::default()
    };
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let start = usize::try_from(p.p_offset).map_err(|e| e.to_string())?;
        let len = usize::try_from(p.p_filesz).map_err(|e| e.to_string())?;
        let raw = start
            .checked_add(len)
            .and_then(|end| data.get(start..end))
            .ok_or("PT_INTERP lies outside the file")?;
        let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
        let interp = std::str::from_utf8(raw).map_err(|_| "PT_INTERP is not UTF-8")?;
        out.interp = Some(interp.to_owned());
    }
    if let Some(dynamic) =
        Dynamic::parse(data, &phdrs, ctx).map_err(|e| format!("bad dynamic section: {e}"))?
    {
        let strtab = Strtab::parse(data, dynamic.info.strtab, dynamic.info.strsz, 0)
            .map_err(|e| format!("bad dynamic string table: {e}"))?;
        out.needed = dynamic
            .get_libraries(&strtab)
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    Ok(out)
}

/// The directories libraries are looked up in, in the loader's order for
/// this host (multiarch first).
pub(crate) fn library_dirs() -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".to_owned(),
        "/usr/lib64".to_owned(),
        "/lib".to_owned(),
        "/usr/lib".to_owned(),
        format!("/usr/local/lib/{triplet}"),
        "/usr/local/lib".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// Whether `interp` is a dynamic loader in one of `dirs` (`ld-*` directly
/// in a library directory, as an absolute path without `.` or `..`).
fn valid_interp(interp: &str, dirs: &[PathBuf]) -> bool {
    let path = Path::new(interp);
    let plain = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    let named = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-"));
    plain && named && path.parent().is_some_and(|p| dirs.iter().any(|d| d == p))
}

/// Whether `name` may be a `DT_NEEDED` entry we resolve: a bare file name
/// of a shared object.
fn valid_needed(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
        && (name.ends_with(".so") || name.contains(".so."))
}

/// The absolute paths of the shared objects the ELF object `data` loads,
/// recursively, its loader included, sorted; empty for a static binary.
/// Each library is read from `dirs` (see [`library_dirs`]).
pub(crate) fn closure(data: &[u8], dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let top = dynamics(data)?;
    if top.kind != ET_EXEC && top.kind != ET_DYN {
        return Err("not an executable".into());
    }
    let mut found = BTreeSet::new();
    if let Some(interp) = &top.interp {
        if !valid_interp(interp, dirs) {
            return Err(format!(
                "its loader (PT_INTERP) {interp:?} is not a dynamic loader in a system library directory"
            ));
        }
        let path = PathBuf::from(interp);
        if !path.is_file() {
            return Err(format!("its loader {interp} is not on this host"));
        }
        found.insert(path);
    }
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = top.needed.into_iter().collect();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if !valid_needed(&name) {
            return Err(format!(
                "it needs {name:?}, which is not the name of a shared library"
            ));
        }
        let mut resolved = None;
        for dir in dirs {
            let candidate = dir.join(&name);
            let Ok(bytes) = std::fs::read(&candidate) else {
                continue;
            };
            // Like the loader: skip a library of another class or machine.
            match dynamics(&bytes) {
                Ok(lib) if lib.kind == ET_DYN && lib.class == top.class => {
                    resolved = Some((candidate, lib));
                    break;
                }
                _ => continue,
            }
        }
        let Some((path, lib)) = resolved else {
            return Err(format!("missing library: {name} (not in {})", join(dirs)));
        };
        queue.extend(lib.needed);
        found.insert(path);
    }
    Ok(found.into_iter().collect())
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loader_and_needed_libraries_of_a_host_binary() {
        let data = std::fs::read("/bin/true").unwrap();
        let d = dynamics(&data).unwrap();
        assert!(
            d.interp.as_deref().is_some_and(|i| i.contains("ld-")),
            "{d:?}"
        );
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        let libs = closure(&data, &library_dirs()).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.ends_with(d.interp.as_deref().unwrap().trim_start_matches('/')))
        );
    }

    #[test]
    fn refuses_names_and_loaders_that_are_not_libraries() {
        let dirs = library_dirs();
        assert!(valid_needed("libc.so.6"));
        assert!(valid_needed("libfoo.so"));
        for bad in [
            "../../etc/shadow",
            "/etc/shadow",
            "shadow",
            "",
            "..",
            "a/libc.so.6",
        ] {
            assert!(!valid_needed(bad), "{bad}");
        }
        let x86 = format!("/lib/{}-linux-gnu/ld-linux.so.2", std::env::consts::ARCH);
        assert!(valid_interp("/lib64/ld-linux-x86-64.so.2", &dirs));
        assert!(valid_interp(&x86, &dirs));
        for bad in [
            "/etc/shadow",
            "/lib64/../etc/ld-x",
            "lib64/ld-linux-x86-64.so.2",
            "/tmp/ld-linux.so",
            "/lib64/libc.so.6",
        ] {
            assert!(!valid_interp(bad, &dirs), "{bad}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(dynamics(b"").is_err());
        assert!(dynamics(b"#!/bin/sh\necho hi\n").is_err());
        let mut data = std::fs::read("/bin/true").unwrap();
        // A program header table pointing past the end of the file.
        data.truncate(200);
        let _ = dynamics(&data);
        let _ = closure(&data, &library_dirs());
    }
}
