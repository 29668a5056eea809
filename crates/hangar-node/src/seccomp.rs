//! The default seccomp policy of runc machines, as the OCI runtime spec's
//! `linux.seccomp` object.
//!
//! The policy lives as data in `seccomp-default.json` next to this file and
//! is parsed once. It denies every system call with `EPERM` except an
//! allow-list equivalent to Docker's (moby's) default profile for a container
//! that holds no capabilities, which is what a machine is (see
//! `driver::oci_config`):
//!
//! - moby's unconditional allow-list;
//! - `socket` for every family but `AF_VSOCK` (40), as moby does;
//! - `personality` only for the values moby allows (0, `PER_LINUX32`,
//!   `UNAME26`, both, and the query `0xffffffff`);
//! - `clone` only without namespace flags: `flags & 0x7E020000 == 0`
//!   (`CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET`);
//! - `clone3` fails with `ENOSYS` (its flags live in memory, where seccomp
//!   cannot look), so glibc and musl fall back to `clone`;
//! - the x86 (`arch_prctl`, `modify_ldt`) and 32-bit arm extras moby allows;
//!   runc ignores names that do not exist on the host's architecture.
//!
//! What moby allows only with a capability is left out: `unshare`, `setns`,
//! `mount` and the new mount API, `bpf`, `perf_event_open`, `ptrace`,
//! `kcmp`, `pidfd_getfd`, `chroot`, `pivot_root`, `reboot`, `*_module`,
//! `kexec_*`, `swapon`/`swapoff`, `acct`, `settimeofday`, `syslog`,
//! `mbind` and friends, `open_by_handle_at`, ... The keyring calls
//! (`keyctl`, `add_key`, `request_key`) and `userfaultfd` are not in moby's
//! list either.
//!
//! Where moby's versions differ, the stricter choice:
//! - `io_uring_*` are denied, as in moby since Docker 25 (older versions
//!   allowed them): operations submitted through a ring are not seen by
//!   seccomp, and io_uring is a common kernel exploit route.
//! - `name_to_handle_at` is denied (some moby versions allow it to all).
//!
//! Stricter than moby: `ptrace`, `process_vm_readv` and `process_vm_writev`
//! are denied (moby allows them on kernels >= 4.8): tenants' apps have no
//! debugger use, and machines without a user namespace share uid 65534.
//!
//! runc skips names the host's libseccomp does not know. A call the filter
//! does not cover fails with `ENOSYS` when its number is newer than any the
//! filter knows (runc prepends a stub for that), so libcs fall back, and
//! with `EPERM` otherwise. On Debian 12 (runc 1.1.5, libseccomp
//! 2.5.4-1+deb12u1, kernel 6.18) `cachestat`, `fchmodat2` and `futex_wake`
//! were checked to reach the kernel, and syscall 470 to get `ENOSYS`.

use std::sync::OnceLock;

use serde_json::Value;

/// The policy's text; see `seccomp-default.json`.
pub const DEFAULT_PROFILE_JSON: &str = include_str!("seccomp-default.json");

/// The default policy: the value of the spec's `linux.seccomp`.
pub fn default_profile() -> Value {
    static PROFILE: OnceLock<Value> = OnceLock::new();
    PROFILE
        .get_or_init(|| {
            serde_json::from_str(DEFAULT_PROFILE_JSON)
                .expect("seccomp-default.json is valid JSON (checked by this module's tests)")
        })
        .clone()
}

/// [`default_profile`] with only the native architecture of a host of
/// `arch` (as in `std::env::consts::ARCH`). It matters for wake latency:
/// runc compiles the filter for every listed architecture at each start.
/// Measured with runc 1.1.5 and libseccomp 2.5.4 on a 2-core x86_64 host
/// (medians of 10 `runc run --detach`): 60 ms with all five, 45 ms with
/// the x86 family, 37 ms with x86_64 alone, 32 ms without seccomp; and
/// again (means of 10 `runc create`, 2026-12-01): 46 ms with all five,
/// 17 ms with x86_64 alone, 15 ms without. Docker keeps x86 and x32 on
/// x86_64 hosts for 32-bit programs; Hangar does not: a system call made
/// through an architecture the filter does not list (`int 0x80`, the x32
/// ABI) kills the process (SIGSYS), which also closes the kernel's compat
/// system call paths, a classic container escape surface. Every binary
/// Hangar builds is native; a 32-bit program in an imported image fails
/// at its first system call.
/// An unknown `arch` gets the whole profile (runc adds the native one).
pub fn profile_for_arch(arch: &str) -> Value {
    let keep: &[&str] = match arch {
        "x86_64" => &["SCMP_ARCH_X86_64"],
        "x86" => &["SCMP_ARCH_X86"],
        "aarch64" => &["SCMP_ARCH_AARCH64"],
        "arm" => &["SCMP_ARCH_ARM"],
        _ => return default_profile(),
    };
    let mut profile = default_profile();
    profile["architectures"] = keep.iter().map(|a| Value::from(*a)).collect();
    profile
}

/// [`profile_for_arch`] for this host: what `oci_config` should put in
/// `linux.seccomp`.
pub fn host_profile() -> Value {
    static PROFILE: OnceLock<Value> = OnceLock::new();
    PROFILE
        .get_or_init(|| profile_for_arch(std::env::consts::ARCH))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules that name `syscall`.
    fn rules_for(profile: &Value, syscall: &str) -> Vec<Value> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n.as_str() == Some(syscall))
            })
            .cloned()
            .collect()
    }

    fn is_allow(rule: &Value) -> bool {
        rule["action"] == "SCMP_ACT_ALLOW"
    }

    fn has_args(rule: &Value) -> bool {
        rule.get("args")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }

    /// Allowed whatever its arguments.
    fn allowed(profile: &Value, syscall: &str) -> bool {
        rules_for(profile, syscall)
            .iter()
            .any(|r| is_allow(r) && !has_args(r))
    }

    /// Allowed for some arguments (or all).
    fn allowed_somehow(profile: &Value, syscall: &str) -> bool {
        rules_for(profile, syscall).iter().any(is_allow)
    }

    #[test]
    fn parses_and_denies_by_default_with_eperm() {
        let p: Value = serde_json::from_str(DEFAULT_PROFILE_JSON).unwrap();
        assert_eq!(p, default_profile());
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        let arches: Vec<&str> = p["architectures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for a in [
            "SCMP_ARCH_X86_64",
            "SCMP_ARCH_X86",
            "SCMP_ARCH_X32",
            "SCMP_ARCH_AARCH64",
            "SCMP_ARCH_ARM",
        ] {
            assert!(arches.contains(&a), "{a} missing");
        }
    }

    #[test]
    fn rules_are_well_formed() {
        let p = default_profile();
        let rules = p["syscalls"].as_array().unwrap();
        assert!(!rules.is_empty());
        let mut unconditional = std::collections::BTreeSet::new();
        for r in rules {
            let obj = r.as_object().unwrap();
            for key in obj.keys() {
                assert!(
                    ["names", "action", "errnoRet", "args"].contains(&key.as_str()),
                    "unexpected key {key} in {r}"
                );
            }
            let action = r["action"].as_str().unwrap();
            assert!(
                ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"].contains(&action),
                "{action}"
            );
            if action == "SCMP_ACT_ERRNO" {
                assert!(r["errnoRet"].as_u64().is_some(), "{r}");
            }
            let names = r["names"].as_array().unwrap();
            assert!(!names.is_empty());
            for n in names {
                let n = n.as_str().unwrap();
                assert!(
                    !n.is_empty()
                        && n.len() <= 32
                        && n.bytes()
                            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
                        && !n.as_bytes()[0].is_ascii_digit(),
                    "not a plausible syscall name: {n:?}"
                );
                if is_allow(r) && !has_args(r) {
                    assert!(unconditional.insert(n.to_owned()), "{n} listed twice");
                }
            }
            if let Some(args) = r.get("args") {
                for a in args.as_array().unwrap() {
                    assert!(a["index"].as_u64().unwrap() < 6, "{a}");
                    assert!(a["value"].as_u64().is_some(), "{a}");
                    let op = a["op"].as_str().unwrap();
                    assert!(
                        [
                            "SCMP_CMP_NE",
                            "SCMP_CMP_EQ",
                            "SCMP_CMP_MASKED_EQ",
                            "SCMP_CMP_LT",
                            "SCMP_CMP_LE",
                            "SCMP_CMP_GT",
                            "SCMP_CMP_GE"
                        ]
                        .contains(&op),
                        "{op}"
                    );
                }
            }
        }
        // Sanity: about the size of moby's list.
        assert!(
            (300..450).contains(&unconditional.len()),
            "{}",
            unconditional.len()
        );
    }

    #[test]
    fn ordinary_system_calls_are_allowed() {
        let p = default_profile();
        for s in [
            "read",
            "write",
            "openat",
            "close",
            "mmap",
            "mprotect",
            "brk",
            "epoll_wait",
            "epoll_pwait",
            "epoll_ctl",
            "futex",
            "execve",
            "wait4",
            "bind",
            "listen",
            "accept4",
            "connect",
            "sendto",
            "recvfrom",
            "getrandom",
            "rt_sigaction",
            "exit_group",
            "sched_getaffinity",
            "statx",
        ] {
            assert!(allowed(&p, s), "{s} should be allowed");
        }
        // Allowed with an argument filter.
        for s in ["socket", "clone", "personality"] {
            assert!(allowed_somehow(&p, s), "{s} should be allowed");
            assert!(!allowed(&p, s), "{s} should be filtered on its arguments");
        }
    }

    #[test]
    fn dangerous_system_calls_are_denied() {
        let p = default_profile();
        for s in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "userfaultfd",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "pivot_root",
            "chroot",
            "open_by_handle_at",
            "name_to_handle_at",
            "acct",
            "settimeofday",
            "clock_settime",
            "syslog",
            "sethostname",
            "setdomainname",
            "quotactl",
            "lookup_dcookie",
            "iopl",
            "ioperm",
            "vhangup",
            "mbind",
            "set_mempolicy",
            "move_pages",
            "clone3",
        ] {
            assert!(!allowed_somehow(&p, s), "{s} must not be allowed");
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        let p = default_profile();
        let rules = rules_for(&p, "clone");
        assert_eq!(rules.len(), 1, "{rules:?}");
        let args = rules[0]["args"].as_array().unwrap();
        assert_eq!(args.len(), 1);
        assert_eq!(args[0]["index"], 0);
        assert_eq!(args[0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(args[0]["value"], 2114060288u64);
        assert_eq!(
            args[0].get("valueTwo").and_then(Value::as_u64).unwrap_or(0),
            0
        );
        let mask = 2114060288u64;
        for flag in [
            0x0002_0000u64, // CLONE_NEWNS
            0x0200_0000,    // CLONE_NEWCGROUP
            0x0400_0000,    // CLONE_NEWUTS
            0x0800_0000,    // CLONE_NEWIPC
            0x1000_0000,    // CLONE_NEWUSER
            0x2000_0000,    // CLONE_NEWPID
            0x4000_0000,    // CLONE_NEWNET
        ] {
            assert_ne!(mask & flag, 0, "{flag:#x} not in the mask");
        }
        // Threads and forks carry none of them.
        let pthread_flags = 0x003d_0f00u64; // glibc's pthread_create
        assert_eq!(mask & pthread_flags, 0);
    }

    #[test]
    fn clone3_fails_with_enosys_so_libc_falls_back() {
        let p = default_profile();
        let rules = rules_for(&p, "clone3");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rules[0]["errnoRet"], 38);
    }

    #[test]
    fn socket_excludes_vsock_and_personality_takes_known_values() {
        let p = default_profile();
        let socket = rules_for(&p, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0]["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket[0]["args"][0]["value"], 40);
        let mut values: Vec<u64> = rules_for(&p, "personality")
            .iter()
            .map(|r| {
                assert_eq!(r["args"][0]["op"], "SCMP_CMP_EQ");
                r["args"][0]["value"].as_u64().unwrap()
            })
            .collect();
        values.sort();
        assert_eq!(values, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn host_profile_keeps_only_the_native_architecture() {
        let arches = |p: Value| -> Vec<String> {
            p["architectures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(arches(profile_for_arch("x86_64")), ["SCMP_ARCH_X86_64"]);
        assert_eq!(arches(profile_for_arch("aarch64")), ["SCMP_ARCH_AARCH64"]);
        assert_eq!(
            arches(profile_for_arch("riscv64")),
            arches(default_profile())
        );
        let host = host_profile();
        assert_eq!(host, profile_for_arch(std::env::consts::ARCH));
        assert_eq!(host["syscalls"], default_profile()["syscalls"]);
    }
}
