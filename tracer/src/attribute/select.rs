//! Which stuck sockets to show, by who owns them: `--pid`, `--container` and `--cgroup`.

use crate::model::{Ownership, Socket};

/// The owner criteria of `watch` and `report`; all those given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// A process holding the socket, or the last to act or send/receive on it.
    pub pid: Option<u32>,
    /// The start of an owner's container id (or service name).
    pub container: Option<String>,
    /// The start of an owner's cgroup path.
    pub cgroup: Option<String>,
}

impl Selection {
    /// Whether a stuck socket `s` owned as `o` is shown. The container and cgroup criteria
    /// hold when any of its owners matches.
    pub fn admits(&self, o: &Ownership, s: &Socket) -> bool {
        self.pid.is_none_or(|pid| o.involves(pid, s))
            && self.container.as_deref().is_none_or(|want| {
                o.owners.iter().any(|w| {
                    w.process
                        .container()
                        .is_some_and(|c| c.id.starts_with(want))
                })
            })
            && self.cgroup.as_deref().is_none_or(|want| {
                o.owners.iter().any(|w| {
                    w.process
                        .cgroup
                        .as_deref()
                        .is_some_and(|c| c.starts_with(want))
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tracer_common::TcpState;

    use super::*;
    use crate::{
        attribute::tests::java,
        model::{Endpoints, Family, HeldBy, Origin, Owner, PidHint, ProcessInfo},
    };

    const ID: &str = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

    fn socket(hint: Option<u32>) -> Socket {
        Socket {
            id: 0,
            ends: Endpoints {
                netns: 0,
                family: Family::Ipv4,
                saddr: Ipv4Addr::LOCALHOST.into(),
                sport: 61616,
                daddr: Ipv4Addr::LOCALHOST.into(),
                dport: 40000,
            },
            state: TcpState::CloseWait.into(),
            since_ns: 0,
            since_is_lower_bound: false,
            origin: Origin::Accepted,
            hint: hint.map(|pid| PidHint {
                pid,
                comm: "java".into(),
            }),
            flagged: true,
            born_ns: 0,
        }
    }

    /// Held by `(pid, cgroup)` each.
    fn held_by(owners: &[(u32, Option<String>)]) -> Ownership {
        Ownership {
            held_by: HeldBy::Fd,
            owners: owners
                .iter()
                .map(|(pid, cgroup)| Owner {
                    process: ProcessInfo {
                        cgroup: cgroup.clone(),
                        ..java(*pid)
                    },
                    fds: vec![5],
                    fd_count: 10,
                })
                .collect(),
            last_io: None,
        }
    }

    fn select(pid: Option<u32>, container: Option<&str>, cgroup: Option<&str>) -> Selection {
        Selection {
            pid,
            container: container.map(str::to_owned),
            cgroup: cgroup.map(str::to_owned),
        }
    }

    #[test]
    fn nothing_given_admits_everything() {
        let unowned = held_by(&[]);
        assert!(Selection::default().admits(&unowned, &socket(None)));
    }

    #[test]
    fn pid_as_before() {
        let o = held_by(&[(42, None)]);
        assert!(select(Some(42), None, None).admits(&o, &socket(None)));
        assert!(!select(Some(7), None, None).admits(&o, &socket(None)));
        // The last caller counts too.
        assert!(select(Some(7), None, None).admits(&o, &socket(Some(7))));
    }

    #[test]
    fn container_and_cgroup_prefixes_of_any_owner() {
        let docker = Some(format!("/system.slice/docker-{ID}.scope"));
        let o = held_by(&[(1, Some("/".into())), (2, docker)]);
        let s = socket(None);
        assert!(select(None, Some(&ID[..12]), None).admits(&o, &s));
        assert!(select(None, Some(ID), None).admits(&o, &s));
        assert!(!select(None, Some("deadbeef"), None).admits(&o, &s));
        assert!(select(None, None, Some("/system.slice/docker-")).admits(&o, &s));
        assert!(!select(None, None, Some("/kubepods")).admits(&o, &s));
        // A service's name is its id.
        let service = held_by(&[(3, Some("/system.slice/nginx.service".into()))]);
        assert!(select(None, Some("nginx"), None).admits(&service, &s));
        // No owner, or none with a cgroup: nothing to match.
        assert!(!select(None, Some("3"), None).admits(&held_by(&[]), &s));
        assert!(!select(None, None, Some("/")).admits(&held_by(&[(4, None)]), &s));
    }

    #[test]
    fn every_criterion_given_must_hold() {
        let o = held_by(&[(2, Some(format!("/docker/{ID}")))]);
        let s = socket(None);
        assert!(select(Some(2), Some(&ID[..4]), Some("/docker")).admits(&o, &s));
        assert!(!select(Some(3), Some(&ID[..4]), Some("/docker")).admits(&o, &s));
        assert!(!select(Some(2), Some("0"), Some("/docker")).admits(&o, &s));
        assert!(!select(Some(2), Some(&ID[..4]), Some("/system.slice")).admits(&o, &s));
    }
}
