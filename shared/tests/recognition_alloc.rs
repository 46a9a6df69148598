//! A recogniser lookup for a process that matches no rule allocates nothing (the agent
//! classifies every new process on the machine; almost none are products), and an ASCII
//! match allocates nothing either. Counted with this test binary's own allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use daymeter_shared::catalog::builtin;
use daymeter_shared::recognition::Recogniser;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn lookups_allocate_nothing_unless_non_ascii_arguments_must_be_folded() {
    let r = Recogniser::new(&builtin());
    let n = allocations_during(|| {
        for (exe, args) in [
            ("systemd", "--user"),
            ("NOTEPAD.EXE", "C:\\x.txt"),
            ("bash", ""),
            ("Überprüfung.exe", "«non-ascii»"),
            ("AdSSO.exe", ""),
        ] {
            assert_eq!(r.recognise(exe, args), None);
        }
        assert_eq!(r.recognise("ACAD.EXE", "/product ACADM"), Some("acadm"));
        assert_eq!(r.recognise("Revit.exe", "«non-ascii»"), Some("revit"));
    });
    assert_eq!(n, 0);
    // A non-ASCII argument line on an executable with args rules is folded once.
    let n = allocations_during(|| {
        assert_eq!(r.recognise("acad.exe", "/product C3D «x»"), Some("civil3d"));
    });
    assert_eq!(n, 1);
}
