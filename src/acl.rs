//! Who besides root may connect to the admin socket: `--admin-uid`, given
//! to the socket file as a POSIX access ACL.
//!
//! Owns the ACL's bytes (the kernel's `system.posix_acl_access` form) and
//! writing them to the socket's path. It does not decide who is admitted
//! once connected: the server checks every admin connection's peer uid
//! again (`server::admission`), so the ACL only decides who can reach the
//! check at all, and a uid it does not name gets `EACCES` at `connect()`.
//!
//! Connecting to a unix socket needs write permission on its file. The
//! socket is `0600 root`, so without an entry for each admin uid their
//! `connect()` fails before the server can say anything; an ACL names
//! each uid alone (`user:UID:rw-`), where a wider mode would let every
//! local user fill the admin socket's backlog.

use std::io;
use std::path::Path;

/// The extended attribute that holds a file's access ACL.
const ACCESS_ACL: &str = "system.posix_acl_access";

/// `POSIX_ACL_XATTR_VERSION` (include/uapi/linux/posix_acl_xattr.h).
const XATTR_VERSION: u32 = 2;

/// Entry tags (include/uapi/linux/posix_acl.h), in the order the kernel
/// requires them.
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The id of entries that name no one (`ACL_UNDEFINED_ID`).
const UNDEFINED_ID: u32 = u32::MAX;

/// Read and write: what `connect()` needs.
const RW: u16 = 0o6;

/// The access ACL of a socket its owner and each uid of `uids` may use,
/// and no one else: `user::rw-`, `user:UID:rw-` for each, `group::---`,
/// `mask::rw-`, `other::---`. Root (uid 0) needs no entry and gets none.
/// `None` when no uid needs one.
pub fn admin_socket_acl(uids: &[u32]) -> Option<Vec<u8>> {
    let mut users: Vec<u32> = uids.iter().copied().filter(|&uid| uid != 0).collect();
    // "ACL_USER entries are sorted by id, with no duplicates", or the
    // kernel refuses the whole ACL (posix_acl_valid).
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return None;
    }
    let mut entries = vec![(ACL_USER_OBJ, RW, UNDEFINED_ID)];
    entries.extend(users.iter().map(|&uid| (ACL_USER, RW, uid)));
    entries.extend([
        (ACL_GROUP_OBJ, 0, UNDEFINED_ID),
        (ACL_MASK, RW, UNDEFINED_ID),
        (ACL_OTHER, 0, UNDEFINED_ID),
    ]);
    let mut bytes = Vec::with_capacity(4 + entries.len() * 8);
    bytes.extend_from_slice(&XATTR_VERSION.to_le_bytes());
    for (tag, perm, id) in entries {
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.extend_from_slice(&perm.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    Some(bytes)
}

/// Lets each uid of `uids` connect to the socket at `path` (and no one
/// else but its owner and root), replacing any ACL it had. With no uid, an
/// ACL left on it (a socket systemd made and a predecessor changed) is
/// removed, so the file's mode alone decides again.
pub fn grant_admin_uids(path: &Path, uids: &[u32]) -> Result<(), String> {
    let shown = path.display();
    let Some(acl) = admin_socket_acl(uids) else {
        return match rustix::fs::removexattr(path, ACCESS_ACL) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::OPNOTSUPP => Ok(()),
            Err(e) => Err(format!(
                "cannot remove the access ACL of {shown}: {}",
                io::Error::from(e)
            )),
        };
    };
    rustix::fs::setxattr(path, ACCESS_ACL, &acl, rustix::fs::XattrFlags::empty()).map_err(|e| {
        let why = io::Error::from(e);
        if e == rustix::io::Errno::OPNOTSUPP {
            format!(
                "cannot let --admin-uid {} reach {shown}: its file system does not support POSIX ACLs ({why}); put the admin socket on tmpfs, ext4 or xfs with --admin-socket",
                join(uids)
            )
        } else {
            format!(
                "cannot let --admin-uid {} reach {shown}: {why}",
                join(uids)
            )
        }
    })
}

fn join(uids: &[u32]) -> String {
    let words: Vec<String> = uids.iter().map(u32::to_string).collect();
    words.join(" --admin-uid ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `setfacl -m u:1000:rw,u:4321:rw,m::rw,g::-,o::-` writes
    /// on a `0600` file, read back with `getfattr -e hex -n
    /// system.posix_acl_access`.
    #[test]
    fn acl_bytes_are_the_kernels_form() {
        let acl = admin_socket_acl(&[4321, 0, 1000, 4321]).unwrap();
        let hex: String = acl.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "02000000",
                "01000600ffffffff",
                "02000600e8030000",
                "02000600e1100000",
                "04000000ffffffff",
                "10000600ffffffff",
                "20000000ffffffff",
            )
        );
    }

    #[test]
    fn root_alone_needs_no_acl() {
        assert_eq!(admin_socket_acl(&[]), None);
        assert_eq!(admin_socket_acl(&[0, 0]), None);
    }
}
