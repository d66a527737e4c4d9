//! The container or service an owner runs in, read from its cgroup path (the one
//! `/proc/PID/cgroup` gives on the host). Runtimes name their cgroups after the container
//! id, so the path alone tells docker, containerd, cri-o and podman containers, Kubernetes
//! pods, and systemd services apart, with nothing to ask the runtimes.
//!
//! The layouts read:
//!
//! | runtime | cgroup of the container |
//! | --- | --- |
//! | docker | `/system.slice/docker-ID.scope` (systemd driver, also under a user's slice when rootless); `/docker/ID` (cgroupfs driver) |
//! | containerd (Kubernetes) | `/kubepods.slice/kubepods-QOS.slice/kubepods-QOS-podUID.slice/cri-containerd-ID.scope` (QOS `burstable` or `besteffort`; guaranteed pods have no QoS slice: `/kubepods.slice/kubepods-podUID.slice/...`); `/kubepods/QOS/podUID/ID` (cgroupfs driver, where a bare id is containerd's, or dockershim's) |
//! | cri-o | `crio-ID.scope` under a pod's slice; `crio-ID` under `/kubepods/.../podUID` (cgroupfs) |
//! | docker under Kubernetes (dockershim) | `docker-ID.scope` under a pod's slice |
//! | podman | `libpod-ID.scope` under `machine.slice`, or `user@UID.service/user.slice` when rootless; `/libpod_parent/libpod-ID` (cgroupfs) |
//! | systemd | the innermost unit is a `.service`: its name is the id |
//!
//! ID is 64 lowercase hex digits. The innermost container in the path wins: processes a
//! container's own init or systemd moves into sub-cgroups (`docker-ID.scope/init.scope`)
//! still belong to it, and so do containers in containers (kind, docker in docker) to the
//! innermost. Podman's and cri-o's monitor `conmon` runs in `libpod-conmon-ID.scope` /
//! `crio-conmon-ID.scope`, beside the container, not in it: it is not the container (its
//! "id" is not hex), and since its unit is a scope it is no service either, so it has
//! none. Sessions (`session-3.scope`), the root cgroup and anything else have none too.

use serde::Serialize;

use crate::model::ProcessInfo;

/// Who runs a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Docker, alone or under Kubernetes (dockershim).
    Docker,
    /// containerd's Kubernetes (CRI) plugin.
    Containerd,
    /// CRI-O, Kubernetes only.
    CriO,
    /// Podman, as root or rootless.
    Podman,
    /// A plain systemd service, not a container.
    Systemd,
}

impl Runtime {
    /// The name used in output: `docker`, `containerd`, `cri-o`, `podman` or `systemd`.
    pub const fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Systemd => "systemd",
        }
    }
}

impl Serialize for Runtime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The container (or systemd service) a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The container id (64 hex digits), or the service's unit name (`nginx.service`).
    pub id: String,
    /// Which runtime made it, or `Systemd` for a service.
    pub runtime: Runtime,
    /// The Kubernetes pod's UID (with dashes), for a pod's container.
    pub pod_uid: Option<String>,
}

impl Container {
    /// Whether this is a runtime's container rather than a systemd service.
    pub fn is_container(&self) -> bool {
        self.runtime != Runtime::Systemd
    }

    /// The id as `docker ps` shows it: the first 12 digits (a unit name whole).
    pub fn short_id(&self) -> &str {
        match self.is_container() {
            true => self.id.get(..12).unwrap_or(&self.id),
            false => &self.id,
        }
    }
}

// Here rather than in the model, which imports from no stage: the parsing is this stage's.
impl ProcessInfo {
    /// The container or service the process runs in, from its cgroup (see
    /// [`from_cgroup`]).
    pub fn container(&self) -> Option<Container> {
        from_cgroup(self.cgroup.as_deref()?)
    }
}

/// The container or systemd service of a process in cgroup `path`, if any (the layouts
/// are in the module's documentation).
pub fn from_cgroup(path: &str) -> Option<Container> {
    let mut container = None;
    // The innermost systemd unit (slices only group units).
    let mut unit = None;
    let mut parent = "";
    // Under the cgroupfs driver's `/kubepods`, where pods are plain `pod<UID>` directories.
    let mut kubepods = false;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if let Some((id, runtime)) = container_in(c, parent, kubepods) {
            container = Some(Container {
                id: id.to_owned(),
                runtime,
                pod_uid: pod_uid(parent, kubepods).map(|u| u.replace('_', "-")),
            });
        }
        if c.ends_with(".service") || c.ends_with(".scope") {
            unit = Some(c);
        }
        kubepods |= c == "kubepods";
        parent = c;
    }
    container.or_else(|| {
        let service = unit.filter(|u| u.len() > ".service".len() && u.ends_with(".service"))?;
        Some(Container {
            id: service.to_owned(),
            runtime: Runtime::Systemd,
            pod_uid: None,
        })
    })
}

/// The container id and runtime that cgroup directory `c` (inside `parent`) names.
fn container_in<'a>(c: &'a str, parent: &str, kubepods: bool) -> Option<(&'a str, Runtime)> {
    if is_id(c) {
        // Only the cgroupfs drivers use the bare id, inside `/docker` or a pod.
        return match parent {
            "docker" => Some((c, Runtime::Docker)),
            _ if pod_uid(parent, kubepods).is_some() => Some((c, Runtime::Containerd)),
            _ => None,
        };
    }
    let name = c.strip_suffix(".scope").unwrap_or(c);
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_id(id).then_some((id, runtime))
    })
}

/// The pod UID of a pod's cgroup directory: `kubepods-pod<UID>.slice` or
/// `kubepods-<qos>-pod<UID>.slice` (systemd driver, with `_` for `-`; kind adds a
/// `kubelet-` prefix), or `pod<UID>` under `/kubepods` (cgroupfs driver).
fn pod_uid(c: &str, kubepods: bool) -> Option<&str> {
    let uid = match c.strip_suffix(".slice") {
        Some(slice) if slice.split('-').any(|w| w == "kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None if kubepods => c.strip_prefix("pod")?,
        None => return None,
    };
    is_uuid(uid).then_some(uid)
}

/// A container id: 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A UUID in its 8-4-4-4-12 form, with `-` or (systemd's escape) `_` between groups.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-' || b == b'_',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const UID: &str = "0d2f6c1e-9a4b-4e8d-b3c7-5f1a2e9d8c6b";

    fn container(runtime: Runtime, pod_uid: Option<&str>) -> Option<Container> {
        Some(Container {
            id: ID.to_owned(),
            runtime,
            pod_uid: pod_uid.map(str::to_owned),
        })
    }

    fn service(name: &str) -> Option<Container> {
        Some(Container {
            id: name.to_owned(),
            runtime: Runtime::Systemd,
            pod_uid: None,
        })
    }

    #[test]
    fn docker() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            // Rootless, under the user's service manager.
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
            // The container's init moved itself into a sub-cgroup.
            format!("/system.slice/docker-{ID}.scope/init.scope"),
            // systemd inside the container runs its own services.
            format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
        ] {
            assert_eq!(
                from_cgroup(&path),
                container(Runtime::Docker, None),
                "{path}"
            );
        }
    }

    #[test]
    fn kubernetes_pods() {
        let sys_uid = UID.replace('-', "_");
        let pod = Some(UID);
        for (path, runtime) in [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{sys_uid}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{sys_uid}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            // Guaranteed pods have no QoS slice.
            (
                format!("/kubepods.slice/kubepods-pod{sys_uid}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{sys_uid}.slice/crio-{ID}.scope"),
                Runtime::CriO,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{sys_uid}.slice/docker-{ID}.scope"),
                Runtime::Docker,
            ),
            // The cgroupfs driver.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Runtime::Containerd),
            (format!("/kubepods/pod{UID}/{ID}"), Runtime::Containerd),
            (format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), Runtime::CriO),
            // kind: a node in a docker container; the pod's container is the innermost.
            (
                format!("/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{sys_uid}.slice/cri-containerd-{ID}.scope", "a".repeat(64)),
                Runtime::Containerd,
            ),
        ] {
            assert_eq!(from_cgroup(&path), container(runtime, pod), "{path}");
        }
        // Not a pod: no UID.
        assert_eq!(
            from_cgroup(&format!(
                "/kubepods.slice/kubepods-podnot-a-uid.slice/cri-containerd-{ID}.scope"
            )),
            container(Runtime::Containerd, None)
        );
    }

    #[test]
    fn podman() {
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            assert_eq!(
                from_cgroup(&path),
                container(Runtime::Podman, None),
                "{path}"
            );
        }
        // conmon watches the container from beside it: neither the container nor a service.
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"
            ),
        ] {
            assert_eq!(from_cgroup(&path), None, "{path}");
        }
    }

    #[test]
    fn systemd_services() {
        assert_eq!(
            from_cgroup("/system.slice/nginx.service"),
            service("nginx.service")
        );
        assert_eq!(
            from_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            service("foo.service")
        );
        // A service that made sub-cgroups of its own (Delegate=yes).
        assert_eq!(
            from_cgroup("/system.slice/buildkitd.service/workers"),
            service("buildkitd.service")
        );
        // Docker's daemon is a service; its containers are not.
        assert_eq!(
            from_cgroup("/system.slice/docker.service"),
            service("docker.service")
        );
    }

    #[test]
    fn no_container_and_no_service() {
        let short = &ID[..40];
        let upper = ID.to_ascii_uppercase();
        for path in [
            "/".to_owned(),
            String::new(),
            "/init.scope".to_owned(),
            "/user.slice/user-1000.slice/session-3.scope".to_owned(),
            "/user.slice/user-1000.slice/user@1000.service/init.scope".to_owned(),
            "/system.slice".to_owned(),
            "/.service".to_owned(),
            // Ids of the wrong length or case, or in places no runtime puts them.
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            format!("/docker/{short}"),
            format!("/{ID}"),
            format!("/lxc/{ID}"),
            format!("/system.slice/rkt-{ID}.scope"),
            format!("/pod{UID}/{ID}"),
            format!("/system.slice/crio-conmon-{ID}.scope"),
        ] {
            assert_eq!(from_cgroup(&path), None, "{path:?}");
        }
    }

    #[test]
    fn short_ids() {
        let c = container(Runtime::Docker, None).unwrap();
        assert_eq!(c.short_id(), &ID[..12]);
        assert!(c.is_container());
        let s = service("nginx.service").unwrap();
        assert_eq!(s.short_id(), "nginx.service");
        assert!(!s.is_container());
    }

    #[test]
    fn a_process_without_cgroup_has_no_container() {
        let mut p = crate::attribute::tests::java(1);
        assert_eq!(p.container(), service("activemq.service"));
        p.cgroup = None;
        assert_eq!(p.container(), None);
    }
}
