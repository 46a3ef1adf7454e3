//! The node's registered memory: one region, windows of which are granted to peers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::{Error, Result};

/// A range of a [`Region`] granted to one peer for its writes (its receive ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Offset in the region.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Window {
    /// Checks that `[off, off+len)` fits in a space of `limit` bytes.
    pub(crate) fn check_range(
        what: &'static str,
        off: usize,
        len: usize,
        limit: usize,
    ) -> Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(Error::OutOfBounds {
                what,
                off: off as u64,
                len: len as u64,
                limit: limit as u64,
            }),
        }
    }
}

/// A page-aligned, zero-initialised block of memory that fabrics read from and write
/// into: the node's *common memory*.
///
/// Access to its bytes is `unsafe` because peers write into it without Rust knowing:
/// the caller promises that no fabric operation (a local post or a peer's write into a
/// granted window) touches the same bytes at the same time. The router's ring protocol
/// is what keeps that promise.
pub struct Region {
    map: MmapRaw,
    /// Backing memfd of a shared region and the path peers open it by.
    file: Option<(File, PathBuf)>,
}

// SAFETY: the region is plain memory; all access to its bytes goes through `unsafe`
// methods whose contracts forbid unsynchronised overlapping access.
unsafe impl Sync for Region {}
// SAFETY: as above; the mapping may be unmapped from any thread.
unsafe impl Send for Region {}

impl Region {
    /// Anonymous private memory (tcp, verbs).
    ///
    /// # Errors
    /// [`Error::Io`] when the mapping fails; [`Error::Config`] for a zero length.
    pub fn anonymous(len: usize) -> Result<Region> {
        if len == 0 {
            return Err(Error::Config("region length must be > 0".into()));
        }
        let map = MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(Error::io("mmap anonymous region"))?;
        Ok(Region {
            map: MmapRaw::from(map),
            file: None,
        })
    }

    /// Shared memory that other processes of this host can map: a sealed `memfd`
    /// (it cannot shrink or grow, so a peer's mapping never faults) that peers open
    /// through [`Region::path`].
    ///
    /// # Errors
    /// [`Error::Io`] when the memfd cannot be created, sized, sealed or mapped.
    pub fn shared(name: &str, len: usize) -> Result<Region> {
        if len == 0 {
            return Err(Error::Config("region length must be > 0".into()));
        }
        let file = crate::shm::sealed_memfd(name, len)?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(Error::io("mmap shared memory"))?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let path = PathBuf::from(format!("/proc/{pid}/fd/{}", file.as_raw_fd()));
        Ok(Region {
            map,
            file: Some((file, path)),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a region is never empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The path by which other processes open a shared region.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// Checks that `[off, off+len)` is inside the region.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`].
    pub fn check(&self, off: usize, len: usize) -> Result<()> {
        Window::check_range("local region", off, len, self.len())
    }

    /// Borrows `len` bytes at `off`.
    ///
    /// # Safety
    /// For as long as the slice lives nobody may write these bytes: no local
    /// `bytes_mut` over them and no peer write into them (the range is not inside a
    /// window a peer is currently writing).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`].
    pub unsafe fn bytes(&self, off: usize, len: usize) -> Result<&[u8]> {
        self.check(off, len)?;
        // SAFETY: the range is inside the mapping (checked); the caller guarantees no
        // concurrent writer.
        Ok(unsafe { std::slice::from_raw_parts(self.as_ptr().add(off), len) })
    }

    /// Borrows `len` bytes at `off` mutably.
    ///
    /// # Safety
    /// For as long as the slice lives nobody else may read or write these bytes: no
    /// other `bytes`/`bytes_mut` over them, no posted operation reading them that has
    /// not completed, and no peer write into them.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, off: usize, len: usize) -> Result<&mut [u8]> {
        self.check(off, len)?;
        // SAFETY: the range is inside the mapping (checked); the caller guarantees
        // exclusive access.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(off), len) })
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len())
            .field("path", &self.path())
            .finish()
    }
}
