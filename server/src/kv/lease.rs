//! Leases in the state machine (issue 14; the protocol is
//! `poncho_protocol::lease`): granting one (its id is the grant's index),
//! attaching keys (a put with `lease`), and ending one (revoked by a
//! client, or expired by the leader through the log), which deletes its
//! keys at one revision. When a lease expires is not the state machine's
//! business: the leader's clock decides, and its `LEASE_EXPIRE` entry is
//! applied like any write (`node/leases.rs`).

use poncho_protocol::{ErrorCode, ErrorReply, LeaseReply, MAX_LEASES};
use smol_str::SmolStr;

use super::store::{Data, KvStore, Lease};

impl Data {
    pub(super) fn grant(&mut self, index: u64, ttl_secs: u64) -> Result<LeaseReply, ErrorReply> {
        if self.leases.len() >= MAX_LEASES {
            return Err(ErrorReply::new(
                ErrorCode::TooManyLeases,
                format!(
                    "not granted: the cluster holds {MAX_LEASES} leases, the most it may; \
                     revoke some first"
                ),
            ));
        }
        self.leases.insert(
            index,
            Lease {
                ttl_secs,
                keys: imbl::OrdSet::new(),
            },
        );
        Ok(LeaseReply {
            id: Some(index),
            ttl: Some(ttl_secs),
            granted_ttl: Some(ttl_secs),
            index: Some(index),
            ..LeaseReply::default()
        })
    }

    /// Ends lease `id`, deleting its keys at revision `index`.
    pub(super) fn end_lease(&mut self, index: u64, id: u64) -> Result<LeaseReply, ErrorReply> {
        let Some(lease) = self.leases.remove(&id) else {
            return Err(lease_not_found(id));
        };
        let keys: Vec<SmolStr> = lease.keys.iter().cloned().collect();
        let deleted = keys.iter().filter(|k| self.take(k, index)).count();
        Ok(LeaseReply {
            id: Some(id),
            deleted: Some(deleted as u64),
            index: Some(index),
            ..LeaseReply::default()
        })
    }

    pub(super) fn has_lease(&self, id: u64) -> bool {
        self.leases.contains_key(&id)
    }
}

pub(super) fn lease_not_found(id: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::LeaseNotFound,
        format!("lease {id} does not exist: it was never granted, or was revoked or expired"),
    )
}

impl KvStore {
    /// Every lease's id and TTL in seconds, in id order.
    pub fn leases(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.data.leases.iter().map(|(id, l)| (*id, l.ttl_secs))
    }

    /// Lease `id`'s TTL in seconds, if it exists.
    pub fn lease_ttl(&self, id: u64) -> Option<u64> {
        self.data.leases.get(&id).map(|l| l.ttl_secs)
    }

    /// The keys attached to lease `id`, in key order, at most `limit`
    /// (and whether there are more).
    pub fn lease_keys(&self, id: u64, limit: usize) -> (Vec<String>, bool) {
        let Some(lease) = self.data.leases.get(&id) else {
            return (Vec::new(), false);
        };
        let keys = lease
            .keys
            .iter()
            .take(limit)
            .map(|k| k.to_string())
            .collect();
        (keys, lease.keys.len() > limit)
    }

    /// The keys attached to lease `id`, for the permission check of a
    /// revoke.
    pub(super) fn lease_key_set(&self, id: u64) -> Option<&imbl::OrdSet<SmolStr>> {
        self.data.leases.get(&id).map(|l| &l.keys)
    }
}
