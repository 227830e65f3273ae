//! Fencing tokens (SPEC section 6): what proves that a run of a bridge still holds the bridge's
//! lease, so an instance that lost it (paused past the lease's TTL, cut off from the store) sends
//! nothing more once it carries on.
//!
//! Every acquisition of a lease draws a token from a counter that only grows
//! (`{prefix}bridge:lease:{bridge}:fence`) in the same atomic step, and writes the lease's value
//! as `{owner}:{token}`. Renewing keeps the value; a later acquisition (after an expiry, a release,
//! or by the same instance for its bridge's next run) writes a larger token. Whoever works for the
//! run presents its [`Fence`] to the store ([`crate::store::Op::CheckFence`],
//! [`crate::store::Op::UpdateJob`]), which compares it with the lease's value in the same atomic
//! step as the work, so a stale holder is refused however late it wakes up.
//!
//! The supervisor hands the fence to the run through [`crate::HubHandle::fence`]. A bridge run
//! without a lease (tests, embedders building a `BridgeContext` themselves) has no fence, and
//! nothing is checked.

/// A run's hold on a bridge's lease: the lease key and the value the acquisition wrote there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: String,
    owner: String,
    token: u64,
}

impl Fence {
    /// The fence of `owner`'s acquisition of the lease `key` with `token`.
    pub fn new(key: impl Into<String>, owner: impl Into<String>, token: u64) -> Self {
        Self {
            key: key.into(),
            owner: owner.into(),
            token,
        }
    }

    /// The lease key (`{prefix}bridge:lease:{bridge}`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The instance that acquired the lease.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The acquisition's token: larger than that of every earlier acquisition of the lease.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease's value while this acquisition holds it: `{owner}:{token}`.
    pub fn holder(&self) -> String {
        format!("{}:{}", self.owner, self.token)
    }
}
