//! Every allocation of this module goes through Python's raw allocator, so `tracemalloc` (and
//! `benchmarks/identity_memory.py`, which measures state with it) sees the native state as it
//! sees Python objects, and a counter says how much the module holds.

use pyo3::ffi;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct PythonRaw;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// Python's raw allocator is malloc's: aligned for any type of 16 bytes or less.
const RAW_ALIGN: usize = 16;

unsafe impl GlobalAlloc for PythonRaw {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        if layout.align() <= RAW_ALIGN {
            ffi::PyMem_RawMalloc(layout.size().max(1)) as *mut u8
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        if layout.align() <= RAW_ALIGN {
            ffi::PyMem_RawFree(ptr as *mut std::ffi::c_void)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= RAW_ALIGN {
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            ffi::PyMem_RawRealloc(ptr as *mut std::ffi::c_void, new_size.max(1)) as *mut u8
        } else {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static GLOBAL: PythonRaw = PythonRaw;

pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}
