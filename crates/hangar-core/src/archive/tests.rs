use super::testing::raw_targz as targz;
use super::*;

fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<(), ArchiveError>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let r = unpack_tar_gz(data, &dest, Limits::default());
    (dir, r)
}

use tar::EntryType as T;

#[test]
fn unpacks_files_dirs_and_inner_links() {
    let data = targz(&[
        ("src/", T::Directory, b"", None),
        ("src/main.rs", T::Regular, b"fn main() {}", None),
        ("link.rs", T::Symlink, b"", Some("src/main.rs")),
    ]);
    let (dir, r) = unpack(&data);
    r.unwrap();
    let out = dir.path().join("out");
    assert_eq!(fs::read(out.join("src/main.rs")).unwrap(), b"fn main() {}");
    assert_eq!(fs::read(out.join("link.rs")).unwrap(), b"fn main() {}");
    validate_tar_gz(&data[..], Limits::default()).unwrap();
}

#[test]
fn rejects_parent_dir_and_writes_nothing_outside() {
    let data = targz(&[("../evil", T::Regular, b"x", None)]);
    let (dir, r) = unpack(&data);
    assert!(matches!(r, Err(ArchiveError::ParentDir(_))), "{r:?}");
    assert!(!dir.path().join("evil").exists());
    assert!(validate_tar_gz(&data[..], Limits::default()).is_err());
}

#[test]
fn rejects_absolute_paths() {
    let data = targz(&[("/tmp/evil", T::Regular, b"x", None)]);
    assert!(matches!(
        unpack(&data).1,
        Err(ArchiveError::AbsolutePath(_))
    ));
}

#[test]
fn rejects_links_pointing_outside() {
    for target in ["/etc/passwd", "../../etc", "a/../../x"] {
        let data = targz(&[("l", T::Symlink, b"", Some(target))]);
        let r = unpack(&data).1;
        assert!(
            matches!(r, Err(ArchiveError::LinkOutside { .. })),
            "{target}: {r:?}"
        );
    }
    let data = targz(&[("h", T::Link, b"", Some("x"))]);
    assert!(matches!(unpack(&data).1, Err(ArchiveError::HardLink(_))));
}

#[test]
fn refuses_to_write_through_a_symlinked_directory() {
    // `d -> .` is inside, but a later `d/x` must not be written through it.
    let data = targz(&[
        ("d", T::Symlink, b"", Some(".")),
        ("d/x", T::Regular, b"x", None),
    ]);
    assert!(matches!(unpack(&data).1, Err(ArchiveError::Io { .. })));
}

#[test]
fn rejects_devices_and_fifos() {
    for kind in [T::Char, T::Block, T::Fifo] {
        let data = targz(&[("dev", kind, b"", None)]);
        assert!(matches!(
            unpack(&data).1,
            Err(ArchiveError::SpecialFile { .. })
        ));
    }
}

#[test]
fn enforces_size_and_count_caps() {
    let big = vec![0u8; 4096];
    let data = targz(&[("a", T::Regular, &big, None), ("b", T::Regular, &big, None)]);
    let limits = Limits {
        max_unpacked_bytes: 5000,
        max_entries: 10,
        ..Limits::default()
    };
    let err = validate_tar_gz(&data[..], limits).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 1,
        ..Limits::default()
    };
    assert!(matches!(
        validate_tar_gz(&data[..], limits),
        Err(ArchiveError::TooManyEntries { .. })
    ));
}

fn plain_tar(entries: &[(&str, T, &[u8], Option<&str>)]) -> Vec<u8> {
    let gz = targz(entries);
    let mut out = Vec::new();
    io::copy(&mut GzDecoder::new(&gz[..]), &mut out).unwrap();
    out
}

#[test]
fn layers_apply_whiteouts_hard_links_and_absolute_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let lower = plain_tar(&[
        ("etc/", T::Directory, b"", None),
        ("etc/keep", T::Regular, b"k", None),
        ("etc/gone", T::Regular, b"g", None),
        ("var/", T::Directory, b"", None),
        ("var/cache/", T::Directory, b"", None),
        ("var/cache/a", T::Regular, b"a", None),
        ("bin/", T::Directory, b"", None),
        ("bin/busy", T::Regular, b"#!", None),
        ("dev/", T::Directory, b"", None),
        ("dev/null", T::Char, b"", None),
    ]);
    let upper = plain_tar(&[
        ("etc/.wh.gone", T::Regular, b"", None),
        ("var/cache/.wh..wh..opq", T::Regular, b"", None),
        ("var/cache/b", T::Regular, b"b", None),
        ("bin/sh", T::Link, b"", Some("bin/busy")),
        ("lib", T::Symlink, b"", Some("/usr/lib")),
    ]);
    unpack_layer(&lower[..], &root, Limits::default()).unwrap();
    unpack_layer(&upper[..], &root, Limits::default()).unwrap();
    assert!(root.join("etc/keep").exists());
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("var/cache/a").exists());
    assert!(root.join("var/cache/b").exists());
    assert!(!root.join("dev/null").exists(), "device nodes are skipped");
    assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"#!");
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );
    // Still no escape through names or hard links.
    let evil = plain_tar(&[("x", T::Link, b"", Some("../../etc/passwd"))]);
    assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
    let evil = plain_tar(&[("../x", T::Regular, b"x", None)]);
    assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
    // Through a symlinked directory (lib -> /usr/lib): neither a hard
    // link's target nor a whiteout may reach the host.
    let evil = plain_tar(&[("y", T::Link, b"", Some("lib/os-release"))]);
    assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
    let evil = plain_tar(&[("lib/.wh.os-release", T::Regular, b"", None)]);
    assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
    assert!(Path::new("/usr/lib/os-release").exists());
}

#[test]
fn huge_extension_headers_are_refused_before_they_are_read() {
    // A header that claims 10 GiB, followed by almost nothing: refused
    // on its size, never allocated or read.
    for (kind, what) in [
        (T::GNULongName, "GNU long name"),
        (T::XHeader, "PAX"),
        (T::XGlobalHeader, "PAX global"),
        (T::GNULongLink, "GNU long link"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(10 << 30);
        h.set_path("././@LongLink").unwrap();
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'a'; 512]);
        let limits = Limits {
            max_unpacked_bytes: 1 << 40,
            max_entries: 10,
            ..Limits::default()
        };
        let err = unpack_tar(
            &raw[..],
            &tempfile::tempdir().unwrap().path().join("o"),
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ArchiveError::HeaderTooLarge { kind, .. } if *kind == what),
            "{what}: {err}"
        );
        assert!(err.is_too_large());
    }
    // Under the default caps, a 2 GiB global header is refused too.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::XGlobalHeader);
    h.set_size(2 << 30);
    h.set_cksum();
    let err = validate_tar(&h.as_bytes()[..], Limits::default());
    assert!(err.is_err_and(|e| e.is_too_large()));
}

fn validate_tar(raw: &[u8], limits: Limits) -> Result<(), ArchiveError> {
    walk(tar::Archive::new(raw), None, limits, Mode::Source).map(|_| ())
}

#[test]
fn long_names_and_pax_paths_still_unpack() {
    let long = format!("{}/main.rs", "d".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    // A name over 100 bytes: the builder writes a GNU long name entry.
    b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
    // A PAX path overrides the header's.
    let mut pax = Vec::new();
    let record = "path=pax/named.txt\n";
    pax.extend_from_slice(format!("{} {record}", record.len() + 3).as_bytes());
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(T::XHeader);
    x.set_size(pax.len() as u64);
    x.set_path("PaxHeader").unwrap();
    x.set_cksum();
    b.append(&x, &pax[..]).unwrap();
    let mut f = tar::Header::new_ustar();
    f.set_size(3);
    f.set_mode(0o644);
    f.set_path("short").unwrap();
    f.set_cksum();
    b.append(&f, &b"pax"[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    unpack_tar(&raw[..], &out, Limits::default()).unwrap();
    assert_eq!(fs::read(out.join(&long)).unwrap(), b"hi");
    assert_eq!(fs::read(out.join("pax/named.txt")).unwrap(), b"pax");
    assert!(!out.join("short").exists());
}

#[test]
fn link_chains_that_leave_the_tree_are_refused() {
    // Each link alone looks inside; followed through `a`, `x` leaves.
    let data = targz(&[
        ("a", T::Symlink, b"", Some(".")),
        ("x", T::Symlink, b"", Some("a/a/a/../../../etc/hostname")),
    ]);
    let (dir, r) = unpack(&data);
    assert!(
        matches!(&r, Err(ArchiveError::LinkOutside { path, .. }) if path == "x"),
        "{r:?}"
    );
    assert!(validate_tar_gz(&data[..], Limits::default()).is_err());
    drop(dir);
    // Through a directory link further down, and a loop.
    for entries in [
        vec![
            ("d/e/f", T::Directory, &b""[..], None),
            ("d/up", T::Symlink, &b""[..], Some("e/f/../../..")),
            ("y", T::Symlink, &b""[..], Some("d/up/../z")),
        ],
        vec![
            ("p", T::Symlink, &b""[..], Some("q")),
            ("q", T::Symlink, &b""[..], Some("p")),
        ],
    ] {
        let data = targz(&entries);
        assert!(
            matches!(
                validate_tar_gz(&data[..], Limits::default()),
                Err(ArchiveError::LinkOutside { .. })
            ),
            "{entries:?}"
        );
    }
    // A workspace's usual links stay fine.
    let data = targz(&[
        ("LICENSE", T::Regular, b"MIT", None),
        ("crates/a/LICENSE", T::Symlink, b"", Some("../../LICENSE")),
        ("link-to-dir", T::Symlink, b"", Some("crates/a")),
        ("via", T::Symlink, b"", Some("link-to-dir/LICENSE")),
    ]);
    let (dir, r) = unpack(&data);
    r.unwrap();
    assert_eq!(fs::read(dir.path().join("out/via")).unwrap(), b"MIT");
}

#[test]
fn garbage_is_corrupt_not_a_panic() {
    let r = validate_tar_gz(&b"not a tarball at all"[..], Limits::default());
    assert!(matches!(r, Err(ArchiveError::Corrupt(_))));
}

#[test]
fn a_passed_deadline_stops_unpacking() {
    let data = targz(&[("a", T::Regular, b"x", None)]);
    let limits = Limits {
        deadline: Some(std::time::Instant::now()),
        ..Limits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = unpack_tar_gz(&data[..], &dir.path().join("o"), limits).unwrap_err();
    assert!(matches!(err, ArchiveError::TimedOut), "{err}");
    assert!(err.is_too_large());
    assert!(!dir.path().join("o/a").exists());
}

#[test]
fn usage_counts_bytes_and_entries() {
    let raw = {
        let mut b = tar::Builder::new(Vec::new());
        for name in ["a", "b"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &b"abc"[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let used = unpack_layer(&raw[..], &dir.path().join("o"), Limits::default()).unwrap();
    assert_eq!(
        used,
        Usage {
            bytes: 6,
            entries: 2
        }
    );
    let left = Limits::default().less(used);
    assert_eq!(
        left.max_unpacked_bytes,
        Limits::default().max_unpacked_bytes - 6
    );
}
