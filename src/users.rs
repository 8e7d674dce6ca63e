//! User and group names from their numbers (getpwuid_r, getgrgid_r), for messages.
//!
//! Layer 0: the inbox's permission diagnostics and the client's "permission denied"
//! messages both name users and groups; neither should import the other for it.

use std::ffi::{CStr, c_char, c_int};

/// A user's name, or its number when it has none.
pub fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid_r has the signature `name_of` calls it with; pw_name points into
    // the buffer it was given.
    unsafe { name_of(uid, libc::getpwuid_r, |p: &libc::passwd| p.pw_name) }
}

/// A group's name, or its number when it has none.
pub fn group_name(gid: u32) -> String {
    // SAFETY: as in `user_name`, for getgrgid_r and gr_name.
    unsafe { name_of(gid, libc::getgrgid_r, |g: &libc::group| g.gr_name) }
}

/// The reentrant passwd/group lookup `lookup` of `id`, returning the name field picked by
/// `name`, or the number when there is no entry.
///
/// # Safety
/// `lookup` must follow the getpwuid_r contract (write only into the record and buffer
/// given, set the result pointer to the record on success), and `name` must return a
/// NUL-terminated pointer into that buffer.
unsafe fn name_of<T>(
    id: u32,
    lookup: unsafe extern "C" fn(u32, *mut T, *mut c_char, usize, *mut *mut T) -> c_int,
    name: fn(&T) -> *const c_char,
) -> String {
    // SAFETY: passwd and group are plain C records; all-zero is a valid value of either.
    let mut record: T = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as c_char; 16 * 1024];
    let mut out: *mut T = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call (see the function's contract).
    let rc = unsafe { lookup(id, &mut record, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        // SAFETY: the name points into buf, NUL-terminated, while buf lives.
        unsafe { CStr::from_ptr(name(&record)) }
            .to_string_lossy()
            .into_owned()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_an_unknown_id_is_its_number() {
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        assert_eq!(user_name(3_999_999_999), "3999999999");
        assert_eq!(group_name(3_999_999_999), "3999999999");
    }
}
