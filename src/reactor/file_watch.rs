//! File watches (`watch_file`): modified / moved / deleted callbacks, from inotify on
//! Linux. One inotify descriptor per reactor, registered under its own token; each
//! watched path is a descriptor in the slab with its own handler and id. Other
//! platforms return `Unsupported`.

use std::io;
use std::path::Path;

use super::Reactor;
use crate::handler::{Handler, UnbindReason};
use crate::id::ConnId;

pub(crate) struct FileWatch {
    pub(crate) serial: u64,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    wd: i32,
    pub(crate) handler: Option<Box<dyn Handler>>,
    pub(crate) closing: Option<UnbindReason>,
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Inotify;

#[cfg(not(target_os = "linux"))]
pub(crate) struct Inotify;

impl Reactor {
    /// Watches the file at `path`: the handler's `file_modified`, `file_moved` and
    /// `file_deleted` run as those happen; after a deletion `unbind` follows with
    /// [`UnbindReason::FileGone`]. Closing the id stops watching.
    pub fn watch_file<H: Handler>(
        &mut self,
        path: impl AsRef<Path>,
        handler: H,
    ) -> io::Result<ConnId> {
        let wd = self.add_inotify_watch(path.as_ref())?;
        let serial = self.next_serial();
        let slot = self
            .descriptors
            .insert(super::Descriptor::FileWatch(FileWatch {
                serial,
                wd,
                handler: Some(Box::new(handler)),
                closing: None,
            }));
        let id = ConnId { slot, serial };
        self.track_watch(wd, id);
        self.notify(id, |h, cx| h.post_init(cx));
        Ok(id)
    }

    pub(crate) fn retire_file_watch(&mut self, id: ConnId, mut f: FileWatch) {
        self.untrack_watch(f.wd, id);
        let reason = f.closing.unwrap_or(UnbindReason::ClosedByUs);
        if let Some(handler) = f.handler.take() {
            self.run_unbind(id, handler, reason);
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Reactor {
    fn add_inotify_watch(&mut self, _path: &Path) -> io::Result<i32> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "file watches need inotify (Linux)",
        ))
    }

    fn track_watch(&mut self, _wd: i32, _id: ConnId) {}

    fn untrack_watch(&mut self, _wd: i32, _id: ConnId) {}

    pub(crate) fn read_file_events(&mut self) {}
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    use super::super::{INOTIFY_TOKEN, Reactor};
    use crate::handler::UnbindReason;
    use crate::id::ConnId;
    use crate::sys::inotify;

    pub(crate) struct Inotify {
        fd: OwnedFd,
        /// Several ids may watch one path: inotify gives them the same descriptor.
        by_wd: HashMap<i32, Vec<ConnId>>,
    }

    impl Reactor {
        pub(super) fn add_inotify_watch(&mut self, path: &Path) -> io::Result<i32> {
            if self.file_watches.is_none() {
                let fd = inotify::init()?;
                self.poll.registry().register(
                    &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                    INOTIFY_TOKEN,
                    mio::Interest::READABLE,
                )?;
                self.file_watches = Some(Inotify {
                    fd,
                    by_wd: HashMap::new(),
                });
            }
            let watches = self.file_watches.as_ref().expect("created above");
            inotify::add_watch(&watches.fd, path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot watch {}: {e}", path.display()))
            })
        }

        pub(super) fn track_watch(&mut self, wd: i32, id: ConnId) {
            if let Some(inotify) = self.file_watches.as_mut() {
                inotify.by_wd.entry(wd).or_default().push(id);
            }
        }

        pub(super) fn untrack_watch(&mut self, wd: i32, id: ConnId) {
            let Some(inotify) = self.file_watches.as_mut() else {
                return;
            };
            let Some(ids) = inotify.by_wd.get_mut(&wd) else {
                return;
            };
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                inotify.by_wd.remove(&wd);
                inotify::rm_watch(&inotify.fd, wd);
            }
        }

        /// Reads every pending inotify event and dispatches it.
        pub(crate) fn read_file_events(&mut self) {
            let mut buf = inotify::event_buffer();
            loop {
                let Some(watches) = self.file_watches.as_ref() else {
                    return;
                };
                let mut events = Vec::new();
                if !inotify::read_events(&watches.fd, &mut buf, |wd, mask| {
                    events.push((wd, mask));
                }) {
                    return;
                }
                for (wd, mask) in events {
                    self.dispatch_file_event(wd, mask);
                }
            }
        }

        fn dispatch_file_event(&mut self, wd: i32, mask: u32) {
            let ids = self
                .file_watches
                .as_ref()
                .and_then(|i| i.by_wd.get(&wd))
                .cloned()
                .unwrap_or_default();
            for id in ids {
                if mask & libc::IN_MODIFY != 0 {
                    self.notify(id, |h, cx| h.file_modified(cx));
                }
                if mask & libc::IN_MOVE_SELF != 0 {
                    self.notify(id, |h, cx| h.file_moved(cx));
                }
                if mask & libc::IN_DELETE_SELF != 0 {
                    self.notify(id, |h, cx| h.file_deleted(cx));
                }
                if mask & (libc::IN_IGNORED | libc::IN_UNMOUNT) != 0 {
                    self.close_descriptor(id, UnbindReason::FileGone);
                }
            }
        }
    }
}
