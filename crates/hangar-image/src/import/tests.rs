use super::*;
use crate::{BinaryImage, RootFs, RunConfig, StoreLimits};
use std::os::unix::fs::symlink;

/// Exports an image of `store` as an OCI layout tar, the way other tools write one.
fn export_oci(store: &ImageStore, digest: &str, out: &Path) {
    export_oci_without(store, digest, out, &[]);
}

/// [`export_oci`], leaving out the blobs named in `skip`.
fn export_oci_without(store: &ImageStore, digest: &str, out: &Path, skip: &[&str]) {
    let manifest = store.manifest(digest).unwrap();
    let mut tar = tar::Builder::new(fs::File::create(out).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": media::MANIFEST, "digest": digest, "size": 1,
         "platform": {"os": "linux", "architecture": crate::build::oci_arch()}}]});
    add("index.json", index.to_string().as_bytes());
    for d in std::iter::once(digest.to_owned())
        .chain(std::iter::once(manifest.config.digest.clone()))
        .chain(manifest.layers.iter().map(|l| l.digest.clone()))
    {
        if skip.contains(&d.as_str()) {
            continue;
        }
        let hex = d.trim_start_matches("sha256:");
        add(
            &format!("blobs/sha256/{hex}"),
            &store.read_blob(&d).unwrap(),
        );
    }
    tar.finish().unwrap();
}

#[test]
fn oci_layouts_and_docker_save_archives_import() {
    let dir = tempfile::tempdir().unwrap();
    let source = ImageStore::open(&dir.path().join("a")).unwrap();
    let digest = source
        .build_from_binary(&BinaryImage {
            dir: Path::new("/usr/bin"),
            path: Path::new("true"),
            name: "true",
            env: vec![],
        })
        .unwrap();
    let target = ImageStore::open(&dir.path().join("b")).unwrap();

    // OCI layout.
    let oci = dir.path().join("oci.tar");
    export_oci(&source, &digest, &oci);
    let imported = target
        .import_archive(&oci, &dir.path().join("staging1"))
        .unwrap();
    assert_eq!(imported, digest, "same manifest, same digest");
    assert!(target.rootfs(&imported).unwrap().join("app/true").is_file());

    // docker save: manifest.json, a config file and uncompressed layer tars.
    let manifest = source.manifest(&digest).unwrap();
    let docker = dir.path().join("docker.tar");
    let mut tar = tar::Builder::new(fs::File::create(&docker).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    };
    add(
        "cfg.json",
        &source.read_blob(&manifest.config.digest).unwrap(),
    );
    let mut layers = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        let gz = source.read_blob(&l.digest).unwrap();
        let mut raw = Vec::new();
        io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        add(&format!("l{i}/layer.tar"), &raw);
        layers.push(format!("l{i}/layer.tar"));
    }
    let m = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": layers}]);
    add("manifest.json", m.to_string().as_bytes());
    tar.finish().unwrap();
    let imported = target
        .import_archive(&docker, &dir.path().join("staging2"))
        .unwrap();
    assert!(target.rootfs(&imported).unwrap().join("app/true").is_file());
    assert_eq!(target.config(&imported).unwrap().argv(), ["/app/true"]);

    // Neither format: a clear error.
    let junk = dir.path().join("junk.tar");
    let mut tar = tar::Builder::new(fs::File::create(&junk).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    tar.append_data(&mut h, "hello.txt", &b"x"[..]).unwrap();
    tar.finish().unwrap();
    let err = target
        .import_archive(&junk, &dir.path().join("staging3"))
        .unwrap_err();
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );
}

/// Every blob of the store, sorted: what an import may not change when it fails.
fn blobs(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    fs::read_dir(store.root.join("tmp")).unwrap().count() == 0
}

/// An uncompressed layer tar holding `files` (name, size in bytes).
fn layer_tar(files: &[(&str, usize)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, size) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(*size as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &vec![7u8; *size][..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// An image of `store` made of these layers.
fn image_of(store: &ImageStore, layers: &[Vec<u8>]) -> String {
    let descs: Vec<Descriptor> = layers
        .iter()
        .map(|l| store.put_blob(media::LAYER_TAR, l).unwrap())
        .collect();
    let config = ImageConfig {
        architecture: crate::build::oci_arch().to_owned(),
        os: "linux".into(),
        config: RunConfig {
            cmd: Some(vec!["/a".into()]),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: descs.iter().map(|d| d.digest.clone()).collect(),
        },
    };
    store.put_image(&config, descs).unwrap()
}

fn small_image(store: &ImageStore) -> String {
    image_of(store, &[layer_tar(&[("a", 10)]), layer_tar(&[("b", 20)])])
}

#[test]
fn an_import_naming_a_blob_it_does_not_include_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Org A's private image, already in the shared store.
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let digest = small_image(&store);
    let manifest = store.manifest(&digest).unwrap();
    // Org B knows the digests (from a leak, or a guess of a public base)
    // and sends a layout with the manifest but without the layer.
    let secret_layer = manifest.layers[1].digest.clone();
    let oci = dir.path().join("claim.tar");
    export_oci_without(&store, &digest, &oci, &[&secret_layer]);
    let before = blobs(&store);
    let staging = dir.path().join("staging");
    let err = store.import_archive(&oci, &staging).unwrap_err();
    assert!(err.to_string().contains("not in the archive"), "{err}");
    assert_eq!(blobs(&store), before, "the store is unchanged");
    assert!(!staging.exists(), "staging removed");
    assert!(tmp_is_empty(&store));
    // With every blob included, the same import succeeds: the bytes were
    // proven, and the blobs already there are used as they are (dedupe).
    let full = dir.path().join("full.tar");
    export_oci(&store, &digest, &full);
    assert_eq!(store.import_archive(&full, &staging).unwrap(), digest);
    assert_eq!(blobs(&store), before);
    assert!(!staging.exists());
}

#[test]
fn a_layout_blob_holding_another_blobs_bytes_leaves_that_blob_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    // Org A's config, reproducible by anyone.
    let a = small_image(&store);
    let a_config = store.manifest(&a).unwrap().config;
    let a_bytes = store.read_blob(&a_config.digest).unwrap();
    // Org B: a layout whose config descriptor claims a digest of its own
    // choosing, the file under it holding A's config bytes.
    let claimed = format!("sha256:{}", "ab".repeat(32));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::MANIFEST,
        "config": {"mediaType": media::CONFIG, "digest": claimed, "size": a_bytes.len()},
        "layers": [],
    })
    .to_string();
    let manifest_digest = hangar_core::id::sha256_digest(manifest.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": media::MANIFEST, "digest": manifest_digest, "size": manifest.len()}]})
    .to_string();
    let tar_path = dir.path().join("b.tar");
    let mut tar = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    for (path, data) in [
        ("index.json".to_owned(), index.as_bytes()),
        (
            format!(
                "blobs/sha256/{}",
                manifest_digest.trim_start_matches("sha256:")
            ),
            manifest.as_bytes(),
        ),
        (
            format!("blobs/sha256/{}", claimed.trim_start_matches("sha256:")),
            &a_bytes[..],
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    }
    tar.finish().unwrap();
    drop(tar);
    let before = blobs(&store);
    let err = store
        .import_archive(&tar_path, &dir.path().join("staging"))
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(store.read_blob(&a_config.digest).unwrap(), a_bytes);
    assert_eq!(blobs(&store), before);
    assert!(store.config(&a).is_ok(), "A's image still has its config");
    assert!(tmp_is_empty(&store));
}

#[test]
fn links_out_of_an_unpacked_layout_are_refused_by_the_opener() {
    let dir = tempfile::tempdir().unwrap();
    let source = ImageStore::open(&dir.path().join("source")).unwrap();
    let digest = small_image(&source);
    // A complete, valid layout outside the tree.
    let outside = dir.path().join("outside");
    let oci = dir.path().join("oci.tar");
    export_oci(&source, &digest, &oci);
    archive::unpack_tar(fs::File::open(&oci).unwrap(), &outside, Default::default()).unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let deadline = (Instant::now() + std::time::Duration::from_secs(60), 60);
    let left = store.limits.archive_limits(Some(deadline.0));

    // index.json -> the outside one (an absolute link).
    let tree = dir.path().join("t1");
    fs::create_dir_all(&tree).unwrap();
    symlink(outside.join("index.json"), tree.join("index.json")).unwrap();
    let err = store.import_tree(&tree, left, deadline).unwrap_err();
    assert!(err.to_string().contains("leads outside"), "{err}");

    // blobs -> the outside blobs, through a chain of relative links.
    let tree = dir.path().join("t2");
    fs::create_dir_all(&tree).unwrap();
    fs::copy(outside.join("index.json"), tree.join("index.json")).unwrap();
    symlink(".", tree.join("here")).unwrap();
    symlink("here/here/../outside/blobs", tree.join("blobs")).unwrap();
    let err = store.import_tree(&tree, left, deadline).unwrap_err();
    assert!(err.to_string().contains("leads outside"), "{err}");

    assert!(
        blobs(&store).is_empty(),
        "nothing read from outside was stored"
    );
    assert!(tmp_is_empty(&store));

    // The outer archive itself may not carry such a link either.
    let tar_path = dir.path().join("link.tar");
    let mut tar = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(&mut h, "index.json", "/etc/hostname")
        .unwrap();
    tar.finish().unwrap();
    drop(tar);
    let staging = dir.path().join("staging");
    assert!(store.import_archive(&tar_path, &staging).is_err());
    assert!(!staging.exists());
}

#[test]
fn one_cap_covers_all_layers_and_the_import_staging() {
    let dir = tempfile::tempdir().unwrap();
    let kib = 1024;
    let capped = |name: &str, cap: u64| {
        ImageStore::open(&dir.path().join(name))
            .unwrap()
            .with_limits(StoreLimits {
                max_unpacked_bytes: cap,
                ..StoreLimits::default()
            })
    };
    // Two layers of 300 KiB: each under a 500 KiB cap, together over it.
    let store = capped("a", 500 * kib);
    let layers = [
        layer_tar(&[("a", 300 * 1024)]),
        layer_tar(&[("b", 300 * 1024)]),
    ];
    let digest = image_of(&store, &layers);
    let err = store.rootfs(&digest).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { limit } if limit == 500 * kib),
        "{err}"
    );
    assert!(err.is_too_large());
    assert!(
        !store
            .rootfs_root()
            .join(digest_hex(&digest).unwrap())
            .exists()
    );
    assert!(tmp_is_empty(&store));
    let roomy = capped("b", 1024 * kib);
    let digest = image_of(&roomy, &layers);
    assert!(roomy.rootfs(&digest).unwrap().join("b").is_file());

    // Import: the archive (600 KiB and more unpacked) and the root
    // filesystem (600 KiB) count against one 1 MiB cap, though each
    // fits alone.
    let oci = dir.path().join("oci.tar");
    export_oci(&roomy, &digest, &oci);
    let target = capped("c", 1024 * kib);
    let staging = dir.path().join("staging");
    let err = target.import_archive(&oci, &staging).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    // The archive alone fitted: its layers were copied before the root
    // filesystem passed what it had left.
    let layer = &roomy.manifest(&digest).unwrap().layers[1];
    assert!(target.has_blob(&layer.digest));
    assert!(!staging.exists());
    assert!(tmp_is_empty(&target));
    assert!(fs::read_dir(target.rootfs_root()).unwrap().next().is_none());
    let target = capped("d", 2048 * kib);
    assert_eq!(target.import_archive(&oci, &staging).unwrap(), digest);
}

#[test]
fn an_import_past_its_time_budget_stops_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let source = ImageStore::open(&dir.path().join("a")).unwrap();
    let digest = small_image(&source);
    let oci = dir.path().join("oci.tar");
    export_oci(&source, &digest, &oci);
    let store = ImageStore::open(&dir.path().join("b"))
        .unwrap()
        .with_limits(StoreLimits {
            import_budget: std::time::Duration::ZERO,
            ..StoreLimits::default()
        });
    let staging = dir.path().join("staging");
    let err = store.import_archive(&oci, &staging).unwrap_err();
    assert!(matches!(err, ImageError::TimedOut { secs: 0 }), "{err}");
    assert!(err.is_too_large());
    assert!(!staging.exists());
    assert!(tmp_is_empty(&store));
}

#[test]
fn an_owner_runs_at_most_its_imports_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let limit = store.limits().imports_per_owner;
    let held: Vec<ImportSlot> = (0..limit)
        .map(|_| store.import_slot("org_a").unwrap())
        .collect();
    // Clones share the count: the API's handlers each hold a clone.
    let err = store.clone().import_slot("org_a").unwrap_err();
    assert!(
        matches!(err, ImageError::Busy { running, limit: l } if running == limit && l == limit),
        "{err}"
    );
    assert!(err.to_string().contains("at most"), "{err}");
    // Another org is not held back.
    let other = store.import_slot("org_b").unwrap();
    drop(held);
    drop(other);
    assert!(store.import_slot("org_a").is_ok());
    assert_eq!(store.imports.owners(), 0);
}

#[test]
fn docker_save_layers_linked_inside_the_archive_still_import() {
    // Older `docker save` writes a layer shared by two images once and
    // links the second name to it: a link inside the tree, followed.
    let dir = tempfile::tempdir().unwrap();
    let source = ImageStore::open(&dir.path().join("a")).unwrap();
    let digest = small_image(&source);
    let manifest = source.manifest(&digest).unwrap();
    let tar_path = dir.path().join("docker.tar");
    let mut tar = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    };
    add(
        "cfg.json",
        &source.read_blob(&manifest.config.digest).unwrap(),
    );
    add(
        "l0/layer.tar",
        &source.read_blob(&manifest.layers[0].digest).unwrap(),
    );
    let m = serde_json::json!([{"Config": "cfg.json", "Layers": ["l0/layer.tar", "l1/layer.tar"]}]);
    add("manifest.json", m.to_string().as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(&mut h, "l1/layer.tar", "../l0/layer.tar")
        .unwrap();
    tar.finish().unwrap();
    drop(tar);
    let store = ImageStore::open(&dir.path().join("b")).unwrap();
    match store.import_archive(&tar_path, &dir.path().join("staging")) {
        Ok(imported) => {
            let layers = store.manifest(&imported).unwrap().layers;
            assert_eq!(layers[0].digest, layers[1].digest);
            assert!(store.rootfs(&imported).unwrap().join("a").is_file());
        }
        // Without openat2 the fallback refuses every link, by design.
        Err(e) => assert!(e.to_string().contains("leads outside"), "{e}"),
    }
}
