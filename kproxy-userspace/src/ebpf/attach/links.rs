//! Attaching the programs to interfaces with pinned links, so the datapath keeps
//! serving after the agent exits, and a restarted agent swaps its freshly loaded
//! programs into the same links atomically (`bpf_link_update`) without a gap.
//!
//! Link pins live in `<pin dir>/links/{hook}_{ifname}_{ifindex}`: the ifindex makes a
//! recreated interface (a pod restarted with the same veth name) a new link, and lets
//! [`LinkPins::sweep`] drop pins of interfaces that are gone.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};

use super::{iface::Iface, sys};

/// Which hook a link attaches a program to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Hook {
    /// Every hook whose links are pinned (all swept the same way).
    pub const ALL: [Hook; 3] = [Hook::TcIngress, Hook::TcEgress, Hook::Xdp];
}

impl Hook {
    fn prefix(self) -> &'static str {
        match self {
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::Xdp => "xdp",
        }
    }
}

/// Whether a link was created now or taken over from a previous agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    Adopted,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("create link directory {path}: `mkdir` failed")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attach {hook:?} to {iface}: `bpf_link_create` failed")]
    Attach {
        hook: Hook,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("adopt pinned link {path}: `bpf_link_update` failed")]
    Adopt {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("open pinned link {path}: `BPF_OBJ_GET` failed")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{hook:?} link on {iface} is not an fd link (attached via netlink?)")]
    NotFdLink {
        hook: Hook,
        iface: String,
        #[source]
        source: LinkError,
    },
    #[error("take link of {hook:?} on {iface}")]
    Take {
        hook: Hook,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("pin link at {path}: `BPF_OBJ_PIN` failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("list or remove link pins in {path}")]
    Sweep {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attach XDP to {iface}: native mode: {native}; generic mode failed")]
    XdpBothModes {
        iface: String,
        /// Why native mode was not used (the driver lacks it, or its attach error).
        native: String,
        #[source]
        generic: Box<AttachError>,
    },
    #[error("write {path}")]
    Sysctl {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    XdpFeatures(#[from] super::xdp_features::XdpFeaturesError),
}

/// The pinned links under one pin directory.
pub struct LinkPins {
    dir: PathBuf,
}

impl LinkPins {
    /// Link pins under `<pin_dir>/links` (created when missing).
    pub fn new(pin_dir: &Path) -> Result<Self, AttachError> {
        let dir = pin_dir.join("links");
        fs::create_dir_all(&dir).map_err(|source| AttachError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(LinkPins { dir })
    }

    /// The pin path of `hook` on `iface`.
    pub fn path(&self, hook: Hook, iface: &Iface) -> PathBuf {
        self.dir
            .join(format!("{}_{}_{}", hook.prefix(), iface.name, iface.index))
    }

    /// Whether `hook` on `iface` has a pinned link.
    pub fn is_pinned(&self, hook: Hook, iface: &Iface) -> bool {
        self.path(hook, iface).exists()
    }

    /// Opens the pinned link of `hook` on `iface`, if there is one.
    fn open(&self, hook: Hook, iface: &Iface) -> Result<Option<FdLink>, AttachError> {
        let path = self.path(hook, iface);
        match PinnedLink::from_pin(&path) {
            Ok(pinned) => Ok(Some(FdLink::from(pinned))),
            Err(_) if !path.exists() => Ok(None),
            Err(source) => Err(AttachError::OpenPin { path, source }),
        }
    }

    /// Attaches `program` to TC ingress of `iface` (TCX), or swaps it into the
    /// link a previous agent pinned there.
    pub fn attach_tc(&self, program: &mut SchedClassifier, iface: &Iface) -> Result<Attached, AttachError> {
        self.attach(&mut TcIngress(program), iface)
    }

    /// Attaches `program` to TC egress of `iface` (TCX), or swaps it into the link a
    /// previous agent pinned there.
    pub fn attach_tc_egress(
        &self,
        program: &mut SchedClassifier,
        iface: &Iface,
    ) -> Result<Attached, AttachError> {
        self.attach(&mut TcEgress(program), iface)
    }

    /// Attaches `program` to XDP of `iface` in `mode`, or swaps it into the pinned link.
    pub fn attach_xdp(
        &self,
        program: &mut Xdp,
        iface: &Iface,
        mode: XdpMode,
    ) -> Result<Attached, AttachError> {
        self.attach(&mut XdpHook(program, mode), iface)
    }

    /// Adopts the pinned link of `P::HOOK` on `iface` (atomic program swap), or attaches
    /// fresh and pins the new link.
    fn attach<P: LinkHook>(&self, program: &mut P, iface: &Iface) -> Result<Attached, AttachError> {
        let hook = P::HOOK;
        let path = self.path(hook, iface);
        let name = || iface.name.clone();
        let not_fd = |source| AttachError::NotFdLink {
            hook,
            iface: name(),
            source,
        };
        let take = |source| AttachError::Take {
            hook,
            iface: name(),
            source,
        };
        if let Some(fd_link) = self.open(hook, iface)? {
            let link = P::Link::try_from(fd_link).map_err(not_fd)?;
            let id = program
                .swap_into(link)
                .map_err(|source| AttachError::Adopt { path, source })?;
            // Still pinned: let go of our handle, the pin keeps the link.
            drop(program.take(id).map_err(take)?);
            return Ok(Attached::Adopted);
        }
        let id = program
            .attach_fresh(&iface.name)
            .map_err(|source| AttachError::Attach {
                hook,
                iface: name(),
                source,
            })?;
        let fd_link: FdLink = program.take(id).map_err(take)?.try_into().map_err(not_fd)?;
        fd_link
            .pin(&path)
            .map_err(|source| AttachError::Pin { path, source })?;
        Ok(Attached::New)
    }

    /// Removes the pins of interfaces not in `present` (their links went with the
    /// interface), or every pin when `all` is set (cleanup). Returns the removed names.
    pub fn sweep(&self, present: &[Iface], all: bool) -> Result<Vec<String>, AttachError> {
        let sweep_err = |source| AttachError::Sweep {
            path: self.dir.clone(),
            source,
        };
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(sweep_err)? {
            let entry = entry.map_err(sweep_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // The socket programs' cgroup links are `cgroup::CgroupLinks`'s to sweep.
            if !all && name.starts_with(super::cgroup::PIN_PREFIX) {
                continue;
            }
            let alive = present.iter().any(|iface| {
                Hook::ALL
                    .iter()
                    .any(|&hook| self.path(hook, iface) == entry.path())
            });
            if all {
                // Best effort: the pin removal below detaches too, only later.
                let _ = detach_now(&entry.path());
            }
            if all || !alive {
                fs::remove_file(entry.path()).map_err(sweep_err)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// A program on a hook whose links can be pinned and adopted (TC ingress and egress, XDP).
trait LinkHook {
    type Link: TryFrom<FdLink, Error = LinkError> + TryInto<FdLink, Error = LinkError>;
    type Id;
    const HOOK: Hook;
    fn attach_fresh(&mut self, iface: &str) -> Result<Self::Id, ProgramError>;
    fn swap_into(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
}

struct TcIngress<'a>(&'a mut SchedClassifier);

impl LinkHook for TcIngress<'_> {
    type Link = SchedClassifierLink;
    type Id = SchedClassifierLinkId;
    const HOOK: Hook = Hook::TcIngress;
    fn attach_fresh(&mut self, iface: &str) -> Result<Self::Id, ProgramError> {
        self.0.attach(iface, TcAttachType::Ingress)
    }
    fn swap_into(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        self.0.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        self.0.take_link(id)
    }
}

struct TcEgress<'a>(&'a mut SchedClassifier);

impl LinkHook for TcEgress<'_> {
    type Link = SchedClassifierLink;
    type Id = SchedClassifierLinkId;
    const HOOK: Hook = Hook::TcEgress;
    fn attach_fresh(&mut self, iface: &str) -> Result<Self::Id, ProgramError> {
        self.0.attach(iface, TcAttachType::Egress)
    }
    fn swap_into(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        self.0.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        self.0.take_link(id)
    }
}

struct XdpHook<'a>(&'a mut Xdp, XdpMode);

impl LinkHook for XdpHook<'_> {
    type Link = XdpLink;
    type Id = XdpLinkId;
    const HOOK: Hook = Hook::Xdp;
    fn attach_fresh(&mut self, iface: &str) -> Result<Self::Id, ProgramError> {
        self.0.attach(iface, self.1)
    }
    fn swap_into(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        self.0.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        self.0.take_link(id)
    }
}

/// Detaches the link pinned at `path` at once (BPF_LINK_DETACH). Removing the last pin
/// of a link frees it from a kernel workqueue that also needs the RTNL lock, so its
/// program can go on running for a while after the pin is gone; cleanup must not return
/// before traffic stops being translated.
pub(super) fn detach_now(path: &Path) -> io::Result<()> {
    sys::link_detach(&sys::obj_get(path)?)
}
