//! Tenant numbers: the four bytes that stand for a tenant in the embedded store's keys.
//!
//! A tenant gets the next number on its first write, from the writer thread, and keeps it:
//! the mapping is persisted in `meta` before the commit that first uses it (one journal,
//! so a crash cannot keep the events and lose the number) and loaded at start-up. Readers
//! of a tenant without a number know it has nothing stored.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fjall::Keyspace;
use pulsestream_core::TenantId;

use super::keys::TenantNo;
use crate::StoreError;

const PREFIX: &[u8] = b"tenant_no/";

#[derive(Clone)]
pub(crate) struct TenantNumbers {
    meta: Keyspace,
    inner: Arc<RwLock<Numbers>>,
}

struct Numbers {
    by_tenant: HashMap<TenantId, TenantNo>,
    next: u32,
}

impl TenantNumbers {
    /// Loads the numbers assigned so far.
    pub fn load(meta: &Keyspace) -> Result<Self, StoreError> {
        let mut by_tenant = HashMap::new();
        let mut next = 0u32;
        for entry in meta.prefix(PREFIX) {
            let (key, value) = entry.into_inner().map_err(StoreError::unavailable)?;
            let tenant = key[PREFIX.len()..]
                .try_into()
                .map(TenantId::from_bytes)
                .map_err(|_| StoreError::Corrupt("tenant number key of wrong length".into()))?;
            let number = <[u8; 4]>::try_from(&*value)
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("tenant number of wrong length".into()))?;
            next = next.max(number.saturating_add(1));
            by_tenant.insert(tenant, TenantNo(number));
        }
        Ok(Self {
            meta: meta.clone(),
            inner: Arc::new(RwLock::new(Numbers { by_tenant, next })),
        })
    }

    /// The tenant's number, if it has ever written.
    pub fn get(&self, tenant: TenantId) -> Option<TenantNo> {
        self.inner
            .read()
            .expect("tenant number lock is never poisoned")
            .by_tenant
            .get(&tenant)
            .copied()
    }

    /// Every number assigned so far.
    pub fn all(&self) -> Vec<TenantNo> {
        self.inner
            .read()
            .expect("tenant number lock is never poisoned")
            .by_tenant
            .values()
            .copied()
            .collect()
    }

    /// The tenant's number, assigned now if it has none. The assignment is written to the
    /// journal (not yet synced: the commit that uses it syncs it).
    pub fn get_or_assign(&self, tenant: TenantId) -> Result<TenantNo, StoreError> {
        if let Some(number) = self.get(tenant) {
            return Ok(number);
        }
        let mut numbers = self
            .inner
            .write()
            .expect("tenant number lock is never poisoned");
        if let Some(number) = numbers.by_tenant.get(&tenant) {
            return Ok(*number);
        }
        let number = TenantNo(numbers.next);
        numbers.next = numbers
            .next
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("out of tenant numbers".into()))?;
        self.meta
            .insert([PREFIX, tenant.as_bytes()].concat(), number.bytes())
            .map_err(StoreError::unavailable)?;
        numbers.by_tenant.insert(tenant, number);
        Ok(number)
    }
}
