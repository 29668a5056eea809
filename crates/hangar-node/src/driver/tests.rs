//! Unit tests of the drivers and the OCI spec.

use serde_json::json;

use super::*;

#[test]
fn auto_never_falls_back_to_no_isolation() {
    let state = Path::new("/tmp/x");
    let runc = Some(PathBuf::from("/usr/sbin/runc"));
    for (runc, root) in [(None, true), (runc.clone(), false), (None, false)] {
        let err = Driver::decide(DriverChoice::Auto, runc, root, state).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("refusing") && msg.contains("--driver process"),
            "{msg}"
        );
    }
    let (d, warning) = Driver::decide(DriverChoice::Auto, runc.clone(), true, state).unwrap();
    assert_eq!((d.name(), warning), ("runc", None));
    let (d, warning) = Driver::decide(DriverChoice::Process, None, false, state).unwrap();
    assert_eq!(d.name(), "process");
    assert!(warning.unwrap().contains("NO isolation"));
    assert!(Driver::decide(DriverChoice::Runc, None, true, state).is_err());
}

fn spec(uid_base: Option<u32>) -> MachineSpec {
    MachineSpec {
        id: "mch_1".into(),
        hostname: "app".into(),
        rootfs: "/images/rootfs/x".into(),
        dir: "/data/machines/mch_1".into(),
        argv: vec!["/app/x".into()],
        env: vec!["PORT=8080".into()],
        cwd: "/".into(),
        user: (65534, 65534),
        log: "/data/logs/app/mch_1.log".into(),
        limits: Limits::default(),
        gpus: Vec::new(),
        resources: None,
        net: None,
        uid_base,
    }
}

#[test]
fn a_machine_spec_isolates_by_default() {
    let c = oci_config(&spec(Some(1_000_000))).unwrap();
    let ns: Vec<&str> = c["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "mount", "ipc", "uts", "network", "user"]);
    // New namespaces, made by runc: the network one owned by the
    // user one (nothing is joined by path).
    assert_eq!(c["linux"]["namespaces"][4], json!({"type": "network"}));
    assert_eq!(
        c["linux"]["uidMappings"],
        json!([{"containerID": 0, "hostID": 1_000_000, "size": 65_536}])
    );
    assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(c["process"]["oomScoreAdj"], 500);
    assert_eq!(c["process"]["capabilities"]["bounding"], json!([]));
    assert_eq!(c["root"]["readonly"], true);
    assert_eq!(c["linux"]["namespaces"][5], json!({"type": "user"}));
    // Without a user namespace a runc machine still gets a new network
    // namespace: never the host's.
    let c = oci_config(&spec(None)).unwrap();
    assert_eq!(c["linux"]["namespaces"][4], json!({"type": "network"}));
    assert!(c["linux"].get("uidMappings").is_none());
}
