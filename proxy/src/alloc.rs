//! The global allocator: mimalloc, asked for a plain block whenever the alignment a layout
//! needs is one every mimalloc block has.
//!
//! The `mimalloc` crate's allocator asks for an aligned block on every call. mimalloc serves
//! those from its fast path only up to 1 KiB; a larger one (a header map's entries, for one)
//! takes an over-allocating slow path, about a third of all allocation instructions per
//! proxied request. A plain `mi_malloc` serves every size from its size classes.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: its blocks are whole words, laid from an aligned
/// page start.
const WORD: usize = std::mem::size_of::<usize>();

/// Whether a plain block serves `layout`.
fn plain(layout: Layout) -> bool {
    layout.align() <= WORD
}

pub struct Allocator;

// SAFETY: every method hands its arguments to the mimalloc call made for that purpose; a
// block is only plain when the layout's alignment is at most a word, which every mimalloc
// block satisfies, and mimalloc's `mi_free` and `mi_realloc*` accept blocks from either call.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc accepts any size; the alignment is a power of two (Layout's rule).
        unsafe {
            if plain(layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new block keeps its
        // alignment (plain blocks are word-aligned whatever their size).
        unsafe {
            if plain(layout) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Hands the memory freed so far back to the system: mimalloc's forced collection, which
/// decommits free pages at once instead of after its purge delay (a delay that only passes
/// while the process allocates, so an idle proxy would keep them).
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called at any time; it collects the
    // calling thread's heap and the shared arenas.
    unsafe { mi::mi_collect(true) }
}
